import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import type { FeedPosition } from "../position.js";

/** What the relay last saved for a stream: the feed position of the last acknowledged event and its stream sequence. */
export interface RelayState {
  position: FeedPosition;
  streamSeq: number;
}

/** Reads the saved state of the relay to `stream`; undefined before its first save. */
export async function loadRelayState(sequelize: Sequelize, stream: string): Promise<RelayState | undefined> {
  const [row] = await sequelize.query<{ feed_xid: string; feed_seq: string; stream_seq: string }>(
    "SELECT feed_xid::text AS feed_xid, feed_seq::text AS feed_seq, stream_seq::text AS stream_seq FROM crm_feed_relay_state WHERE stream_name = $1",
    { bind: [stream], type: QueryTypes.SELECT },
  );
  return row && { position: { xid: BigInt(row.feed_xid), seq: BigInt(row.feed_seq) }, streamSeq: Number(row.stream_seq) };
}

/**
 * Saves how far the relay got. Only ever moves forward (by stream sequence),
 * so a relay that lost its leadership and saves late cannot move it back;
 * `rewind` moves it back on purpose, for a stream that itself went back.
 */
export async function saveRelayState(sequelize: Sequelize, stream: string, state: RelayState, rewind = false): Promise<void> {
  await sequelize.query(
    `INSERT INTO crm_feed_relay_state (stream_name, feed_xid, feed_seq, stream_seq) VALUES ($1, $2::xid8, $3, $4)
     ON CONFLICT (stream_name) DO UPDATE SET feed_xid = EXCLUDED.feed_xid, feed_seq = EXCLUDED.feed_seq,
       stream_seq = EXCLUDED.stream_seq, updated_at = now()
     WHERE crm_feed_relay_state.stream_seq < EXCLUDED.stream_seq OR $5`,
    { bind: [stream, state.position.xid.toString(), state.position.seq.toString(), state.streamSeq, rewind] },
  );
}

/**
 * How far behind the relay is, from its saved state: events after it (counted
 * up to `cap`) and the age of the oldest of them. Any replica can read it,
 * active or not.
 */
export async function relayBacklog(
  sequelize: Sequelize,
  stream: string,
  cap = 1_000_000,
): Promise<{ events: number; oldestCreatedAt: Date | null }> {
  const [row] = await sequelize.query<{ events: string; oldest: Date | null }>(
    `WITH state AS (
       SELECT coalesce((SELECT feed_xid FROM crm_feed_relay_state WHERE stream_name = $1), '0'::xid8) AS xid,
              coalesce((SELECT feed_seq FROM crm_feed_relay_state WHERE stream_name = $1), 0) AS seq
     ), pending AS (
       SELECT e.created_at FROM crm_ingest_events e, state
       WHERE (e.feed_xid, e.feed_seq) > (state.xid, state.seq)
       ORDER BY e.feed_xid, e.feed_seq
       LIMIT $2
     )
     SELECT count(*)::text AS events, min(created_at) AS oldest FROM pending`,
    { bind: [stream, cap], type: QueryTypes.SELECT },
  );
  return { events: Number(row?.events ?? 0), oldestCreatedAt: row?.oldest ? new Date(row.oldest) : null };
}
