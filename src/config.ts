import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import path from "node:path";
import { pino } from "pino";
import { z } from "zod";
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
  /** Days after which an event's content, metadata, error text and trace context are erased (docs/privacy.md, "Retention"); 0: kept. */
  eventContentRetentionDays: number;
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
  /** Most bytes of events the watch hub keeps in memory for watchers (docs/hardening.md). */
  bufferMaxBytes: number;
  /** Most events one filtered feed read examines before it answers with what it found and a token to continue. */
  readMaxScan: number;
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

// Each variable's parser: unset and empty (`NAME=` in .env.example) take the
// default. A bad value adds an issue and parses as its default, so the checks
// across variables still run and every problem is listed in one go.
type Issues = z.core.$RefinementCtx;

const text = (fallback = "") => z.string().optional().transform((raw) => raw || fallback);

const integer = (fallback: number, min: number, max: number) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw === undefined || raw === "") return fallback;
      const value = Number(raw);
      if (Number.isInteger(value) && value >= min && value <= max) return value;
      ctx.addIssue({ code: "custom", message: `must be an integer from ${min} to ${max}, got "${raw}"` });
      return fallback;
    });

const oneOf = <const T extends string>(fallback: T, allowed: readonly T[]) =>
  z
    .string()
    .optional()
    .transform((raw, ctx): T => {
      if (raw === undefined || raw === "") return fallback;
      if ((allowed as readonly string[]).includes(raw)) return raw as T;
      ctx.addIssue({ code: "custom", message: `must be one of ${allowed.join(", ")}, got "${raw}"` });
      return fallback;
    });

/** The contents of the file a variable names; undefined when unset or unreadable (an issue then says why). */
function readNamedFile(filePath: string | undefined, ctx: Issues): Buffer | undefined {
  if (!filePath) return undefined;
  try {
    return readFileSync(filePath);
  } catch (error) {
    ctx.addIssue({ code: "custom", message: `names a file that cannot be read (${(error as NodeJS.ErrnoException).code ?? "error"}): ${filePath}` });
    return undefined;
  }
}

/** A variable naming a file whose contents are read at start-up. */
const file = () => z.string().optional().transform(readNamedFile);

/**
 * Secrets, comma- or line-separated; `#` starts a comment line. Bad entries
 * are named by position only: a secret must never reach a log.
 */
function secretEntries(text: string, ctx: Issues): string[] {
  const list = text
    .split(/[,\n]/)
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "" && !entry.startsWith("#"));
  if (text.trim() !== "" && list.length === 0) ctx.addIssue({ code: "custom", message: "is set but holds no token" });
  list.forEach((entry, i) => {
    if (entry.length < 16 || /\s/.test(entry)) ctx.addIssue({ code: "custom", message: `entry #${i + 1} must be at least 16 characters with no spaces` });
  });
  return list;
}

/** A list of secrets given in the variable itself. */
const secrets = () =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => secretEntries(raw ?? "", ctx));

/** A list of secrets in the file the variable names, one a line. */
const secretsFile = () =>
  z
    .string()
    .optional()
    .transform((filePath, ctx) => secretEntries(readNamedFile(filePath, ctx)?.toString("utf8") ?? "", ctx));

/**
 * Privacy tokens with their audit labels: `label:token` names a token, a
 * plain token is named by its fingerprint in the audit trail. The token
 * itself, without its label, must be at least 16 characters.
 */
function privacyTokenList(entries: string[], ctx: Issues): PrivacyToken[] {
  return entries.map((entry, i) => {
    const match = /^([A-Za-z0-9._-]{1,64}):(\S+)$/.exec(entry);
    if (match && match[2].length < 16) ctx.addIssue({ code: "custom", message: `entry #${i + 1} must be at least 16 characters after its label` });
    return match ? { label: match[1], token: match[2] } : { token: entry };
  });
}

const otlpEndpoint = () =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw && !/^https?:\/\/[^/]/.test(raw)) ctx.addIssue({ code: "custom", message: `must be an http:// or https:// URL, got "${raw}"` });
      return raw || undefined;
    });

