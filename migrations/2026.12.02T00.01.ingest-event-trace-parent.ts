import { DataTypes, type QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * The trace an event was born in: the W3C `traceparent` of the request that
 * stored it (docs/tracing.md), carried on into the feed and the stream so a
 * consumer can link to it. Null for events stored without one, and for every
 * event stored before this column existed. A nullable column without default:
 * adding it rewrites no row.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.addColumn("crm_ingest_events", "trace_parent", { type: DataTypes.TEXT, allowNull: true });
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.removeColumn("crm_ingest_events", "trace_parent");
};
