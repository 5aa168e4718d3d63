import emailAddresses from "email-addresses";
import { canonical, notCanonical, type Canonical } from "./canonical.js";

/** Characters that a local part can only hold inside quotes. */
const NEEDS_QUOTES = /[\s"(),:;<>@[\\\]]/;
/** One label of a host name; letters may be non-ASCII (internationalised domains). */
const HOST_LABEL = /^[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?$/u;

/**
 * Returns the canonical form of an e-mail sender: the bare address, trimmed
 * and lower-cased, also when it arrives in a display form such as
 * `Ana Souza <Ana@Example.com>`. Dots and "+tags" are kept: whether they
 * matter is up to each provider, and guessing could merge two people.
 */
export function canonicalEmailAddress(sender: string): Canonical {
  const text = sender.trim();
  if (text === "") return notCanonical("it is empty");
  if (!text.includes("@")) return notCanonical('it has no "@"');
  const parsed = emailAddresses.parseOneAddress({ input: text, rfc6532: true });
  if (parsed === null) {
    const several = (emailAddresses.parseAddressList({ input: text, rfc6532: true })?.length ?? 0) > 1;
    return notCanonical(several ? "it holds more than one address" : "it is not well-formed");
  }
  if (parsed.type === "group") return notCanonical("it is a group, not one address");
  const { local, domain } = parsed;
  // A quoted local part would have no unambiguous unquoted spelling to store.
  if (NEEDS_QUOTES.test(local)) return notCanonical("its local part needs quotes, which we do not accept");
  const labels = domain.split(".");
  if (labels.length < 2 || !labels.every((label) => HOST_LABEL.test(label)) || /^[0-9]+$/.test(labels[labels.length - 1])) {
    return notCanonical(`its domain "${domain}" is not an internet host name`);
  }
  const address = `${local}@${domain}`.toLowerCase();
  if (address.length > 254) return notCanonical("it is longer than 254 characters");
  return canonical(address);
}
