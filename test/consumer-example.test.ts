import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Registry } from "prom-client";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FeedRelay } from "../src/feed/relay/feed-relay.js";
import { soleLeader } from "../src/feed/relay/leader-lock.js";
import { createLogger } from "../src/observability/logger.js";
import { createRelayMetrics } from "../src/feed/relay/relay-metrics.js";
import { createTracing } from "../src/observability/tracing.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startNats, type TestNats } from "./support/nats.js";
import { startOtlpReceiver } from "./support/otlp-receiver.js";
import { insertEvents, readStream, relayConfig, wholeFeed } from "./support/relay.js";
import { requires } from "./support/requirements.js";
import { startTestServer } from "./support/server.js";

const root = path.resolve(import.meta.dirname, "..");
const STREAM = "CONSUMER_EXAMPLE";
/** OTLP span kinds. */
const SERVER = 2;
const CONSUMER = 5;
let ingest: TestDatabase;
let consumerDatabase: TestDatabase;
let nats: TestNats;
let relay: FeedRelay;

beforeAll(async () => {
  [ingest, consumerDatabase, nats] = await Promise.all([createTestDatabase(), createTestDatabase({ migrate: false }), startNats()]);
  const config = relayConfig(nats.url, { stream: STREAM });
  relay = new FeedRelay({
    sequelize: ingest.sequelize,
    config,
    lock: soleLeader(),
    log: createLogger({ level: "silent" }),
    metrics: createRelayMetrics(new Registry()),
  });
  relay.start();
});

afterAll(async () => {
  await relay?.stop();
  await Promise.all([ingest?.close(), consumerDatabase?.close(), nats?.close()]);
});

function startConsumer(env: Record<string, string> = {}): { child: ChildProcess; exited: Promise<NodeJS.Signals | null>; output: () => string } {
  const child = spawn(process.execPath, ["--import", "tsx", "examples/ingest-event-consumer.ts"], {
    cwd: root,
    env: { ...process.env, NATS_URL: nats.url, NATS_STREAM: STREAM, CONSUMER_DATABASE_URL: consumerDatabase.url, CONSUMER_ACK_WAIT_MS: "1000", ...env },
  });
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
  return { child, exited, output: () => output };
}

async function consumerCounts(url = consumerDatabase.url): Promise<{ processed: number; effects: number }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const processed = await client.query<{ n: string }>("SELECT count(*) AS n FROM example_processed_events");
    const effects = await client.query<{ n: string }>("SELECT coalesce(sum(messages), 0) AS n FROM example_source_counts");
    return { processed: Number(processed.rows[0].n), effects: Number(effects.rows[0].n) };
  } catch {
    return { processed: 0, effects: 0 };
  } finally {
    await client.end();
  }
}

