import pg from "pg";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMigrator } from "../src/db/migrator.js";
import { comparePositions, FEED_START } from "../src/feed/position.js";
import { currentFeedPosition, READ_FEED, readFeed } from "../src/feed/read-feed.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { waitFor } from "./support/wait.js";

let database: TestDatabase;

beforeAll(async () => {
  database = await createTestDatabase();
});

afterAll(async () => {
  await database?.close();
});

/** Stores an event the way any writer would, naming none of the feed's columns. */
async function insertEvent(sender: string, client?: pg.Client, createdAt?: string, target = database): Promise<string> {
  const sql = `INSERT INTO crm_ingest_events (source, sender_id, content${createdAt ? ", created_at" : ""})
               VALUES ('web', $1, 'x'${createdAt ? ", $2" : ""}) RETURNING id`;
  const values = createdAt ? [sender, createdAt] : [sender];
  if (client) return (await client.query<{ id: string }>(sql, values)).rows[0].id;
  const [row] = await target.sequelize.query<{ id: string }>(sql, { bind: values, type: QueryTypes.SELECT });
  return row.id;
}

async function feedSenders(target = database): Promise<string[]> {
  const { events } = await readFeed(target.sequelize, { after: null, limit: 10_000 });
  return events.map((event) => event.senderId);
}

async function client(): Promise<pg.Client> {
  const connection = new pg.Client({ connectionString: database.url });
  await connection.connect();
  return connection;
}

