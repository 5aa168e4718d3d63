/**
 * A downstream service consuming the ingest events stream: a durable pull
 * consumer with explicit acknowledgements. Each event takes effect once even
 * though JetStream delivers at least once: the consumer records the event id
 * in its own table in the same transaction as its effect (here: counting
 * messages per source), and a redelivered event whose id is already recorded
 * is acknowledged without a second effect. It acknowledges only after that
 * transaction committed, so a crash in between means a redelivery, never a
 * loss.
 *
 *   NATS_URL=nats://127.0.0.1:4222 CONSUMER_DATABASE_URL=postgres://... \
 *     npx tsx examples/ingest-event-consumer.ts
 *
 * CONSUMER_DATABASE_URL is the consumer's own database, never the ingest
 * service's. Stop it with SIGTERM or Ctrl-C.
 */
import { fromBinary, fromJsonString } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, JetStreamApiError, type JsMsg } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import pg from "pg";
import { IngestEventSchema, type IngestEvent } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";

const env = process.env;
const natsUrl = env.NATS_URL || "nats://127.0.0.1:4222";
const stream = env.NATS_STREAM || "AURORA_INGEST_EVENTS";
const durable = env.CONSUMER_NAME || "example-source-counter";
const ackWaitMs = Number(env.CONSUMER_ACK_WAIT_MS || 30_000);
// For the test suite: die (SIGKILL) after the Nth commit, before acknowledging it.
const crashAfterCommit = Number(env.CONSUMER_CRASH_AFTER_COMMIT || 0);

const db = new pg.Pool({ connectionString: env.CONSUMER_DATABASE_URL, max: 2 });
await db.query(`CREATE TABLE IF NOT EXISTS example_processed_events (
  event_id uuid PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now())`);
await db.query(`CREATE TABLE IF NOT EXISTS example_source_counts (
  source text PRIMARY KEY, messages bigint NOT NULL)`);

const nc = await connect({ servers: natsUrl.split(","), maxReconnectAttempts: -1, reconnectTimeWait: 500, name: durable });
const jsm = await jetstreamManager(nc);
try {
  await jsm.consumers.info(stream, durable);
} catch (error) {
  if (!(error instanceof JetStreamApiError)) throw error;
  await jsm.consumers.add(stream, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: ackWaitMs * 1_000_000,
  });
}
const consumer = await jetstream(nc).consumers.get(stream, durable);
const messages = await consumer.consume({ max_messages: 100 });

let commits = 0;
const stop = async () => {
  messages.stop();
  await nc.drain();
  await db.end();
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());

for await (const message of messages) {
  const event = decode(message);
  const client = await db.connect();
  let applied: boolean;
  try {
    await client.query("BEGIN");
    const recorded = await client.query("INSERT INTO example_processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING", [event.id]);
    applied = recorded.rowCount === 1;
    // The effect, in the same transaction as the record that it happened.
    if (applied) {
      await client.query(
        `INSERT INTO example_source_counts (source, messages) VALUES ($1, 1)
         ON CONFLICT (source) DO UPDATE SET messages = example_source_counts.messages + 1`,
        [event.source],
      );
    }
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined);
    // Not acknowledged: JetStream delivers it again after ack_wait.
    console.error(`event ${event.id} failed, will be redelivered:`, error);
    continue;
  } finally {
    client.release();
  }
  if (!applied) console.log(`event ${event.id} redelivered: already processed, acknowledged again`);
  commits += 1;
  if (commits === crashAfterCommit) process.kill(process.pid, "SIGKILL");
  message.ack();
}

function decode(message: JsMsg): IngestEvent {
  return message.headers?.get("Content-Type") === "application/json"
    ? fromJsonString(IngestEventSchema, message.string())
    : fromBinary(IngestEventSchema, message.data);
}
