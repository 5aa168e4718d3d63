import type { QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * One-time tokens of signed webhooks (Mailgun's `token`), remembered while
 * their signed timestamp is fresh, so a captured signature is accepted once
 * on whichever replica it reaches (docs/channels.md). Rows past
 * `expires_at` are deleted as new tokens arrive.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.query(`
    CREATE TABLE crm_webhook_replay_tokens (
      provider text NOT NULL,
      token text NOT NULL,
      expires_at timestamptz NOT NULL,
      PRIMARY KEY (provider, token)
    )`);
  await queryInterface.sequelize.query("CREATE INDEX crm_webhook_replay_tokens_expires_at_idx ON crm_webhook_replay_tokens (expires_at)");
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.query("DROP TABLE crm_webhook_replay_tokens");
};
