import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorToJson } from "@connectrpc/connect/protocol-connect";
import { setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { IngestEventService } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { PrivacyService } from "../../gen/aurora/crm/v1/privacy_service_pb.js";

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
 * What a token may do: send messages (`ingest`), read the event feed
 * (`feed`), which carries personal data, or answer data subjects' requests
 * (`privacy`, a scope of its own: docs/privacy.md).
 */
export type Scope = "ingest" | "feed" | "privacy";

/** Bearer tokens by scope; a token in several lists has each of their scopes. */
export interface ApiTokens {
  ingest: readonly string[];
  feed: readonly string[];
  privacy?: readonly string[];
}

/**
 * The scope a path needs: `feed` for IngestEventService, `ingest` for
 * IngestService, `/ingest/message` and `/ingest/email`, `privacy` for PrivacyService;
 * undefined for what any valid token may call (reflection, `/metrics`).
 */
export function scopeOf(path: string): Scope | undefined {
  if (path.startsWith(`/${IngestEventService.typeName}/`)) return "feed";
  if (path.startsWith(`/${PrivacyService.typeName}/`)) return "privacy";
  if (path === "/ingest/message" || path === "/ingest/email" || path.startsWith(`/${IngestService.typeName}/`)) return "ingest";
  return undefined;
}

/** What a token without the scope was refused, in the answer's words. */
const DENIED: Record<Scope, string> = {
  ingest: "ingest messages",
  feed: "read the event feed",
  privacy: "call the privacy API",
};

/** The outcome of checking a request's token: allowed, no valid token, or a valid token without the scope. */
export type TokenCheck = "allowed" | "unauthenticated" | "forbidden";

/**
 * Returns a check of a request's `Authorization: Bearer <token>` header
 * against the configured tokens and the scope its path needs. Both sides are
 * hashed to SHA-256 and compared with `timingSafeEqual`, every token every
 * time, so neither a token's content nor its length shows in the response time.
 */
export function createTokenCheck(tokens: ApiTokens): (request: Request) => TokenCheck {
  const digest = (value: string) => createHash("sha256").update(value, "utf8").digest();
  const scopes = new Map<string, Set<Scope>>();
  for (const scope of ["ingest", "feed", "privacy"] as const) {
    for (const token of tokens[scope] ?? []) scopes.set(token, (scopes.get(token) ?? new Set()).add(scope));
  }
  const expected = [...scopes].map(([token, granted]) => ({ hash: digest(token), granted }));
  return (request) => {
    const path = request.url?.split("?")[0] ?? "";
    if (isOpen(path)) return "allowed";
    const match = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? "");
    const presented = digest(match?.[1] ?? "");
    let granted: Set<Scope> | undefined;
    for (const candidate of expected) if (timingSafeEqual(candidate.hash, presented)) granted = candidate.granted;
    if (!granted || match === null) return "unauthenticated";
    const needed = scopeOf(path);
    return needed === undefined || granted.has(needed) ? "allowed" : "forbidden";
  };
}

/**
 * Answers `Unauthenticated` (or, for a valid token without the scope the
 * path needs, `PermissionDenied`) in the protocol the client speaks, without
 * reading the request body: gRPC and gRPC-Web get HTTP 200 with
 * `grpc-status: 16` (7); Connect and plain JSON clients get HTTP 401 (403)
 * with `{"code":"unauthenticated"}` (`permission_denied`).
 */
export function rejectUnauthenticated(request: Request, response: Response, outcome: "unauthenticated" | "forbidden" = "unauthenticated"): void {
  const path = request.url?.split("?")[0] ?? "";
  const error =
    outcome === "forbidden"
      ? new ConnectError(`this token may not ${DENIED[scopeOf(path) ?? "ingest"]}`, Code.PermissionDenied)
      : new ConnectError("missing or invalid bearer token", Code.Unauthenticated);
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
  response.statusCode = outcome === "forbidden" ? 403 : 401;
  response.setHeader("content-type", "application/json");
  if (outcome === "unauthenticated") response.setHeader("www-authenticate", "Bearer");
  response.end(JSON.stringify(errorToJson(error, undefined)));
}
