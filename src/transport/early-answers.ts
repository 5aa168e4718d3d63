import type { IncomingMessage, ServerResponse } from "node:http";
import { constants as http2Constants, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { codeToHttpStatus, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/**
 * The HTTP status of an error answered before Connect runs, for clients that
 * do not speak gRPC. Connect's own mapping, except where a plain HTTP client
 * reads the status alone: an unknown path is 404 (Connect: 501), a body that
 * did not arrive in time 408 (504), a body too large 413 (429).
 */
const EARLY_HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.Unimplemented]: 404,
  [Code.DeadlineExceeded]: 408,
  [Code.ResourceExhausted]: 413,
};

/**
 * At most this much of an unread HTTP/1.1 request body is read and dropped
 * after an answer, so that a client still sending a body reads the answer
 * instead of `write EPIPE` (Go's net/http reads up to 256 KiB for the same
 * reason). A longer body, or one still arriving after `DRAIN_TIMEOUT_MS`,
 * is not waited for: the connection is closed.
 */
export const DRAIN_MAX_BYTES = 256 * 1024;
const DRAIN_TIMEOUT_MS = 2_000;

export interface EarlyAnswerOptions {
  /** An HTTP status other than the code's own (405 for a method not accepted). */
  status?: number;
  /** Headers for non-gRPC clients (`www-authenticate`, `allow`). */
  headers?: Record<string, string>;
}

/**
 * Answers `error` before Connect runs (a refused token, an unknown path, a
 * plain route's refusal, a request without authority), in the protocol the
 * client speaks, without reading the body: gRPC and gRPC-Web get HTTP 200
 * with a trailers-only `grpc-status` and `grpc-message` percent-encoded as
 * the gRPC spec says; anyone else the Connect error JSON with its HTTP
 * status. What happens to a body still arriving: `afterAnswer`.
 */
export function answerEarly(req: Request, res: Response, error: ConnectError, options: EarlyAnswerOptions = {}): void {
  try {
    // A body announced larger than what is drained, or one too slow to wait
    // for, ends the HTTP/1.1 connection; the client is told so.
    const tooLong = !(Number(req.headers["content-length"] ?? 0) <= DRAIN_MAX_BYTES) || error.code === Code.DeadlineExceeded;
    if (req.httpVersionMajor === 1 && !req.complete && tooLong) {
      res.setHeader("connection", "close");
    }
    write(req, res, error, options);
  } catch {
    // The stream or socket is already gone (or broken): nothing left to answer.
    res.destroy();
  }
}

function write(req: Request, res: Response, error: ConnectError, options: EarlyAnswerOptions): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const contentType = String(req.headers["content-type"] ?? "");
  // Headers set before end() (not writeHead) go out with the end of the
  // stream: a proper gRPC "trailers-only" answer on HTTP/2.
  if (/^application\/grpc(-web(-text)?)?([+;]|$)/i.test(contentType)) {
    res.statusCode = 200;
    res.setHeader("content-type", contentType.split(";")[0].trim());
    grpcTrailer(error).forEach((value, name) => res.setHeader(name, value));
    res.end();
    return;
  }
  res.statusCode = options.status ?? EARLY_HTTP_STATUS[error.code] ?? codeToHttpStatus(error.code);
  res.setHeader("content-type", "application/json");
  for (const [name, value] of Object.entries(options.headers ?? {})) res.setHeader(name, value);
  res.end(errorToJsonBytes(error, {}));
}

/**
 * Once a response is complete, what becomes of a request body nobody read
 * (refused, too large, too slow): the HTTP/2 stream is closed (RST_STREAM
 * NO_ERROR, as RFC 9113 §8.1 allows); an HTTP/1.1 connection answered with
 * `Connection: close` ends; on any other HTTP/1.1 connection Node reads the
 * body on and drops it, here bounded by `DRAIN_MAX_BYTES` and
 * `DRAIN_TIMEOUT_MS`, past which the connection is closed. A stranger's
 * body is never read to its end.
 */
export function afterAnswer(req: Request, res: Response): void {
  if (req.complete) return;
  if ("stream" in req) {
    if (!req.stream.closed) req.stream.close(http2Constants.NGHTTP2_NO_ERROR);
    return;
  }
  if (String(res.getHeader("connection") ?? "").toLowerCase() === "close") {
    req.socket.destroySoon();
    return;
  }
  let read = 0;
  const cutOff = () => {
    clearTimeout(timer);
    req.off("data", count);
    req.socket.destroy();
  };
  const count = (chunk: Buffer) => {
    read += chunk.length;
    if (read > DRAIN_MAX_BYTES) cutOff();
  };
  const timer = setTimeout(cutOff, DRAIN_TIMEOUT_MS).unref();
  req.on("data", count);
  req.once("close", () => {
    clearTimeout(timer);
    req.off("data", count);
  });
  req.resume();
}

/** The gRPC status headers for an error, `grpc-message` encoded as the gRPC spec says. */
export function grpcTrailer(error: ConnectError): Headers {
  const headers = setTrailerStatus(new Headers(), error);
  headers.set("grpc-message", grpcPercentEncode(error.rawMessage));
  return headers;
}

/**
 * Percent-encodes a gRPC status message as the gRPC spec asks: `%` and the
 * UTF-8 bytes outside 0x20–0x7E, nothing else. Every gRPC client decodes
 * this: by the spec, with `decodeURIComponent` (Connect) or with `decodeURI`
 * (@grpc/grpc-js). connect-es itself encodes with `encodeURIComponent`,
 * which @grpc/grpc-js users would read as `source%3A value…`.
 */
export function grpcPercentEncode(message: string): string {
  let encoded = "";
  for (const byte of Buffer.from(message, "utf8")) {
    encoded += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return encoded;
}
