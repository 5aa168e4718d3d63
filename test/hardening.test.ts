import { stat } from "node:fs/promises";
import http2 from "node:http2";
import net from "node:net";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { defaultInputLimits } from "../src/config.js";
import { openDatabase } from "../src/db/database.js";
import { createTestCertificates, type TestCertificates } from "./support/certificates.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { requires } from "./support/requirements.js";
import { connectRawH2, FRAME, headersFrame } from "./support/h2-frames.js";
import { startTestServer, type TestServer } from "./support/server.js";
import { sleep } from "./support/wait.js";

const TOKEN = "hardening-token-0123456789";
const auth = { authorization: `Bearer ${TOKEN}` };

let database: TestDatabase;
let server: TestServer;
let certificates: TestCertificates | undefined;
const closers: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database, {
    apiTokens: [TOKEN],
    serverLimits: { http2IdleTimeoutMs: 500, requestBodyTimeoutMs: 1_000 },
  });
});

afterAll(async () => {
  for (const close of closers) await close();
  await server?.server.close(0);
  await database?.close();
  certificates?.remove();
});

const portOf = (s: TestServer) => Number(new URL(s.baseUrl).port);

/** Resolves to `value`'s outcome, or "timeout" after `ms`. */
function within<T>(value: Promise<T>, ms: number): Promise<T | "timeout"> {
  return Promise.race([value, sleep(ms).then(() => "timeout" as const)]);
}

/** Sends raw bytes over a new TCP connection and returns everything the server sent until it closed (or 5 s passed). */
function rawHttp(port: number, text: string | Buffer, keepSendingMs = 0): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let answer = "";
    socket.on("data", (chunk) => (answer += chunk));
    socket.on("error", () => undefined);
    socket.on("close", () => resolve(answer));
    socket.write(text);
    setTimeout(() => {
      resolve(answer);
      socket.destroy();
    }, 5_000 + keepSendingMs).unref();
  });
}

const statusOf = (answer: string) => Number(/^HTTP\/1\.[01] (\d{3})/.exec(answer)?.[1]);
const jsonOf = (answer: string) => JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4));

/** One HTTP/2 request with Node's client: status, headers, trailers and body. */
async function h2Request(
  baseUrl: string,
  headers: http2.OutgoingHttpHeaders,
  body?: Buffer,
  options: http2.SecureClientSessionOptions = {},
): Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; body: string }> {
  const session = http2.connect(baseUrl, options);
  session.on("error", () => undefined);
  try {
    return await new Promise((resolve, reject) => {
      const stream = session.request(headers);
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      let text = "";
      stream.on("response", (h) => (responseHeaders = h));
      stream.on("trailers", (t) => (trailers = t));
      stream.on("data", (chunk) => (text += chunk));
      stream.on("end", () => resolve({ headers: responseHeaders, trailers, body: text }));
      stream.on("error", reject);
      if (body) stream.write(body);
      if (body !== undefined && headers["x-keep-open"] === undefined) stream.end();
    });
  } finally {
    session.close();
  }
}

const grpcStatus = (response: { headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders }) =>
  Number(response.trailers["grpc-status"] ?? response.headers["grpc-status"]);

async function stillServing(s: TestServer = server): Promise<void> {
  const response = await fetch(`${s.baseUrl}/healthz`);
  expect(response.status).toBe(200);
  const health = createClient(Health, createGrpcTransport({ baseUrl: s.baseUrl }));
  expect((await health.check({})).status).toBe(ServingStatus.SERVING);
}

describe(`no request can stop the server (${databaseKind})`, () => {
  const check = "/grpc.health.v1.Health/Check";

  it("answers 400 to HTTP/1.0 without Host, and to an empty or unparsable Host or :authority, and keeps serving", async () => {
    const port = portOf(server);
    const json = "content-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    for (const request of [
      `POST ${check} HTTP/1.0\r\n${json}`,
      `POST ${check} HTTP/1.1\r\nhost:\r\n${json}`,
      `POST ${check} HTTP/1.1\r\nhost: [\r\n${json}`,
      `POST /ingest/message HTTP/1.1\r\nhost: [\r\n${json}`,
    ]) {
      const answer = await rawHttp(port, request);
      expect(statusOf(answer), request).toBe(400);
      expect(jsonOf(answer).code).toBe("invalid_argument");
    }
    for (const authority of ["["]) {
      const connect = await h2Request(server.baseUrl, { ":method": "POST", ":path": check, ":authority": authority, "content-type": "application/json" }, Buffer.from("{}"));
      expect(connect.headers[":status"]).toBe(400);
      const grpc = await h2Request(server.baseUrl, { ":method": "POST", ":path": check, ":authority": authority, "content-type": "application/grpc" }, Buffer.alloc(5));
      expect(grpcStatus(grpc)).toBe(Code.InvalidArgument);
    }
    await stillServing();
  });
});

