import { UniqueConstraintError } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { DuplicateConflictError } from "./errors.js";
import type { FeedNotifier } from "../feed/feed-notifier.js";
import type { IngestEventStatus } from "../db/models/IngestEvent.js";
import { runPrepared, type PreparedStatement } from "../db/prepared-statement.js";
import { metadataJson } from "./metadata-json.js";
import { senderIdentity, type ContactKey, type IdentityOptions } from "./identity/sender-identity.js";

/** What the command works with: the database, and the settings of the identity rules. */
export interface IngestDependencies extends IdentityOptions {
  sequelize: Sequelize;
  /** Told after each event this process commits, so the feed's watchers see it at once. */
  feedNotifier?: FeedNotifier;
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
 * One SQL statement writes the event with its outcome (LINKED, RECEIVED or
 * ERROR) and any new contact, so both commit or neither does. A copy of a
 * stored `external_id` writes nothing and is answered with the original's
 * ids when its sender and content match, or refused with
 * `DuplicateConflictError` when they do not. Why, and how races are settled:
 * docs/single-statement-ingest.md.
 */
export async function ingestMessage(dependencies: IngestDependencies, input: IngestMessageInput): Promise<IngestMessageResult> {
  const result = await storeMessage(dependencies, input);
  if (!result.duplicate) dependencies.feedNotifier?.committed();
  return result;
}

async function storeMessage(dependencies: IngestDependencies, input: IngestMessageInput): Promise<IngestMessageResult> {
  const { sequelize } = dependencies;
  const identity = senderIdentity(input.source, input.senderId, dependencies);
  const event = [input.source, input.senderId, input.content, metadataJson(input.metadata), input.externalId];
  if (identity.kind === "contact") {
    const stored = await storeLinkedEvent(sequelize, identity.key, event);
    if (stored) return { ...stored, status: "LINKED", error: null, duplicate: false };
  } else {
    const status: IngestEventStatus = identity.kind === "invalid" ? "ERROR" : "RECEIVED";
    const error = identity.kind === "invalid" ? identity.reason : null;
    const [row] = await runPrepared<{ id: string }>(sequelize, INSERT_EVENT, [...event, status, error]);
    if (row) return { eventId: row.id, contactId: null, contactCreated: false, status, error, duplicate: false };
  }
  // Nothing was stored: only an external_id can conflict, and the original is committed.
  const [original] = await runPrepared<StoredEvent>(sequelize, FIND_EVENT_BY_EXTERNAL_ID, [input.source, input.externalId]);
  if (!original) throw new Error(`event with source ${input.source} and a conflicting external_id could not be read`);
  return replayOf(original, input);
}

const INSERT_EVENT: PreparedStatement = {
  name: "ingest_event",
  text: `
    INSERT INTO crm_ingest_events (source, sender_id, content, metadata, external_id, status, error)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
    ON CONFLICT (source, external_id) DO NOTHING
    RETURNING id`,
};

/**
 * Writes the event linked to the contact with this key, creating the contact
 * when there is none. Returns undefined when the event's external_id is
 * already stored: then nothing was written. A unique violation means another
 * statement created the same new contact first: run again, and find it.
 */
async function storeLinkedEvent(
  sequelize: Sequelize,
  key: ContactKey,
  event: Array<string | null>,
): Promise<{ eventId: string; contactId: string; contactCreated: boolean } | undefined> {
  for (let attempt = 1; ; attempt++) {
    try {
      const [row] = await runPrepared<{ id: string; contact_id: string; created: boolean }>(sequelize, INSERT_LINKED_EVENT[key.column], [
        key.value,
        ...event,
      ]);
      return row && { eventId: row.id, contactId: row.contact_id, contactCreated: row.created };
    } catch (error) {
      if (!(error instanceof UniqueConstraintError) || attempt === 3) throw error;
    }
  }
}

const insertLinkedEvent = (column: ContactKey["column"]): PreparedStatement => ({
  name: `ingest_linked_event_${column}`,
  text: `
    WITH existing AS (
      SELECT id FROM crm_contacts WHERE ${column} = $1
    ), contact AS (
      SELECT coalesce((SELECT id FROM existing), gen_random_uuid()) AS id, NOT EXISTS (SELECT FROM existing) AS is_new
    ), event AS (
      INSERT INTO crm_ingest_events (source, sender_id, content, metadata, external_id, contact_id, status)
      SELECT $2, $3, $4, $5::jsonb, $6, contact.id, 'LINKED' FROM contact
      ON CONFLICT (source, external_id) DO NOTHING
      RETURNING id, contact_id
    ), created AS (
      INSERT INTO crm_contacts (id, ${column})
      SELECT contact.id, $1 FROM contact, event WHERE contact.is_new
      RETURNING id
    )
    SELECT event.id, event.contact_id, EXISTS (SELECT FROM created) AS created FROM event`,
});

const INSERT_LINKED_EVENT: Record<ContactKey["column"], PreparedStatement> = {
  whatsapp_id: insertLinkedEvent("whatsapp_id"),
  email: insertLinkedEvent("email"),
};

interface StoredEvent {
  id: string;
  sender_id: string;
  content: string;
  contact_id: string | null;
  status: IngestEventStatus;
  error: string | null;
}

const FIND_EVENT_BY_EXTERNAL_ID: PreparedStatement = {
  name: "ingest_find_event_by_external_id",
  text: "SELECT id, sender_id, content, contact_id, status, error FROM crm_ingest_events WHERE source = $1 AND external_id = $2",
};

/** Answers a retry with the original event, or refuses it when the key was reused for a different message. */
function replayOf(original: StoredEvent, input: IngestMessageInput): IngestMessageResult {
  const differing = [
    ...(original.sender_id !== input.senderId ? ["sender_id"] : []),
    ...(original.content !== input.content ? ["content"] : []),
  ];
  if (differing.length > 0) throw new DuplicateConflictError(original.id, differing);
  // A copy writes nothing, so it created no contact.
  return {
    eventId: original.id,
    contactId: original.contact_id,
    contactCreated: false,
    status: original.status,
    error: original.error,
    duplicate: true,
  };
}
