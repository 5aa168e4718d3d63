/**
 * A reference, not the service: the least a Node.js process can do to serve
 * `POST /ingest/message` (node:http, JSON.parse, the floor's statement on a
 * `pg` pool, JSON out), with no Connect, validation, identity rules, auth,
 * logs or metrics. Run by bench/run.ts as the `bare` scenario, it shows how
 * much of the distance to the floor any Node.js server pays on this machine
 * and how much is the service's own work.
 *
 * Env: DATABASE_URL, DATABASE_POOL_MAX. Prints `listening on <url>` when ready.
 */
import http from "node:http";
import { floorIngest, referencePool, serveReference, type FloorMessage } from "./floor.js";

const pool = referencePool();

const server = http.createServer({ noDelay: true }, (req, res) => {
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (chunk: string) => (body += chunk));
  req.on("end", () => {
    const answer = (status: number, json: object) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(json));
    };
    let request: { source: "whatsapp" | "email"; sender_id: string; content: string; metadata: Record<string, unknown>; external_id: string };
    try {
      request = JSON.parse(body);
    } catch {
      return answer(400, { error: "invalid JSON" });
    }
    const message: FloorMessage = {
      source: request.source,
      senderId: request.sender_id,
      content: request.content,
      metadata: request.metadata,
      externalId: request.external_id,
    };
    floorIngest(pool, message).then(
      (row) => answer(200, { event_id: row.id, contact_id: row.contact_id, status: "persisted" }),
      (error: Error) => answer(500, { error: error.message }),
    );
  });
});

serveReference(server, pool);
