/**
 * `npm run migrate [-- up|down|status|help]`: applies, reverts the last, or
 * lists migrations against DATABASE_URL (or the embedded database when it is
 * unset, which a running service owns: then this refuses and says so).
 */
import { ConfigError, loadConfig } from "../config.js";
import { DataDirInUseError } from "../db/data-dir-lock.js";
import { openDatabase } from "../db/database.js";
import { createMigrator, describeSchema, schemaStatus } from "../db/migrator.js";

const USAGE = `usage: npm run migrate [-- <command>]

  up       apply every pending migration (the default; running it twice is harmless)
  down     revert the last applied migration
  status   list applied and pending migrations and the schema version
  help     print this text

The database is DATABASE_URL (PostgreSQL), or the embedded one in
EMBEDDED_DATA_DIR (default data/pglite) when DATABASE_URL is unset.`;

const COMMANDS = ["up", "down", "status"];

async function main(command: string): Promise<void> {
  const config = loadConfig();
  const database = await openDatabase(
    config.databaseUrl ? { kind: "postgres", url: config.databaseUrl } : { kind: "embedded", dataDir: config.embeddedDataDir },
    { poolMax: 2 },
  );
  try {
    const migrator = createMigrator(database.sequelize);
    console.log(`database: ${database.description}`);
    if (command === "up") {
      const applied = await migrator.up();
      console.log(applied.length ? `applied: ${applied.map((m) => m.name).join(", ")}` : "nothing to apply: up to date");
    } else if (command === "down") {
      const reverted = await migrator.down();
      console.log(reverted.length ? `reverted: ${reverted.map((m) => m.name).join(", ")}` : "nothing to revert");
    } else {
      for (const m of await migrator.executed()) console.log(`applied  ${m.name}`);
      for (const m of await migrator.pending()) console.log(`pending  ${m.name}`);
    }
    console.log(`schema version: ${describeSchema(await schemaStatus(migrator))}`);
  } finally {
    await database.close();
  }
}

const command = process.argv[2] ?? "up";
if (["help", "--help", "-h"].includes(command)) {
  console.log(USAGE);
} else if (!COMMANDS.includes(command)) {
  console.error(`unknown command "${command}"\n\n${USAGE}`);
  process.exit(2);
} else {
  main(command).catch((error: unknown) => {
    console.error(error instanceof ConfigError || error instanceof DataDirInUseError ? error.message : error);
    process.exit(1);
  });
}
