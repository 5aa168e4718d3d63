import { fn, literal } from "sequelize";
import { Column, DataType, Model, Table } from "sequelize-typescript";

/** What a privacy request asked for: an export now; erasure and retention use the same trail. */
export const PRIVACY_REQUEST_KINDS = ["EXPORT", "ERASURE", "RETENTION"] as const;
export type PrivacyRequestKind = (typeof PRIVACY_REQUEST_KINDS)[number];

/** Where a privacy request stands. */
export const PRIVACY_REQUEST_STATES = ["RUNNING", "DONE", "FAILED"] as const;
export type PrivacyRequestState = (typeof PRIVACY_REQUEST_STATES)[number];

/**
 * One record of the privacy audit trail (docs/privacy.md): when, which token
 * by its label, what was asked and what was done, as counts. It holds no
 * personal data, so it can be kept as long as the controller must prove how
 * it answered. Describes exactly the table the migrations create
 * (test/models.test.ts).
 */
@Table({
  tableName: "crm_privacy_requests",
  underscored: true,
  timestamps: false,
  indexes: [{ name: "crm_privacy_requests_started_at_id_idx", fields: ["started_at", "id"] }],
})
export class PrivacyRequest extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: literal("gen_random_uuid()") })
  declare id: string;

  /** Checked by the database too (crm_privacy_requests_kind_check). */
  @Column({ type: DataType.TEXT, allowNull: false, validate: { isIn: [PRIVACY_REQUEST_KINDS] } })
  declare kind: PrivacyRequestKind;

  /** Checked by the database too (crm_privacy_requests_state_check). */
  @Column({ type: DataType.TEXT, allowNull: false, defaultValue: "RUNNING", validate: { isIn: [PRIVACY_REQUEST_STATES] } })
  declare state: PrivacyRequestState;

  /** The token's configured label, or a fingerprint of it; never the token. */
  @Column({ type: DataType.TEXT, allowNull: false })
  declare requestedBy: string;

  @Column({ type: DataType.INTEGER, allowNull: false, defaultValue: 0 })
  declare subjectContacts: number;

  @Column({ type: DataType.INTEGER, allowNull: false, defaultValue: 0 })
  declare subjectSenders: number;

  /** The channels of the senders named (not the senders). */
  @Column({ type: DataType.ARRAY(DataType.TEXT), allowNull: false, defaultValue: [] })
  declare subjectSources: string[];

  @Column({ type: DataType.BIGINT, allowNull: false, defaultValue: 0 })
  declare contacts: string;

  @Column({ type: DataType.BIGINT, allowNull: false, defaultValue: 0 })
  declare deals: string;

  @Column({ type: DataType.BIGINT, allowNull: false, defaultValue: 0 })
  declare ingestEvents: string;

  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare startedAt: Date;

  @Column({ type: DataType.DATE, allowNull: true })
  declare finishedAt: Date | null;

  @Column({ type: DataType.BIGINT, allowNull: true })
  declare durationMs: string | null;

  /** The Connect code a failed request ended with; never an error message, which could quote personal data. */
  @Column({ type: DataType.TEXT, allowNull: true })
  declare errorCode: string | null;
}
