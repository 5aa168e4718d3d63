import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { openDatabase, type Database } from "../src/db/database.js";
import { createTestDatabase, databaseKind, socketAddress, throughProxy, type TestDatabase } from "./support/database.js";
import { rows as rowsOf } from "./support/rows.js";
import { postMessage } from "./support/ingest.js";
import { startTestServer, type TestServer } from "./support/server.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { sleep, waitFor } from "./support/wait.js";

// The service reaches its database only through a proxy that can cut or
// silence the connection; the test reads the database directly.
const TIMEOUT_MS = 1_000;
const SERVICE_NAME = "aurora-faults-test";

let database: TestDatabase;
let proxy: TcpProxy;
let serviceDatabase: Database;
let server: TestServer;

beforeAll(async () => {
  database = await createTestDatabase({ poolMax: 4 });
  proxy = await startTcpProxy(socketAddress(database.url));
  const target = throughProxy(database.url, proxy.port);
  target.searchParams.set("application_name", SERVICE_NAME);
  serviceDatabase = await openDatabase({ kind: "postgres", url: target.toString() }, { poolMax: 4, timeoutMs: TIMEOUT_MS });
  server = await startTestServer(serviceDatabase, { requestTimeoutMs: TIMEOUT_MS });
});

afterEach(() => {
  // Every fault is the database's, never a bug: nothing may surface as internal.
  expect(server.logLines.filter((line) => line.msg === "internal error" || line.level >= 50)).toEqual([]);
});

afterAll(async () => {
  await server?.server.close();
  await serviceDatabase?.close();
  await proxy?.close();
  await database?.close();
});

let sequence = 0;
const ingest = () =>
  postMessage(server.baseUrl, { source: "whatsapp", sender_id: `55119${String(++sequence).padStart(8, "0")}`, content: "during a fault", metadata: {} });

/** Sends a request and measures how long its answer took. */
async function timed<T>(request: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const started = performance.now();
  const result = await request();
  return { result, ms: performance.now() - started };
}

const rows = <T extends object = Record<string, any>>(sql: string) => rowsOf<T>(database, sql);

/** Nothing half-written: every contact has the event that created it, and every event is whole. */
async function expectNothingHalfWritten() {
  expect(await rows("SELECT c.id FROM crm_contacts c WHERE NOT EXISTS (SELECT 1 FROM crm_ingest_events e WHERE e.contact_id = c.id)")).toEqual([]);
  expect(await rows("SELECT id FROM crm_ingest_events WHERE status = 'LINKED' AND contact_id IS NULL")).toEqual([]);
}

async function expectServesAgain() {
  const { status, body } = await ingest();
  expect(status).toBe(200);
  expect(await rows(`SELECT id FROM crm_ingest_events WHERE id = '${body.event_id}'`)).toHaveLength(1);
}

