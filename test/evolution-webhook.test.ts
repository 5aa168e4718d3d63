import { QueryTypes } from "sequelize";
import { beforeEach, describe, expect, it } from "vitest";
import { IngestEventKind, type IngestEvent } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { databaseKind } from "./support/database.js";
import { feedClient, feedTransports } from "./support/feed.js";
import { useTestServer } from "./support/server.js";
import { envelope, EVOLUTION_KEY as KEY, evolutionJwt, groupMessage, imageMessage, INSTANCE, lidMessage, ownMessage, statusUpdate, storyMessage, textMessage } from "./fixtures/evolution.js";
import { metricValue } from "./support/metrics.js";

const FEED_TOKEN = "feed-token-0123456789abcdef";
const INGEST_TOKEN = "ingest-token-0123456789abcdef";

const context = useTestServer({
  apiTokens: [INGEST_TOKEN],
  feedApiTokens: [FEED_TOKEN],
  evolution: { jwtKeys: [KEY], maxBodyBytes: 256 * 1024 },
});

/** Posts a delivery as Evolution does: JSON, with the JWT its `jwt_key` header makes (or the given Authorization). */
async function deliver(body: unknown, options: { instance?: string; authorization?: string | null } = {}) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  const authorization = options.authorization === undefined ? `Bearer ${await evolutionJwt(KEY)}` : options.authorization;
  if (authorization !== null) headers.authorization = authorization;
  const response = await fetch(`${context.server.baseUrl}/webhooks/evolution/${options.instance ?? INSTANCE}`, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** Every event in the feed, as a consumer with a feed token reads it. */
async function feed(): Promise<IngestEvent[]> {
  const page = await feedClient(feedTransports["Connect over HTTP/1.1"](context.server.baseUrl, FEED_TOKEN)).listIngestEvents({ pageSize: 1000 });
  return page.ingestEvents;
}

async function count(sql: string): Promise<number> {
  const [row] = await context.database.sequelize.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${sql}`, { type: QueryTypes.SELECT });
  return row.n;
}

/** A counter's value in this server's metrics; 0 while nothing was counted. */
async function metric(name: string, labels: Record<string, string>): Promise<number> {
  return metricValue(await context.server.metrics.registry.metrics(), name, labels) ?? 0;
}

describe(`Evolution API webhook (${databaseKind})`, () => {
  let before: number;
  beforeEach(async () => {
    before = await count("crm_ingest_events");
  });

  it("stores a customer's text message, visible in ListIngestEvents, and a retried delivery adds nothing", async () => {
    const delivery = envelope("messages.upsert", textMessage("3EB0C431C26A1916E8A1", "Oi, quero um orçamento"));
    expect(await deliver(delivery)).toEqual({ status: 200, body: { status: "ok", stored: 1, duplicates: 0, errors: 0 } });
    expect(await deliver(delivery)).toEqual({ status: 200, body: { status: "ok", stored: 0, duplicates: 1, errors: 0 } });
    const event = (await feed()).find((e) => e.externalId === `${INSTANCE}:3EB0C431C26A1916E8A1`);
    expect(event).toMatchObject({
      source: "whatsapp",
      senderId: "5511987654321@s.whatsapp.net",
      content: "Oi, quero um orçamento",
      kind: IngestEventKind.MESSAGE,
      status: IngestEventStatus.LINKED,
    });
    expect(event?.metadata).toMatchObject({ gateway: "evolution", instance: INSTANCE, push_name: "Maria Oliveira" });
    expect(JSON.stringify(event?.metadata)).not.toContain("DO-NOT-STORE");
    // The canonical WhatsApp id: the same person as through Meta's webhook or /ingest/message.
    expect(await count("crm_contacts WHERE whatsapp_id = '5511987654321'")).toBe(1);
  });

  it("resolves a @lid chat to the phone in remoteJidAlt", async () => {
    expect((await deliver(envelope("messages.upsert", lidMessage("3EB0LID1", "Olá pelo LID")))).status).toBe(200);
    const event = (await feed()).find((e) => e.externalId === `${INSTANCE}:3EB0LID1`);
    expect(event).toMatchObject({ senderId: "5521998877665@s.whatsapp.net", status: IngestEventStatus.LINKED });
    expect(await count("crm_contacts WHERE whatsapp_id = '5521998877665'")).toBe(1);
  });

  it("acknowledges our own messages, groups, stories and other events without storing them, and counts them", async () => {
    for (const body of [
      envelope("messages.upsert", ownMessage("3EB0OWN1")),
      envelope("messages.upsert", groupMessage("3EB0GRP1")),
      envelope("messages.upsert", storyMessage("3EB0STO1")),
      envelope("connection.update", { instance: INSTANCE, state: "open", statusReason: 200 }),
    ]) {
      expect(await deliver(body)).toEqual({ status: 200, body: { status: "ok", stored: 0, duplicates: 0, errors: 0 } });
    }
    expect(await count("crm_ingest_events")).toBe(before);
    expect(await metric("aurora_ingest_webhook_items_ignored_total", { channel: "evolution", item: "from_me" })).toBe(1);
    expect(await metric("aurora_ingest_webhook_items_ignored_total", { item: "group" })).toBe(1);
    expect(await metric("aurora_ingest_webhook_items_ignored_total", { item: "event:connection.update" })).toBe(1);
  });

  it("stores a status update as a STATUS event that links to the contact and creates none", async () => {
    await deliver(envelope("messages.upsert", textMessage("3EB0ST01", "oi", "5511977776666@s.whatsapp.net")));
    const contacts = await count("crm_contacts");
    expect((await deliver(envelope("messages.update", statusUpdate("3EB0OUT1", "READ", "5511977776666@s.whatsapp.net")))).body).toMatchObject({ stored: 1 });
    expect((await deliver(envelope("messages.update", statusUpdate("3EB0OUT1", "READ", "5511900001111@s.whatsapp.net")))).status).toBe(200);
    expect((await deliver(envelope("messages.update", statusUpdate("3EB0OUT2", "DELIVERY_ACK", "5511900001111@s.whatsapp.net")))).status).toBe(200);
    expect(await count("crm_contacts")).toBe(contacts);
    const statuses = (await feed()).filter((e) => e.kind === IngestEventKind.STATUS);
    expect(statuses.map((e) => [e.externalId, e.content, e.status])).toEqual([
      [`${INSTANCE}:3EB0OUT1:READ`, "READ", IngestEventStatus.LINKED],
      [`${INSTANCE}:3EB0OUT2:DELIVERY_ACK`, "DELIVERY_ACK", IngestEventStatus.RECEIVED],
    ]);
  });

  it("stores a media message with a label and an unusable item as an ERROR event, never dropping it", async () => {
    const broken = textMessage("unused", "sem id");
    (broken.key as Record<string, unknown>).id = undefined;
    expect((await deliver(envelope("messages.upsert", [imageMessage("3EB0IMG1"), broken]))).body).toMatchObject({ stored: 2, errors: 1 });
    const events = await feed();
    expect(events.find((e) => e.externalId === `${INSTANCE}:3EB0IMG1`)).toMatchObject({ content: "[image]" });
    expect(events.find((e) => e.status === IngestEventStatus.ERROR && e.error.includes("key.id"))).toBeDefined();
  });

  it("refuses a missing, wrong or expired JWT, or another instance's body, storing nothing and counting each reason", async () => {
    const body = envelope("messages.upsert", textMessage("3EB0REF1", "forjada"));
    const expired = await evolutionJwt(KEY, { iat: Math.floor(Date.now() / 1000) - 700 });
    expect((await deliver(body, { authorization: null })).status).toBe(401);
    expect((await deliver(body, { authorization: `Bearer ${await evolutionJwt("wrong-key-0123456789abcdef")}` })).status).toBe(401);
    expect((await deliver(body, { authorization: `Bearer ${expired}` })).status).toBe(401);
    // Our own bearer token is not Evolution's proof.
    expect((await deliver(body, { authorization: `Bearer ${INGEST_TOKEN}` })).status).toBe(401);
    expect((await deliver(body, { instance: "outra-instancia" })).status).toBe(403);
    expect((await deliver("{not json")).status).toBe(400);
    expect(await count("crm_ingest_events")).toBe(before);
    for (const reason of ["jwt_missing", "jwt_invalid", "jwt_expired", "wrong_instance", "bad_json"]) {
      expect(await metric("aurora_ingest_webhook_deliveries_refused_total", { channel: "evolution", reason })).toBeGreaterThan(0);
    }
    expect(context.server.logText()).not.toContain(KEY);
  });

  it("accepts the per-event URL Evolution uses when its webhook is set by events", async () => {
    const response = await fetch(`${context.server.baseUrl}/webhooks/evolution/${INSTANCE}/messages-upsert`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${await evolutionJwt(KEY)}` },
      body: JSON.stringify(envelope("messages.upsert", textMessage("3EB0BYEV", "por evento"))),
    });
    expect(response.status).toBe(200);
  });
});
