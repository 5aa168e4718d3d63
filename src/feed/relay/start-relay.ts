import type { Sequelize } from "sequelize-typescript";
import type { RelayConfig } from "../../config.js";
import type { Logger } from "../../observability/logger.js";
import { createRelayMetrics } from "./relay-metrics.js";
import type { Registry } from "prom-client";
import { FeedRelay, type RelayHooks } from "./feed-relay.js";
import { advisoryLock, soleLeader } from "./leader-lock.js";

export interface RelayDependencies {
  sequelize: Sequelize;
  /** The PostgreSQL server's URL, for the leader lock's own connection; undefined for the embedded database. */
  databaseUrl: string | undefined;
  log: Logger;
  registry: Registry;
  hooks?: RelayHooks;
}

/**
 * Builds the feed relay. With PostgreSQL, replicas elect the one that relays
 * through an advisory lock; the embedded database belongs to a single
 * process, which always relays.
 */
export function createFeedRelay(config: RelayConfig, dependencies: RelayDependencies): FeedRelay {
  const lock = dependencies.databaseUrl
    ? advisoryLock({ url: dependencies.databaseUrl, name: config.stream, retryMs: config.leaderRetryMs, log: dependencies.log })
    : soleLeader();
  return new FeedRelay({
    sequelize: dependencies.sequelize,
    config,
    lock,
    log: dependencies.log,
    metrics: createRelayMetrics(dependencies.registry),
    hooks: dependencies.hooks,
  });
}

/** NATS servers without credentials: safe to log. */
export function describeNatsUrl(natsUrl: string): string {
  return natsUrl
    .split(",")
    .map((url) => url.trim().replace(/\/\/[^@/]*@/, "//"))
    .join(",");
}
