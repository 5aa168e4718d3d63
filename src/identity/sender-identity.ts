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

const EMAIL = /^[^\s@<>()",;:\\[\]]+@[^\s@<>()",;:\\[\]]+\.[^\s@<>()",;:\\[\]]+$/;

/** Maps a message's source and raw sender id to the identity its contact is resolved by. */
export function senderIdentity(source: string, senderId: string): SenderIdentity {
  const trimmed = senderId.trim();
  switch (source) {
    case "whatsapp":
      if (trimmed === "") return { kind: "invalid", reason: "whatsapp sender_id is empty" };
      return { kind: "contact", key: { column: "whatsapp_id", value: trimmed } };
    case "email": {
      const email = trimmed.toLowerCase();
      if (!EMAIL.test(email)) return { kind: "invalid", reason: `email sender_id "${senderId}" is not an e-mail address` };
      return { kind: "contact", key: { column: "email", value: email } };
    }
    default:
      return { kind: "none" };
  }
}
