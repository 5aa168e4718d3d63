import { fn, literal, type NonAttribute } from "sequelize";
import { BelongsTo, Column, CreatedAt, DataType, ForeignKey, Model, Table } from "sequelize-typescript";
import { Contact } from "./Contact.js";

/** Where a stored event stands: kept without contact, linked to one, or unresolvable. */
export const INGEST_EVENT_STATUSES = ["RECEIVED", "LINKED", "ERROR"] as const;
export type IngestEventStatus = (typeof INGEST_EVENT_STATUSES)[number];

/** What an event records: an inbound message, a delivery status, a provider's notice, or an erasure (docs/feed.md). */
export const INGEST_EVENT_KINDS = ["MESSAGE", "STATUS", "SYSTEM", "ERASURE"] as const;
export type IngestEventKind = (typeof INGEST_EVENT_KINDS)[number];

/**
 * One inbound message exactly as it arrived: the canonical record that the
 * timeline and the orchestrator consume later. Describes exactly the table
 * the migrations create (test/models.test.ts compares them).
 */
@Table({
  tableName: "crm_ingest_events",
  underscored: true,
  timestamps: true,
  updatedAt: false,
  indexes: [
    // A contact's timeline, a sender's history, and consumers reading new events in order.
    { name: "crm_ingest_events_contact_id_created_at_idx", fields: ["contact_id", "created_at"] },
    { name: "crm_ingest_events_source_sender_id_created_at_idx", fields: ["source", "sender_id", "created_at"] },
    { name: "crm_ingest_events_created_at_idx", fields: ["created_at"] },
    { name: "crm_ingest_events_status_idx", fields: ["status"] },
    // A retry with the same external_id stores nothing new.
    { name: "crm_ingest_events_source_external_id_key", unique: true, fields: ["source", "external_id"] },
    // The feed's position, in commit order (docs/feed.md).
    { name: "crm_ingest_events_feed_position_key", unique: true, fields: ["feed_xid", "feed_seq"] },
  ],
})
export class IngestEvent extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: literal("gen_random_uuid()") })
  declare id: string;

  @Column({ type: DataType.TEXT, allowNull: false })
  declare source: string;

  /** The sender as the gateway sent it, before any normalisation. */
  @Column({ type: DataType.TEXT, allowNull: false })
  declare senderId: string;

  @Column({ type: DataType.TEXT, allowNull: false })
  declare content: string;

  @Column({ type: DataType.JSONB, allowNull: false, defaultValue: {} })
  declare metadata: Record<string, unknown>;

  @ForeignKey(() => Contact)
  @Column({ type: DataType.UUID, allowNull: true })
  declare contactId: string | null;

  @BelongsTo(() => Contact, { onDelete: "RESTRICT", onUpdate: "CASCADE" })
  declare contact: NonAttribute<Contact | null>;

  /** Checked by the database too (crm_ingest_events_status_check). */
  @Column({ type: DataType.TEXT, allowNull: false, defaultValue: "RECEIVED", validate: { isIn: [INGEST_EVENT_STATUSES] } })
  declare status: IngestEventStatus;

  /** Why the sender could not be resolved, when status is ERROR. */
  @Column({ type: DataType.TEXT, allowNull: true })
  declare error: string | null;

  @CreatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare createdAt: Date;

  /** The provider's message id or a client-chosen key, unique per source; null when the client sent none. */
  @Column({ type: DataType.TEXT, allowNull: true })
  declare externalId: string | null;

  /** The W3C traceparent of the request that stored the event (docs/tracing.md); null when it came without a trace. */
  @Column({ type: DataType.TEXT, allowNull: true })
  declare traceParent: string | null;

  /** What the event records; checked by the database too (crm_ingest_events_kind_check). */
  @Column({ type: DataType.TEXT, allowNull: false, defaultValue: "MESSAGE", validate: { isIn: [INGEST_EVENT_KINDS] } })
  declare kind: IngestEventKind;

  /**
   * The transaction that wrote the event (xid8, as text; '0' for events
   * stored before the feed existed). Filled by the database's default: the
   * feed's order is (feedXid, feedSeq), read below the snapshot horizon
   * (docs/feed.md).
   */
  @Column({ type: "xid8", allowNull: false, defaultValue: fn("pg_current_xact_id") })
  declare readonly feedXid: string;

  /** Insertion order within the feed, from an identity column (bigint, as text). */
  @Column({ type: DataType.BIGINT, allowNull: false, autoIncrement: true })
  declare readonly feedSeq: string;
}