describe(`database faults (${databaseKind})`, () => {
  it("serves through the proxy", async () => {
    expect((await ingest()).status).toBe(200);
  });

  it("answers 503 unavailable within a bounded time while the database refuses connections, then serves again without a restart", async () => {
    proxy.cut();
    for (let i = 0; i < 3; i++) {
      const { result, ms } = await timed(ingest);
      expect(result.status).toBe(503);
      expect(result.body.code).toBe("unavailable");
      expect(ms).toBeLessThan(3 * TIMEOUT_MS);
    }
    const grpc = createClient(IngestService, createGrpcTransport({ baseUrl: server.baseUrl }));
    const error = await grpc.ingestMessage({ source: "web", senderId: "v", content: "x" }).catch((e: unknown) => e);
    expect(ConnectError.from(error).code).toBe(Code.Unavailable);

    proxy.restore();
    await expectServesAgain();
    await expectNothingHalfWritten();
  });

  it("answers 503 within a bounded time while the network is silent (no reset, no answer), then serves again", async () => {
    proxy.blackhole();
    const answers = await Promise.all(Array.from({ length: 6 }, () => timed(ingest)));
    for (const { result, ms } of answers) {
      expect(result.status).toBe(503);
      expect(ms).toBeLessThan(3 * TIMEOUT_MS);
    }

    proxy.restore();
    await expectServesAgain();
    await expectNothingHalfWritten();
  });

  it("loses nothing acknowledged and writes nothing half when connections drop mid-load", async () => {
    const acknowledged: string[] = [];
    const statuses: number[] = [];
    const load = Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let i = 0; i < 15; i++) {
          const { status, body } = await ingest();
          statuses.push(status);
          if (status === 200) acknowledged.push(body.event_id);
        }
      }),
    );
    await waitFor(() => acknowledged.length >= 10);
    proxy.cut();
    await sleep(300);
    proxy.restore();
    await load;

    expect(new Set(statuses)).toEqual(new Set(statuses.filter((s) => s === 200 || s === 503)));
    expect(statuses).toContain(503);
    const stored = new Set((await rows<{ id: string }>("SELECT id FROM crm_ingest_events")).map((r) => r.id));
    expect(acknowledged.filter((id) => !stored.has(id))).toEqual([]);
    await expectNothingHalfWritten();
    await expectServesAgain();
  });

  it.runIf(databaseKind === "postgres")(
    "kills the connection in the middle of a batch: each message was either stored and acknowledged or refused, never half",
    async () => {
      // A known contact, locked by another session: a batch that links an
      // event to it waits on the lock mid-statement, its other events and
      // new contacts already inserted but not committed.
      const known = await postMessage(server.baseUrl, { source: "whatsapp", sender_id: "5511977770000", content: "known", metadata: {} });
      const locked = { id: known.body.contact_id as string };
      const admin = new pg.Client({ connectionString: database.url });
      await admin.connect();
      try {
        await admin.query("BEGIN");
        await admin.query("SELECT id FROM crm_contacts WHERE id = $1 FOR UPDATE", [locked.id]);
        const sent = Array.from({ length: 8 }, (_, i) => ({
          source: "whatsapp",
          sender_id: i === 0 ? "5511977770000" : `5511977771${String(i).padStart(3, "0")}`,
          content: `mid-batch ${i}`,
          metadata: {},
        }));
        const answers = Promise.all(sent.map((body) => postMessage(server.baseUrl, body)));
        for (let waited = 0; ; waited += 10) {
          const waiting = await admin.query("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", [SERVICE_NAME]);
          if (waiting.rowCount! > 0) break;
          if (waited > 5_000) throw new Error("no batch waited on the locked contact");
          await sleep(10);
        }
        proxy.cut();
        await admin.query("COMMIT");
        const responses = await answers;
        proxy.restore();

        const stored = await rows<{ id: string; content: string }>("SELECT id, content FROM crm_ingest_events WHERE content LIKE 'mid-batch %'");
        const storedByContent = new Map(stored.map((event) => [event.content, event.id]));
        responses.forEach((response, i) => {
          if (response.status === 200) expect(storedByContent.get(sent[i].content)).toBe(response.body.event_id);
          else {
            expect(response.status).toBe(503);
            expect(storedByContent.has(sent[i].content)).toBe(false);
          }
        });
        expect(responses.map((r) => r.status)).toContain(503);
        await expectNothingHalfWritten();
        await expectServesAgain();
      } finally {
        await admin.end();
      }
    },
  );

  it.runIf(databaseKind === "postgres")("recovers when PostgreSQL ends every connection, as on a restart", async () => {
    expect((await ingest()).status).toBe(200);
    const admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    try {
      const { rowCount } = await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [SERVICE_NAME]);
      expect(rowCount).toBeGreaterThan(0);
    } finally {
      await admin.end();
    }
    const first = await ingest();
    expect([200, 503]).toContain(first.status);
    await expectServesAgain();
  });
});
