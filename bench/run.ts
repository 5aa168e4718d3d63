/**
 * `npm run bench [-- --duration 30 ...]`: measures the service against the
 * floor its database sets, in one run.
 *
 * Creates a throwaway database on the PostgreSQL server named by
 * BENCH_DATABASE_URL (or DATABASE_URL), migrates and seeds it, then per
 * scenario starts the server as a child process (the compiled
 * `dist/src/main.js` that production runs, built by `npm run bench`'s
 * `prebench`; PORT=0),
 * drives it from a separate load-generator process (bench/load.ts), samples
 * the server's CPU and memory from /proc, and checks that every successful
 * request left exactly one event and every new sender exactly one contact.
 * Prints a table and writes bench/results/<timestamp>.json.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createInterface } from "node:readline";
import { execFileSync } from "node:child_process";
import pg from "pg";
import { openDatabase } from "../src/db/database.js";
import { createMigrator } from "../src/db/migrator.js";
import type { LoadMode, LoadPlan, LoadResult } from "./load.js";
import { listPageLatency, openWatchStreams, watchLatency } from "./feed.js";
import { parseOptions, type BenchOptions, type Scenario } from "./options.js";
import { cpuBetween, cpuByPid, listeningPorts, machineCpu, processTree, sample } from "./proc.js";
import { benchRelay } from "./relay.js";
import { preloadEventsSql, seedContactsSql } from "./traffic.js";

const root = path.resolve(import.meta.dirname, "..");
/** The service as production runs it: compiled, without tsx's loader in the profile. */
const SERVICE = "dist/src/main.js";
/** The bearer token the server under test requires and the load generator sends. */
const API_TOKEN = randomBytes(24).toString("hex");
const WHATSAPP_SECRET = randomBytes(24).toString("hex");

