import { afterAll, beforeAll } from "vitest";
import type { Sequelize } from "sequelize-typescript";
import { createApp } from "../../src/app.js";
import { loadConfig, type Config, type InputLimits } from "../../src/config.js";
import type { RouteDependencies } from "../../src/routes.js";
import type { FeedHub, FeedHubOptions } from "../../src/feed/feed-hub.js";
import type { DatabaseHealth, DatabaseHealthOptions } from "../../src/db/database-health.js";
import type { PhoneRegion } from "../../src/ingest/identity/phone-number.js";
import { createLogger } from "../../src/observability/logger.js";
import type { Metrics } from "../../src/observability/metrics.js";
import type { IngestServer, ServerOptions } from "../../src/transport/server.js";
import type { ErasureRunner } from "../../src/privacy/erase-subject.js";
import { createTestDatabase, type TestDatabase } from "./database.js";

/** A real server on an ephemeral loopback port, over the given database. */
export interface TestServer {
  baseUrl: string;
  server: IngestServer;
  health: DatabaseHealth;
  feedHub: FeedHub;
  metrics: Metrics;
  /** Carries out the erasures this server records (idle() waits for them). */
  erasures: ErasureRunner;
  /** Every line the server logged (at every level), parsed, in order. */
  logLines: Array<Record<string, any>>;
  /** The raw text the server logged, for "never appears" assertions. */
  logText(): string;
  /** Lines logged at error or above, so tests can assert nothing unexpected happened. */
  readonly loggedErrors: Array<Record<string, any>>;
}

export type TestServerOptions = {
  defaultPhoneRegion?: PhoneRegion;
  health?: Partial<DatabaseHealthOptions>;
  limits?: InputLimits;
  feed?: Pick<FeedHubOptions, "pollIntervalMs" | "checkpointIntervalMs" | "maxWatches" | "bufferEvents" | "readMaxBytes" | "bufferMaxBytes" | "readMaxScan">;
  apiTokens?: string[];
  feedApiTokens?: string[];
  erasures?: { batchRows?: number };
} & Pick<ServerOptions, "tls" | "requestTimeoutMs" | "serverLimits" | "corsAllowedOrigins" | "tracing"> &
  Pick<RouteDependencies, "ingestBatch" | "extraRoutes" | "whatsapp" | "evolution" | "email" | "privacyTokens" | "relay">;

/**
 * For a test file: a throwaway database and a server over it, started before
 * the file's tests and closed after them. Its fields are set once the file's
 * `beforeAll` hooks ran, so read them inside hooks and tests.
 */
export function useTestServer(options: TestServerOptions = {}): { database: TestDatabase; server: TestServer } {
  const context = {} as { database: TestDatabase; server: TestServer };
  beforeAll(async () => {
    context.database = await createTestDatabase();
    context.server = await startTestServer(context.database, options);
  });
  afterAll(async () => {
    await context.server?.erasures.close();
    await context.server?.server.close();
    await context.database?.close();
  });
  return context;
}

/**
 * Starts the app `main` serves (src/app.ts), with the service's defaults and
 * the test's options, its own logger (into memory, every level) and metrics.
 */
export async function startTestServer(database: { sequelize: Sequelize }, options: TestServerOptions = {}): Promise<TestServer> {
  const raw: string[] = [];
  const logLines: Array<Record<string, any>> = [];
  const log = createLogger({
    level: "trace",
    destination: {
      write(line: string) {
        raw.push(line);
        logLines.push(JSON.parse(line));
      },
    },
  });
  // The defaults the service runs with, and what the test asks for on top.
  const defaults = loadConfig({});
  const config: Config = {
    ...defaults,
    defaultPhoneRegion: options.defaultPhoneRegion ?? defaults.defaultPhoneRegion,
    limits: options.limits ?? defaults.limits,
    apiTokens: options.apiTokens ?? [],
    feedApiTokens: options.feedApiTokens ?? [],
    privacyTokens: [...(options.privacyTokens ?? [])],
    tls: options.tls,
    databaseTimeoutMs: options.requestTimeoutMs ?? defaults.databaseTimeoutMs,
    serverLimits: { ...defaults.serverLimits, ...options.serverLimits },
    corsAllowedOrigins: options.corsAllowedOrigins ?? [],
    ingestBatch: { ...defaults.ingestBatch, ...options.ingestBatch },
    whatsapp: options.whatsapp,
    evolution: options.evolution,
    email: options.email ?? defaults.email,
  };
  const { server, health, feedHub, metrics, erasures } = await createApp(config, {
    sequelize: database.sequelize,
    log,
    tracing: options.tracing,
    tuning: { health: options.health, feed: options.feed, erasures: options.erasures, extraRoutes: options.extraRoutes, relayStatus: options.relay },
  });
  const address = await server.listen(0, "127.0.0.1");
  return {
    baseUrl: `${options.tls ? "https" : "http"}://127.0.0.1:${address.port}`,
    server,
    health,
    feedHub,
    metrics,
    erasures,
    logLines,
    logText: () => raw.join(""),
    get loggedErrors() {
      return logLines.filter((line) => line.level >= 50);
    },
  };
}
