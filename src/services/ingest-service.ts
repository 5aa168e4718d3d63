import type { ServiceImpl } from "@connectrpc/connect";
import { ingestResultKey, requestTraceKey } from "../context-keys.js";
import type { IngestService } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { STATUS_TO_PROTO } from "../feed/ingest-event-message.js";
import { createIngestMessage, type IngestDependencies, type IngestMessage } from "../ingest/ingest-message.js";
import { eventTraceParent } from "../observability/tracing.js";

/**
 * The IngestService RPC handlers: map the request to the command's input, run
 * it, map the result back. Create it once per server: every protocol's
 * requests then share one batcher (`ingestMessage`, when given, is that
 * command, shared with the webhook routes).
 */
export function createIngestService(dependencies: IngestDependencies, ingestMessage: IngestMessage = createIngestMessage(dependencies)): ServiceImpl<typeof IngestService> {
  return {
    async ingestMessage(request, context) {
      const trace = context.values.get(requestTraceKey);
      const result = await ingestMessage(
        {
          source: request.source,
          senderId: request.senderId,
          content: request.content,
          metadata: request.metadata ?? {},
          externalId: request.externalId ?? null,
          traceParent: eventTraceParent(dependencies.tracing, trace, context.requestHeader),
          trace,
        },
        // Cancelled or past its deadline: left out of the batch it waits for.
        context.signal,
      );
      context.values.set(ingestResultKey, result);
      return {
        eventId: result.eventId,
        contactId: result.contactId ?? "",
        status: "persisted",
        eventStatus: STATUS_TO_PROTO[result.status],
        error: result.error ?? "",
        duplicate: result.duplicate,
      };
    },
  };
}
