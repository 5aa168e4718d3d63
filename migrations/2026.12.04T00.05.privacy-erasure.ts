import type { QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * Erasure and retention (docs/privacy.md, "Erasure"):
 *
 * - `crm_privacy_keys`: secrets owned by the database, so every replica
 *   computes the same keyed digests without a new setting. Row `digest` is
 *   the HMAC key of sender stream tokens and of erased external ids. It is
 *   random (two random UUIDs' 244 random bits), made here once.
 * - `crm_privacy_erasures`: one erasure or retention job per privacy
 *   request. The subject (contact ids and senders) is kept only while the job
 *   runs, so a restart can finish it; it is cleared when the job ends.
 *   `stream_tokens` are the sender stream tokens of every (source, sender)
 *   the job erased, which the relay purges from the stream.
 * - `crm_privacy_erased_ids`: the keyed digest of (source, external_id) of
 *   every erased event and the event's id, so a provider's retry of an erased
 *   message is answered as a duplicate and stores nothing.
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    const run = (sql: string) => queryInterface.sequelize.query(sql, { transaction });
    await run(`
      CREATE TABLE crm_privacy_keys (
        name text PRIMARY KEY,
        secret bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      )`);
    await run(`INSERT INTO crm_privacy_keys (name, secret)
      VALUES ('digest', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))`);
    await run(`
      CREATE TABLE crm_privacy_erasures (
        request_id uuid PRIMARY KEY REFERENCES crm_privacy_requests (id) ON DELETE RESTRICT,
        kind text NOT NULL CHECK (kind IN ('ERASURE', 'RETENTION')),
        state text NOT NULL DEFAULT 'RUNNING' CHECK (state IN ('RUNNING', 'DONE')),
        subject_digest text,
        subject jsonb,
        stream_tokens text[] NOT NULL DEFAULT '{}',
        scope_index integer NOT NULL DEFAULT 0,
        cursor_at timestamptz,
        cursor_id uuid,
        events_erased bigint NOT NULL DEFAULT 0,
        contacts_cleared bigint NOT NULL DEFAULT 0,
        erasure_event_id uuid,
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
    // A retried request finds the job already running for the same subject.
    await run(`CREATE UNIQUE INDEX crm_privacy_erasures_running_subject_key ON crm_privacy_erasures (subject_digest) WHERE state = 'RUNNING'`);
    await run(`
      CREATE TABLE crm_privacy_erased_ids (
        digest text PRIMARY KEY,
        event_id uuid NOT NULL,
        erased_at timestamptz NOT NULL DEFAULT now()
      )`);
  });
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.transaction(async (transaction) => {
    await queryInterface.sequelize.query("DROP TABLE crm_privacy_erased_ids", { transaction });
    await queryInterface.sequelize.query("DROP TABLE crm_privacy_erasures", { transaction });
    await queryInterface.sequelize.query("DROP TABLE crm_privacy_keys", { transaction });
  });
};
