import { QueryTypes } from "sequelize";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestEventStatus, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startTestServer, type TestServer } from "./support/server.js";

let database: TestDatabase;
let server: TestServer;

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database);
});

afterAll(async () => {
  await server?.server.close();
  await database?.close();
});

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
    const client = createClient(IngestService, makeTransport(server.baseUrl));
    const sender = `55119${String(Object.keys(transports).indexOf(name)).padStart(8, "0")}`;

    const response = await client.ingestMessage({
      source: "whatsapp",
      senderId: sender,
      content: `via ${name}`,
      metadata: { transport: name },
    });

    expect(response.status).toBe("persisted");
    expect(response.eventStatus).toBe(IngestEventStatus.LINKED);
    const [event] = await database.sequelize.query<any>(
      "SELECT e.content, e.metadata, c.whatsapp_id FROM crm_ingest_events e JOIN crm_contacts c ON c.id = e.contact_id WHERE e.id = $1 AND c.id = $2",
      { bind: [response.eventId, response.contactId], type: QueryTypes.SELECT },
    );
    expect(event).toEqual({ content: `via ${name}`, metadata: { transport: name }, whatsapp_id: sender });
  });
});
