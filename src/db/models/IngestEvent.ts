import type { NonAttribute } from "sequelize";
import { BelongsTo, Column, DataType, ForeignKey, Model, Table } from "sequelize-typescript";
import { Contact } from "./Contact.js";

/** Where a stored event stands: kept without contact, linked to one, or unresolvable. */
export const INGEST_EVENT_STATUSES = ["RECEIVED", "LINKED", "ERROR"] as const;
export type IngestEventStatus = (typeof INGEST_EVENT_STATUSES)[number];

/**
 * One inbound message exactly as it arrived: the canonical record that the
 * timeline and the orchestrator consume later.
 */
@Table({ tableName: "crm_ingest_events", underscored: true, timestamps: true, updatedAt: false })
export class IngestEvent extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: DataType.UUIDV4 })
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

  /**
   * The provider's message id or a client-chosen key, unique per source
   * (crm_ingest_events_source_external_id_key): a retry with it stores nothing new.
   */
  @Column({ type: DataType.TEXT, allowNull: true })
  declare externalId: string | null;

  @ForeignKey(() => Contact)
  @Column({ type: DataType.UUID, allowNull: true })
  declare contactId: string | null;

  @BelongsTo(() => Contact)
  declare contact: NonAttribute<Contact | null>;

  @Column({ type: DataType.TEXT, allowNull: false, defaultValue: "RECEIVED" })
  declare status: IngestEventStatus;

  /** Why the sender could not be resolved, when status is ERROR. */
  @Column({ type: DataType.TEXT, allowNull: true })
  declare error: string | null;

  declare createdAt: Date;

  /**
   * The transaction that wrote the event (xid8, as text; '0' for events
   * stored before the feed existed). Filled by the database's default: the
   * feed's order is (feedXid, feedSeq), read below the snapshot horizon
   * (docs/feed.md).
   */
  @Column({ type: "xid8", allowNull: false })
  declare readonly feedXid: string;

  /** Insertion order within the feed, from an identity column (bigint, as text). */
  @Column({ type: DataType.BIGINT, allowNull: false })
  declare readonly feedSeq: string;
}
