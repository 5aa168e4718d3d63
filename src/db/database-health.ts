import { setTimeout as sleep } from "node:timers/promises";
import type { Sequelize } from "sequelize-typescript";
import { createMigrator, schemaStatus } from "./migrator.js";
import type { Logger } from "../observability/logger.js";

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

/**
 * Whether the service can do its job, which is whether its database answers.
 * Shared by the gRPC health service and the HTTP probes. Once `shutdown()`
 * is called the answer is "no" for good, so load balancers stop sending
 * requests before the server stops accepting them.
 */
export class DatabaseHealth {
  private readonly sequelize: Sequelize;
  private readonly log: Logger;
  private readonly cacheMs: number;
  private readonly timeoutMs: number;
  private readonly watchIntervalMs: number;
  private readonly migrator: ReturnType<typeof createMigrator>;
  private readonly stopping = new AbortController();
  private last: { at: number; answers: boolean } | undefined;
  private probing: Promise<boolean> | undefined;

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

  /** Readiness for `/readyz`: serving, and every known migration applied. */
  async readiness(): Promise<Readiness> {
    const reachable = await this.databaseAnswers();
    let schemaVersion: string | null = null;
    let pendingMigrations = 0;
    if (reachable) {
      try {
        const status = await withTimeout(schemaStatus(this.migrator), this.timeoutMs);
        schemaVersion = status.version;
        pendingMigrations = status.pending.length;
      } catch (error) {
        this.log.warn({ err: error }, "could not read the schema status");
        return { ready: false, database: "unreachable", schemaVersion, pendingMigrations, shuttingDown: this.shuttingDown };
      }
    }
    return {
      ready: reachable && pendingMigrations === 0 && !this.shuttingDown,
      database: reachable ? "reachable" : "unreachable",
      schemaVersion,
      pendingMigrations,
      shuttingDown: this.shuttingDown,
    };
  }

  /** `SELECT 1` within the timeout; one probe at a time, its answer reused for `cacheMs`. */
  private async databaseAnswers(): Promise<boolean> {
    if (this.last && Date.now() - this.last.at < this.cacheMs) return this.last.answers;
    this.probing ??= this.probe().finally(() => (this.probing = undefined));
    return this.probing;
  }

  private async probe(): Promise<boolean> {
    let answers = true;
    try {
      await withTimeout(this.sequelize.query("SELECT 1"), this.timeoutMs);
    } catch (error) {
      answers = false;
      if (this.last?.answers !== false) this.log.warn({ err: error }, "database does not answer: reporting NOT_SERVING");
    }
    if (answers && this.last?.answers === false) this.log.info("database answers again: reporting SERVING");
    this.last = { at: Date.now(), answers };
    return answers;
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
