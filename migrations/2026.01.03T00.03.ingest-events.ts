import { DataTypes, Sequelize, type QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * Ingest events (OS 005): every inbound message, linked to its contact when
 * the sender resolves to one. Leaves crm_contacts and crm_deals as they are.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.createTable(
      "crm_ingest_events",
      {
        id: { type: DataTypes.UUID, primaryKey: true, defaultValue: Sequelize.literal("gen_random_uuid()") },
        source: { type: DataTypes.TEXT, allowNull: false },
        sender_id: { type: DataTypes.TEXT, allowNull: false },
        content: { type: DataTypes.TEXT, allowNull: false },
        metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
        contact_id: {
          type: DataTypes.UUID,
          allowNull: true,
          references: { model: "crm_contacts", key: "id" },
          onDelete: "RESTRICT",
          onUpdate: "CASCADE",
        },
        status: { type: DataTypes.TEXT, allowNull: false, defaultValue: "RECEIVED" },
        error: { type: DataTypes.TEXT, allowNull: true },
        created_at: { type: DataTypes.DATE, allowNull: false, defaultValue: Sequelize.fn("now") },
      },
      { transaction },
    );
    await queryInterface.addConstraint("crm_ingest_events", {
      type: "check",
      name: "crm_ingest_events_status_check",
      fields: ["status"],
      where: { status: ["RECEIVED", "LINKED", "ERROR"] },
      transaction,
    });
    // A contact's timeline, a sender's history, and consumers reading new events in order.
    await queryInterface.addIndex("crm_ingest_events", ["contact_id", "created_at"], {
      name: "crm_ingest_events_contact_id_created_at_idx",
      transaction,
    });
    await queryInterface.addIndex("crm_ingest_events", ["source", "sender_id"], {
      name: "crm_ingest_events_source_sender_id_idx",
      transaction,
    });
    await queryInterface.addIndex("crm_ingest_events", ["created_at"], {
      name: "crm_ingest_events_created_at_idx",
      transaction,
    });
    await queryInterface.addIndex("crm_ingest_events", ["status"], { name: "crm_ingest_events_status_idx", transaction });
  });
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.dropTable("crm_ingest_events");
};
