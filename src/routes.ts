import type { Sequelize } from "sequelize-typescript";
import { createWebhookHandler, type WebhookRoute } from "./channels/webhook-route.js";
import { createWhatsappWebhook } from "./channels/whatsapp/cloud-api-webhook.js";
import { createMailgunRoute, createMtaRoute } from "./channels/email/email-routes.js";
import { createEvolutionWebhook } from "./channels/evolution/evolution-webhook.js";
import type { EmailConfig, EvolutionWebhookConfig, InputLimits, WhatsappWebhookConfig } from "./config.js";
import { createIngestMessage } from "./ingest/ingest-message.js";
import type { Logger } from "./observability/logger.js";
import { IngestEventService } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { PrivacyService } from "../gen/aurora/crm/v1/privacy_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import type { DatabaseHealth } from "./db/database-health.js";
import type { FeedHub } from "./feed/feed-hub.js";
import { FeedHorizon, type HorizonStatus } from "./feed/horizon.js";
import type { RelayStatus } from "./feed/relay/feed-relay.js";
import type { PhoneRegion } from "./ingest/identity/phone-number.js";
import type { BatcherOptions } from "./ingest/ingest-batcher.js";
import type { Metrics } from "./observability/metrics.js";
import type { Tracing } from "./observability/tracing.js";
import { createHealthService } from "./services/health-service.js";
import { createIngestEventService } from "./services/ingest-event-service.js";
import { createIngestService } from "./services/ingest-service.js";
import { createPrivacyService } from "./services/privacy-service.js";
import type { PrivacyToken } from "./privacy/token-labels.js";
import type { ErasureRunner } from "./privacy/erase-subject.js";
import { createReflectionServices } from "./services/reflection-service.js";
import type { OpenStreams } from "./services/stream-limits.js";
import { probeRoutes } from "./transport/http-probes.js";
import type { NodeRoute, PlainRoute, Route, RpcRoute } from "./transport/route-table.js";

/** Everything the routes' handlers need, created by the entry point and handed in. */
export interface RouteDependencies {
  sequelize: Sequelize;
  /** Region whose national numbers a WhatsApp id without country code is read as. */
  defaultPhoneRegion: PhoneRegion;
  health: DatabaseHealth;
  metrics: Metrics;
  /** The cap on open watches, shared by every streaming service; shut down with the server. */
  streams: OpenStreams;
  /** Group commit of ingest writes (batch size, batches at once). */
  ingestBatch?: Partial<BatcherOptions>;
  /** This process's watch hub: serves WatchIngestEvents, and is told of each local commit. */
  feedHub: FeedHub;
  /** OpenTelemetry tracing; when absent no tracing code runs at all. */
  tracing?: Tracing;
  /** The feed relay, when on: `/readyz` shows its state (it never makes the service unready). */
  relay?: { status(): RelayStatus };
  /** Whether the feed's horizon tells databases apart, for `/readyz`; read from `sequelize` when not given. */
  feedHorizon?: { status(): Promise<HorizonStatus> };
  /** Further plain routes, appended to the table (tests use it to try the plumbing). */
  extraRoutes?: PlainRoute[];
  log: Logger;
  /** Limits on one event, which a webhook's items are held to too. */
  limits: InputLimits;
  /** Longest a client may take to send a body (`REQUEST_BODY_TIMEOUT_MS`). */
  bodyTimeoutMs: number;
  /** Meta's WhatsApp webhook, served at /webhooks/whatsapp when configured. */
  whatsapp?: WhatsappWebhookConfig;
  /** Evolution API's webhook, served under /webhooks/evolution/ when its JWT keys are configured. */
  evolution?: EvolutionWebhookConfig;
  /** Inbound e-mail: /ingest/email for our MTA (ingest scope), and Mailgun's route when its signing keys are configured. */
  email?: EmailConfig;
  /** Tokens of the privacy API; none or absent: PrivacyService is not served at all. */
  privacyTokens?: readonly PrivacyToken[];
  /** The database's digest key (readDigestKey): erased messages' retries are recognised by it. */
  digestKey: Buffer;
  /** Carries out erasures requested through the privacy API. */
  erasures: ErasureRunner;
}

