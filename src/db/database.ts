import { mkdir } from "node:fs/promises";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { Sequelize } from "sequelize-typescript";
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
  close(): Promise<void>;
}

export interface DatabaseOptions {
  poolMax?: number;
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
    const sequelize = createSequelize(target.url, poolMax);
    const url = new URL(target.url);
    return {
      sequelize,
      kind: "postgres",
      description: `postgres ${url.hostname || "localhost"}:${url.port || 5432}/${url.pathname.slice(1)}`,
      close: () => sequelize.close(),
    };
  }

  const inMemory = target.dataDir.startsWith("memory://");
  if (!inMemory) await mkdir(target.dataDir, { recursive: true });
  const pglite = await PGlite.create(target.dataDir);
  // PGlite runs one session; the socket server multiplexes our pool's
  // connections onto it and keeps each transaction on its own connection.
  const socketServer = new PGLiteSocketServer({ db: pglite, host: "127.0.0.1", port: 0, maxConnections: poolMax + 2 });
  await socketServer.start();
  // After start() it names the port the OS picked: "127.0.0.1:<port>".
  const sequelize = createSequelize(`postgres://postgres@${socketServer.getServerConn()}/postgres`, poolMax);
  return {
    sequelize,
    kind: "embedded",
    description: `embedded ${inMemory ? "in memory" : target.dataDir}`,
    async close() {
      await sequelize.close();
      await socketServer.stop();
      await pglite.close();
    },
  };
}

function createSequelize(url: string, poolMax: number): Sequelize {
  return new Sequelize(url, {
    dialect: "postgres",
    logging: false,
    models: [Contact, Deal, IngestEvent],
    pool: { max: poolMax, min: 0, acquire: 10_000, idle: 10_000 },
  });
}
