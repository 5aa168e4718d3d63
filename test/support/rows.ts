import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";

/** The rows a query returns, read straight from a test's database (bind parameters as `$1`, `$2`, …). */
export function rows<T extends object = Record<string, any>>(database: { sequelize: Sequelize }, sql: string, bind: unknown[] = []): Promise<T[]> {
  return database.sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

/** How many rows a table holds. */
export async function count(database: { sequelize: Sequelize }, table: "crm_ingest_events" | "crm_contacts" | "crm_deals"): Promise<number> {
  const [row] = await rows<{ n: string }>(database, `SELECT count(*) AS n FROM ${table}`);
  return Number(row.n);
}

/** How many ingest events are stored, for "nothing was written" assertions. */
export const countEvents = (database: { sequelize: Sequelize }) => count(database, "crm_ingest_events");
