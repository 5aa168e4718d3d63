/**
 * The feed relay's part of `npm run bench`: on the bench database and a
 * nats-server of its own (JetStream, file storage), it measures
 *
 *   1. POST /ingest/message at full speed (closed loop, `concurrency` in
 *      flight) with the relay off and on, alternately, twice each: ingest
 *      with the relay on must reach at least 0.9x of off;
 *   2. the relay's own rate: draining the backlog the bench left behind, and
 *      whether it kept up during the full-speed runs (events still waiting
 *      when the load stopped);
 *   3. at 80% of the relay-off rate (open loop, fixed arrival rate), the lag
 *      from each event's creation (its transaction's now(), just before the
 *      commit) to the stream storing it (the message's JetStream timestamp,
 *      which is when its acknowledgement is sent): p50 and p99.
 *
 * Runs from bench/run.ts after the other scenarios (BENCH_RELAY=0 skips it);
 * alone, on a fresh database with a backlog of 20,000 events:
 * `npm run build && BENCH_DATABASE_URL=postgres://... npx tsx bench/relay.ts [--duration 20 --concurrency 32]`
 * (the service runs compiled, from dist/).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import http from "node:http";
import path from "node:path";
import { createInterface } from "node:readline";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import pg from "pg";
import { IngestEventSchema } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { startNats } from "../test/support/nats.js";
import { messageSource } from "./traffic.js";

const root = path.resolve(import.meta.dirname, "..");
const STREAM = "BENCH_INGEST_EVENTS";

export interface RelayBenchOptions {
  /** The bench database (migrated and seeded). */
  databaseUrl: string;
  concurrency: number;
  durationS: number;
  warmupS: number;
  pool: number;
  senders: number;
}

export interface RelayBenchResult {
  ingestOffRps: number[];
  ingestOnRps: number[];
  ratioOnToOff: number;
  /** `seconds` from the server's start; `eventsPerSecond` from the stream's first message to its last. */
  backlogDrained: { events: number; seconds: number; eventsPerSecond: number };
  /** Events not yet in the stream when a full-speed run with the relay on stopped, and how long they took to arrive. */
  waitingAfterFullSpeed: Array<{ events: number; drainedInMs: number }>;
  at80Percent: { targetRps: number; achievedRps: number; events: number; lagMs: { p50: number; p99: number; max: number } };
}

