import { fn } from "sequelize";
import { Column, CreatedAt, DataType, Model, Table, UpdatedAt } from "sequelize-typescript";

/**
 * A WhatsApp business-scoped user id (BSUID) and the canonical phone number
 * it was last seen with: an alias by which a message that carries only the
 * BSUID finds its contact. Describes exactly the table the migrations create
 * (test/models.test.ts compares them).
 */
@Table({
  tableName: "crm_whatsapp_user_links",
  underscored: true,
  timestamps: true,
  indexes: [{ name: "crm_whatsapp_user_links_whatsapp_id_idx", fields: ["whatsapp_id"] }],
})
export class WhatsappUserLink extends Model {
  @Column({ type: DataType.TEXT, primaryKey: true })
  declare userId: string;

  /** The number in the contacts' canonical form (E.164 digits without "+"). */
  @Column({ type: DataType.TEXT, allowNull: false })
  declare whatsappId: string;

  @CreatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare createdAt: Date;

  @UpdatedAt
  @Column({ type: DataType.DATE, allowNull: false, defaultValue: fn("now") })
  declare updatedAt: Date;
}
