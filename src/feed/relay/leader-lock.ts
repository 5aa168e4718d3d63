import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import type { Logger } from "../../observability/logger.js";

/**
 * Leadership among replicas: whoever holds a PostgreSQL session advisory lock
 * relays. `acquire()` resolves with an AbortSignal that aborts the moment
 * leadership is lost; the holder must stop publishing then.
 */
export interface LeaderLock {
  /** Waits until this process leads (or `signal` aborts). The returned signal aborts when leadership ends. */
  acquire(signal: AbortSignal): Promise<AbortSignal>;
  /** Gives leadership up, if held. */
  release(): Promise<void>;
}

export interface AdvisoryLockOptions {
  /** The PostgreSQL server every replica shares. */
  url: string;
  /** Names the lock: one leader per name (the stream). */
  name: string;
  /** How often a standby tries the lock, and how often the leader checks its connection. */
  retryMs: number;
  log: Logger;
}

/**
 * The lock is held by a dedicated connection, outside the pool: it lives as
 * long as leadership does. When the process dies, PostgreSQL sees the
 * connection close and frees the lock at once, so a standby takes over at
 * its next try. The leader checks its connection every `retryMs` (bounded by
 * a query timeout): a connection it cannot use any more may already have
 * been dropped by the server, and with it the lock.
 */
export function advisoryLock(options: AdvisoryLockOptions): LeaderLock {
  let client: pg.Client | undefined;
  let term: AbortController | undefined;

  const end = (reason: string) => {
    if (term && !term.signal.aborted) {
      options.log.warn(`relay leadership lost: ${reason}`);
      term.abort(new Error(reason));
    }
    const ending = client;
    client = undefined;
    void ending?.end().catch(() => undefined);
  };

  const tryLock = async (): Promise<boolean> => {
    const candidate = new pg.Client({
      connectionString: options.url,
      connectionTimeoutMillis: Math.max(options.retryMs, 1_000),
      query_timeout: Math.max(options.retryMs, 1_000),
      keepAlive: true,
      application_name: "aurora-crm-ingest relay lock",
    });
    candidate.on("error", () => undefined);
    try {
      await candidate.connect();
      const { rows } = await candidate.query<{ locked: boolean }>("SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked", [
        `aurora-crm-ingest relay ${options.name}`,
      ]);
      if (rows[0]?.locked) {
        client = candidate;
        return true;
      }
    } catch (error) {
      options.log.debug({ err: error }, "relay lock: database not reachable");
    }
    await candidate.end().catch(() => undefined);
    return false;
  };

  const watch = async (held: pg.Client, signal: AbortSignal) => {
    held.on("error", (error) => end(`lock connection failed (${error.message})`));
    held.on("end", () => end("lock connection closed"));
    while (!signal.aborted) {
      await sleep(options.retryMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) return;
      try {
        await held.query("SELECT 1");
      } catch (error) {
        end(`lock connection does not answer (${(error as Error).message})`);
      }
    }
  };

  return {
    async acquire(signal) {
      while (!signal.aborted) {
        if (await tryLock()) {
          term = new AbortController();
          void watch(client!, term.signal);
          return term.signal;
        }
        await sleep(options.retryMs, undefined, { signal }).catch(() => undefined);
      }
      throw signal.reason ?? new Error("aborted");
    },
    async release() {
      const held = client;
      if (term && !term.signal.aborted) term.abort(new Error("released"));
      client = undefined;
      await held?.end().catch(() => undefined);
    },
  };
}

/**
 * The embedded database lives inside one process, which is then the only
 * replica: it always leads. (Its connections all share one PGlite session, so
 * an advisory lock would be "held" by every connection anyway.)
 */
export function soleLeader(): LeaderLock {
  let term: AbortController | undefined;
  return {
    async acquire() {
      term = new AbortController();
      return term.signal;
    },
    async release() {
      term?.abort(new Error("released"));
    },
  };
}
