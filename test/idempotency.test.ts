import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { QueryTypes } from "sequelize";
import { describe, expect, it } from "vitest";
import { IngestEventStatus, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { databaseKind } from "./support/database.js";
import { postJson, useTestServer } from "./support/server.js";

const fixture = useTestServer();

const ingest = (body: unknown) => postJson(fixture.server.baseUrl, "/ingest/message", body);

async function rows<T extends object = Record<string, unknown>>(sql: string, bind: unknown[] = []): Promise<T[]> {
  return fixture.database.sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

const eventsWithKey = (source: string, externalId: string) =>
  rows<any>("SELECT * FROM crm_ingest_events WHERE source = $1 AND external_id = $2", [source, externalId]);
const count = async (table: string) => Number((await rows<{ n: string }>(`SELECT count(*) AS n FROM ${table}`))[0].n);

describe(`retries with external_id (${databaseKind})`, () => {
  it("answers a sequential retry with the original ids, flagged duplicate, and stores nothing new", async () => {
    const message = { source: "whatsapp", sender_id: "5511900000001", content: "pedido 1", metadata: {}, external_id: "wamid.HBgN001" };
    const first = await ingest(message);
    const eventsBefore = await count("crm_ingest_events");
    const contactsBefore = await count("crm_contacts");
    const retry = await ingest(message);

    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_LINKED", duplicate: false });
    expect(retry.status).toBe(200);
    expect(retry.body).toEqual({ ...first.body, duplicate: true });
    expect(await count("crm_ingest_events")).toBe(eventsBefore);
    expect(await count("crm_contacts")).toBe(contactsBefore);
    const stored = await eventsWithKey("whatsapp", "wamid.HBgN001");
    expect(stored.map((e) => [e.id, e.contact_id, e.external_id])).toEqual([[first.body.event_id, first.body.contact_id, "wamid.HBgN001"]]);
  });

  it("counts a replayed retry as a duplicate, not as a stored event, and says so in its log line", async () => {
    const stored = async () => (await fixture.server.metrics.eventsStored.get()).values.reduce((sum, v) => sum + v.value, 0);
    const duplicates = async () => (await fixture.server.metrics.duplicates.get()).values.reduce((sum, v) => sum + v.value, 0);
    const message = { source: "web", sender_id: "visitor-metrics", content: "oi", external_id: "k-metrics" };
    await ingest(message);
    const before = { stored: await stored(), duplicates: await duplicates() };
    const retry = await ingest(message);

    expect(await stored()).toBe(before.stored);
    expect(await duplicates()).toBe(before.duplicates + 1);
    const line = fixture.server.logLines.filter((l) => l.eventId === retry.body.event_id).at(-1);
    expect(line).toMatchObject({ duplicate: true, code: "ok" });
  });

  it("keeps the original metadata when a retry carries different metadata", async () => {
    const message = { source: "email", sender_id: "ana@example.com", content: "olá", external_id: "<m1@example.com>" };
    const first = await ingest({ ...message, metadata: { attempt: 1 } });
    const retry = await ingest({ ...message, metadata: { attempt: 2 } });

    expect(retry.status).toBe(200);
    expect(retry.body).toMatchObject({ event_id: first.body.event_id, contact_id: first.body.contact_id, duplicate: true });
    const stored = await eventsWithKey("email", "<m1@example.com>");
    expect(stored.map((e) => e.metadata)).toEqual([{ attempt: 1 }]);
  });

  it("replays an event that was stored in status ERROR as it was stored", async () => {
    const message = { source: "email", sender_id: "not-an-address", content: "x", external_id: "k-error" };
    const first = await ingest(message);
    const retry = await ingest(message);

    expect(first.body.event_status).toBe("INGEST_EVENT_STATUS_ERROR");
    expect(retry.body).toEqual({ ...first.body, duplicate: true });
    expect(await eventsWithKey("email", "k-error")).toHaveLength(1);
  });

  it("stores one event for 20 concurrent copies, and answers all of them with its ids, exactly one not a duplicate", async () => {
    const message = { source: "whatsapp", sender_id: "5511900000020", content: "concorrente", metadata: {}, external_id: "wamid.CONCURRENT" };
    const responses = await Promise.all(Array.from({ length: 20 }, () => ingest(message)));

    expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(new Set(responses.map((r) => r.body.event_id)).size).toBe(1);
    expect(new Set(responses.map((r) => r.body.contact_id)).size).toBe(1);
    expect(responses.filter((r) => r.body.duplicate === false)).toHaveLength(1);
    expect(responses.every((r) => r.body.status === "persisted")).toBe(true);
    const stored = await eventsWithKey("whatsapp", "wamid.CONCURRENT");
    expect(stored.map((e) => e.id)).toEqual([responses[0].body.event_id]);
    expect(await rows("SELECT id FROM crm_contacts WHERE whatsapp_id = $1", ["5511900000020"])).toHaveLength(1);
    expect(fixture.server.loggedErrors).toEqual([]);
  });

  it("refuses the same key with different content as 409 already_exists naming the original, storing nothing", async () => {
    const original = await ingest({ source: "whatsapp", sender_id: "5511900000003", content: "primeira", external_id: "wamid.REUSED" });
    const eventsBefore = await count("crm_ingest_events");
    const conflict = await ingest({ source: "whatsapp", sender_id: "5511900000003", content: "outra coisa", external_id: "wamid.REUSED" });

    expect(conflict.status).toBe(409);
    expect(conflict.body.code).toBe("already_exists");
    expect(conflict.body.message).toContain(original.body.event_id);
    expect(conflict.body.message).toContain("content");
    expect(await count("crm_ingest_events")).toBe(eventsBefore);
    expect((await eventsWithKey("whatsapp", "wamid.REUSED")).map((e) => e.content)).toEqual(["primeira"]);
  });

  it("refuses the same key from a different, new sender without creating that sender's contact", async () => {
    const original = await ingest({ source: "whatsapp", sender_id: "5511900000004", content: "oi", external_id: "wamid.STOLEN" });
    const contactsBefore = await count("crm_contacts");
    const conflict = await ingest({ source: "whatsapp", sender_id: "5511900000005", content: "oi", external_id: "wamid.STOLEN" });

    expect(conflict.status).toBe(409);
    expect(conflict.body.message).toContain(original.body.event_id);
    expect(conflict.body.message).toContain("sender_id");
    expect(await count("crm_contacts")).toBe(contactsBefore);
    expect(await rows("SELECT id FROM crm_contacts WHERE whatsapp_id = $1", ["5511900000005"])).toEqual([]);
    expect(await eventsWithKey("whatsapp", "wamid.STOLEN")).toHaveLength(1);
  });

  it("settles concurrent copies that disagree: one event, its copies replayed, the others refused, no stray contacts", async () => {
    const senders = Array.from({ length: 10 }, (_, i) => `55119100000${String(i).padStart(2, "0")}`);
    const contactsBefore = await count("crm_contacts");
    // Two copies of each of 10 different messages, all under one key.
    const requests = [...senders, ...senders].map((sender) => ({ source: "whatsapp", sender_id: sender, content: `from ${sender}`, external_id: "wamid.RACE" }));
    const responses = await Promise.all(requests.map((request) => ingest(request)));

    const stored = await eventsWithKey("whatsapp", "wamid.RACE");
    expect(stored).toHaveLength(1);
    const winner = stored[0].sender_id;
    responses.forEach((response, i) => {
      if (requests[i].sender_id === winner) {
        expect(response.status).toBe(200);
        expect(response.body.event_id).toBe(stored[0].id);
      } else {
        expect(response.status).toBe(409);
        expect(response.body.message).toContain(stored[0].id);
      }
    });
    expect(responses.filter((r) => r.status === 200 && r.body.duplicate === false)).toHaveLength(1);
    expect(await count("crm_contacts")).toBe(contactsBefore + 1);
    expect(await rows<any>("SELECT whatsapp_id FROM crm_contacts WHERE whatsapp_id = ANY($1)", [senders])).toEqual([{ whatsapp_id: winner }]);
    expect(fixture.server.loggedErrors).toEqual([]);
  });

  it("scopes a key to its source", async () => {
    const web = await ingest({ source: "web", sender_id: "visitor-1", content: "oi", external_id: "shared-key" });
    const chat = await ingest({ source: "chat", sender_id: "visitor-1", content: "oi", external_id: "shared-key" });

    expect(chat.status).toBe(200);
    expect(chat.body.duplicate).toBe(false);
    expect(chat.body.event_id).not.toBe(web.body.event_id);
  });

  it("stores every copy of a message that has no external_id, as before", async () => {
    const message = { source: "web", sender_id: "visitor-2", content: "sem chave", metadata: {} };
    const first = await ingest(message);
    const second = await ingest(message);

    expect(second.body.duplicate).toBe(false);
    expect(second.body.event_id).not.toBe(first.body.event_id);
    const stored = await rows<any>("SELECT external_id FROM crm_ingest_events WHERE sender_id = 'visitor-2'");
    expect(stored).toEqual([{ external_id: null }, { external_id: null }]);
  });

  it("gives typed clients the duplicate flag and AlreadyExists", async () => {
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: fixture.server.baseUrl }));
    const message = { source: "whatsapp", senderId: "5511900000006", content: "grpc", externalId: "wamid.GRPC" };
    const first = await client.ingestMessage(message);
    const retry = await client.ingestMessage(message);

    expect(first.duplicate).toBe(false);
    expect(retry).toMatchObject({ eventId: first.eventId, contactId: first.contactId, eventStatus: IngestEventStatus.LINKED, duplicate: true });
    const error = await client.ingestMessage({ ...message, content: "different" }).catch((e: unknown) => ConnectError.from(e));
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.AlreadyExists);
    expect((error as ConnectError).rawMessage).toContain(first.eventId);
  });
});