/** Runs the relay bench and prints its lines; returns the figures for the results file. */
export async function benchRelay(options: RelayBenchOptions): Promise<RelayBenchResult> {
  const nats = await startNats();
  const db = new pg.Client({ connectionString: options.databaseUrl });
  await db.connect();
  const token = randomBytes(24).toString("hex");
  try {
    const on = { NATS_URL: nats.url, NATS_STREAM: STREAM };
    const events = async () => Number((await db.query<{ n: string }>("SELECT count(*) AS n FROM crm_ingest_events")).rows[0].n);
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const streamed = async () => (await jsm.streams.info(STREAM).catch(() => undefined))?.state.last_seq ?? 0;
    const caughtUp = async (timeoutMs: number) => {
      const started = Date.now();
      while ((await streamed()) < (await events())) {
        if (Date.now() - started > timeoutMs) throw new Error("relay did not catch up");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return Date.now() - started;
    };

    // The relay starts with everything the bench stored so far: its drain rate.
    const backlog = await events();
    let server = await startServer(options, token, on);
    const drainMs = await caughtUp(600_000);
    await server.stop();
    // The relay's own rate: from the stream's first message to its last, start-up excluded.
    const firstStored = backlog > 1 ? await jsm.streams.getMessage(STREAM, { seq: 1 }) : null;
    const lastStored = backlog > 1 ? await jsm.streams.getMessage(STREAM, { seq: backlog }) : null;
    const relaySeconds = firstStored && lastStored ? (lastStored.time.getTime() - firstStored.time.getTime()) / 1000 : NaN;
    const backlogDrained = { events: backlog, seconds: drainMs / 1000, eventsPerSecond: backlog / relaySeconds };
    console.log(
      `bench relay: backlog of ${backlog} events relayed in ${(drainMs / 1000).toFixed(1)} s from start-up; ` +
        `${relaySeconds.toFixed(2)} s from first to last message: ${backlogDrained.eventsPerSecond.toFixed(0)} events/s`,
    );

    const ingestOffRps: number[] = [];
    const ingestOnRps: number[] = [];
    const waitingAfterFullSpeed: RelayBenchResult["waitingAfterFullSpeed"] = [];
    for (let round = 0; round < 2; round++) {
      for (const relayOn of [false, true]) {
        server = await startServer(options, token, relayOn ? on : { NATS_URL: "" });
        if (relayOn) await caughtUp(120_000);
        const rps = await closedLoop(server.baseUrl, token, options, `r${round}${relayOn ? "n" : "f"}`);
        (relayOn ? ingestOnRps : ingestOffRps).push(rps);
        if (relayOn) {
          const waiting = (await events()) - (await streamed());
          waitingAfterFullSpeed.push({ events: waiting, drainedInMs: await caughtUp(120_000) });
        }
        await server.stop();
        console.log(`bench relay: ingest at full speed, relay ${relayOn ? "on " : "off"}: ${rps.toFixed(0)} req/s${relayOn ? `, ${waitingAfterFullSpeed.at(-1)!.events} events waiting when the load stopped, relayed ${waitingAfterFullSpeed.at(-1)!.drainedInMs} ms later` : ""}`);
      }
    }
    const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;
    const ratioOnToOff = mean(ingestOnRps) / mean(ingestOffRps);

    // Lag at 80% of the relay-off rate, read back from the stream.
    server = await startServer(options, token, on);
    await caughtUp(120_000);
    const firstSeq = (await streamed()) + 1;
    const targetRps = 0.8 * mean(ingestOffRps);
    const { achievedRps, sent } = await openLoop(server.baseUrl, token, options, targetRps, "r80");
    await caughtUp(120_000);
    await server.stop();
    const lags: number[] = [];
    const consumer = await jetstream(nc).consumers.get(STREAM, { opt_start_seq: firstSeq });
    const messages = await consumer.fetch({ max_messages: sent, expires: 10_000 });
    let seen = 0;
    const lastSeq = await streamed();
    for await (const message of messages) {
      const stored = message.info.timestampNanos / 1e6;
      lags.push(stored - createdAtOf(message.data));
      seen++;
      if (message.seq >= lastSeq || seen >= sent) break;
    }
    await nc.close();
    lags.sort((a, b) => a - b);
    const pct = (p: number) => lags[Math.min(lags.length - 1, Math.floor(p * lags.length))] ?? NaN;
    const at80Percent = { targetRps, achievedRps, events: lags.length, lagMs: { p50: pct(0.5), p99: pct(0.99), max: lags.at(-1) ?? NaN } };
    console.log(
      `bench relay: ingest with relay on / off: ${ratioOnToOff.toFixed(2)}x (${ingestOnRps.map((r) => r.toFixed(0)).join(", ")} vs ${ingestOffRps.map((r) => r.toFixed(0)).join(", ")} req/s)`,
    );
    console.log(
      `bench relay: at ${achievedRps.toFixed(0)} req/s (80% of ${mean(ingestOffRps).toFixed(0)}), created -> JetStream ack over ${lags.length} events: ` +
        `p50 ${pct(0.5).toFixed(0)} ms, p99 ${pct(0.99).toFixed(0)} ms, max ${(lags.at(-1) ?? NaN).toFixed(0)} ms`,
    );
    return { ingestOffRps, ingestOnRps, ratioOnToOff, backlogDrained, waitingAfterFullSpeed, at80Percent };
  } finally {
    await db.end().catch(() => undefined);
    await nats.close();
  }
}

/** The event's created_at, from its IngestEvent message. */
function createdAtOf(data: Uint8Array): number {
  const event = fromBinary(IngestEventSchema, data);
  return event.createdAt ? timestampMs(event.createdAt) : NaN;
}

interface Server {
  baseUrl: string;
  stop(): Promise<void>;
}

function startServer(options: RelayBenchOptions, token: string, env: Record<string, string>): Promise<Server> {
  const child: ChildProcess = spawn(process.execPath, ["dist/src/main.js"], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      HOST: "127.0.0.1",
      PORT: "0",
      WORKERS: "1",
      DATABASE_POOL_MAX: String(options.pool),
      INGEST_API_TOKENS: token,
      INGEST_API_TOKENS_FILE: "",
      TLS_CERT_FILE: "",
      TLS_KEY_FILE: "",
      TLS_CLIENT_CA_FILE: "",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let output = "";
  return new Promise((resolve, reject) => {
    let listening = false;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (listening) return;
      output += `${line}\n`;
      const match = /listening on (http:\/\/[^\s"]+)/.exec(line);
      if (!match) return;
      listening = true;
      resolve({
        baseUrl: match[1],
        async stop() {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
          await exited;
          clearTimeout(timer);
        },
      });
    });
    createInterface({ input: child.stderr! }).on("line", (line) => (output += `${line}\n`));
    void exited.then(() => reject(new Error(`server exited before listening:\n${output}`)));
  });
}

function sender(baseUrl: string, token: string, options: RelayBenchOptions, tag: string) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.concurrency * 4 });
  const next = messageSource({ poolSize: options.senders, newShare: 0.1, tag: `${tag}${randomBytes(2).toString("hex")}` });
  const url = new URL("/ingest/message", baseUrl);
  return () =>
    new Promise<boolean>((resolve) => {
      const message = next();
      const body = JSON.stringify({
        source: message.source,
        sender_id: message.senderId,
        content: message.content,
        metadata: message.metadata,
        external_id: message.externalId,
      });
      const request = http.request(
        url,
        { method: "POST", agent, headers: { "content-type": "application/json", authorization: `Bearer ${token}`, "content-length": Buffer.byteLength(body) } },
        (response) => {
          response.resume();
          response.on("end", () => resolve(response.statusCode === 200));
        },
      );
      request.on("error", () => resolve(false));
      request.end(body);
    });
}

