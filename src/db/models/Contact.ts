import type { NonAttribute } from "sequelize";
import { Column, DataType, HasMany, Model, Table } from "sequelize-typescript";
import { Deal } from "./Deal.js";

/**
 * A person the CRM knows. Identity columns (`whatsapp_id`, `email`) hold only
 * canonical values and are unique, so one person is one row.
 */
@Table({ tableName: "crm_contacts", underscored: true, timestamps: true })
export class Contact extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: DataType.UUIDV4 })
  declare id: string;

  @Column({ type: DataType.TEXT, allowNull: true })
  declare name: string | null;

  @Column({ type: DataType.TEXT, allowNull: true, unique: true })
  declare whatsappId: string | null;

  @Column({ type: DataType.TEXT, allowNull: true, unique: true })
  declare email: string | null;

  @Column({ type: DataType.TEXT, allowNull: true })
  declare phone: string | null;

  @Column({ type: DataType.JSONB, allowNull: false, defaultValue: {} })
  declare metadata: Record<string, unknown>;

  @HasMany(() => Deal)
  declare deals: NonAttribute<Deal[]>;

  declare createdAt: Date;
  declare updatedAt: Date;
}
