import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { QueryInterface } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { SequelizeStorage, Umzug } from "umzug";

const migrationsDir = fileURLToPath(new URL("../../migrations", import.meta.url));

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
    storage: new SequelizeStorage({ sequelize, tableName: "crm_schema_migrations" }),
    logger,
  });
}