describe(`HTTP/2 is bounded, cleartext and TLS (${databaseKind})`, () => {
  const maxConcurrentStreams = async (baseUrl: string, options: http2.SecureClientSessionOptions = {}) => {
    const session = http2.connect(baseUrl, options);
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    session.close();
    return settings.maxConcurrentStreams;
  };

  it("advertises at most 100 concurrent streams per connection", async () => {
    expect(await maxConcurrentStreams(server.baseUrl)).toBe(100);
  });

  it.runIf(requires("openssl"))("advertises at most 100 concurrent streams per connection over TLS", async () => {
    certificates = createTestCertificates();
    const tlsServer = await startTestServer(database, { tls: certificates.server });
    closers.push(() => tlsServer.server.close(0));
    expect(await maxConcurrentStreams(tlsServer.baseUrl, { ca: certificates.ca })).toBe(100);
  });

  it("refuses or resets 40,000 streams that never send a body, over 4 connections, with memory bounded", async () => {
    const port = portOf(server);
    const headers = (id: number) =>
      headersFrame(id, [
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/grpc.health.v1.Health/Check"],
        [":authority", "127.0.0.1"],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
      ]);
    const baseline = process.memoryUsage().heapUsed;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().heapUsed)), 20);
    let refused = 0;
    let goaways = 0;
    const attacker = async () => {
      let sent = 0;
      while (sent < 10_000) {
        const connection = await connectRawH2(port);
        let id = 1;
        // Streams go out in batches, as fast as the socket takes them, until the server hangs up.
        while (sent < 10_000 && !connection.isClosed()) {
          const batch: Buffer[] = [];
          for (let i = 0; i < 500 && sent + i < 10_000; i++, id += 2) batch.push(headers(id));
          sent += batch.length;
          if (!connection.socket.write(Buffer.concat(batch))) await within(new Promise((r) => connection.socket.once("drain", r)), 1_000);
          await sleep(5);
        }
        await within(connection.closed, 2_000);
        refused += connection.frames.filter((f) => f.type === FRAME.RST_STREAM).length;
        goaways += connection.frames.filter((f) => f.type === FRAME.GOAWAY).length;
        connection.socket.destroy();
      }
    };
    try {
      await Promise.all([attacker(), attacker(), attacker(), attacker()]);
      await sleep(200);
    } finally {
      clearInterval(sampler);
    }
    const growthMb = (peak - baseline) / 2 ** 20;
    console.log(`40,000 body-less streams: heap peak +${growthMb.toFixed(1)} MB, ${refused} RST_STREAM, ${goaways} GOAWAY`);
    // Without limits each held stream costs about 17 KB: 40,000 would be about 680 MB.
    expect(growthMb).toBeLessThan(200);
    expect(refused + goaways).toBeGreaterThan(0);
    await stillServing();
  });

  it("closes an HTTP/2 connection left without streams for the idle timeout (here 0.5 s)", async () => {
    const connection = await connectRawH2(portOf(server));
    expect(await within(connection.closed, 5_000)).not.toBe("timeout");
    expect(connection.frames.some((f) => f.type === FRAME.GOAWAY)).toBe(true);
  });

  it("answers a body not received in time with 408 on the plain route and deadline_exceeded over gRPC", async () => {
    const port = portOf(server);
    const started = Date.now();
    const plain = await rawHttp(
      port,
      `POST /ingest/message HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"source":`,
    );
    expect(statusOf(plain)).toBe(408);
    expect(jsonOf(plain).code).toBe("deadline_exceeded");
    expect(Date.now() - started).toBeLessThan(4_500);

    const grpc = await h2Request(
      server.baseUrl,
      { ":method": "POST", ":path": "/aurora.crm.v1.IngestService/IngestMessage", "content-type": "application/grpc", "x-keep-open": "1", ...auth },
      Buffer.from([0, 0, 0, 0, 50, 10]),
    );
    expect(grpcStatus(grpc)).toBe(Code.DeadlineExceeded);
    await stillServing();
  });

  it("closes connections past the cap at once, and accepts again below it", async () => {
    const capped = await startTestServer(database, { serverLimits: { maxConnections: 3 } });
    closers.push(() => capped.server.close(0));
    const port = portOf(capped);
    const open = await Promise.all(
      [1, 2, 3].map(() => new Promise<net.Socket>((resolve) => {
        const socket = net.connect(port, "127.0.0.1", () => resolve(socket));
      })),
    );
    await sleep(100);
    const extra = net.connect(port, "127.0.0.1");
    extra.on("error", () => undefined);
    expect(await within(new Promise((resolve) => extra.once("close", resolve)), 3_000)).not.toBe("timeout");
    for (const socket of open) socket.destroy();
    await sleep(200);
    expect(statusOf(await rawHttp(port, "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"))).toBe(200);
  });
});

