import { QueryTypes, type Transaction } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { DuplicateConflictError } from "../errors.js";
import type { IngestEventStatus } from "../db/models/IngestEvent.js";
import { senderIdentity, type ContactKey, type IdentityOptions } from "../identity/sender-identity.js";

/** What the command works with: the database, and the settings of the identity rules. */
export interface IngestDependencies extends IdentityOptions {
  sequelize: Sequelize;
}

/** One inbound message, as the RPC handler hands it over (already validated). */
export interface IngestMessageInput {
  source: string;
  senderId: string;
  content: string;
  metadata: Record<string, unknown>;
  /** The message's own id, unique per source; null when the client sent none. */
  externalId: string | null;
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

/**
 * Stores an inbound message as an ingest event and links it to the one
 * contact its sender resolves to, creating that contact when it is new.
 *
 * Design: everything happens in one transaction. The contact is resolved
 * first and the event is written once, already carrying its outcome
 * (LINKED with its contact, RECEIVED when the source has no identity rule,
 * ERROR with the reason when the sender cannot be an identity). Because the
 * event and its link commit together, no reader ever sees a RECEIVED event
 * that is about to become LINKED, a failed request leaves nothing behind, and
 * a link can never point at a contact that was rolled back. A success means
 * the commit happened.
 *
 * Retries: the event is inserted with ON CONFLICT (source, external_id) DO
 * NOTHING, so the unique index, not this process, decides which of any
 * number of concurrent copies is the original (a copy that arrives while the
 * original is uncommitted waits for it). A copy inserts nothing; it then reads
 * the original and rolls its transaction back. That rollback is what keeps a
 * duplicate from creating a contact: the contact was resolved before the
 * conflict could be known, and is undone with everything else, so a retry
 * that carries a different sender never leaves that sender behind. Resolving
 * the contact first keeps the common path (a new message) at two statements
 * and one write per row; only a duplicate pays for the extra read.
 *
 * A copy is a duplicate when its sender_id and content equal the original's,
 * and is answered with the original's ids. Metadata is not compared: gateways
 * attach per-delivery details (attempt counters, timestamps) that change
 * between retries of the same message, and the original metadata is kept.
 * A different sender_id or content means the key was reused for another
 * message: `DuplicateConflictError`, naming the original event.
 */
export async function ingestMessage(dependencies: IngestDependencies, input: IngestMessageInput): Promise<IngestMessageResult> {
  const transaction = await dependencies.sequelize.transaction();
  let outcome: Awaited<ReturnType<typeof writeEvent>>;
  try {
    outcome = await writeEvent(dependencies, input, transaction);
  } catch (error) {
    await transaction.rollback().catch(() => undefined); // the first error is the one that matters
    throw error;
  }
  if (outcome.stored) {
    await transaction.commit();
    return outcome.result;
  }
  await transaction.rollback();
  return replayOf(outcome.original, input);
}

/** Resolves the contact and inserts the event; when the external_id is already stored, reads that original instead. */
async function writeEvent(
  dependencies: IngestDependencies,
  input: IngestMessageInput,
  transaction: Transaction,
): Promise<{ stored: true; result: IngestMessageResult } | { stored: false; original: StoredEvent }> {
  const { sequelize } = dependencies;
  const identity = senderIdentity(input.source, input.senderId, dependencies);
  let contactId: string | null = null;
  let contactCreated = false;
  let status: IngestEventStatus = "RECEIVED";
  let error: string | null = null;
  if (identity.kind === "contact") {
    ({ id: contactId, created: contactCreated } = await findOrCreateContact(sequelize, identity.key, transaction));
    status = "LINKED";
  } else if (identity.kind === "invalid") {
    status = "ERROR";
    error = identity.reason;
  }
  const eventId = await insertEvent(sequelize, { ...input, contactId, status, error }, transaction);
  if (eventId !== undefined) return { stored: true, result: { eventId, contactId, contactCreated, status, error, duplicate: false } };
  // Only an external_id can conflict. READ COMMITTED gives this statement a
  // fresh snapshot, which sees the original: the INSERT above did nothing
  // only because the original was committed.
  return { stored: false, original: await findEventByExternalId(sequelize, input.source, input.externalId!, transaction) };
}

type NewEvent = IngestMessageInput & { contactId: string | null; status: IngestEventStatus; error: string | null };

/** Inserts the event and returns its id, or undefined when its (source, external_id) is already stored. */
async function insertEvent(sequelize: Sequelize, event: NewEvent, transaction: Transaction): Promise<string | undefined> {
  const rows = await sequelize.query<{ id: string }>(
    `INSERT INTO crm_ingest_events (source, sender_id, content, metadata, external_id, contact_id, status, error)
     VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)
     ON CONFLICT (source, external_id) DO NOTHING
     RETURNING id`,
    {
      bind: [event.source, event.senderId, event.content, JSON.stringify(event.metadata), event.externalId, event.contactId, event.status, event.error],
      type: QueryTypes.SELECT,
      transaction,
    },
  );
  return rows[0]?.id;
}

interface StoredEvent {
  id: string;
  sender_id: string;
  content: string;
  contact_id: string | null;
  status: IngestEventStatus;
  error: string | null;
}

async function findEventByExternalId(sequelize: Sequelize, source: string, externalId: string, transaction: Transaction): Promise<StoredEvent> {
  const [event] = await sequelize.query<StoredEvent>(
    "SELECT id, sender_id, content, contact_id, status, error FROM crm_ingest_events WHERE source = $1 AND external_id = $2",
    { bind: [source, externalId], type: QueryTypes.SELECT, transaction },
  );
  if (!event) throw new Error(`event with source ${source} and a conflicting external_id could not be read`);
  return event;
}

/** Answers a retry with the original event, or refuses it when the key was reused for a different message. */
function replayOf(original: StoredEvent, input: IngestMessageInput): IngestMessageResult {
  const differing = [
    ...(original.sender_id !== input.senderId ? ["sender_id"] : []),
    ...(original.content !== input.content ? ["content"] : []),
  ];
  if (differing.length > 0) throw new DuplicateConflictError(original.id, differing);
  // Any contact this copy created was rolled back with it.
  return {
    eventId: original.id,
    contactId: original.contact_id,
    contactCreated: false,
    status: original.status,
    error: original.error,
    duplicate: true,
  };
}

/**
 * Returns the id of the contact with this key, creating it if there is none,
 * and whether it was created here.
 * The unique index on the key column decides races: a concurrent insert of
 * the same key makes ours do nothing (after waiting for the other to commit),
 * and we read the winner's row instead. The read runs with the INSERT's
 * snapshot, which may predate the winner's commit, so an empty answer is
 * retried once more with a fresh snapshot. That snapshot also hides the row
 * the INSERT adds, so exactly one branch answers and `created` says which.
 */
async function findOrCreateContact(
  sequelize: Sequelize,
  key: ContactKey,
  transaction: Transaction,
): Promise<{ id: string; created: boolean }> {
  // The column name comes from a fixed union, never from the request.
  const sql = `
    WITH inserted AS (
      INSERT INTO crm_contacts (${key.column}) VALUES ($1)
      ON CONFLICT (${key.column}) DO NOTHING
      RETURNING id
    )
    SELECT id, true AS created FROM inserted
    UNION ALL
    SELECT id, false AS created FROM crm_contacts WHERE ${key.column} = $1
    LIMIT 1`;
  for (let attempt = 0; attempt < 3; attempt++) {
    const rows = await sequelize.query<{ id: string; created: boolean }>(sql, { bind: [key.value], type: QueryTypes.SELECT, transaction });
    if (rows.length > 0) return rows[0];
  }
  throw new Error(`contact for ${key.column} could not be found or created`);
}
