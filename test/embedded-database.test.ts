import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../src/db/database.js";

// Always the embedded database, whichever database the rest of the suite uses.
let database: Database;

beforeAll(async () => {
  // Asks for the pool a PostgreSQL deployment would have.
  database = await openDatabase({ kind: "embedded", dataDir: "memory://" }, { poolMax: 10, timeoutMs: 5_000 });
  await database.sequelize.query("CREATE TABLE probe (id serial PRIMARY KEY, label text NOT NULL)");
});

afterAll(async () => {
  await database?.close(1_000);
});

describe("embedded database under concurrent statements", () => {
  it("answers every statement with its own result while transactions and reads of different shapes run at once", async () => {
    // PGlite has one session. Connections multiplexed onto it interleave
    // their extended-protocol messages: a Bind meets another statement's
    // Parse ("bind message supplies 1 parameters, but prepared statement
    // requires 2"), a read gets another's rows, or a transaction never gets
    // its connection back. The pool of one keeps each statement whole.
    const { sequelize } = database;
    const failures: string[] = [];
    for (let round = 0; round < 10; round++) {
      const work = Array.from({ length: 20 }, async (_, i) => {
        if (i % 4 === 0) {
          const label = `r${round}-${i}`;
          const count = await sequelize.transaction(async (transaction) => {
            await sequelize.query("INSERT INTO probe (label) VALUES ($1)", { bind: [label], transaction });
            const [row] = await sequelize.query<{ n: string }>("SELECT count(*) AS n FROM probe WHERE label = $1 AND id > $2", {
              bind: [label, 0],
              transaction,
              type: QueryTypes.SELECT,
            });
            return Number(row.n);
          });
          if (count !== 1) failures.push(`${label}: transaction saw ${count} rows of its own`);
        } else if (i % 2) {
          const [row] = await sequelize.query<{ n: number }>("SELECT $1::int + $2::int AS n", { bind: [i, round], type: QueryTypes.SELECT });
          if (row?.n !== i + round) failures.push(`sum ${i}+${round}: ${JSON.stringify(row)}`);
        } else {
          const [row] = await sequelize.query<{ v: string }>("SELECT $1::text AS v", { bind: [`s${i}`], type: QueryTypes.SELECT });
          if (row?.v !== `s${i}`) failures.push(`echo s${i}: ${JSON.stringify(row)}`);
        }
      });
      for (const result of await Promise.allSettled(work)) {
        if (result.status === "rejected") failures.push(String(result.reason));
      }
    }
    expect(failures).toEqual([]);
    const [row] = await sequelize.query<{ n: string }>("SELECT count(*) AS n FROM probe", { type: QueryTypes.SELECT });
    expect(Number(row.n)).toBe(10 * 5);
  });
});
