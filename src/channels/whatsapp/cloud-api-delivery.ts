/**
 * Reads one delivery of Meta's WhatsApp Cloud API webhook (the `messages`
 * field of a `whatsapp_business_account` object) into ingest inputs: every
 * message, status and system notice of every entry and change, in order.
 * Shapes: developers.facebook.com/documentation/business-messaging/whatsapp/
 * webhooks/reference/messages (and its per-type pages); docs/channels.md
 * lists what becomes content and metadata.
 *
 * Nothing here touches the database: senders known only by their
 * business-scoped user id (BSUID) are left for the route to resolve through
 * the link table (user-links.ts).
 */
import { createHash } from "node:crypto";
import type { IngestEventKind } from "../../db/models/IngestEvent.js";

/** The source every event of this channel is stored under. */
export const WHATSAPP_SOURCE = "whatsapp";

/** One item of a delivery, ready for the ingest command once its sender is known. */
export interface DeliveryItem {
  kind: IngestEventKind;
  /** The user's phone number as Meta sent it (E.164 digits), when it did. */
  phone: string | null;
  /** The user's business-scoped user id, when Meta sent it. */
  userId: string | null;
  content: string;
  metadata: Record<string, unknown>;
  externalId: string;
  /** Why the item cannot be stored as what it is: stored as an ERROR event. */
  unusable?: string;
}

/** A phone number and a BSUID that Meta sent together: the same person. */
export interface UserLink {
  userId: string;
  phone: string;
}

/** What a delivery holds, in order, and what it held that is not stored (counted by kind of part). */
export interface ReadDelivery {
  items: DeliveryItem[];
  /** Pairs of (BSUID, phone) the delivery showed, for the link table. */
  links: UserLink[];
  /** BSUID changes announced by `user_changed_user_id`: the new id is the old one's person. */
  renamedUserIds: Array<{ previous: string; current: string }>;
  /** Parts acknowledged but not stored: `field:<name>` for changes of other fields, `value:<key>` for unknown keys. */
  ignored: string[];
  /** business account ids and phone number ids seen, for the log line. */
  accounts: string[];
}

/** The body is JSON but not an object: refused 400. */
export class NotADeliveryError extends Error {}

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value);
const array = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);
const text = (value: unknown): string | undefined => (typeof value === "string" && value !== "" ? value : undefined);
const nonEmpty = <T extends Json>(object: T): T => Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined)) as T;

/** Keys of a change's `value` that this module reads; any other is counted as ignored. */
const KNOWN_VALUE_KEYS = new Set(["messaging_product", "metadata", "contacts", "messages", "statuses", "errors"]);
/** A label that stays bounded in metrics whatever the payload holds. */
const label = (name: string) => (/^[a-z_]{1,40}$/.test(name) ? name : "other");

/** Reads a parsed delivery; throws `NotADeliveryError` for JSON that is not an object. */
export function readDelivery(body: unknown): ReadDelivery {
  if (!isObject(body)) throw new NotADeliveryError('expected a JSON object: {"object":"whatsapp_business_account","entry":[...]}');
  const read: ReadDelivery = { items: [], links: [], renamedUserIds: [], ignored: [], accounts: [] };
  // Another object (a Page or Instagram subscription sent to this URL by mistake) is acknowledged and counted, not retried for a week.
  if (body.object !== "whatsapp_business_account" || !Array.isArray(body.entry)) {
    read.ignored.push(`object:${label(typeof body.object === "string" ? body.object : "")}`);
    return read;
  }
  for (const entry of body.entry) {
    if (!isObject(entry)) continue;
    const businessAccountId = text(entry.id);
    if (businessAccountId && !read.accounts.includes(businessAccountId)) read.accounts.push(businessAccountId);
    for (const change of array(entry.changes)) {
      if (!isObject(change)) continue;
      const field = text(change.field) ?? "";
      if (field !== "messages" || !isObject(change.value)) {
        read.ignored.push(`field:${label(field)}`);
        continue;
      }
      readChange(change.value, businessAccountId, read);
    }
  }
  return read;
}

