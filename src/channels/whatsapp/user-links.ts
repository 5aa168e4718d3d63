import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { canonicalWhatsappId } from "../../ingest/identity/whatsapp-id.js";
import type { PhoneRegion } from "../../ingest/identity/phone-number.js";
import type { UserLink } from "./cloud-api-delivery.js";

/** What a delivery tells about business-scoped user ids (BSUID), and which it needs a number for. */
export interface UserLinkChanges {
  /** (BSUID, number) pairs Meta sent together. */
  links: UserLink[];
  /** BSUIDs replaced by new ones (`user_changed_user_id`): the new one takes the old one's number. */
  renamed: Array<{ previous: string; current: string }>;
  /** BSUIDs of senders that came without a number. */
  wanted: string[];
}

/** Records and resolves WhatsApp BSUID links; create one per process. */
export interface UserLinks {
  /** Stores the delivery's links, then answers the canonical number of each wanted BSUID that has one. */
  resolve(changes: UserLinkChanges): Promise<Map<string, string>>;
}

/** Pairs this process wrote or read lately, so a delivery that repeats a known pair costs no write. */
const CACHE_SIZE = 10_000;

/**
 * The BSUID link table (crm_whatsapp_user_links) as one command. Each call is
 * at most two statements, each atomic on its own (autocommit): links are
 * idempotent facts ("this BSUID was seen with this number"), so a link kept
 * after its delivery failed is still true, and the provider's retry writes
 * it again. Numbers are stored in the contacts' canonical form; a pair whose
 * number is not a valid WhatsApp number is skipped.
 *
 * A pair this process already wrote or read is not written again: with
 * BSUIDs in every delivery, that spares most deliveries a statement. Another
 * replica's change (a number changed) reaches this one as soon as Meta sends
 * the new pair, which differs from the cached one.
 */
export function createUserLinks(sequelize: Sequelize, region: PhoneRegion): UserLinks {
  const known = new Map<string, string>();
  const remember = (userId: string, whatsappId: string) => {
    known.delete(userId);
    known.set(userId, whatsappId);
    if (known.size > CACHE_SIZE) known.delete(known.keys().next().value!);
  };
  const canonical = (phone: string) => {
    const result = canonicalWhatsappId(phone, region);
    return result.ok && /^[0-9]+$/.test(result.value) ? result.value : undefined;
  };

  const write = async (pairs: Map<string, string>, lookup: string[]): Promise<Map<string, string>> => {
    const fresh = [...pairs].filter(([userId, whatsappId]) => known.get(userId) !== whatsappId);
    const found = new Map<string, string>();
    if (fresh.length === 0 && lookup.length === 0) return found;
    const rows = await sequelize.query<{ user_id: string; whatsapp_id: string }>(UPSERT_AND_READ, {
      bind: [fresh.map(([userId]) => userId), fresh.map(([, whatsappId]) => whatsappId), lookup],
      type: QueryTypes.SELECT,
    });
    for (const [userId, whatsappId] of fresh) remember(userId, whatsappId);
    for (const row of rows) {
      found.set(row.user_id, row.whatsapp_id);
      remember(row.user_id, row.whatsapp_id);
    }
    return found;
  };

  return {
    async resolve({ links, renamed, wanted }) {
      // The delivery's own pairs, later ones winning: they answer its senders without a read.
      const pairs = new Map<string, string>();
      for (const { userId, phone } of links) {
        const whatsappId = canonical(phone);
        if (whatsappId) pairs.set(userId, whatsappId);
      }
      const lookup = [...new Set([...wanted, ...renamed.map((r) => r.previous)])].filter((userId) => !pairs.has(userId));
      const stored = await write(pairs, lookup);
      const numbers = new Map([...stored, ...pairs]);
      // A renamed BSUID's person keeps the number the old id had.
      const carried = new Map<string, string>();
      for (const { previous, current } of renamed) {
        const whatsappId = numbers.get(previous);
        if (whatsappId && !pairs.has(current)) carried.set(current, whatsappId);
      }
      if (carried.size > 0) await write(carried, []);
      return new Map([...numbers, ...carried]);
    },
  };
}

/**
 * Upserts the given pairs (in key order, so concurrent writers lock alike;
 * an unchanged pair is not rewritten) and reads the numbers of the BSUIDs
 * asked for. The read sees the table as the statement began: ids asked for
 * are never among those written (the caller answers those itself).
 */
const UPSERT_AND_READ = `
  WITH given AS (
    SELECT user_id, whatsapp_id FROM unnest($1::text[], $2::text[]) AS g(user_id, whatsapp_id)
  ), written AS (
    INSERT INTO crm_whatsapp_user_links AS link (user_id, whatsapp_id)
    SELECT user_id, whatsapp_id FROM given ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET whatsapp_id = EXCLUDED.whatsapp_id, updated_at = now()
    WHERE link.whatsapp_id <> EXCLUDED.whatsapp_id
  )
  SELECT user_id, whatsapp_id FROM crm_whatsapp_user_links WHERE user_id = ANY($3::text[])`;
