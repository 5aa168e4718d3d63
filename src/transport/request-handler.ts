import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { cors, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import corsMiddleware from "cors";
import { IngestService } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { defaultInputLimits, type EmailConfig, type EvolutionWebhookConfig, type InputLimits, type WhatsappWebhookConfig } from "../config.js";
import { createMailgunRoute, createMtaRoute, MAILGUN_MIME_PATH, MTA_EMAIL_PATH } from "../channels/email/email-routes.js";
import { createEvolutionWebhook, EVOLUTION_WEBHOOK_PATH } from "../channels/evolution/evolution-webhook.js";
import { createWebhookHandler, type WebhookRoute } from "../channels/webhook-route.js";
import { createWhatsappWebhook, WHATSAPP_WEBHOOK_PATH } from "../channels/whatsapp/cloud-api-webhook.js";
import { createIngestMessage } from "../ingest/ingest-message.js";
import { errorInterceptor } from "../interceptors/errors.js";
import { deadlineInterceptor } from "../interceptors/request-deadline.js";
import { tracingInterceptor } from "../interceptors/tracing.js";
import { validationInterceptors } from "../interceptors/validation.js";
import type { Logger } from "../observability/logger.js";
import type { Metrics } from "../observability/metrics.js";
import { createRequestObserver, observedRequest, REQUEST_ID_HEADER } from "../observability/request-observer.js";
import { REFLECTION_SERVICES } from "../services/reflection-service.js";
import { routes, servedServices, type ServiceDependencies } from "../services/routes.js";
import { createTokenCheck, rejectUnauthenticated } from "./auth.js";
import { FeedHorizon, type HorizonStatus } from "../feed/horizon.js";
import type { RelayStatus } from "../feed/relay/feed-relay.js";
import { createHttpProbes, HTTP_PROBE_ROUTES } from "./http-probes.js";
import { acceptedCompressions } from "./compression.js";
import { answerUnknownPath, withReadableErrors, type ErrorAnswerOptions } from "./error-answers.js";
import { limitRequestBody, type RequestBodyLimits } from "./request-size.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** The plain JSON route existing gateways call (docs/one-port-server.md). */
export const PLAIN_INGEST_PATH = "/ingest/message";
const INGEST_MESSAGE_PATH = `/${IngestService.typeName}/${IngestService.method.ingestMessage.name}`;

export interface RequestHandlerOptions extends ServiceDependencies {
  log: Logger;
  metrics: Metrics;
  /** Request size limits; the defaults when omitted. */
  limits?: InputLimits;
  /** Bearer tokens that may ingest; with `feedApiTokens`, required on everything but health and readiness checks. None at all: no authentication. */
  apiTokens?: string[];
  /** Bearer tokens that may read the event feed. */
  feedApiTokens?: string[];
  /** Longest a request may wait on the database before it is answered `Unavailable`. */
  requestTimeoutMs?: number;
  /** Longest a client may take to send a request body before it is answered `deadline_exceeded`. */
  bodyTimeoutMs: number;
  /** Web origins whose pages may call the service (CORS); `*` for any; none or empty: no cross-origin access. */
  corsAllowedOrigins?: string[];
  /** The feed relay, when on: `/readyz` shows its state (it never makes the service unready). */
  relay?: { status(): RelayStatus };
  /** Whether the feed's horizon tells databases apart, for `/readyz`; read from `sequelize` when not given. */
  feedHorizon?: { status(): Promise<HorizonStatus> };
  /** Meta's WhatsApp webhook, served at /webhooks/whatsapp when configured. */
  whatsapp?: WhatsappWebhookConfig;
  /** Evolution API's webhook, served under /webhooks/evolution/ when its JWT keys are configured. */
  evolution?: EvolutionWebhookConfig;
  /** Inbound e-mail: /ingest/email for our MTA (ingest scope), and Mailgun's route when its signing keys are configured. */
  email?: EmailConfig;
}

/**
 * The one handler behind every connection, in the order a request meets it:
 * the observer (request id, log line, metrics), CORS (preflights answered
 * here, before the token: browsers send none with them), the providers'
 * webhooks (src/channels/: they carry their own proof), the bearer token
 * (checked before the body is read), the plain probes, then Connect, which
 * serves the RPCs and, answered in snake_case, `POST /ingest/message`.
 */
export function createRequestHandler(options: RequestHandlerOptions): (req: Request, res: Response) => void {
  // One log line and the metrics for every request; probes and scrapes log at debug.
  const observer = createRequestObserver({
    logger: options.log,
    metrics: options.metrics,
    services: [...servedServices(options), ...REFLECTION_SERVICES],
    httpRoutes: [...HTTP_PROBE_ROUTES, WHATSAPP_WEBHOOK_PATH, MAILGUN_MIME_PATH, MTA_EMAIL_PATH],
    quiet: [...HTTP_PROBE_ROUTES, ...Health.methods.map((method) => `/${Health.typeName}/${method.name}`)],
  });
  const probes = createHttpProbes(options.health, options.metrics, options.relay, options.feedHorizon ?? new FeedHorizon(options.sequelize));
  const limits = options.limits ?? defaultInputLimits;
  const interceptors = [observer.interceptor, errorInterceptor(options.log), ...validationInterceptors(limits)];
  // Inside the observer and outside the error mapping, so spans see the code the client gets.
  if (options.tracing) interceptors.splice(1, 0, tracingInterceptor(options.tracing));
  if (options.requestTimeoutMs) interceptors.push(deadlineInterceptor(options.requestTimeoutMs));
  const tokens = { ingest: options.apiTokens ?? [], feed: options.feedApiTokens ?? [], privacy: (options.privacyTokens ?? []).map((entry) => entry.token) };
  const checkToken = tokens.ingest.length + tokens.feed.length + tokens.privacy.length > 0 ? createTokenCheck(tokens) : () => "allowed" as const;
  // The service implementations are built once and registered on both adapters.
  const ingestBatch = { ...options.ingestBatch, onBatch: (size: number) => options.metrics.ingestBatchSize.observe(size) };
  // One ingest command (one group-commit batcher) for the RPCs and the webhooks alike.
  const ingestMessage = createIngestMessage({ ...options, ingestBatch, feedNotifier: options.feedHub });
  const registerRoutes = routes({ ...options, ingestBatch, ingestMessage });
  // Providers' webhooks carry their own proof and are each served only once it is configured;
  // the MTA's door is ours and takes an ingest token like /ingest/message.
  const email = options.email ?? { maxBytes: 10 * 1024 * 1024, mailgunSigningKeys: [] };
  const webhookRoutes: WebhookRoute[] = [];
  if (options.whatsapp) webhookRoutes.push(createWhatsappWebhook(options.whatsapp, { ...options, limits }));
  if (options.evolution) webhookRoutes.push(createEvolutionWebhook(options.evolution, { limits }));
  if (email.mailgunSigningKeys.length > 0) webhookRoutes.push(createMailgunRoute(email, { sequelize: options.sequelize, limits }));
  const webhookOptions = {
    log: options.log,
    metrics: options.metrics,
    ingest: ingestMessage,
    bodyTimeoutMs: options.bodyTimeoutMs,
    note: (req: Request, fields: Record<string, unknown>) => Object.assign(observedRequest(observer.contextValues(req))?.fields ?? {}, fields),
  };
  const webhooks = createWebhookHandler(webhookRoutes, webhookOptions);
  const tokenWebhooks = createWebhookHandler([createMtaRoute(email, { limits })], webhookOptions);
  const procedures = [...servedServices(options), ...REFLECTION_SERVICES].flatMap((service) =>
    service.methods.map((method) => `/${service.typeName}/${method.name}`),
  );
  const servedPaths = [
    `POST ${PLAIN_INGEST_PATH}`,
    `POST ${MTA_EMAIL_PATH}`,
    ...webhookRoutes.map((route) => (route.path === EVOLUTION_WEBHOOK_PATH ? `POST ${route.path}<instance>` : `${route.path === WHATSAPP_WEBHOOK_PATH ? "GET and " : ""}POST ${route.path}`)),
    ...HTTP_PROBE_ROUTES.map((route) => `GET ${route}`),
    `the RPCs ${procedures.join(", ")}`,
  ];
  const adapterOptions = {
    acceptCompression: acceptedCompressions,
    interceptors,
    contextValues: observer.contextValues,
    // readMaxBytes refuses a larger body, or one that decompresses larger, before it is parsed (resource_exhausted).
    readMaxBytes: limits.requestMaxBytes,
  };
  // JSON bodies must be UTF-8: a fatal decoder refuses other bytes
  // (invalid_argument) where the default one would store U+FFFD instead.
  // (textDecoder reaches Connect's JSON serialization, though its option type omits it.)
  // An unknown field is refused, not skipped: a mistyped `externalID` would
  // otherwise drop the idempotency key without a word.
  const jsonOptions = { ignoreUnknownFields: false, textDecoder: new TextDecoder("utf-8", { fatal: true }) };
  const connectHandler = connectNodeAdapter({
    ...adapterOptions,
    routes: withAnswerRules(registerRoutes, { bodyTimeoutMs: options.bodyTimeoutMs }),
    jsonOptions,
    fallback: answerUnknownPath(servedPaths),
  });
  // `POST /ingest/message` is the IngestMessage RPC over the Connect protocol,
  // answered in snake_case with every field present, the shape those gateways read.
  // Its statuses are plain HTTP's: 413 for a body too large, 408 for one too slow.
  const plainJsonHandler = connectNodeAdapter({
    ...adapterOptions,
    routes: withAnswerRules(registerRoutes, { bodyTimeoutMs: options.bodyTimeoutMs, plainHttpStatuses: true }, { plainPath: PLAIN_INGEST_PATH }),
    jsonOptions: { ...jsonOptions, useProtoFieldName: true, alwaysEmitImplicit: true },
  });
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
    // Providers prove themselves with their own signature or JWT, never with our bearer tokens.
    if (webhooks(req, res)) return;
    const access = checkToken(req);
    if (access !== "allowed") return rejectUnauthenticated(req, res, access);
    if (probes(req, res)) return;
    if (tokenWebhooks(req, res)) return;
    if (req.url?.split("?")[0] === PLAIN_INGEST_PATH) {
      req.url = INGEST_MESSAGE_PATH;
      plainJsonHandler(req, res);
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
