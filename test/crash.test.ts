import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { QueryTypes } from "sequelize";
import { afterAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../src/db/database.js";
import { createTestDatabase, databaseKind } from "./support/database.js";
import { startService } from "./support/process.js";
import { readMetric } from "./support/metrics.js";
import { waitFor } from "./support/wait.js";
import { postMessage } from "./support/ingest.js";

// `kill -9` under load, twice, then a normal restart: every event_id a client
// was answered with must be in the database afterwards. The concurrent
// clients keep batches of several messages in flight (group commit) when the
// process dies. The service runs as
// a child process; the embedded database lives in a folder on disk, as in
// production use, so its durability is what is tested.

const ROUNDS = 2;
const CLIENTS = 16;
const ACKNOWLEDGED_BEFORE_KILL = 150;

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** Sends messages from `CLIENTS` concurrent clients until the service stops answering; records every acknowledged id. */
function load(baseUrl: string, acknowledged: Set<string>): Promise<void> {
  let sequence = 0;
  const client = async () => {
    for (;;) {
      const n = ++sequence;
      const response = await postMessage(baseUrl, {
        source: "whatsapp",
        sender_id: `55219${String(n % 50).padStart(8, "0")}`,
        content: `crash load ${n}`,
        metadata: { n },
      }).catch(() => undefined);
      if (response?.status !== 200) return;
      acknowledged.add(response.body.event_id);
    }
  };
  return Promise.all(Array.from({ length: CLIENTS }, client)).then(() => undefined);
}

describe(`kill -9 under load (${databaseKind})`, () => {
  it("loses no acknowledged event, and the service starts again after each crash", async () => {
    let env: Record<string, string>;
    let openForCheck: () => Promise<Database>;
    if (databaseKind === "postgres") {
      const database = await createTestDatabase({ poolMax: 2 });
      cleanups.push(() => database.close());
      env = { DATABASE_URL: database.url };
      openForCheck = async () => database;
    } else {
      const dataDir = path.join(await mkdtemp(path.join(os.tmpdir(), "aurora-crash-")), "pglite");
      cleanups.push(() => rm(path.dirname(dataDir), { recursive: true, force: true }));
      env = { DATABASE_URL: "", EMBEDDED_DATA_DIR: dataDir };
      openForCheck = () => openDatabase({ kind: "embedded", dataDir }, { poolMax: 2 });
    }

    const acknowledged = new Set<string>();
    for (let round = 1; round <= ROUNDS; round++) {
      const service = await startService(env);
      const exited = new Promise((resolve) => service.child.once("exit", (_code, signal) => resolve(signal)));
      cleanups.push(async () => service.child.kill("SIGKILL"));
      const target = acknowledged.size + ACKNOWLEDGED_BEFORE_KILL;
      const loading = load(service.baseUrl, acknowledged);
      await waitFor(() => acknowledged.size >= target, 60_000);
      // The load is grouped: batches of several messages are being written when the kill lands.
      const [messages, batches] = await Promise.all(["sum", "count"].map((what) => readMetric(service.baseUrl, `aurora_ingest_batch_size_${what}`)));
      expect(messages).toBeGreaterThan(batches!);
      service.child.kill("SIGKILL");
      expect(await exited).toBe("SIGKILL");
      await loading;
    }

    // After the last crash it starts and serves as usual, and stops cleanly.
    const service = await startService(env);
    const exited = new Promise((resolve) => service.child.once("exit", resolve));
    cleanups.push(async () => service.child.kill("SIGKILL"));
    const after = await postMessage(service.baseUrl, { source: "web", sender_id: "v", content: "after the crashes", metadata: {} });
    expect(after.status).toBe(200);
    service.child.kill("SIGTERM");
    expect(await exited).toBe(0);

    const database = await openForCheck();
    if (databaseKind === "embedded") cleanups.push(() => database.close());
    const rows = await database.sequelize.query<{ id: string }>("SELECT id FROM crm_ingest_events", { type: QueryTypes.SELECT });
    const stored = new Set(rows.map((row) => row.id));
    const lost = [...acknowledged].filter((id) => !stored.has(id));
    console.info(`crash test: ${acknowledged.size} acknowledged over ${ROUNDS} kills, ${stored.size} stored, ${lost.length} lost`);
    expect(lost).toEqual([]);
    expect(stored.has(after.body.event_id)).toBe(true);
  }, 240_000);
});