function readChange(value: Json, businessAccountId: string | undefined, read: ReadDelivery): void {
  for (const key of Object.keys(value)) if (!KNOWN_VALUE_KEYS.has(key)) read.ignored.push(`value:${label(key)}`);
  const metadata = isObject(value.metadata) ? value.metadata : {};
  const business = nonEmpty({
    phone_number_id: text(metadata.phone_number_id),
    display_phone_number: text(metadata.display_phone_number),
    business_account_id: businessAccountId,
  });
  const contacts = array(value.contacts).filter(isObject);
  for (const contact of contacts) {
    const userId = text(contact.user_id);
    const phone = text(contact.wa_id);
    if (userId && phone) read.links.push({ userId, phone });
  }
  for (const message of array(value.messages)) readMessage(message, contacts, business, read);
  for (const status of array(value.statuses)) readStatus(status, business, read);
  // Errors Meta reports for the whole change (no message to attach them to) are kept as a system notice.
  const errors = array(value.errors);
  if (errors.length > 0) {
    read.items.push({
      kind: "SYSTEM",
      phone: null,
      userId: null,
      content: `[errors] ${errors.map(describeError).join("; ")}`,
      metadata: { type: "errors", errors, ...business },
      externalId: `errors:${digest(JSON.stringify([business, errors]))}`,
    });
  }
}

function readMessage(message: unknown, contacts: Json[], business: Json, read: ReadDelivery): void {
  if (!isObject(message)) return;
  const id = text(message.id);
  const type = text(message.type) ?? "unknown";
  const phone = text(message.from) ?? null;
  const fromUserId = text(message.from_user_id) ?? null;
  // The contact that sent it: the one with its number or BSUID, or the change's only one.
  const contact =
    contacts.find((c) => (phone && c.wa_id === phone) || (fromUserId && c.user_id === fromUserId)) ?? (contacts.length === 1 ? contacts[0] : undefined);
  const contactPhone = contact ? text(contact.wa_id) : undefined;
  const userId = fromUserId ?? (contact ? text(contact.user_id) : undefined) ?? null;
  const profile = contact && isObject(contact.profile) ? contact.profile : {};
  const rendered = renderMessage(type, message);
  const metadata = nonEmpty({
    type,
    timestamp: text(message.timestamp),
    profile_name: text(profile.name),
    username: contact ? text(contact.username) : undefined,
    user_id: userId ?? undefined,
    ...business,
    context: isObject(message.context) ? message.context : undefined,
    referral: isObject(message.referral) ? message.referral : undefined,
    errors: Array.isArray(message.errors) ? message.errors : undefined,
    ...rendered.metadata,
  });
  const item: DeliveryItem = {
    kind: type === "system" ? "SYSTEM" : "MESSAGE",
    phone: phone ?? contactPhone ?? null,
    userId,
    content: rendered.content,
    metadata,
    externalId: id ?? `unusable:${digest(JSON.stringify(message))}`,
  };
  if (!id) item.unusable = "the WhatsApp message has no id";
  else if (!item.phone && !item.userId) item.unusable = "the WhatsApp message names no sender (no from, from_user_id or contact)";
  read.items.push(item);
  if (type === "system" && isObject(message.system)) readSystem(message.system, read);
}

/** Links that a system notice announces: a new number for a BSUID, or a new BSUID for an old one. */
function readSystem(system: Json, read: ReadDelivery): void {
  const userId = text(system.user_id);
  const newPhone = text(system.wa_id) ?? text(system.new_wa_id);
  const previous = text(system.previous_user_id);
  if (system.type === "user_changed_number" && userId && newPhone) read.links.push({ userId, phone: newPhone });
  if (system.type === "user_changed_user_id" && userId && previous && userId !== previous) read.renamedUserIds.push({ previous, current: userId });
}

