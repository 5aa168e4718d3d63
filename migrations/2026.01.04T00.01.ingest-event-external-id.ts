import { DataTypes, type QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * Idempotent retries: an event may carry the provider's message id (or a
 * client-chosen key) as `external_id`. The unique index on
 * (source, external_id) is what makes a retry store nothing new, concurrent
 * retries included; events without one (NULL) never collide.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.addColumn("crm_ingest_events", "external_id", { type: DataTypes.TEXT, allowNull: true }, { transaction });
    await queryInterface.addIndex("crm_ingest_events", ["source", "external_id"], {
      name: "crm_ingest_events_source_external_id_key",
      unique: true,
      transaction,
    });
  });
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.removeIndex("crm_ingest_events", "crm_ingest_events_source_external_id_key", { transaction });
    await queryInterface.removeColumn("crm_ingest_events", "external_id", { transaction });
  });
};
