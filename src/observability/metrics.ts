import { collectDefaultMetrics, Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { Sequelize } from "sequelize-typescript";
import { INGEST_EVENT_STATUSES } from "../db/models/IngestEvent.js";

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
 * scraped) and Node's process defaults on `registry` (the feed's and the
 * relay's own live with them, src/feed/feed-metrics.ts and src/feed/relay/relay-metrics.ts). Never the global
 * registry: each server in a test process gets its own.
 */
export function createMetrics(registry: Registry, sequelize?: Sequelize): Metrics {
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


  collectDefaultMetrics({ register: registry });
  return metrics;
}
