import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ConnectionError, DatabaseError } from "sequelize";
import { DuplicateConflictError, isDataError } from "../ingest/errors.js";
import { requestLoggerKey } from "../context-keys.js";
import type { Logger } from "../observability/logger.js";
import { FeedClosedError, FeedWatchLimitError, IngestEventNotFoundError, InvalidFeedTokenError } from "../feed/errors.js";
import { InvalidAuditPageTokenError, PrivacyRequestNotFoundError } from "../privacy/errors.js";

/** The database did not answer a request within the configured time; `read`: the request only reads (Get, List). */
export class DatabaseTimeoutError extends Error {
  constructor(
    timeoutMs: number,
    readonly read = false,
  ) {
    super(read ? `the read did not finish within ${timeoutMs} ms; retry, or ask for a smaller page` : `the database did not answer within ${timeoutMs} ms`);
  }
}

/**
 * The one place that turns errors into Connect codes. Client mistakes say
 * what was wrong; a database we cannot reach is `Unavailable` (the client may
 * retry); anything else is `Internal`, logged with its cause and never sent
 * to the client.
 */
export function toConnectError(error: unknown, log: Logger): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof DuplicateConflictError) return new ConnectError(error.message, Code.AlreadyExists);
  if (error instanceof InvalidFeedTokenError || error instanceof InvalidAuditPageTokenError) return new ConnectError(error.message, Code.InvalidArgument);
  if (error instanceof IngestEventNotFoundError || error instanceof PrivacyRequestNotFoundError) return new ConnectError(error.message, Code.NotFound);
  if (error instanceof FeedWatchLimitError) return new ConnectError(error.message, Code.ResourceExhausted);
  if (error instanceof FeedClosedError) return new ConnectError(error.message, Code.Unavailable);
  if (isDataError(error)) return new ConnectError("a field holds a value the database cannot store", Code.InvalidArgument);
  // A read that ran out of time changed nothing: the client learns it was slow, not that we are down.
  if (error instanceof DatabaseTimeoutError && error.read) {
    log.warn({ err: error }, "read ran out of time");
    return new ConnectError(error.message, Code.DeadlineExceeded);
  }
  if (isDatabaseUnavailable(error)) {
    log.warn({ err: error }, "database unavailable");
    return new ConnectError("database unavailable, retry later", Code.Unavailable);
  }
  log.error({ err: error }, "internal error");
  return new ConnectError("internal error", Code.Internal);
}

/**
 * Whether an error means the database could not be reached or did not answer
 * in time, so the same request may succeed later: no connection (refused,
 * reset, timed out, pool acquire timeout), a connection dropped mid-query,
 * our own deadline, or a transient SQLSTATE: class 08 (connection
 * exception), 53 (insufficient resources), 57 (statement timeout, server
 * shutting down or restarting) and 25P03 (idle-in-transaction timeout).
 */
function isDatabaseUnavailable(error: unknown): boolean {
  if (error instanceof DatabaseTimeoutError || error instanceof ConnectionError) return true;
  const cause = (error instanceof DatabaseError ? error.original : error) as { code?: string | number; message?: string } | undefined;
  const code = String(cause?.code ?? "");
  return (
    /^(08|53|57)|^25P03$|^E(CONNREFUSED|CONNRESET|PIPE|TIMEDOUT|HOSTUNREACH|NETUNREACH|NOTFOUND)$/.test(code) ||
    /Connection terminated|Query read timeout|not queryable|timeout expired/i.test(String(cause?.message ?? ""))
  );
}

/**
 * Interceptor that applies `toConnectError` to whatever a handler throws,
 * including errors raised while a response stream is being produced. Logs go
 * to the request's logger when there is one.
 */
export function errorInterceptor(logger: Logger): Interceptor {
  return (next) => async (request) => {
    const log = request.contextValues.get(requestLoggerKey) ?? logger;
    try {
      const response = await next(request);
      if (!response.stream) return response;
      return { ...response, message: mapStreamErrors(response.message, log, request.signal) };
    } catch (error) {
      throw toConnectError(error, log);
    }
  };
}

async function* mapStreamErrors<T>(messages: AsyncIterable<T>, log: Logger, signal: AbortSignal): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (error) {
    // A client that cancels or drops its stream while we write to it is not
    // a fault of ours: the write fails (ERR_STREAM_DESTROYED) and nobody is
    // left to answer.
    if (signal.aborted || isStreamGone(error)) {
      log.info({ err: error }, "stream cancelled by the client");
      throw new ConnectError("the stream was cancelled", Code.Canceled);
    }
    throw toConnectError(error, log);
  }
}

const STREAM_GONE = new Set(["ERR_STREAM_DESTROYED", "ERR_STREAM_PREMATURE_CLOSE", "ERR_STREAM_WRITE_AFTER_END", "ERR_HTTP2_INVALID_STREAM", "ERR_HTTP2_STREAM_CANCEL"]);

/** Whether an error says the response stream was already closed or reset by the other side. */
function isStreamGone(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && STREAM_GONE.has(code);
}
