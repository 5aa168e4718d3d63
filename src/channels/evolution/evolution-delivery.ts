import type { IngestMessageInput } from "../../ingest/ingest-message.js";

/** One event a delivery asks us to store; `unusable` says why it is stored as an ERROR event instead. */
export type EvolutionItem = IngestMessageInput & { unusable?: string };

/** Why a delivery was acknowledged without storing an item: each is counted. */
export type EvolutionSkip = "from_me" | "status_broadcast" | "group" | "other_event";

/** What a delivery holds for us: the events to store, and what was acknowledged and left out. */
export interface EvolutionDelivery {
  event: string;
  instance: string;
  items: EvolutionItem[];
  skipped: EvolutionSkip[];
}

/** A delivery read, or why it is refused (stored nothing; counted by reason). */
export type EvolutionReading = { ok: true; delivery: EvolutionDelivery } | { ok: false; reason: "bad_json" | "bad_shape" | "wrong_instance" };

/** Events from Evolution are WhatsApp messages: the identity rules of `whatsapp` apply, so one person is one contact whichever gateway carried them. */
export const EVOLUTION_SOURCE = "whatsapp";

/**
 * Reads one Evolution API webhook delivery (envelope `{event, instance, data,
 * destination, date_time, sender, server_url, apikey}`, from
 * EvolutionAPI/evolution-api `src/api/integrations/event/webhook/webhook.controller.ts`).
 *
 * - `messages.upsert`: a message, unless we sent it (`key.fromMe`), it is a
 *   status story (`status@broadcast`) or it was written in a group (`@g.us`:
 *   its members did not write to us, docs/channels.md).
 * - `messages.update`: a delivery status of one message (kind STATUS).
 * - anything else (connection, QR code, contacts, chats, presence): acknowledged, not stored.
 *
 * `external_id` is `<instance>:<message id>` (one gateway can run several
 * numbers, and message ids are only unique per number), and for a status
 * `<instance>:<message id>:<status>`. The envelope's `apikey` (the
 * instance's own API key) is never copied.
 */
export function readEvolutionDelivery(raw: string, routeInstance: string): EvolutionReading {
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    return { ok: false, reason: "bad_json" };
  }
  if (!isObject(body) || typeof body.event !== "string" || typeof body.instance !== "string") return { ok: false, reason: "bad_shape" };
  if (body.instance !== routeInstance) return { ok: false, reason: "wrong_instance" };
  const delivery: EvolutionDelivery = { event: body.event, instance: body.instance, items: [], skipped: [] };
  // Evolution names events `messages.upsert`; its per-event URLs and older versions spell them `MESSAGES_UPSERT`.
  const event = body.event.toLowerCase().replace(/_/g, ".");
  const data = Array.isArray(body.data) ? body.data : [body.data];
  const envelope = { instance: body.instance, sender: text(body.sender), dateTime: text(body.date_time) };
  for (const entry of data) {
    if (event === "messages.upsert") readMessage(entry, envelope, delivery);
    else if (event === "messages.update") readStatus(entry, envelope, delivery);
    else delivery.skipped.push("other_event");
  }
  return { ok: true, delivery };
}

interface Envelope {
  instance: string;
  sender: string | undefined;
  dateTime: string | undefined;
}

function readMessage(entry: unknown, envelope: Envelope, delivery: EvolutionDelivery): void {
  const key = isObject(entry) && isObject(entry.key) ? entry.key : undefined;
  const remoteJid = text(key?.remoteJid);
  if (key?.fromMe === true) return void delivery.skipped.push("from_me");
  if (remoteJid === "status@broadcast") return void delivery.skipped.push("status_broadcast");
  if (remoteJid?.endsWith("@g.us")) return void delivery.skipped.push("group");
  const id = text(key?.id);
  const message = isObject(entry) && isObject(entry.message) ? entry.message : {};
  const type = (isObject(entry) && text(entry.messageType)) || Object.keys(message)[0] || "unknown";
  // With LID addressing the chat is `<lid>@lid` and the phone's jid comes as remoteJidAlt (senderPn in older versions).
  const senderId = remoteJid?.endsWith("@lid") ? (text(key?.remoteJidAlt) ?? text(key?.senderPn) ?? remoteJid) : remoteJid;
  const context = isObject(entry) && isObject(entry.contextInfo) ? entry.contextInfo : undefined;
  const metadata: Record<string, unknown> = compact({
    gateway: "evolution",
    instance: envelope.instance,
    instance_number: envelope.sender,
    message_id: id,
    type,
    timestamp: isObject(entry) ? entry.messageTimestamp : undefined,
    push_name: isObject(entry) ? text(entry.pushName) : undefined,
    remote_jid: remoteJid,
    remote_jid_alt: text(key?.remoteJidAlt),
    reply_to: text(context?.stanzaId),
    media: media(message),
    date_time: envelope.dateTime,
  });
  const unusable = !id ? "the message has no key.id" : !senderId ? "the message has no key.remoteJid" : undefined;
  delivery.items.push({
    source: EVOLUTION_SOURCE,
    senderId: senderId ?? "",
    content: contentOf(message, type),
    metadata,
    externalId: id ? `${envelope.instance}:${id}` : null,
    kind: "MESSAGE",
    ...(unusable && { unusable }),
  });
}

