import { collectDefaultMetrics, Counter, Gauge, Histogram, type Registry } from "prom-client";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { INGEST_EVENT_STATUSES } from "../db/models/IngestEvent.js";
import { FEED_HORIZON } from "../feed/horizon.js";

/** The service's Prometheus metrics, registered on a registry the entry point (or a test) owns. */
export interface Metrics {
  registry: Registry;
  /** Finished requests by procedure (or HTTP route), protocol and Connect code (HTTP status for plain routes). */
  requests: Counter<"procedure" | "protocol" | "code">;
  /** Request duration, from the first byte read to the last byte written. */
  requestDuration: Histogram<"procedure" | "protocol">;
  /** Ingest events committed, by the status they were stored with. */
  eventsStored: Counter<"status">;
  /** Contacts created by ingest (a sender seen for the first time). */
  contactsCreated: Counter;
  /** Requests answered with an earlier result because they repeated an idempotency key. */
  duplicates: Counter;
  /** Messages per ingest batch (one transaction, one commit), observed as each batch is sent. */
  ingestBatchSize: Histogram;
}

/** Pool counters of sequelize-pool, as Sequelize's connection manager holds them. */
interface PoolCounts {
  using: number;
  available: number;
  waiting: number;
}

/**
 * Registers the service's metrics, the database pool gauges (read when
 * scraped) and Node's process defaults on `registry`. Never the global
 * registry: each server in a test process gets its own.
 */
export function createMetrics(registry: Registry, sequelize?: Sequelize, feedHub?: { openWatches: number }): Metrics {
  const registers = [registry];
  const prefix = "aurora_ingest_";
  const metrics: Metrics = {
    registry,
    requests: new Counter({
      name: `${prefix}requests_total`,
      help: "Finished requests by procedure (or HTTP route), protocol and code (Connect code; HTTP status for plain HTTP routes).",
      labelNames: ["procedure", "protocol", "code"],
      registers,
    }),
    requestDuration: new Histogram({
      name: `${prefix}request_duration_seconds`,
      help: "Time from request start to response end, by procedure and protocol.",
      labelNames: ["procedure", "protocol"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    eventsStored: new Counter({
      name: `${prefix}events_stored_total`,
      help: "Ingest events committed, by the status they were stored with (RECEIVED, LINKED, ERROR).",
      labelNames: ["status"],
      registers,
    }),
    contactsCreated: new Counter({
      name: `${prefix}contacts_created_total`,
      help: "Contacts created because a sender was seen for the first time.",
      registers,
    }),
    duplicates: new Counter({
      name: `${prefix}duplicates_total`,
      help: "Requests answered with an earlier result because they repeated an idempotency key.",
      registers,
    }),
    ingestBatchSize: new Histogram({
      name: `${prefix}batch_size`,
      help: "Messages written per ingest batch: one transaction and one commit for all of them (group commit).",
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    }),
  };
  for (const status of INGEST_EVENT_STATUSES) metrics.eventsStored.inc({ status }, 0);

  const pool = (): PoolCounts | undefined =>
    (sequelize?.connectionManager as unknown as { pool?: Partial<PoolCounts> } | undefined)?.pool as PoolCounts | undefined;
  new Gauge({
    name: `${prefix}db_pool_connections`,
    help: "Database connections in the pool: in_use by a query or transaction, or idle.",
    labelNames: ["state"],
    registers,
    collect() {
      const counts = pool();
      this.set({ state: "in_use" }, counts?.using ?? 0);
      this.set({ state: "idle" }, counts?.available ?? 0);
    },
  });
  new Gauge({
    name: `${prefix}db_pool_waiting`,
    help: "Requests waiting for a database connection because the pool is exhausted.",
    registers,
    collect() {
      this.set(pool()?.waiting ?? 0);
    },
  });

  new Gauge({
    name: `${prefix}feed_watch_streams`,
    help: "WatchIngestEvents streams open in this process.",
    registers,
    collect() {
      this.set(feedHub?.openWatches ?? 0);
    },
  });
  if (sequelize) registerFeedLag(sequelize, registers, prefix);

  collectDefaultMetrics({ register: registry });
  return metrics;
}

/**
 * The feed's lag, read from the database when scraped. The feed delivers an
 * event once every transaction older than its own has ended, anywhere in the
 * database cluster: one long or idle-in-transaction session holds every
 * event behind it (docs/feed.md, "A stalled feed").
 */
function registerFeedLag(sequelize: Sequelize, registers: Registry[], prefix: string): void {
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

/** The feed relay's metrics (docs/relay.md); every replica reports them, `active` says which one relays. */
export interface RelayMetrics {
  /** 1 on the replica that currently relays, 0 on the others. */
  active: Gauge;
  /** Events committed but not yet acknowledged by the stream (as last saved by the relay). */
  lagEvents: Gauge;
  /** Age of the oldest event not yet relayed; 0 when none waits. */
  lagSeconds: Gauge;
  /** Events the stream acknowledged from this replica. */
  published: Counter;
  /** Publishes refused, timed out or failed, and other relay failures, by reason. */
  publishErrors: Counter<"reason">;
  /** Time from an event's creation to the stream's acknowledgement. */
  commitToAck: Histogram;
  /** Problems found with the existing stream's settings (0 when it matches the configuration). */
  streamProblems: Gauge;
  /** 1 while the relay refuses the stream (state `stream_incompatible`): it would lose events or mix two databases. */
  streamIncompatible: Gauge;
}

/** Registers the relay's metrics on `registry`. */
export function createRelayMetrics(registry: Registry): RelayMetrics {
  const registers = [registry];
  const prefix = "aurora_ingest_relay_";
  return {
    active: new Gauge({ name: `${prefix}active`, help: "1 when this replica relays the feed to JetStream, 0 when it stands by.", registers }),
    lagEvents: new Gauge({ name: `${prefix}lag_events`, help: "Stored events not yet acknowledged by the stream (counted up to 100000).", registers }),
    lagSeconds: new Gauge({ name: `${prefix}lag_seconds`, help: "Age of the oldest stored event not yet acknowledged by the stream; 0 when none waits.", registers }),
    published: new Counter({ name: `${prefix}published_total`, help: "Events the stream acknowledged from this replica.", registers }),
    publishErrors: new Counter({
      name: `${prefix}publish_errors_total`,
      help: "Relay failures by reason: refused (fencing), timeout (no acknowledgement), nats (connection), stream (settings), database.",
      labelNames: ["reason"],
      registers,
    }),
    commitToAck: new Histogram({
      name: `${prefix}commit_to_ack_seconds`,
      help: "Time from an event's creation to the stream's acknowledgement of its message.",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
    streamProblems: new Gauge({ name: `${prefix}stream_problems`, help: "Settings of the existing stream that differ from the configuration.", registers }),
    streamIncompatible: new Gauge({
      name: `${prefix}stream_incompatible`,
      help: "1 while the relay refuses the stream: its limits could drop events, or its last message came from another database.",
      registers,
    }),
  };
}
