import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import type { Logger } from "../observability/logger.js";

/** What a bearer token may do: send messages, read the event feed (personal data), or answer privacy requests. */
export type Scope = "ingest" | "feed" | "privacy";

/**
 * Who may call a route:
 * - `open`: anyone, without a token (health and readiness checks);
 * - `token`: any valid bearer token, whatever its scopes (reflection, metrics);
 * - a scope: a valid token that has it;
 * - `provider`: the route proves its caller itself (an HMAC over the raw
 *   body, a provider's own token): the bearer token check is skipped.
 * When no token is configured at all, every route is open.
 */
export type Access = "open" | "token" | Scope | "provider";

/** A plain HTTP request as a `PlainRoute` sees it. */
export interface PlainRequest {
  method: string;
  /** The path, without the query. */
  path: string;
  /** The value of the path's `:name` parameter, when the route has one. */
  params: Record<string, string>;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  /** The request's logger (it carries the request id). */
  log: Logger;
  /** Whether the caller sent a valid bearer token (always true when no token is configured): an open route may show it more. */
  holdsToken(): boolean;
}

/** A plain HTTP answer. */
export interface PlainReply {
  status: number;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
}

/**
 * A plain HTTP route that reads its own raw body (a provider's webhook, a
 * probe). The transport checks the method, the access and the body's size
 * and arrival time; `handle` gets the exact bytes sent, so a signature over
 * them can be verified.
 */
export interface PlainRoute {
  kind: "plain";
  /** Methods accepted; any other is answered 405 with `Allow`. */
  methods: readonly string[];
  /**
   * An exact path (`/healthz`), one ending in a parameter that takes one path
   * segment (`/webhooks/evolution/:instance`), or one ending in `:name*`, a
   * parameter that takes the rest of the path, slashes included.
   */
  path: string;
  access: Access;
  /** Longest body read, in bytes; a longer one is answered 413. 0 or absent: the body is not read. */
  maxBodyBytes?: number;
  /** Called all day by probes or scrapers: logged at debug, not info. */
  quiet?: boolean;
  handle(request: PlainRequest, rawBody: Buffer): PlainReply | Promise<PlainReply>;
}

/**
 * A plain route that reads its body and writes its answer itself (the
 * providers' webhook plumbing, src/channels/webhook-route.ts). The table
 * still declares its path, methods and access; prefer `PlainRoute`.
 */
export interface NodeRoute {
  kind: "node";
  methods: readonly string[];
  path: string;
  access: Access;
  quiet?: boolean;
  serve(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse, context: { log: Logger; note(fields: Record<string, unknown>): void }): void;
}

/** An RPC service, served by Connect in every protocol on `/<package.Service>/<Method>`. */
export interface RpcRoute {
  kind: "rpc";
  service: DescService;
  access: Access;
  /** Methods (by name) whose access differs from the service's. */
  methodAccess?: Readonly<Record<string, Access>>;
  /** The service implementation (a Connect `ServiceImpl`, possibly partial). */
  implementation: object;
  quiet?: boolean;
}

/**
 * One RPC method served on a path of its own over Connect's JSON protocol,
 * for clients that post plain JSON (`POST /ingest/message`): snake_case
 * answers with every field present, and plain HTTP statuses (413 for a body
 * too large, 408 for one too slow) instead of Connect's 429 and 504.
 */
export interface RpcAliasRoute {
  kind: "alias";
  method: "POST";
  path: string;
  access: Access;
  procedure: DescMethod;
  quiet?: boolean;
}

/** A line of the route table. */
export type Route = PlainRoute | NodeRoute | RpcRoute | RpcAliasRoute;

/** What a request's path matched, with the route's label for logs and metrics. */
export type RouteMatch =
  | { route: PlainRoute | NodeRoute; label: string; params: Record<string, string> }
  | { route: RpcRoute; label: string; params?: undefined }
  | { route: RpcAliasRoute; label: string; params?: undefined };

/** The route table, indexed for requests. */
export interface Routes {
  readonly all: readonly Route[];
  /** The route a path belongs to; undefined for an unknown path. An RPC service owns every path under its name. */
  match(path: string): RouteMatch | undefined;
  /** Every RPC procedure path (`/package.Service/Method`). */
  readonly procedures: ReadonlySet<string>;
  /** Labels (procedures and plain paths) logged at debug. */
  readonly quiet: ReadonlySet<string>;
  /** The paths served, as the answer to an unknown path names them. */
  readonly servedPaths: readonly string[];
}

/** Who may call what a path matched: the method's own access when its service declares one, else the route's. */
export function accessOf(match: RouteMatch | undefined, path: string): Access | undefined {
  if (match?.route.kind !== "rpc") return match?.route.access;
  return match.route.methodAccess?.[path.slice(path.lastIndexOf("/") + 1)] ?? match.route.access;
}

/** The procedure path of an RPC method. */
export function procedurePath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** Indexes a route table; throws on two routes for one path, so a collision shows at start-up. */
export function indexRoutes(all: readonly Route[]): Routes {
  const exact = new Map<string, RouteMatch>();
  const prefixed: Array<{ prefix: string; param: string; rest: boolean; route: PlainRoute | NodeRoute }> = [];
  const services = new Map<string, RpcRoute>();
  const claim = (path: string, match: RouteMatch) => {
    if (exact.has(path)) throw new Error(`two routes for ${path}`);
    exact.set(path, match);
  };
  for (const route of all) {
    if (route.kind === "rpc") {
      if (services.has(route.service.typeName)) throw new Error(`two routes for ${route.service.typeName}`);
      services.set(route.service.typeName, route);
      continue;
    }
    if (route.kind === "alias") {
      claim(route.path, { route, label: route.path });
      continue;
    }
    const parameter = /^(\/.*\/):(\w+)(\*?)$/.exec(route.path);
    if (parameter) prefixed.push({ prefix: parameter[1], param: parameter[2], rest: parameter[3] === "*", route });
    else claim(route.path, { route, label: route.path, params: {} });
  }
  const procedures = new Set([...services.values()].flatMap((route) => route.service.methods.map(procedurePath)));
  const quiet = new Set(
    all.flatMap((route) => (!route.quiet ? [] : route.kind === "rpc" ? route.service.methods.map(procedurePath) : [route.path])),
  );
  const plainLines = all.flatMap((route) =>
    route.kind === "rpc" ? [] : [`${route.kind === "alias" ? route.method : route.methods[0]} ${route.path}`],
  );
  return {
    all,
    procedures,
    quiet,
    servedPaths: [...plainLines, `the RPCs ${[...procedures].join(", ")}`],
    match(path) {
      const found = exact.get(path);
      if (found) return found;
      const service = /^\/([^/]+)\//.exec(path)?.[1];
      const rpc = service === undefined ? undefined : services.get(service);
      if (rpc) return { route: rpc, label: procedures.has(path) ? path : "unmatched" };
      for (const { prefix, param, rest, route } of prefixed) {
        const value = path.startsWith(prefix) ? path.slice(prefix.length) : "";
        const decoded = value === "" || (!rest && value.includes("/")) ? undefined : decodePathSegment(value);
        if (decoded !== undefined) return { route, label: route.path, params: { [param]: decoded } };
      }
      return undefined;
    },
  };
}

function decodePathSegment(value: string): string | undefined {
  try {
    return decodeURIComponent(value);
  } catch {
    return undefined;
  }
}