function readStatus(entry: unknown, envelope: Envelope, delivery: EvolutionDelivery): void {
  if (!isObject(entry)) {
    delivery.items.push(unusableStatus(envelope, "the status update is not an object"));
    return;
  }
  const remoteJid = text(entry.remoteJid);
  if (remoteJid?.endsWith("@g.us")) return void delivery.skipped.push("group");
  if (remoteJid === "status@broadcast") return void delivery.skipped.push("status_broadcast");
  const id = text(entry.keyId);
  const status = text(entry.status);
  const unusable = !id ? "the status update has no keyId" : !status ? "the status update has no status" : !remoteJid ? "the status update has no remoteJid" : undefined;
  delivery.items.push({
    source: EVOLUTION_SOURCE,
    senderId: remoteJid ?? "",
    content: status ?? "",
    metadata: compact({
      gateway: "evolution",
      instance: envelope.instance,
      instance_number: envelope.sender,
      message_id: id,
      status,
      from_me: typeof entry.fromMe === "boolean" ? entry.fromMe : undefined,
      remote_jid: remoteJid,
      date_time: envelope.dateTime,
    }),
    externalId: id && status ? `${envelope.instance}:${id}:${status}` : null,
    kind: "STATUS",
    ...(unusable && { unusable }),
  });
}

function unusableStatus(envelope: Envelope, reason: string): EvolutionItem {
  return {
    source: EVOLUTION_SOURCE,
    senderId: "",
    content: "",
    metadata: { gateway: "evolution", instance: envelope.instance },
    externalId: null,
    kind: "STATUS",
    unusable: reason,
  };
}

/** The readable text of a message: its text or caption, or a short label such as `[image]` for one without. */
function contentOf(message: Record<string, unknown>, type: string): string {
  const part = (name: string) => (isObject(message[name]) ? message[name] : undefined);
  const found =
    text(message.conversation) ??
    text(part("extendedTextMessage")?.text) ??
    text(part("imageMessage")?.caption) ??
    text(part("videoMessage")?.caption) ??
    text(part("documentMessage")?.caption) ??
    text(part("buttonsResponseMessage")?.selectedDisplayText) ??
    text(part("templateButtonReplyMessage")?.selectedDisplayText) ??
    text(part("listResponseMessage")?.title) ??
    text(part("reactionMessage")?.text);
  if (found) return found;
  const location = part("locationMessage");
  if (location) return `[location] ${String(location.degreesLatitude)},${String(location.degreesLongitude)}${text(location.name) ? ` ${text(location.name)}` : ""}`;
  const contact = part("contactMessage");
  if (contact) return `[contact] ${text(contact.displayName) ?? ""}`.trim();
  const document = part("documentMessage");
  if (document && text(document.fileName)) return `[document] ${text(document.fileName)}`;
  return `[${type.replace(/Message$/, "")}]`;
}

/** What a media message says about its file; the file itself (and any base64 copy Evolution adds) is not stored. */
function media(message: Record<string, unknown>): Record<string, unknown> | undefined {
  for (const name of ["imageMessage", "videoMessage", "audioMessage", "documentMessage", "stickerMessage"]) {
    const part = message[name];
    if (!isObject(part)) continue;
    return compact({
      kind: name.replace(/Message$/, ""),
      mime_type: text(part.mimetype),
      file_name: text(part.fileName),
      file_length: typeof part.fileLength === "string" || typeof part.fileLength === "number" ? String(part.fileLength) : undefined,
      sha256: typeof part.fileSha256 === "string" ? part.fileSha256 : undefined,
      seconds: typeof part.seconds === "number" ? part.seconds : undefined,
    });
  }
  return undefined;
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);
const text = (value: unknown): string | undefined => (typeof value === "string" && value !== "" ? value : undefined);
const compact = (record: Record<string, unknown>) => Object.fromEntries(Object.entries(record).filter(([, value]) => value !== undefined));
