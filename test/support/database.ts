import { randomBytes } from "node:crypto";
import pg from "pg";
import { openDatabase, type Database } from "../../src/db/database.js";
import { createMigrator } from "../../src/db/migrator.js";

/**
 * Set to a PostgreSQL URL to run the suite against that server; unset, the
 * suite uses the embedded database. Each test file gets a database of its own.
 */
export const testServerUrl = process.env.TEST_DATABASE_URL || undefined;
export const databaseKind = testServerUrl ? "postgres" : "embedded";

/** A database for one test file, empty but for its schema; `close()` drops it. */
export interface TestDatabase extends Database {
  /** Connection string of the throwaway database (for child processes); for the embedded one, its Unix socket's folder. */
  url: string;
}

/** Creates a throwaway PostgreSQL database on the test server, or an in-memory embedded one. */
export async function createTestDatabase(options: { migrate?: boolean; poolMax?: number } = {}): Promise<TestDatabase> {
  const migrate = options.migrate ?? true;
  if (!testServerUrl) {
    const database = await openDatabase({ kind: "embedded", dataDir: "memory://" }, { poolMax: options.poolMax });
    if (migrate) await createMigrator(database.sequelize).up();
    const { host } = database.sequelize.config;
    return { ...database, url: `postgres://postgres@localhost/postgres?host=${encodeURIComponent(host!)}` };
  }

  const name = `aurora_test_${randomBytes(6).toString("hex")}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  const url = new URL(testServerUrl);
  url.pathname = `/${name}`;
  const database = await openDatabase({ kind: "postgres", url: url.toString() }, { poolMax: options.poolMax });
  if (migrate) await createMigrator(database.sequelize).up();
  return {
    ...database,
    url: url.toString(),
    async close() {
      await database.close();
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: testServerUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Where a connection string points, as `net.connect` takes it: a TCP address, or the Unix socket named by a `host` folder. */
export function socketAddress(url: string): { host: string; port: number } | { path: string } {
  const parsed = new URL(url);
  const folder = parsed.searchParams.get("host");
  if (folder?.startsWith("/")) return { path: `${folder}/.s.PGSQL.${parsed.port || 5432}` };
  return { host: parsed.hostname, port: Number(parsed.port || 5432) };
}

/** The same database reached through a proxy on 127.0.0.1:`port`. */
export function throughProxy(url: string, port: number): URL {
  const proxied = new URL(url);
  proxied.searchParams.delete("host");
  proxied.host = `127.0.0.1:${port}`;
  return proxied;
}
