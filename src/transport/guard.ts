import type { IncomingMessage, ServerResponse } from "node:http";
import { constants as http2Constants, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorToJson } from "@connectrpc/connect/protocol-connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { Logger } from "../observability/logger.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;
type Handler = (req: Request, res: Response) => void;

/**
 * Wraps the request handler so that nothing a client sends can throw out of
 * it and stop the process (an exception in a `request` event is uncaught).
 * - A request without a usable authority (no `Host` over HTTP/1.0, an empty
 *   or unparsable `Host` or `:authority`) is answered 400
 *   `invalid_argument` before it reaches Connect, which would throw turning
 *   it into a URL.
 * - Anything else the handler throws is logged and answered `internal`.
 * - Once a response is complete, a request body the handler did not read
 *   (refused too large, too slow, unauthenticated) is not waited for: the
 *   HTTP/2 stream is closed (RST_STREAM NO_ERROR, as RFC 9113 §8.1 allows)
 *   and the HTTP/1.1 connection ends, rather than reading a stranger's body
 *   to its end.
 */
export function guardRequests(handler: Handler, log: Logger): Handler {
  return (req, res) => {
    if (!hasUsableAuthority(req)) {
      answerError(req, res, new ConnectError("the request has no valid Host header or :authority", Code.InvalidArgument));
      return;
    }
    res.once("finish", () => {
      if (!req.complete) stopReading(req);
    });
    try {
      handler(req, res);
    } catch (error) {
      log.error({ err: error, method: printable(req.method), path: printable(req.url) }, "request handler failed");
      answerError(req, res, new ConnectError("internal error", Code.Internal));
    }
  };
}

/** Whether Connect can build the request's URL from its authority and path, as it does for every request. */
function hasUsableAuthority(req: Request): boolean {
  const authority = "authority" in req ? req.authority : req.headers.host;
  const scheme = "encrypted" in req.socket && req.socket.encrypted ? "https" : "http";
  return typeof authority === "string" && authority !== "" && URL.canParse(req.url ?? "", `${scheme}://${authority}`);
}

function stopReading(req: Request): void {
  if ("stream" in req) {
    if (!req.stream.closed) req.stream.close(http2Constants.NGHTTP2_NO_ERROR);
  } else {
    req.socket.destroySoon();
  }
}

/**
 * Answers `error` in the protocol the client speaks, without reading the
 * body: gRPC and gRPC-Web get a trailers-only answer with `grpc-status`,
 * anyone else the Connect error JSON with its HTTP status (400 for
 * `invalid_argument`, 500 for `internal`, 408 for `deadline_exceeded`).
 */
export function answerError(req: Request, res: Response, error: ConnectError): void {
  try {
    writeError(req, res, error);
  } catch {
    // The stream or socket is already gone (or broken): nothing left to answer.
    res.destroy();
  }
}

function writeError(req: Request, res: Response, error: ConnectError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const contentType = String(req.headers["content-type"] ?? "");
  // An HTTP/1.1 connection is closed rather than kept to drain the body.
  if (req.httpVersionMajor === 1) res.setHeader("connection", "close");
  if (/^application\/grpc(-web(-text)?)?([+;]|$)/i.test(contentType)) {
    res.statusCode = 200;
    res.setHeader("content-type", contentType.split(";")[0]);
    setTrailerStatus(new Headers(), error).forEach((value, name) => res.setHeader(name, value));
    res.end();
    return;
  }
  res.statusCode = HTTP_STATUS[error.code] ?? 500;
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify(errorToJson(error, undefined)));
}

const HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 400,
  [Code.DeadlineExceeded]: 408,
  [Code.Internal]: 500,
};

/** At most 100 characters of a value a client chose, for a log line. */
function printable(value: string | undefined): string | undefined {
  return value === undefined ? undefined : JSON.stringify(value.slice(0, 100)).slice(1, -1);
}
