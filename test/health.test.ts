import { readdirSync } from "node:fs";
import path from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { openDatabase, type Database } from "../src/db/database.js";
import { createMigrator } from "../src/db/migrator.js";
import { createTestDatabase, databaseKind, socketAddress, throughProxy, type TestDatabase } from "./support/database.js";
import { startTestServer, type TestServer } from "./support/server.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { postMessage } from "./support/ingest.js";

let database: TestDatabase;
let proxy: TcpProxy;
let proxied: Database;
let server: TestServer;
let health: ReturnType<typeof createClient<typeof Health>>;

// The server reaches the database through a proxy the tests can cut.
beforeAll(async () => {
  database = await createTestDatabase();
  proxy = await startTcpProxy(socketAddress(database.url));
  proxied = await openDatabase({ kind: "postgres", url: throughProxy(database.url, proxy.port).toString() }, { poolMax: 2 });
  server = await startTestServer(proxied, { health: { cacheMs: 0, timeoutMs: 5_000, watchIntervalMs: 100 } });
  health = createClient(Health, createGrpcTransport({ baseUrl: server.baseUrl }));
});

afterAll(async () => {
  proxy?.restore();
  await server?.server.close(0);
  await proxied?.close();
  await proxy?.close();
  await database?.close();
});

/** Polls `read` until `done` holds for its value (or a minute passes), and returns that value. */
async function eventually<T>(read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const value = await read();
    if (done(value) || Date.now() > deadline) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const check = async () => (await health.check({})).status;
const probe = async (path: string) => {
  const response = await fetch(server.baseUrl + path);
  return { status: response.status, body: await response.json() };
};

// The schema version /readyz names: the newest migration, and the one before it.
const migrations = readdirSync(path.resolve(import.meta.dirname, "../migrations"))
  .map((file) => file.replace(/\.[jt]s$/, ""))
  .sort();

describe(`health (${databaseKind})`, () => {
  it("answers SERVING over gRPC and 200 on /healthz and /readyz while the database answers", async () => {
    expect(await check()).toBe(ServingStatus.SERVING);
    expect((await health.check({ service: "aurora.crm.v1.IngestService" })).status).toBe(ServingStatus.SERVING);
    expect((await health.check({ service: "aurora.crm.v1.IngestEventService" })).status).toBe(ServingStatus.SERVING);
    expect(await probe("/healthz")).toEqual({ status: 200, body: { status: "alive" } });
    expect(await probe("/readyz")).toEqual({
      status: 200,
      body: {
        ready: true,
        database: "reachable",
        schemaVersion: migrations.at(-1),
        pendingMigrations: 0,
        shuttingDown: false,
        feedHorizon: { scope: "database" },
      },
    });
  });

  it("answers NOT_FOUND for an unknown service, on Check and on Watch (which then ends)", async () => {
    await expect(health.check({ service: "no.such.Service" })).rejects.toMatchObject({ code: Code.NotFound });
    const statuses: ServingStatus[] = [];
    const watching = (async () => {
      for await (const response of health.watch({ service: "no.such.Service" })) statuses.push(response.status);
    })();
    await expect(watching).rejects.toMatchObject({ code: Code.NotFound });
    expect(statuses).toEqual([]);
  });

  it("flips to NOT_SERVING while the database is cut off and back to SERVING when it returns, and Watch streams both", async () => {
    const watched: ServingStatus[] = [];
    const controller = new AbortController();
    const watching = (async () => {
      for await (const response of health.watch({}, { signal: controller.signal })) watched.push(response.status);
    })().catch((error) => {
      if (ConnectError.from(error).code !== Code.Canceled) throw error;
    });
    await eventually(async () => watched, (w) => w.length > 0);

    proxy.cut();
    expect(await eventually(check, (s) => s === ServingStatus.NOT_SERVING)).toBe(ServingStatus.NOT_SERVING);
    expect(await probe("/readyz")).toMatchObject({ status: 503, body: { ready: false, database: "unreachable" } });
    expect((await probe("/healthz")).status).toBe(200);
    const ingest = await postMessage(server.baseUrl, { source: "web", sender_id: "v1", content: "x", metadata: {} });
    expect(ingest.body.code).toBe("unavailable");

    proxy.restore();
    expect(await eventually(check, (s) => s === ServingStatus.SERVING)).toBe(ServingStatus.SERVING);
    expect((await eventually(() => probe("/readyz"), (r) => r.status === 200)).status).toBe(200);

    await eventually(async () => watched, (w) => w.length >= 3);
    controller.abort();
    await watching;
    expect(watched).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]);
    expect(server.logLines.map((line) => line.msg)).toEqual(
      expect.arrayContaining(["database does not answer: reporting NOT_SERVING", "database answers again: reporting SERVING"]),
    );
  });

  it("is not ready on /readyz while a migration is pending", async () => {
    const migrator = createMigrator(database.sequelize);
    await migrator.down();
    try {
      expect(await probe("/readyz")).toMatchObject({
        status: 503,
        body: { ready: false, database: "reachable", schemaVersion: migrations.at(-2), pendingMigrations: 1 },
      });
      expect(await check()).toBe(ServingStatus.SERVING);
    } finally {
      await migrator.up();
    }
    expect((await probe("/readyz")).status).toBe(200);
  });

  it("reports NOT_SERVING once shutdown begins, ending open watches", async () => {
    const watched: ServingStatus[] = [];
    const watching = (async () => {
      for await (const response of health.watch({})) watched.push(response.status);
    })();
    await eventually(async () => watched, (w) => w.length > 0);

    server.health.shutdown();
    await watching;
    expect(watched).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    expect(await check()).toBe(ServingStatus.NOT_SERVING);
    expect(await probe("/readyz")).toMatchObject({ status: 503, body: { ready: false, shuttingDown: true } });
    expect((await probe("/healthz")).status).toBe(200);
  });
});

