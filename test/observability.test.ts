import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { maskSenderId } from "../src/observability/logger.js";
import { databaseKind } from "./support/database.js";
import { postMessage } from "./support/ingest.js";
import { readMetric } from "./support/metrics.js";
import { useTestServer } from "./support/server.js";

const fixture = useTestServer();

const ingest = (body: unknown, headers: Record<string, string> = {}) => postMessage(fixture.server.baseUrl, body, headers);

/** One series of the server's /metrics; undefined when absent. */
const metric = (name: string, labels: Record<string, string> = {}) => readMetric(fixture.server.baseUrl, name, labels);
/** A counter before a test counts: absent until its first count. */
const counted = async (name: string, labels: Record<string, string> = {}) => (await metric(name, labels)) ?? 0;

const INGEST = "/aurora.crm.v1.IngestService/IngestMessage";

describe(`metrics at /metrics (${databaseKind})`, () => {
  it("count a request, the event it stored and the contact it created", async () => {
    const labels = { procedure: INGEST, protocol: "connect", code: "ok" };
    const before = {
      requests: await counted("aurora_ingest_requests_total", labels),
      linked: await counted("aurora_ingest_events_stored_total", { status: "LINKED" }),
      contacts: await counted("aurora_ingest_contacts_created_total"),
      latency: await counted("aurora_ingest_request_duration_seconds_count", { procedure: INGEST, protocol: "connect" }),
    };

    await ingest({ source: "whatsapp", sender_id: "5511944443333", content: "primeira", metadata: {} });
    await ingest({ source: "whatsapp", sender_id: "5511944443333", content: "segunda", metadata: {} });

    expect(await metric("aurora_ingest_requests_total", labels)).toBe(before.requests + 2);
    expect(await metric("aurora_ingest_events_stored_total", { status: "LINKED" })).toBe(before.linked + 2);
    // The same sender twice: one new contact.
    expect(await metric("aurora_ingest_contacts_created_total")).toBe(before.contacts + 1);
    expect(await metric("aurora_ingest_request_duration_seconds_count", { procedure: INGEST, protocol: "connect" })).toBe(
      before.latency + 2,
    );
  });

  it("count by protocol and code: gRPC, and a refused request", async () => {
    const grpcOk = { procedure: INGEST, protocol: "grpc", code: "ok" };
    const refused = { procedure: INGEST, protocol: "connect", code: "invalid_argument" };
    const before = {
      grpcOk: await counted("aurora_ingest_requests_total", grpcOk),
      refused: await counted("aurora_ingest_requests_total", refused),
      received: await counted("aurora_ingest_events_stored_total", { status: "RECEIVED" }),
    };
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: fixture.server.baseUrl }));
    await client.ingestMessage({ source: "web", senderId: "visitor-1", content: "via grpc" });
    await ingest({ source: "web", sender_id: "visitor-1", content: "   ", metadata: {} });
    await fetch(`${fixture.server.baseUrl}/ingest/message`, { method: "POST", headers: { "content-type": "application/json" }, body: "{nope" });

    expect(await metric("aurora_ingest_requests_total", grpcOk)).toBe(before.grpcOk + 1);
    expect(await metric("aurora_ingest_requests_total", refused)).toBe(before.refused + 2);
    expect(await metric("aurora_ingest_events_stored_total", { status: "RECEIVED" })).toBe(before.received + 1);
  });

  it("expose the database pool, the duplicates counter and Node's process defaults", async () => {
    const response = await fetch(`${fixture.server.baseUrl}/metrics`);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain/);
    const text = await response.text();
    for (const series of [
      'aurora_ingest_db_pool_connections{state="in_use"}',
      'aurora_ingest_db_pool_connections{state="idle"}',
      "aurora_ingest_db_pool_waiting",
      "aurora_ingest_duplicates_total",
      "process_cpu_user_seconds_total",
      "nodejs_heap_size_used_bytes",
    ]) {
      expect(text).toContain(`\n${series} `);
    }
    expect(await metric("aurora_ingest_db_pool_connections", { state: "idle" })).toBeGreaterThan(0);
  });
});

describe(`request logs (${databaseKind})`, () => {
  it("write one line per request with procedure, protocol, code, duration, request id and event id, and no personal data", async () => {
    const secret = { content: "conteúdo sigiloso 8f3a", cpf: "123.456.789-00", sender: "5511987654321" };
    const response = await ingest(
      { source: "whatsapp", sender_id: secret.sender, content: secret.content, metadata: { cpf: secret.cpf } },
      { "x-request-id": "req-abc-123" },
    );
    expect(response.status).toBe(200);
    expect(response.requestId).toBe("req-abc-123");

    const lines = fixture.server.logLines.filter((line) => line.requestId === "req-abc-123");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 30,
      method: "POST",
      path: "/ingest/message",
      procedure: INGEST,
      protocol: "connect",
      code: "ok",
      httpStatus: 200,
      eventId: response.body.event_id,
      eventStatus: "LINKED",
      source: "whatsapp",
      sender: "*******4321",
    });
    expect(lines[0].durationMs).toBeTypeOf("number");

    // Logged at every level, including debug and trace: none of it is personal.
    const text = fixture.server.logText();
    for (const value of [secret.content, secret.cpf, secret.sender, "cpf"]) expect(text).not.toContain(value);
  });

  it("give a request without an id a fresh one, and echo it", async () => {
    const response = await ingest({ source: "web", sender_id: "visitor-2", content: "oi", metadata: {} });
    expect(response.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(fixture.server.logLines.filter((line) => line.requestId === response.requestId)).toHaveLength(1);
  });

  it("log an internal error's cause with its stack, without the statement's values, and tell the client only `internal`", async () => {
    await fixture.database.sequelize.query("ALTER TABLE crm_ingest_events RENAME TO crm_ingest_events_away");
    let response;
    try {
      response = await ingest(
        { source: "web", sender_id: "visitor-3141592", content: "segredo interno 77", metadata: { token: "t0k3n-xyz" } },
        { "x-request-id": "req-internal" },
      );
    } finally {
      await fixture.database.sequelize.query("ALTER TABLE crm_ingest_events_away RENAME TO crm_ingest_events");
    }

    expect(response.status).toBe(500);
    expect(response.body).toEqual({ code: "internal", message: "internal error" });
    const lines = fixture.server.logLines.filter((line) => line.requestId === "req-internal");
    const error = lines.find((line) => line.msg === "internal error");
    expect(error?.level).toBe(50);
    expect(error?.err.message).toContain("crm_ingest_events");
    expect(error?.err.code).toBe("42P01");
    expect(error?.err.stack).toMatch(/\n\s+at /);
    expect(lines.find((line) => line.msg !== "internal error")).toMatchObject({ code: "internal", httpStatus: 500, level: 40 });
    const text = fixture.server.logText();
    for (const value of ["segredo interno 77", "t0k3n-xyz", "visitor-3141592"]) expect(text).not.toContain(value);
  });
});

describe("maskSenderId", () => {
  it.each([
    ["5511999999999", "*******9999"],
    ["  ana.souza@example.com ", "*******.com"],
    ["12345678", "*******5678"],
    ["1234567", "********"],
    ["", "********"],
  ])("masks %j as %j", (sender, masked) => {
    expect(maskSenderId(sender)).toBe(masked);
  });
});
