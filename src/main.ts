/**
 * Entry point: configuration, then the logger, the database and tracing, then
 * the app over them (src/app.ts), then the signals that stop it. With WORKERS=N the first process
 * only checks the schema and starts N workers that each do all of that on the
 * one port.
 */
import cluster from "node:cluster";
import { diag, DiagLogLevel } from "@opentelemetry/api";
import { createApp } from "./app.js";
import { ConfigError, loadConfig, type Config } from "./config.js";
import { DataDirInUseError } from "./db/data-dir-lock.js";
import { openDatabase, type Database } from "./db/database.js";
import { createMigrator, describeSchema, schemaStatus, type SchemaStatus } from "./db/migrator.js";
import { createLogger, endLog, type Logger } from "./observability/logger.js";
import { createTracing, tracingDiagnostics, type Tracing } from "./observability/tracing.js";
import { startWorkers } from "./transport/workers.js";
import { readHorizonStatus } from "./feed/horizon.js";
import { describeNatsUrl } from "./feed/relay/start-relay.js";

async function main(config: Config, log: Logger): Promise<void> {
  const database = await openDatabase(
    config.databaseUrl ? { kind: "postgres", url: config.databaseUrl } : { kind: "embedded", dataDir: config.embeddedDataDir },
    { poolMax: cluster.isPrimary && config.workers > 1 ? 1 : config.databasePoolMax, timeoutMs: config.databaseTimeoutMs },
  );
  // Every start-up line names the database (never its password) and, once known, the schema version.
  const startLog = log.child({ database: database.description });
  const schema = await prepareSchema(database, startLog);
  const readyLog = startLog.child({ schemaVersion: schema.version });
  const where = ({ address, port }: { address: string; port: number }) =>
    `${config.tls ? "https" : "http"}://${address.includes(":") ? `[${address}]` : address}:${port} ` +
    `(${database.description}, schema ${describeSchema(schema)}, ${config.apiTokens.length + config.feedApiTokens.length ? "bearer tokens" : "no authentication"})`;
  if (cluster.isPrimary && config.workers > 1) {
    await database.close();
    const address = await startWorkers(config.workers, (message) => readyLog.info(message));
    readyLog.info(`aurora-crm-ingest listening on ${where(address)} with ${config.workers} workers`);
    return;
  }

  let tracing: Tracing | undefined;
  if (config.tracing) {
    // The one global OpenTelemetry registration: the SDK's own warnings (a failed export) go to our log.
    diag.setLogger(tracingDiagnostics(log), DiagLogLevel.WARN);
    tracing = await createTracing(config.tracing);
    log.info(`tracing on: spans exported over OTLP (${config.tracing.protocol}) to the OTEL_EXPORTER_OTLP_* endpoint`);
  }
  const { server, erasures, relay } = await createApp(config, { sequelize: database.sequelize, log, tracing });
  // The signal handlers go in before the port opens: a SIGTERM that arrives
  // as soon as we say "listening" must drain, not kill the process.
  const listening = server.listen(config.port, config.host);
  let stopping = false;
  let exitCode = 0;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    readyLog.info(`${signal} received: reporting NOT_SERVING, finishing requests in flight (up to ${config.shutdownGraceMs} ms)`);
    const started = Date.now();
    await listening.catch(() => undefined);
    setTimeout(() => {
      readyLog.fatal("shutdown is stuck; exiting");
      process.exit(1);
    }, config.shutdownGraceMs + 10_000).unref();
    const cutOff = await server.close(config.shutdownGraceMs);
    if (cutOff > 0) readyLog.warn(`${cutOff} request(s) still running after the grace period were cut off`);
    await relay?.stop();
    await erasures.close();
    // Connections such requests still hold are not waited for past the grace period.
    await database.close(Math.max(1_000, config.shutdownGraceMs - (Date.now() - started)));
    // Spans still batched are exported before the process ends.
    await tracing?.shutdown();
    readyLog.info("stopped");
    await endLog(log);
    process.exit(exitCode);
  };
  const onSignal = (signal: string) => () => {
    stop(signal).catch((error: unknown) => {
      readyLog.fatal({ err: error }, "shutdown failed");
      process.exit(1);
    });
  };
  process.on("SIGTERM", onSignal("SIGTERM"));
  process.on("SIGINT", onSignal("SIGINT"));
  // Last line of defence; requests never get here (src/transport/guard.ts).
  // After an uncaught exception the process's state is unknown (Node's own
  // advice is to exit): requests in flight are let finish and the process
  // exits 1 for its supervisor to restart it. A rejected promise nobody
  // awaited left no half-run code behind: it is logged, and serving goes on.
  process.on("uncaughtException", (error) => {
    readyLog.fatal({ err: error }, "uncaught exception: stopping");
    exitCode = 1;
    onSignal("uncaught exception")();
  });
  process.on("unhandledRejection", (reason) => readyLog.error({ err: reason }, "unhandled promise rejection"));
  const address = await listening;
  // Erasures a stopped process left unfinished continue (on whichever replica looks first).
  erasures.start();
  // With WORKERS=N the primary says where the service listens, once all workers do.
  readyLog.info(cluster.isPrimary ? `aurora-crm-ingest listening on ${where(address)}` : `worker ${process.pid} ready on ${where(address)}`);
  if (relay && config.relay) {
    relay.start();
    readyLog.info(`feed relay on: stream ${config.relay.stream} on NATS ${describeNatsUrl(config.relay.natsUrl)}; one replica relays at a time`);
  } else {
    readyLog.info("feed relay off: NATS_URL is not set");
  }
  const horizon = await readHorizonStatus(database.sequelize);
  if (horizon.scope === "database") readyLog.info("feed horizon per database: open transactions in other databases of the cluster do not hold the feed back");
  else readyLog.warn(`feed horizon per database only where visible: ${horizon.reason}`);
}

/**
 * The embedded database belongs to this process, so it is migrated here.
 * A PostgreSQL server is shared and migrated by its deployer
 * (`npm run migrate`); we refuse to serve an outdated schema.
 */
async function prepareSchema(database: Database, log: Logger): Promise<SchemaStatus> {
  const migrator = createMigrator(database.sequelize, {
    info: (event) => log.info({ migration: event.name }, `migration ${String(event.event)}`),
    warn: (event) => log.warn({ migration: event.name }, `migration ${String(event.event)}`),
    error: (event) => log.error({ migration: event.name }, `migration ${String(event.event)}`),
    debug: () => undefined,
  });
  if (database.kind === "embedded") await migrator.up();
  const status = await schemaStatus(migrator);
  if (status.pending.length > 0) {
    await database.close();
    throw new StartupError(
      `${database.description} has ${status.pending.length} pending migration(s): ${status.pending.join(", ")}.\n` +
        "Run `npm run migrate` against this DATABASE_URL, then start again.",
    );
  }
  return status;
}

class StartupError extends Error {}

let config: Config;
try {
  config = loadConfig();
} catch (error) {
  console.error(error instanceof ConfigError ? error.message : error);
  process.exit(1);
}
const log = createLogger({ level: config.logLevel, format: config.logFormat });
main(config, log).catch((error: unknown) => {
  if (error instanceof StartupError || error instanceof DataDirInUseError) log.fatal(error.message);
  else log.fatal({ err: error }, "start-up failed");
  void endLog(log).finally(() => process.exit(1));
});
