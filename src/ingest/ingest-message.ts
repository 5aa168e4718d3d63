import type { Context, Span } from "@opentelemetry/api";
import { Op, QueryTypes, UniqueConstraintError, type Transaction } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import type { Tracing } from "../observability/tracing.js";
import { sqlState } from "../db/sql-state.js";
import { DuplicateConflictError, isDataError } from "./errors.js";
import type { FeedNotifier } from "../feed/feed-notifier.js";
import { IngestEvent, type IngestEventKind, type IngestEventStatus } from "../db/models/IngestEvent.js";
import { metadataJson } from "./metadata-json.js";
import { cachedSenderIdentity, type IdentityOptions } from "./identity/sender-identity.js";
import { IngestBatcher, type BatcherOptions } from "./ingest-batcher.js";
import { createBatchTracer } from "./batch-span.js";
import { externalIdDigest } from "../privacy/digest-key.js";

/** What the command works with: the database, the identity rules' settings and how messages are batched. */
export interface IngestDependencies extends IdentityOptions {
  sequelize: Sequelize;
  /** Group commit settings; defaults: batches of up to 64, 2 at a time. */
  ingestBatch?: Partial<BatcherOptions>;
  /** Told after each event this process commits, so the feed's watchers see it at once. */
  feedNotifier?: FeedNotifier;
  /** OpenTelemetry tracing: one database span per batch write. Absent: no tracing code runs. */
  tracing?: Tracing;
  /**
   * The database's digest key (readDigestKey): a message whose (source,
   * external_id) digest an erasure kept is answered as a duplicate and
   * stores nothing. Absent: no message is checked (tests of other things).
   */
  digestKey?: Buffer;
}

/** One inbound message, as the RPC handler hands it over (already validated). */
export interface IngestMessageInput {
  source: string;
  senderId: string;
  content: string;
  metadata: Record<string, unknown>;
  /** The message's own id, unique per source; null when the client sent none. */
  externalId: string | null;
  /** The W3C traceparent stored with the event (docs/tracing.md); null or absent: none. */
  traceParent?: string | null;
  /**
   * What the event records; absent: an inbound message. Only a message may
   * create a contact: other kinds link to the sender's contact when it
   * exists, and are stored RECEIVED otherwise.
   */
  kind?: IngestEventKind;
  /**
   * Why this item cannot be stored as what it claims to be (a webhook item
   * over our limits or of an unreadable shape): stored as an ERROR event
   * with this reason, linked to no contact, instead of being dropped.
   */
  unusable?: string;
  /** The request's span, when tracing is on: the batch's database span links to it. */
  trace?: Context;
}

/** What was stored: the event, its status and, when linked, the contact. */
export interface IngestMessageResult {
  eventId: string;
  contactId: string | null;
  /** True when this message's sender became a new contact. */
  contactCreated: boolean;
  status: IngestEventStatus;
  error: string | null;
  /** True when the message repeated a stored external_id: nothing new was stored and the ids are the original's. */
  duplicate: boolean;
}

/** Stores one message; resolves once it is committed. `signal` drops it while it still waits for its batch. */
export type IngestMessage = (input: IngestMessageInput, signal?: AbortSignal) => Promise<IngestMessageResult>;

/** A message with its identity resolved, ready to be written in a batch. */
interface PendingEvent {
  input: IngestMessageInput;
  /** The keyed digest of (source, external_id), when there is an external_id and a key. */
  digest: string | null;
  whatsappId: string | null;
  email: string | null;
  status: IngestEventStatus;
  error: string | null;
}

export const DEFAULT_INGEST_BATCH: Pick<BatcherOptions, "maxBatch" | "maxInFlight"> = { maxBatch: 64, maxInFlight: 2 };

/**
 * The ingest command: stores an inbound message as an ingest event and links
 * it to the one contact its sender resolves to, creating that contact when it
 * is new. Messages that arrive together are written together (group commit,
 * docs/group-commit.md); each keeps its own outcome.
 */
