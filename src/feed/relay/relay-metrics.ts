import { Counter, Gauge, Histogram, type Registry } from "prom-client";

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
