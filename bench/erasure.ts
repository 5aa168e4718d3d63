/**
 * `BENCH_DATABASE_URL=postgres://… npx tsx bench/erasure.ts [events]`:
 * exporting, then erasing, a person with 100,000 events (issue 25's target: within 60 s,
 * without ingest p99 doubling meanwhile).
 *
 * On a throwaway database: one WhatsApp contact with `events` messages
 * (default 100,000) among as many of other senders. Ingest runs through the
 * service's own ingest command (group commit, its session function) at a
 * steady concurrency, first alone for a baseline, then while the erasure
 * job runs; each phase prints its messages per second and p50/p99 latency,
 * and the erasure its duration.
 *
 * `INGEST_RATE=n` sends n messages per second instead (an open loop: each
 * latency counts from the message's due time, so a stall is not hidden by
 * loops that wait), for the effect below saturation; about half the
 * closed-loop baseline's rate is the service's working range.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { openDatabase } from "../src/db/database.js";
import { createMigrator } from "../src/db/migrator.js";
import { createIngestMessage } from "../src/ingest/ingest-message.js";
import { createLogger } from "../src/observability/logger.js";
import { readDigestKey } from "../src/privacy/digest-key.js";
import { ErasureRunner, startErasure } from "../src/privacy/erase-subject.js";
import { exportSubject } from "../src/privacy/export-subject.js";
import { openLoop } from "./open-loop.js";

const events = Number(process.argv[2] ?? 100_000);
const concurrency = 32;
const rate = Number(process.env.INGEST_RATE || 0);
const serverUrl = process.env.BENCH_DATABASE_URL || process.env.DATABASE_URL || "";
if (!/^postgres(ql)?:\/\//.test(serverUrl)) throw new Error("set BENCH_DATABASE_URL to a postgres:// server whose role may CREATE DATABASE");

const name = `aurora_erasure_${randomBytes(5).toString("hex")}`;
const url = new URL(serverUrl);
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
url.pathname = `/${name}`;
const database = await openDatabase({ kind: "postgres", url: url.toString() }, { poolMax: 10 });
try {
  const { sequelize } = database;
  await createMigrator(sequelize).up();
  const contactId = "11111111-1111-4111-8111-111111111111";
  const phone = "5511999990000";
  await sequelize.query("INSERT INTO crm_contacts (id, whatsapp_id, name) VALUES ($1, $2, 'Maria')", { bind: [contactId, phone] });
  await sequelize.query(
    `INSERT INTO crm_ingest_events (source, sender_id, content, metadata, external_id, contact_id, status)
     SELECT 'whatsapp', $1, 'mensagem ' || g, '{"name": "Maria"}', 'wamid.' || g, $2::uuid, 'LINKED' FROM generate_series(1, $3::int) g`,
    { bind: [phone, contactId, events] },
  );
  await sequelize.query("INSERT INTO crm_ingest_events (source, sender_id, content) SELECT 'web', 'v' || g, 'x' FROM generate_series(1, $1::int) g", {
    bind: [events],
  });
  await sequelize.query("VACUUM ANALYZE crm_contacts, crm_ingest_events");

  const key = await readDigestKey(sequelize);
  const ingest = createIngestMessage({ sequelize, defaultPhoneRegion: "BR", digestKey: key });
  let sent = 0;
  const send = () => ingest({ source: "web", senderId: `load-${sent % 1000}`, content: `load ${sent++}`, metadata: {}, externalId: `load-${randomBytes(8).toString("hex")}` });
  /** Ingests until `until` resolves, from `concurrency` loops or at `rate`; latencies in ms. */
  const load = async (until: Promise<unknown>) => {
    let done = false;
    void until.then(() => (done = true));
    const latencies: number[] = [];
    const started = performance.now();
    if (rate > 0) {
      await openLoop(rate, started, () => !done, async (due) => {
        await send();
        latencies.push(performance.now() - due);
      });
    } else {
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (!done) {
            const at = performance.now();
            await send();
            latencies.push(performance.now() - at);
          }
        }),
      );
    }
    latencies.sort((a, b) => a - b);
    const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(1);
    return `${(latencies.length / ((performance.now() - started) / 1000)).toFixed(0)} msg/s, p50 ${at(0.5)} ms, p99 ${at(0.99)} ms`;
  };

  // First the person's export, alone: read in chunks, so the heap should not grow with the events.
  const exportStarted = performance.now();
  const heapBefore = process.memoryUsage().heapUsed;
  let heapPeak = heapBefore;
  let exported = 0;
  for await (const item of exportSubject(sequelize, { contactIds: [contactId], senders: [] })) {
    if ("event" in item && ++exported % 1000 === 0) heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
  }
  const heapGrowth = ((heapPeak - heapBefore) / 1e6).toFixed(0);
  console.log(`export of ${exported} events: ${((performance.now() - exportStarted) / 1000).toFixed(1)} s, heap grew by at most ${heapGrowth} MB`);

  console.log(`baseline (10 s): ${await load(new Promise((resolve) => setTimeout(resolve, 10_000)))}`);
  const runner = new ErasureRunner({ sequelize, digestKey: key, log: createLogger({ level: "silent" }), batchRows: Number(process.env.ERASURE_BATCH_ROWS || 1000), pauseMs: Number(process.env.ERASURE_PAUSE_MS || 150) });
  const subject = { contactIds: [], senders: [{ source: "whatsapp", senderId: phone }] };
  const erasureStarted = performance.now();
  const erased = (async () => {
    await startErasure(sequelize, key, { requestedBy: "bench", subject, resolved: { ...subject, contactIds: [contactId] } });
    runner.wake();
    await runner.idle();
    return performance.now() - erasureStarted;
  })();
  const during = await load(erased);
  console.log(`during erasure: ${during}`);
  console.log(`erasure of ${events} events: ${((await erased) / 1000).toFixed(1)} s (target: 60 s)`);
  console.log(`after (10 s): ${await load(new Promise((resolve) => setTimeout(resolve, 10_000)))}`);
} finally {
  await database.close();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