/** One scenario's figures, as printed and written to the JSON file. */
interface Row {
  scenario: LoadMode;
  concurrency: number;
  /** What else ran beside the load (the feed section's open watch streams). */
  note?: string;
  workers: number | null;
  /** Whether the server exported spans (to the local OTLP sink). */
  tracing: boolean;
  /** The service build's label, when the run compares several (`--service label=path,…`). */
  service?: string;
  load: LoadResult;
  /** The same scenario at half this row's rate in an open loop: latency from each request's due time. */
  openLoop?: { rate: number; rps: number; errors: number; latencyMs: LoadResult["latencyMs"] };
  ratioToFloor: number | null;
  /** Throughput over the reference server's at the same concurrency (route and Connect: bare-connect; gRPC: bare-grpc). */
  ratioToReference: number | null;
  /** Messages per ingest batch in the measured run (from the server's batch-size histogram; null for other servers). */
  batchSize: { batches: number; mean: number; p50: number; p99: number } | null;
  /** Server process tree (null for the floor, which has no server). */
  serverCpuMsPer1000: number | null;
  /** The same per 1,000 stored messages: differs from per request only for deliveries of several messages. */
  serverCpuMsPer1000Messages: number | null;
  serverPeakRssMb: number | null;
  serverRssMb: Array<[seconds: number, mb: number]>;
  /** CPU of this database's PostgreSQL backends per 1,000 measured requests. */
  postgresCpuMsPer1000: number;
  /** Cores busy with anything else on the machine during the measured window (other work, PostgreSQL's own background). */
  otherCores: number;
  serverErrorLines: number;
  checks: { eventsStored: number; contactsCreated: number; ok: boolean; problems: string[] };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2), process.env);
  const name = `aurora_bench_${randomBytes(5).toString("hex")}`;
  const serverUrl = new URL(options.serverUrl);
  const benchUrl = new URL(options.serverUrl);
  benchUrl.pathname = `/${name}`;
  console.log(`bench: database ${name} on ${serverUrl.hostname}:${serverUrl.port || 5432}; ${os.cpus().length} cores, load ${os.loadavg()[0].toFixed(2)}`);

  await admin(serverUrl, `CREATE DATABASE ${name}`);
  const db = new pg.Client({ connectionString: benchUrl.toString() });
  try {
    const migrating = await openDatabase({ kind: "postgres", url: benchUrl.toString() }, { poolMax: 2 });
    await createMigrator(migrating.sequelize).up();
    await migrating.close();
    await db.connect();
    await prepare(db, options);
    const startedAt = new Date();
    const loadBefore = os.loadavg();
    const before = await counts(db);
    const beforeProblems = await integrity(db);
    if (beforeProblems.length) throw new Error(`database inconsistent before the run: ${beforeProblems.join("; ")}`);

    const sink = options.tracing.includes(true) ? await startOtlpSink() : undefined;
    const rows: Row[] = [];
    let feed: Record<string, unknown> | undefined;
    let run = 0;
    const measure = async (scenario: Scenario, server?: Server, note?: string) => {
      run++;
      process.stdout.write(`bench: ${scenario.mode}@${scenario.concurrency}${server ? ` workers=${server.workers}` : ""}${server?.tracing ? " tracing" : ""}${note ? ` ${note}` : ""} ... `);
      const row = await runScenario(db, options, benchUrl.toString(), scenario, server, String(run).padStart(2, "0").slice(-2));
      row.note = note;
      row.service = server?.label;
      rows.push(row);
      const l = row.load;
      console.log(`${l.rps.toFixed(0)} req/s, p99 ${l.latencyMs.p99.toFixed(1)} ms, ${l.errors} errors${row.checks.ok ? "" : `, CHECK FAILED: ${row.checks.problems.join("; ")}`}`);
      // Latency where it means something: the same server at half the rate it just reached, on a schedule.
      if (options.openLoop && server && scenario.concurrency > 1 && !note && l.rps > 0) {
        run++;
        const rate = Math.round(l.rps / 2);
        process.stdout.write(`bench:   open loop at ${rate} req/s ... `);
        const open = await runScenario(db, options, benchUrl.toString(), scenario, server, String(run).padStart(2, "0").slice(-2), rate);
        row.openLoop = { rate, rps: open.load.rps, errors: open.load.errors, latencyMs: open.load.latencyMs };
        row.checks.problems.push(...open.checks.problems);
        row.checks.ok &&= open.checks.ok;
        console.log(`p50 ${open.load.latencyMs.p50.toFixed(1)} ms, p99 ${open.load.latencyMs.p99.toFixed(1)} ms, ${open.load.errors} errors`);
      }
      return row;
    };
    // The floor and the reference servers run where they are listed;
    // each run of consecutive service scenarios shares one server per worker count.
    for (const group of groupScenarios(options.scenarios)) {
      if (group[0].mode === "sql") {
        await measure(group[0]);
        continue;
      }
      if (group[0].mode === "feed") {
        feed = await runFeed(benchUrl.toString(), options, measure);
        continue;
      }
      const reference = REFERENCE_SERVERS[group[0].mode];
      if (reference) {
        const server = await startServer(benchUrl.toString(), 1, options, { script: reference, label: "" });
        try {
          await measure(group[0], server);
        } finally {
          await server.stop();
        }
        continue;
      }
      for (const workers of options.workers) {
        for (const tracing of options.tracing) {
          // Builds being compared alternate here, innermost, so each pair runs minutes apart at most.
          for (const service of options.services) {
            const server = await startServer(benchUrl.toString(), workers, options, service, tracing ? sink!.endpoint : undefined);
            try {
              for (const scenario of group) await measure(scenario, server);
            } finally {
              await server.stop();
            }
          }
        }
      }
    }
    if (sink) {
      console.log(`bench: the OTLP sink received ${sink.requests} export requests, ${(sink.bytes / 1024).toFixed(0)} KiB`);
      await sink.close();
    }

    const floors = rows.filter((r) => r.scenario === "sql").map((r) => r.load.rps);
    const floor = floors.length ? floors.reduce((a, b) => a + b, 0) / floors.length : null;
    for (const row of rows) {
      row.ratioToFloor = floor ? row.load.rps / floor : null;
      const referenceMode = REFERENCE_OF[row.scenario];
      const references = rows.filter((r) => r.scenario === referenceMode && r.concurrency === row.concurrency).map((r) => r.load.rps);
      row.ratioToReference = references.length ? row.load.rps / (references.reduce((a, b) => a + b, 0) / references.length) : null;
    }
    const after = await counts(db);
    const afterProblems = await integrity(db);

    printTable(rows, options);
    // The relay's figures on the same database, against the route's rate (bench/relay.ts); BENCH_RELAY=0 leaves them out.
    const relay = process.env.BENCH_RELAY === "0" ? undefined : await benchRelay({ databaseUrl: benchUrl.toString(), ...options });
    const memory = rows
      .filter((r) => r.serverRssMb.length > 0)
      .map((r) => {
        const window = r.serverRssMb.filter(([t]) => t >= options.warmupS).map(([, mb]) => mb.toFixed(0));
        const [first, middle, last] = [window[0], window[Math.floor(window.length / 2)], window.at(-1)];
        return `${label(r)} x${r.workers} ${first ?? "-"} / ${middle ?? "-"} / ${last ?? "-"}`;
      });
    if (feed) console.log(`feed: ${JSON.stringify(feed)}`);
    if (memory.length) console.log(`server RSS MB in the measured window (first / middle / last sample): ${memory.join("; ")}`);
    const ok = rows.every((r) => r.checks.ok) && afterProblems.length === 0;
    console.log(
      `checks: events ${before.events} -> ${after.events}, contacts ${before.contacts} -> ${after.contacts}; ` +
        (ok ? "nothing lost, no contact duplicated, every link matches its sender" : `FAILED: ${afterProblems.join("; ")}`),
    );

    const result = {
      startedAt: startedAt.toISOString(),
      label: options.label,
      commit: gitCommit(),
      machine: { cores: os.cpus().length, cpu: os.cpus()[0]?.model, memoryGb: Math.round(os.totalmem() / 2 ** 30), loadBefore, loadAfter: os.loadavg() },
      options: { ...options, serverUrl: `${serverUrl.hostname}:${serverUrl.port || 5432}` },
      floorRps: floor,
      feed,
      before: { ...before, problems: beforeProblems },
      after: { ...after, problems: afterProblems },
      rows,
      relay,
    };
    const dir = path.join(root, "bench/results");
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, `${startedAt.toISOString().replaceAll(":", "-").replace(/\..*/, "")}${options.label ? `-${options.label}` : ""}.json`);
    await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`bench: written ${path.relative(process.cwd(), file)}`);
    if (!ok) process.exitCode = 1;
  } finally {
    await db.end().catch(() => undefined);
    if (options.keep) console.log(`bench: kept database ${name}`);
    else await admin(serverUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
}

async function admin(url: URL, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Seeds the known senders (and the growth run's history) with set-based SQL, then refreshes statistics. */
async function prepare(db: pg.Client, options: BenchOptions): Promise<void> {
  const started = Date.now();
  await db.query(seedContactsSql, [Math.max(options.senders, options.preloadContacts)]);
  // The feed's List pages need events to return: without --preload, a short
  // history, so a page's latency compares with the growth run's like for like.
  const history = options.preloadEvents || (options.scenarios.some((scenario) => scenario.mode === "feed") ? 10_000 : 0);
  if (history > 0) await db.query(preloadEventsSql, [history, Math.max(options.senders, options.preloadContacts)]);
  await db.query("VACUUM ANALYZE crm_contacts, crm_ingest_events");
  const { contacts, events } = await counts(db);
  console.log(`bench: seeded ${contacts} contacts and ${events} events in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function counts(db: pg.Client): Promise<{ events: number; contacts: number }> {
  const { rows } = await db.query<{ events: string; contacts: string }>(
    "SELECT (SELECT count(*) FROM crm_ingest_events) AS events, (SELECT count(*) FROM crm_contacts) AS contacts",
  );
  return { events: Number(rows[0].events), contacts: Number(rows[0].contacts) };
}

/** Whatever must never happen, counted: duplicated contacts, links to the wrong contact, LINKED events without one. */
async function integrity(db: pg.Client): Promise<string[]> {
  const { rows } = await db.query<Record<string, string>>(`
    SELECT
      (SELECT count(*) FROM (SELECT whatsapp_id FROM crm_contacts WHERE whatsapp_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) d)
      + (SELECT count(*) FROM (SELECT email FROM crm_contacts WHERE email IS NOT NULL GROUP BY 1 HAVING count(*) > 1) d) AS duplicated_contacts,
      (SELECT count(*) FROM crm_ingest_events e JOIN crm_contacts c ON c.id = e.contact_id
        WHERE coalesce(c.whatsapp_id, c.email) <> lower(trim(e.sender_id))) AS mislinked_events,
      (SELECT count(*) FROM crm_ingest_events WHERE status = 'LINKED' AND contact_id IS NULL) AS unlinked_linked_events`);
  return Object.entries(rows[0])
    .filter(([, n]) => Number(n) > 0)
    .map(([what, n]) => `${n} ${what.replaceAll("_", " ")}`);
}

/**
 * Servers that are not the service, each a scenario of its own: the least a
 * Node.js server (`bare`) and a Connect server (`bare-connect`) do for the
 * same message, so the table shows where the distance to the floor comes from.
 */
const REFERENCE_SERVERS: Partial<Record<LoadMode, string>> = {
  bare: "bench/bare-server.ts",
  "bare-connect": "bench/bare-connect-server.ts",
  "bare-grpc": "bench/bare-connect-server.ts",
};

/**
 * The event feed's section, on a server of its own: List page latency at
 * random positions, watch latency (commit to receipt) at a fixed ingest
 * rate, then Connect ingest throughput with no watch stream open and again
 * with `feedStreams` open (each of which must receive every event stored
 * meanwhile).
 */
async function runFeed(
  databaseUrl: string,
  options: BenchOptions,
  measure: (scenario: Scenario, server?: Server, note?: string) => Promise<Row>,
): Promise<Record<string, unknown>> {
  const server = await startServer(databaseUrl, 1, options);
  try {
    process.stdout.write("bench: feed list pages ... ");
    const list = await listPageLatency(server.baseUrl, API_TOKEN, databaseUrl, 200);
    console.log(`${list.events} events stored, page of 100 p50 ${list.p50.toFixed(1)} ms, p99 ${list.p99.toFixed(1)} ms; ` +
      `filtered page matching nothing p50 ${list.filtered.p50.toFixed(1)} ms, max ${list.filtered.max.toFixed(1)} ms`);
    process.stdout.write(`bench: feed watch latency at ${options.feedRate} events/s ... `);
    const latency = await watchLatency(server.baseUrl, API_TOKEN, databaseUrl, options.feedRate, options.durationS * 1000);
    const ms = (q: { p50: number; p99: number }) => `p50 ${q.p50.toFixed(1)} ms, p99 ${q.p99.toFixed(1)} ms`;
    console.log(`same process ${ms(latency.sameProcess)}; other process ${ms(latency.otherProcess)}; ${latency.missing} missing`);
    const without = await measure({ mode: "connect", concurrency: options.concurrency }, server, "0 watch streams");
    const streams = openWatchStreams(server.baseUrl, API_TOKEN, options.feedStreams);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const beside = await measure({ mode: "connect", concurrency: options.concurrency }, server, `${options.feedStreams} watch streams`);
    // Under full load the streams fall behind (each event is sent once per
    // stream) and catch up once it ends: how long that takes is a figure too.
    const stored = beside.checks.eventsStored;
    const behind = Math.min(...streams.received);
    const loadEnded = Date.now();
    while (Date.now() - loadEnded < 120_000 && streams.received.some((n) => n < stored)) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const catchUpS = (Date.now() - loadEnded) / 1000;
    const { received, failures } = await streams.close();
    const complete = received.filter((n) => n === stored).length;
    console.log(
      `bench: ${complete} of ${options.feedStreams} watch streams received exactly the ${stored} events stored ` +
        `(least ${Math.min(...received)}, most ${Math.max(...received)}); ${failures} failed; ` +
        `when the load ended the slowest had ${behind}; ${complete === received.length ? "all" : "not all"} were done ${catchUpS.toFixed(1)} s later`,
    );
    return {
      listPage: list,
      watchLatencyMs: latency,
      throughput: { withoutStreams: without.load.rps, withStreams: beside.load.rps, ratio: beside.load.rps / without.load.rps },
      streams: { open: options.feedStreams, complete, failures, behindAtLoadEnd: stored - behind, catchUpS },
    };
  } finally {
    await server.stop();
  }
}

/** The reference each service scenario is compared with: the same protocol on the Connect reference server. */
const REFERENCE_OF: Partial<Record<LoadMode, LoadMode>> = { route: "bare-connect", connect: "bare-connect", grpc: "bare-grpc" };

/** `sql,grpc,route,bare,sql` -> [sql], [grpc, route], [bare], [sql]. */
function groupScenarios(scenarios: Scenario[]): Scenario[][] {
  const alone = (scenario: Scenario) => scenario.mode === "sql" || scenario.mode === "feed" || scenario.mode in REFERENCE_SERVERS;
  const groups: Scenario[][] = [];
  for (const scenario of scenarios) {
    const last = groups.at(-1);
    if (!alone(scenario) && last && !alone(last[0])) last.push(scenario);
    else groups.push([scenario]);
  }
  return groups;
}

async function runScenario(
  db: pg.Client,
  options: BenchOptions,
  databaseUrl: string,
  scenario: Scenario,
  server: Server | undefined,
  tag: string,
  rate?: number,
): Promise<Row> {
  if (scenario.mode === "feed") throw new Error("the feed section is run by runFeed");
  const { mode } = scenario;
  const before = await counts(db);
  const batchesBefore = server?.service ? await batchHistogram(server.baseUrl) : undefined;
  const errorLinesBefore = server?.errorLines() ?? 0;
  const serverPids = server ? processTree(server.child.pid!) : [];
  const plan: LoadPlan = {
    mode,
    target: server?.baseUrl ?? databaseUrl,
    concurrency: scenario.concurrency,
    warmupMs: options.warmupS * 1000,
    durationMs: options.durationS * 1000,
    poolSize: options.senders,
    newShare: options.newShare,
    tag,
    sqlPoolMax: options.sqlPool,
    h2Connections: options.h2Connections,
    token: API_TOKEN,
    whatsappSecret: WHATSAPP_SECRET,
    rate,
  };

  type Snapshot = { at: number; server: ReturnType<typeof sample>; postgres: Map<number, number>; machine: ReturnType<typeof machineCpu>; loadMs: number };
  let backendPids: number[] = [];
  let load: ChildProcess | undefined;
  const snapshot = (): Snapshot => ({
    at: Date.now(),
    server: sample(serverPids),
    postgres: cpuByPid(backendPids),
    machine: machineCpu(),
    loadMs: load?.pid ? sample([load.pid]).cpuMs : 0,
  });

  const started = Date.now();
  const rss: Array<[number, number]> = [];
  let peakRss = 0;
  const sampler = setInterval(() => {
    if (!server) return;
    const now = sample(serverPids).rssMb;
    peakRss = Math.max(peakRss, now);
    rss.push([Math.round((Date.now() - started) / 100) / 10, Math.round(now * 10) / 10]);
  }, options.sampleMs);

  let first: Snapshot | undefined;
  let last: Snapshot | undefined;
  let result: LoadResult | undefined;
  let stderr = "";
  try {
    load = spawn(process.execPath, ["--import", "tsx", "bench/load.ts", JSON.stringify(plan)], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    load.stderr!.on("data", (chunk) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => load!.once("exit", resolve));
    for await (const line of createInterface({ input: load.stdout! })) {
      const message = JSON.parse(line) as { type: string; result?: LoadResult };
      if (message.type === "measuring") {
        backendPids = await postgresBackends(db);
        first = snapshot();
      } else if (message.type === "stopped") {
        last = snapshot();
      } else if (message.type === "result") {
        result = message.result;
      }
    }
    const code = await exited;
    if (code !== 0 || !result || !first || !last) throw new Error(`load generator failed (exit ${code}):\n${stderr}`);
  } finally {
    clearInterval(sampler);
  }

  const after = await counts(db);
  const batchesAfter = server?.service ? await batchHistogram(server.baseUrl) : undefined;
  const problems: string[] = [];
  const eventsStored = after.events - before.events;
  const contactsCreated = after.contacts - before.contacts;
  if (eventsStored !== result.succeeded) problems.push(`${eventsStored} events stored for ${result.succeeded} successful requests`);
  if (contactsCreated !== result.newSendersSucceeded) {
    problems.push(`${contactsCreated} contacts created for ${result.newSendersSucceeded} new senders`);
  }
  const perThousand = (ms: number) => (result.measured ? (ms / result.measured) * 1000 : NaN);
  const machine = {
    busy: last.machine.busy - first.machine.busy,
    total: last.machine.total - first.machine.total,
  };
  const oursMs = last.server.cpuMs - first.server.cpuMs + cpuBetween(first.postgres, last.postgres) + (last.loadMs - first.loadMs);
  const seconds = (last.at - first.at) / 1000;
  const busyCores = machine.total ? (machine.busy / machine.total) * os.cpus().length : 0;
  return {
    scenario: mode,
    concurrency: scenario.concurrency,
    workers: server?.workers ?? null,
    tracing: server?.tracing ?? false,
    load: result,
    ratioToFloor: null,
    ratioToReference: null,
    batchSize: batchesBefore && batchesAfter ? batchSizes(batchesBefore, batchesAfter) : null,
    serverCpuMsPer1000: server ? perThousand(last.server.cpuMs - first.server.cpuMs) : null,
    serverCpuMsPer1000Messages: server && result.measuredMessages ? ((last.server.cpuMs - first.server.cpuMs) / result.measuredMessages) * 1000 : null,
    serverPeakRssMb: server ? Math.max(peakRss, last.server.rssMb) : null,
    serverRssMb: rss,
    postgresCpuMsPer1000: perThousand(cpuBetween(first.postgres, last.postgres)),
    otherCores: Math.max(0, busyCores - oursMs / 1000 / seconds),
    serverErrorLines: (server?.errorLines() ?? 0) - errorLinesBefore,
    checks: { eventsStored, contactsCreated, ok: problems.length === 0, problems },
  };
}

/** The PostgreSQL backend processes serving this database (the server's or the floor's pool), for CPU accounting. */
async function postgresBackends(db: pg.Client): Promise<number[]> {
  const { rows } = await db.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
  );
  return rows.map((r) => r.pid);
}

/** The server under test (the compiled service, or a reference server) in a process of its own. */
interface Server {
  child: ChildProcess;
  baseUrl: string;
  workers: number;
  /** The service itself (with its /metrics), not a reference server. */
  service: boolean;
  /** Whether it exports spans (to the bench's OTLP sink). */
  tracing: boolean;
  /** The service build's label (`--service label=path`), empty for one build and for reference servers. */
  label: string;
  errorLines(): number;
  stop(): Promise<void>;
}

/**
 * Starts `script` (the service unless told otherwise) over the bench
 * database, with the environment's log settings (request logs included, as
 * deployed), and resolves once it answers HTTP on the port it listens on,
 * found in /proc rather than in its log (so any LOG_LEVEL works). Lines
 * logged as errors are counted.
 */
async function startServer(
  databaseUrl: string,
  workers: number,
  options: Pick<BenchOptions, "pool" | "cpuProfDir">,
  { script, label }: BenchOptions["services"][number] = { script: SERVICE, label: "" },
  otlpEndpoint?: string,
): Promise<Server> {
  const poolMax = options.pool;
  const service = !script.endsWith(".ts");
  // The service runs compiled; the reference servers are bench sources, run through tsx.
  const profile = service && options.cpuProfDir ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(options.cpuProfDir)}`] : [];
  const child = spawn(process.execPath, service ? [...profile, script] : ["--import", "tsx", script], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      HOST: "127.0.0.1",
      PORT: "0",
      WORKERS: String(workers),
      DATABASE_POOL_MAX: String(poolMax),
      // As deployed: every request carries a bearer token; no TLS (terminated in front of the service).
      INGEST_API_TOKENS: API_TOKEN,
      INGEST_API_TOKENS_FILE: "",
      FEED_API_TOKENS: API_TOKEN,
      FEED_API_TOKENS_FILE: "",
      // The WhatsApp webhook's scenarios sign their deliveries with this secret.
      WHATSAPP_APP_SECRETS: WHATSAPP_SECRET,
      WHATSAPP_APP_SECRETS_FILE: "",
      WHATSAPP_VERIFY_TOKENS: API_TOKEN,
      WHATSAPP_VERIFY_TOKENS_FILE: "",
      TLS_CERT_FILE: "",
      TLS_KEY_FILE: "",
      TLS_CLIENT_CA_FILE: "",
      // Tracing with the SDK's defaults (parent-based always-on sampler, batched export) when asked for, otherwise off.
      OTEL_EXPORTER_OTLP_ENDPOINT: otlpEndpoint ?? "",
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  let errorLines = 0;
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  void exited.then((code) => (exitCode = code));
  const onLine = (line: string, stderr: boolean) => {
    // pino levels: 50 error, 60 fatal.
    if (stderr || /"level":(5|6)0\b/.test(line)) errorLines++;
    if (output.length < 20_000) output += `${line}\n`;
  };
  createInterface({ input: child.stdout }).on("line", (line) => onLine(line, false));
  createInterface({ input: child.stderr }).on("line", (line) => onLine(line, true));

  const deadline = Date.now() + 120_000;
  for (;;) {
    if (exitCode !== undefined) throw new Error(`server exited with ${exitCode} before listening:\n${output}`);
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`server did not answer within 120 s:\n${output}`);
    }
    const port = listeningPorts(processTree(child.pid!))[0];
    if (port !== undefined && (await answers(`http://127.0.0.1:${port}/healthz`))) {
      return {
        child,
        baseUrl: `http://127.0.0.1:${port}`,
        workers,
        service,
        tracing: otlpEndpoint !== undefined,
        label,
        errorLines: () => errorLines,
        async stop() {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
          await exited;
          clearTimeout(timer);
        },
      };
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * What an OpenTelemetry Collector is to the service: an OTLP/HTTP endpoint
 * that takes every export. This one only counts them, in the bench process.
 */
async function startOtlpSink(): Promise<{ endpoint: string; requests: number; bytes: number; close(): Promise<void> }> {
  const counts = { requests: 0, bytes: 0 };
  const server = createServer((req, res) => {
    counts.requests++;
    req.on("data", (chunk: Buffer) => (counts.bytes += chunk.length));
    req.on("end", () => res.writeHead(200, { "content-type": "application/x-protobuf" }).end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get requests() {
      return counts.requests;
    },
    get bytes() {
      return counts.bytes;
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** True once anything answers HTTP at `url` (a reference server answers probes with an error, which is enough). */
async function answers(url: string): Promise<boolean> {
  try {
    await fetch(url, { signal: AbortSignal.timeout(1_000) });
    return true;
  } catch {
    return false;
  }
}

/** The service's batch-size histogram, as scraped from /metrics (with WORKERS=N, one worker's). */
interface BatchHistogram {
  buckets: Array<[le: number, count: number]>;
  sum: number;
  count: number;
}

async function batchHistogram(baseUrl: string): Promise<BatchHistogram | undefined> {
  try {
    const text = await (await fetch(`${baseUrl}/metrics`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).text();
    const buckets: Array<[number, number]> = [];
    let sum = 0;
    let count = 0;
    for (const line of text.split("\n")) {
      const bucket = /^aurora_ingest_batch_size_bucket\{le="([^"]+)"\} (\S+)/.exec(line);
      if (bucket) buckets.push([bucket[1] === "+Inf" ? Infinity : Number(bucket[1]), Number(bucket[2])]);
      if (line.startsWith("aurora_ingest_batch_size_sum ")) sum = Number(line.split(" ")[1]);
      if (line.startsWith("aurora_ingest_batch_size_count ")) count = Number(line.split(" ")[1]);
    }
    return buckets.length ? { buckets, sum, count } : undefined;
  } catch {
    return undefined;
  }
}

/** Batches between two scrapes: how many, the mean size, and p50/p99 as the upper bound of the bucket they fall in. */
function batchSizes(before: BatchHistogram, after: BatchHistogram): Row["batchSize"] {
  const batches = after.count - before.count;
  if (batches <= 0) return null;
  const cumulative = after.buckets.map(([le, n], i) => [le, n - (before.buckets[i]?.[1] ?? 0)] as const);
  const quantile = (q: number) => cumulative.find(([, n]) => n >= q * batches)?.[0] ?? Infinity;
  return { batches, mean: (after.sum - before.sum) / batches, p50: quantile(0.5), p99: quantile(0.99) };
}

/** The run's concurrency: rows at another one say theirs. */
let tableConcurrency = 0;

function label(row: Row): string {
  const name = {
    sql: "raw SQL floor",
    grpc: "gRPC",
    connect: "Connect JSON",
    route: "POST /ingest/message",
    bare: "bare node:http + pg",
    "bare-connect": "bare Connect + pg",
    "bare-grpc": "bare Connect gRPC + pg",
    whatsapp: "POST /webhooks/whatsapp, 1 message",
    "whatsapp-10": "POST /webhooks/whatsapp, 10 messages",
  }[row.scenario];
  const tracing = row.tracing ? " + tracing" : "";
  const clients = row.concurrency === tableConcurrency ? "" : `, ${row.concurrency} client${row.concurrency === 1 ? "" : "s"}`;
  return `${row.service ? `${row.service}: ` : ""}${name}${tracing}${clients}${row.note ? `, ${row.note}` : ""}`;
}

function printTable(rows: Row[], options: BenchOptions): void {
  tableConcurrency = options.concurrency;
  const fixed = (n: number | null, digits = 1) => (n === null || !Number.isFinite(n) ? "-" : n.toFixed(digits));
  const header = ["scenario", "workers", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "x floor", "x ref", "srv CPU ms/1k", "srv CPU ms/1k msgs", "srv peak MB", "pg CPU ms/1k", "batch p50/p99", "client CPU ms/1k", "other cores", "½ rate", "½ p50 ms", "½ p99 ms"];
  const lines = rows.map((r) => [
    label(r),
    r.workers === null ? "-" : String(r.workers),
    fixed(r.load.rps, 0),
    fixed(r.load.latencyMs.p50),
    fixed(r.load.latencyMs.p90),
    fixed(r.load.latencyMs.p99),
    String(r.load.errors),
    fixed(r.ratioToFloor, 2),
    fixed(r.ratioToReference, 2),
    fixed(r.serverCpuMsPer1000, 0),
    fixed(r.serverCpuMsPer1000Messages, 0),
    fixed(r.serverPeakRssMb, 0),
    fixed(r.postgresCpuMsPer1000, 0),
    r.batchSize ? `${r.batchSize.p50}/${r.batchSize.p99}` : "-",
    fixed(r.load.clientCpuMsPer1000, 0),
    fixed(r.otherCores, 2),
    r.openLoop ? String(r.openLoop.rate) : "-",
    r.openLoop ? fixed(r.openLoop.latencyMs.p50) : "-",
    r.openLoop ? `${fixed(r.openLoop.latencyMs.p99)}${r.openLoop.errors ? ` (${r.openLoop.errors} errors)` : ""}` : "-",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const format = (cells: string[]) => `| ${cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ")} |`;
  console.log(
    `\n${options.concurrency} concurrent clients, ${options.durationS} s measured after ${options.warmupS} s warm-up, ` +
      `pool ${options.pool} per worker (floor ${options.sqlPool}), ${os.cpus().length} cores\n`,
  );
  console.log(format(header));
  console.log(`|${widths.map((w, i) => (i < 2 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`);
  for (const line of lines) console.log(format(line));
  console.log("");
}

function gitCommit(): string | undefined {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).trim();
  } catch {
    return undefined;
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
