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
 *
 * Backfill: the stream keeps events for NATS_STREAM_MAX_AGE_SECONDS. The
 * consumer also stores the `Aurora-Resume-Token` of the last event it applied;
 * with FEED_URL (and FEED_TOKEN when the service requires one) set, it first
 * lists the feed from that token (`ListIngestEvents` with `resume_token`,
 * from the beginning when it has none) and applies what it finds, then reads
 * the stream. Events applied twice (listed, then delivered by the stream) take
 * effect once, by their id. An outage longer than the stream's retention thus
 * loses nothing.
 *
 * With OTEL_EXPORTER_OTLP_ENDPOINT set (and the other standard OTEL_*
 * variables), each message is processed in a CONSUMER span exported over
 * OTLP, with a link to the span that stored the event (the message's
 * `traceparent` header): the trace goes on from the gateway to here.
 */
import { fromBinary, fromJsonString } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, JetStreamApiError, type JsMsg } from "@nats-io/jetstream";
import { connect, type MsgHdrs } from "@nats-io/transport-node";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Span, type Tracer } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { IngestEventKind, IngestEventSchema, IngestEventService, type IngestEvent } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";

const env = process.env;
const natsUrl = env.NATS_URL || "nats://127.0.0.1:4222";
const stream = env.NATS_STREAM || "AURORA_INGEST_EVENTS";
const durable = env.CONSUMER_NAME || "example-source-counter";
const ackWaitMs = Number(env.CONSUMER_ACK_WAIT_MS || 30_000);
// For the test suite: die (SIGKILL) after the Nth commit, before acknowledging it.
const crashAfterCommit = Number(env.CONSUMER_CRASH_AFTER_COMMIT || 0);

// The exporter reads OTEL_EXPORTER_OTLP_* itself; the batch processor, OTEL_BSP_*.
const tracing =
  env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    ? new BasicTracerProvider({
        resource: resourceFromAttributes({ "service.name": env.OTEL_SERVICE_NAME || durable }),
        spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
      })
    : undefined;
const tracer = tracing?.getTracer("ingest-event-consumer");
const propagator = new W3CTraceContextPropagator();
const natsHeaders = {
  get: (headers: MsgHdrs | undefined, key: string) => headers?.get(key) || undefined,
  keys: (headers: MsgHdrs | undefined) => headers?.keys() ?? [],
};

const db = new pg.Pool({ connectionString: env.CONSUMER_DATABASE_URL, max: 2 });
await db.query(`CREATE TABLE IF NOT EXISTS example_processed_events (
  event_id uuid PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now())`);
await db.query(`CREATE TABLE IF NOT EXISTS example_source_counts (
  source text PRIMARY KEY, messages bigint NOT NULL)`);
await db.query(`CREATE TABLE IF NOT EXISTS example_stream_positions (
  consumer text PRIMARY KEY, resume_token text NOT NULL)`);

if (env.FEED_URL) await backfill(env.FEED_URL);

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
  await tracing?.shutdown();
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());

for await (const message of messages) {
  const span = tracer && processSpan(tracer, message);
  if (!(await processMessage(message))) span?.setStatus({ code: SpanStatusCode.ERROR });
  span?.end();
}

/** Applies an event's effect unless its id was recorded already; false when it was. Runs inside the caller's transaction. */
async function applyEvent(client: pg.PoolClient, event: IngestEvent): Promise<boolean> {
  const recorded = await client.query("INSERT INTO example_processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING", [event.id]);
  if (recorded.rowCount !== 1) return false;
  // An erasure (docs/privacy.md) asks each consumer to drop what it keeps of
  // the person; this one keeps only counts per channel, so there is nothing
  // to drop, and the erasure record is not a message to count.
  if (event.kind === IngestEventKind.ERASURE) return true;
  // The effect, in the same transaction as the record that it happened.
  await client.query(
    `INSERT INTO example_source_counts (source, messages) VALUES ($1, 1)
     ON CONFLICT (source) DO UPDATE SET messages = example_source_counts.messages + 1`,
    [event.source],
  );
  return true;
}

