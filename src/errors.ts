import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ConnectionError, DatabaseError } from "sequelize";
import { requestLoggerKey, type Logger } from "./observability/logger.js";

/** The request itself is wrong: the caller must change it before retrying. */
export class InvalidInputError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/**
 * A retry named an external_id that is already stored for its source, but
 * with a different sender or content: the key was reused for another
 * message, and storing either silently would lose one of them.
 */
export class DuplicateConflictError extends Error {
  constructor(
    readonly originalEventId: string,
    readonly differingFields: string[],
  ) {
    super(
      `external_id is already stored for this source as event ${originalEventId}, ` +
        `with a different ${differingFields.join(" and ")}; send a new external_id for a new message`,
    );
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
  if (error instanceof InvalidInputError) return new ConnectError(error.message, Code.InvalidArgument);
  if (error instanceof DuplicateConflictError) return new ConnectError(error.message, Code.AlreadyExists);
  if (error instanceof ConnectionError) {
    log.warn({ err: error }, "database unreachable");
    return new ConnectError("database unavailable, retry later", Code.Unavailable);
  }
  if (error instanceof DatabaseError) {
    const sqlState = String((error.original as { code?: unknown })?.code ?? "");
    // Class 22 is "data exception": the value itself was refused (for
    // example a NUL character, which JSON allows and PostgreSQL text does not).
    if (sqlState.startsWith("22")) return new ConnectError("a field holds a value the database cannot store", Code.InvalidArgument);
    // Class 08 (connection exception) and 57P (operator intervention: the
    // server is shutting down or restarting) are transient.
    if (sqlState.startsWith("08") || sqlState.startsWith("57P")) {
      log.warn({ err: error }, "database unavailable");
      return new ConnectError("database unavailable, retry later", Code.Unavailable);
    }
  }
  log.error({ err: error }, "internal error");
  return new ConnectError("internal error", Code.Internal);
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
      return { ...response, message: mapStreamErrors(response.message, log) };
    } catch (error) {
      throw toConnectError(error, log);
    }
  };
}

async function* mapStreamErrors<T>(messages: AsyncIterable<T>, log: Logger): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (error) {
    throw toConnectError(error, log);
  }
}
