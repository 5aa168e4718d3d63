import { mkdir } from "node:fs/promises";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { Sequelize } from "sequelize-typescript";
import { withoutPreparedStatements } from "./prepared-statement.js";
import { Contact } from "./models/Contact.js";
import { Deal } from "./models/Deal.js";
import { IngestEvent } from "./models/IngestEvent.js";

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
 * WebAssembly) served over the PostgreSQL wire protocol on an ephemeral
 * loopback port, so Sequelize and `pg` talk to it exactly as to a server:
 * same dialect, same migrations, same SQL.
 */
export async function openDatabase(target: DatabaseTarget, options: DatabaseOptions = {}): Promise<Database> {
  const poolMax = options.poolMax ?? 10;
  if (target.kind === "postgres") {
    const sequelize = createSequelize(target.url, poolMax, options.timeoutMs);
    const url = new URL(target.url);
    return {
      sequelize,
      kind: "postgres",
      description: `postgres ${url.hostname || "localhost"}:${url.port || 5432}/${url.pathname.slice(1)}`,
      close: (waitMs) => closePool(sequelize, waitMs),
    };
  }

  const inMemory = target.dataDir.startsWith("memory://");
  if (!inMemory) await mkdir(target.dataDir, { recursive: true });
  // Each commit is written to its files before it is acknowledged (never
  // relaxed), so a killed process loses nothing it acknowledged. PGlite does
  // not fsync, though: an operating system crash can lose recent commits.
  const pglite = await PGlite.create(target.dataDir, { relaxedDurability: false });
  // PGlite runs one session; the socket server multiplexes our pool's
  // connections onto it and keeps each transaction on its own connection.
  const socketServer = new PGLiteSocketServer({ db: pglite, host: "127.0.0.1", port: 0, maxConnections: poolMax + 2 });
  await socketServer.start();
  // After start() it names the port the OS picked: "127.0.0.1:<port>".
  const sequelize = createSequelize(`postgres://postgres@${socketServer.getServerConn()}/postgres`, poolMax, options.timeoutMs);
  withoutPreparedStatements(sequelize);
  return {
    sequelize,
    kind: "embedded",
    description: `embedded ${inMemory ? "in memory" : target.dataDir}`,
    async close(waitMs) {
      await closePool(sequelize, waitMs);
      // Rolls back whatever a connection still in use had begun.
      await socketServer.stop();
      await pglite.close();
    },
  };
}

/**
 * Closes the pool once every connection is back, or after `waitMs`: a
 * request cut off at shutdown may hold one until its own timeout, and the
 * database rolls back what it had begun when the process exits.
 */
async function closePool(sequelize: Sequelize, waitMs?: number): Promise<void> {
  if (waitMs === undefined) return sequelize.close();
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([sequelize.close(), new Promise((resolve) => (timer = setTimeout(resolve, waitMs)))]);
  clearTimeout(timer);
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
    models: [Contact, Deal, IngestEvent],
    pool: { max: poolMax, min: 0, acquire: timeoutMs ?? 10_000, idle: 10_000 },
    dialectOptions: timeouts,
  });
}
