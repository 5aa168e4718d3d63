/**
 * What the benchmark sends: the same sender distribution and message shapes
 * for every scenario, the raw-SQL floor included.
 *
 * Senders come from a pool of known contacts (seeded before the run, see
 * `seedContactsSql`) except for a share of brand-new ones, each used once,
 * so every new sender creates exactly one contact.
 */
import { randomInt } from "node:crypto";

/** One message as a channel gateway would deliver it. */
export interface Message {
  source: "whatsapp" | "email";
  senderId: string;
  content: string;
  metadata: Record<string, unknown>;
  /** The provider's message id, unique per message as gateways send it. */
  externalId: string;
  /** True when the sender is new: its contact must be created. */
  isNew: boolean;
}

/** Every fourth sender writes e-mail, the others WhatsApp (the split our gateways see). */
function sender(n: number, whatsapp: string, email: string): Pick<Message, "source" | "senderId"> {
  return n % 4 === 0 ? { source: "email", senderId: email } : { source: "whatsapp", senderId: whatsapp };
}

/**
 * The n-th known sender (1-based), exactly as `seedContactsSql` stores its
 * contact: São Paulo mobile numbers and e-mail addresses, both already in
 * their canonical form.
 */
export function knownSender(n: number) {
  return sender(n, `55119${String(n).padStart(8, "0")}`, `contact${n}@example.com`);
}

/**
 * SQL that creates contacts 1..$1 for `knownSender`, skipping those that
 * exist (the same statement seeds the sender pool and the growth preload).
 */
export const seedContactsSql = `
  INSERT INTO crm_contacts (whatsapp_id, email, name)
  SELECT CASE WHEN n % 4 = 0 THEN NULL ELSE '55119' || lpad(n::text, 8, '0') END,
         CASE WHEN n % 4 = 0 THEN 'contact' || n || '@example.com' END,
         'Contact ' || n
  FROM generate_series(1, $1::int) AS n
  ON CONFLICT DO NOTHING`;

/**
 * SQL that stores $1 past events spread over the first $2 known contacts,
 * with the same shape the load sends: the growth run's history.
 */
export const preloadEventsSql = `
  INSERT INTO crm_ingest_events (source, sender_id, content, metadata, external_id, contact_id, status, created_at)
  SELECT CASE WHEN c.email IS NULL THEN 'whatsapp' ELSE 'email' END,
         coalesce(c.whatsapp_id, c.email),
         repeat('Olá! Gostaria de saber o prazo de entrega do pedido e as formas de pagamento. ', 1 + e % 5),
         jsonb_build_object('gateway', 'zapi', 'message_id', 'pre-' || e, 'attempt', 1, 'tags', jsonb_build_array('inbound')),
         'pre-' || e, c.id, 'LINKED', now() - make_interval(secs => e)
  FROM generate_series(1, $1::int) AS e
  JOIN (SELECT id, whatsapp_id, email, row_number() OVER () AS n FROM crm_contacts) AS c
    ON c.n = 1 + e % $2::int`;

const WORDS = (
  "olá bom dia boa tarde gostaria de saber o prazo entrega pedido número pagamento boleto pix cartão " +
  "parcelas desconto orçamento visita técnica instalação garantia troca devolução nota fiscal endereço " +
  "hello thanks order invoice refund delivery tomorrow please call me back when you can about the quote"
).split(" ");

/** A few dozen message bodies of 150 to 600 bytes, built once so sending costs no text generation. */
const BODIES = Array.from({ length: 64 }, () => {
  const target = 150 + randomInt(450);
  let text = "";
  while (Buffer.byteLength(text) < target) text += (text ? " " : "") + WORDS[randomInt(WORDS.length)];
  return text;
});

const GATEWAYS = { whatsapp: ["zapi", "twilio", "meta-cloud"], email: ["sendgrid", "ses"] } as const;

/**
 * Draws messages: `newShare` of them from never-seen senders (unique per
 * `tag`, so the scenarios of one run never share one; up to a million per
 * tag), the rest uniformly from the `poolSize` known senders; with
 * `whatsappOnly`, WhatsApp senders only (the webhook scenarios).
 */
export function messageSource(options: { poolSize: number; newShare: number; tag: string; whatsappOnly?: boolean }) {
  let sequence = 0;
  let created = 0;
  return (): Message => {
    sequence++;
    let who: Pick<Message, "source" | "senderId">;
    let isNew = false;
    if (Math.random() < options.newShare) {
      created++;
      isNew = true;
      // Rio de Janeiro mobile numbers, never seeded.
      who = sender(options.whatsappOnly ? 1 : created, `55219${options.tag}${String(created).padStart(6, "0")}`, `new.${options.tag}.${created}@example.org`);
    } else {
      const n = 1 + randomInt(options.poolSize);
      // A WhatsApp delivery carries only WhatsApp senders: every fourth known sender writes e-mail, so its neighbour stands in.
      who = knownSender(options.whatsappOnly && n % 4 === 0 ? n - 1 : n);
    }
    const gateways = GATEWAYS[who.source];
    const messageId = `${options.tag}-${sequence}`;
    return {
      ...who,
      content: BODIES[sequence % BODIES.length],
      metadata: {
        gateway: gateways[sequence % gateways.length],
        message_id: messageId,
        received_at: new Date().toISOString(),
        attempt: 1,
        tags: sequence % 3 === 0 ? ["inbound", "first-contact"] : ["inbound"],
      },
      externalId: who.source === "whatsapp" ? `wamid.${messageId}` : `<${messageId}@mail.example.com>`,
      isNew,
    };
  };
}
