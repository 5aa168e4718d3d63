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