/** One of two words, in any case and with spaces around, as the OpenTelemetry SDK reads its switches. */
const otelSwitch = (fallback: string, [one, other]: [string, string]) =>
  z
    .string()
    .optional()
    .transform((raw, ctx) => {
      const value = raw?.trim().toLowerCase() || fallback;
      if (value !== one && value !== other) ctx.addIssue({ code: "custom", message: `must be ${one} or ${other}, got "${raw}"` });
      return value;
    });

/**
 * Every variable the service reads, in the order of `.env.example` (which
 * documents each; a test holds the two to the same names). The OpenTelemetry
 * SDK reads its other standard `OTEL_*` variables itself. A new variable: its
 * line here, its default in `.env.example`, its field set in `toConfig`.
 */
export const environment = z.object({
  HOST: text("127.0.0.1"),
  PORT: integer(8000, 0, 65535),
  DATABASE_URL: z
    .string()
    .optional()
    .transform((raw, ctx) => {
      if (raw && !/^postgres(ql)?:\/\//.test(raw)) ctx.addIssue({ code: "custom", message: "must start with postgres:// or postgresql://" });
      return raw || undefined;
    }),
  EMBEDDED_DATA_DIR: text("data/pglite").transform((dir) => path.resolve(dir)),
  DATABASE_POOL_MAX: integer(10, 1, 1000),
  INGEST_BATCH_MAX: integer(64, 1, 10_000),
  INGEST_BATCHES_IN_FLIGHT: integer(2, 1, 1000),
  WORKERS: integer(1, 1, 64),
  DEFAULT_PHONE_REGION: z
    .string()
    .optional()
    .transform((raw, ctx): PhoneRegion => {
      const region = (raw || "BR").toUpperCase();
      if (isPhoneRegion(region)) return region;
      ctx.addIssue({ code: "custom", message: `must be a two-letter region code such as BR or PT, got "${raw}"` });
      return "BR";
    }),
  LOG_LEVEL: oneOf("info", [...Object.keys(pino.levels.values), "silent"]),
  LOG_FORMAT: oneOf("auto", ["auto", "json", "pretty"]),

  MAX_REQUEST_BYTES: integer(defaultInputLimits.requestMaxBytes, 1024, 64 * 1024 * 1024),
  MAX_SENDER_ID_CHARS: integer(defaultInputLimits.senderIdMaxChars, 1, 65536),
  MAX_EXTERNAL_ID_CHARS: integer(defaultInputLimits.externalIdMaxChars, 1, 65536),
  MAX_CONTENT_BYTES: integer(defaultInputLimits.contentMaxBytes, 1, 64 * 1024 * 1024),
  MAX_METADATA_BYTES: integer(defaultInputLimits.metadataMaxBytes, 2, 64 * 1024 * 1024),
  // Bounded so that walking the metadata can never exhaust the stack.
  MAX_METADATA_DEPTH: integer(defaultInputLimits.metadataMaxDepth, 1, 100),

  DATABASE_TIMEOUT_MS: integer(5_000, 100, 600_000),
  SHUTDOWN_GRACE_MS: integer(30_000, 0, 3_600_000),

  MAX_CONNECTIONS: integer(defaultServerLimits.maxConnections, 1, 1_000_000),
  HTTP2_MAX_CONCURRENT_STREAMS: integer(defaultServerLimits.http2MaxConcurrentStreams, 1, 10_000),
  HTTP2_MAX_SESSION_MEMORY_MB: integer(defaultServerLimits.http2MaxSessionMemoryMb, 1, 1_024),
  HTTP2_IDLE_TIMEOUT_MS: integer(defaultServerLimits.http2IdleTimeoutMs, 100, 86_400_000),
  REQUEST_BODY_TIMEOUT_MS: integer(defaultServerLimits.requestBodyTimeoutMs, 100, 3_600_000),
  MAX_OPEN_WATCHES: integer(defaultServerLimits.maxOpenWatches, 0, 1_000_000),

  INGEST_API_TOKENS: secrets(),
  INGEST_API_TOKENS_FILE: secretsFile(),
  FEED_API_TOKENS: secrets(),
  FEED_API_TOKENS_FILE: secretsFile(),
  // The privacy API: a scope of its own, and only behind authentication everywhere (docs/privacy.md).
  PRIVACY_API_TOKENS: z
    .string()
    .optional()
    .transform((raw, ctx) => privacyTokenList(secretEntries(raw ?? "", ctx), ctx)),
  PRIVACY_API_TOKENS_FILE: z
    .string()
    .optional()
    .transform((filePath, ctx) => privacyTokenList(secretEntries(readNamedFile(filePath, ctx)?.toString("utf8") ?? "", ctx), ctx)),
  ALLOW_UNAUTHENTICATED: oneOf("false", ["true", "false"]),

  TLS_CERT_FILE: file(),
  TLS_KEY_FILE: file(),
  TLS_CLIENT_CA_FILE: file(),

  // Origins as browsers send them: scheme, host and port only, no path.
  CORS_ALLOWED_ORIGINS: z
    .string()
    .optional()
    .transform((raw, ctx) => {
      const origins = (raw ?? "")
        .split(",")
        .map((origin) => origin.trim())
        .filter((origin) => origin !== "");
      for (const origin of origins) {
        if (origin !== "*" && !isWebOrigin(origin)) {
          ctx.addIssue({ code: "custom", message: `must list origins such as https://app.example.com (scheme, host, optional port; no path) or *, got "${origin}"` });
        }
      }
      return origins;
    }),

  FEED_POLL_INTERVAL_MS: integer(50, 5, 60_000),
  FEED_CHECKPOINT_INTERVAL_MS: integer(15_000, 100, 3_600_000),
  FEED_MAX_WATCH_STREAMS: integer(1_000, 1, 100_000),
  FEED_READ_MAX_BYTES: integer(512 * 1024, 1024, 256 * 1024 * 1024),
  FEED_BUFFER_MAX_BYTES: integer(32 * 1024 * 1024, 1024, 4 * 1024 * 1024 * 1024),
  FEED_READ_MAX_SCAN: integer(10_000, 100, 10_000_000),
  EVENT_CONTENT_RETENTION_DAYS: integer(0, 0, 36_500),

  OTEL_EXPORTER_OTLP_ENDPOINT: otlpEndpoint(),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: otlpEndpoint(),
  // Checked together below: the TRACES variant wins, and only the one in force must be OTLP over HTTP.
  OTEL_EXPORTER_OTLP_PROTOCOL: text(),
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: text(),
  OTEL_SDK_DISABLED: otelSwitch("false", ["true", "false"]),
  OTEL_TRACES_EXPORTER: otelSwitch("otlp", ["otlp", "none"]),

  // Read whether or not NATS_URL is set, so every variable is checked.
  NATS_URL: text(),
  NATS_STREAM: text("AURORA_INGEST_EVENTS"),
  NATS_SUBJECT_PREFIX: text("aurora.crm.v1.ingest_events"),
  NATS_STREAM_STORAGE: oneOf("file", ["file", "memory"]),
  NATS_STREAM_REPLICAS: integer(1, 1, 5),
  NATS_STREAM_MAX_AGE_SECONDS: integer(7 * 24 * 3600, 0, 100 * 365 * 24 * 3600),
  NATS_STREAM_DUPLICATE_WINDOW_SECONDS: integer(120, 1, 7 * 24 * 3600),
  RELAY_ENCODING: oneOf("binary", ["binary", "json"]),
  RELAY_LEADER_RETRY_MS: integer(1_000, 50, 60_000),
  RELAY_BATCH_SIZE: integer(500, 1, 10_000),
  RELAY_MAX_IN_FLIGHT: integer(2_000, 1, 100_000),
  RELAY_ACK_TIMEOUT_MS: integer(5_000, 100, 600_000),
  RELAY_POLL_MS: integer(50, 5, 60_000),

  // Channels (docs/channels.md): each route is served once its secrets are set.
  EVOLUTION_JWT_KEYS: secrets(),
  EVOLUTION_JWT_KEYS_FILE: secretsFile(),
  EVOLUTION_MAX_BODY_BYTES: integer(8 * 1024 * 1024, 64 * 1024, 64 * 1024 * 1024),
  MAILGUN_SIGNING_KEYS: secrets(),
  MAILGUN_SIGNING_KEYS_FILE: secretsFile(),
  EMAIL_MAX_BYTES: integer(10 * 1024 * 1024, 64 * 1024, 100 * 1024 * 1024),
  WHATSAPP_APP_SECRETS: secrets(),
  WHATSAPP_APP_SECRETS_FILE: secretsFile(),
  WHATSAPP_VERIFY_TOKENS: secrets(),
  WHATSAPP_VERIFY_TOKENS_FILE: secretsFile(),
  WHATSAPP_MAX_BODY_BYTES: integer(4 * 1024 * 1024, 64 * 1024, 64 * 1024 * 1024),
});

type Variables = z.output<typeof environment>;

/** The OTLP protocol in force: the TRACES variant wins, as in the OpenTelemetry SDK. */
function otlpProtocol(v: Variables): { name: string; value: string } {
  const name = v.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" : "OTEL_EXPORTER_OTLP_PROTOCOL";
  return { name, value: v[name] || "http/protobuf" };
}

/** Rules that involve more than one variable; they see every bad value as its default. */
function checkTogether(v: Variables, ctx: Issues): void {
  const problem = (variable: string, message: string) => ctx.addIssue({ code: "custom", path: [variable], message });
  const apiTokens = [...v.INGEST_API_TOKENS, ...v.INGEST_API_TOKENS_FILE];
  const feedApiTokens = [...v.FEED_API_TOKENS, ...v.FEED_API_TOKENS_FILE];
  const privacyTokens = [...v.PRIVACY_API_TOKENS, ...v.PRIVACY_API_TOKENS_FILE];
  if (privacyTokens.length > 0) {
    if (apiTokens.length === 0) problem("PRIVACY_API_TOKENS", "needs INGEST_API_TOKENS: the privacy API is served only when every route needs a token");
    privacyTokens.forEach(({ token }, i) => {
      if (apiTokens.includes(token) || feedApiTokens.includes(token)) {
        problem("PRIVACY_API_TOKENS", `entry #${i + 1} is also an ingest or feed token: a privacy token may do nothing else`);
      }
    });
  }
  if (!isLoopback(v.HOST) && apiTokens.length + feedApiTokens.length === 0 && v.ALLOW_UNAUTHENTICATED !== "true") {
    ctx.addIssue({
      code: "custom",
      message:
        `HOST=${v.HOST} is reachable from other machines but no API tokens are configured: set INGEST_API_TOKENS=<token>[,<token>...] ` +
        "or INGEST_API_TOKENS_FILE=<file with one token per line> (clients then send `Authorization: Bearer <token>`), " +
        "or set ALLOW_UNAUTHENTICATED=true to serve without authentication",
    });
  }
  if (Boolean(v.TLS_CERT_FILE) !== Boolean(v.TLS_KEY_FILE)) problem("TLS_CERT_FILE", "and TLS_KEY_FILE must be set together");
  if (v.TLS_CLIENT_CA_FILE && !v.TLS_CERT_FILE) problem("TLS_CLIENT_CA_FILE", "needs TLS_CERT_FILE and TLS_KEY_FILE");

  // Only OTLP over HTTP is built in: a collector's gRPC port (4317) is refused here rather than failing on every export.
  const protocol = otlpProtocol(v);
  if (protocol.value !== "http/protobuf" && protocol.value !== "http/json") {
    problem(protocol.name, `must be http/protobuf or http/json (OTLP over HTTP, a collector's port 4318), got "${protocol.value}"`);
  }

  if (v.NATS_URL !== "") {
    if (!/^[A-Za-z0-9_-]+$/.test(v.NATS_STREAM)) problem("NATS_STREAM", `must be letters, digits, _ or -, got "${v.NATS_STREAM}"`);
    if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(v.NATS_SUBJECT_PREFIX)) {
      problem("NATS_SUBJECT_PREFIX", `must be dot-separated tokens of letters, digits, _ or - (no wildcards), got "${v.NATS_SUBJECT_PREFIX}"`);
    }
    if (v.NATS_STREAM_MAX_AGE_SECONDS > 0 && v.NATS_STREAM_DUPLICATE_WINDOW_SECONDS > v.NATS_STREAM_MAX_AGE_SECONDS) {
      problem("NATS_STREAM_DUPLICATE_WINDOW_SECONDS", "must not exceed NATS_STREAM_MAX_AGE_SECONDS");
    }
    // Credentials may be in the URL: it is never echoed.
    for (const url of v.NATS_URL.split(",")) {
      if (!/^(nats|tls|wss?):\/\/[^\s]+$/.test(url.trim())) problem("NATS_URL", "must be nats://host:port (several: comma-separated)");
    }
  }
  const appSecrets = v.WHATSAPP_APP_SECRETS.length + v.WHATSAPP_APP_SECRETS_FILE.length;
  const verifyTokens = v.WHATSAPP_VERIFY_TOKENS.length + v.WHATSAPP_VERIFY_TOKENS_FILE.length;
  if ((appSecrets === 0) !== (verifyTokens === 0)) {
    problem("WHATSAPP_APP_SECRETS", "and WHATSAPP_VERIFY_TOKENS (or their _FILE forms) must be set together");
  }
  if (v.WORKERS > 1 && v.DATABASE_URL === undefined) {
    problem("WORKERS", "above 1 needs DATABASE_URL: the embedded database lives inside one process and cannot be shared");
  }
}

