import { Gauge, type Registry } from "prom-client";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { FEED_HORIZON } from "./horizon.js";

/**
 * The feed's gauges: watch streams open here, and its lag, read from the
 * database when scraped. The feed delivers an event once every transaction
 * older than its own that may write to this database has ended: one long or
 * idle-in-transaction session holds every event behind it (docs/feed.md, "A
 * stalled feed").
 */
export function registerFeedMetrics(registry: Registry, { sequelize, feedHub }: { sequelize: Sequelize; feedHub: { openWatches: number } }): void {
  const registers = [registry];
  const prefix = "aurora_ingest_";
  new Gauge({
    name: `${prefix}feed_watch_streams`,
    help: "WatchIngestEvents streams open in this process.",
    registers,
    collect() {
      this.set(feedHub.openWatches);
    },
  });
  let reading: Promise<FeedLag | undefined> | undefined;
  // Both gauges come from one query per scrape.
  const read = () =>
    (reading ??= sequelize
      .query<FeedLag>(FEED_LAG, { type: QueryTypes.SELECT })
      .then(([row]) => row)
      .catch(() => undefined)
      .finally(() => setImmediate(() => (reading = undefined))));
  new Gauge({
    name: `${prefix}feed_undeliverable_events`,
    help: "Events committed but not yet deliverable in the feed, because an older transaction is still open (counted up to 100000).",
    registers,
    async collect() {
      const lag = await read();
      this.set(lag ? Number(lag.undeliverable) : NaN);
    },
  });
  new Gauge({
    name: `${prefix}feed_horizon_age_seconds`,
    help: "Age of the oldest open transaction that holds the feed's horizon (0 when none is open).",
    registers,
    async collect() {
      const lag = await read();
      this.set(lag ? Number(lag.horizon_age_seconds) : NaN);
    },
  });
}

interface FeedLag {
  undeliverable: string;
  horizon_age_seconds: string;
}

// The horizon is held by transactions with an xid (they wrote) that may
// belong to this database, and by transactions prepared in it (docs/feed.md).
const FEED_LAG = `
  SELECT
    (SELECT count(*) FROM (
       SELECT 1 FROM crm_ingest_events WHERE feed_xid >= ${FEED_HORIZON} LIMIT 100000
     ) AS held) AS undeliverable,
    coalesce(extract(epoch FROM clock_timestamp() - least(
      (SELECT min(xact_start) FROM pg_stat_activity
       WHERE backend_xid IS NOT NULL AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())),
      (SELECT min(prepared) FROM pg_prepared_xacts WHERE database = current_database())
    )), 0) AS horizon_age_seconds`;
