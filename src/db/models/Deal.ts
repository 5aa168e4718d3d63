import { fn, literal, type NonAttribute } from "sequelize";
import { BelongsTo, Column, CreatedAt, DataType, ForeignKey, Model, Table, UpdatedAt } from "sequelize-typescript";
import { Contact } from "./Contact.js";

/**
 * A business opportunity with one contact. Ingest never creates or changes
 * deals. Describes exactly the table the migrations create (test/models.test.ts).
 */
@Table({
  tableName: "crm_deals",
  underscored: true,
  timestamps: true,
  indexes: [{ name: "crm_deals_contact_id_idx", fields: ["contact_id"] }],
})
export class Deal extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: literal("gen_random_uuid()") })
  declare id: string;

  @ForeignKey(() => Contact)
  @Column({ type: DataType.UUID, allowNull: false })
  declare contactId: string;

  @BelongsTo(() => Contact, { onDelete: "RESTRICT", onUpdate: "CASCADE" })
  declare contact: NonAttribute<Contact>;

  @Column({ type: DataType.TEXT, allowNull: false })
  declare title: string;

  @Column({ type: DataType.TEXT, allowNull: false, defaultValue: "open" })
  declare stage: string;

  /** Amount in the deal's currency; NUMERIC so money never passes through a float. */
  @Column({ type: DataType.DECIMAL(14, 2), allowNull: true })
  declare value: string | null;

  @Column({ type: DataType.JSONB, allowNull: false, defaultValue: {} })
  declare metadata: Record<string, unknown>;

  @CreatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare createdAt: Date;

  @UpdatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare updatedAt: Date;
}