describe(`the feed's store (${databaseKind})`, () => {
  it("puts events stored before the feed existed first, by created_at then id, and new ones after", async () => {
    const upgraded = await createTestDatabase({ migrate: false });
    try {
      const migrator = createMigrator(upgraded.sequelize);
      await migrator.up({ to: "2026.01.04T00.01.ingest-event-external-id" });
      await insertEvent("old-2", undefined, "2026-01-02T00:00:00Z", upgraded);
      await insertEvent("old-1", undefined, "2026-01-01T00:00:00Z", upgraded);
      await insertEvent("old-3", undefined, "2026-01-03T00:00:00Z", upgraded);
      await migrator.up();

      await insertEvent("new-1", undefined, undefined, upgraded);
      await insertEvent("new-2", undefined, undefined, upgraded);
      expect(await feedSenders(upgraded)).toEqual(["old-1", "old-2", "old-3", "new-1", "new-2"]);
      const { events } = await readFeed(upgraded.sequelize, { after: null, limit: 10 });
      expect(events.slice(0, 3).map((event) => event.position)).toEqual([
        { xid: 0n, seq: 1n },
        { xid: 0n, seq: 2n },
        { xid: 0n, seq: 3n },
      ]);
      expect(events[3].position.xid).toBeGreaterThan(0n);
      expect(events[3].position.seq).toBe(4n);
    } finally {
      await upgraded.close();
    }
  });

  it("pages from any position exactly to the end, with filters", async () => {
    for (const sender of ["p-1", "p-2", "p-3", "p-4"]) await insertEvent(sender);
    // One transaction whose numbers cross from one digit to two: the order is numeric.
    await database.sequelize.query("INSERT INTO crm_ingest_events (source, sender_id, content) SELECT 'web', 'batch-' || n, 'x' FROM generate_series(1, 12) AS n");
    const { events: ordered } = await readFeed(database.sequelize, { after: null, limit: 1000 });
    expect(ordered.map((event) => event.position.seq)).toEqual(ordered.map((_, i) => BigInt(i + 1)));
    const { events: all } = await readFeed(database.sequelize, { after: null, limit: 1000 });
    for (let i = 0; i < all.length; i++) {
      const rest = await readFeed(database.sequelize, { after: all[i].position, limit: 1000 });
      expect(rest.events.map((event) => event.id)).toEqual(all.slice(i + 1).map((event) => event.id));
    }
    const page = await readFeed(database.sequelize, { after: null, limit: 2 });
    expect(page.position).toEqual(all[1].position);
    expect(page.more).toBe(true);
    const empty = await readFeed(database.sequelize, { after: all.at(-1)!.position, limit: 2 });
    expect(empty).toMatchObject({ events: [], position: all.at(-1)!.position, more: false });
    // Nothing runs: the horizon is past every event, and it is what the read used.
    expect(comparePositions(empty.horizon, all.at(-1)!.position)).toBeGreaterThan(0);
    // A byte budget ends the read early, after at least one event.
    const weights = all.map((event) => event.bytes!);
    const budgeted = await readFeed(database.sequelize, { after: null, limit: 1000, maxBytes: weights[0] + weights[1] + weights[2] - 1 });
    expect(budgeted.events.map((event) => event.id)).toEqual(all.slice(0, 2).map((event) => event.id));
    expect(budgeted.more).toBe(true);
    expect((await readFeed(database.sequelize, { after: null, limit: 1000, maxBytes: 1 })).events.map((event) => event.id)).toEqual([all[0].id]);
    const now = await currentFeedPosition(database.sequelize);
    expect(comparePositions(now, all.at(-1)!.position)).toBeGreaterThan(0);
    expect((await readFeed(database.sequelize, { after: now, limit: 10 })).events).toEqual([]);

    const filtered = await readFeed(database.sequelize, { after: null, limit: 1000, filters: { source: "web", status: "RECEIVED" } });
    expect(filtered.events).toHaveLength(all.length);
    expect((await readFeed(database.sequelize, { after: null, limit: 1000, filters: { source: "email" } })).events).toEqual([]);
  });

  // The embedded database runs one transaction at a time, so there a later
  // transaction cannot commit while an earlier one is open.
  it.skipIf(databaseKind === "embedded")("holds back an event that commits while an older transaction is still open", async () => {
    const [a, b] = [await client(), await client()];
    try {
      for (const outcome of ["COMMIT", "ROLLBACK"]) {
        const before = await feedSenders();
        await a.query("BEGIN");
        await insertEvent(`A-${outcome}`, a);
        await insertEvent(`B-${outcome}`, b); // commits on its own
        expect(await feedSenders()).toEqual(before);
        // "Now" is before A's event and B's, which commit later (B already has: it is delivered after A's).
        const now = await currentFeedPosition(database.sequelize);
        expect(comparePositions(now, (await readFeed(database.sequelize, { after: null, limit: 10_000 })).position)).toBeGreaterThan(0);
        expect(now.xid <= BigInt((await a.query("SELECT pg_current_xact_id()::text AS xid")).rows[0].xid)).toBe(true);
        await a.query(outcome);
        // Deliverable once every older transaction of the cluster ended (other databases' too).
        const expected = [...before, ...(outcome === "COMMIT" ? [`A-${outcome}`] : []), `B-${outcome}`];
        let senders: string[] = [];
        await waitFor(async () => (senders = await feedSenders()).length >= expected.length);
        expect(senders).toEqual(expected);
      }
    } finally {
      await a.end();
      await b.end();
    }
  });

  it("reads a page from any position with an index range scan, never by scanning the table", async () => {
    // Enough rows, with fresh statistics, that the planner would prefer a
    // sequential scan if the index did not serve the query's order and bound.
    await database.sequelize.query(
      "INSERT INTO crm_ingest_events (source, sender_id, content) SELECT 'web', 'bulk-' || n, repeat('x', 200) FROM generate_series(1, 20000) AS n",
    );
    await database.sequelize.query("ANALYZE crm_ingest_events");
    const { events } = await readFeed(database.sequelize, { after: null, limit: 15_000 });
    for (const after of [FEED_START, events.at(-1)!.position]) {
      const [row] = await database.sequelize.query<{ "QUERY PLAN": unknown }>(`EXPLAIN (FORMAT JSON) ${READ_FEED}`, {
        bind: [after.xid.toString(), after.seq.toString(), 101, null, null, null, 524288, 101],
        type: QueryTypes.SELECT,
      });
      const plan = JSON.stringify(row["QUERY PLAN"]);
      // The horizon reads the cluster's sessions and prepared transactions (small catalogs, scanned whole); the events only by the index.
      const events = nodes((row["QUERY PLAN"] as Array<{ Plan: PlanNode }>)[0].Plan).filter((node) => node["Relation Name"] === "crm_ingest_events");
      expect(events.map((node) => [node["Node Type"], node["Index Name"]])).toEqual([["Index Scan", "crm_ingest_events_feed_position_key"]]);
      // Only the page itself may be sorted (after the join that keeps an empty page's row), never the range.
      const sorts = nodes((row["QUERY PLAN"] as Array<{ Plan: PlanNode }>)[0].Plan).filter((node) => node["Node Type"] === "Sort");
      for (const sort of sorts) expect(sort["Plan Rows"]).toBeLessThanOrEqual(101);
      expect(plan).toContain('"Node Type":"Limit"');
    }
  });

  it("a filtered read that no index serves examines at most maxScan events, and continues after them", async () => {
    // The 20,000 rows of the test above: none is from 'email'.
    const all = (await readFeed(database.sequelize, { after: null, limit: 100_000 })).events;
    expect(all.length).toBeGreaterThan(2_000);
    const page = await readFeed(database.sequelize, { after: null, limit: 100, maxScan: 500, filters: { source: "email" } });
    expect(page).toMatchObject({ events: [], position: all[499].position, more: true });
    const next = await readFeed(database.sequelize, { after: page.position, limit: 100, maxScan: 500, filters: { source: "web" } });
    expect(next.events.map((event) => event.id)).toEqual(all.slice(500, 600).map((event) => event.id));
    const [row] = await database.sequelize.query<{ "QUERY PLAN": unknown }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${READ_FEED}`, {
      bind: ["0", "0", 101, "email", null, null, 524288, 500],
      type: QueryTypes.SELECT,
    });
    const scans = nodes((row["QUERY PLAN"] as Array<{ Plan: PlanNode }>)[0].Plan).filter((node) => node["Relation Name"] === "crm_ingest_events");
    // The page's scan and the read of where it ended, each bounded by the LIMIT on the range.
    expect(scans.length).toBeGreaterThan(0);
    for (const scan of scans) expect(scan["Actual Rows"]! * (scan["Actual Loops"] ?? 1)).toBeLessThanOrEqual(500);
    expect(scans.reduce((sum, scan) => sum + scan["Actual Rows"]!, 0)).toBeGreaterThan(0);
  });
});

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  "Actual Rows"?: number;
  "Plan Rows"?: number;
  "Actual Loops"?: number;
  Plans?: PlanNode[];
}

/** Every node of a plan. */
function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}
