import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";

/** Remembers signed webhooks' one-time tokens in the database, so every replica refuses a second use. */
export interface ReplayTokens {
  /** Records `token` until `expiresAt`; false when it was already recorded and has not expired. */
  claim(token: string, expiresAt: Date): Promise<boolean>;
  /** Forgets `token`, so the provider's retry of a delivery we failed to store is not refused as a replay. */
  release(token: string): Promise<void>;
}

/**
 * The replay store of one provider over `crm_webhook_replay_tokens`. A claim
 * is one statement: it deletes a few expired rows (of any provider, so the
 * table stays about as large as the tokens of the last five minutes), and
 * inserts the token, or, when an expired row still holds it, takes that row
 * over; `ON CONFLICT` makes two replicas that see one token at once agree
 * that exactly one claimed it.
 */
export function createReplayTokens(sequelize: Sequelize, provider: string): ReplayTokens {
  return {
    async claim(token, expiresAt) {
      const rows = await sequelize.query<{ claimed: boolean }>(CLAIM, {
        bind: [provider, token, expiresAt.toISOString()],
        type: QueryTypes.SELECT,
      });
      return rows.length > 0;
    },
    async release(token) {
      await sequelize.query("DELETE FROM crm_webhook_replay_tokens WHERE provider = $1 AND token = $2", { bind: [provider, token] });
    },
  };
}

const CLAIM = `
  WITH expired AS (
    DELETE FROM crm_webhook_replay_tokens
    WHERE ctid IN (SELECT ctid FROM crm_webhook_replay_tokens WHERE expires_at < now() AND (provider, token) <> ($1, $2) ORDER BY expires_at LIMIT 100)
  )
  INSERT INTO crm_webhook_replay_tokens (provider, token, expires_at) VALUES ($1, $2, $3::timestamptz)
  ON CONFLICT (provider, token) DO UPDATE SET expires_at = excluded.expires_at
    WHERE crm_webhook_replay_tokens.expires_at < now()
  RETURNING true AS claimed`;
