import type { QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * Where the feed's relay to each JetStream stream has got to (docs/relay.md):
 * the feed position of the last event the stream acknowledged and that
 * message's stream sequence. The stream's own last message is the truth the
 * relay reconciles with when it takes over; this row lets it resume when
 * the stream can no longer tell (its last message expired).
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.query(`
    CREATE TABLE crm_feed_relay_state (
      stream_name text PRIMARY KEY,
      feed_xid xid8 NOT NULL,
      feed_seq bigint NOT NULL,
      stream_seq bigint NOT NULL CHECK (stream_seq >= 0),
      updated_at timestamptz NOT NULL DEFAULT now()
    )`);
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.query("DROP TABLE crm_feed_relay_state");
};