describe("with tokens configured", () => {
  const token = "health-watch-token-0123456789";
  let guarded: TestServer;
  beforeAll(async () => {
    guarded = await startTestServer(proxied, { apiTokens: [token] });
  });
  afterAll(async () => {
    await guarded?.server.close(0);
  });

  it("Check stays open for probes; Watch needs a token, since each one holds a slot of MAX_OPEN_WATCHES", async () => {
    const anonymous = createClient(Health, createGrpcTransport({ baseUrl: guarded.baseUrl }));
    expect((await anonymous.check({ service: "" })).status).toBe(ServingStatus.SERVING);
    const refused = await (async () => {
      for await (const _ of anonymous.watch({ service: "" })) return undefined;
    })().catch((error: unknown) => ConnectError.from(error));
    expect(refused?.code).toBe(Code.Unauthenticated);

    const withToken = createClient(
      Health,
      createGrpcTransport({ baseUrl: guarded.baseUrl, interceptors: [(next) => (request) => (request.header.set("authorization", `Bearer ${token}`), next(request))] }),
    );
    const controller = new AbortController();
    for await (const response of withToken.watch({ service: "" }, { signal: controller.signal })) {
      expect(response.status).toBe(ServingStatus.SERVING);
      break;
    }
    controller.abort();
  });
});

describe("watches per connection", () => {
  it("one connection holds at most 10 Health watches; another connection still gets one", async () => {
    // A server of its own: the one above has begun its shutdown.
    const fresh = await startTestServer(proxied);
    const health = createClient(Health, createGrpcTransport({ baseUrl: fresh.baseUrl }));
    const controller = new AbortController();
    const open = (client: typeof health) => {
      const stream = client.watch({ service: "" }, { signal: controller.signal })[Symbol.asyncIterator]();
      return stream.next().then(
        () => undefined,
        (error: unknown) => ConnectError.from(error),
      );
    };
    try {
      const first = await Promise.all(Array.from({ length: 10 }, () => open(health)));
      expect(first).toEqual(Array.from({ length: 10 }, () => undefined));
      const refused = await open(health);
      expect(refused?.code).toBe(Code.ResourceExhausted);
      expect(refused?.rawMessage).toMatch(/on this connection/);
      expect(await open(createClient(Health, createGrpcTransport({ baseUrl: fresh.baseUrl })))).toBeUndefined();
    } finally {
      controller.abort();
      await fresh.server.close(0);
    }
  });
});
