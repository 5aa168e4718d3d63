import { DataTypes, type QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * What an event is (docs/feed.md): an inbound message, or a record of
 * something else that downstream services follow through the same feed, such
 * as a provider's delivery status, a provider's system notice or a privacy
 * erasure. Every event stored before this column existed is a message.
 *
 * A constant default adds the column without rewriting a row. The check
 * constraint is added NOT VALID and validated afterwards, so the table is
 * scanned under a lock that lets ingest go on.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.addColumn("crm_ingest_events", "kind", { type: DataTypes.TEXT, allowNull: false, defaultValue: "MESSAGE" });
  await queryInterface.sequelize.query(
    `ALTER TABLE crm_ingest_events ADD CONSTRAINT crm_ingest_events_kind_check
       CHECK (kind IN ('MESSAGE', 'STATUS', 'SYSTEM', 'ERASURE')) NOT VALID`,
  );
  await queryInterface.sequelize.query("ALTER TABLE crm_ingest_events VALIDATE CONSTRAINT crm_ingest_events_kind_check");
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.removeConstraint("crm_ingest_events", "crm_ingest_events_kind_check");
  await queryInterface.removeColumn("crm_ingest_events", "kind");
};
