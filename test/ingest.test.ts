import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { IngestEventStatus, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { databaseKind } from "./support/database.js";
import { count, rows } from "./support/rows.js";
import { postJson, postMessage } from "./support/ingest.js";
import { startTestServer, useTestServer } from "./support/server.js";

// The ingest command's own rules (identity, retries, statuses) are tested in
// ingest-command.test.ts; these check that requests reach it and its answers
// and refusals reach the client, on the plain route and the RPC.

const fixture = useTestServer();

const ingest = (body: unknown, target = fixture.server) => postMessage(target.baseUrl, body);
const event = async (id: string) => (await rows(fixture.database, "SELECT * FROM crm_ingest_events WHERE id = $1", [id]))[0];

describe(`POST /ingest/message (${databaseKind})`, () => {
  it("answers the seeds' request with real ids and stores a linked event", async () => {
    const { status, body } = await ingest({ source: "whatsapp", sender_id: "5511999999999", content: "teste", metadata: {} });

    expect(status).toBe(200);
    expect(body).toEqual({
      event_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      contact_id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      status: "persisted",
      event_status: "INGEST_EVENT_STATUS_LINKED",
      error: "",
      duplicate: false,
    });
    const stored = await event(body.event_id);
    expect(stored).toMatchObject({ source: "whatsapp", sender_id: "5511999999999", content: "teste", metadata: {}, contact_id: body.contact_id, status: "LINKED" });
    expect(stored.created_at).toBeInstanceOf(Date);
    const [contact] = await rows(fixture.database, "SELECT * FROM crm_contacts WHERE id = $1", [body.contact_id]);
    expect(contact.whatsapp_id).toBe("5511999999999");
  });

  it("accepts camelCase field names and keeps metadata as sent", async () => {
    const metadata = { gateway: "zapi", attempt: 2, nested: { tags: ["a", "b"], ok: true, none: null } };
    const { status, body } = await ingest({ source: "whatsapp", senderId: "5531977776666", content: "camel", metadata });

    expect(status).toBe(200);
    expect((await event(body.event_id)).metadata).toEqual(metadata);
  });

  it("answers RECEIVED and ERROR events with an empty contact_id, and ERROR with its reason", async () => {
    const received = await ingest({ source: "web", sender_id: "visitor-42", content: "quero um orçamento", metadata: {} });
    const error = await ingest({ source: "email", sender_id: "not-an-address", content: "x", metadata: {} });

    expect(received.body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_RECEIVED", contact_id: "", error: "" });
    expect(error.body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_ERROR", contact_id: "" });
    expect(error.body.error).toContain("not an e-mail address");
    expect((await event(error.body.event_id)).error).toBe(error.body.error);
  });

  it("resolves through the Connect route as through the plain one", async () => {
    const plain = await ingest({ source: "whatsapp", sender_id: "+55 48 9123-4567", content: "oi" });
    const connect = await postJson(fixture.server.baseUrl, "/aurora.crm.v1.IngestService/IngestMessage", {
      source: "whatsapp",
      senderId: "5548991234567@c.us",
      content: "via connect",
    });

    expect(connect.status).toBe(200);
    expect(connect.body).toMatchObject({ eventStatus: "INGEST_EVENT_STATUS_LINKED", contactId: plain.body.contact_id });
  });

  it("reads national numbers in the default region the server was given", async () => {
    const portugal = await startTestServer(fixture.database, { defaultPhoneRegion: "PT" });
    try {
      const inPortugal = await ingest({ source: "whatsapp", sender_id: "912 345 678", content: "olá" }, portugal);
      const inBrazil = await ingest({ source: "whatsapp", sender_id: "912 345 678", content: "olá" });

      expect(inPortugal.body.event_status).toBe("INGEST_EVENT_STATUS_LINKED");
      const [contact] = await rows(fixture.database, "SELECT whatsapp_id FROM crm_contacts WHERE id = $1", [inPortugal.body.contact_id]);
      expect(contact.whatsapp_id).toBe("351912345678");
      expect(inBrazil.body).toMatchObject({ event_status: "INGEST_EVENT_STATUS_ERROR", contact_id: "" });
    } finally {
      await portugal.server.close();
    }
  });
});

describe(`retries with external_id over the network (${databaseKind})`, () => {
  it("answers a retry with the original ids, flagged duplicate, and stores nothing new", async () => {
    const message = { source: "whatsapp", sender_id: "5511900000001", content: "pedido 1", metadata: {}, external_id: "wamid.HBgN001" };
    const first = await ingest(message);
    const events = await count(fixture.database, "crm_ingest_events");
    const retry = await ingest(message);

    expect(first.body).toMatchObject({ status: "persisted", duplicate: false });
    expect(retry.status).toBe(200);
    expect(retry.body).toEqual({ ...first.body, duplicate: true });
    expect(await count(fixture.database, "crm_ingest_events")).toBe(events);
    expect((await event(first.body.event_id)).external_id).toBe("wamid.HBgN001");
  });

  it("counts a replayed retry as a duplicate, not as a stored event, and says so in its log line", async () => {
    const sum = async (metric: { get(): Promise<{ values: Array<{ value: number }> }> }) => (await metric.get()).values.reduce((total, v) => total + v.value, 0);
    const { metrics } = fixture.server;
    const message = { source: "web", sender_id: "visitor-metrics", content: "oi", external_id: "k-metrics" };
    await ingest(message);
    const before = { stored: await sum(metrics.eventsStored), duplicates: await sum(metrics.duplicates) };
    const retry = await ingest(message);

    expect(await sum(metrics.eventsStored)).toBe(before.stored);
    expect(await sum(metrics.duplicates)).toBe(before.duplicates + 1);
    const line = fixture.server.logLines.filter((l) => l.eventId === retry.body.event_id).at(-1);
    expect(line).toMatchObject({ duplicate: true, code: "ok" });
  });

  it("refuses the same key with different content as 409 already_exists revealing nothing stored, storing nothing", async () => {
    const original = await ingest({ source: "whatsapp", sender_id: "5511900000003", content: "primeira", external_id: "wamid.REUSED" });
    const events = await count(fixture.database, "crm_ingest_events");
    const conflict = await ingest({ source: "whatsapp", sender_id: "5511900000003", content: "outra coisa", external_id: "wamid.REUSED" });

    expect(conflict.status).toBe(409);
    expect(conflict.body.code).toBe("already_exists");
    // Neither the original's id nor which field differs: the caller may not be its sender.
    expect(JSON.stringify(conflict.body)).not.toContain(original.body.event_id);
    expect(JSON.stringify(conflict.body)).not.toContain(original.body.contact_id);
    expect(conflict.body.message).not.toMatch(/content|sender/);
    expect(await count(fixture.database, "crm_ingest_events")).toBe(events);
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
    expect((error as ConnectError).rawMessage).not.toContain(first.eventId);
    // A guessed sender with the right content is told no more than a guessed content.
    const otherSender = await client.ingestMessage({ ...message, senderId: "5511900000007" }).catch((e: unknown) => ConnectError.from(e));
    expect((otherSender as ConnectError).rawMessage).toBe((error as ConnectError).rawMessage);
    expect((otherSender as ConnectError).metadata.get("grpc-status-details-bin")).toBeNull();
    expect(fixture.server.loggedErrors).toEqual([]);
  });
});
