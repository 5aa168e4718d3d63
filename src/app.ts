/**
 * The composition root: everything one process serves, built from the
 * configuration over a database it is handed. `src/main.ts` starts it, and so
 * do the tests (test/support/server.ts) and, through main, the bench.
 */
import { Registry } from "prom-client";
import type { Sequelize } from "sequelize-typescript";
import type { Config } from "./config.js";
import { DatabaseHealth, type DatabaseHealthOptions } from "./db/database-health.js";
import { FeedHub, type FeedHubOptions } from "./feed/feed-hub.js";
import { registerFeedMetrics } from "./feed/feed-metrics.js";
import type { FeedRelay } from "./feed/relay/feed-relay.js";
import { createFeedRelay } from "./feed/relay/start-relay.js";
import type { Logger } from "./observability/logger.js";
import { createMetrics, type Metrics } from "./observability/metrics.js";
import type { Tracing } from "./observability/tracing.js";
import { readDigestKey } from "./privacy/digest-key.js";
import { ErasureRunner } from "./privacy/erase-subject.js";
import { registerPrivacyMetrics } from "./privacy/privacy-metrics.js";
import { routeTable, type RouteDependencies } from "./routes.js";
import { OpenStreams } from "./services/stream-limits.js";
import { buildServer, type IngestServer } from "./transport/server.js";

/** What the app is built over: the long-lived things its caller owns and closes. */
export interface AppDependencies {
  sequelize: Sequelize;
  log: Logger;
  /** OpenTelemetry, started by the caller (its registration is global to the process); absent: no tracing code runs. */
  tracing?: Tracing;
  /** Settings the environment does not offer, for tests that need a short interval or a small batch. */
  tuning?: {
    health?: Partial<DatabaseHealthOptions>;
    feed?: Partial<FeedHubOptions>;
    erasures?: { batchRows?: number };
    extraRoutes?: RouteDependencies["extraRoutes"];
    /** Stands in for the relay `config.relay` would build, in `/readyz`. */
    relayStatus?: RouteDependencies["relay"];
  };
}

/** The parts of a running app its caller starts, reads and stops. */
export interface App {
  server: IngestServer;
  health: DatabaseHealth;
  feedHub: FeedHub;
  metrics: Metrics;
  /** Carries out erasures; started by the caller once the port is open. */
  erasures: ErasureRunner;
  /** The feed's relay to JetStream when `config.relay` is set; started by the caller. */
  relay: FeedRelay | undefined;
}

/** Builds the app: health, feed hub, metrics, relay, erasures, the route table and the server (not yet listening). */
export async function createApp(config: Config, { sequelize, log, tracing, tuning = {} }: AppDependencies): Promise<App> {
  const health = new DatabaseHealth({ sequelize, log, ...tuning.health });
  const feedHub = new FeedHub({
    sequelize,
    log,
    pollIntervalMs: config.feed.pollIntervalMs,
    checkpointIntervalMs: config.feed.checkpointIntervalMs,
    maxWatches: config.feed.maxWatchStreams,
    readMaxBytes: config.feed.readMaxBytes,
    bufferMaxBytes: config.feed.bufferMaxBytes,
    readMaxScan: config.feed.readMaxScan,
    ...tuning.feed,
  });
  const metrics = createMetrics(new Registry(), sequelize);
  registerFeedMetrics(metrics.registry, { sequelize, feedHub });
  registerPrivacyMetrics(metrics.registry, sequelize);
  const relay = config.relay ? createFeedRelay(config.relay, { sequelize, databaseUrl: config.databaseUrl, log, registry: metrics.registry }) : undefined;
  const streams = new OpenStreams(config.serverLimits.maxOpenWatches);
  const digestKey = await readDigestKey(sequelize);
  const erasures = new ErasureRunner({ sequelize, digestKey, log, feedNotifier: feedHub, ...tuning.erasures });
  const routes = routeTable({
    digestKey,
    erasures,
    relay: relay ?? tuning.relayStatus,
    sequelize,
    defaultPhoneRegion: config.defaultPhoneRegion,
    health,
    metrics,
    streams,
    feedHub,
    ingestBatch: config.ingestBatch,
    tracing,
    extraRoutes: tuning.extraRoutes,
    log,
    limits: config.limits,
    bodyTimeoutMs: config.serverLimits.requestBodyTimeoutMs,
    whatsapp: config.whatsapp,
    evolution: config.evolution,
    email: config.email,
    privacyTokens: config.privacyTokens,
  });
  const server = buildServer({
    routes,
    health,
    streams,
    feedHub,
    log,
    metrics,
    limits: config.limits,
    tokens: { ingest: config.apiTokens, feed: config.feedApiTokens, privacy: config.privacyTokens.map((entry) => entry.token) },
    tls: config.tls,
    requestTimeoutMs: config.databaseTimeoutMs,
    serverLimits: config.serverLimits,
    corsAllowedOrigins: config.corsAllowedOrigins,
    tracing,
  });
  return { server, health, feedHub, metrics, erasures, relay };
}
