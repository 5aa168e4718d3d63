/**
 * A reference, not the service: bench/bare-server.ts's work served through
 * Connect (`connectNodeAdapter` on HTTP/1.1 and h2c, JSON in snake_case, no
 * interceptors), so the table shows what the framework alone costs next to
 * bare node:http and next to the service. Run by bench/run.ts as the
 * `bare-connect` scenario.
 *
 * Env: DATABASE_URL, DATABASE_POOL_MAX. Prints `listening on <url>` when ready.
 */
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { createPlaintextServer } from "../src/transport/plaintext-server.js";
import { floorIngest, referencePool, serveReference } from "./floor.js";

const pool = referencePool();

const handler = connectNodeAdapter({
  routes: (router) =>
    router.service(IngestService, {
      async ingestMessage(request) {
        const row = await floorIngest(pool, {
          source: request.source === "email" ? "email" : "whatsapp",
          senderId: request.senderId,
          content: request.content,
          metadata: request.metadata ?? {},
          externalId: request.externalId ?? "",
        });
        return { eventId: row.id, contactId: row.contact_id, status: "persisted" };
      },
    }),
  jsonOptions: { useProtoFieldName: true },
});

const server = createPlaintextServer((req, res) => {
  if (req.url === "/ingest/message") req.url = `/${IngestService.typeName}/${IngestService.method.ingestMessage.name}`;
  handler(req, res);
});

serveReference(server, pool);
