import { fromBinary, fromJsonString } from "@bufbuild/protobuf";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { IngestEventSchema, type IngestEvent } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { loadConfig, type RelayConfig } from "../../src/config.js";
import { FEED_POSITION_HEADER, RESUME_TOKEN_HEADER, TRACEPARENT_HEADER } from "../../src/feed/relay/feed-relay.js";
import { readFeed, type FeedEvent } from "../../src/feed/read-feed.js";

/** The relay's settings for a test: the defaults, on the given server and stream, with fast timings. */
export function relayConfig(natsUrl: string, overrides: Partial<RelayConfig> = {}): RelayConfig {
  const config = loadConfig({ NATS_URL: natsUrl }).relay!;
  return { ...config, leaderRetryMs: 200, ackTimeoutMs: 2_000, pollMs: 20, ...overrides };
}

/** One message of the stream as a consumer sees it. */
export interface StreamMessage {
  seq: number;
  subject: string;
  msgId: string | undefined;
  resumeToken: string | undefined;
  position: string | undefined;
  traceParent: string | undefined;
  event: IngestEvent;
}

/** Every message in the stream, in stream order. */
export async function readStream(natsUrl: string, stream: string, encoding: "binary" | "json" = "binary"): Promise<StreamMessage[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(stream);
    const messages: StreamMessage[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const message = await jsm.streams.getMessage(stream, { seq });
      if (!message) continue;
      messages.push({
        seq,
        subject: message.subject,
        msgId: message.header?.get("Nats-Msg-Id"),
        resumeToken: message.header?.get(RESUME_TOKEN_HEADER),
        position: message.header?.get(FEED_POSITION_HEADER),
        // A header that is not there reads as "".
        traceParent: message.header?.get(TRACEPARENT_HEADER) || undefined,
        event: encoding === "json" ? fromJsonString(IngestEventSchema, message.string()) : fromBinary(IngestEventSchema, message.data),
      });
    }
    return messages;
  } finally {
    await nc.close();
  }
}

/** The whole feed, in feed order. */
export async function wholeFeed(sequelize: Sequelize): Promise<FeedEvent[]> {
  const { events } = await readFeed(sequelize, { after: null, limit: 1_000_000 });
  return events;
}

/**
 * Checks the stream against the feed message by message: the same events, in
 * the same order, each once. Returns a description of the first difference,
 * or undefined when they match.
 */
export function auditStream(messages: StreamMessage[], feed: FeedEvent[]): string | undefined {
  const ids = messages.map((message) => message.event.id);
  const repeated = ids.filter((id, i) => ids.indexOf(id) !== i);
  if (repeated.length > 0) return `${repeated.length} event(s) in the stream more than once, first ${repeated[0]}`;
  for (let i = 0; i < Math.max(messages.length, feed.length); i++) {
    const message = messages[i];
    const event = feed[i];
    if (!message) return `stream ends after ${messages.length} messages; the feed has ${feed.length} (next: ${event.id})`;
    if (!event) return `stream has ${messages.length} messages; the feed only ${feed.length}`;
    if (message.event.id !== event.id) return `message ${i + 1} is event ${message.event.id}; the feed has ${event.id} there`;
    if (message.msgId !== event.id) return `message ${i + 1} has Nats-Msg-Id ${message.msgId}, not ${event.id}`;
    if (message.position !== `${event.position.xid}:${event.position.seq}`) return `message ${i + 1} has position ${message.position}`;
    if (message.traceParent !== (event.traceParent ?? undefined) || message.event.traceParent !== (event.traceParent ?? "")) {
      return `message ${i + 1} does not carry event ${event.id}'s trace_parent`;
    }
    if (message.event.senderId !== event.senderId || message.event.content !== event.content || message.event.source !== event.source) {
      return `message ${i + 1} does not carry event ${event.id}'s fields`;
    }
  }
  return undefined;
}

/** Stores `count` events straight into the table, as any writer would; returns their ids. */
export async function insertEvents(sequelize: Sequelize, count: number, prefix = "s"): Promise<string[]> {
  const rows = await sequelize.query<{ id: string }>(
    `INSERT INTO crm_ingest_events (source, sender_id, content, metadata)
     SELECT 'web', $1 || '-' || n, 'message ' || n, jsonb_build_object('n', n) FROM generate_series(1, $2::int) AS n RETURNING id`,
    { bind: [prefix, count], type: QueryTypes.SELECT },
  );
  return rows.map((row) => row.id);
}
