import { createHash } from "node:crypto";
import EmailReplyParser from "email-reply-parser";
import { convert as htmlToText } from "html-to-text";
import iconv from "iconv-lite";
import PostalMime, { type Address, type Email, type Header } from "postal-mime";
import type { IngestMessageInput } from "../../ingest/ingest-message.js";

/** One e-mail as an event to store; `unusable` says why it is stored as an ERROR event instead. */
export type EmailItem = IngestMessageInput & { unusable?: string };

/** Bounds on reading one message: checked before parsing, and handed to the MIME parser. */
export interface EmailLimits {
  /** Largest raw message read, in bytes; a larger one is refused before it is parsed. */
  maxBytes: number;
  /** Largest content stored, in bytes of UTF-8; the reply is cut there (`metadata.content_truncated`). */
  contentMaxBytes: number;
  /** Most MIME parts, most nesting and most header bytes the parser accepts. */
  maxParts: number;
  maxNestingDepth: number;
  maxHeaderBytes: number;
}

export const defaultEmailLimits: EmailLimits = {
  maxBytes: 10 * 1024 * 1024,
  contentMaxBytes: 256 * 1024,
  maxParts: 200,
  maxNestingDepth: 20,
  maxHeaderBytes: 256 * 1024,
};

/** What the receiving side tells about a message beyond its bytes (Mailgun's form fields). */
export interface EmailEnvelope {
  /** Which door it came through: `mailgun` or `mta`. */
  via: "mailgun" | "mta";
  /** The SMTP envelope's MAIL FROM and RCPT TO, when the provider reports them. */
  mailFrom?: string;
  recipient?: string;
}

/** The event source of e-mail: the identity rules of `email` apply to the From address. */
export const EMAIL_SOURCE = "email";

/**
 * Reads one raw RFC 5322 message into the event to store: `sender_id` is the
 * From address (not authenticated: `metadata.authentication` records what the
 * receiving server found, docs/channels.md), `external_id` the Message-ID (a
 * SHA-256 of the raw bytes when it has none), `content` the reply with the
 * quoted history dropped, and `metadata` what a consumer needs to thread and
 * judge it. Attachments are described (name, type, size), never stored.
 *
 * Throws nothing for a bad message: one the parser refuses becomes an item
 * with `unusable` set, so the caller stores an ERROR event and answers 200.
 */
export async function readEmail(raw: Uint8Array, envelope: EmailEnvelope, limits: EmailLimits = defaultEmailLimits): Promise<EmailItem> {
  const digest = `sha256:${createHash("sha256").update(raw).digest("hex")}`;
  let email: Email;
  try {
    email = await PostalMime.parse(raw, {
      attachmentEncoding: "arraybuffer",
      maxNestingDepth: limits.maxNestingDepth,
      maxHeadersSize: limits.maxHeaderBytes,
      maxPartCount: limits.maxParts,
      // A forwarded message stays an attachment: its text is not the sender's reply.
      maxRfc822NestingDepth: 0,
    });
  } catch (error) {
    return {
      source: EMAIL_SOURCE,
      senderId: envelope.mailFrom ?? "",
      content: "",
      metadata: compact({ via: envelope.via, mail_from: envelope.mailFrom, recipient: envelope.recipient, size: raw.byteLength }),
      externalId: digest,
      unusable: `the message could not be parsed as MIME: ${error instanceof Error ? error.message : String(error)}`,
    };
  }
  const from = email.from && "address" in email.from ? email.from.address : undefined;
  const fullText = repairC1(email.text ?? (email.html ? htmlToText(email.html, { wordwrap: false, selectors: IMAGES_AND_LINKS }) : ""));
  const reply = replyOf(fullText);
  const content = cut(reply, limits.contentMaxBytes);
  const messageId = email.messageId?.trim().replace(/^<|>$/g, "");
  const metadata = compact({
    via: envelope.via,
    subject: email.subject === undefined ? undefined : repairC1(email.subject),
    from_name: email.from?.name ? repairC1(email.from.name) : undefined,
    to: addresses(email.to),
    cc: addresses(email.cc),
    reply_to: addresses(email.replyTo),
    date: email.date,
    message_id: messageId,
    in_reply_to: email.inReplyTo?.trim(),
    // The thread's root and its last messages are what threading needs; a long chain keeps those.
    references: lastOf(email.references?.trim().split(/\s+/).filter(Boolean), MAX_LIST),
    mail_from: envelope.mailFrom,
    recipient: envelope.recipient,
    authentication: authentication(email.headers),
    auto_reply: isAutoReply(email.headers),
    attachments: email.attachments.length
      ? email.attachments.map((attachment) =>
          compact({
            file_name: attachment.filename ?? undefined,
            mime_type: attachment.mimeType,
            size: typeof attachment.content === "string" ? attachment.content.length : attachment.content.byteLength,
            disposition: attachment.disposition ?? undefined,
          }),
        )
      : undefined,
    quoted_history_removed: reply.length < fullText.trim().length || undefined,
    content_truncated: content.length < reply.length || undefined,
    size: raw.byteLength,
  });
  return {
    source: EMAIL_SOURCE,
    senderId: from ?? "",
    content,
    metadata,
    // A Message-ID longer than ids are allowed to be is kept whole in metadata and hashed here.
    externalId: messageId ? (messageId.length <= 250 ? messageId : `sha256:${createHash("sha256").update(messageId).digest("hex")}`) : digest,
    ...(!from && { unusable: "the message has no From address" }),
  };
}

