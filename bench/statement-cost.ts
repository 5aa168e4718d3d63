/**
 * `BENCH_DATABASE_URL=postgres://… npx tsx bench/statement-cost.ts [calls]`:
 * what PostgreSQL spends on a lone message's batch statement, sent as
 * Sequelize sends it (unprepared: parsed and planned on every call) and as
 * the service sends it (a call of the session's function, whose plan
 * PL/pgSQL keeps), measured apart from the server, the network and the
 * transaction's BEGIN and COMMIT (and then with them).
 *
 * On a throwaway database with 10,000 known senders: the planning and
 * execution times `EXPLAIN (ANALYZE)` reports for the statement, then the
 * backend's own CPU (from /proc) and the wall time per call for each form,
 * in alternating rounds, each call a batch of one message from a known sender.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { openDatabase } from "../src/db/database.js";
import { createMigrator } from "../src/db/migrator.js";
import { CALL_STORE_EVENTS, STORE_EVENTS, STORE_EVENTS_PARAMETERS, sessionSetup } from "../src/ingest/ingest-message.js";
import { cpuByPid, cpuBetween } from "./proc.js";
import { knownSender, seedContactsSql } from "./traffic.js";

const calls = Number(process.argv[2] ?? 2_000);
const rounds = 6;
const serverUrl = process.env.BENCH_DATABASE_URL || process.env.DATABASE_URL || "";
if (!/^postgres(ql)?:\/\//.test(serverUrl)) throw new Error("set BENCH_DATABASE_URL to a postgres:// server whose role may CREATE DATABASE");

const name = `aurora_stmt_${randomBytes(5).toString("hex")}`;
const url = new URL(serverUrl);
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
url.pathname = `/${name}`;
try {
  const migrating = await openDatabase({ kind: "postgres", url: url.toString() }, { poolMax: 1 });
  await createMigrator(migrating.sequelize).up();
  await migrating.close();
  const db = new pg.Client({ connectionString: url.toString() });
  await db.connect();
  await db.query(seedContactsSql, [10_000]);
  await db.query("VACUUM ANALYZE crm_contacts, crm_ingest_events");
  for (const statement of sessionSetup) await db.query(statement);
  const pid = (await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;

  let n = 0;
  const values = () => {
    const sender = knownSender(1 + (n % 10_000));
    n++;
    const key = sender.source === "email" ? { whatsapp: null, email: sender.senderId } : { whatsapp: sender.senderId, email: null };
    const arrays = [[sender.source], [sender.senderId], ["Olá, quero saber do pedido"], ['{"gateway":"zapi"}'], [`stmt-${n}`],
      [key.whatsapp], [key.email], ["LINKED"], [null], [null], ["MESSAGE"]];
    // Inputs added to the statement since (such as the external id's digest) are left null here.
    while (arrays.length < STORE_EVENTS_PARAMETERS.length) arrays.push([null]);
    return arrays;
  };

  const explained = { planning: [] as number[], execution: [] as number[] };
  for (let i = 0; i < 200; i++) {
    const { rows } = await db.query<{ "QUERY PLAN": Array<{ "Planning Time": number; "Execution Time": number }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${STORE_EVENTS}`,
      values(),
    );
    explained.planning.push(rows[0]["QUERY PLAN"][0]["Planning Time"]);
    explained.execution.push(rows[0]["QUERY PLAN"][0]["Execution Time"]);
  }
  console.log(`EXPLAIN (ANALYZE) of the batch statement, one message, 200 calls: planning p50 ${median(explained.planning).toFixed(3)} ms, execution p50 ${median(explained.execution).toFixed(3)} ms`);

  const forms: Record<string, (values: unknown[]) => Promise<unknown>> = {
    unprepared: (values) => db.query(STORE_EVENTS, values),
    "session function": (values) => db.query(CALL_STORE_EVENTS, values),
    // What a batch of one costs in the service: the function inside the transaction's BEGIN and COMMIT.
    "session function in BEGIN/COMMIT": async (values) => {
      await db.query("START TRANSACTION;");
      await db.query(CALL_STORE_EVENTS, values);
      await db.query("COMMIT;");
    },
  };
  const totals = new Map<string, { cpuMs: number; wallMs: number; calls: number }>();
  for (let round = 0; round < rounds; round++) {
    for (const [form, call] of Object.entries(forms)) {
      const before = cpuByPid([pid]);
      const started = performance.now();
      for (let i = 0; i < calls / rounds; i++) await call(values());
      const wallMs = performance.now() - started;
      const total = totals.get(form) ?? { cpuMs: 0, wallMs: 0, calls: 0 };
      totals.set(form, { cpuMs: total.cpuMs + cpuBetween(before, cpuByPid([pid])), wallMs: total.wallMs + wallMs, calls: total.calls + calls / rounds });
    }
  }
  for (const [form, total] of totals) {
    console.log(`${form}: PostgreSQL backend CPU ${((total.cpuMs / total.calls) * 1000).toFixed(0)} µs per call, wall ${((total.wallMs / total.calls) * 1000).toFixed(0)} µs per call (${total.calls} calls)`);
  }
  await db.end();
} finally {
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}
