import type { ServiceImpl } from "@connectrpc/connect";
import { IngestEventStatus, type IngestService } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { ingestMessage, type IngestDependencies } from "./ingest-message.js";

const eventStatusToProto = {
  RECEIVED: IngestEventStatus.RECEIVED,
  LINKED: IngestEventStatus.LINKED,
  ERROR: IngestEventStatus.ERROR,
} as const;

/** The IngestService RPC handlers: map the request to the command's input, run it, map the result back. */
export function createIngestService(dependencies: IngestDependencies): ServiceImpl<typeof IngestService> {
  return {
    async ingestMessage(request) {
      const result = await ingestMessage(dependencies, {
        source: request.source,
        senderId: request.senderId,
        content: request.content,
        metadata: request.metadata ?? {},
      });
      return {
        eventId: result.eventId,
        contactId: result.contactId ?? "",
        status: "persisted",
        eventStatus: eventStatusToProto[result.status],
        error: result.error ?? "",
      };
    },
  };
}
