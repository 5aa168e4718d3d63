import type { Canonical } from "./canonical.js";
import { canonicalEmailAddress } from "./email-address.js";
import type { PhoneRegion } from "./phone-number.js";
import { canonicalWhatsappId } from "./whatsapp-id.js";

/** The contact column a sender is looked up by, with the canonical value stored there. */
export type ContactKey = { column: "whatsapp_id" | "email"; value: string };

/**
 * What a sender means for contact resolution: a key to find or create the
 * contact by, no key at all (the source has no identity rule), or a reason
 * why the sender cannot be an identity of its source.
 */
export type SenderIdentity =
  | { kind: "contact"; key: ContactKey }
  | { kind: "none" }
  | { kind: "invalid"; reason: string };

/** Settings of the identity rules, chosen by the deployment. */
export interface IdentityOptions {
  /** Region whose national numbers a WhatsApp id without country code is read as. */
  defaultPhoneRegion: PhoneRegion;
}

/**
 * Maps a message's source and raw sender id to the identity its contact is
 * resolved by. Every lookup of a contact by sender goes through here, so
 * every spelling of one person meets the same unique-indexed value.
 */
export function senderIdentity(source: string, senderId: string, options: IdentityOptions): SenderIdentity {
  let column: ContactKey["column"];
  let result: Canonical;
  let expected: string;
  switch (source) {
    case "whatsapp":
      column = "whatsapp_id";
      result = canonicalWhatsappId(senderId, options.defaultPhoneRegion);
      expected = "a WhatsApp id";
      break;
    case "email":
      column = "email";
      result = canonicalEmailAddress(senderId);
      expected = "an e-mail address";
      break;
    default:
      return { kind: "none" };
  }
  if (result.ok) return { kind: "contact", key: { column, value: result.value } };
  return { kind: "invalid", reason: `${source} sender_id ${quoted(senderId)} is not ${expected}: ${result.problem}` };
}

/** The sender in quotes, cut short so that a huge one cannot bloat the stored reason. */
function quoted(senderId: string): string {
  return JSON.stringify(senderId.length > 80 ? `${senderId.slice(0, 80)}…` : senderId);
}

/**
 * `senderIdentity` with the answers for the `maxSenders` most recently new
 * senders kept: parsing a phone number or an address costs more than the
 * rest of a message's own work, and most messages come from senders seen
 * moments before. Ids longer than an e-mail address may be are not kept, so
 * the memory is bounded. The answers are frozen: callers share them.
 */
export function cachedSenderIdentity(options: IdentityOptions, maxSenders = 10_000): (source: string, senderId: string) => SenderIdentity {
  const known = new Map<string, SenderIdentity>();
  return (source, senderId) => {
    if (senderId.length > 320) return senderIdentity(source, senderId, options);
    const key = `${source}\n${senderId}`;
    let identity = known.get(key);
    if (identity === undefined) {
      identity = deepFreeze(senderIdentity(source, senderId, options));
      // Oldest first out: a Map iterates in insertion order.
      if (known.size >= maxSenders) known.delete(known.keys().next().value!);
      known.set(key, identity);
    }
    return identity;
  };
}

function deepFreeze(identity: SenderIdentity): SenderIdentity {
  if (identity.kind === "contact") Object.freeze(identity.key);
  return Object.freeze(identity);
}
