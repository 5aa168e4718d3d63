import type { ConnectRouter } from "@connectrpc/connect";
import type { Sequelize } from "sequelize-typescript";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import type { PhoneRegion } from "./identity/phone-number.js";
import { createIngestService } from "./ingest/ingest-service.js";

/** Everything the RPC handlers need, created by the entry point and handed in. */
export interface ServiceDependencies {
  sequelize: Sequelize;
  /** Region whose national numbers a WhatsApp id without country code is read as. */
  defaultPhoneRegion: PhoneRegion;
}

/** Registers the services on a Connect router. */
export function routes(dependencies: ServiceDependencies) {
  return (router: ConnectRouter) => {
    router.service(IngestService, createIngestService(dependencies));
  };
}
