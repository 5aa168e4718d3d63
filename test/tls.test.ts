import { execFile } from "node:child_process";
import https from "node:https";
import { promisify } from "node:util";
import type { TLSSocket } from "node:tls";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { createTestCertificates, type TestCertificates } from "./support/certificates.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startService } from "./support/process.js";
import { requires } from "./support/requirements.js";
import { startTestServer, type TestServer } from "./support/server.js";

let certificates: TestCertificates;
let database: TestDatabase;
let tlsServer: TestServer;
let mtlsServer: TestServer;

beforeAll(async () => {
  certificates = createTestCertificates();
  database = await createTestDatabase();
  tlsServer = await startTestServer(database, { tls: certificates.server });
  mtlsServer = await startTestServer(database, { tls: { ...certificates.server, clientCa: certificates.ca } });
});

afterAll(async () => {
  await tlsServer?.server.close();
  await mtlsServer?.server.close();
  await database?.close();
  certificates?.remove();
});

const message = { source: "whatsapp", sender_id: "5511955554444", content: "over TLS", metadata: {} };

/** POSTs JSON over HTTPS the way curl does over HTTP/1.1, and reports the negotiated ALPN protocol. */
function httpsPost(baseUrl: string, options: https.RequestOptions): Promise<{ status: number; body: any; alpn: string | false | null }> {
  const url = new URL("/ingest/message", baseUrl);
  return new Promise((resolve, reject) => {
    const tlsOptions = { ALPNProtocols: ["http/1.1"], agent: false, ...options } as https.RequestOptions;
    const request = https.request(url, { method: "POST", headers: { "content-type": "application/json" }, ...tlsOptions });
    request.on("response", (response) => {
      const alpn = (response.socket as TLSSocket).alpnProtocol;
      let text = "";
      response.on("data", (chunk) => (text += chunk));
      response.on("end", () => resolve({ status: response.statusCode!, body: JSON.parse(text), alpn }));
    });
    request.on("error", reject);
    request.end(JSON.stringify(message));
  });
}

describe.runIf(requires("openssl"))(`TLS on the one port (${databaseKind})`, () => {
  it("serves gRPC over TLS (ALPN h2)", async () => {
    const client = createClient(IngestService, createGrpcTransport({ baseUrl: tlsServer.baseUrl, nodeOptions: { ca: certificates.ca } }));
    const response = await client.ingestMessage({ source: "whatsapp", senderId: "5511955554444", content: "gRPC over TLS" });
    expect(response.status).toBe("persisted");
  });

  it("serves Connect over HTTP/2 with TLS", async () => {
    const transport = createConnectTransport({ baseUrl: tlsServer.baseUrl, httpVersion: "2", nodeOptions: { ca: certificates.ca } });
    const response = await createClient(IngestService, transport).ingestMessage({ source: "web", senderId: "v", content: "h2 + TLS" });
    expect(response.status).toBe("persisted");
  });

  it("serves /ingest/message over HTTP/1.1 with TLS (ALPN http/1.1, as curl)", async () => {
    const response = await httpsPost(tlsServer.baseUrl, { ca: certificates.ca });
    expect(response.alpn).toBe("http/1.1");
    expect(response.status).toBe(200);
    expect(response.body.status).toBe("persisted");
  });

  it.runIf(requires("curl")).each(["--http1.1", "--http2"])("answers curl %s over TLS", async (version) => {
    const { stdout } = await promisify(execFile)("curl", [
      "-sS", version, "--cacert", certificates.files.ca, "-H", "content-type: application/json", "-d", JSON.stringify(message),
      "-w", "\n%{http_code} %{http_version}", `${tlsServer.baseUrl}/ingest/message`,
    ]);
    const [body, status] = stdout.split("\n");
    expect(JSON.parse(body).status).toBe("persisted");
    expect(status).toBe(version === "--http1.1" ? "200 1.1" : "200 2");
  });

  it("refuses plaintext HTTP/1.1 and HTTP/2 on the TLS port", async () => {
    const plain = tlsServer.baseUrl.replace("https:", "http:");
    await expect(fetch(`${plain}/ingest/message`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(message) })).rejects.toThrow();
    const h2c = createClient(IngestService, createGrpcTransport({ baseUrl: plain }));
    await expect(h2c.ingestMessage({ source: "web", senderId: "v", content: "h2c" })).rejects.toThrow();
  });
});

describe.runIf(requires("openssl"))(`mutual TLS (${databaseKind})`, () => {
  it("serves a client whose certificate the configured CA signed", async () => {
    const response = await httpsPost(mtlsServer.baseUrl, { ca: certificates.ca, ...certificates.client });
    expect(response.status).toBe(200);

    const transport = createGrpcTransport({ baseUrl: mtlsServer.baseUrl, nodeOptions: { ca: certificates.ca, ...certificates.client } });
    expect((await createClient(IngestService, transport).ingestMessage({ source: "web", senderId: "v", content: "mTLS" })).status).toBe("persisted");
  });

  it.each([
    ["no client certificate", false],
    ["a certificate from another CA", true],
  ])("refuses a client with %s", async (_name, stranger) => {
    const extra = stranger ? certificates.stranger : {};
    await expect(httpsPost(mtlsServer.baseUrl, { ca: certificates.ca, ...extra })).rejects.toThrow();
    const transport = createGrpcTransport({ baseUrl: mtlsServer.baseUrl, nodeOptions: { ca: certificates.ca, ...extra } });
    await expect(createClient(IngestService, transport).ingestMessage({ source: "web", senderId: "v", content: "x" })).rejects.toThrow();
  });

  it("is configured with TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE", async () => {
    const { files } = certificates;
    const service = await startService({
      DATABASE_URL: database.url,
      TLS_CERT_FILE: files.serverCert,
      TLS_KEY_FILE: files.serverKey,
      TLS_CLIENT_CA_FILE: files.ca,
    });
    try {
      expect(service.baseUrl).toMatch(/^https:\/\//);
      await expect(httpsPost(service.baseUrl, { ca: certificates.ca })).rejects.toThrow();
      const response = await httpsPost(service.baseUrl, { ca: certificates.ca, ...certificates.client });
      expect(response.status).toBe(200);
    } finally {
      service.child.kill("SIGKILL");
    }
  });
});
