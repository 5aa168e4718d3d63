import { randomInt } from "node:crypto";
import pg from "pg";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FeedHub, type FeedItem, type WatchStart } from "../src/feed/feed-hub.js";
import { comparePositions, FEED_START, type FeedFilters, type FeedPosition } from "../src/feed/position.js";
import { createLogger } from "../src/observability/logger.js";
import { createTestDatabase, databaseKind, testServerUrl, type TestDatabase } from "./support/database.js";
import { sleep, waitFor } from "./support/wait.js";

// How long the randomised model runs; FEED_MODEL_SECONDS=300 for a longer hunt.
const SECONDS = Number(process.env.FEED_MODEL_SECONDS || 8);
const SOURCES = ["web", "email"];

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.close();
});

type StartKind = "beginning" | "now" | "old token" | "new token" | "checkpoint token";

interface Watcher {
  kind: StartKind;
  start: WatchStart;
  filters: FeedFilters;
  /** Ids whose commit had begun when the watch opened: a "now" watch may leave them out. */
  committedBefore: Set<string>;
  items: FeedItem[];
  controller: AbortController;
  /** How it ended: cancelled (the consumer stopped and returned), crashed (stopped reading, never returned), or still open. */
  end: "open" | "cancelled" | "crashed";
  error?: unknown;
  done: Promise<void>;
}

const ids = (w: Watcher) => w.items.flatMap((item) => (item.event ? [item.event.id] : []));

