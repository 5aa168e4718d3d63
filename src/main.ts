/**
 * Entry point: configuration, then the database, then the server, then the
 * signals that stop it.
 */
import { ConfigError, loadConfig } from "./config.js";
import { openDatabase, type Database } from "./db/database.js";
import { createMigrator } from "./db/migrator.js";
import { buildServer } from "./server.js";

async function main(): Promise<void> {
  const config = loadConfig();
  const database = await openDatabase(
    config.databaseUrl ? { kind: "postgres", url: config.databaseUrl } : { kind: "embedded", dataDir: config.embeddedDataDir },
    { poolMax: config.databasePoolMax },
  );
  await prepareSchema(database);

  const server = buildServer({
    sequelize: database.sequelize,
    defaultPhoneRegion: config.defaultPhoneRegion,
    log: (message, error) => console.error(message, error),
  });
  const address = await server.listen(config.port, config.host);
  console.log(`aurora-crm-ingest listening on http://${address.address}:${address.port} (${database.description})`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal} received: finishing requests in flight`);
    await server.close();
    await database.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

/**
 * The embedded database belongs to this process, so it is migrated here.
 * A PostgreSQL server is shared and migrated by its deployer
 * (`npm run migrate`); we refuse to serve an outdated schema.
 */
async function prepareSchema(database: Database): Promise<void> {
  const migrator = createMigrator(database.sequelize);
  if (database.kind === "embedded") {
    await migrator.up();
    return;
  }
  const pending = await migrator.pending();
  if (pending.length > 0) {
    await database.close();
    throw new StartupError(
      `${database.description} has ${pending.length} pending migration(s): ${pending.map((m) => m.name).join(", ")}.\n` +
        "Run `npm run migrate` against this DATABASE_URL, then start again.",
    );
  }
}

class StartupError extends Error {}

main().catch((error: unknown) => {
  console.error(error instanceof ConfigError || error instanceof StartupError ? error.message : error);
  process.exit(1);
});
