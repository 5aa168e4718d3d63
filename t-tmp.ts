import pg from "pg";
import { readFileSync } from "node:fs";
import { createTestDatabase } from "./test/support/database.js";
import { floorIngest } from "./bench/floor.js";
const src = readFileSync("src/ingest/ingest-message.ts", "utf8");
const sql = /const STORE_EVENTS = `([\s\S]*?)`;/.exec(src)![1];
const db = await createTestDatabase();
const pool = new pg.Pool({ connectionString: db.url, max: 2 });
let k = 0;
const v = () => [["whatsapp"], ["5511912345678"], ["x"], ["{}"], [`e${k++}`], ["5511912345678"], [null], ["LINKED"], [null]];
const run = async (name: string, f: () => Promise<unknown>) => {
  const t0 = performance.now(); let n = 0;
  while (performance.now() - t0 < 2000) { await f(); n++; }
  console.log(name, ((performance.now() - t0) / n).toFixed(2), "ms/op");
};
for (let r = 0; r < 2; r++) {
  await run("old prepared autocommit   ", () => floorIngest(pool, { source: "whatsapp", senderId: "5511912345678", content: "x", metadata: {}, externalId: `o${k++}` }));
  await run("batch stmt autocommit     ", () => pool.query(sql, v()));
  await run("batch stmt prepared autoc ", () => pool.query({ name: "b", text: sql, values: v() }));
  await run("batch stmt in BEGIN/COMMIT", async () => { const c = await pool.connect(); try { await c.query("BEGIN"); await c.query(sql, v()); await c.query("COMMIT"); } finally { c.release(); } });
}
await pool.end();
await db.close();
