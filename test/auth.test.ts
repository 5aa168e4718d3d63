import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import type { PlainRoute } from "../src/transport/route-table.js";
import { databaseKind } from "./support/database.js";
import { configProblems } from "./support/config.js";
import { startService } from "./support/process.js";
import { countEvents as countEventsIn } from "./support/rows.js";
import { useTestServer } from "./support/server.js";
import { sleep, waitFor } from "./support/wait.js";

const token = randomBytes(24).toString("base64url");
const rotatedToken = randomBytes(24).toString("base64url");
const message = { source: "web", sender_id: "visitor-1", content: "hello", metadata: {} };

const hookSecret = "a-provider-signing-secret";
const signature = (body: Buffer | string) => createHmac("sha256", hookSecret).update(body).digest("hex");
/** A route that proves its caller itself, as a provider's webhook does: an HMAC over the raw body, no bearer token. */
const providerHook: PlainRoute = {
  kind: "plain",
  methods: ["POST"],
  path: "/test-hooks/:account",
  access: "provider",
  maxBodyBytes: 1024,
  handle(request, rawBody) {
    const sent = Buffer.from(String(request.headers["x-signature"] ?? ""));
    const expected = Buffer.from(signature(rawBody));
    if (sent.length !== expected.length || !timingSafeEqual(sent, expected)) return { status: 401 };
    return { status: 200, headers: { "content-type": "application/json" }, body: JSON.stringify({ account: request.params.account, bytes: rawBody.length }) };
  },
};

const fixture = useTestServer({ apiTokens: [token, rotatedToken], extraRoutes: [providerHook] });

const countEvents = () => countEventsIn(fixture.database);

const post = (authorization: string | undefined, path = "/ingest/message") =>
  fetch(fixture.server.baseUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...(authorization !== undefined && { authorization }) },
    body: JSON.stringify(message),
  });

