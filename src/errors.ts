import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ConnectionError, DatabaseError } from "sequelize";

/** The request itself is wrong: the caller must change it before retrying. */
export class InvalidInputError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** Something the service logs when an error is not the client's fault. */
export type ErrorLogger = (message: string, error: unknown) => void;

/**
 * The one place that turns errors into Connect codes. Client mistakes say
 * what was wrong; a database we cannot reach is `Unavailable` (the client may
 * retry); anything else is `Internal`, logged with its cause and never sent
 * to the client.
 */
export function toConnectError(error: unknown, log: ErrorLogger): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof InvalidInputError) return new ConnectError(error.message, Code.InvalidArgument);
  if (error instanceof ConnectionError) {
    log("database unreachable", error);
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
      log("database unavailable", error);
      return new ConnectError("database unavailable, retry later", Code.Unavailable);
    }
  }
  log("internal error", error);
  return new ConnectError("internal error", Code.Internal);
}

/** Interceptor that applies `toConnectError` to whatever a handler throws. */
export function errorInterceptor(log: ErrorLogger): Interceptor {
  return (next) => async (request) => {
    try {
      return await next(request);
    } catch (error) {
      throw toConnectError(error, log);
    }
  };
}