/**
 * The one route table: every path this service answers, who may call it
 * (docs/one-port-server.md) and what answers it. Authentication, the probes,
 * the request log and metrics, and the answer to an unknown path all derive
 * from it. Built once per server.
 */
export function routeTable(dependencies: RouteDependencies): Route[] {
  const batchSize = dependencies.metrics.ingestBatchSize;
  // One ingest command (one group-commit batcher) for the RPCs and the webhooks alike.
  const ingestDependencies = {
    ...dependencies,
    feedNotifier: dependencies.feedHub,
    ingestBatch: { ...dependencies.ingestBatch, onBatch: (size: number) => batchSize.observe(size) },
  };
  const ingestMessage = createIngestMessage(ingestDependencies);
  const ingest = createIngestService(ingestDependencies, ingestMessage);
  // Providers' webhooks, each served only once its secrets are configured.
  const webhooks: WebhookRoute[] = [];
  if (dependencies.whatsapp) webhooks.push(createWhatsappWebhook(dependencies.whatsapp, dependencies));
  const email = dependencies.email ?? { maxBytes: 10 * 1024 * 1024, mailgunSigningKeys: [] };
  if (dependencies.evolution) webhooks.push(createEvolutionWebhook(dependencies.evolution, { limits: dependencies.limits }));
  if (email.mailgunSigningKeys.length > 0) {
    webhooks.push(createMailgunRoute(email, { sequelize: dependencies.sequelize, limits: dependencies.limits }));
  }
  const serveWebhook = createWebhookHandler(webhooks, { ...dependencies, ingest: ingestMessage });
  const webhookRoutes = webhooks.map(
    (webhook): NodeRoute => ({
      kind: "node",
      methods: ["POST", "GET"],
      // A webhook that serves every path under its own parses the rest itself (Evolution adds /<event>).
      path: webhook.path.endsWith("/") ? `${webhook.path}:path*` : webhook.path,
      access: "provider",
      serve: (req, res, context) => void serveWebhook(req, res, context.note),
    }),
  );
  // The MTA's door is ours: it takes an ingest token, like /ingest/message.
  const mta = createMtaRoute(email, { limits: dependencies.limits });
  const serveMta = createWebhookHandler([mta], { ...dependencies, ingest: ingestMessage });
  webhookRoutes.push({ kind: "node", methods: ["POST"], path: mta.path, access: "ingest", serve: (req, res, context) => void serveMta(req, res, context.note) });
  const services: RpcRoute[] = [
    { kind: "rpc", service: IngestService, access: "ingest", implementation: ingest },
    { kind: "rpc", service: IngestEventService, access: "feed", implementation: createIngestEventService(dependencies) },
  ];
  const privacyTokens = dependencies.privacyTokens ?? [];
  if (privacyTokens.length > 0) {
    services.push({ kind: "rpc", service: PrivacyService, access: "privacy", implementation: createPrivacyService({ ...dependencies, privacyTokens }) });
  }
  const served = services.map((route) => route.service.typeName);
  const health: RpcRoute = {
    kind: "rpc",
    service: Health,
    access: "open",
    // Probes keep Check; a Watch holds one of few slots (MAX_OPEN_WATCHES), so strangers may not take them.
    methodAccess: { Watch: "token" },
    quiet: true,
    implementation: createHealthService(dependencies.health, served, dependencies.streams),
  };
  const reflection = createReflectionServices([...services.map((route) => route.service), Health]).map(
    ({ service, implementation }): RpcRoute => ({ kind: "rpc", service, access: "token", implementation }),
  );
  return [
    // The IngestMessage RPC as plain JSON, for gateways that post JSON (docs/one-port-server.md).
    { kind: "alias", method: "POST", path: "/ingest/message", access: "ingest", procedure: IngestService.method.ingestMessage },
    ...probeRoutes(dependencies.health, dependencies.metrics, dependencies.relay, dependencies.feedHorizon ?? new FeedHorizon(dependencies.sequelize)),
    ...webhookRoutes,
    ...(dependencies.extraRoutes ?? []),
    ...services,
    health,
    ...reflection,
  ];
}