describe.runIf(requires("nats-server"))(`the example consumer (${databaseKind})`, () => {
  it("applies each event once through a consumer crash and a NATS restart", async () => {
    for (let i = 0; i < 4; i++) await insertEvents(ingest.sequelize, 50, `consumer-${i}`);

    // Dies after committing its 60th effect, before acknowledging it: that message comes again.
    const crashing = startConsumer({ CONSUMER_CRASH_AFTER_COMMIT: "60" });
    expect(await crashing.exited, crashing.output()).toBe("SIGKILL");
    expect((await consumerCounts()).processed).toBe(60);

    const consumer = startConsumer();
    let current: { processed: number; effects: number };
    const poll = async (target: number) => {
      const deadline = Date.now() + 60_000;
      while ((current = await consumerCounts()).processed < target && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    };
    await poll(100);
    await nats.kill();
    await insertEvents(ingest.sequelize, 50, "during-outage");
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await nats.start();
    await insertEvents(ingest.sequelize, 50, "after-outage");
    const total = (await wholeFeed(ingest.sequelize)).length;
    await poll(total);
    // Redeliveries are still possible for a moment: give them time to (not) take effect twice.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    current = await consumerCounts();
    consumer.child.kill("SIGTERM");
    await consumer.exited;

    expect(current).toEqual({ processed: total, effects: total });
    expect(consumer.output()).toMatch(/redelivered: already processed/);
  }, 180_000);
});

describe.runIf(requires("nats-server"))(`the example consumer's trace (${databaseKind})`, () => {
  it("processes each message in a CONSUMER span linked to the span that ingested the event", async () => {
    const receiver = await startOtlpReceiver();
    const tracing = await createTracing({ protocol: "http/protobuf", url: `${receiver.endpoint}/v1/traces` });
    const server = await startTestServer(ingest, { tracing });
    // A durable of its own: it reads the whole stream, the first test's events too.
    const consumer = startConsumer({
      CONSUMER_NAME: "example-traced",
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
      OTEL_SERVICE_NAME: "example-consumer",
      OTEL_BSP_SCHEDULE_DELAY: "100",
    });
    try {
      const traceId = randomBytes(16).toString("hex");
      const response = await fetch(`${server.baseUrl}/ingest/message`, {
        method: "POST",
        headers: { "content-type": "application/json", traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` },
        body: JSON.stringify({ source: "whatsapp", sender_id: "5511955551234", content: "rastreada" }),
      });
      const { event_id: eventId } = (await response.json()) as { event_id: string };
      await tracing.forceFlush();
      const ingested = await receiver.waitFor((span) => span.traceId === traceId && span.kind === SERVER);

      const processed = await receiver.waitFor((span) => span.kind === CONSUMER && span.attributes["messaging.message.id"] === eventId, 60_000);
      expect(processed).toMatchObject({
        name: "process aurora.crm.v1.ingest_events.whatsapp",
        parentSpanId: "",
        links: [{ traceId, spanId: ingested.spanId }],
        status: { code: 0 },
        resource: { "service.name": "example-consumer" },
      });
      expect(processed.traceId).not.toBe(traceId);
      expect(processed.attributes).toMatchObject({
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": "aurora.crm.v1.ingest_events.whatsapp",
        "messaging.consumer.group.name": "example-traced",
      });
      // An event stored without a trace is processed in a span without a link.
      const [untracedId] = await insertEvents(ingest.sequelize, 1, "untraced");
      const untraced = await receiver.waitFor((span) => span.kind === CONSUMER && span.attributes["messaging.message.id"] === untracedId, 60_000);
      expect(untraced.links).toEqual([]);
    } finally {
      consumer.child.kill("SIGTERM");
      await consumer.exited;
      await server.server.close();
      await tracing.shutdown();
      await receiver.close();
    }
  }, 120_000);
});

// Last: it purges the stream that the tests above read.
describe.runIf(requires("nats-server"))(`the example consumer's backfill (${databaseKind})`, () => {
  it("after an outage longer than the stream keeps events, lists the feed from its last Aurora-Resume-Token and applies each event once", async () => {
    const own = await createTestDatabase({ migrate: false });
    const server = await startTestServer(ingest);
    const start = (env: Record<string, string> = {}) => startConsumer({ CONSUMER_NAME: "example-backfill", CONSUMER_DATABASE_URL: own.url, ...env });
    const streamHoldsFeed = async () => {
      const total = (await wholeFeed(ingest.sequelize)).length;
      const deadline = Date.now() + 30_000;
      while ((await readStream(nats.url, STREAM)).length < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      return total;
    };
    try {
      await insertEvents(ingest.sequelize, 20, "before-outage");
      await streamHoldsFeed();
      const crashing = start({ CONSUMER_CRASH_AFTER_COMMIT: "30" });
      expect(await crashing.exited, crashing.output()).toBe("SIGKILL");

      // While it is down, events arrive and the stream drops all but its last 5 messages (as an age limit would).
      await insertEvents(ingest.sequelize, 40, "during-outage");
      const total = await streamHoldsFeed();
      const nc = await connect({ servers: nats.url });
      await (await jetstreamManager(nc)).streams.purge(STREAM, { keep: 5 });
      await nc.close();

      const consumer = start({ FEED_URL: server.baseUrl });
      const deadline = Date.now() + 60_000;
      let current = await consumerCounts(own.url);
      while (current.processed < total && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        current = await consumerCounts(own.url);
      }
      // The stream's last 5 messages come too, after the backfill listed them: they take effect once.
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      current = await consumerCounts(own.url);
      consumer.child.kill("SIGTERM");
      await consumer.exited;
      expect(current, consumer.output()).toEqual({ processed: total, effects: total });
      expect(consumer.output()).toMatch(new RegExp(`backfilled ${total - 30} events from the feed`));
    } finally {
      await server.server.close();
      await own.close();
    }
  }, 120_000);
});
