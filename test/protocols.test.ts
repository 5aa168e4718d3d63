import net from "node:net";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { IngestEventStatus, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { createPlaintextServer, type PlaintextServerOptions } from "../src/transport/plaintext-server.js";
import { databaseKind } from "./support/database.js";
import { rows } from "./support/rows.js";
import { useTestServer } from "./support/server.js";
import { sleep } from "./support/wait.js";

const fixture = useTestServer();

const transports: Record<string, (baseUrl: string) => Transport> = {
  "gRPC over HTTP/2": (baseUrl) => createGrpcTransport({ baseUrl }),
  "gRPC-Web over HTTP/1.1": (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
  "gRPC-Web over HTTP/2": (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "2" }),
  "Connect JSON over HTTP/1.1": (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1" }),
  "Connect JSON over HTTP/2": (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2" }),
  "Connect binary over HTTP/1.1": (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true }),
  "Connect binary over HTTP/2": (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
};

describe(`IngestService.IngestMessage on one port (${databaseKind})`, () => {
  it.each(Object.entries(transports))("answers %s with the stored ids", async (name, makeTransport) => {
    const client = createClient(IngestService, makeTransport(fixture.server.baseUrl));
    const sender = `55119${String(Object.keys(transports).indexOf(name)).padStart(8, "0")}`;

    const response = await client.ingestMessage({
      source: "whatsapp",
      senderId: sender,
      content: `via ${name}`,
      metadata: { transport: name },
    });

    expect(response.status).toBe("persisted");
    expect(response.eventStatus).toBe(IngestEventStatus.LINKED);
    const [event] = await rows(
      fixture.database,
      "SELECT e.content, e.metadata, c.whatsapp_id FROM crm_ingest_events e JOIN crm_contacts c ON c.id = e.contact_id WHERE e.id = $1 AND c.id = $2",
      [response.eventId, response.contactId],
    );
    expect(event).toEqual({ content: `via ${name}`, metadata: { transport: name }, whatsapp_id: sender });
  });
});

/**
 * A relay to the server that sends the first `bytes` bytes of every client
 * connection one at a time, each in its own TCP segment, then the rest as it
 * comes: the protocol must be recognised however the first bytes arrive.
 */
async function trickleRelay(target: URL, bytes: number): Promise<{ url: string; close: () => void }> {
  const relay = net.createServer((client) => {
    const upstream = net.connect({ host: target.hostname, port: Number(target.port), noDelay: true });
    upstream.pipe(client);
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    let sent = 0;
    let queue = Promise.resolve();
    client.on("data", (chunk: Buffer) => {
      queue = queue.then(async () => {
        let i = 0;
        for (; i < chunk.length && sent < bytes; i++, sent++) {
          upstream.write(chunk.subarray(i, i + 1));
          await sleep(2);
        }
        if (i < chunk.length) upstream.write(chunk.subarray(i));
      });
    });
    client.on("end", () => void queue.then(() => upstream.end()));
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  const { port } = relay.address() as net.AddressInfo;
  return { url: `http://127.0.0.1:${port}`, close: () => relay.close() };
}

describe(`protocol recognition on the cleartext port (${databaseKind})`, () => {
  it.each([
    ["gRPC over HTTP/2", (baseUrl: string) => createGrpcTransport({ baseUrl })],
    ["Connect JSON over HTTP/1.1", (baseUrl: string) => createConnectTransport({ baseUrl, httpVersion: "1.1" })],
  ])("answers %s whose first bytes arrive one at a time", async (name, makeTransport) => {
    // 30 bytes: past the 24-byte HTTP/2 preface, and "POST" shares its first byte.
    const relay = await trickleRelay(new URL(fixture.server.baseUrl), 30);
    try {
      const client = createClient(IngestService, makeTransport(relay.url));
      const response = await client.ingestMessage({ source: "email", senderId: `trickle-${name.length}@example.com`, content: name });
      expect(response.status).toBe("persisted");
      expect(response.eventStatus).toBe(IngestEventStatus.LINKED);
    } finally {
      relay.close();
    }
  });

  it("keeps serving after connections that close or reset before their first byte", async () => {
    const { hostname, port } = new URL(fixture.server.baseUrl);
    for (const end of ["end", "destroy", "resetAndDestroy"] as const) {
      const socket = net.connect({ host: hostname, port: Number(port) });
      await new Promise((resolve) => socket.once("connect", resolve));
      socket[end]();
    }
    const response = await fetch(`${fixture.server.baseUrl}/healthz`);
    expect(response.status).toBe(200);
  });
});

describe("slow and silent clients on the cleartext port", () => {
  /** A cleartext server answering 200 to everything, with short limits, on an ephemeral port. */
  async function strictServer(options: PlaintextServerOptions) {
    const server = createPlaintextServer((_req, res) => res.end("ok"), options);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as net.AddressInfo;
    return { port, close: () => new Promise((resolve) => server.close(resolve)) };
  }

  /** Connects, writes `bytes` (if any), and resolves to everything the server sent once it closed the connection. */
  async function sendAndWaitForClose(port: number, bytes?: string): Promise<string> {
    const socket = net.connect({ host: "127.0.0.1", port });
    let received = "";
    socket.on("data", (chunk) => (received += chunk));
    if (bytes) socket.write(bytes);
    await new Promise((resolve) => socket.once("close", resolve));
    return received;
  }

  it("closes a connection that sends nothing", async () => {
    const server = await strictServer({ firstBytesTimeoutMs: 200 });
    try {
      expect(await sendAndWaitForClose(server.port)).toBe("");
    } finally {
      await server.close();
    }
  });

  it("closes a connection that stops in the middle of the HTTP/2 preface", async () => {
    const server = await strictServer({ firstBytesTimeoutMs: 200 });
    try {
      expect(await sendAndWaitForClose(server.port, "PRI * HTTP/2.0")).toBe("");
    } finally {
      await server.close();
    }
  });

  it("answers 408 to an HTTP/1.1 client that never finishes its headers", async () => {
    const server = await strictServer({ http1: { headersTimeout: 300, requestTimeout: 600, connectionsCheckingInterval: 50 } });
    try {
      const received = await sendAndWaitForClose(server.port, "POST /ingest/message HTTP/1.1\r\nHost: localhost\r\n");
      expect(received).toMatch(/^HTTP\/1\.1 408 /);
    } finally {
      await server.close();
    }
  });
});
