import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError, cors, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import corsMiddleware from "cors";
import { defaultInputLimits, type InputLimits } from "../config.js";
import { errorInterceptor } from "../interceptors/errors.js";
import { deadlineInterceptor } from "../interceptors/request-deadline.js";
import { tracingInterceptor } from "../interceptors/tracing.js";
import { validationInterceptors } from "../interceptors/validation.js";
import type { Logger } from "../observability/logger.js";
import type { Metrics } from "../observability/metrics.js";
import { createRequestObserver, observedRequest, REQUEST_ID_HEADER } from "../observability/request-observer.js";
import type { Tracing } from "../observability/tracing.js";
import { connectionKey } from "../services/stream-limits.js";
import { createTokenCheck, refusal, type ApiTokens } from "./auth.js";
import { acceptedCompressions } from "./compression.js";
import { answerEarly } from "./early-answers.js";
import { withReadableErrors, type ErrorAnswerOptions } from "./error-answers.js";
import { servePlainRoute } from "./plain-routes.js";
import { limitRequestBody, type RequestBodyLimits } from "./request-size.js";
import { accessOf, indexRoutes, procedurePath, type Route, type RpcAliasRoute } from "./route-table.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

export interface RequestHandlerOptions {
  /** The route table (src/routes.ts). */
  routes: readonly Route[];
  log: Logger;
  metrics: Metrics;
  /** Request size limits; the defaults when omitted. */
  limits?: InputLimits;
  /** Bearer tokens by scope; when any is set, every route but the open ones needs one. None at all: no authentication. */
  tokens?: ApiTokens;
  /** Longest a request may wait on the database before it is answered `Unavailable`. */
  requestTimeoutMs?: number;
  /** Longest a client may take to send a request body before it is answered `deadline_exceeded`. */
  bodyTimeoutMs: number;
  /** Web origins whose pages may call the service (CORS); `*` for any; none or empty: no cross-origin access. */
  corsAllowedOrigins?: string[];
  /** OpenTelemetry tracing of RPCs; absent: none. */
  tracing?: Tracing;
}

/**
 * The one handler behind every connection, in the order a request meets it:
 * the observer (request id, log line, metrics), CORS (preflights answered
 * here, before the token: browsers send none with them), the route table's
 * match and the access it declares (checked before the body is read), then
 * the route: a plain route, or Connect, which serves the RPCs and their
 * plain JSON aliases. An unknown path is answered here, naming the paths served.
 */
