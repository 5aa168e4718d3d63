import { DataTypes, Sequelize, type QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * The privacy API (docs/privacy.md):
 *
 * - `crm_privacy_requests`, the audit trail of data subjects' requests. It
 *   holds no personal data, not even the contact ids asked for (pseudonymous
 *   ids are personal data while the contact rows can be linked to them):
 *   only counts, the channels named, the token's label and the timings.
 * - A sender's events read in time order: the index on (source, sender_id)
 *   gains created_at, so an export pages through one sender's events by
 *   keyset, one index range at a time. The longer index serves every lookup
 *   the shorter one did, so it replaces it rather than adding a third index
 *   for ingest to maintain.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.createTable(
      "crm_privacy_requests",
      {
        id: { type: DataTypes.UUID, primaryKey: true, defaultValue: Sequelize.literal("gen_random_uuid()") },
        kind: { type: DataTypes.TEXT, allowNull: false },
        state: { type: DataTypes.TEXT, allowNull: false, defaultValue: "RUNNING" },
        requested_by: { type: DataTypes.TEXT, allowNull: false },
        subject_contacts: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
        subject_senders: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
        subject_sources: { type: DataTypes.ARRAY(DataTypes.TEXT), allowNull: false, defaultValue: [] },
        contacts: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
        deals: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
        ingest_events: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
        started_at: { type: DataTypes.DATE, allowNull: false, defaultValue: Sequelize.fn("now") },
        finished_at: { type: DataTypes.DATE, allowNull: true },
        duration_ms: { type: DataTypes.BIGINT, allowNull: true },
        error_code: { type: DataTypes.TEXT, allowNull: true },
      },
      { transaction },
    );
    await queryInterface.sequelize.query(
      `ALTER TABLE crm_privacy_requests
         ADD CONSTRAINT crm_privacy_requests_kind_check CHECK (kind IN ('EXPORT', 'ERASURE', 'RETENTION')),
         ADD CONSTRAINT crm_privacy_requests_state_check CHECK (state IN ('RUNNING', 'DONE', 'FAILED'))`,
      { transaction },
    );
    // The trail is listed newest first.
    await queryInterface.addIndex("crm_privacy_requests", ["started_at", "id"], { name: "crm_privacy_requests_started_at_id_idx", transaction });

    await queryInterface.addIndex("crm_ingest_events", ["source", "sender_id", "created_at"], {
      name: "crm_ingest_events_source_sender_id_created_at_idx",
      transaction,
    });
    await queryInterface.removeIndex("crm_ingest_events", "crm_ingest_events_source_sender_id_idx", { transaction });
  });
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.addIndex("crm_ingest_events", ["source", "sender_id"], { name: "crm_ingest_events_source_sender_id_idx", transaction });
    await queryInterface.removeIndex("crm_ingest_events", "crm_ingest_events_source_sender_id_created_at_idx", { transaction });
    await queryInterface.dropTable("crm_privacy_requests", { transaction });
  });
};
