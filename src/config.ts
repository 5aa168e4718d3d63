import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import path from "node:path";
import { pino } from "pino";
import { isPhoneRegion, type PhoneRegion } from "./ingest/identity/phone-number.js";
import type { PrivacyToken } from "./privacy/token-labels.js";

/** Everything the service reads from its environment, parsed and checked once at start-up. */
export interface Config {
  /** Address the one HTTP/1.1 + HTTP/2 port binds to. */
  host: string;
  port: number;
  /** PostgreSQL connection string; undefined selects the embedded database. */
  databaseUrl: string | undefined;
  /** Folder that holds the embedded database's files. */
  embeddedDataDir: string;
  /** Upper bound on open database connections, per process. */
  databasePoolMax: number;
  /** Region (ISO 3166-1 alpha-2) whose national numbers a WhatsApp id without country code is read as. */
  defaultPhoneRegion: PhoneRegion;
  /** Least severe log level written: a pino level name, or `silent`. */
  logLevel: string;
  /** `json` lines, `pretty` for people, or `auto`: pretty when stdout is a terminal. */
  logFormat: "auto" | "json" | "pretty";
  /** Size limits on requests, enforced before anything is stored (src/interceptors/validation.ts). */
  limits: InputLimits;
  /** How long a request may wait on the database before it is answered `Unavailable`. */
  databaseTimeoutMs: number;
  /** How long shutdown waits for requests in flight. */
  shutdownGraceMs: number;
  /**
   * Bearer tokens that may ingest (IngestService, `/ingest/message`). With
   * `feedApiTokens`, empty both means no authentication. Never log these.
   */
  apiTokens: string[];
  /** Bearer tokens that may read the event feed (IngestEventService). A token in both lists may do both. */
  feedApiTokens: string[];
  /** Bearer tokens of the privacy API (PrivacyService), each with its audit label; empty: the API is not served. */
  privacyTokens: PrivacyToken[];
  /** How the event feed is served to watchers (src/feed/feed-hub.ts). */
  feed: FeedConfig;
  /** TLS on the one port (PEM contents); with `clientCa`, clients must present a certificate it signed. */
  tls: { cert: Buffer; key: Buffer; clientCa?: Buffer } | undefined;
  /** Group commit: most messages written in one batch, and most batches written at once (docs/group-commit.md). */
  ingestBatch: { maxBatch: number; maxInFlight: number };
  /** Processes serving the one port (node:cluster); above 1 only with PostgreSQL. */
  workers: number;
  /** Bounds on connections, HTTP/2 sessions, request bodies and open streams (src/transport/server.ts). */
  serverLimits: ServerLimits;
  /** Web origins (`https://app.example.com`) whose pages may call the service from a browser; `*` for any; empty: none. */
  corsAllowedOrigins: string[];
  /**
   * OpenTelemetry tracing, on when an OTLP endpoint is configured; undefined
   * when off. The SDK reads the other standard `OTEL_*` variables itself
   * (endpoint, headers, timeout, service name, resource, sampler, batching).
   */
  tracing: TracingConfig | undefined;
  /** The feed's relay to NATS JetStream; undefined (NATS_URL unset) turns it off. */
  relay: RelayConfig | undefined;
  /** Meta's WhatsApp Cloud API webhook (docs/channels.md); undefined, and the route not served, until its secrets are set. */
  whatsapp: WhatsappWebhookConfig | undefined;
  /** Evolution API's webhook (docs/channels.md); undefined, and the route not served, until its JWT keys are set. */
  evolution: EvolutionWebhookConfig | undefined;
  /** Inbound e-mail (docs/channels.md): the MTA's route and, with signing keys, Mailgun's. */
  email: EmailConfig;
}

/** Evolution API's webhook: the keys its JWT is signed with (never logged), and its body limit. */
export interface EvolutionWebhookConfig {
  /** Keys Evolution signs its JWT with (each instance's webhook header `jwt_key`); several while rotating. */
  jwtKeys: string[];
  /** Largest delivery read, in bytes (with `webhook_base64` Evolution inlines media). */
  maxBodyBytes: number;
}

/** Inbound e-mail through Mailgun or our own MTA. */
export interface EmailConfig {
  /** Largest raw message read, in bytes, by either door. */
  maxBytes: number;
  /** Mailgun's webhook signing keys (never logged); empty: Mailgun's route is not served. */
  mailgunSigningKeys: string[];
}

