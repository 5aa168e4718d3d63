import type { ConnectRouter } from "@connectrpc/connect";
import type { Sequelize } from "sequelize-typescript";
import { IngestEventService } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { PrivacyService } from "../../gen/aurora/crm/v1/privacy_service_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import type { DatabaseHealth } from "../db/database-health.js";
import type { FeedHub } from "../feed/feed-hub.js";
import { createHealthService } from "./health-service.js";
import type { PhoneRegion } from "../ingest/identity/phone-number.js";
import type { BatcherOptions } from "../ingest/ingest-batcher.js";
import type { IngestMessage } from "../ingest/ingest-message.js";
import { createIngestEventService } from "./ingest-event-service.js";
import { createIngestService } from "./ingest-service.js";
import { createPrivacyService } from "./privacy-service.js";
import type { PrivacyToken } from "../privacy/token-labels.js";
import { registerReflection } from "./reflection-service.js";
import type { Tracing } from "../observability/tracing.js";
import type { OpenStreams } from "./stream-limits.js";

/** Everything the RPC handlers need, created by the entry point and handed in. */
export interface ServiceDependencies {
  sequelize: Sequelize;
  /** Region whose national numbers a WhatsApp id without country code is read as. */
  defaultPhoneRegion: PhoneRegion;
  health: DatabaseHealth;
  /** The cap on open watches, shared by every streaming service; shut down with the server. */
  streams: OpenStreams;
  /** Group commit of ingest writes (batch size, batches at once, batch-size observer). */
  ingestBatch?: Partial<BatcherOptions>;
  /** This process's watch hub: serves WatchIngestEvents, and is told of each local commit. */
  feedHub: FeedHub;
  /** OpenTelemetry tracing; when absent no tracing code runs at all. */
  tracing?: Tracing;
  /** The ingest command, when the caller shares it with other routes (the webhooks); built here otherwise. */
  ingestMessage?: IngestMessage;
  /** Tokens of the privacy API; none or absent: PrivacyService is not served at all. */
  privacyTokens?: readonly PrivacyToken[];
}

/** The services on the router, besides reflection, which lists them and itself. */
export const SERVICES = [IngestService, IngestEventService, Health];

/** The services served with these dependencies: PrivacyService only when privacy tokens are configured. */
export function servedServices(dependencies: Pick<ServiceDependencies, "privacyTokens">) {
  return dependencies.privacyTokens?.length ? [...SERVICES, PrivacyService] : SERVICES;
}

/** Builds the service implementations once; the function registers them on a Connect router (any number of times). */
export function routes(dependencies: ServiceDependencies) {
  const ingest = createIngestService({ ...dependencies, feedNotifier: dependencies.feedHub }, dependencies.ingestMessage);
  const ingestEvents = createIngestEventService(dependencies);
  const health = createHealthService(dependencies.health, [IngestService.typeName, IngestEventService.typeName], dependencies.streams);
  const privacyTokens = dependencies.privacyTokens ?? [];
  const privacy = privacyTokens.length ? createPrivacyService({ ...dependencies, privacyTokens }) : undefined;
  return (router: ConnectRouter) => {
    router.service(IngestService, ingest);
    router.service(IngestEventService, ingestEvents);
    router.service(Health, health);
    if (privacy) router.service(PrivacyService, privacy);
    registerReflection(router, servedServices(dependencies));
  };
}
