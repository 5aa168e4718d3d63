import { QueryTypes, type Transaction } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { IngestEvent, type IngestEventStatus } from "../db/models/IngestEvent.js";
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
}

/** What was stored: the event, its status and, when linked, the contact. */
export interface IngestMessageResult {
  eventId: string;
  contactId: string | null;
  /** True when this message's sender became a new contact. */
  contactCreated: boolean;
  status: IngestEventStatus;
  error: string | null;
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
 */
export async function ingestMessage(dependencies: IngestDependencies, input: IngestMessageInput): Promise<IngestMessageResult> {
  const { sequelize } = dependencies;
  const identity = senderIdentity(input.source, input.senderId, dependencies);
  return sequelize.transaction(async (transaction) => {
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
    const event = await IngestEvent.create(
      { source: input.source, senderId: input.senderId, content: input.content, metadata: input.metadata, contactId, status, error },
      { transaction, returning: ["id"] },
    );
    return { eventId: event.id, contactId, contactCreated, status, error };
  });
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