describe(`streams end (${databaseKind})`, () => {
  it("caps open watches and ends them promptly at shutdown, saying NOT_SERVING", async () => {
    const watched = await startTestServer(database, { serverLimits: { maxOpenWatches: 2 } });
    const health = createClient(Health, createGrpcTransport({ baseUrl: watched.baseUrl }));
    const statuses: ServingStatus[][] = [[], []];
    const watches = statuses.map(async (seen) => {
      for await (const response of health.watch({})) seen.push(response.status);
    });
    while (statuses.some((seen) => seen.length === 0)) await sleep(20);
    const third = (async () => {
      for await (const _ of health.watch({})) break;
    })();
    await expect(third).rejects.toMatchObject({ code: Code.ResourceExhausted });

    const started = Date.now();
    expect(await watched.server.close(20_000)).toBe(0);
    expect(Date.now() - started).toBeLessThan(3_000);
    await Promise.all(watches);
    expect(statuses).toEqual([
      [ServingStatus.SERVING, ServingStatus.NOT_SERVING],
      [ServingStatus.SERVING, ServingStatus.NOT_SERVING],
    ]);
  });
});

describe(`cheap probes (${databaseKind})`, () => {
  it("1,000 /readyz calls cost at most one database query a second", async () => {
    // The first answer also reads, once, whether the feed's horizon tells databases apart (src/feed/horizon.ts).
    await (await fetch(`${server.baseUrl}/readyz`)).arrayBuffer();
    let queries = 0;
    const logging = database.sequelize.options.logging;
    database.sequelize.options.logging = () => void queries++;
    const started = Date.now();
    try {
      for (let i = 0; i < 100; i++) {
        const answers = await Promise.all(Array.from({ length: 10 }, () => fetch(`${server.baseUrl}/readyz`)));
        for (const answer of answers) {
          expect(answer.status).toBe(200);
          await answer.arrayBuffer();
        }
      }
    } finally {
      database.sequelize.options.logging = logging;
    }
    const seconds = (Date.now() - started) / 1000;
    console.log(`1,000 /readyz calls in ${seconds.toFixed(1)} s: ${queries} database queries`);
    expect(queries).toBeLessThanOrEqual(Math.ceil(seconds) + 1);
  });
});