describe(`bearer tokens (${databaseKind})`, () => {
  it.each([
    ["no Authorization header", undefined],
    ["an unknown token", `Bearer ${randomBytes(24).toString("base64url")}`],
    ["a prefix of a valid token", `Bearer ${token.slice(0, -1)}`],
    ["a valid token with more after it", `Bearer ${token}x`],
    ["a valid token in another scheme", `Basic ${token}`],
    ["an empty bearer token", "Bearer "],
  ])("answers %s with 401 unauthenticated on /ingest/message and stores nothing", async (_name, authorization) => {
    const before = await countEvents();
    const response = await post(authorization);

    expect(response.status).toBe(401);
    expect(response.headers.get("www-authenticate")).toBe("Bearer");
    expect(await response.json()).toMatchObject({ code: "unauthenticated" });
    expect(await countEvents()).toBe(before);
  });

  it("accepts every configured token, so tokens can be rotated", async () => {
    for (const accepted of [token, rotatedToken]) {
      const response = await post(`Bearer ${accepted}`);
      expect(response.status).toBe(200);
      expect((await response.json()).status).toBe("persisted");
    }
  });

  it("answers before reading the body: a stranger announcing 10 MB gets 401 without sending any of it", async () => {
    const url = new URL(fixture.server.baseUrl);
    const status = await new Promise<number>((resolve, reject) => {
      const request = http.request({
        host: url.hostname,
        port: url.port,
        method: "POST",
        path: "/ingest/message",
        headers: { "content-type": "application/json", "content-length": String(10 * 1024 * 1024) },
      });
      request.on("response", (response) => {
        response.resume();
        resolve(response.statusCode!);
        request.destroy();
      });
      request.on("error", reject);
      request.flushHeaders();
    });
    expect(status).toBe(401);
  });

  it("lets an HTTP/1.1 client that goes on sending its body after the 401 finish it and reuse the connection (no `write EPIPE`)", async () => {
    const url = new URL(fixture.server.baseUrl);
    const piece = "x".repeat(16 * 1024);
    const socket = net.connect(Number(url.port), url.hostname);
    const errors: string[] = [];
    socket.on("error", (error: NodeJS.ErrnoException) => errors.push(error.code ?? error.message));
    let received = "";
    socket.on("data", (chunk: Buffer) => (received += chunk.toString("latin1")));
    const closed = new Promise((resolve) => socket.once("close", resolve));
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(
      "POST /ingest/message HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" +
        `authorization: Bearer wrong-token-of-some-length\r\ncontent-length: ${piece.length * 8}\r\n\r\n${piece}`,
    );
    // The answer comes before the body is read: a client streaming its body is still sending it.
    await waitFor(() => received.includes("\r\n\r\n"));
    expect(received).toMatch(/^HTTP\/1\.1 401 /);
    for (let sent = 1; sent < 8; sent++) {
      await new Promise<void>((resolve) => socket.write(piece, () => resolve()));
      await sleep(20);
    }
    // The connection is still usable: the next request on it is answered too.
    received = "";
    socket.write("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    await closed;
    expect(errors).toEqual([]);
    expect(received).toMatch(/^HTTP\/1\.1 200 /);
  });

  const transports: Record<string, (baseUrl: string, headers: Record<string, string>) => Transport> = {
    "gRPC": (baseUrl, headers) => createGrpcTransport({ baseUrl, interceptors: [withHeaders(headers)] }),
    "gRPC-Web": (baseUrl, headers) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors: [withHeaders(headers)] }),
    "Connect over HTTP/1.1": (baseUrl, headers) => createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors: [withHeaders(headers)] }),
    "Connect over HTTP/2": (baseUrl, headers) => createConnectTransport({ baseUrl, httpVersion: "2", interceptors: [withHeaders(headers)] }),
  };

  it.each(Object.keys(transports))("answers %s without a valid token with Unauthenticated, and with one normally", async (name) => {
    const before = await countEvents();
    const request = { source: "web", senderId: "visitor-2", content: `via ${name}` };
    const stranger = createClient(IngestService, transports[name](fixture.server.baseUrl, { authorization: "Bearer wrong-token-of-some-length" }));
    const error = await stranger.ingestMessage(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.Unauthenticated);
    expect(await countEvents()).toBe(before);

    const client = createClient(IngestService, transports[name](fixture.server.baseUrl, { authorization: `Bearer ${token}` }));
    expect((await client.ingestMessage(request)).status).toBe("persisted");
  });

  it("leaves health and readiness checks open, and asks for a token everywhere else", async () => {
    expect((await fetch(`${fixture.server.baseUrl}/healthz`)).status).toBe(200);
    expect((await fetch(`${fixture.server.baseUrl}/readyz`)).status).toBe(200);
    const health = createClient(Health, createGrpcTransport({ baseUrl: fixture.server.baseUrl }));
    expect((await health.check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);

    expect((await post(undefined, "/nowhere")).status).toBe(401);
    expect((await fetch(`${fixture.server.baseUrl}/metrics`)).status).toBe(401);
    expect((await fetch(`${fixture.server.baseUrl}/metrics`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
    const reflection = await post(undefined, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    expect(reflection.status).toBe(401);
  });

  it("lets a route with its own proof through without a bearer token, with its raw body, its path parameter and its own size limit", async () => {
    const hook = (body: string, headers: Record<string, string>, method = "POST") =>
      fetch(`${fixture.server.baseUrl}/test-hooks/acme%20br`, { method, headers, body: method === "GET" ? undefined : body });
    // Bytes a JSON round trip would change: the route must verify what was sent.
    const body = '{"text":"ol\\u00e1 @ voc\u00ea"}';
    const signed = await hook(body, { "x-signature": signature(body) });
    expect(signed.status).toBe(200);
    expect(await signed.json()).toEqual({ account: "acme br", bytes: Buffer.byteLength(body) });
    expect((await hook(body, { "x-signature": signature(`${body} `) })).status).toBe(401);

    const tooLarge = await hook("x".repeat(2048), { "x-signature": signature("x".repeat(2048)) });
    expect(tooLarge.status).toBe(413);
    expect(await tooLarge.json()).toMatchObject({ code: "resource_exhausted" });
    const get = await hook("", {}, "GET");
    expect(get.status).toBe(405);
    expect(get.headers.get("allow")).toBe("POST");
    // Anything else under the prefix is an unknown path, which needs a token.
    expect((await post(undefined, "/test-hooks/acme/more")).status).toBe(401);
  });

  it("counts and logs a refused gRPC call as unauthenticated", async () => {
    const stranger = createClient(IngestService, createGrpcTransport({ baseUrl: fixture.server.baseUrl }));
    await stranger.ingestMessage({ source: "web", senderId: "v", content: "x" }).catch(() => undefined);
    await waitFor(() => fixture.server.logLines.some((line) => line.protocol === "grpc" && line.code === "unauthenticated"));
    const metrics = await (await fetch(`${fixture.server.baseUrl}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
    expect(metrics).toMatch(/aurora_ingest_requests_total\{procedure="\/aurora.crm.v1.IngestService\/IngestMessage",protocol="grpc",code="unauthenticated"\} [1-9]/);
  });

  it("never logs a token", async () => {
    await post(`Bearer ${token}`);
    await post("Bearer another-wrong-token-here");
    expect(fixture.server.logText()).not.toContain(token);
    expect(fixture.server.logText()).not.toContain("another-wrong-token-here");
  });
});

describe("token configuration", () => {
  const problems = configProblems;

  it("refuses a non-loopback HOST without tokens, saying how to configure them", () => {
    const [problem] = problems({ HOST: "0.0.0.0", INGEST_API_TOKENS: "", INGEST_API_TOKENS_FILE: "" });
    expect(problem).toContain("HOST=0.0.0.0");
    expect(problem).toContain("INGEST_API_TOKENS");
    expect(problem).toContain("INGEST_API_TOKENS_FILE");
    expect(problem).toContain("ALLOW_UNAUTHENTICATED=true");
  });

  it.each(["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])("serves %s (loopback) without tokens", (host) => {
    expect(problems({ HOST: host })).toEqual([]);
  });

  it.each(["0.0.0.0", "::", "10.1.2.3", "ingest.internal"])("refuses %s without tokens unless ALLOW_UNAUTHENTICATED=true", (host) => {
    expect(problems({ HOST: host })).toEqual([expect.stringContaining("ALLOW_UNAUTHENTICATED=true")]);
    expect(problems({ HOST: host, ALLOW_UNAUTHENTICATED: "true" })).toEqual([]);
    expect(problems({ HOST: host, INGEST_API_TOKENS: token })).toEqual([]);
  });

  it("refuses short tokens, an empty token list and a token file it cannot read, never repeating a token", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "aurora-tokens-"));
    try {
      await writeFile(path.join(dir, "empty"), "# nothing yet\n\n");
      const found = [
        ...problems({ INGEST_API_TOKENS: `${token},short-secret` }),
        ...problems({ INGEST_API_TOKENS: " , " }),
        ...problems({ INGEST_API_TOKENS_FILE: path.join(dir, "empty") }),
        ...problems({ INGEST_API_TOKENS_FILE: path.join(dir, "missing") }),
        ...problems({ ALLOW_UNAUTHENTICATED: "yes" }),
      ];
      expect(found).toEqual([
        "INGEST_API_TOKENS entry #2 must be at least 16 characters with no spaces",
        expect.stringContaining("holds no token"),
        expect.stringContaining("holds no token"),
        expect.stringMatching(/INGEST_API_TOKENS_FILE names a file that cannot be read \(ENOENT\)/),
        expect.stringContaining("ALLOW_UNAUTHENTICATED must be one of true, false"),
      ]);
      expect(found.join("\n")).not.toContain("short-secret");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("listening beyond this machine", () => {
  let dir: string;
  const children: Array<{ kill(signal: NodeJS.Signals): unknown }> = [];
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "aurora-auth-"));
  });
  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  });

  it("starts with a token file, requires its tokens, and never prints them", async () => {
    const file = path.join(dir, "tokens");
    await writeFile(file, `# rotated monthly\n${token}\n\n${rotatedToken}\n`);
    const service = await startService({ HOST: "0.0.0.0", DATABASE_URL: fixture.database.url, INGEST_API_TOKENS: "", INGEST_API_TOKENS_FILE: file });
    children.push(service.child);
    const baseUrl = service.baseUrl.replace("0.0.0.0", "127.0.0.1");

    const stranger = await fetch(`${baseUrl}/ingest/message`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(message) });
    expect(stranger.status).toBe(401);
    const known = await fetch(`${baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${rotatedToken}` },
      body: JSON.stringify(message),
    });
    expect(known.status).toBe(200);
    expect(service.output()).not.toContain(token);
    expect(service.output()).not.toContain(rotatedToken);
    service.child.kill("SIGKILL");
  });

  it("starts without tokens when the operator opts out with ALLOW_UNAUTHENTICATED=true", async () => {
    const service = await startService({ HOST: "0.0.0.0", DATABASE_URL: fixture.database.url, INGEST_API_TOKENS: "", ALLOW_UNAUTHENTICATED: "true" });
    children.push(service.child);
    expect(service.output()).toContain("no authentication");
    service.child.kill("SIGKILL");
  });
});

function withHeaders(headers: Record<string, string>): Interceptor {
  return (next) => async (request) => {
    for (const [name, value] of Object.entries(headers)) request.header.set(name, value);
    return next(request);
  };
}
