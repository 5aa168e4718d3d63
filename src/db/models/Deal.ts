import type { NonAttribute } from "sequelize";
import { BelongsTo, Column, DataType, ForeignKey, Model, Table } from "sequelize-typescript";
import { Contact } from "./Contact.js";

/** A business opportunity with one contact. Ingest never creates or changes deals. */
@Table({ tableName: "crm_deals", underscored: true, timestamps: true })
export class Deal extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: DataType.UUIDV4 })
  declare id: string;

  @ForeignKey(() => Contact)
  @Column({ type: DataType.UUID, allowNull: false })
  declare contactId: string;

  @BelongsTo(() => Contact)
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

  declare createdAt: Date;
  declare updatedAt: Date;
}