export function createIngestMessage(dependencies: IngestDependencies): IngestMessage {
  const { sequelize } = dependencies;
  // Chosen once: without tracing, a batch is written with no span code on the way.
  const traced = dependencies.tracing && createBatchTracer(dependencies.tracing, sequelize);
  const write = traced
    ? (events: PendingEvent[]) => traced(events.map((event) => event.input.trace), (span) => storeEvents(sequelize, events, span))
    : (events: PendingEvent[]) => storeEvents(sequelize, events);
  const { digestKey } = dependencies;
  // Once a batch committed, the feed's watchers in this process are woken at once.
  const store = async (events: PendingEvent[]) => {
    const results = await write(events);
    if (results.some((result) => !(result instanceof Error) && !result.duplicate)) dependencies.feedNotifier?.committed();
    return results;
  };
  const batcher = new IngestBatcher<PendingEvent, IngestMessageResult>(store, {
    ...DEFAULT_INGEST_BATCH,
    ...dependencies.ingestBatch,
  });
  const identityOf = cachedSenderIdentity(dependencies);
  return (input, signal) => {
    const identity = input.unusable ? ({ kind: "invalid", reason: input.unusable } as const) : identityOf(input.source, input.senderId);
    const key = identity.kind === "contact" ? identity.key : undefined;
    return batcher.submit(
      {
        input,
        digest: digestKey && input.externalId !== null ? externalIdDigest(digestKey, input.source, input.externalId) : null,
        whatsappId: key?.column === "whatsapp_id" ? key.value : null,
        email: key?.column === "email" ? key.value : null,
        status: identity.kind === "contact" ? "LINKED" : identity.kind === "invalid" ? "ERROR" : "RECEIVED",
        error: identity.kind === "invalid" ? identity.reason : null,
      },
      signal,
    );
  };
}

/**
 * Writes a batch of events in one Sequelize transaction: one statement (the
 * same text for any batch size, so PostgreSQL's plan cache and Sequelize's
 * per-query work are paid once per batch), then, only when some message
 * repeated a stored external_id, one read of the originals. Answers each
 * message in order. The transaction commits all of it or nothing.
 *
 * Races: the unique index on a contact's key decides between batches that
 * create the same new contact: the loser's statement fails, its transaction
 * rolls back, and the whole batch runs again with a fresh snapshot that finds
 * the contact. A deadlock (two batches inserting the same external_ids in
 * opposite order, made rare by inserting in key order) is retried alike.
 * A value the database refuses (a data exception) would fail the batch:
 * each message is then written alone, so only the bad one fails. Both show
 * as events on the batch's span, when there is one.
 */
async function storeEvents(sequelize: Sequelize, events: PendingEvent[], span?: Span): Promise<Array<IngestMessageResult | Error>> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await sequelize.transaction((transaction) => writeBatch(sequelize, events, transaction));
    } catch (error) {
      if (isRace(error) && attempt < 3) {
        span?.addEvent("aurora.ingest.retry", { "db.response.status_code": sqlState(error), "aurora.ingest.attempt": attempt + 1 });
        continue;
      }
      if (isDataError(error) && events.length > 1) {
        span?.addEvent("aurora.ingest.split", { "db.response.status_code": sqlState(error), "aurora.ingest.batch.size": events.length });
        return Promise.all(
          events.map((event) =>
            storeEvents(sequelize, [event], span).then(
              ([result]) => result,
              (alone: unknown) => (alone instanceof Error ? alone : new Error(String(alone))),
            ),
          ),
        );
      }
      throw error;
    }
  }
}

const isRace = (error: unknown) => error instanceof UniqueConstraintError || sqlState(error) === "40P01";

interface BatchRow {
  n: number;
  event_id: string | null;
  contact_id: string | null;
  /** The status stored: LINKED becomes RECEIVED for an event of another kind whose sender has no contact. */
  status: IngestEventStatus | null;
  created: boolean;
  /** The erased event this message's external_id digest names: a retry of it, which stored nothing. */
  erased_id: string | null;
}