/** Meta's WhatsApp Cloud API webhook: its secrets (never logged) and its body limit. */
export interface WhatsappWebhookConfig {
  /** App secrets whose HMAC-SHA256 of the body is accepted in `X-Hub-Signature-256`: the current one and, while rotating, the previous. */
  appSecrets: string[];
  /** Tokens accepted as `hub.verify_token` in the subscription handshake. */
  verifyTokens: string[];
  /** Largest delivery read, in bytes (Meta's reach about 3 MB). */
  maxBodyBytes: number;
}

/** How spans leave the process: OTLP over HTTP, as protobuf (the standard default) or JSON. */
export interface TracingConfig {
  protocol: "http/protobuf" | "http/json";
}

/** Where and how the feed is relayed to JetStream (docs/relay.md). */
export interface RelayConfig {
  /** NATS servers, comma-separated URLs (nats://host:port); credentials in the URL are never logged. */
  natsUrl: string;
  /** The JetStream stream the feed goes to, created when absent. */
  stream: string;
  /** Each event goes to `<subjectPrefix>.<source>`; the stream takes `<subjectPrefix>.>`. */
  subjectPrefix: string;
  /** Settings used when the relay creates the stream, and checked against an existing one. */
  storage: "file" | "memory";
  replicas: number;
  /** How long the stream keeps a message, in seconds; 0 keeps them until removed by other limits. */
  maxAgeSeconds: number;
  /** Window in which JetStream drops a second message with the same Nats-Msg-Id, in seconds. */
  duplicateWindowSeconds: number;
  /** Message body: the IngestEvent protobuf in binary or in its JSON form. */
  encoding: "binary" | "json";
  /** How often a standby replica tries to become the relay; a dead relay is replaced within about this long. */
  leaderRetryMs: number;
  /** Events read from the feed per query. */
  batchSize: number;
  /** Publishes sent but not yet acknowledged by JetStream, at most. */
  maxInFlight: number;
  /** How long a publish waits for JetStream's acknowledgement before the relay reconciles with the stream. */
  ackTimeoutMs: number;
  /** How often an idle relay looks for new events. */
  pollMs: number;
}

/** What one client can hold of the server: connections, HTTP/2 streams and memory, time to send a body, open watches. */
export interface ServerLimits {
  /** Open connections (HTTP/1.1 and HTTP/2, cleartext and TLS); further ones are closed at once. */
  maxConnections: number;
  /** Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  http2MaxConcurrentStreams: number;
  /** Memory one HTTP/2 session may use (header tables, queued data), in MiB; past it new streams are refused. */
  http2MaxSessionMemoryMb: number;
  /** An HTTP/2 connection with no open stream for this long is closed (GOAWAY). */
  http2IdleTimeoutMs: number;
  /** Longest a client may take to send a request's body once its headers arrived: then `deadline_exceeded` (HTTP 408). */
  requestBodyTimeoutMs: number;
  /** Streaming calls (health Watch) open at once, per process; more are refused `resource_exhausted`. */
  maxOpenWatches: number;
}

export const defaultServerLimits: ServerLimits = {
  maxConnections: 1_000,
  http2MaxConcurrentStreams: 100,
  http2MaxSessionMemoryMb: 10,
  http2IdleTimeoutMs: 300_000,
  requestBodyTimeoutMs: 30_000,
  maxOpenWatches: 100,
};

/** How this process serves WatchIngestEvents. */
export interface FeedConfig {
  /** How often the feed is read while anyone watches: the bound on delivering another process's commits. */
  pollIntervalMs: number;
  /** How long a watch stream stays silent before it sends a checkpoint. */
  checkpointIntervalMs: number;
  /** Most watch streams open at once in this process. */
  maxWatchStreams: number;
  /** Byte budget of one feed read (a List page), in bytes of stored content and metadata (docs/hardening.md). */
  readMaxBytes: number;
}