/** `concurrency` requests always in flight; successful requests per second in the measured window. */
async function closedLoop(baseUrl: string, token: string, options: RelayBenchOptions, tag: string): Promise<number> {
  const send = sender(baseUrl, token, options, tag);
  const warmupEnd = Date.now() + options.warmupS * 1000;
  const end = warmupEnd + options.durationS * 1000;
  let ok = 0;
  await Promise.all(
    Array.from({ length: options.concurrency }, async () => {
      while (Date.now() < end) {
        const success = await send();
        if (success && Date.now() >= warmupEnd) ok++;
      }
    }),
  );
  return ok / options.durationS;
}

/** Requests at a fixed arrival rate, whatever the answers' latency (at most 4x concurrency in flight). */
async function openLoop(baseUrl: string, token: string, options: RelayBenchOptions, rps: number, tag: string): Promise<{ achievedRps: number; sent: number }> {
  const send = sender(baseUrl, token, options, tag);
  const started = Date.now();
  const end = started + options.durationS * 1000;
  let sent = 0;
  let ok = 0;
  let inFlight = 0;
  const pending: Promise<void>[] = [];
  while (Date.now() < end) {
    const due = Math.floor(((Date.now() - started) / 1000) * rps);
    while (sent < due && inFlight < options.concurrency * 4) {
      sent++;
      inFlight++;
      pending.push(
        send().then((success) => {
          inFlight--;
          if (success) ok++;
        }),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await Promise.all(pending);
  return { achievedRps: ok / options.durationS, sent: ok };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { parseOptions } = await import("./options.js");
  const { openDatabase } = await import("../src/db/database.js");
  const { createMigrator } = await import("../src/db/migrator.js");
  const options = parseOptions(process.argv.slice(2), process.env);
  const name = `aurora_bench_relay_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: options.serverUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = new URL(options.serverUrl);
  url.pathname = `/${name}`;
  try {
    const database = await openDatabase({ kind: "postgres", url: url.toString() }, { poolMax: 2 });
    await createMigrator(database.sequelize).up();
    // A backlog for the relay to drain, as the scenarios leave one behind in a full run.
    for (let i = 0; i < 20; i++) {
      await database.sequelize.query(
        `INSERT INTO crm_ingest_events (source, sender_id, content, metadata)
         SELECT 'web', 'backlog-' || n, 'message ' || n, jsonb_build_object('n', n) FROM generate_series(1, 1000) AS n`,
      );
    }
    await database.close();
    await benchRelay({ databaseUrl: url.toString(), concurrency: options.concurrency, durationS: options.durationS, warmupS: options.warmupS, pool: options.pool, senders: options.senders });
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}
