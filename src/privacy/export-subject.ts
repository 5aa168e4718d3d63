import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { FEED_EVENT_COLUMNS, toFeedEvent, type EventRow, type FeedEvent } from "../feed/read-feed.js";
import { senderIdentity, type IdentityOptions } from "../ingest/identity/sender-identity.js";
import type { PrivacySubject } from "./privacy-subject.js";

/** A contact with every stored field. */
export interface ContactRecord {
  id: string;
  name: string | null;
  whatsappId: string | null;
  email: string | null;
  phone: string | null;
  metadata: Record<string, unknown>;
  createdAt: Date;
  updatedAt: Date;
}

/** A deal with every stored field; `value` is the exact decimal as text. */
export interface DealRecord {
  id: string;
  contactId: string;
  title: string;
  stage: string;
  value: string | null;
  metadata: Record<string, unknown>;
  createdAt: Date;
  updatedAt: Date;
}

/** One item of an export, in the order they come: contacts, then deals, then events. */
export type ExportItem = { contact: ContactRecord } | { deal: DealRecord } | { event: FeedEvent };

/**
 * The subject with the contacts its senders resolve to added: a WhatsApp or
 * e-mail sender is the contact ingest links its messages to (the identity
 * rules, docs/identity-rules.md), so naming the sender names that contact,
 * its deals, and its events under every spelling of the sender.
 */
export async function resolveSubject(sequelize: Sequelize, subject: PrivacySubject, identity: IdentityOptions): Promise<PrivacySubject> {
  const keys = { whatsapp_id: [] as string[], email: [] as string[] };
  for (const sender of subject.senders) {
    const resolved = senderIdentity(sender.source, sender.senderId, identity);
    if (resolved.kind === "contact") keys[resolved.key.column].push(resolved.key.value);
  }
  if (keys.whatsapp_id.length + keys.email.length === 0) return subject;
  const found = await sequelize.query<{ id: string }>("SELECT id FROM crm_contacts WHERE whatsapp_id = ANY($1::text[]) OR email = ANY($2::text[])", {
    bind: [keys.whatsapp_id, keys.email],
    type: QueryTypes.SELECT,
  });
  const contactIds = new Set([...subject.contactIds.map((id) => id.toLowerCase()), ...found.map((row) => row.id)]);
  return { ...subject, contactIds: [...contactIds] };
}

/** How many rows one read fetches: bounds the memory an export holds (a chunk of events of at most the configured sizes each). */
export const EXPORT_CHUNK_ROWS = 100;

/**
 * Everything stored about a person, read in chunks: their contacts, the
 * deals linked to them, every event linked to one of the contacts, then
 * every other event from one of the senders. Each event comes once.
 *
 * Each chunk is its own short statement, not one long transaction: a long
 * read would hold the feed's horizon back for every consumer (docs/feed.md).
 * Chunks are keyset pages over an index in (created_at, id) order, so a
 * person with 100,000 events costs one index range per chunk and one chunk
 * of memory. An event committed while the export runs may or may not appear.
 */
export async function* exportSubject(sequelize: Sequelize, subject: PrivacySubject, chunkRows = EXPORT_CHUNK_ROWS): AsyncGenerator<ExportItem> {
  const select = <Row extends object>(sql: string, bind: unknown[]) => sequelize.query<Row>(sql, { bind, type: QueryTypes.SELECT });
  const contactIds = [...subject.contactIds].map((id) => id.toLowerCase()).sort();
  const contacts = await select<ContactRow>(
    "SELECT id, name, whatsapp_id, email, phone, metadata, created_at, updated_at FROM crm_contacts WHERE id = ANY($1::uuid[]) ORDER BY id",
    [contactIds],
  );
  for (const row of contacts) yield { contact: toContact(row) };

  for (const contact of contacts) {
    for (let after = ""; ; ) {
      const deals = await select<DealRow>(
        `SELECT id, contact_id, title, stage, value::text AS value, metadata, created_at, updated_at FROM crm_deals
         WHERE contact_id = $1::uuid AND id::text > $2 ORDER BY id::text LIMIT $3`,
        [contact.id, after, chunkRows],
      );
      for (const row of deals) yield { deal: toDeal(row) };
      if (deals.length < chunkRows) break;
      after = deals.at(-1)!.id;
    }
  }

  const found = contacts.map((contact) => contact.id);
  for (const contactId of found) {
    yield* chunks(select, EVENTS_OF_CONTACT, [contactId], chunkRows);
  }
  for (const sender of subject.senders) {
    // Events linked to one of the subject's contacts came with that contact.
    yield* chunks(select, EVENTS_OF_SENDER, [sender.source, sender.senderId, found], chunkRows);
  }
}

type Select = <Row extends object>(sql: string, bind: unknown[]) => Promise<Row[]>;

/** Pages through one event query by (created_at, id), a chunk at a time. */
async function* chunks(select: Select, sql: string, bind: unknown[], chunkRows: number): AsyncGenerator<ExportItem> {
  // The key is kept as PostgreSQL's text: a JS Date would drop the microseconds.
  let after: { at: string | null; id: string } = { at: null, id: "" };
  for (;;) {
    const rows = await select<EventRow & { key_at: string }>(sql, [...bind, after.at, after.id, chunkRows]);
    for (const row of rows) yield { event: toFeedEvent(row) };
    if (rows.length < chunkRows) return;
    const last = rows.at(-1)!;
    after = { at: last.key_at, id: last.id };
  }
}

// `created_at >= $n` bounds the index range; the row comparison then skips
// the chunk's ties already sent. Ids compare as text, the order they are
// sorted in.
const KEYSET = (at: number) => `
      AND ($${at}::timestamptz IS NULL OR (created_at >= $${at}::timestamptz AND (created_at, id::text) > ($${at}::timestamptz, $${at + 1}::text)))
    ORDER BY created_at, id::text
    LIMIT $${at + 2}`;

/** A contact's events, a chunk after a key; exported so a test can check its plan is an index range scan. */
export const EVENTS_OF_CONTACT = `
    SELECT ${FEED_EVENT_COLUMNS}, created_at::text AS key_at FROM crm_ingest_events
    WHERE contact_id = $1::uuid ${KEYSET(2)}`;

/** A sender's events not linked to the subject's contacts, a chunk after a key (plan checked by a test too). */
export const EVENTS_OF_SENDER = `
    SELECT ${FEED_EVENT_COLUMNS}, created_at::text AS key_at FROM crm_ingest_events
    WHERE source = $1::text AND sender_id = $2::text
      AND (contact_id IS NULL OR contact_id <> ALL($3::uuid[])) ${KEYSET(4)}`;

interface ContactRow {
  id: string;
  name: string | null;
  whatsapp_id: string | null;
  email: string | null;
  phone: string | null;
  metadata: Record<string, unknown>;
  created_at: Date;
  updated_at: Date;
}

interface DealRow {
  id: string;
  contact_id: string;
  title: string;
  stage: string;
  value: string | null;
  metadata: Record<string, unknown>;
  created_at: Date;
  updated_at: Date;
}

function toContact(row: ContactRow): ContactRecord {
  return {
    id: row.id,
    name: row.name,
    whatsappId: row.whatsapp_id,
    email: row.email,
    phone: row.phone,
    metadata: row.metadata,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function toDeal(row: DealRow): DealRecord {
  return {
    id: row.id,
    contactId: row.contact_id,
    title: row.title,
    stage: row.stage,
    value: row.value,
    metadata: row.metadata,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}
