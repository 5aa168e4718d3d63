import type { ConnectRouter } from "@connectrpc/connect";
import type { Sequelize } from "sequelize-typescript";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import type { DatabaseHealth } from "./health/database-health.js";
import { createHealthService } from "./health/health-service.js";
import type { PhoneRegion } from "./identity/phone-number.js";
import { createIngestService } from "./ingest/ingest-service.js";
import { registerReflection } from "./reflection/reflection-service.js";

/** Everything the RPC handlers need, created by the entry point and handed in. */
export interface ServiceDependencies {
  sequelize: Sequelize;
  /** Region whose national numbers a WhatsApp id without country code is read as. */
  defaultPhoneRegion: PhoneRegion;
  health: DatabaseHealth;
}

/** The services on the router, besides reflection, which lists them and itself. */
export const SERVICES = [IngestService, Health];

/** Registers the services on a Connect router. */
export function routes(dependencies: ServiceDependencies) {
  return (router: ConnectRouter) => {
    router.service(IngestService, createIngestService(dependencies));
    router.service(Health, createHealthService(dependencies.health, [IngestService.typeName]));
    registerReflection(router, SERVICES);
  };
}
