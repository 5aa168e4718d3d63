import { setTimeout as sleep } from "node:timers/promises";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { createMigrator, SCHEMA_MIGRATIONS_TABLE } from "./migrator.js";
import { abortable } from "../abortable.js";
import type { Logger } from "../observability/logger.js";
import { sqlState } from "./sql-state.js";

export interface DatabaseHealthOptions {
  sequelize: Sequelize;
  log: Logger;
  /** How long a database answer counts as current, so probes do not hammer it. */
  cacheMs?: number;
  /** How long `SELECT 1` may take before the database counts as not answering. */
  timeoutMs?: number;
  /** How often `watch` looks for a change. */
  watchIntervalMs?: number;
}

/** What `/readyz` reports. */
export interface Readiness {
  ready: boolean;
  database: "reachable" | "unreachable";
  schemaVersion: string | null;
  pendingMigrations: number;
  shuttingDown: boolean;
}

/** What one probe of the database found: whether it answered, and which migrations it has applied. */
interface Probe {
  at: number;
  answers: boolean;
  applied: string[];
}

/**
 * Whether the service can do its job, which is whether its database answers.
 * Shared by the gRPC health service and the HTTP probes. Once `shutdown()`
 * is called the answer is "no" for good, so load balancers stop sending
 * requests before the server stops accepting them.
 *
 * Probes are open to anyone, so they must cost the database next to nothing
 * however often they are called: one query (the applied migrations' names,
 * which also shows the database answers) at most once per `cacheMs`,
 * shared by every caller. The migrations the code knows are listed once,
 * from their files; a migration applied or reverted while the service runs
 * shows at the next probe.
 */
export class DatabaseHealth {
  private readonly sequelize: Sequelize;
  private readonly log: Logger;
  private readonly cacheMs: number;
  private readonly timeoutMs: number;
  private readonly watchIntervalMs: number;
  private readonly migrator: ReturnType<typeof createMigrator>;
  private readonly stopping = new AbortController();
  private last: Probe | undefined;
  private probing: Promise<Probe> | undefined;
  private known: Promise<string[]> | undefined;

  constructor(options: DatabaseHealthOptions) {
    this.sequelize = options.sequelize;
    this.log = options.log;
    this.cacheMs = options.cacheMs ?? 1_000;
    this.timeoutMs = options.timeoutMs ?? 2_000;
    this.watchIntervalMs = options.watchIntervalMs ?? 1_000;
    this.migrator = createMigrator(options.sequelize);
  }

  /** True once the service started shutting down. */
  get shuttingDown(): boolean {
    return this.stopping.signal.aborted;
  }

  /** Reports not serving from now on: the first step of a graceful shutdown. */
  shutdown(): void {
    this.stopping.abort();
  }

  /** Whether the service serves: not shutting down, and the database answers. */
  async serving(): Promise<boolean> {
    return !this.shuttingDown && (await this.databaseAnswers());
  }

  /**
   * Yields `serving()` now, then each time it changes, until `signal` aborts.
   * Ends after reporting a shutdown, so open watches never hold it up.
   */
  async *watch(signal: AbortSignal): AsyncGenerator<boolean> {
    let last = await this.serving();
    yield last;
    const wake = AbortSignal.any([signal, this.stopping.signal]);
    while (!signal.aborted) {
      if (this.shuttingDown) {
        if (last) yield false;
        return;
      }
      await sleep(this.watchIntervalMs, undefined, { signal: wake }).catch(() => undefined);
      if (signal.aborted) return;
      const now = await this.serving();
      if (now !== last) yield (last = now);
    }
  }

  /** Readiness for `/readyz`: serving, and every migration the code knows applied. */
  async readiness(): Promise<Readiness> {
    const probe = await this.probe();
    let pending: string[];
    try {
      this.known ??= this.migrator.migrations(this.sequelize.getQueryInterface()).then((all) => all.map((m) => m.name));
      const applied = new Set(probe.applied);
      pending = (await this.known).filter((name) => !applied.has(name));
    } catch (error) {
      this.known = undefined;
      this.log.warn({ err: error }, "could not list the migrations");
      pending = ["?"];
    }
    const reachable = probe.answers;
    return {
      ready: reachable && pending.length === 0 && !this.shuttingDown,
      database: reachable ? "reachable" : "unreachable",
      schemaVersion: reachable ? ([...probe.applied].sort().at(-1) ?? null) : null,
      pendingMigrations: reachable ? pending.length : 0,
      shuttingDown: this.shuttingDown,
    };
  }

  private async databaseAnswers(): Promise<boolean> {
    return (await this.probe()).answers;
  }

  /** The latest probe if it is younger than `cacheMs`, else a new one; one at a time. */
  private async probe(): Promise<Probe> {
    if (this.last && Date.now() - this.last.at < this.cacheMs) return this.last;
    this.probing ??= this.runProbe().finally(() => (this.probing = undefined));
    return this.probing;
  }

  private async runProbe(): Promise<Probe> {
    let answers = true;
    let applied: string[] = [];
    try {
      const rows = await withTimeout(
        this.sequelize.query<{ name: string }>(`SELECT name FROM ${SCHEMA_MIGRATIONS_TABLE}`, { type: QueryTypes.SELECT }),
        this.timeoutMs,
      );
      applied = rows.map((row) => row.name);
    } catch (error) {
      // No such table yet: the database answers, and has no migration applied.
      if (sqlState(error) !== "42P01") {
        answers = false;
        if (this.last?.answers !== false) this.log.warn({ err: error }, "database does not answer: reporting NOT_SERVING");
      }
    }
    if (answers && this.last?.answers === false) this.log.info("database answers again: reporting SERVING");
    this.last = { at: Date.now(), answers, applied };
    return this.last;
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  const timeout = AbortSignal.timeout(ms);
  return abortable(promise, timeout).catch((error: unknown) => {
    throw timeout.aborted ? new Error(`no answer within ${ms} ms`) : error;
  });
}
