import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { IngestEventKind, IngestEventSchema, type IngestEvent } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import type { FeedEvent } from "./read-feed.js";

/** A stored status as the contract names it. */
export const STATUS_TO_PROTO: Record<FeedEvent["status"], IngestEventStatus> = {
  RECEIVED: IngestEventStatus.RECEIVED,
  LINKED: IngestEventStatus.LINKED,
  ERROR: IngestEventStatus.ERROR,
};

/** A stored kind as the contract names it. */
export const KIND_TO_PROTO: Record<FeedEvent["kind"], IngestEventKind> = {
  MESSAGE: IngestEventKind.MESSAGE,
  STATUS: IngestEventKind.STATUS,
  SYSTEM: IngestEventKind.SYSTEM,
  ERASURE: IngestEventKind.ERASURE,
};

/** The `IngestEvent` message of a feed event, as the feed's RPCs and the relay send it. */
export function toIngestEventMessage(event: FeedEvent): IngestEvent {
  return create(IngestEventSchema, {
    id: event.id,
    source: event.source,
    senderId: event.senderId,
    content: event.content,
    metadata: event.metadata as IngestEvent["metadata"],
    externalId: event.externalId ?? undefined,
    contactId: event.contactId ?? "",
    status: STATUS_TO_PROTO[event.status],
    error: event.error ?? "",
    createdAt: timestampFromDate(event.createdAt),
    traceParent: event.traceParent ?? "",
    kind: KIND_TO_PROTO[event.kind],
  });
}