/** Remembers where the feed was applied up to, so a backfill can start there. */
async function savePosition(client: pg.PoolClient, resumeToken: string): Promise<void> {
  await client.query(
    `INSERT INTO example_stream_positions (consumer, resume_token) VALUES ($1, $2)
     ON CONFLICT (consumer) DO UPDATE SET resume_token = $2`,
    [durable, resumeToken],
  );
}

/**
 * Lists the feed from the last position applied (the beginning when there is
 * none) and applies every event, one page per transaction, until a page ends
 * the feed. The stream's messages for the same events are then skipped by id.
 */
async function backfill(feedUrl: string): Promise<void> {
  const feed = createClient(
    IngestEventService,
    createGrpcTransport({
      baseUrl: feedUrl,
      interceptors: [(next) => (request) => (env.FEED_TOKEN && request.header.set("authorization", `Bearer ${env.FEED_TOKEN}`), next(request))],
    }),
  );
  const { rows } = await db.query<{ resume_token: string }>("SELECT resume_token FROM example_stream_positions WHERE consumer = $1", [durable]);
  // The first page starts after the stored token; the next pages follow its page tokens.
  let request: { resumeToken?: string; pageToken?: string } = { resumeToken: rows[0]?.resume_token };
  let listed = 0;
  for (;;) {
    const page = await feed.listIngestEvents({ ...request, pageSize: 500 });
    const client = await db.connect();
    try {
      await client.query("BEGIN");
      for (const event of page.ingestEvents) await applyEvent(client, event);
      await savePosition(client, page.resumeToken);
      await client.query("COMMIT");
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
    listed += page.ingestEvents.length;
    if (!page.nextPageToken) break;
    request = { pageToken: page.nextPageToken };
  }
  console.log(`backfilled ${listed} events from the feed`);
}

/** Applies one message's event once and acknowledges it; false when it failed and will come again. */
async function processMessage(message: JsMsg): Promise<boolean> {
  const event = decode(message);
  const client = await db.connect();
  let applied: boolean;
  try {
    await client.query("BEGIN");
    applied = await applyEvent(client, event);
    // A redelivered message is older than what was applied: it does not move the position back.
    const resumeToken = message.headers?.get("Aurora-Resume-Token");
    if (applied && resumeToken) await savePosition(client, resumeToken);
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined);
    // Not acknowledged: JetStream delivers it again after ack_wait.
    console.error(`event ${event.id} failed, will be redelivered:`, error);
    return false;
  } finally {
    client.release();
  }
  if (!applied) console.log(`event ${event.id} redelivered: already processed, acknowledged again`);
  commits += 1;
  if (commits === crashAfterCommit) process.kill(process.pid, "SIGKILL");
  message.ack();
  return true;
}

/**
 * A CONSUMER span for one message (OpenTelemetry's messaging conventions).
 * It starts a trace of its own and links to the span that stored the event,
 * named by the message's `traceparent` header, when it has one.
 */
function processSpan(tracer: Tracer, message: JsMsg): Span {
  const stored = trace.getSpanContext(propagator.extract(ROOT_CONTEXT, message.headers, natsHeaders));
  // Subjects end with a token per sender: the span is named after `<prefix>.<source>`, a name of few values.
  const destination = message.subject.split(".").slice(0, -1).join(".");
  return tracer.startSpan(
    `process ${destination}`,
    {
      kind: SpanKind.CONSUMER,
      links: stored ? [{ context: stored }] : [],
      attributes: {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": destination,
        "messaging.consumer.group.name": durable,
        "messaging.message.id": message.headers?.get("Nats-Msg-Id") ?? "",
      },
    },
    ROOT_CONTEXT,
  );
}

function decode(message: JsMsg): IngestEvent {
  return message.headers?.get("Content-Type") === "application/json"
    ? fromJsonString(IngestEventSchema, message.string())
    : fromBinary(IngestEventSchema, message.data);
}
