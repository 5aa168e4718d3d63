/**
 * A downstream service that follows the event feed and processes every event
 * exactly once in effect: it stores its resume token in its own database, in
 * the same transaction as the effects of the event that token follows. After
 * a crash, either both the effect and the token were committed (and the
 * event is not seen again) or neither was (and it is delivered again).
 *
 *   FEED_URL=http://127.0.0.1:8000 FEED_TOKEN=... CONSUMER_DATABASE_URL=postgres://... \
 *     npx tsx examples/feed-consumer.ts
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import {
  IngestEventKind,
  IngestEventService,
  WatchIngestEventsRequest_Start as Start,
  type IngestEvent,
} from "../gen/aurora/crm/v1/ingest_event_service_pb.js";

const CONSUMER = "timeline";

const db = new pg.Pool({ connectionString: process.env.CONSUMER_DATABASE_URL });
const feed = createClient(
  IngestEventService,
  createGrpcTransport({
    baseUrl: process.env.FEED_URL ?? "http://127.0.0.1:8000",
    interceptors: [
      (next) => (request) => {
        if (process.env.FEED_TOKEN) request.header.set("authorization", `Bearer ${process.env.FEED_TOKEN}`);
        return next(request);
      },
    ],
  }),
);

await db.query(`
  CREATE TABLE IF NOT EXISTS feed_positions (consumer text PRIMARY KEY, resume_token text NOT NULL);
  CREATE TABLE IF NOT EXISTS timeline_entries (event_id uuid PRIMARY KEY, contact_id uuid, source text NOT NULL, received_at timestamptz NOT NULL)`);

/** This consumer's effect of one event; runs inside the transaction that also stores the token. */
async function apply(client: pg.PoolClient, event: IngestEvent): Promise<void> {
  if (event.kind === IngestEventKind.ERASURE) {
    // A person's data was erased (docs/privacy.md): drop what this service
    // keeps of their contacts. The erased events themselves come back erased
    // from GetIngestEvent; the erasure event is not a timeline entry.
    const contactIds = (event.metadata?.contact_ids as string[] | undefined) ?? [];
    await client.query("DELETE FROM timeline_entries WHERE contact_id = ANY($1::uuid[])", [contactIds]);
    return;
  }
  await client.query("INSERT INTO timeline_entries (event_id, contact_id, source, received_at) VALUES ($1, $2, $3, $4)", [
    event.id,
    event.contactId || null,
    event.source,
    new Date(Number(event.createdAt?.seconds ?? 0) * 1000),
  ]);
}

async function savedToken(): Promise<string | undefined> {
  const { rows } = await db.query<{ resume_token: string }>("SELECT resume_token FROM feed_positions WHERE consumer = $1", [CONSUMER]);
  return rows[0]?.resume_token;
}

for (let attempt = 0; ; attempt++) {
  const token = await savedToken();
  try {
    // The first run starts at the beginning of the feed; every later one right after what was processed.
    const stream = feed.watchIngestEvents(token ? { resumeToken: token } : { start: Start.BEGINNING });
    for await (const { ingestEvent, resumeToken } of stream) {
      attempt = 0;
      const client = await db.connect();
      try {
        await client.query("BEGIN");
        if (ingestEvent) await apply(client, ingestEvent); // a checkpoint only moves the position
        await client.query(
          "INSERT INTO feed_positions (consumer, resume_token) VALUES ($1, $2) ON CONFLICT (consumer) DO UPDATE SET resume_token = $2",
          [CONSUMER, resumeToken],
        );
        await client.query("COMMIT");
      } catch (error) {
        await client.query("ROLLBACK");
        throw error;
      } finally {
        client.release();
      }
    }
  } catch (error) {
    const code = ConnectError.from(error).code;
    // A refused token is a bug or a restored database: stop and let a person decide.
    if (code === Code.InvalidArgument || code === Code.PermissionDenied || code === Code.Unauthenticated) throw error;
    // Server restarts, deploys, network cuts: resume from the stored token after a pause.
    const delay = Math.min(30_000, 250 * 2 ** attempt);
    console.warn(`feed stream ended (${ConnectError.from(error).message}); resuming in ${delay} ms`);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}