async function writeBatch(
  sequelize: Sequelize,
  events: PendingEvent[],
  transaction: Transaction,
): Promise<Array<IngestMessageResult | Error>> {
  const column = <T>(pick: (event: PendingEvent) => T) => events.map(pick);
  const rows = await sequelize.query<BatchRow>(CALL_STORE_EVENTS, {
    bind: [
      column((e) => e.input.source),
      column((e) => e.input.senderId),
      column((e) => e.input.content),
      column((e) => metadataJson(e.input.metadata)),
      column((e) => e.input.externalId),
      column((e) => e.whatsappId),
      column((e) => e.email),
      column((e) => e.status),
      column((e) => e.error),
      column((e) => e.input.traceParent ?? null),
      column((e) => e.input.kind ?? "MESSAGE"),
      column((e) => e.digest),
    ],
    transaction,
    type: QueryTypes.SELECT,
  });
  const results: Array<IngestMessageResult | Error | undefined> = new Array(events.length);
  const repeats: number[] = [];
  const erased = new Map<number, string>();
  for (const row of rows) {
    const i = row.n - 1;
    if (row.erased_id !== null) {
      erased.set(i, row.erased_id);
      continue;
    }
    if (row.event_id === null) {
      repeats.push(i);
      continue;
    }
    results[i] = {
      eventId: row.event_id,
      contactId: row.contact_id,
      contactCreated: row.created,
      status: row.status ?? events[i].status,
      error: events[i].error,
      duplicate: false,
    };
  }
  if (repeats.length > 0) {
    // Nothing was stored for these: only an external_id can conflict, and
    // each original is committed or in this batch, so this read sees it.
    const originals = await IngestEvent.findAll({
      attributes: ["id", "source", "senderId", "content", "externalId", "contactId", "status", "error"],
      where: { [Op.or]: repeats.map((i) => ({ source: events[i].input.source, externalId: events[i].input.externalId })) },
      transaction,
    });
    const byKey = new Map(originals.map((original) => [`${original.source}\n${original.externalId}`, original]));
    for (const i of repeats) {
      const { input } = events[i];
      const original = byKey.get(`${input.source}\n${input.externalId}`);
      results[i] = original
        ? replayOf(original, input)
        : new Error(`event with source ${input.source} and a conflicting external_id could not be read`);
    }
  }
  if (erased.size > 0) {
    // A retry of an erased message: answered as a duplicate with the erased event's ids, so the provider stops.
    const originals = await IngestEvent.findAll({ attributes: ["id", "contactId", "status", "error"], where: { id: [...new Set(erased.values())] }, transaction });
    const byId = new Map(originals.map((original) => [original.id, original]));
    for (const [i, id] of erased) {
      const original = byId.get(id);
      results[i] = original
        ? { eventId: id, contactId: original.contactId, contactCreated: false, status: original.status, error: original.error, duplicate: true }
        : new Error("an erased event could not be read");
    }
  }
  return results.map((result) => result ?? new Error("the batch statement returned no row for a message"));
}

/**
 * The batch statement's inputs, in the order of its `$n`: one array per
 * column, one entry per message. A new column is one type here, one `$n` in
 * the statement and one `column(...)` in `writeBatch`.
 */
export const STORE_EVENTS_PARAMETERS = ["text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]"];

/**
 * One statement for a whole batch; its inputs are parallel arrays, one entry
 * per message, so its text never changes.
 *
 * - `message`: the batch, numbered in arrival order, each with its contact
 *   key (whatsapp_id or email; neither for RECEIVED and ERROR events) and
 *   the contact already stored under it, if any.
 * - `new_contact`: one new id per key not found, however many messages of the
 *   batch carry it. Only inbound messages (kind MESSAGE) create contacts; an
 *   event of another kind whose sender has none is stored RECEIVED.
 * - `erased_id`: a message whose (source, external_id) digest an erasure
 *   kept (the digest computed in Node with the database's key) is a retry
 *   of an erased message: it stores nothing and is answered as a duplicate.
 * - `event`: every event, inserted in (source, external_id) order (so
 *   concurrent batches take the index's locks in the same order) with
 *   ON CONFLICT DO NOTHING: a repeated external_id, in the table or earlier
 *   in the batch (the earlier message is inserted first), stores nothing.
 * - `created`: a new contact only when an event of its sender was stored, so
 *   a refused copy never leaves its sender behind. Events name contacts
 *   inserted after them in the same statement: PostgreSQL checks foreign keys
 *   when the statement ends.
 *
 * Returns one row per message: the event and contact ids (null when nothing
 * was stored) and whether this message is the one that created its contact.
 */
