import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { QueryInterface } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { SequelizeStorage, Umzug } from "umzug";

const migrationsDir = fileURLToPath(new URL("../../migrations", import.meta.url));

/** The table in which Umzug records the applied migrations, one row per name. */
export const SCHEMA_MIGRATIONS_TABLE = "crm_schema_migrations";

/** The project's one Umzug instance over `migrations/`, recording what ran in `crm_schema_migrations`. */
export function createMigrator(sequelize: Sequelize, logger: Umzug["options"]["logger"] = undefined) {
  return new Umzug<QueryInterface>({
    migrations: {
      glob: ["*.{ts,js}", { cwd: migrationsDir, ignore: ["*.d.ts"] }],
      resolve: ({ name, path: filePath, context }) => ({
        // Recorded without the extension, so running from .ts or compiled .js
        // sees the same history instead of re-running everything.
        name: path.basename(name, path.extname(name)),
        up: async () => (await import(pathToFileURL(filePath!).href)).up({ context }),
        down: async () => (await import(pathToFileURL(filePath!).href)).down({ context }),
      }),
    },
    context: sequelize.getQueryInterface(),
    storage: new SequelizeStorage({ sequelize, tableName: SCHEMA_MIGRATIONS_TABLE }),
    logger,
  });
}

/** Where a database's schema stands: the last applied migration and those still to apply. */
export interface SchemaStatus {
  /** Name of the last applied migration; null before the first. */
  version: string | null;
  applied: number;
  pending: string[];
}

/** Reads the schema status through a migrator, for start-up lines, `migrate status` and readiness. */
export async function schemaStatus(migrator: ReturnType<typeof createMigrator>): Promise<SchemaStatus> {
  const executed = await migrator.executed();
  const pending = await migrator.pending();
  return { version: executed.at(-1)?.name ?? null, applied: executed.length, pending: pending.map((m) => m.name) };
}

/** One line for operators: `2026.01.03T00.03.ingest-events (2 applied, 0 pending)`. */
export function describeSchema(status: SchemaStatus): string {
  return `${status.version ?? "empty"} (${status.applied} applied, ${status.pending.length} pending)`;
}