describe(`the feed hub as a model (${databaseKind})`, () => {
  it(`watchers of every start open, cancel and crash while two connections commit, hold and roll back (${SECONDS} s)`, { timeout: SECONDS * 1500 + 60_000 }, async () => {
    const { sequelize } = database;
    const hub = new FeedHub({ sequelize, log: createLogger({ level: "silent" }), pollIntervalMs: 20, checkpointIntervalMs: 150, bufferEvents: 20 });
    const committing = new Set<string>(); // commit sent (or done)
    const committed = new Set<string>();
    const rolledBack = new Set<string>();
    const watchers: Watcher[] = [];
    const positions: FeedPosition[] = []; // every position any watcher was handed
    const deadline = Date.now() + SECONDS * 1000;
    const external = databaseKind === "postgres";

    const event = (n: string) => ({ source: SOURCES[randomInt(SOURCES.length)], sender: n });
    // This process: a transaction through the pool, then the hub is told.
    const local = async (w: number) => {
      for (let t = 0; Date.now() < deadline; t++) {
        const written: string[] = [];
        const commit = randomInt(6) > 0;
        try {
          await sequelize.transaction(async (transaction) => {
            for (let n = randomInt(1, 4); n > 0; n--) {
              const { source, sender } = event(`local-${w}-${t}-${n}`);
              const [row] = await sequelize.query<{ id: string }>(
                "INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ($1, $2, 'x') RETURNING id",
                { bind: [source, sender], type: QueryTypes.SELECT, transaction },
              );
              written.push(row.id);
            }
            if (!commit) throw new Error("roll back");
            for (const id of written) committing.add(id);
          });
          for (const id of written) committed.add(id);
          hub.committed();
        } catch {
          for (const id of written) rolledBack.add(id);
        }
        await sleep(randomInt(0, 30));
      }
    };
    // Another connection: some transactions held open long, some rolled back.
    const remote = async (w: number) => {
      const client = new pg.Client({ connectionString: database.url });
      await client.connect();
      try {
        for (let t = 0; Date.now() < deadline; t++) {
          await client.query("BEGIN");
          const written: string[] = [];
          for (let n = randomInt(1, 4); n > 0; n--) {
            const { source, sender } = event(`remote-${w}-${t}-${n}`);
            const { rows } = await client.query<{ id: string }>(
              "INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ($1, $2, 'x') RETURNING id",
              [source, sender],
            );
            written.push(rows[0].id);
          }
          await sleep(randomInt(10) === 0 ? randomInt(200, 800) : randomInt(0, 20));
          if (randomInt(5) === 0) {
            await client.query("ROLLBACK");
            for (const id of written) rolledBack.add(id);
          } else {
            for (const id of written) committing.add(id);
            await client.query("COMMIT");
            for (const id of written) committed.add(id);
          }
        }
      } finally {
        await client.end();
      }
    };

    // Another database of the cluster: short transactions that take an xid
    // and end at random moments, as other applications' do. The horizon
    // leaves them out while it can see their sessions, so it moves with
    // their timing (docs/feed.md, "The horizon").
    const elsewhere = async () => {
      const client = new pg.Client({ connectionString: testServerUrl });
      await client.connect();
      try {
        while (Date.now() < deadline) {
          await client.query("BEGIN");
          await client.query("SELECT pg_current_xact_id()");
          await sleep(randomInt(10) === 0 ? randomInt(50, 300) : randomInt(0, 10));
          await client.query("COMMIT");
        }
      } finally {
        await client.end();
      }
    };

    const open = (): Watcher => {
      const kinds: StartKind[] = ["beginning", "now", "now", "old token", "new token", "checkpoint token"];
      let kind = kinds[randomInt(kinds.length)];
      const delivered = watchers.flatMap((w) => w.items.filter((item) => item.event).map((item) => item.position));
      const checkpoints = watchers.flatMap((w) => w.items.filter((item) => !item.event).map((item) => item.position));
      let start: WatchStart = kind === "beginning" ? FEED_START : "now";
      if (kind === "old token" && delivered.length > 0) start = delivered[randomInt(delivered.length)];
      else if (kind === "new token" && delivered.length > 0) start = delivered.reduce((a, b) => (comparePositions(a, b) >= 0 ? a : b));
      else if (kind === "checkpoint token" && checkpoints.length > 0) start = checkpoints[randomInt(checkpoints.length)];
      else if (kind !== "beginning") kind = "now";
      const filters: FeedFilters = randomInt(3) === 0 ? { source: SOURCES[randomInt(SOURCES.length)] } : {};
      const controller = new AbortController();
      const watcher: Watcher = { kind, start, filters, committedBefore: new Set(committing), items: [], controller, end: "open", done: Promise.resolve() };
      const stream = hub.watch(start, filters, controller.signal);
      watcher.done = (async () => {
        try {
          for (;;) {
            if (watcher.end === "crashed") return; // never reads again, never returns
            const next = await stream.next();
            if (next.done) return;
            // A "now" watch's first answer is a checkpoint at its start: from then on it is open.
            if (watcher.items.length === 0 && start === "now") watcher.committedBefore = new Set(committing);
            watcher.items.push(next.value);
            positions.push(next.value.position);
            if (watcher.end === "cancelled") return void (await stream.return(undefined));
            // A slow consumer now and then, while the writers run; at full speed once they end, to catch up.
            if (Date.now() < deadline && randomInt(20) === 0) await sleep(randomInt(0, 40));
          }
        } catch (error) {
          watcher.error = error;
        }
      })();
      return watcher;
    };

    const writers = [
      ...Array.from({ length: external ? 2 : 3 }, (_, w) => local(w)),
      ...(external ? Array.from({ length: 4 }, (_, w) => remote(w)) : []),
      ...(external ? Array.from({ length: 3 }, () => elsewhere()) : []),
    ];
    const readers = (async () => {
      while (Date.now() < deadline) {
        await sleep(randomInt(10, 80));
        const live = watchers.filter((w) => w.end === "open");
        if (live.length < 12) watchers.push(open());
        else {
          const victim = live[randomInt(live.length)];
          if (randomInt(2) === 0) {
            victim.end = "cancelled";
            victim.controller.abort();
          } else {
            victim.end = "crashed";
            victim.controller.abort();
          }
        }
      }
    })();
    await Promise.all([...writers, readers]);
    expect(positions.length).toBeGreaterThan(0);

    // The final order: every committed event, by position, once every transaction ended.
    const rows = await sequelize.query<{ id: string; source: string; xid: string; seq: string }>(
      "SELECT id, source, feed_xid::text AS xid, feed_seq::text AS seq FROM crm_ingest_events ORDER BY feed_xid, feed_seq",
      { type: QueryTypes.SELECT },
    );
    const order = rows.map((row) => ({ ...row, position: { xid: BigInt(row.xid), seq: BigInt(row.seq) } }));
    expect(new Set(order.map((row) => row.id))).toEqual(committed);
    for (const id of rolledBack) expect(committed.has(id)).toBe(false);

    const expected = (w: Watcher) => order.filter((row) => w.filters.source === undefined || row.source === w.filters.source);
    const last = (w: Watcher) => {
      const all = expected(w);
      const after = w.start === "now" ? all : all.filter((row) => comparePositions(row.position, w.start as FeedPosition) > 0);
      return after.at(-1)?.id;
    };
    const stillOpen = watchers.filter((w) => w.end === "open");
    // Everyone still open catches up with the end of the feed (a watch from the beginning reads all of it).
    await waitFor(() => stillOpen.every((w) => last(w) === undefined || ids(w).includes(last(w)!)), 20_000 + order.length).catch(() => undefined);
    await sleep(200);
    for (const w of stillOpen) w.controller.abort();
    await Promise.all(stillOpen.map((w) => w.done));

    const failures: string[] = [];
    for (const [index, w] of watchers.entries()) {
      const got = ids(w);
      const all = expected(w);
      const label = `watcher ${index} (${w.kind}${w.filters.source ? `, source=${w.filters.source}` : ""}, ${w.end})`;
      if (w.error) failures.push(`${label}: failed with ${w.error instanceof Error ? w.error.message : "a non-error"}`);
      if (w.start === "now" && w.items[0]?.event) failures.push(`${label}: its first answer was an event, not its start`);
      let want: string[];
      if (w.start === "now") {
        // Starts somewhere at or before the first event committed after it opened.
        const firstAfter = all.findIndex((row) => !w.committedBefore.has(row.id));
        const first = got.length > 0 ? all.findIndex((row) => row.id === got[0]) : firstAfter === -1 ? all.length : firstAfter;
        if (first === -1 || (firstAfter !== -1 && first > firstAfter && (got.length > 0 || w.end === "open"))) {
          failures.push(`${label}: started after an event committed after it opened (${all[firstAfter]?.id})`);
          continue;
        }
        want = all.slice(first).map((row) => row.id);
      } else {
        const from = w.start;
        want = all.filter((row) => comparePositions(row.position, from) > 0).map((row) => row.id);
      }
      const ok = w.end === "open" ? got.join() === want.join() : want.slice(0, got.length).join() === got.join();
      if (!ok) {
        const diverges = want.findIndex((id, i) => got[i] !== id);
        const skipped = got.length > diverges && !got.includes(want[diverges]);
        failures.push(
          `${label}: got ${got.length}, expected ${w.end === "open" ? "" : "a prefix of "}${want.length}; ` +
            `from item ${diverges} ${skipped ? `it skipped ${want[diverges]}` : `it got ${got[diverges] ?? "nothing"} instead of ${want[diverges]}`}`,
        );
      }
      // Positions only move forward.
      for (let i = 1; i < w.items.length; i++) {
        if (comparePositions(w.items[i].position, w.items[i - 1].position) < 0) failures.push(`${label}: position went backwards`);
      }
    }
    expect(failures).toEqual([]);
    expect(watchers.length).toBeGreaterThan(10);
    // Every slot is given back, crashed readers' included.
    await waitFor(() => hub.openWatches === 0, 5_000).catch(() => undefined);
    expect(hub.openWatches).toBe(0);
    hub.close();
  });
});
