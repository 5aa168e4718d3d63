import type { QueryInterface } from "sequelize";

type Migration = (params: { context: QueryInterface }) => Promise<void>;

/**
 * WhatsApp's business-scoped user ids (BSUID) and the phone number each was
 * last seen with (docs/channels.md, "One identity per person"). Meta sends a
 * BSUID alone for users who adopted a username; this table lets such a
 * message resolve to the contact of the number it was seen with before.
 * The contact table stays as it is: a BSUID is an alias, not a contact key.
 * `whatsapp_id` holds the canonical number (the contacts' form); its index
 * finds every BSUID of a number (a person's data on request).
 */
export const up: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.query(`
    CREATE TABLE crm_whatsapp_user_links (
      user_id text PRIMARY KEY,
      whatsapp_id text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now()
    )`);
  await queryInterface.sequelize.query("CREATE INDEX crm_whatsapp_user_links_whatsapp_id_idx ON crm_whatsapp_user_links (whatsapp_id)");
};

export const down: Migration = async ({ context: queryInterface }) => {
  await queryInterface.sequelize.query("DROP TABLE crm_whatsapp_user_links");
};
