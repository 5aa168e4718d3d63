import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Access, Scope } from "./route-table.js";

type Request = IncomingMessage | Http2ServerRequest;

/** Bearer tokens by scope; a token in several lists has each of their scopes. */
export type ApiTokens = Partial<Record<Scope, readonly string[]>>;

/** The outcome of checking a request's token: allowed, no valid token, or a valid token without the scope. */
export type TokenCheck = "allowed" | "unauthenticated" | "forbidden";

/** What a token without the scope was refused, in the answer's words. */
const DENIED: Record<Scope, string> = {
  ingest: "ingest messages",
  feed: "read the event feed",
  privacy: "call the privacy API",
};

/**
 * Returns a check of a request's `Authorization: Bearer <token>` header
 * against the configured tokens and the access its route declares (an
 * unknown path needs any valid token). Both sides are hashed to SHA-256 and
 * compared with `timingSafeEqual`, every token every time, so neither a
 * token's content nor its length shows in the response time. With no token
 * configured at all, everything is allowed.
 */
export function createTokenCheck(tokens: ApiTokens): (request: Request, access: Access | undefined) => TokenCheck {
  const digest = (value: string) => createHash("sha256").update(value, "utf8").digest();
  const scopes = new Map<string, Set<Scope>>();
  for (const [scope, list] of Object.entries(tokens) as Array<[Scope, readonly string[] | undefined]>) {
    for (const token of list ?? []) scopes.set(token, (scopes.get(token) ?? new Set()).add(scope));
  }
  if (scopes.size === 0) return () => "allowed";
  const expected = [...scopes].map(([token, granted]) => ({ hash: digest(token), granted }));
  return (request, access) => {
    if (access === "open" || access === "provider") return "allowed";
    const match = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? "");
    const presented = digest(match?.[1] ?? "");
    let granted: Set<Scope> | undefined;
    for (const candidate of expected) if (timingSafeEqual(candidate.hash, presented)) granted = candidate.granted;
    if (!granted || match === null) return "unauthenticated";
    return access === undefined || access === "token" || granted.has(access) ? "allowed" : "forbidden";
  };
}

/** The error a refused request is answered with: `Unauthenticated`, or `PermissionDenied` for a valid token without the scope. */
export function refusal(outcome: "unauthenticated" | "forbidden", access: Access | undefined): ConnectError {
  if (outcome === "forbidden" && access !== undefined && access in DENIED) {
    return new ConnectError(`this token may not ${DENIED[access as Scope]}`, Code.PermissionDenied);
  }
  return new ConnectError("missing or invalid bearer token", Code.Unauthenticated);
}
