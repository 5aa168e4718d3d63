/**
 * The floor's unit of work: what a hand-written client does for one message
 * with the same semantics as the service, and nothing else. Used by the `sql`
 * scenario straight from the load generator, and by the reference servers
 * (bench/bare-server.ts, bench/bare-connect-server.ts), with what they share.
 *
 * One statement per message (atomic on its own, so no BEGIN/COMMIT round
 * trips), prepared once per connection: look the contact up by its key,
 * insert the event linked to it (nothing when its external_id is already
 * stored), and insert the contact when it was new and the event was stored.
 * When a concurrent message from the same new sender created the contact
 * first, the unique index refuses ours and the statement, undone, runs again.
 * It is the statement the service runs, written out here so the floor
 * depends on nothing of the service.
 */
import type net from "node:net";
import pg from "pg";
import type { Message } from "./traffic.js";

export type FloorMessage = Pick<Message, "source" | "senderId" | "content" | "metadata" | "externalId">;

const statement = (column: "whatsapp_id" | "email") => ({
  name: `floor_ingest_${column}`,
  text: `
    WITH existing AS (
      SELECT id FROM crm_contacts WHERE ${column} = $1
    ), contact AS (
      SELECT coalesce((SELECT id FROM existing), gen_random_uuid()) AS id, NOT EXISTS (SELECT FROM existing) AS is_new
    ), event AS (
      INSERT INTO crm_ingest_events (source, sender_id, content, metadata, external_id, contact_id, status)
      SELECT $2, $3, $4, $5::jsonb, $6, contact.id, 'LINKED' FROM contact
      ON CONFLICT (source, external_id) DO NOTHING
      RETURNING id, contact_id
    ), created AS (
      INSERT INTO crm_contacts (id, ${column})
      SELECT contact.id, $1 FROM contact, event WHERE contact.is_new
      RETURNING id
    )
    SELECT event.id, event.contact_id, EXISTS (SELECT FROM created) AS created FROM event`,
});
const statements = { whatsapp: statement("whatsapp_id"), email: statement("email") };

/** Stores one message on the pool; resolves to the event's and contact's ids. */
export async function floorIngest(pool: pg.Pool, m: FloorMessage): Promise<{ id: string; contact_id: string }> {
  const { name, text } = statements[m.source];
  // Keys are stored canonical, as the service stores them (e-mail trimmed and lower-cased).
  const key = m.source === "email" ? m.senderId.trim().toLowerCase() : m.senderId.trim();
  const values = [key, m.source, m.senderId, m.content, JSON.stringify(m.metadata), m.externalId];
  for (let attempt = 1; ; attempt++) {
    try {
      const { rows } = await pool.query<{ id: string; contact_id: string }>({ name, text, values });
      if (rows.length === 0) throw new Error(`external_id ${m.externalId} was already stored`);
      return rows[0];
    } catch (error) {
      if ((error as { code?: string }).code !== "23505" || attempt === 3) throw error;
    }
  }
}

/** A reference server's pool, sized like the service's: DATABASE_URL, DATABASE_POOL_MAX. */
export function referencePool(): pg.Pool {
  return new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.DATABASE_POOL_MAX) || 10 });
}

/**
 * Runs a reference server as bench/run.ts expects of any server: on an
 * ephemeral loopback port, saying `listening on <url>`, and ending on SIGTERM.
 */
export function serveReference(server: net.Server, pool: pg.Pool): void {
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as net.AddressInfo;
    console.log(`listening on http://127.0.0.1:${port}`);
  });
  process.once("SIGTERM", () => {
    server.close();
    void pool.end().then(() => process.exit(0));
  });
}
