/**
 * `npm run migrate [-- up|down|status]`: applies, reverts the last, or lists
 * migrations against DATABASE_URL (or the embedded database when it is unset).
 */
import { ConfigError, loadConfig } from "../config.js";
import { openDatabase } from "../db/database.js";
import { createMigrator, describeSchema, schemaStatus } from "../db/migrator.js";

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
    } else if (command === "status") {
      for (const m of await migrator.executed()) console.log(`applied  ${m.name}`);
      for (const m of await migrator.pending()) console.log(`pending  ${m.name}`);
    } else {
      throw new Error(`unknown command "${command}": use up, down or status`);
    }
    console.log(`schema version: ${describeSchema(await schemaStatus(migrator))}`);
  } finally {
    await database.close();
  }
}

main(process.argv[2] ?? "up").catch((error: unknown) => {
  console.error(error instanceof ConfigError ? error.message : error);
  process.exit(1);
});
