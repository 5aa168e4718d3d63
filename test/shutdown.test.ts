import net from "node:net";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { QueryTypes } from "sequelize";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { createTestDatabase, databaseKind, socketAddress, throughProxy, type TestDatabase } from "./support/database.js";
import { startService } from "./support/process.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { waitFor } from "./support/wait.js";
import { postMessage } from "./support/ingest.js";

// The service runs as a child process over the test's database, reached
// through a proxy so the test can see when a request has reached the database.
// A table lock held by the test keeps that request in flight for as long as
// the test wants.

let database: TestDatabase;
let proxy: TcpProxy;
let serviceUrl: string;
const cleanups: Array<() => unknown> = [];

beforeAll(async () => {
  database = await createTestDatabase({ poolMax: 4 });
  proxy = await startTcpProxy(socketAddress(database.url));
  serviceUrl = throughProxy(database.url, proxy.port).toString();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

afterAll(async () => {
  await proxy?.close();
  await database?.close();
});

async function countEvents(content: string): Promise<number> {
  const [row] = await database.sequelize.query<{ n: string }>("SELECT count(*) AS n FROM crm_ingest_events WHERE content = $1", {
    bind: [content],
    type: QueryTypes.SELECT,
  });
  return Number(row.n);
}

/** Holds an exclusive lock on the events table until `release()`, so every ingest waits. */
async function lockEvents(): Promise<{ release(): Promise<void> }> {
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  await client.query("BEGIN");
  await client.query("LOCK TABLE crm_ingest_events IN ACCESS EXCLUSIVE MODE");
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    await client.query("COMMIT");
    await client.end();
  };
  cleanups.push(release);
  return { release };
}

type Send = (baseUrl: string, content: string) => Promise<{ status: string }>;

const overHttp1: Send = async (baseUrl, content) => {
  const response = await postMessage(baseUrl, { source: "whatsapp", sender_id: "5511977771111", content, metadata: {} });
  if (response.status !== 200) throw new Error(`HTTP ${response.status}`);
  return response.body;
};
const overGrpc: Send = (baseUrl, content) =>
  createClient(IngestService, createGrpcTransport({ baseUrl })).ingestMessage({ source: "whatsapp", senderId: "5511977772222", content });

/** Starts the service, sends one request that the lock holds in flight, and waits until it reached the database. */
async function serviceWithRequestInFlight(env: Record<string, string>, content: string, send: Send = overHttp1) {
  const service = await startService({ DATABASE_URL: serviceUrl, ...env });
  // The exit code, or the signal that ended the process (so a crash names itself in the failure).
  const exited = new Promise<number | string | null>((resolve) => service.child.once("exit", (code, signal) => resolve(code ?? signal)));
  cleanups.push(() => service.child.kill("SIGKILL"));
  const lock = await lockEvents();
  const before = proxy.bytesFromClients();
  const inFlight = send(service.baseUrl, content).catch((error: unknown) => error);
  await waitFor(() => proxy.bytesFromClients() > before + 16);
  return { service, exited, lock, inFlight };
}

describe(`graceful shutdown (${databaseKind})`, () => {
  it.each([
    ["SIGTERM", "HTTP/1.1", overHttp1],
    ["SIGINT", "gRPC over HTTP/2", overGrpc],
  ] as const)("on %s refuses new connections, finishes the %s request in flight, and exits 0", async (signal, _protocol, send) => {
    const content = `finished after ${signal}`;
    const env = { SHUTDOWN_GRACE_MS: "30000", DATABASE_TIMEOUT_MS: "30000" };
    const { service, exited, lock, inFlight } = await serviceWithRequestInFlight(env, content, send);

    service.child.kill(signal);
    await waitFor(() => service.output().includes(`${signal} received`));
    await expect(connect(service.baseUrl)).rejects.toMatchObject({ code: "ECONNREFUSED" });

    await lock.release();
    expect(await inFlight).toMatchObject({ status: "persisted" });
    expect(await exited).toBe(0);
    expect(await countEvents(content)).toBe(1);
  });

  it("drains on a SIGTERM sent the moment it says where it listens", async () => {
    const service = await startService({ DATABASE_URL: serviceUrl });
    const exited = new Promise<number | string | null>((resolve) => service.child.once("exit", (code, signal) => resolve(code ?? signal)));
    cleanups.push(() => service.child.kill("SIGKILL"));
    service.child.kill("SIGTERM");
    expect({ exit: await exited, output: service.output() }).toMatchObject({ exit: 0, output: expect.stringContaining("SIGTERM received") });
  });

  it("keeps answering while the reader of its log has stalled, and writes every request's line before it exits", async () => {
    const service = await startService({ DATABASE_URL: serviceUrl, LOG_FORMAT: "json", LOG_LEVEL: "info" });
    const closed = new Promise<number | string | null>((resolve) => service.child.once("close", (code, signal) => resolve(code ?? signal)));
    cleanups.push(() => service.child.kill("SIGKILL"));
    // Nobody reads stdout: the pipe (64 KiB) fills after a couple of hundred lines.
    service.child.stdout!.pause();
    const requests = 600;
    for (let i = 0; i < requests; i += 30) {
      const answers = await Promise.all(
        Array.from({ length: Math.min(30, requests - i) }, (_, j) =>
          fetch(`${service.baseUrl}/ingest/message`, {
            method: "POST",
            headers: { "content-type": "application/json", "x-request-id": `stalled-log-${i + j}` },
            body: JSON.stringify({ source: "web", sender_id: "visitor", content: "while the log reader stalls", metadata: {} }),
            signal: AbortSignal.timeout(10_000),
          }).then((response) => response.status),
        ),
      );
      expect(answers.every((status) => status === 200)).toBe(true);
    }
    service.child.stdout!.resume();
    service.child.kill("SIGTERM");
    expect(await closed).toBe(0);
    const logged = new Set(service.output().match(/"requestId":"stalled-log-\d+"/g));
    expect(logged.size).toBe(requests);
  });

  it("cuts off a request still running when the grace period ends, and exits 0 without storing it", async () => {
    const content = "cut off at the grace period";
    const { service, exited, lock, inFlight } = await serviceWithRequestInFlight({ SHUTDOWN_GRACE_MS: "1000", DATABASE_TIMEOUT_MS: "30000" }, content);

    const started = Date.now();
    service.child.kill("SIGTERM");
    expect(await exited).toBe(0);
    // Generous: the bound that matters is "about the grace period", not the 30 s database timeout.
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(await inFlight).toBeInstanceOf(Error);
    expect(service.output()).toContain("1 request(s) still running after the grace period were cut off");

    await lock.release();
    expect(await countEvents(content)).toBe(0);
  });
});

function connect(baseUrl: string): Promise<void> {
  const { hostname, port } = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => {
      socket.destroy();
      resolve();
    });
    socket.on("error", reject);
  });
}
