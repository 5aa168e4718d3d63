import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { ROOT_CONTEXT, trace } from "@opentelemetry/api";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WatchIngestEventsRequest_Start as Start } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { loadConfig } from "../src/config.js";
import { BATCH_SPAN_NAME } from "../src/ingest/batch-span.js";
import { createIngestMessage, type IngestMessageInput } from "../src/ingest/ingest-message.js";
import { createTracing, validTraceParent, type Tracing } from "../src/observability/tracing.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { feedClient, feedTransports, listAllIds, openWatch } from "./support/feed.js";
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from "./support/otlp-receiver.js";
import { startService } from "./support/process.js";
import { rows } from "./support/rows.js";
import { startTestServer, type TestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";

const INGEST = "aurora.crm.v1.IngestService/IngestMessage";
const SERVER = 2;
const CLIENT = 3;

/** A caller's trace context: a fresh trace and span id, sampled. */
function callerContext() {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01`, tracestate: "gateway=wa1" };
}

/** A sender and content no test shares, so any leak is attributable. */
function personalMessage() {
  const tag = randomBytes(4).toString("hex");
  return {
    source: "whatsapp",
    senderId: `55119${String(Math.floor(Math.random() * 1e8)).padStart(8, "0")}`,
    content: `conteúdo pessoal ${tag}`,
    metadata: { nome: `Maria ${tag}` },
  };
}

let database: TestDatabase;
let receiver: OtlpReceiver;
let tracing: Tracing;
let server: TestServer;

beforeAll(async () => {
  database = await createTestDatabase();
  receiver = await startOtlpReceiver();
  tracing = await createTracing({ protocol: "http/protobuf", url: `${receiver.endpoint}/v1/traces` });
  server = await startTestServer(database, { tracing });
});

afterAll(async () => {
  await server?.server.close();
  await tracing?.shutdown();
  await receiver?.close();
  await database?.close();
});

/** The request's span, once the batch holding it was exported. */
async function spanOf(traceId: string): Promise<ReceivedSpan> {
  await tracing.forceFlush();
  return receiver.waitFor((span) => span.traceId === traceId && span.kind === SERVER);
}

describe(`tracing: server spans exported over OTLP (${databaseKind})`, () => {
  it("makes the gRPC server span a child of the caller's traceparent, named by the procedure, with the RPC attributes", async () => {
    const caller = callerContext();
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: server.baseUrl }));
    let requestId = "";
    const message = personalMessage();
    const response = await client.ingestMessage(message, {
      headers: { traceparent: caller.traceparent, tracestate: caller.tracestate },
      onHeader: (headers) => (requestId = headers.get("x-request-id") ?? ""),
    });

    const span = await spanOf(caller.traceId);
    expect(span).toMatchObject({
      name: INGEST,
      kind: SERVER,
      parentSpanId: caller.spanId,
      traceState: caller.tracestate,
      status: { code: 0 },
    });
    expect(span.attributes).toMatchObject({
      "rpc.system": "grpc",
      "rpc.service": "aurora.crm.v1.IngestService",
      "rpc.method": "IngestMessage",
      "rpc.grpc.status_code": 0,
      "aurora.request_id": requestId,
      "aurora.ingest.source": "whatsapp",
      "aurora.ingest.sender": `*******${message.senderId.slice(-4)}`,
      "aurora.ingest.event_id": response.eventId,
      "aurora.ingest.event_status": "LINKED",
      "aurora.ingest.duplicate": false,
    });
    expect(span.resource["service.name"]).toBe("aurora-crm-ingest");
    expect(span.spanId).not.toBe(caller.spanId);
  });

  it("makes the /ingest/message span a child of the caller's traceparent and puts its ids on the request's log line", async () => {
    const caller = callerContext();
    const response = await fetch(`${server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: caller.traceparent, "x-request-id": `req-${caller.spanId}` },
      body: JSON.stringify({ source: "web", sender_id: "visitor-1", content: "olá" }),
    });
    expect(response.status).toBe(200);

    const span = await spanOf(caller.traceId);
    expect(span).toMatchObject({ name: INGEST, parentSpanId: caller.spanId, traceState: "" });
    expect(span.attributes).toMatchObject({
      "rpc.system": "connect_rpc",
      "rpc.service": "aurora.crm.v1.IngestService",
      "rpc.method": "IngestMessage",
      "aurora.request_id": `req-${caller.spanId}`,
    });
    expect(span.attributes).not.toHaveProperty("rpc.connect_rpc.error_code");
    expect(span.attributes).not.toHaveProperty("rpc.grpc.status_code");

    const line = server.logLines.find((l) => l.requestId === `req-${caller.spanId}`);
    expect(line).toMatchObject({ trace_id: caller.traceId, span_id: span.spanId, path: "/ingest/message", code: "ok" });
  });

  it("records the gRPC status code of a refused call, and the Connect error code on the Connect protocol", async () => {
    const grpcCaller = callerContext();
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: server.baseUrl }));
    const refused = await client
      .ingestMessage({ source: "whatsapp", senderId: " ", content: "x" }, { headers: { traceparent: grpcCaller.traceparent } })
      .catch((error: unknown) => error);
    expect(ConnectError.from(refused).code).toBe(Code.InvalidArgument);
    const grpcSpan = await spanOf(grpcCaller.traceId);
    expect(grpcSpan.attributes["rpc.grpc.status_code"]).toBe(Code.InvalidArgument);
    // A client's mistake is not the server's error.
    expect(grpcSpan.status.code).toBe(0);

    const connectCaller = callerContext();
    const response = await fetch(`${server.baseUrl}/${INGEST}`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: connectCaller.traceparent },
      body: JSON.stringify({ source: "whatsapp", senderId: "", content: "x" }),
    });
    expect(response.status).toBe(400);
    const connectSpan = await spanOf(connectCaller.traceId);
    expect(connectSpan.attributes).toMatchObject({ "rpc.system": "connect_rpc", "rpc.connect_rpc.error_code": "invalid_argument" });
  });

  it("takes part in the caller's trace over gRPC-Web too", async () => {
    const caller = callerContext();
    const client = createClient(IngestService, createGrpcWebTransport({ baseUrl: server.baseUrl, httpVersion: "1.1" }));
    await client.ingestMessage({ source: "web", senderId: "v", content: "oi" }, { headers: { traceparent: caller.traceparent } });
    const span = await spanOf(caller.traceId);
    expect(span).toMatchObject({ name: INGEST, parentSpanId: caller.spanId });
    expect(span.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.grpc.status_code": 0 });
  });

  it("starts a new trace when the caller sends none or a malformed one, and logs its id", async () => {
    for (const traceparent of [undefined, "00-not-a-trace-01", `00-${"0".repeat(32)}-${"1".repeat(16)}-01`]) {
      const requestId = `req-${randomBytes(6).toString("hex")}`;
      const response = await fetch(`${server.baseUrl}/ingest/message`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-request-id": requestId, ...(traceparent && { traceparent }) },
        body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
      });
      expect(response.status).toBe(200);
      await tracing.forceFlush();
      const span = await receiver.waitFor((s) => s.attributes["aurora.request_id"] === requestId);
      expect(span.parentSpanId).toBe("");
      expect(span.traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(span.traceId).not.toBe("0".repeat(32));
      expect(server.logLines.find((l) => l.requestId === requestId)).toMatchObject({ trace_id: span.traceId, span_id: span.spanId });
    }
  });

  it("puts no message content, metadata or full sender id in any span", async () => {
    const messages = [personalMessage(), { ...personalMessage(), source: "email", senderId: `maria.${randomBytes(3).toString("hex")}@example.com` }];
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: server.baseUrl }));
    for (const message of messages) await client.ingestMessage(message);
    // A refused one too: its error must not carry the values either.
    await client.ingestMessage({ ...personalMessage(), senderId: "x".repeat(400) }).catch(() => undefined);
    await tracing.forceFlush();
    await receiver.waitFor((span) => span.attributes["aurora.ingest.source"] === "email");

    const exported = Buffer.concat(receiver.bodies).toString("latin1");
    for (const message of messages) {
      for (const value of [message.content, message.metadata.nome, message.senderId]) {
        expect(exported).not.toContain(Buffer.from(value, "utf8").toString("latin1"));
      }
    }
    expect(exported).not.toContain("x".repeat(20));
    const attributeValues = receiver.spans.flatMap((span) => Object.values(span.attributes).map(String));
    for (const message of messages) expect(attributeValues).toContain(`*******${message.senderId.slice(-4)}`);
  });

  it("does not trace health checks", async () => {
    const caller = callerContext();
    const client = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
    await client.check({}, { headers: { traceparent: caller.traceparent } });
    const marker = callerContext();
    await client.check({}, { headers: { traceparent: marker.traceparent } });
    await fetch(`${server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: marker.traceparent },
      body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
    });
    await spanOf(marker.traceId);
    expect(receiver.spans.filter((span) => span.traceId === caller.traceId)).toEqual([]);
    expect(receiver.spans.filter((span) => span.traceId === marker.traceId).map((span) => span.name)).toEqual([BATCH_SPAN_NAME, INGEST]);
  });

  it("exports OTLP JSON when configured so", async () => {
    const json = await createTracing({ protocol: "http/json", url: `${receiver.endpoint}/v1/traces` });
    const jsonServer = await startTestServer(database, { tracing: json });
    try {
      const caller = callerContext();
      await fetch(`${jsonServer.baseUrl}/ingest/message`, {
        method: "POST",
        headers: { "content-type": "application/json", traceparent: caller.traceparent },
        body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
      });
      await json.forceFlush();
      const span = await receiver.waitFor((s) => s.traceId === caller.traceId && s.kind === SERVER);
      expect(span).toMatchObject({ name: INGEST, parentSpanId: caller.spanId });
      expect(receiver.contentTypes).toContain("application/json");
    } finally {
      await jsonServer.server.close();
      await json.shutdown();
    }
  });

  it("without tracing, writes no trace ids to the log and exports nothing", async () => {
    const plain = await startTestServer(database);
    try {
      const before = receiver.bodies.length;
      const caller = callerContext();
      await fetch(`${plain.baseUrl}/ingest/message`, {
        method: "POST",
        headers: { "content-type": "application/json", traceparent: caller.traceparent, "x-request-id": "untraced" },
        body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
      });
      await tracing.forceFlush();
      const line = plain.logLines.find((l) => l.requestId === "untraced");
      expect(line).toMatchObject({ code: "ok" });
      expect(line).not.toHaveProperty("trace_id");
      expect(receiver.bodies.slice(before).join("")).not.toContain(caller.traceId);
    } finally {
      await plain.server.close();
    }
  });
});

/** A span's id as a link names it. */
const idOf = (span: { traceId: string; spanId: string }) => `${span.traceId}-${span.spanId}`;

/** The attributes a batch span may carry: the database conventions' and the batch size, nothing taken from a message. */
const BATCH_ATTRIBUTES = ["db.system.name", "db.namespace", "db.operation.name", "db.collection.name", "server.address", "server.port", "aurora.ingest.batch.size"];

/** The stored trace_parent of an event, straight from the table. */
async function storedTraceParent(eventId: string): Promise<string | null> {
  const [row] = await rows<{ trace_parent: string | null }>(database, "SELECT trace_parent FROM crm_ingest_events WHERE id = $1", [eventId]);
  return row.trace_parent;
}

describe(`tracing: the database span and the trace each event keeps (${databaseKind})`, () => {
  it("writes each batch in one database span, a child of its first request and linked to every request it carried", async () => {
    // Batches of up to 5, one at a time: requests that arrive while one is written go together in the next.
    const batched = await startTestServer(database, { tracing, ingestBatch: { maxBatch: 5, maxInFlight: 1 } });
    try {
      const client = createClient(IngestService, createGrpcTransport({ baseUrl: batched.baseUrl }));
      const callers = Array.from({ length: 16 }, callerContext);
      const messages = callers.map(() => personalMessage());
      const responses = await Promise.all(callers.map((caller, i) => client.ingestMessage(messages[i], { headers: { traceparent: caller.traceparent } })));
      await tracing.forceFlush();
      const requests = await Promise.all(callers.map((caller) => receiver.waitFor((s) => s.traceId === caller.traceId && s.kind === SERVER)));
      const requestIds = new Set(requests.map(idOf));
      const batches = receiver.spans.filter((s) => s.name === BATCH_SPAN_NAME && s.links.some((link) => requestIds.has(idOf(link))));

      expect(batches.length).toBeGreaterThanOrEqual(callers.length / 5);
      // Every request is carried by exactly one batch, and some batch carried several.
      expect(batches.flatMap((batch) => batch.links.map(idOf)).sort()).toEqual([...requestIds].sort());
      expect(Math.max(...batches.map((batch) => batch.links.length))).toBeGreaterThan(1);
      for (const batch of batches) {
        const [first] = batch.links;
        expect(batch).toMatchObject({ kind: CLIENT, traceId: first.traceId, parentSpanId: first.spanId, status: { code: 0 }, events: [] });
        expect(batch.attributes).toMatchObject({
          "db.system.name": "postgresql",
          "db.operation.name": "INSERT",
          "db.collection.name": "crm_ingest_events",
          "db.namespace": expect.any(String),
          "aurora.ingest.batch.size": batch.links.length,
        });
        expect(BATCH_ATTRIBUTES).toEqual(expect.arrayContaining(Object.keys(batch.attributes)));
      }

      // Each event keeps its own request's trace, whichever batch wrote it.
      for (const [i, response] of responses.entries()) {
        expect(await storedTraceParent(response.eventId)).toBe(`00-${requests[i].traceId}-${requests[i].spanId}-01`);
      }
      const exported = Buffer.concat(receiver.bodies).toString("latin1");
      for (const message of messages) {
        for (const value of [message.content, message.metadata.nome, message.senderId]) {
          expect(exported).not.toContain(Buffer.from(value, "utf8").toString("latin1"));
        }
      }
    } finally {
      await batched.server.close();
    }
  });

  it("stores the request span's traceparent with the event; Get, List and Watch return it, and a replay keeps the original's", async () => {
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: server.baseUrl }));
    const caller = callerContext();
    const message = { ...personalMessage(), externalId: `wamid.${caller.spanId}` };
    const stored = await client.ingestMessage(message, { headers: { traceparent: caller.traceparent } });
    const span = await spanOf(caller.traceId);
    const traceParent = `00-${caller.traceId}-${span.spanId}-01`;
    expect(await storedTraceParent(stored.eventId)).toBe(traceParent);

    const feed = feedClient(feedTransports["gRPC"](server.baseUrl));
    expect((await feed.getIngestEvent({ id: stored.eventId })).ingestEvent).toMatchObject({ id: stored.eventId, traceParent });
    // Listed and watched once deliverable (every older transaction of the database ended).
    await waitFor(async () => (await listAllIds(feed)).includes(stored.eventId), 10_000);
    let pageToken = "";
    let listed;
    do {
      const page = await feed.listIngestEvents({ pageSize: 1000, pageToken, source: message.source });
      listed ??= page.ingestEvents.find((event) => event.id === stored.eventId);
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(listed).toMatchObject({ traceParent });
    const watch = openWatch(feed, { start: Start.BEGINNING, source: message.source });
    try {
      await waitFor(() => watch.ids().includes(stored.eventId), 10_000);
      expect(watch.responses.find((r) => r.ingestEvent?.id === stored.eventId)?.ingestEvent).toMatchObject({ traceParent });
    } finally {
      watch.cancel();
    }

    // A retry of the same message in another trace is the same event, born in the first trace.
    const retry = await client.ingestMessage(message, { headers: { traceparent: callerContext().traceparent } });
    expect(retry).toMatchObject({ eventId: stored.eventId, duplicate: true });
    expect(await storedTraceParent(stored.eventId)).toBe(traceParent);
  });

  it("without tracing, stores the caller's traceparent as received, and none for a malformed one", async () => {
    const plain = await startTestServer(database);
    try {
      const send = async (traceparent: string | undefined) => {
        const response = await fetch(`${plain.baseUrl}/ingest/message`, {
          method: "POST",
          headers: { "content-type": "application/json", ...(traceparent !== undefined && { traceparent }) },
          body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
        });
        expect(response.status).toBe(200);
        return storedTraceParent(((await response.json()) as { event_id: string }).event_id);
      };
      const sampled = callerContext().traceparent;
      const unsampled = sampled.replace(/-01$/, "-00");
      expect(await send(sampled)).toBe(sampled);
      expect(await send(unsampled)).toBe(unsampled);
      const { traceId, spanId } = callerContext();
      for (const malformed of [
        undefined,
        "",
        "00-not-a-trace-01",
        `00-${"0".repeat(32)}-${spanId}-01`,
        `00-${traceId}-${"0".repeat(16)}-01`,
        `00-${traceId.toUpperCase()}-${spanId}-01`,
        `01-${traceId}-${spanId}-01`,
        `00-${traceId}-${spanId}-01-extra`,
        `00-${traceId}-${spanId}-1`,
      ]) {
        expect(await send(malformed), String(malformed)).toBeNull();
      }
      expect(plain.loggedErrors).toEqual([]);
    } finally {
      await plain.server.close();
    }
  });

  it("marks a batch split because one message's value was refused, on the batch's span", async () => {
    const ingest = createIngestMessage({ sequelize: database.sequelize, defaultPhoneRegion: "BR", tracing, ingestBatch: { maxInFlight: 1 } });
    const requests = [0, 1, 2].map(() => tracing.tracer.startSpan("request"));
    const input = (i: number, content: string): IngestMessageInput => ({
      source: "web",
      senderId: `split-${i}`,
      content,
      metadata: {},
      externalId: null,
      trace: trace.setSpan(ROOT_CONTEXT, requests[i]),
    });
    const results = await Promise.allSettled([ingest(input(0, "fine")), ingest(input(1, "nul \u0000 segredo")), ingest(input(2, "fine"))]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    for (const request of requests) request.end();
    await tracing.forceFlush();

    const first = requests[0].spanContext();
    const batch = await receiver.waitFor((s) => s.name === BATCH_SPAN_NAME && s.links.some((link) => link.spanId === first.spanId));
    expect(batch.links.map(idOf)).toEqual(requests.map((request) => idOf(request.spanContext())));
    expect(batch).toMatchObject({ parentSpanId: first.spanId, status: { code: 0 } });
    expect(batch.events).toEqual([
      { name: "aurora.ingest.split", attributes: { "db.response.status_code": expect.stringMatching(/^22/), "aurora.ingest.batch.size": 3 } },
    ]);
    expect(JSON.stringify(batch)).not.toContain("segredo");
  });

  it("records a batch when any of its requests is sampled: the first sampled one is its parent", async () => {
    const ingest = createIngestMessage({ sequelize: database.sequelize, defaultPhoneRegion: "BR", tracing });
    const unsampledCaller = callerContext();
    const unsampled = tracing.tracer.startSpan(
      "request",
      {},
      trace.setSpanContext(ROOT_CONTEXT, { traceId: unsampledCaller.traceId, spanId: unsampledCaller.spanId, traceFlags: 0, isRemote: true }),
    );
    const sampled = tracing.tracer.startSpan("request");
    expect([unsampled.isRecording(), sampled.isRecording()]).toEqual([false, true]);
    const send = (span: typeof sampled, senderId: string) =>
      ingest({ source: "web", senderId, content: "x", metadata: {}, externalId: null, trace: trace.setSpan(ROOT_CONTEXT, span) });
    await Promise.all([send(unsampled, "unsampled"), send(sampled, "sampled")]);
    sampled.end();
    await tracing.forceFlush();

    const batch = await receiver.waitFor((s) => s.name === BATCH_SPAN_NAME && s.parentSpanId === sampled.spanContext().spanId);
    expect(batch.traceId).toBe(sampled.spanContext().traceId);
    expect(batch.links.map(idOf)).toEqual([idOf(unsampled.spanContext()), idOf(sampled.spanContext())]);
  });

  // The embedded database runs one transaction at a time: no other session can hold the contact's key.
  it.runIf(databaseKind === "postgres")("marks a batch that lost a race for a new contact and ran again, on the batch's span", async () => {
    const ingest = createIngestMessage({ sequelize: database.sequelize, defaultPhoneRegion: "BR", tracing });
    const request = tracing.tracer.startSpan("request");
    const rival = new pg.Client({ connectionString: database.url });
    await rival.connect();
    try {
      // Another writer creates the same new contact and has not committed: the batch waits on its key, then loses.
      await rival.query("BEGIN");
      const [contact] = (await rival.query<{ id: string }>("INSERT INTO crm_contacts (whatsapp_id) VALUES ('5511955550000') RETURNING id")).rows;
      const result = ingest({ source: "whatsapp", senderId: "5511955550000", content: "oi", metadata: {}, externalId: null, trace: trace.setSpan(ROOT_CONTEXT, request) });
      await waitFor(async () => {
        const waiting = await rival.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'");
        return waiting.rowCount! > 0;
      }, 5_000);
      await rival.query("COMMIT");
      expect(await result).toMatchObject({ contactId: contact.id, contactCreated: false, status: "LINKED" });
    } finally {
      await rival.end();
    }
    request.end();
    await tracing.forceFlush();
    const batch = await receiver.waitFor((s) => s.name === BATCH_SPAN_NAME && s.parentSpanId === request.spanContext().spanId);
    expect(batch.events).toEqual([{ name: "aurora.ingest.retry", attributes: { "db.response.status_code": "23505", "aurora.ingest.attempt": 2 } }]);
    expect(batch.status.code).toBe(0);
  });
});

describe("traceparent validation", () => {
  it("accepts W3C version 00 only, lower-case hex, with non-zero ids", () => {
    expect(validTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).toBe("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    expect(validTraceParent(null)).toBeNull();
    expect(validTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01, 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).toBeNull();
    expect(validTraceParent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).toBeNull();
  });
});

describe("tracing configuration", () => {
  it("is off unless an OTLP endpoint is set, and off when the standard switches say so", () => {
    expect(loadConfig({}).tracing).toBeUndefined();
    expect(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }).tracing).toEqual({ protocol: "http/protobuf" });
    expect(loadConfig({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://collector:4318/v1/traces", OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" }).tracing).toEqual({
      protocol: "http/json",
    });
    expect(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318", OTEL_SDK_DISABLED: "true" }).tracing).toBeUndefined();
    expect(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318", OTEL_TRACES_EXPORTER: "none" }).tracing).toBeUndefined();
  });

  it("names a protocol, exporter or endpoint it cannot use", () => {
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" })).toThrow(
      /OTEL_EXPORTER_OTLP_PROTOCOL must be http\/protobuf or http\/json/,
    );
    expect(() => loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT must be an http/);
    expect(() => loadConfig({ OTEL_TRACES_EXPORTER: "zipkin" })).toThrow(/OTEL_TRACES_EXPORTER must be otlp or none/);
  });
});

describe(`tracing in the running service (${databaseKind})`, () => {
  it("exports from the standard OTEL_* variables and flushes its spans when it stops", async () => {
    const service = await startService({
      DATABASE_URL: database.url,
      LOG_FORMAT: "json",
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
      OTEL_SERVICE_NAME: "ingest-under-test",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment.name=test",
      // Nothing is exported on a timer within the test: only shutdown can deliver the span.
      OTEL_BSP_SCHEDULE_DELAY: "600000",
    });
    const exited = new Promise<number | null>((resolve) => service.child.once("exit", resolve));
    try {
      const caller = callerContext();
      const response = await fetch(`${service.baseUrl}/ingest/message`, {
        method: "POST",
        headers: { "content-type": "application/json", traceparent: caller.traceparent },
        body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
      });
      expect(response.status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(receiver.spans.some((span) => span.traceId === caller.traceId)).toBe(false);

      service.child.kill("SIGTERM");
      expect(await exited).toBe(0);
      const span = await receiver.waitFor((s) => s.traceId === caller.traceId && s.kind === SERVER, 2_000);
      expect(span).toMatchObject({ name: INGEST, parentSpanId: caller.spanId });
      expect(receiver.spans.find((s) => s.traceId === caller.traceId && s.kind === CLIENT)).toMatchObject({ name: BATCH_SPAN_NAME, parentSpanId: span.spanId });
      expect(span.resource).toMatchObject({ "service.name": "ingest-under-test", "deployment.environment.name": "test" });
      expect(receiver.contentTypes.at(-1)).toBe("application/x-protobuf");
      expect(service.output()).toContain(`"trace_id":"${caller.traceId}"`);
    } finally {
      service.child.kill("SIGKILL");
    }
  });

  it("keeps serving when the collector cannot be reached, and says so in its log", async () => {
    // A port that was just free: nothing listens there.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const { port } = closed.address() as { port: number };
    await new Promise((resolve) => closed.close(resolve));

    const service = await startService({
      DATABASE_URL: database.url,
      LOG_FORMAT: "json",
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
      OTEL_BSP_SCHEDULE_DELAY: "100",
      OTEL_EXPORTER_OTLP_TIMEOUT: "1000",
    });
    const exited = new Promise<number | null>((resolve) => service.child.once("exit", resolve));
    try {
      const response = await fetch(`${service.baseUrl}/ingest/message`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ source: "web", sender_id: "v", content: "oi" }),
      });
      expect(await response.json()).toMatchObject({ status: "persisted" });
      await waitFor(() => /"level":40,[^\n]*"component":"opentelemetry"/.test(service.output()), 10_000);
      service.child.kill("SIGTERM");
      expect(await exited).toBe(0);
    } finally {
      service.child.kill("SIGKILL");
    }
  });
});
