import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { isMessage } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, createContextValues, type ContextValues, type Interceptor } from "@connectrpc/connect";
import { codeFromString, codeToString } from "@connectrpc/connect/protocol-connect";
import { IngestMessageRequestSchema } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { feedReadKey, ingestResultKey, requestLoggerKey } from "../context-keys.js";
import { maskSenderId, type Logger } from "./logger.js";
import type { Metrics } from "./metrics.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** The header that carries a request's id, in and out. */
export const REQUEST_ID_HEADER = "x-request-id";

/** What is known about one request by the time its response ends. */
interface RequestRecord {
  id: string;
  /** The request's logger, bound to its id: created on first use, since most requests never log but their one line. */
  readonly log: Logger;
  /** `/package.Service/Method`, once a Connect handler took the request. */
  procedure?: string;
  /** Connect code as a string (`ok`, `invalid_argument`, …), once known. */
  code?: string;
  /** Safe, non-personal facts handlers left for the log line. */
  fields: Record<string, unknown>;
}

const requestRecordKey = createContextKey<RequestRecord | undefined>(undefined, { description: "request being observed" });

/** The observed request's id and the fields its log line will carry (e.g. its trace id), if it is observed. */
export function observedRequest(values: ContextValues): Pick<RequestRecord, "id" | "fields"> | undefined {
  return values.get(requestRecordKey);
}

/**
 * Codes that mean the server failed (OpenTelemetry's gRPC conventions): such
 * a request is logged as a warning, and its server span marked as an error.
 */
const SERVER_FAULTS = new Set([Code.Unknown, Code.DeadlineExceeded, Code.Unimplemented, Code.Internal, Code.Unavailable, Code.DataLoss]);

export const isServerFault = (code: Code | undefined): boolean => code !== undefined && SERVER_FAULTS.has(code);

export interface RequestObserverOptions {
  logger: Logger;
  metrics: Metrics;
  /** The route a path belongs to, as logs and metrics name it (a procedure, a plain route's declared path); undefined: `unmatched`. */
  labelOf(path: string): string | undefined;
  /** Every RPC procedure, so requests Connect rejects before any handler runs still get their procedure. */
  procedures: ReadonlySet<string>;
  /** Procedures and routes that probes and scrapers call all day: logged at debug, not info. */
  quiet: ReadonlySet<string>;
}

/** Watches every request: gives it an id, and when its response ends writes one log line and updates the metrics. */
export interface RequestObserver {
  /** Call first for every request: assigns the request id and echoes it in the response. */
  begin(req: Request, res: Response): void;
  /** Context values for Connect handlers: the request's record and logger. */
  contextValues(req: Request): ContextValues;
  /** The request's logger (bound to its id), for handlers outside Connect. */
  logOf(req: Request): Logger;
  /** Records the procedure, the outcome and the ingest result; goes outermost. */
  interceptor: Interceptor;
}

/**
 * One log line per request with procedure, protocol, code, duration, request
 * id and, for ingest, the event id and masked sender; never the message
 * content, its metadata or a full sender id.
 */
export function createRequestObserver(options: RequestObserverOptions): RequestObserver {
  const { logger, metrics } = options;
  const { procedures, quiet } = options;
  const records = new WeakMap<Request, RequestRecord>();
  // prom-client hashes a label set on every call; each set's child is looked up once.
  const countRequest = cachedByLabels((labels: { procedure: string; protocol: string; code: string }) => metrics.requests.labels(labels));
  const timeRequest = cachedByLabels((labels: { procedure: string; protocol: string }) => metrics.requestDuration.labels(labels));

  return {
    begin(req, res) {
      const started = process.hrtime.bigint();
      const incoming = req.headers[REQUEST_ID_HEADER];
      const id = typeof incoming === "string" && /^[\w.:@/+=-]{1,128}$/.test(incoming) ? incoming : randomUUID();
      let log: Logger | undefined;
      const record: RequestRecord = {
        id,
        get log() {
          return (log ??= logger.child({ requestId: id }));
        },
        fields: {},
      };
      records.set(req, record);
      res.setHeader(REQUEST_ID_HEADER, id);
      const path = (req.url ?? "/").split("?")[0];
      const contentType = String(req.headers["content-type"] ?? "");

      res.once("close", () => {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        // Connect may answer before any handler runs (bad JSON, wrong content
        // type); the server may have rewritten the URL to the procedure's.
        const target = (req.url ?? "/").split("?")[0];
        const procedure = record.procedure ?? (procedures.has(target) ? target : undefined);
        const protocol = procedure ? protocolOf(contentType) : "http";
        const code = procedure
          ? (record.code ?? grpcStatusHeader(res) ?? (res.writableFinished ? codeFromHttpStatus(res.statusCode) : "canceled"))
          : String(res.statusCode);
        const route = procedure ? undefined : options.labelOf(path);
        const label = procedure ?? route ?? "unmatched";
        countRequest({ procedure: label, protocol, code }, `${label} ${protocol} ${code}`).inc();
        timeRequest({ procedure: label, protocol }, `${label} ${protocol}`).observe(seconds);

        // Refused strangers are counted, not logged at info: a flood of them must not flood the logs.
        const refused = code === "unauthenticated" || res.statusCode === 401;
        const level = quiet.has(label) || refused ? "debug" : isServerFault(codeFromString(code)) || res.statusCode >= 500 ? "warn" : "info";
        const method = bounded(req.method ?? "", 16);
        const shownPath = procedure || route === path ? path : bounded(path, 100);
        // The request's own line needs no child logger: it names the request id itself.
        (log ?? logger)[level](
          {
            ...(log === undefined && { requestId: id }),
            method,
            ...(path !== procedure && { path: shownPath }),
            ...(procedure && { procedure }),
            protocol,
            code,
            httpStatus: res.statusCode,
            durationMs: Math.round(seconds * 10_000) / 10,
            ...record.fields,
          },
          `${method} ${shownPath} ${code}`,
        );
      });
    },

    logOf(req) {
      return records.get(req)?.log ?? logger;
    },

    contextValues(req) {
      const record = records.get(req);
      const values = createContextValues();
      return record ? withLazyRequestLogger(values.set(requestRecordKey, record), record) : values;
    },

    interceptor: (next) => async (req) => {
      const record = req.contextValues.get(requestRecordKey);
      if (!record) return next(req);
      record.procedure = `/${req.service.typeName}/${req.method.name}`;
      if (!req.stream && isMessage(req.message, IngestMessageRequestSchema)) {
        // Recorded before validation: only in a form that is safe and short whatever was sent.
        record.fields.source = SOURCE_PATTERN.test(req.message.source) ? req.message.source : "(invalid)";
        record.fields.sender = maskSenderId(req.message.senderId);
      }
      try {
        const res = await next(req);
        // Counts only; a stream's keep growing until its log line is written.
        const feedRead = req.contextValues.get(feedReadKey);
        if (feedRead) record.fields.feed = feedRead;
        const ingested = req.contextValues.get(ingestResultKey);
        if (ingested) {
          Object.assign(record.fields, { eventId: ingested.eventId, eventStatus: ingested.status });
          if (ingested.duplicate) {
            // A replayed retry: nothing was stored.
            record.fields.duplicate = true;
            metrics.duplicates.inc();
          } else {
            metrics.eventsStored.inc({ status: ingested.status });
          }
          if (ingested.contactCreated) metrics.contactsCreated.inc();
        }
        if (!res.stream) {
          record.code = "ok";
          // Connect encodes the answer after the handler returned; when that
          // fails it aborts the call with the error it then answers.
          req.signal.addEventListener("abort", () => answerFailed(record, req.signal.reason), { once: true });
          return res;
        }
        return { ...res, message: observeStream(res.message, record) };
      } catch (error) {
        record.code = codeToString(ConnectError.from(error).code);
        throw error;
      }
    },
  };
}

