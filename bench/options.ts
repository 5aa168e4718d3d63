/**
 * The benchmark's options: `--name value` flags, each with a `BENCH_NAME`
 * environment fallback (flags win), checked once with every problem named.
 */
import { loadConfig } from "../src/config.js";
import type { LoadMode } from "./load.js";

/** A scenario of the run: a load mode, at the run's concurrency or its own (`route@1`). */
export interface Scenario {
  mode: LoadMode | "feed";
  concurrency: number;
}

export interface BenchOptions {
  /** The PostgreSQL server to create the throwaway database on. */
  serverUrl: string;
  concurrency: number;
  durationS: number;
  warmupS: number;
  /** Run in this order; `sql` is the raw-SQL floor and may appear more than once; `mode@N` runs with N clients; `feed` is the event feed's section. */
  scenarios: Scenario[];
  /** Each service scenario runs once per worker count. */
  workers: number[];
  /** Each service scenario runs with tracing off, on (spans to a local OTLP sink), or both, in the order given. */
  tracing: boolean[];
  /** Known senders the load draws from, and the share of messages from new ones. */
  senders: number;
  newShare: number;
  /** History written before the run (the growth run): events and contacts. */
  preloadEvents: number;
  preloadContacts: number;
  /** DATABASE_POOL_MAX for the server (per worker), and the floor's pool size. */
  pool: number;
  sqlPool: number;
  h2Connections: number;
  sampleMs: number;
  keep: boolean;
  label: string;
  /** The feed section: watch streams open beside ingest, and the ingest rate of the latency probe. */
  feedStreams: number;
  feedRate: number;
  /**
   * The service's entry points, each with a label (`before=../old/dist/src/main.js`):
   * every service scenario runs once per entry, alternated, to compare two builds in one run.
   */
  services: Array<{ label: string; script: string }>;
  /** After each saturated server scenario, the same at half its measured rate in an open loop (p50/p99 from each request's due time). */
  openLoop: boolean;
  /** Write a CPU profile of each service process here (`node --cpu-prof`), start-up included. */
  cpuProfDir: string;
}

const MODES: Array<LoadMode | "feed"> = ["sql", "grpc", "connect", "route", "bare", "bare-connect", "bare-grpc", "whatsapp", "whatsapp-10", "feed"];
const DEFAULT_SCENARIOS = "sql,grpc,connect,route,route@1,bare,bare-connect,bare-connect@1,bare-grpc,feed";

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv): BenchOptions {
  const flags = new Map<string, string>();
  const problems: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!match) {
      problems.push(`unexpected argument "${argv[i]}"`);
      continue;
    }
    const [, name, inline] = match;
    if (inline !== undefined) flags.set(name, inline);
    else if (name === "preload" || name === "keep") flags.set(name, "1");
    else if (i + 1 < argv.length) flags.set(name, argv[++i]);
    else problems.push(`--${name} needs a value`);
  }
  const raw = (name: string) => flags.get(name) ?? env[`BENCH_${name.toUpperCase().replaceAll("-", "_")}`];
  const number = (name: string, fallback: number, min: number, max: number, integer = true) => {
    const value = raw(name);
    if (value === undefined || value === "") return fallback;
    const parsed = Number(value);
    if (!Number.isFinite(parsed) || parsed < min || parsed > max || (integer && !Number.isInteger(parsed))) {
      problems.push(`--${name} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}, got "${value}"`);
      return fallback;
    }
    return parsed;
  };
  const list = <T>(name: string, fallback: string, item: (s: string) => T | undefined): T[] => {
    const items = (raw(name) || fallback).split(",").map((s) => s.trim());
    const parsed = items.map(item);
    if (parsed.some((p) => p === undefined)) problems.push(`--${name} has an unknown item in "${items.join(",")}"`);
    return parsed.filter((p): p is T => p !== undefined);
  };
  const flag = (name: string) => ["1", "true", "yes"].includes(raw(name) ?? "");

  const serverUrl = env.BENCH_DATABASE_URL || env.DATABASE_URL || "";
  if (!/^postgres(ql)?:\/\//.test(serverUrl)) {
    problems.push("set BENCH_DATABASE_URL (or DATABASE_URL) to a postgres:// server whose role may CREATE DATABASE");
  }
  const preload = flag("preload");
  const defaultPool = loadConfig({}).databasePoolMax;
  const pool = number("pool", Number(env.DATABASE_POOL_MAX) || defaultPool, 1, 1000);
  const concurrency = number("concurrency", 32, 1, 10_000);
  const options: BenchOptions = {
    serverUrl,
    concurrency,
    durationS: number("duration", 20, 0.5, 86_400, false),
    warmupS: number("warmup", 2, 0, 3_600, false),
    scenarios: list("scenarios", DEFAULT_SCENARIOS, (s) => {
      const [name, clients] = s.split("@");
      const mode = MODES.find((m) => m === name);
      if (!mode || (clients !== undefined && !/^[1-9]\d{0,4}$/.test(clients))) return undefined;
      return { mode, concurrency: clients === undefined ? concurrency : Number(clients) };
    }),
    workers: list("workers", "1,2", (s) => (/^\d+$/.test(s) && Number(s) >= 1 && Number(s) <= 64 ? Number(s) : undefined)),
    tracing: list("tracing", "off", (s) => ({ off: false, on: true })[s]),
    senders: number("senders", 10_000, 1, 10_000_000),
    newShare: number("new-share", 0.1, 0, 1, false),
    preloadEvents: number("preload-events", preload ? 1_000_000 : 0, 0, 100_000_000),
    preloadContacts: number("preload-contacts", preload ? 100_000 : 0, 0, 10_000_000),
    pool,
    sqlPool: number("sql-pool", pool, 1, 1000),
    h2Connections: number("h2-connections", 4, 1, 1000),
    sampleMs: number("sample-ms", 1000, 50, 60_000),
    keep: flag("keep"),
    label: raw("label") ?? "",
    feedStreams: number("feed-streams", 100, 0, 10_000),
    feedRate: number("feed-rate", 50, 1, 10_000),
    services: list("service", "dist/src/main.js", (s) => {
      const [label, script] = s.includes("=") ? s.split("=", 2) : ["", s];
      return /\.js$/.test(script) ? { label, script } : undefined;
    }),
    openLoop: list("open-loop", "on", (s) => ({ off: false, on: true })[s])[0] ?? true,
    cpuProfDir: raw("cpu-prof") ?? "",
  };
  for (const name of flags.keys()) {
    const known = ["concurrency", "duration", "warmup", "scenarios", "workers", "tracing", "senders", "new-share", "preload", "preload-events",
      "preload-contacts", "pool", "sql-pool", "h2-connections", "sample-ms", "keep", "label", "feed-streams", "feed-rate", "service",
      "open-loop", "cpu-prof"];
    if (!known.includes(name)) problems.push(`unknown option --${name}`);
  }
  if (problems.length > 0) throw new Error(`bench: invalid options:\n  - ${problems.join("\n  - ")}`);
  return options;
}
