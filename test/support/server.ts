import { Registry } from "prom-client";
import { afterAll, beforeAll } from "vitest";
import { defaultInputLimits, defaultServerLimits, type InputLimits } from "../../src/config.js";
import { routeTable, type RouteDependencies } from "../../src/routes.js";
import { OpenStreams } from "../../src/services/stream-limits.js";
import type { Sequelize } from "sequelize-typescript";
import { FeedHub, type FeedHubOptions } from "../../src/feed/feed-hub.js";
import { DatabaseHealth, type DatabaseHealthOptions } from "../../src/db/database-health.js";
import type { PhoneRegion } from "../../src/ingest/identity/phone-number.js";
import { createLogger } from "../../src/observability/logger.js";
import { createMetrics, type Metrics } from "../../src/observability/metrics.js";
import { buildServer, type IngestServer, type ServerOptions } from "../../src/transport/server.js";
import { readDigestKey } from "../../src/privacy/digest-key.js";
import { ErasureRunner } from "../../src/privacy/erase-subject.js";
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
  feed?: Pick<FeedHubOptions, "pollIntervalMs" | "checkpointIntervalMs" | "maxWatches" | "bufferEvents" | "readMaxBytes" | "bufferMaxBytes">;
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

/** Starts a server with its own logger (into memory, every level), metrics registry and health. */
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
  const health = new DatabaseHealth({ sequelize: database.sequelize, log, ...options.health });
  const feedHub = new FeedHub({ sequelize: database.sequelize, log, ...options.feed });
  const metrics = createMetrics(new Registry(), database.sequelize, feedHub);
  const streams = new OpenStreams({ ...defaultServerLimits, ...options.serverLimits }.maxOpenWatches);
  const digestKey = await readDigestKey(database.sequelize);
  const erasures = new ErasureRunner({ sequelize: database.sequelize, digestKey, log, feedNotifier: feedHub, ...options.erasures });
  const routes = routeTable({
    digestKey,
    erasures,
    sequelize: database.sequelize,
    defaultPhoneRegion: options.defaultPhoneRegion ?? "BR",
    health,
    metrics,
    streams,
    feedHub,
    ingestBatch: options.ingestBatch,
    tracing: options.tracing,
    extraRoutes: options.extraRoutes,
    whatsapp: options.whatsapp,
    evolution: options.evolution,
    email: options.email,
    privacyTokens: options.privacyTokens,
    relay: options.relay,
    log,
    limits: options.limits ?? defaultInputLimits,
    bodyTimeoutMs: { ...defaultServerLimits, ...options.serverLimits }.requestBodyTimeoutMs,
  });
  const server = buildServer({
    routes,
    health,
    streams,
    feedHub,
    log,
    metrics,
    limits: options.limits,
    tokens: { ingest: options.apiTokens ?? [], feed: options.feedApiTokens ?? [], privacy: (options.privacyTokens ?? []).map((entry) => entry.token) },
    tls: options.tls,
    requestTimeoutMs: options.requestTimeoutMs,
    serverLimits: options.serverLimits,
    corsAllowedOrigins: options.corsAllowedOrigins,
    tracing: options.tracing,
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

/** POSTs JSON to a path and returns the status and parsed body. */
export async function postJson(baseUrl: string, path: string, body: unknown): Promise<{ status: number; body: any }> {
  const response = await fetch(baseUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}