/** Records an answer Connect could not encode (a message too large for a string, say) as what the client got. */
function answerFailed(record: RequestRecord, reason: unknown): void {
  if (!(reason instanceof ConnectError)) return;
  record.code = codeToString(reason.code);
  record.log.error({ err: reason.cause ?? reason }, "the answer could not be encoded");
}

/** The `source` rule of the proto (a lower-case token): anything else is not logged as sent. */
const SOURCE_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;

/** A client-chosen value cut to `max` characters, marked when cut. */
function bounded(value: string, max: number): string {
  return value.length <= max ? value : `${value.slice(0, max)}…`;
}

/**
 * Context values that answer `requestLoggerKey` with the request's logger,
 * made only when something asks for it (an error logged on the request's
 * behalf): most requests never do.
 */
function withLazyRequestLogger(values: ContextValues, record: RequestRecord): ContextValues {
  const lazy: ContextValues = {
    get: <T>(key: Parameters<ContextValues["get"]>[0]) => (key === requestLoggerKey ? record.log : values.get(key)) as T,
    set(key, value) {
      values.set(key, value);
      return lazy;
    },
    delete(key) {
      values.delete(key);
      return lazy;
    },
  };
  return lazy;
}

/** A function that returns the metric child for a label set, made once per distinct `key`. */
function cachedByLabels<Labels, Child>(make: (labels: Labels) => Child): (labels: Labels, key: string) => Child {
  const children = new Map<string, Child>();
  return (labels, key) => {
    let child = children.get(key);
    if (child === undefined) children.set(key, (child = make(labels)));
    return child;
  };
}

async function* observeStream<T>(messages: AsyncIterable<T>, record: RequestRecord): AsyncIterable<T> {
  try {
    yield* messages;
    record.code = "ok";
  } catch (error) {
    record.code = codeToString(ConnectError.from(error).code);
    throw error;
  }
}

/** The RPC protocol, told by the request's content type. */
function protocolOf(contentType: string): "grpc" | "grpc-web" | "connect" {
  if (contentType.startsWith("application/grpc-web")) return "grpc-web";
  if (contentType.startsWith("application/grpc")) return "grpc";
  return "connect";
}

/** The code of a gRPC answer given before any handler ran (HTTP 200 with `grpc-status` in the headers, e.g. a missing token). */
function grpcStatusHeader(res: Response): string | undefined {
  const status = res.getHeader("grpc-status");
  if (status === undefined) return undefined;
  return Number(status) === 0 ? "ok" : codeToString(Number(status));
}

/**
 * The code of a request answered before any handler ran (a malformed body,
 * a wrong content type or method, a refused credential), from its HTTP status.
 */
function codeFromHttpStatus(status: number): string {
  if (status < 300) return "ok";
  return HTTP_STATUS_CODES[status] ?? (status < 500 ? "failed_precondition" : "internal");
}

const HTTP_STATUS_CODES: Record<number, string> = {
  400: "invalid_argument",
  401: "unauthenticated",
  403: "permission_denied",
  404: "unimplemented",
  405: "unimplemented",
  408: "deadline_exceeded",
  413: "resource_exhausted",
  415: "unimplemented",
  429: "resource_exhausted",
  503: "unavailable",
  504: "deadline_exceeded",
};