function readStatus(status: unknown, business: Json, read: ReadDelivery): void {
  if (!isObject(status)) return;
  const id = text(status.id);
  const state = text(status.status) ?? "unknown";
  const errors = array(status.errors);
  const phone = text(status.recipient_id) ?? null;
  const userId = text(status.recipient_user_id) ?? null;
  const item: DeliveryItem = {
    kind: "STATUS",
    phone,
    userId,
    content: errors.length > 0 ? `${state}: ${errors.map(describeError).join("; ")}` : state,
    metadata: nonEmpty({
      type: "status",
      status: state,
      message_id: id,
      timestamp: text(status.timestamp),
      recipient_id: phone ?? undefined,
      recipient_user_id: userId ?? undefined,
      ...business,
      conversation: isObject(status.conversation) ? status.conversation : undefined,
      pricing: isObject(status.pricing) ? status.pricing : undefined,
      biz_opaque_callback_data: text(status.biz_opaque_callback_data),
      errors: errors.length > 0 ? errors : undefined,
    }),
    // One event per (message, status): a retried delivery stores nothing new.
    externalId: id ? `${id}:${state}` : `unusable:${digest(JSON.stringify(status))}`,
  };
  if (!id) item.unusable = "the WhatsApp status names no message id";
  else if (!phone && !userId) item.unusable = "the WhatsApp status names no recipient";
  read.items.push(item);
}

/** `(131047) Re-engagement message`: an error as Meta sends it, in one line. */
function describeError(error: unknown): string {
  if (!isObject(error)) return "error";
  const code = typeof error.code === "number" || typeof error.code === "string" ? `(${error.code}) ` : "";
  return `${code}${text(error.title) ?? text(error.message) ?? "error"}`;
}

/** A short, stable id for an item that has none of its own, so a retry of it stores nothing new. */
function digest(value: string): string {
  return createHash("sha256").update(value).digest("hex").slice(0, 32);
}

/** The readable content of a message and the type-specific metadata it keeps. */
function renderMessage(type: string, message: Json): { content: string; metadata: Json } {
  const value = message[type];
  const part: Json = isObject(value) ? value : {};
  switch (type) {
    case "text":
      return { content: text(part.body) ?? "[text]", metadata: {} };
    case "image":
    case "video":
    case "audio":
    case "document":
    case "sticker": {
      const media = nonEmpty({
        id: text(part.id),
        mime_type: text(part.mime_type),
        sha256: text(part.sha256),
        caption: text(part.caption),
        filename: text(part.filename),
        voice: typeof part.voice === "boolean" ? part.voice : undefined,
        animated: typeof part.animated === "boolean" ? part.animated : undefined,
      });
      const fallback = type === "document" && media.filename ? `[document] ${String(media.filename)}` : `[${type}]`;
      return { content: text(part.caption) ?? fallback, metadata: { media } };
    }
    case "location": {
      const where = [text(part.name), text(part.address)].filter(Boolean).join(", ");
      const coordinates = typeof part.latitude === "number" && typeof part.longitude === "number" ? `${part.latitude}, ${part.longitude}` : "";
      return { content: ["[location]", where, coordinates && `(${coordinates})`].filter(Boolean).join(" "), metadata: { location: part } };
    }
    case "contacts": {
      const cards = array(message.contacts).filter(isObject);
      const names = cards.map((card) => {
        const name = isObject(card.name) ? (text(card.name.formatted_name) ?? text(card.name.first_name)) : undefined;
        const phones = array(card.phones)
          .filter(isObject)
          .map((p) => text(p.phone) ?? text(p.wa_id))
          .filter(Boolean);
        return [name, ...phones].filter(Boolean).join(" ");
      });
      return { content: `[contact] ${names.join("; ")}`.trim(), metadata: { contacts: cards } };
    }
    case "interactive": {
      const kind = text(part.type) ?? "interactive";
      const found = part[kind];
      const reply: Json = isObject(found) ? found : {};
      const title = text(reply.title) ?? text(reply.body) ?? `[${kind}]`;
      return { content: title, metadata: { interactive: { type: kind, ...reply } } };
    }
    case "button":
      return { content: text(part.text) ?? "[button]", metadata: { button: part } };
    case "reaction": {
      const emoji = text(part.emoji);
      return { content: emoji ? `[reaction] ${emoji}` : "[reaction removed]", metadata: { reaction: part } };
    }
    case "order": {
      const items = array(part.product_items).length;
      return { content: `[order] ${items} item${items === 1 ? "" : "s"}`, metadata: { order: part } };
    }
    case "system":
      return {
        content: text(part.body) ?? `[system] ${text(part.type) ?? ""}`.trim(),
        metadata: { system: part },
      };
    default:
      // `unsupported` and types added after this was written: stored, readable, with whatever Meta sent about them.
      return { content: `[${label(type)}]`, metadata: Object.keys(part).length > 0 ? { [label(type)]: part } : {} };
  }
}