/** The configurable limits on a request; the fixed rules live in the proto. */
export interface InputLimits {
  /** Largest request body read, in bytes, before it is parsed. */
  requestMaxBytes: number;
  /** Longest sender_id, in characters (Unicode code points). */
  senderIdMaxChars: number;
  /** Longest external_id, in characters (Unicode code points). */
  externalIdMaxChars: number;
  /** Largest content, in bytes of UTF-8. */
  contentMaxBytes: number;
  /** Largest metadata, in bytes of its UTF-8 JSON. */
  metadataMaxBytes: number;
  /** Deepest metadata nesting; the metadata object itself is level 1. */
  metadataMaxDepth: number;
}

export const defaultInputLimits: InputLimits = {
  // The largest valid request (256 KiB content, 64 KiB metadata, ids) is about 0.33 MiB.
  requestMaxBytes: 400 * 1024,
  senderIdMaxChars: 320,
  externalIdMaxChars: 320,
  contentMaxBytes: 256 * 1024,
  metadataMaxBytes: 64 * 1024,
  metadataMaxDepth: 10,
};

/** The configuration could not be read; `problems` names every bad variable. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
  }
}

/**
 * Reads and validates the environment. Collects every problem before failing,
 * so an operator fixes them all in one go instead of one per restart.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];

  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      problems.push(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
      return fallback;
    }
    return value;
  };

  const databaseUrl = env.DATABASE_URL || undefined;
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    problems.push("DATABASE_URL must start with postgres:// or postgresql://");
  }

  const defaultPhoneRegion = (env.DEFAULT_PHONE_REGION || "BR").toUpperCase();
  if (!isPhoneRegion(defaultPhoneRegion)) {
    problems.push(`DEFAULT_PHONE_REGION must be a two-letter region code such as BR or PT, got "${env.DEFAULT_PHONE_REGION}"`);
  }
  const oneOf = <T extends string>(name: string, fallback: T, allowed: readonly T[]): T => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    if (!(allowed as readonly string[]).includes(raw)) {
      problems.push(`${name} must be one of ${allowed.join(", ")}, got "${raw}"`);
      return fallback;
    }
    return raw as T;
  };

  const file = (name: string): Buffer | undefined => {
    const filePath = env[name];
    if (!filePath) return undefined;
    try {
      return readFileSync(filePath);
    } catch (error) {
      problems.push(`${name} names a file that cannot be read (${(error as NodeJS.ErrnoException).code ?? "error"}): ${filePath}`);
      return undefined;
    }
  };

  // Comma- or line-separated; `#` starts a comment line in the file.
  const tokens = (name: string, label: string): string[] => {
    const fromFile = file(`${name}_FILE`);
    const list = [env[name] ?? "", fromFile?.toString("utf8") ?? ""]
      .flatMap((text) => text.split(/[,\n]/))
      .map((token) => token.trim())
      .filter((token) => token !== "" && !token.startsWith("#"));
    if ((env[name] || fromFile) && list.length === 0) problems.push(`${name} / ${name}_FILE is set but holds no token`);
    // Named by position only: a token must never reach a log.
    list.forEach((token, i) => {
      if (token.length < 16 || /\s/.test(token)) problems.push(`${label} #${i + 1} must be at least 16 characters with no spaces`);
    });
    return list;
  };
  const apiTokens = tokens("INGEST_API_TOKENS", "API token");
  const feedApiTokens = tokens("FEED_API_TOKENS", "feed API token");
  // The privacy API: a scope of its own, and only behind authentication everywhere (docs/privacy.md).
  const privacyTokens = privacyTokenList(tokens("PRIVACY_API_TOKENS", "privacy API token"), problems);
  if (privacyTokens.length > 0) {
    if (apiTokens.length === 0) problems.push("PRIVACY_API_TOKENS needs INGEST_API_TOKENS: the privacy API is served only when every route needs a token");
    privacyTokens.forEach(({ token }, i) => {
      if (apiTokens.includes(token) || feedApiTokens.includes(token)) {
        problems.push(`privacy API token #${i + 1} is also an ingest or feed token: a privacy token may do nothing else`);
      }
    });
  }

  const allowUnauthenticated = oneOf("ALLOW_UNAUTHENTICATED", "false", ["true", "false"] as const);
  const host = env.HOST || "127.0.0.1";
  if (!isLoopback(host) && apiTokens.length + feedApiTokens.length === 0 && allowUnauthenticated !== "true") {
    problems.push(
      `HOST=${host} is reachable from other machines but no API tokens are configured: set INGEST_API_TOKENS=<token>[,<token>...] ` +
        "or INGEST_API_TOKENS_FILE=<file with one token per line> (clients then send `Authorization: Bearer <token>`), " +
        "or set ALLOW_UNAUTHENTICATED=true to serve without authentication",
    );
  }

  const [cert, key, clientCa] = [file("TLS_CERT_FILE"), file("TLS_KEY_FILE"), file("TLS_CLIENT_CA_FILE")];
  if (Boolean(env.TLS_CERT_FILE) !== Boolean(env.TLS_KEY_FILE)) problems.push("TLS_CERT_FILE and TLS_KEY_FILE must be set together");
  if (env.TLS_CLIENT_CA_FILE && !env.TLS_CERT_FILE) problems.push("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE");

  // Origins as browsers send them: scheme, host and port only, no path.
  const corsAllowedOrigins = (env.CORS_ALLOWED_ORIGINS ?? "")
    .split(",")
    .map((origin) => origin.trim())
    .filter((origin) => origin !== "");
  for (const origin of corsAllowedOrigins) {
    if (origin !== "*" && !isWebOrigin(origin)) {
      problems.push(`CORS_ALLOWED_ORIGINS must list origins such as https://app.example.com (scheme, host, optional port; no path) or *, got "${origin}"`);
    }
  }
  const tracing = tracingConfig(env, problems);

  const config: Config = {
    host,
    port: integer("PORT", 8000, 0, 65535),
    databaseUrl,
    embeddedDataDir: path.resolve(env.EMBEDDED_DATA_DIR || "data/pglite"),
    databasePoolMax: integer("DATABASE_POOL_MAX", 10, 1, 1000),
    defaultPhoneRegion: defaultPhoneRegion as PhoneRegion,
    logLevel: oneOf("LOG_LEVEL", "info", [...Object.keys(pino.levels.values), "silent"]),
    logFormat: oneOf("LOG_FORMAT", "auto", ["auto", "json", "pretty"] as const),
    limits: {
      requestMaxBytes: integer("MAX_REQUEST_BYTES", defaultInputLimits.requestMaxBytes, 1024, 64 * 1024 * 1024),
      senderIdMaxChars: integer("MAX_SENDER_ID_CHARS", defaultInputLimits.senderIdMaxChars, 1, 65536),
      externalIdMaxChars: integer("MAX_EXTERNAL_ID_CHARS", defaultInputLimits.externalIdMaxChars, 1, 65536),
      contentMaxBytes: integer("MAX_CONTENT_BYTES", defaultInputLimits.contentMaxBytes, 1, 64 * 1024 * 1024),
      metadataMaxBytes: integer("MAX_METADATA_BYTES", defaultInputLimits.metadataMaxBytes, 2, 64 * 1024 * 1024),
      // Bounded so that walking the metadata can never exhaust the stack.
      metadataMaxDepth: integer("MAX_METADATA_DEPTH", defaultInputLimits.metadataMaxDepth, 1, 100),
    },
    databaseTimeoutMs: integer("DATABASE_TIMEOUT_MS", 5_000, 100, 600_000),
    shutdownGraceMs: integer("SHUTDOWN_GRACE_MS", 30_000, 0, 3_600_000),
    apiTokens,
    feedApiTokens,
    privacyTokens,
    feed: {
      pollIntervalMs: integer("FEED_POLL_INTERVAL_MS", 50, 5, 60_000),
      checkpointIntervalMs: integer("FEED_CHECKPOINT_INTERVAL_MS", 15_000, 100, 3_600_000),
      maxWatchStreams: integer("FEED_MAX_WATCH_STREAMS", 1_000, 1, 100_000),
      readMaxBytes: integer("FEED_READ_MAX_BYTES", 512 * 1024, 1024, 256 * 1024 * 1024),
    },
    tls: cert && key ? { cert, key, clientCa } : undefined,
    ingestBatch: {
      maxBatch: integer("INGEST_BATCH_MAX", 64, 1, 10_000),
      maxInFlight: integer("INGEST_BATCHES_IN_FLIGHT", 2, 1, 1000),
    },
    workers: integer("WORKERS", 1, 1, 64),
    serverLimits: {
      maxConnections: integer("MAX_CONNECTIONS", defaultServerLimits.maxConnections, 1, 1_000_000),
      http2MaxConcurrentStreams: integer("HTTP2_MAX_CONCURRENT_STREAMS", defaultServerLimits.http2MaxConcurrentStreams, 1, 10_000),
      http2MaxSessionMemoryMb: integer("HTTP2_MAX_SESSION_MEMORY_MB", defaultServerLimits.http2MaxSessionMemoryMb, 1, 1_024),
      http2IdleTimeoutMs: integer("HTTP2_IDLE_TIMEOUT_MS", defaultServerLimits.http2IdleTimeoutMs, 100, 86_400_000),
      requestBodyTimeoutMs: integer("REQUEST_BODY_TIMEOUT_MS", defaultServerLimits.requestBodyTimeoutMs, 100, 3_600_000),
      maxOpenWatches: integer("MAX_OPEN_WATCHES", defaultServerLimits.maxOpenWatches, 0, 1_000_000),
    },
    corsAllowedOrigins,
    tracing,
    relay: undefined,
    whatsapp: undefined,
    evolution: undefined,
    // Channels: Evolution API and inbound e-mail (docs/channels.md). Keys
    // come from VAR or VAR_FILE, comma- or line-separated: several while rotating.
    email: {
      maxBytes: integer("EMAIL_MAX_BYTES", 10 * 1024 * 1024, 64 * 1024, 100 * 1024 * 1024),
      mailgunSigningKeys: tokens("MAILGUN_SIGNING_KEYS", "Mailgun signing key"),
    },
  };
  const evolution: EvolutionWebhookConfig = {
    jwtKeys: tokens("EVOLUTION_JWT_KEYS", "Evolution JWT key"),
    maxBodyBytes: integer("EVOLUTION_MAX_BODY_BYTES", 8 * 1024 * 1024, 64 * 1024, 64 * 1024 * 1024),
  };
  if (evolution.jwtKeys.length > 0) config.evolution = evolution;
  // Read whether or not NATS_URL is set, so every variable is checked (and listed in .env.example).
  const relay: RelayConfig = {
    natsUrl: env.NATS_URL ?? "",
    stream: env.NATS_STREAM || "AURORA_INGEST_EVENTS",
    subjectPrefix: env.NATS_SUBJECT_PREFIX || "aurora.crm.v1.ingest_events",
    storage: oneOf("NATS_STREAM_STORAGE", "file", ["file", "memory"] as const),
    replicas: integer("NATS_STREAM_REPLICAS", 1, 1, 5),
    maxAgeSeconds: integer("NATS_STREAM_MAX_AGE_SECONDS", 7 * 24 * 3600, 0, 100 * 365 * 24 * 3600),
    duplicateWindowSeconds: integer("NATS_STREAM_DUPLICATE_WINDOW_SECONDS", 120, 1, 7 * 24 * 3600),
    encoding: oneOf("RELAY_ENCODING", "binary", ["binary", "json"] as const),
    leaderRetryMs: integer("RELAY_LEADER_RETRY_MS", 1_000, 50, 60_000),
    batchSize: integer("RELAY_BATCH_SIZE", 500, 1, 10_000),
    maxInFlight: integer("RELAY_MAX_IN_FLIGHT", 2_000, 1, 100_000),
    ackTimeoutMs: integer("RELAY_ACK_TIMEOUT_MS", 5_000, 100, 600_000),
    pollMs: integer("RELAY_POLL_MS", 50, 5, 60_000),
  };
  if (relay.natsUrl !== "") config.relay = relay;
  if (config.relay) {
    const names = /^[A-Za-z0-9_-]+$/;
    if (!names.test(config.relay.stream)) problems.push(`NATS_STREAM must be letters, digits, _ or -, got "${config.relay.stream}"`);
    if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(config.relay.subjectPrefix)) {
      problems.push(`NATS_SUBJECT_PREFIX must be dot-separated tokens of letters, digits, _ or - (no wildcards), got "${config.relay.subjectPrefix}"`);
    }
    if (config.relay.maxAgeSeconds > 0 && config.relay.duplicateWindowSeconds > config.relay.maxAgeSeconds) {
      problems.push("NATS_STREAM_DUPLICATE_WINDOW_SECONDS must not exceed NATS_STREAM_MAX_AGE_SECONDS");
    }
    for (const url of config.relay.natsUrl.split(",")) {
      if (!/^(nats|tls|wss?):\/\/[^\s]+$/.test(url.trim())) problems.push("NATS_URL must be nats://host:port (several: comma-separated)");
    }
  }

  // Provider webhooks: each route is served once all its secrets are set
  // (VAR or VAR_FILE, comma- or line-separated: several while rotating).
  const whatsapp: WhatsappWebhookConfig = {
    appSecrets: tokens("WHATSAPP_APP_SECRETS", "WhatsApp app secret"),
    verifyTokens: tokens("WHATSAPP_VERIFY_TOKENS", "WhatsApp verify token"),
    maxBodyBytes: integer("WHATSAPP_MAX_BODY_BYTES", 4 * 1024 * 1024, 64 * 1024, 64 * 1024 * 1024),
  };
  if (whatsapp.appSecrets.length > 0 && whatsapp.verifyTokens.length > 0) config.whatsapp = whatsapp;
  else if (whatsapp.appSecrets.length + whatsapp.verifyTokens.length > 0) {
    problems.push("WHATSAPP_APP_SECRETS and WHATSAPP_VERIFY_TOKENS (or their _FILE forms) must be set together");
  }
  if (config.workers > 1 && databaseUrl === undefined) {
    problems.push("WORKERS above 1 needs DATABASE_URL: the embedded database lives inside one process and cannot be shared");
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/**
 * Tracing is on when an OTLP endpoint is set, unless the standard switches
 * turn it off (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`). Only
 * OTLP over HTTP is built in: a collector's gRPC port (4317) is refused here
 * rather than failing on every export.
 */
