import { createHmac, timingSafeEqual } from "node:crypto";
import { Readable } from "node:stream";
import busboy from "busboy";

/** How old (or how far ahead) a signed timestamp may be: Mailgun's tokens are refused past it, and remembered that long. */
export const MAILGUN_WINDOW_S = 300;

/** What a Mailgun `forward()` post to a URL ending in `mime` carries (documentation.mailgun.com …/receive-http). */
export interface MailgunPost {
  timestamp: string;
  token: string;
  signature: string;
  /** On a subaccount's domain, the same proof under the primary account's key. */
  parentSignature?: string;
  /** The raw message, byte for byte; undefined when absent or cut at the size limit (`bodyMimeTooLarge`). */
  bodyMime: Uint8Array | undefined;
  bodyMimeTooLarge: boolean;
  /** SMTP envelope: MAIL FROM and RCPT TO; and the From header as Mailgun read it. */
  sender?: string;
  recipient?: string;
  from?: string;
}

/** Why a post's proof was refused; each is counted as a refusal reason. */
export type MailgunRefusal = "signature_missing" | "signature_invalid" | "timestamp_stale";

/**
 * Checks Mailgun's proof: `signature` must be the hex HMAC-SHA256 of
 * `timestamp` + `token` under one of the webhook signing keys (several, so
 * one can be rotated), compared in constant time, and `timestamp` within
 * five minutes of now. The proof covers neither the message nor the URL:
 * a captured triple could carry another message, so its token is accepted
 * once (the caller's replay store), for as long as the timestamp is fresh.
 */
export function checkMailgunSignature(
  post: Pick<MailgunPost, "timestamp" | "token" | "signature" | "parentSignature">,
  signingKeys: readonly string[],
  now: Date = new Date(),
): { ok: true } | { ok: false; reason: MailgunRefusal } {
  const { timestamp, token } = post;
  const signatures = [post.signature, post.parentSignature].filter((value): value is string => /^[0-9a-f]{64}$/i.test(value ?? ""));
  if (!timestamp || !token || signatures.length === 0) return { ok: false, reason: "signature_missing" };
  let valid = false;
  // Every key every time, so the response time does not tell which matched.
  for (const key of signingKeys) {
    const expected = createHmac("sha256", key).update(timestamp + token).digest();
    for (const signature of signatures) if (timingSafeEqual(expected, Buffer.from(signature, "hex"))) valid = true;
  }
  if (!valid) return { ok: false, reason: "signature_invalid" };
  const age = now.getTime() / 1000 - Number(timestamp);
  if (!/^\d{1,12}$/.test(timestamp) || Math.abs(age) > MAILGUN_WINDOW_S) return { ok: false, reason: "timestamp_stale" };
  return { ok: true };
}

/**
 * Reads Mailgun's form (multipart/form-data, or urlencoded for a message
 * without attachments) with busboy. Field values are read as Latin-1 so
 * that `body-mime` comes back byte for byte: a message in an 8-bit legacy
 * charset must reach the MIME parser undecoded. A `body-mime` past
 * `maxFieldBytes` is reported, not read. Resolves undefined when the body
 * is not such a form.
 */
export async function readMailgunForm(body: Uint8Array, contentType: string | undefined, maxFieldBytes: number): Promise<MailgunPost | undefined> {
  let parser: busboy.Busboy;
  try {
    parser = busboy({ headers: { "content-type": contentType }, defCharset: "latin1", limits: { fieldSize: maxFieldBytes, fileSize: maxFieldBytes, fields: 200, files: 20 } });
  } catch {
    return undefined;
  }
  const fields = new Map<string, Buffer>();
  const truncated = new Set<string>();
  const done = new Promise<void>((resolve, reject) => {
    parser.on("field", (name, value, info) => {
      if (info.valueTruncated) truncated.add(name);
      if (!fields.has(name)) fields.set(name, Buffer.from(value, "latin1"));
    });
    // Some senders post the message as a file part: read it the same way.
    parser.on("file", (name, stream) => {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("limit", () => truncated.add(name));
      stream.on("end", () => {
        if (!fields.has(name)) fields.set(name, Buffer.concat(chunks));
      });
    });
    parser.on("close", resolve);
    parser.on("error", reject);
  });
  Readable.from([Buffer.from(body.buffer, body.byteOffset, body.byteLength)]).pipe(parser);
  try {
    await done;
  } catch {
    return undefined;
  }
  // Only the message may be cut (it is then stored as an ERROR event); a cut proof field is no form of Mailgun's.
  if ([...truncated].some((name) => name !== "body-mime")) return undefined;
  const field = (name: string) => fields.get(name)?.toString("utf8");
  return {
    timestamp: field("timestamp") ?? "",
    token: field("token") ?? "",
    signature: field("signature") ?? "",
    parentSignature: field("parent-signature"),
    bodyMime: truncated.has("body-mime") ? undefined : fields.get("body-mime"),
    bodyMimeTooLarge: truncated.has("body-mime"),
    sender: field("sender"),
    recipient: field("recipient"),
    from: field("from"),
  };
}