describe(`cheap refusals (${databaseKind})`, () => {
  it("the default body limit fits the largest valid request, and refuses an 85k-key metadata body unread", async () => {
    expect(defaultInputLimits.requestMaxBytes).toBe(400 * 1024);
    const largest = {
      source: "web",
      sender_id: "s".repeat(defaultInputLimits.senderIdMaxChars),
      external_id: `largest-${Date.now()}`.padEnd(defaultInputLimits.externalIdMaxChars, "e"),
      content: "c".repeat(defaultInputLimits.contentMaxBytes),
      metadata: { note: "m".repeat(defaultInputLimits.metadataMaxBytes - 20) },
    };
    const fits = await fetch(`${server.baseUrl}/ingest/message`, { method: "POST", headers: { "content-type": "application/json", ...auth }, body: JSON.stringify(largest) });
    expect(fits.status).toBe(200);

    const metadata = Object.fromEntries(Array.from({ length: 85_000 }, (_, i) => [`k${i}`, i]));
    const body = JSON.stringify({ source: "web", sender_id: "x", content: "y", metadata });
    expect(body.length).toBeGreaterThan(900_000);
    const refused = await fetch(`${server.baseUrl}/ingest/message`, { method: "POST", headers: { "content-type": "application/json", ...auth }, body });
    expect(refused.status).toBe(413);
    expect((await refused.json()).code).toBe("resource_exhausted");
  });

  it("refuses metadata over its limit even when the body fits", async () => {
    const metadata = Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`k${i}`, i]));
    const response = await fetch(`${server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
      body: JSON.stringify({ source: "web", sender_id: "x", content: "y", metadata }),
    });
    expect(response.status).toBe(400);
    expect((await response.json()).message).toContain("metadata: must be at most 65536 bytes as JSON");
  });
});

describe(`logs (${databaseKind})`, () => {
  const post = (body: unknown, headers: Record<string, string> = auth) =>
    fetch(`${server.baseUrl}/ingest/message`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
  const lineOf = (requestId: string | null) => server.logLines.find((line) => line.requestId === requestId && line.code !== undefined);

  it("logs source only when it matches its pattern, else a short marker", async () => {
    const huge = "Personal Data ".repeat(20_000);
    for (const [source, logged] of [
      ["web", "web"],
      ["Whats App", "(invalid)"],
      [huge, "(invalid)"],
    ]) {
      const response = await post({ source, sender_id: "someone@example.com", content: "x" });
      await response.arrayBuffer();
      await sleep(20);
      expect(lineOf(response.headers.get("x-request-id"))?.source).toBe(logged);
    }
    expect(server.logText()).not.toContain("Personal Data Personal Data");
  });

  it("logs refused unauthenticated requests at debug, and counts them (code 401 on plain routes)", async () => {
    const counted = async () =>
      (await server.metrics.requests.get()).values.filter((v) => ["unauthenticated", "401"].includes(String(v.labels.code))).reduce((sum, v) => sum + v.value, 0);
    const before = await counted();
    const response = await post({ source: "web", sender_id: "x", content: "y" }, {});
    expect(response.status).toBe(401);
    await sleep(20);
    expect(lineOf(response.headers.get("x-request-id"))?.level).toBe(20);
    expect(await counted()).toBe(before + 1);
  });
});

describe(`compressed bodies (${databaseKind})`, () => {
  const message = Buffer.from(JSON.stringify({ source: "web", sender_id: "x", content: "compressed" }));
  const truncated = {
    gzip: gzipSync(message).subarray(0, 15),
    br: brotliCompressSync(message).subarray(0, 8),
  };

  it("answers a broken gzip or brotli body invalid_argument (400) on every path", async () => {
    for (const [encoding, body] of Object.entries(truncated)) {
      for (const path of ["/ingest/message", "/aurora.crm.v1.IngestService/IngestMessage", "/grpc.health.v1.Health/Check"]) {
        const response = await fetch(server.baseUrl + path, {
          method: "POST",
          headers: { "content-type": "application/json", "content-encoding": encoding, ...auth },
          body,
        });
        expect([path, encoding, response.status]).toEqual([path, encoding, 400]);
        expect((await response.json()).code).toBe("invalid_argument");
      }
    }
    // gRPC: a compressed message (flag 1) that does not decompress.
    const envelope = Buffer.concat([Buffer.from([1]), Buffer.alloc(4), truncated.gzip]);
    envelope.writeUInt32BE(truncated.gzip.length, 1);
    const grpc = await h2Request(
      server.baseUrl,
      { ":method": "POST", ":path": "/grpc.health.v1.Health/Check", "content-type": "application/grpc", "grpc-encoding": "gzip", te: "trailers" },
      envelope,
    );
    expect(grpcStatus(grpc)).toBe(Code.InvalidArgument);
  });

  it("answers a body that decompresses past the limit 413 on /ingest/message", async () => {
    const bomb = gzipSync(Buffer.alloc(8 * 1024 * 1024, " "));
    expect(bomb.length).toBeLessThan(defaultInputLimits.requestMaxBytes);
    const response = await fetch(`${server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json", "content-encoding": "gzip", ...auth },
      body: bomb,
    });
    expect(response.status).toBe(413);
    expect((await response.json()).code).toBe("resource_exhausted");
  });
});

describe("the embedded database is reachable only by the service", () => {
  it("listens on an owner-only Unix socket in a private folder, not on a TCP port", async () => {
    const embedded = await openDatabase({ kind: "embedded", dataDir: "memory://" }, { poolMax: 1 });
    try {
      const folder = String(embedded.sequelize.config.host);
      expect(folder.startsWith("/")).toBe(true);
      const socket = await stat(`${folder}/.s.PGSQL.5432`);
      expect(socket.isSocket()).toBe(true);
      expect(socket.mode & 0o077).toBe(0);
      expect((await stat(folder)).mode & 0o077).toBe(0);
      const [rows] = await embedded.sequelize.query("SELECT 1 AS one");
      expect(rows).toEqual([{ one: 1 }]);
    } finally {
      await embedded.close();
    }
  });
});