function tracingConfig(env: NodeJS.ProcessEnv, problems: string[]): TracingConfig | undefined {
  const endpoints = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"].filter((name) => env[name]);
  for (const name of endpoints) {
    if (!/^https?:\/\/[^/]/.test(env[name]!)) problems.push(`${name} must be an http:// or https:// URL, got "${env[name]}"`);
  }
  const disabled = env.OTEL_SDK_DISABLED?.trim().toLowerCase();
  if (disabled && disabled !== "true" && disabled !== "false") problems.push(`OTEL_SDK_DISABLED must be true or false, got "${env.OTEL_SDK_DISABLED}"`);
  const exporter = env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() || "otlp";
  if (exporter !== "otlp" && exporter !== "none") problems.push(`OTEL_TRACES_EXPORTER must be otlp or none, got "${env.OTEL_TRACES_EXPORTER}"`);
  const protocolVariable = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" : "OTEL_EXPORTER_OTLP_PROTOCOL";
  const protocol = env[protocolVariable] || "http/protobuf";
  if (protocol !== "http/protobuf" && protocol !== "http/json") {
    problems.push(`${protocolVariable} must be http/protobuf or http/json (OTLP over HTTP, a collector's port 4318), got "${protocol}"`);
  }
  if (endpoints.length === 0 || disabled === "true" || exporter === "none") return undefined;
  return { protocol: protocol === "http/json" ? "http/json" : "http/protobuf" };
}