export function createRequestHandler(options: RequestHandlerOptions): (req: Request, res: Response) => void {
  const routes = indexRoutes(options.routes);
  // One log line and the metrics for every request; probes and scrapes log at debug.
  const observer = createRequestObserver({
    logger: options.log,
    metrics: options.metrics,
    labelOf: (path) => routes.match(path)?.label,
    procedures: routes.procedures,
    quiet: routes.quiet,
  });
  const limits = options.limits ?? defaultInputLimits;
  const interceptors = [observer.interceptor, errorInterceptor(options.log), ...validationInterceptors(limits)];
  // Inside the observer and outside the error mapping, so spans see the code the client gets.
  if (options.tracing) interceptors.splice(1, 0, tracingInterceptor(options.tracing));
  if (options.requestTimeoutMs) interceptors.push(deadlineInterceptor(options.requestTimeoutMs));
  const checkToken = createTokenCheck(options.tokens ?? {});
  const registerRoutes = (router: ConnectRouter) => {
    for (const route of options.routes) {
      // Each implementation was typed against its service where it was made (src/routes.ts).
      if (route.kind === "rpc") router.service(route.service, route.implementation);
    }
  };
  const adapterOptions = {
    acceptCompression: acceptedCompressions,
    interceptors,
    // The connection, so streaming calls can be capped per connection (stream-limits.ts).
    contextValues: (req: Request) => observer.contextValues(req).set(connectionKey, "stream" in req ? req.stream.session : req.socket),
    // readMaxBytes refuses a larger body, or one that decompresses larger, before it is parsed (resource_exhausted).
    readMaxBytes: limits.requestMaxBytes,
  };
  // JSON bodies must be UTF-8: a fatal decoder refuses other bytes
  // (invalid_argument) where the default one would store U+FFFD instead.
  // (textDecoder reaches Connect's JSON serialization, though its option type omits it.)
  // An unknown field is refused, not skipped: a mistyped `externalID` would
  // otherwise drop the idempotency key without a word.
  const jsonOptions = { ignoreUnknownFields: false, textDecoder: new TextDecoder("utf-8", { fatal: true }) };
  // An unknown path, or an unknown method of a known service, is `unimplemented`, naming the paths served.
  const answerUnknownPath = (req: Request, res: Response) => {
    const path = (req.url ?? "/").split("?")[0];
    const error = new ConnectError(`no such path: ${req.method} ${path}; this service serves ${routes.servedPaths.join(", ")}`, Code.Unimplemented);
    answerEarly(req, res, error);
  };
  const connectHandler = connectNodeAdapter({
    ...adapterOptions,
    routes: withAnswerRules(registerRoutes, { bodyTimeoutMs: options.bodyTimeoutMs }),
    jsonOptions,
    fallback: (req, res) => answerUnknownPath(req, res as unknown as Response),
  });
  // A plain JSON alias is its RPC over the Connect protocol, answered in
  // snake_case with every field present, the shape those gateways read, and
  // with plain HTTP's statuses: 413 for a body too large, 408 for one too slow.
  const aliasHandlers = new Map(
    options.routes
      .filter((route): route is RpcAliasRoute => route.kind === "alias")
      .map((route) => [
        route,
        connectNodeAdapter({
          ...adapterOptions,
          routes: withAnswerRules(registerRoutes, { bodyTimeoutMs: options.bodyTimeoutMs, plainHttpStatuses: true }, { plainPath: route.path }),
          jsonOptions: { ...jsonOptions, useProtoFieldName: true, alwaysEmitImplicit: true },
        }),
      ]),
  );
  // Browsers on the allowed origins may call every protocol a browser can
  // speak (Connect, gRPC-Web), with a bearer token, a request id and the
  // W3C trace context that OpenTelemetry's browser instrumentation sends.
  const origins = options.corsAllowedOrigins ?? [];
  const allowCors = origins.length
    ? corsMiddleware({
        origin: origins.includes("*") ? "*" : origins,
        methods: [...cors.allowedMethods],
        allowedHeaders: [...cors.allowedHeaders, "Authorization", REQUEST_ID_HEADER, "traceparent", "tracestate"],
        exposedHeaders: [...cors.exposedHeaders, REQUEST_ID_HEADER],
        maxAge: 7200,
      })
    : undefined;

  const serve = (req: Request, res: Response) => {
    const path = (req.url ?? "/").split("?")[0];
    const match = routes.match(path);
    const declared = accessOf(match, path);
    const access = checkToken(req, declared);
    if (access !== "allowed") {
      return answerEarly(req, res, refusal(access, declared), access === "unauthenticated" ? { headers: { "www-authenticate": "Bearer" } } : {});
    }
    if (!match) return answerUnknownPath(req, res);
    const route = match.route;
    if (match.route.kind === "node") {
      const record = observedRequest(observer.contextValues(req));
      match.route.serve(req, res, { log: observer.logOf(req), note: (fields) => record && Object.assign(record.fields, fields) });
    } else if (match.route.kind === "plain") {
      const holdsToken = () => checkToken(req, "token") === "allowed";
      void servePlainRoute(match.route, match.params ?? {}, req, res, { log: observer.logOf(req), bodyTimeoutMs: options.bodyTimeoutMs, holdsToken });
    } else if (route.kind === "alias") {
      req.url = procedurePath(route.procedure);
      aliasHandlers.get(route)!(req, res);
    } else {
      connectHandler(req, res);
    }
  };
  return (req, res) => {
    observer.begin(req, res);
    if (!allowCors) return serve(req, res);
    // Answers a preflight itself; for any other request it adds the headers, then goes on.
    allowCors(req, res, () => serve(req, res));
  };
}

/**
 * Registers the routes, then wraps every handler so that it bounds how its
 * body is received (request-size.ts) and says clearly what went wrong
 * (error-answers.ts). The Node adapter reads the handlers after this returns.
 */
function withAnswerRules(register: (router: ConnectRouter) => void, limits: RequestBodyLimits, answers?: ErrorAnswerOptions) {
  return (router: ConnectRouter) => {
    register(router);
    router.handlers.forEach((handler, index) => {
      router.handlers[index] = Object.assign(limitRequestBody(withReadableErrors(handler, answers), limits), handler);
    });
  };
}
