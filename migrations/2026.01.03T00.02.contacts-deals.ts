import { DataTypes, Sequelize, type QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * Contacts and deals (OS 004). Contacts carry unique indexes on their identity
 * columns from the start: find-or-create depends on them to never duplicate
 * a person.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.createTable(
      "crm_contacts",
      {
        id: { type: DataTypes.UUID, primaryKey: true, defaultValue: Sequelize.literal("gen_random_uuid()") },
        name: { type: DataTypes.TEXT, allowNull: true },
        whatsapp_id: { type: DataTypes.TEXT, allowNull: true },
        email: { type: DataTypes.TEXT, allowNull: true },
        phone: { type: DataTypes.TEXT, allowNull: true },
        metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
        created_at: { type: DataTypes.DATE, allowNull: false, defaultValue: Sequelize.fn("now") },
        updated_at: { type: DataTypes.DATE, allowNull: false, defaultValue: Sequelize.fn("now") },
      },
      { transaction },
    );
    await queryInterface.addIndex("crm_contacts", ["whatsapp_id"], {
      name: "crm_contacts_whatsapp_id_key",
      unique: true,
      transaction,
    });
    await queryInterface.addIndex("crm_contacts", ["email"], { name: "crm_contacts_email_key", unique: true, transaction });

    await queryInterface.createTable(
      "crm_deals",
      {
        id: { type: DataTypes.UUID, primaryKey: true, defaultValue: Sequelize.literal("gen_random_uuid()") },
        contact_id: {
          type: DataTypes.UUID,
          allowNull: false,
          references: { model: "crm_contacts", key: "id" },
          onDelete: "RESTRICT",
          onUpdate: "CASCADE",
        },
        title: { type: DataTypes.TEXT, allowNull: false },
        stage: { type: DataTypes.TEXT, allowNull: false, defaultValue: "open" },
        value: { type: DataTypes.DECIMAL(14, 2), allowNull: true },
        metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
        created_at: { type: DataTypes.DATE, allowNull: false, defaultValue: Sequelize.fn("now") },
        updated_at: { type: DataTypes.DATE, allowNull: false, defaultValue: Sequelize.fn("now") },
      },
      { transaction },
    );
    await queryInterface.addIndex("crm_deals", ["contact_id"], { name: "crm_deals_contact_id_idx", transaction });
  });
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.dropTable("crm_deals", { transaction });
    await queryInterface.dropTable("crm_contacts", { transaction });
  });
};