/**
 * Privacy tokens with their audit labels: `label:token` names a token, a
 * plain token is named by its fingerprint in the audit trail. The token
 * itself, without its label, must be at least 16 characters.
 */
function privacyTokenList(entries: string[], problems: string[]): PrivacyToken[] {
  return entries.map((entry, i) => {
    const match = /^([A-Za-z0-9._-]{1,64}):(\S+)$/.exec(entry);
    if (match && match[2].length < 16) problems.push(`privacy API token #${i + 1} must be at least 16 characters after its label`);
    return match ? { label: match[1], token: match[2] } : { token: entry };
  });
}

/** True for addresses only this machine can reach: 127.0.0.0/8, ::1 and localhost. */
export function isLoopback(host: string): boolean {
  const address = host.replace(/^\[(.*)\]$/, "$1").toLowerCase().replace(/^::ffff:(?=\d+\.)/, "");
  if (address === "localhost") return true;
  if (isIP(address) === 4) return address.startsWith("127.");
  return isIP(address) === 6 && /^(0{0,4}:){1,7}0{0,3}1$/.test(address);
}

/** True for `scheme://host[:port]` exactly as a browser's Origin header carries it. */
function isWebOrigin(value: string): boolean {
  try {
    return new URL(value).origin === value;
  } catch {
    return false;
  }
}
