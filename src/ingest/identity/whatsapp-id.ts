import { canonical, notCanonical, type Canonical } from "./canonical.js";
import { canonicalPhoneDigits, type PhoneRegion } from "./phone-number.js";

// Ids that are not phone numbers are opaque: kept exactly as sent (after
// trimming). Their letters, dot or "@lid" keep them apart from the
// digits-only phone ids, so both kinds share the whatsapp_id column.
/** Business-scoped user id: a two-letter country code, a dot, letters and digits. */
const BUSINESS_SCOPED_ID = /^[A-Z]{2}\.[A-Za-z0-9]{1,128}$/;
/** Linked-device id: digits with the "@lid" server. */
const LINKED_DEVICE_ID = /^[0-9]+@lid$/;
/** A phone number as a JID: digits with a user server. */
const PHONE_JID = /^([0-9]+)@(?:c\.us|s\.whatsapp\.net)$/;
/** A dialled number: an optional international prefix ("+" or "00"), then digits and the usual separators. */
const DIALLED_NUMBER = /^(\+|00)?([0-9\s().-]*)$/;

/**
 * Returns the one canonical form of a WhatsApp sender id: E.164 digits
 * without "+" for a phone number in any of the forms gateways send, or the
 * trimmed id itself for a business-scoped or linked-device id. `region` is
 * where a number without country code is read as a national number.
 */
export function canonicalWhatsappId(senderId: string, region: PhoneRegion): Canonical {
  const id = senderId.trim();
  if (id === "") return notCanonical("it is empty");
  if (BUSINESS_SCOPED_ID.test(id) || LINKED_DEVICE_ID.test(id)) return canonical(id);
  const jid = PHONE_JID.exec(id);
  if (jid) return canonicalPhoneDigits(jid[1], { international: true, region });
  if (/\p{L}/u.test(id)) {
    return notCanonical("it has letters but is neither a business-scoped id (like BR.1234abcd) nor an id ending in @lid");
  }
  const dialled = DIALLED_NUMBER.exec(id);
  if (!dialled) return notCanonical("it has characters a phone number cannot have");
  const digits = dialled[2].replace(/[^0-9]/g, "");
  if (digits === "") return notCanonical("it holds no number");
  return canonicalPhoneDigits(digits, { international: dialled[1] !== undefined, region });
}