/** The checked variables in the shape the rest of the service reads. */
function toConfig(v: Variables): Config {
  const protocol = otlpProtocol(v).value;
  const tracingOff = !(v.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || v.OTEL_EXPORTER_OTLP_ENDPOINT) || v.OTEL_SDK_DISABLED === "true" || v.OTEL_TRACES_EXPORTER === "none";
  const jwtKeys = [...v.EVOLUTION_JWT_KEYS, ...v.EVOLUTION_JWT_KEYS_FILE];
  const appSecrets = [...v.WHATSAPP_APP_SECRETS, ...v.WHATSAPP_APP_SECRETS_FILE];
  return {
    host: v.HOST,
    port: v.PORT,
    databaseUrl: v.DATABASE_URL,
    embeddedDataDir: v.EMBEDDED_DATA_DIR,
    databasePoolMax: v.DATABASE_POOL_MAX,
    defaultPhoneRegion: v.DEFAULT_PHONE_REGION,
    logLevel: v.LOG_LEVEL,
    logFormat: v.LOG_FORMAT,
    limits: {
      requestMaxBytes: v.MAX_REQUEST_BYTES,
      senderIdMaxChars: v.MAX_SENDER_ID_CHARS,
      externalIdMaxChars: v.MAX_EXTERNAL_ID_CHARS,
      contentMaxBytes: v.MAX_CONTENT_BYTES,
      metadataMaxBytes: v.MAX_METADATA_BYTES,
      metadataMaxDepth: v.MAX_METADATA_DEPTH,
    },
    databaseTimeoutMs: v.DATABASE_TIMEOUT_MS,
    shutdownGraceMs: v.SHUTDOWN_GRACE_MS,
    apiTokens: [...v.INGEST_API_TOKENS, ...v.INGEST_API_TOKENS_FILE],
    feedApiTokens: [...v.FEED_API_TOKENS, ...v.FEED_API_TOKENS_FILE],
    privacyTokens: [...v.PRIVACY_API_TOKENS, ...v.PRIVACY_API_TOKENS_FILE],
    feed: {
      pollIntervalMs: v.FEED_POLL_INTERVAL_MS,
      checkpointIntervalMs: v.FEED_CHECKPOINT_INTERVAL_MS,
      maxWatchStreams: v.FEED_MAX_WATCH_STREAMS,
      readMaxBytes: v.FEED_READ_MAX_BYTES,
      bufferMaxBytes: v.FEED_BUFFER_MAX_BYTES,
      readMaxScan: v.FEED_READ_MAX_SCAN,
    },
    tls: v.TLS_CERT_FILE && v.TLS_KEY_FILE ? { cert: v.TLS_CERT_FILE, key: v.TLS_KEY_FILE, clientCa: v.TLS_CLIENT_CA_FILE } : undefined,
    ingestBatch: { maxBatch: v.INGEST_BATCH_MAX, maxInFlight: v.INGEST_BATCHES_IN_FLIGHT },
    workers: v.WORKERS,
    serverLimits: {
      maxConnections: v.MAX_CONNECTIONS,
      http2MaxConcurrentStreams: v.HTTP2_MAX_CONCURRENT_STREAMS,
      http2MaxSessionMemoryMb: v.HTTP2_MAX_SESSION_MEMORY_MB,
      http2IdleTimeoutMs: v.HTTP2_IDLE_TIMEOUT_MS,
      requestBodyTimeoutMs: v.REQUEST_BODY_TIMEOUT_MS,
      maxOpenWatches: v.MAX_OPEN_WATCHES,
    },
    corsAllowedOrigins: v.CORS_ALLOWED_ORIGINS,
    tracing: tracingOff ? undefined : { protocol: protocol === "http/json" ? "http/json" : "http/protobuf" },
    eventContentRetentionDays: v.EVENT_CONTENT_RETENTION_DAYS,
    relay:
      v.NATS_URL === ""
        ? undefined
        : {
            natsUrl: v.NATS_URL,
            stream: v.NATS_STREAM,
            subjectPrefix: v.NATS_SUBJECT_PREFIX,
            storage: v.NATS_STREAM_STORAGE,
            replicas: v.NATS_STREAM_REPLICAS,
            maxAgeSeconds: v.NATS_STREAM_MAX_AGE_SECONDS,
            duplicateWindowSeconds: v.NATS_STREAM_DUPLICATE_WINDOW_SECONDS,
            encoding: v.RELAY_ENCODING,
            leaderRetryMs: v.RELAY_LEADER_RETRY_MS,
            batchSize: v.RELAY_BATCH_SIZE,
            maxInFlight: v.RELAY_MAX_IN_FLIGHT,
            ackTimeoutMs: v.RELAY_ACK_TIMEOUT_MS,
            pollMs: v.RELAY_POLL_MS,
          },
    whatsapp:
      appSecrets.length > 0
        ? { appSecrets, verifyTokens: [...v.WHATSAPP_VERIFY_TOKENS, ...v.WHATSAPP_VERIFY_TOKENS_FILE], maxBodyBytes: v.WHATSAPP_MAX_BODY_BYTES }
        : undefined,
    evolution: jwtKeys.length > 0 ? { jwtKeys, maxBodyBytes: v.EVOLUTION_MAX_BODY_BYTES } : undefined,
    email: { maxBytes: v.EMAIL_MAX_BYTES, mailgunSigningKeys: [...v.MAILGUN_SIGNING_KEYS, ...v.MAILGUN_SIGNING_KEYS_FILE] },
  };
}

// `when`: the checks across variables run even after a single variable failed.
const configSchema = environment.superRefine(checkTogether, { when: () => true }).transform(toConfig);

/**
 * Reads and validates the environment. Collects every problem before failing,
 * so an operator fixes them all in one go instead of one per restart.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const result = configSchema.safeParse(env);
  if (!result.success) throw new ConfigError(result.error.issues.map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")} ${issue.message}` : issue.message)));
  return result.data;
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
