import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { loadConfig } from "../src/config.js";
import { createTracing, type Tracing } from "../src/observability/tracing.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from "./support/otlp-receiver.js";
import { startService } from "./support/process.js";
import { startTestServer, type TestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";

const INGEST = "aurora.crm.v1.IngestService/IngestMessage";
const SERVER = 2;

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
    expect(receiver.spans.filter((span) => span.traceId === marker.traceId).map((span) => span.name)).toEqual([INGEST]);
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
      const span = await receiver.waitFor((s) => s.traceId === caller.traceId);
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
      const span = await receiver.waitFor((s) => s.traceId === caller.traceId, 2_000);
      expect(span).toMatchObject({ name: INGEST, parentSpanId: caller.spanId });
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
