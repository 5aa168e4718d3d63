import { fn, literal, type NonAttribute } from "sequelize";
import { Column, CreatedAt, DataType, HasMany, Model, Table, UpdatedAt } from "sequelize-typescript";
import { Deal } from "./Deal.js";

/**
 * A person the CRM knows. Identity columns (`whatsapp_id`, `email`) hold only
 * canonical values and are unique, so one person is one row.
 *
 * Describes exactly the table the migrations create (test/models.test.ts
 * compares them): the same defaults, computed by the database, and the same
 * named indexes.
 */
@Table({
  tableName: "crm_contacts",
  underscored: true,
  timestamps: true,
  indexes: [
    { name: "crm_contacts_whatsapp_id_key", unique: true, fields: ["whatsapp_id"] },
    { name: "crm_contacts_email_key", unique: true, fields: ["email"] },
  ],
})
export class Contact extends Model {
  @Column({ type: DataType.UUID, primaryKey: true, defaultValue: literal("gen_random_uuid()") })
  declare id: string;

  @Column({ type: DataType.TEXT, allowNull: true })
  declare name: string | null;

  @Column({ type: DataType.TEXT, allowNull: true })
  declare whatsappId: string | null;

  @Column({ type: DataType.TEXT, allowNull: true })
  declare email: string | null;

  @Column({ type: DataType.TEXT, allowNull: true })
  declare phone: string | null;

  @Column({ type: DataType.JSONB, allowNull: false, defaultValue: {} })
  declare metadata: Record<string, unknown>;

  @HasMany(() => Deal, { onDelete: "RESTRICT", onUpdate: "CASCADE" })
  declare deals: NonAttribute<Deal[]>;

  @CreatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare createdAt: Date;

  @UpdatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare updatedAt: Date;
}
