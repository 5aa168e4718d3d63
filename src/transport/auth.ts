import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorToJson } from "@connectrpc/connect/protocol-connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/**
 * What anyone may call without a token: health and readiness checks, which
 * probes and load balancers call without credentials. Everything else (every
 * RPC, `/ingest/message`, unknown paths) needs a token when tokens are set.
 */
export const UNAUTHENTICATED_PATHS: readonly string[] = ["/healthz", "/readyz"];
export const UNAUTHENTICATED_SERVICES: readonly string[] = ["grpc.health.v1.Health"];

const isOpen = (path: string) =>
  UNAUTHENTICATED_PATHS.includes(path) || UNAUTHENTICATED_SERVICES.some((service) => path.startsWith(`/${service}/`));

/**
 * Returns a check of a request's `Authorization: Bearer <token>` header
 * against the configured tokens. Both sides are hashed to SHA-256 and
 * compared with `timingSafeEqual`, every token every time, so neither a
 * token's content nor its length shows in the response time.
 */
export function createTokenCheck(tokens: readonly string[]): (request: Request) => boolean {
  const digest = (value: string) => createHash("sha256").update(value, "utf8").digest();
  const expected = tokens.map(digest);
  return (request) => {
    const path = request.url?.split("?")[0] ?? "";
    if (isOpen(path)) return true;
    const match = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? "");
    const presented = digest(match?.[1] ?? "");
    let valid = false;
    for (const candidate of expected) valid = timingSafeEqual(candidate, presented) || valid;
    return valid && match !== null;
  };
}

/**
 * Answers `Unauthenticated` in the protocol the client speaks, without
 * reading the request body: gRPC and gRPC-Web get HTTP 200 with
 * `grpc-status: 16`; Connect and plain JSON clients get HTTP 401 with
 * `{"code":"unauthenticated"}`.
 */
export function rejectUnauthenticated(request: Request, response: Response): void {
  const error = new ConnectError("missing or invalid bearer token", Code.Unauthenticated);
  const contentType = request.headers["content-type"] ?? "";
  // An HTTP/1.1 connection is closed rather than kept to drain a stranger's body.
  if (request.httpVersionMajor === 1) response.setHeader("connection", "close");
  // Headers set before end() (not writeHead) go out with the end of the
  // stream: a proper gRPC "trailers-only" answer on HTTP/2.
  if (/^application\/grpc(-web(-text)?)?([+;]|$)/i.test(contentType)) {
    response.statusCode = 200;
    response.setHeader("content-type", contentType);
    setTrailerStatus(new Headers(), error).forEach((value, name) => response.setHeader(name, value));
    response.end();
    return;
  }
  response.statusCode = 401;
  response.setHeader("content-type", "application/json");
  response.setHeader("www-authenticate", "Bearer");
  response.end(JSON.stringify(errorToJson(error, undefined)));
}
