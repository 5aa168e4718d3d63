import { randomBytes } from "node:crypto";
import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import pg from "pg";
import { Sequelize } from "sequelize-typescript";
import { sessionSetup } from "../ingest/ingest-message.js";
import { abortable } from "../abortable.js";
import { lockDataDir } from "./data-dir-lock.js";
import { Contact } from "./models/Contact.js";
import { Deal } from "./models/Deal.js";
import { IngestEvent } from "./models/IngestEvent.js";
import { WhatsappUserLink } from "./models/WhatsappUserLink.js";
import { PrivacyRequest } from "./models/PrivacyRequest.js";

/** Where the database lives: a PostgreSQL server, or the embedded one in a folder (or in memory). */
export type DatabaseTarget =
  | { kind: "postgres"; url: string }
  | { kind: "embedded"; dataDir: string };

/** An open database: the Sequelize instance and how to close everything behind it. */
export interface Database {
  sequelize: Sequelize;
  /** `postgres` or `embedded`, for start-up messages. */
  kind: DatabaseTarget["kind"];
  /** Host and database name, never the password: safe to log. */
  description: string;
  /** Closes every connection, waiting up to `waitMs` (default: as long as it takes) for those still in use. */
  close(waitMs?: number): Promise<void>;
}

export interface DatabaseOptions {
  /** Most connections in the pool (PostgreSQL; the embedded database always has one). */
  poolMax?: number;
  /**
   * Bound on every wait for the database: pool acquire, connect, each
   * statement (server side) and each query's answer (client side, which also
   * catches a silent network). Unset: no statement limit, for migrations.
   */
  timeoutMs?: number;
}

/**
 * Opens the database. The embedded one is PGlite (PostgreSQL compiled to
 * WebAssembly) served over the PostgreSQL wire protocol on a Unix socket only
 * this process's user can open (see `listenPrivately`), so Sequelize and `pg`
 * talk to it exactly as to a server: same dialect, same migrations, same SQL.
 */
export async function openDatabase(target: DatabaseTarget, options: DatabaseOptions = {}): Promise<Database> {
  if (target.kind === "postgres") {
    const sequelize = createSequelize(target.url, options.poolMax ?? 10, options.timeoutMs);
    const url = new URL(target.url);
    return {
      sequelize,
      kind: "postgres",
      description: `postgres ${url.hostname || "localhost"}:${url.port || 5432}/${url.pathname.slice(1)}`,
      close: (waitMs) => closePool(sequelize, waitMs, () => cancelRunningStatements(target.url)),
    };
  }

  const inMemory = target.dataDir.startsWith("memory://");
  if (!inMemory) await mkdir(target.dataDir, { recursive: true, mode: 0o700 });
  // One process per folder: a second one would silently undo the first one's
  // commits. (A failed open below keeps the lock until this process exits.)
  const unlock = inMemory ? () => undefined : lockDataDir(target.dataDir);
  // Each commit is written to its files before it is acknowledged (never
  // relaxed), so a killed process loses nothing it acknowledged. PGlite does
  // not fsync, though: an operating system crash can lose recent commits.
  const pglite = await PGlite.create(target.dataDir, { relaxedDurability: false });
  // PGlite runs one session, so the pool has one connection whatever
  // `poolMax` says: statements queue in the pool, one transaction at a time.
  // With more, the socket server interleaves the connections' protocol
  // messages on that session (one connection's Bind runs another's Parse),
  // answering wrongly or hanging (electric-sql/pglite#1046; test/embedded-
  // database.test.ts). The socket still takes a few more connections, for
  // the pool's reconnects and for an operator's psql: few and rarely at the
  // same moment as the service's own.
  const socket = await listenPrivately(inMemory ? undefined : target.dataDir);
  const socketServer = new PGLiteSocketServer({ db: pglite, path: socket.path, maxConnections: 10 });
  await socketServer.start();
  await chmod(socket.path, 0o600);
  const sequelize = createSequelize(`postgres://postgres@localhost/postgres?host=${encodeURIComponent(socket.dir)}`, 1, options.timeoutMs);
  return {
    sequelize,
    kind: "embedded",
    description: `embedded ${inMemory ? "in memory" : target.dataDir}`,
    async close(waitMs) {
      await closePool(sequelize, waitMs);
      // Rolls back whatever a connection still in use had begun.
      await socketServer.stop();
      await pglite.close();
      await socket.remove();
      unlock();
    },
  };
}