export const STORE_EVENTS = `
  WITH message AS MATERIALIZED (
    SELECT m.*, coalesce(by_whatsapp.id, by_email.id) AS existing_id, gen_random_uuid() AS event_id, erased.event_id AS erased_id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
      WITH ORDINALITY AS m(source, sender_id, content, metadata, external_id, whatsapp_id, email, status, error, trace_parent, kind, digest, n)
    LEFT JOIN crm_contacts by_whatsapp ON by_whatsapp.whatsapp_id = m.whatsapp_id
    LEFT JOIN crm_contacts by_email ON by_email.email = m.email
    LEFT JOIN crm_privacy_erased_ids erased ON erased.digest = m.digest
  ), new_contact AS MATERIALIZED (
    SELECT whatsapp_id, email, gen_random_uuid() AS id
    FROM (SELECT DISTINCT whatsapp_id, email FROM message WHERE existing_id IS NULL AND status = 'LINKED' AND kind = 'MESSAGE') k
  ), resolved AS MATERIALIZED (
    SELECT message.*, coalesce(message.existing_id, new_contact.id) AS contact_id
    FROM message
    LEFT JOIN new_contact ON message.existing_id IS NULL
      AND new_contact.whatsapp_id IS NOT DISTINCT FROM message.whatsapp_id
      AND new_contact.email IS NOT DISTINCT FROM message.email
      AND message.status = 'LINKED'
      AND message.kind = 'MESSAGE'
  ), event AS (
    INSERT INTO crm_ingest_events (id, source, sender_id, content, metadata, external_id, contact_id, status, error, trace_parent, kind)
    SELECT event_id, source, sender_id, content, metadata::jsonb, external_id, contact_id,
      CASE WHEN status = 'LINKED' AND contact_id IS NULL THEN 'RECEIVED' ELSE status END, error, trace_parent, kind
    FROM resolved WHERE erased_id IS NULL ORDER BY source, external_id, n
    ON CONFLICT (source, external_id) DO NOTHING
    RETURNING id, contact_id, status
  ), created AS (
    INSERT INTO crm_contacts (id, whatsapp_id, email)
    SELECT id, whatsapp_id, email FROM new_contact
    WHERE EXISTS (SELECT FROM event WHERE event.contact_id = new_contact.id)
    ORDER BY whatsapp_id, email
    RETURNING id
  )
  SELECT resolved.n::int AS n, event.id AS event_id, event.contact_id, event.status,
    coalesce(created.id IS NOT NULL AND resolved.n = min(resolved.n) OVER (PARTITION BY event.contact_id), false) AS created,
    resolved.erased_id
  FROM resolved
  LEFT JOIN event ON event.id = resolved.event_id
  LEFT JOIN created ON created.id = event.contact_id`;

/**
 * Sequelize sends every query unprepared, so PostgreSQL would parse and plan
 * the batch statement on each call, which is most of what a lone message
 * costs it. PL/pgSQL keeps the plans of the statements in a function for the
 * session, so each connection gets the statement as a function in its own
 * temporary schema (`pg_temp`), created when the connection opens
 * (`sessionSetup`, run by src/db/database.ts) and called through
 * `sequelize.query` in the batch's transaction. Its text stays here, in the
 * code that calls it: no migration, and old and new versions of the service
 * each run their own during a rolling upgrade (docs/group-commit.md).
 *
 * `plan_cache_mode`: PostgreSQL would otherwise keep planning each call when
 * a generic plan's estimate (it cannot know the arrays' length) looks dearer
 * than a plan for one message. `use_column`: the result's column names are
 * also the statement's.
 */
const STORE_EVENTS_FUNCTION = `
  CREATE OR REPLACE FUNCTION pg_temp.aurora_store_events(${STORE_EVENTS_PARAMETERS.join(", ")})
  RETURNS TABLE (n int, event_id uuid, contact_id uuid, status text, created boolean, erased_id uuid)
  LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $function$
  #variable_conflict use_column
  BEGIN
    RETURN QUERY ${STORE_EVENTS};
  END $function$`;

export const CALL_STORE_EVENTS = `SELECT * FROM pg_temp.aurora_store_events(${STORE_EVENTS_PARAMETERS.map((_, i) => `$${i + 1}`).join(", ")})`;

/** Statements each new database connection runs once before it is used: the batch statement's function. */
export const sessionSetup: readonly string[] = [STORE_EVENTS_FUNCTION];

/**
 * Answers a retry with the original event, or refuses it when the key was
 * reused for a different message.
 *
 * A copy is a duplicate when its sender_id and content equal the original's,
 * and is answered with the original's ids: idempotency needs them, and the
 * caller already knows the sender and content they confirm. Metadata is not
 * compared: gateways attach per-delivery details (attempt counters,
 * timestamps) that change between retries of the same message, and the
 * original metadata is kept. A different sender_id or content means the key
 * was reused for another message: `DuplicateConflictError`, which names
 * neither the original nor the field that differs, so a guess learns only
 * that the key is taken (docs/privacy.md).
 */
function replayOf(original: IngestEvent, input: IngestMessageInput): IngestMessageResult | Error {
  if (original.senderId !== input.senderId || original.content !== input.content) return new DuplicateConflictError();
  // A copy writes nothing, so it created no contact.
  return {
    eventId: original.id,
    contactId: original.contactId,
    contactCreated: false,
    status: original.status,
    error: original.error,
    duplicate: true,
  };
}
