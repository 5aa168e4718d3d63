import { spawn } from "node:child_process";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseKind } from "./support/database.js";
import { locateProgram, requires } from "./support/requirements.js";
import { startTestServer, useTestServer } from "./support/server.js";

const PAGE_ORIGIN = "http://app.example.test:5173";
const TOKEN = "cors-test-token-0123456789";
const RPC_PATH = "/aurora.crm.v1.IngestService/IngestMessage";

const fixture = useTestServer({ corsAllowedOrigins: [PAGE_ORIGIN], apiTokens: [TOKEN] });
const closed = useTestServer();

const preflight = (baseUrl: string, origin: string, headers = "content-type,connect-protocol-version,authorization") =>
  fetch(baseUrl + RPC_PATH, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": headers },
  });

const lower = (list: string | null) => (list ?? "").toLowerCase().split(",");

describe(`CORS with CORS_ALLOWED_ORIGINS set (${databaseKind})`, () => {
  it("answers a preflight from an allowed origin, without a token, with what Connect and gRPC-Web need", async () => {
    const response = await preflight(fixture.server.baseUrl, PAGE_ORIGIN);
    expect(response.status).toBe(204);
    expect(response.headers.get("access-control-allow-origin")).toBe(PAGE_ORIGIN);
    expect(lower(response.headers.get("access-control-allow-methods"))).toEqual(expect.arrayContaining(["post", "get"]));
    expect(lower(response.headers.get("access-control-allow-headers"))).toEqual(
      expect.arrayContaining([
        "content-type",
        "connect-protocol-version",
        "connect-timeout-ms",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
        "x-request-id",
        "traceparent",
        "tracestate",
      ]),
    );
    expect(response.headers.get("access-control-max-age")).toBe("7200");
  });

  it("answers a preflight over HTTP/2 the same way", async () => {
    const session = http2.connect(fixture.server.baseUrl);
    try {
      const headers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
        const stream = session.request({
          ":method": "OPTIONS",
          ":path": RPC_PATH,
          origin: PAGE_ORIGIN,
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type,x-grpc-web,x-user-agent",
        });
        stream.on("response", resolve);
        stream.on("error", reject);
        stream.resume();
        stream.end();
      });
      expect(headers[":status"]).toBe(204);
      expect(headers["access-control-allow-origin"]).toBe(PAGE_ORIGIN);
      expect(lower(String(headers["access-control-allow-headers"]))).toEqual(expect.arrayContaining(["x-grpc-web", "x-user-agent"]));
    } finally {
      session.close();
    }
  });

  it("gives a preflight from any other origin no permission", async () => {
    const response = await preflight(fixture.server.baseUrl, "http://elsewhere.example.test");
    expect(response.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("lets the allowed origin read a Connect answer, its status headers and its request id", async () => {
    const response = await fetch(fixture.server.baseUrl + RPC_PATH, {
      method: "POST",
      headers: { origin: PAGE_ORIGIN, authorization: `Bearer ${TOKEN}`, "content-type": "application/json", "connect-protocol-version": "1" },
      body: JSON.stringify({ source: "web", senderId: "cross-origin", content: "from a page" }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("access-control-allow-origin")).toBe(PAGE_ORIGIN);
    expect(response.headers.get("vary")).toMatch(/origin/i);
    expect(lower(response.headers.get("access-control-expose-headers"))).toEqual(
      expect.arrayContaining(["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"]),
    );
    const { eventId } = await response.json();
    const rows = await fixture.database.sequelize.query("SELECT 1 FROM crm_ingest_events WHERE id = $1", { bind: [eventId], type: QueryTypes.SELECT });
    expect(rows).toHaveLength(1);
  });

  it("lets the allowed origin read a refusal too (here: no token)", async () => {
    const response = await fetch(fixture.server.baseUrl + RPC_PATH, {
      method: "POST",
      headers: { origin: PAGE_ORIGIN, "content-type": "application/json" },
      body: "{}",
    });
    expect(response.status).toBe(401);
    expect(response.headers.get("access-control-allow-origin")).toBe(PAGE_ORIGIN);
  });
});

describe(`CORS by default (${databaseKind})`, () => {
  it("grants no origin anything", async () => {
    const response = await preflight(closed.server.baseUrl, PAGE_ORIGIN);
    expect(response.status).toBe(405);
    expect(response.headers.get("access-control-allow-origin")).toBeNull();
    const call = await fetch(closed.server.baseUrl + RPC_PATH, {
      method: "POST",
      headers: { origin: PAGE_ORIGIN, "content-type": "application/json" },
      body: JSON.stringify({ source: "web", senderId: "v", content: "c" }),
    });
    expect(call.headers.get("access-control-allow-origin")).toBeNull();
  });
});

// A real browser: headless Chromium loads a page from one origin that calls
// the service, on another origin, over the Connect protocol with fetch.
describe.runIf(requires("chromium"))(`a browser page on another origin (${databaseKind})`, () => {
  const chromium = locateProgram("chromium");
  let pages: http.Server;
  let pagePort: number;
  let results: Map<string, (result: unknown) => void>;
  let profileDir: string;

  beforeAll(async () => {
    // Without Chromium these tests are skipped, or fail here under AURORA_TEST_REQUIRE_ALL (.ci/run installs Debian's).
    expect(chromium, "headless Chromium is needed: apt-get install -y chromium").toBeDefined();
    profileDir = await mkdtemp(path.join(os.tmpdir(), "aurora-chromium-"));
    results = new Map();
    // Serves the page, and takes the result the page reports back to its own origin.
    pages = http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://page");
      if (req.method === "POST" && url.pathname === "/result") {
        let body = "";
        req.on("data", (chunk) => (body += chunk));
        req.on("end", () => {
          results.get(url.searchParams.get("run") ?? "")?.(JSON.parse(body));
          res.end();
        });
        return;
      }
      res.setHeader("content-type", "text/html; charset=utf-8");
      res.end(page(url.searchParams.get("api") ?? "", url.searchParams.get("run") ?? ""));
    });
    await new Promise<void>((resolve) => pages.listen(0, "127.0.0.1", resolve));
    pagePort = (pages.address() as AddressInfo).port;
  });
  afterAll(async () => {
    pages?.close();
    if (profileDir) await rm(profileDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  });

  /** Opens the page in headless Chromium and resolves to what its script reported. */
  async function runPage(pageHost: string, apiBaseUrl: string, run: string): Promise<any> {
    const reported = new Promise((resolve) => results.set(run, resolve));
    const pageUrl = `http://${pageHost}:${pagePort}/?api=${encodeURIComponent(apiBaseUrl)}&run=${run}`;
    const browser = spawn(
      chromium!,
      [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${path.join(profileDir, run)}`,
        // Names the page's own host for this test: the page and the service are then different origins by host and port.
        `--host-resolver-rules=MAP app.example.test 127.0.0.1,MAP other.example.test 127.0.0.1`,
        pageUrl,
      ],
      // Its own process group, so that the renderers it starts are stopped with it.
      { stdio: "ignore", detached: true },
    );
    const exited = new Promise((resolve) => browser.once("exit", resolve));
    try {
      return await Promise.race([
        reported,
        new Promise((_, reject) => setTimeout(() => reject(new Error("the page reported nothing within 60 s")), 60_000)),
      ]);
    } finally {
      // Every process of the browser, before its profile folder is removed.
      process.kill(-browser.pid!, "SIGKILL");
      await exited;
    }
  }

  it("calls IngestMessage over Connect from an allowed origin and gets an event id", async () => {
    const server = await startCorsServer(`http://app.example.test:${pagePort}`);
    try {
      const result = await runPage("app.example.test", server.baseUrl, "allowed");
      expect(result).toMatchObject({ ok: true, status: 200, requestId: expect.any(String) });
      const rows = await fixture.database.sequelize.query("SELECT sender_id FROM crm_ingest_events WHERE id = $1", {
        bind: [result.body.eventId],
        type: QueryTypes.SELECT,
      });
      expect(rows).toEqual([{ sender_id: "browser-visitor" }]);
    } finally {
      await server.close();
    }
  }, 90_000);

  it("is refused by the browser from an origin not allowed", async () => {
    const server = await startCorsServer(`http://app.example.test:${pagePort}`);
    try {
      const result = await runPage("other.example.test", server.baseUrl, "refused");
      expect(result).toMatchObject({ ok: false, error: expect.stringContaining("Failed to fetch") });
    } finally {
      await server.close();
    }
  }, 90_000);
});

/** A second server over the fixture's database whose allowed origin is the test page's. */
async function startCorsServer(origin: string) {
  const server = await startTestServer(fixture.database, { corsAllowedOrigins: [origin], apiTokens: [TOKEN] });
  return { baseUrl: server.baseUrl, close: () => server.server.close() };
}

/** The test page: one Connect call with fetch, its outcome posted back to the page's own origin. */
function page(api: string, run: string): string {
  return `<!doctype html><meta charset="utf-8"><title>cross-origin ingest</title><script>
(async () => {
  let result;
  try {
    const response = await fetch(${JSON.stringify(api + RPC_PATH)}, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "Connect-Protocol-Version": "1",
        "Authorization": "Bearer ${TOKEN}",
      },
      body: JSON.stringify({ source: "web", senderId: "browser-visitor", content: "sent from a page on another origin" }),
    });
    result = { ok: true, status: response.status, requestId: response.headers.get("x-request-id"), body: await response.json() };
  } catch (error) {
    result = { ok: false, error: String(error) };
  }
  await fetch("/result?run=${run}", { method: "POST", body: JSON.stringify(result) });
})();
</script>`;
}
