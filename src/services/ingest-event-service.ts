import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { feedReadKey, type FeedReadSummary } from "../context-keys.js";
import type { Sequelize } from "sequelize-typescript";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  IngestEventSchema,
  WatchIngestEventsRequest_Start as Start,
  WatchIngestEventsResponseSchema,
  type IngestEventService,
  type WatchIngestEventsResponse,
} from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import type { IngestEventStatus as StoredStatus } from "../db/models/IngestEvent.js";
import { IngestEventNotFoundError } from "../feed/errors.js";
import type { FeedHub } from "../feed/feed-hub.js";
import { STATUS_TO_PROTO, toIngestEventMessage } from "../feed/ingest-event-message.js";
import {
  decodePageToken,
  decodeResumeToken,
  encodePageToken,
  encodeResumeToken,
  FEED_START,
  loadFeedIdentity,
  type FeedFilters,
  type FeedIdentity,
} from "../feed/position.js";
import { findFeedEvent, readFeed, type FeedEvent } from "../feed/read-feed.js";
import { preEncodedMessage, wantsBinary } from "./pre-encoded-message.js";

/** What the feed's handlers need: the database, and the process's watch hub. */
export interface IngestEventDependencies {
  sequelize: Sequelize;
  feedHub: FeedHub;
}

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;

const statusFromProto = new Map(Object.entries(STATUS_TO_PROTO).map(([stored, proto]) => [proto, stored as StoredStatus]));

/** The IngestEventService handlers: map the request to a feed read, and the events back. */
export function createIngestEventService(dependencies: IngestEventDependencies): ServiceImpl<typeof IngestEventService> {
  const { sequelize, feedHub } = dependencies;
  // Read once, when first needed (the database may be down at start-up).
  let identity: Promise<FeedIdentity> | undefined;
  const feedIdentity = () => (identity ??= loadFeedIdentity(sequelize).catch((error: unknown) => ((identity = undefined), Promise.reject(error))));
  // What every watcher of this process sends for one event: the message, and its binary encoding once a binary stream asked.
  const shared = new WeakMap<FeedEvent, { message: WatchIngestEventsResponse; encoded?: WatchIngestEventsResponse }>();
  const summary = (context: HandlerContext): FeedReadSummary => {
    const read: FeedReadSummary = { events: 0 };
    context.values.set(feedReadKey, read);
    return read;
  };

  return {
    async getIngestEvent(request, context) {
      const event = await findFeedEvent(sequelize, request.id);
      if (!event) throw new IngestEventNotFoundError(request.id);
      summary(context).events = 1;
      return { ingestEvent: toIngestEventMessage(event) };
    },

    async listIngestEvents(request, context) {
      const keys = await feedIdentity();
      const filters = filtersOf(request);
      // A resume token starts the page after any position a consumer holds (a watch's, a relayed message's).
      const after = request.pageToken
        ? decodePageToken(keys, request.pageToken, filters)
        : request.resumeToken
          ? decodeResumeToken(keys, request.resumeToken)
          : FEED_START;
      const pageSize = Math.min(request.pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
      // One more than asked tells whether another page follows; a page also
      // ends early, with a next token, when it reaches its byte budget.
      // A filtered page examines at most readMaxScan events: it may end with
      // fewer events, or none, and a next token after the last one examined.
      const read = await readFeed(sequelize, { after, limit: pageSize + 1, maxBytes: feedHub.readMaxBytes, maxScan: feedHub.readMaxScan, filters });
      const { events, more } = read;
      const page = events.slice(0, pageSize);
      const position = events.length > pageSize ? page.at(-1)!.position : read.position;
      summary(context).events = page.length;
      return {
        ingestEvents: page.map(toIngestEventMessage),
        nextPageToken: more ? encodePageToken(keys, position, filters) : "",
        resumeToken: encodeResumeToken(keys, position),
      };
    },

    async *watchIngestEvents(request, context) {
      const keys = await feedIdentity();
      const start = request.resumeToken ? decodeResumeToken(keys, request.resumeToken) : request.start === Start.NOW ? "now" : FEED_START;
      const binary = wantsBinary(context.requestHeader.get("content-type"));
      const read = { ...summary(context), checkpoints: 0 };
      context.values.set(feedReadKey, read);
      for await (const item of feedHub.watch(start, filtersOf(request), context.signal)) {
        if (!item.event) {
          read.checkpoints++;
          yield { resumeToken: encodeResumeToken(keys, item.position) };
          continue;
        }
        read.events++;
        // Every watcher of this process gets the same event object: convert, sign and encode it once.
        let converted = shared.get(item.event);
        if (!converted) {
          const message = create(WatchIngestEventsResponseSchema, {
            ingestEvent: toIngestEventMessage(item.event),
            resumeToken: encodeResumeToken(keys, item.position),
          });
          shared.set(item.event, (converted = { message }));
        }
        yield binary ? (converted.encoded ??= encodedOnce(converted.message)) : converted.message;
      }
    },
  };
}

/** The same response, its fields encoded now, so each binary stream only copies the bytes (see pre-encoded-message.ts). */
function encodedOnce(message: WatchIngestEventsResponse): WatchIngestEventsResponse {
  return preEncodedMessage(WatchIngestEventsResponseSchema, [
    { no: WatchIngestEventsResponseSchema.field.ingestEvent.number, bytes: toBinary(IngestEventSchema, message.ingestEvent!) },
    { no: WatchIngestEventsResponseSchema.field.resumeToken.number, bytes: Buffer.from(message.resumeToken) },
  ]);
}

function filtersOf(request: { source: string; contactId: string; status: IngestEventStatus }): FeedFilters {
  return {
    ...(request.source && { source: request.source }),
    ...(request.contactId && { contactId: request.contactId.toLowerCase() }),
    ...(request.status !== IngestEventStatus.UNSPECIFIED && { status: statusFromProto.get(request.status) }),
  };
}
