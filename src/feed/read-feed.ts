import type { Sequelize } from "sequelize-typescript";
import type { IngestEventKind, IngestEventStatus } from "../db/models/IngestEvent.js";
import { QueryTypes } from "sequelize";
import { FEED_HORIZON } from "./horizon.js";
import { FEED_START, type FeedFilters, type FeedPosition } from "./position.js";

/** A stored event as the feed delivers it: every stored field, and its position. */
export interface FeedEvent {
  id: string;
  source: string;
  /** The sender exactly as received. */
  senderId: string;
  content: string;
  metadata: Record<string, unknown>;
  externalId: string | null;
  contactId: string | null;
  status: IngestEventStatus;
  error: string | null;
  createdAt: Date;
  /** The W3C traceparent of the request that stored the event; null when it came without a trace. */
  traceParent: string | null;
  /** What the event records: a message, a delivery status, a provider's notice or an erasure. */
  kind: IngestEventKind;
  /** Where this event is in the feed; a consumer that processed it resumes after it. */
  position: FeedPosition;
  /** What it weighs against a byte budget (EVENT_BYTES), when read by readFeed. */
  bytes?: number;
}

export interface ReadFeedOptions {
  /** Read the events after this position; null for the beginning. */
  after: FeedPosition | null;
  /** The most events to return. */
  limit: number;
  /**
   * The most bytes of events to return (EVENT_BYTES, summed): the read ends
   * early at the event that would pass it, but always returns at least one
   * event. Absent: no budget.
   */
  maxBytes?: number;
  /**
   * The most events a filtered read examines: when that many pass without
   * filling the page, it ends with fewer events, or none, and a position
   * after the last one examined, so a filter that no index serves never
   * scans the table. Absent: no bound.
   */
  maxScan?: number;
  filters?: FeedFilters;
}

/** What one read returned. */
export interface FeedPage {
  events: FeedEvent[];
  /** The position after the last event returned (`after` when none was). */
  position: FeedPosition;
  /** The read stopped at its limit, its byte budget or its scan bound: more events may follow `position` now. */
  more: boolean;
  /**
   * The horizon this read used (FEED_HORIZON): when `more` is false, it saw
   * every event before this position. It can be lower than an earlier
   * read's (docs/feed.md, "The horizon"), never higher than what is safe.
   */
  horizon: FeedPosition;
}

/**
 * Reads the next deliverable events after a position, in commit order, and
 * the position after the last one returned (`after` when none was).
 *
 * Deliverable means written by a transaction below the horizon of this
 * statement's own snapshot (FEED_HORIZON: the oldest transaction still
 * running that may belong to this database): every transaction of this
 * database below it has ended, so the set of events below it never changes
 * again; an event whose transaction is still open, or that committed while an
 * older transaction of this database is still open, waits. Reading past a position therefore
 * never skips an event that commits later (docs/feed.md). One statement,
 * one index range scan on (feed_xid, feed_seq).
 */
export async function readFeed(sequelize: Sequelize, options: ReadFeedOptions): Promise<FeedPage> {
  const after = options.after ?? FEED_START;
  const filters = options.filters ?? {};
  const filtered = filters.source !== undefined || filters.contactId !== undefined || filters.status !== undefined;
  const rows = await select<(EventRow & { bytes: number; found: string; scan_end: string | null; horizon: string }) | { id: null; scan_end: string | null; horizon: string }>(
    sequelize,
    READ_FEED,
    [
      after.xid.toString(),
      after.seq.toString(),
      options.limit,
      filters.source ?? null,
      filters.contactId ?? null,
      filters.status ?? null,
      options.maxBytes ?? null,
      // Unfiltered, the page is the scan: bounding it by the limit keeps the plan an index range scan.
      filtered ? (options.maxScan ?? null) : options.limit,
    ],
  );
  const events = rows.flatMap((row) => (row.id === null ? [] : [{ ...toFeedEvent(row), bytes: Number(row.bytes) }]));
  const found = Number((rows[0] as { found?: string }).found ?? 0);
  // Events start at feed_seq 1, so (horizon, 0) comes before every event of the horizon's transaction.
  const horizon = { xid: BigInt(rows[0].horizon), seq: 0n };
  if (found === options.limit || events.length < found) return { events, position: events.at(-1)!.position, more: true, horizon };
  // Every match of the scan was returned; a scan that reached its bound continues after its last row.
  const scanEnd = rows[0].scan_end;
  if (scanEnd) {
    const [xid, seq] = scanEnd.split("/");
    return { events, position: { xid: BigInt(xid), seq: BigInt(seq) }, more: true, horizon };
  }
  return { events, position: events.at(-1)?.position ?? after, more: false, horizon };
}

/**
 * Where "from now" starts: just before the oldest transaction still running
 * (the horizon), so every deliverable event comes before it and every event
 * of a transaction that commits later comes after it. It reads no table, so
 * no lock, long scan or queue of statements can move it past events that
 * commit after the stream asked for it (it used to read the last deliverable
 * event, and a slow read skipped what committed meanwhile).
 */
export async function currentFeedPosition(sequelize: Sequelize): Promise<FeedPosition> {
  const [row] = await select<{ horizon: string }>(sequelize, HORIZON, []);
  return { xid: BigInt(row.horizon), seq: 0n };
}