/**
 * Where the embedded database listens: a Unix socket named as PostgreSQL
 * names its own (`.s.PGSQL.5432`, which `pg` finds from the folder), in a
 * folder only this user may enter, the socket itself owner-only. It has no
 * password, so neither a TCP port (which every local user can reach) nor a
 * socket others can open would do. The data folder when it has one and its
 * path fits a socket address (at most 107 bytes); otherwise a private
 * temporary folder.
 */
async function listenPrivately(dataDir: string | undefined): Promise<{ dir: string; path: string; remove(): Promise<void> }> {
  const name = ".s.PGSQL.5432";
  if (dataDir !== undefined && Buffer.byteLength(path.join(dataDir, name)) <= 107) {
    // The folder holds every message stored: nobody else needs to enter it.
    await chmod(dataDir, 0o700);
    const socketPath = path.join(dataDir, name);
    // Left behind by a process that was killed; the folder has one owner at a time.
    await rm(socketPath, { force: true });
    return { dir: dataDir, path: socketPath, remove: () => rm(socketPath, { force: true }) };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), "aurora-db-")); // created 0700
  return { dir, path: path.join(dir, name), remove: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * Closes the pool once every connection is back, or after `waitMs`: a
 * request cut off at shutdown may hold one until its own timeout. What such
 * a connection still runs is then cancelled, and PostgreSQL rolls it back:
 * a batch left running would commit as soon as its statement completes and
 * store messages whose requests were already cut off. (The database rolls back an open transaction when the
 * process exits, but not a statement still waiting on a lock.)
 */
async function closePool(sequelize: Sequelize, waitMs?: number, cancelRunning?: () => Promise<void>): Promise<void> {
  if (waitMs === undefined) return sequelize.close();
  const closed = sequelize.close().then(() => true);
  const within = (ms: number) => {
    const timeout = AbortSignal.timeout(ms);
    return abortable(closed, timeout).catch((error: unknown) => {
      if (timeout.aborted) return false;
      throw error;
    });
  };
  if ((await within(waitMs)) || !cancelRunning) return;
  await cancelRunning();
  await within(1_000);
}

// Names this process's connections, so that shutdown can find what they still run.
const applicationName = `aurora-crm-ingest ${randomBytes(4).toString("hex")}`;

/** Cancels the statements this process's pool is running, from a connection of its own (the pool may be all in use). */
async function cancelRunningStatements(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000, query_timeout: 1_000 });
  try {
    await client.connect();
    await client.query("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'", [
      applicationName,
    ]);
  } catch {
    // Unreachable database: nothing can commit there either.
  } finally {
    await client.end().catch(() => undefined);
  }
}

function createSequelize(url: string, poolMax: number, timeoutMs?: number): Sequelize {
  // A connection that failed (reset, timed out) is marked invalid by the
  // dialect and never handed out again, so the pool heals once the database is back.
  const timeouts = timeoutMs
    ? {
        connectionTimeoutMillis: timeoutMs,
        statement_timeout: timeoutMs,
        // A live server cancels the statement first (and the connection
        // stays usable); this one is for a network that went silent.
        query_timeout: timeoutMs + 1_000,
        idle_in_transaction_session_timeout: timeoutMs,
        keepAlive: true,
      }
    : {};
  return new Sequelize(url, {
    dialect: "postgres",
    logging: false,
    models: [Contact, Deal, IngestEvent, WhatsappUserLink, PrivacyRequest],
    pool: { max: poolMax, min: 0, acquire: timeoutMs ?? 10_000, idle: 10_000 },
    dialectOptions: { application_name: applicationName, ...timeouts },
    // Every connection, whenever the pool opens it, holds the ingest batch
    // statement as a function of its session (src/ingest/ingest-message.ts).
    hooks: {
      afterConnect: async (connection) => {
        for (const statement of sessionSetup) await (connection as pg.Client).query(statement);
      },
    },
  });
}