// Images become nothing and links keep their text only: the stored content is what the person wrote.
const IMAGES_AND_LINKS = [
  { selector: "img", format: "skip" },
  { selector: "a", options: { ignoreHref: true } },
];

/**
 * The reply without the quoted history ("Em … escreveu:", "On … wrote:", `>`
 * lines), by Crisp's email-reply-parser. A message that is all quote (a bare
 * forward) keeps its whole text rather than becoming empty.
 */
export function replyOf(text: string): string {
  const visible = new EmailReplyParser().read(text.replace(/\r\n?/g, "\n")).getVisibleText().trim();
  return visible === "" ? text.trim() : visible;
}

/**
 * Node 20.18.3+ and 22.13+ decode windows-1252 (and iso-8859-1, which the
 * WHATWG standard reads as windows-1252) as pure Latin-1, leaving its
 * 0x80–0x9F characters (€, curly quotes, dashes) as C1 control codes
 * (nodejs/node#60888). No mail text means a C1 control, so each is read
 * back as the windows-1252 character that byte stands for.
 */
export function repairC1(text: string): string {
  return text.replace(/[\u0080-\u009f]/g, (c) => iconv.decode(Buffer.from([c.charCodeAt(0)]), "win1252"));
}

/** The authentication results the receiving servers recorded; only the topmost was added by the server that received it. */
function authentication(headers: Header[]): Record<string, unknown> | undefined {
  const results = headers.filter((header) => header.key === "authentication-results").map((header) => header.value);
  const receivedSpf = headers.find((header) => header.key === "received-spf")?.value;
  const mailgun = compact({
    spf: headers.find((header) => header.key === "x-mailgun-spf")?.value,
    dkim: headers.find((header) => header.key === "x-mailgun-dkim-check-result")?.value,
  });
  if (results.length === 0 && !receivedSpf && Object.keys(mailgun).length === 0) return undefined;
  const topmost = results[0] ?? "";
  const result = (method: string) => new RegExp(`(?:^|[;\\s])${method}=([a-z]+)`, "i").exec(topmost)?.[1]?.toLowerCase();
  return compact({
    spf: result("spf") ?? mailgun.spf?.toString().toLowerCase() ?? receivedSpf?.split(/\s/)[0]?.toLowerCase(),
    dkim: result("dkim") ?? mailgun.dkim?.toString().toLowerCase(),
    dmarc: result("dmarc"),
    authentication_results: results.length ? results.slice(0, 5) : undefined,
    received_spf: receivedSpf,
  });
}

/** True for an automatic reply (RFC 3834 `Auto-Submitted`, and the headers vacation responders use). */
function isAutoReply(headers: Header[]): boolean | undefined {
  const value = (key: string) => headers.find((header) => header.key === key)?.value.trim().toLowerCase();
  const autoSubmitted = value("auto-submitted");
  const automatic =
    (autoSubmitted !== undefined && autoSubmitted !== "no") ||
    value("x-autoreply") !== undefined ||
    value("x-autorespond") !== undefined ||
    value("precedence") === "auto_reply";
  return automatic || undefined;
}

/** Longest list of addresses or references kept, so a message to thousands of recipients stays within the metadata limit. */
const MAX_LIST = 50;

function addresses(list: Address[] | undefined): string[] | undefined {
  const flat = (list ?? []).flatMap((address) => ("group" in address && address.group ? address.group : [address]));
  const found = flat.map((address) => ("address" in address ? address.address : "")).filter((address) => address !== "");
  return found.length ? found.slice(0, MAX_LIST) : undefined;
}

/** The first item and the last `max - 1`, when a list is longer than `max`. */
function lastOf(list: string[] | undefined, max: number): string[] | undefined {
  if (!list?.length) return undefined;
  return list.length <= max ? list : [list[0], ...list.slice(-(max - 1))];
}

/** Cuts text to at most `maxBytes` of UTF-8, never inside a character. */
function cut(text: string, maxBytes: number): string {
  const bytes = Buffer.from(text, "utf8");
  if (bytes.byteLength <= maxBytes) return text;
  return new TextDecoder().decode(bytes.subarray(0, maxBytes)).replace(/\uFFFD$/, "");
}

const compact = (record: Record<string, unknown>) => Object.fromEntries(Object.entries(record).filter(([, value]) => value !== undefined));