/** One stored event by id, deliverable yet or not; undefined when there is none. */
export async function findFeedEvent(sequelize: Sequelize, id: string): Promise<FeedEvent | undefined> {
  const [row] = await select<EventRow>(sequelize, FIND_EVENT, [id]);
  return row && toFeedEvent(row);
}

// The position comes back as text (xid8 and bigint exceed a JS number) under
// names of its own: an output column named feed_xid would be what ORDER BY
// feed_xid sorts by, as text. Other readers of whole events (the privacy
// export) select the same columns.
export const FEED_EVENT_COLUMNS = `id, source, sender_id, content, metadata, external_id, contact_id, status, error, created_at, trace_parent, kind,
  feed_xid::text AS position_xid, feed_seq::text AS position_seq`;

/**
 * What an event weighs against a read's byte budget: its content and its
 * metadata in bytes of UTF-8, and a fixed allowance for the other fields
 * (ids, sender, error, trace; each bounded). Read from the stored sizes
 * (octet_length of a large value reads its header, not the value), so a
 * read sends only the events within its budget over the wire. In memory a
 * string takes at most twice its UTF-8 bytes; as JSON, control characters
 * take six (docs/hardening.md).
 */
const EVENT_BYTES = "octet_length(content) + octet_length(metadata::text) + 4096";

/**
 * The page read; exported so a test can check its plan stays an index range
 * scan. The filters apply to at most $8 events of the range (all when
 * null); `found` is how many matched within the limit; the page is cut where
 * their running size passes the budget ($7), after the first event.
 * `scan_end` is the position of the $8th event of the range, when a filtered
 * scan is bounded and reached it (read only then); `horizon` is the horizon
 * the read used. One row with a null id when no event is returned.
 */
export const READ_FEED = `
    WITH horizon AS MATERIALIZED (SELECT ${FEED_HORIZON} AS xid)
    SELECT ${FEED_EVENT_COLUMNS}, bytes, found, ends.scan_end, (SELECT xid::text FROM horizon) AS horizon FROM (
      SELECT CASE WHEN $8::bigint IS NOT NULL AND NOT ($4::text IS NULL AND $5::uuid IS NULL AND $6::text IS NULL) THEN (
        SELECT feed_xid::text || '/' || feed_seq::text FROM crm_ingest_events
        WHERE (feed_xid, feed_seq) > ($1::xid8, $2::bigint) AND feed_xid < (SELECT xid FROM horizon)
        ORDER BY feed_xid, feed_seq OFFSET $8::bigint - 1 LIMIT 1) END AS scan_end) ends
    LEFT JOIN (
      SELECT page.*, sum(bytes) OVER w AS running, row_number() OVER w AS n, count(*) OVER () AS found
      FROM (
        SELECT *, ${EVENT_BYTES} AS bytes FROM (
          SELECT * FROM crm_ingest_events
          WHERE (feed_xid, feed_seq) > ($1::xid8, $2::bigint) AND feed_xid < (SELECT xid FROM horizon)
          ORDER BY feed_xid, feed_seq
          LIMIT $8::bigint) scanned
        WHERE ($4::text IS NULL OR source = $4::text)
          AND ($5::uuid IS NULL OR contact_id = $5::uuid)
          AND ($6::text IS NULL OR status = $6::text)
        ORDER BY feed_xid, feed_seq
        LIMIT $3) page
      WINDOW w AS (ORDER BY feed_xid, feed_seq)) sized
    ON $7::bigint IS NULL OR running <= $7::bigint OR n = 1
    ORDER BY feed_xid, feed_seq`;

// The same horizon as READ_FEED's, read without touching the table.
const HORIZON = `SELECT (${FEED_HORIZON})::text AS horizon`;

const FIND_EVENT = `SELECT ${FEED_EVENT_COLUMNS} FROM crm_ingest_events WHERE id = $1::uuid`;

/** Runs a read with bind parameters and returns its rows. */
function select<Row extends object>(sequelize: Sequelize, sql: string, bind: unknown[]): Promise<Row[]> {
  return sequelize.query<Row>(sql, { bind, type: QueryTypes.SELECT });
}

/** A row read with FEED_EVENT_COLUMNS. */
export interface EventRow {
  id: string;
  source: string;
  sender_id: string;
  content: string;
  metadata: Record<string, unknown>;
  external_id: string | null;
  contact_id: string | null;
  status: IngestEventStatus;
  error: string | null;
  created_at: Date;
  trace_parent: string | null;
  kind: IngestEventKind;
  position_xid: string;
  position_seq: string;
}

/** A row read with FEED_EVENT_COLUMNS as a feed event. */
export function toFeedEvent(row: EventRow): FeedEvent {
  return {
    id: row.id,
    source: row.source,
    senderId: row.sender_id,
    content: row.content,
    metadata: row.metadata,
    externalId: row.external_id,
    contactId: row.contact_id,
    status: row.status,
    error: row.error,
    createdAt: row.created_at,
    traceParent: row.trace_parent,
    kind: row.kind,
    position: { xid: BigInt(row.position_xid), seq: BigInt(row.position_seq) },
  };
}
