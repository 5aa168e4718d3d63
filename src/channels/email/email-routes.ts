import type { Sequelize } from "sequelize-typescript";
import type { EmailConfig, InputLimits } from "../../config.js";
import type { IngestMessageInput } from "../../ingest/ingest-message.js";
import { withinEventLimits } from "../event-limits.js";
import { accepted, refused, type WebhookRoute } from "../webhook-route.js";
import { checkMailgunSignature, MAILGUN_WINDOW_S, readMailgunForm, type MailgunPost } from "./mailgun.js";
import { defaultEmailLimits, EMAIL_SOURCE, readEmail, type EmailItem, type EmailLimits } from "./read-email.js";
import { createReplayTokens } from "./replay-tokens.js";

/** Mailgun's `forward()` posts the raw message only to a URL ending in `mime`. */
export const MAILGUN_MIME_PATH = "/webhooks/email/mailgun/mime";
/** Our own MTA posts each message here as `message/rfc822`, with an ingest bearer token. */
export const MTA_EMAIL_PATH = "/ingest/email";

/** What both doors need besides their settings: the database (for Mailgun's tokens) and the limits on every event. */
export interface EmailRouteDependencies {
  sequelize: Sequelize;
  limits: InputLimits;
}

/** The reading limits: the configured message size and content limit, the parser's own bounds. */
function emailLimits(config: EmailConfig, limits: InputLimits): EmailLimits {
  return { ...defaultEmailLimits, maxBytes: config.maxBytes, contentMaxBytes: limits.contentMaxBytes };
}

/** A message within the limits on every event, or an ERROR event that keeps what identifies it. */
function checked(item: EmailItem, limits: InputLimits): IngestMessageInput {
  return withinEventLimits(item, limits, { via: item.metadata.via, message_id: item.metadata.message_id, size: item.metadata.size });
}

/**
 * Mailgun's `forward()` to a URL ending in `mime` (docs/channels.md). In
 * order: the form is read (the proof travels in it), the proof checked
 * (401: Mailgun retries, which helps when our clock or key is wrong), the
 * token claimed once across replicas (406: a replay must not be retried),
 * the message read and stored, and only then 200. When storing fails the
 * token is released, so Mailgun's retry of the same post is not a replay.
 */
export function createMailgunRoute(config: EmailConfig, dependencies: EmailRouteDependencies): WebhookRoute {
  const tokens = createReplayTokens(dependencies.sequelize, "mailgun");
  const limits = emailLimits(config, dependencies.limits);
  return {
    channel: "email",
    path: MAILGUN_MIME_PATH,
    // Urlencoded, a message can take three times its size.
    maxBodyBytes: 3 * limits.maxBytes + 64 * 1024,
    async handle(request) {
      if (request.method !== "POST") return refused(405, "method", "POST Mailgun's forward() here");
      const post = await readMailgunForm(request.body, request.headers["content-type"], limits.maxBytes);
      if (!post) return refused(406, "malformed", "the body is not Mailgun's form");
      const proof = checkMailgunSignature(post, config.mailgunSigningKeys);
      if (!proof.ok) return refused(401, proof.reason, "Mailgun's signature is missing, wrong or stale");
      if (!post.bodyMime && !post.bodyMimeTooLarge) return refused(406, "no_body_mime", "no body-mime: the route's URL must end in mime");
      if (!(await tokens.claim(post.token, new Date((Number(post.timestamp) + MAILGUN_WINDOW_S) * 1000)))) {
        return refused(406, "replayed_token", "this signature's token was already used");
      }
      try {
        const envelope = { via: "mailgun" as const, mailFrom: post.sender, recipient: post.recipient };
        const item = post.bodyMime ? await readEmail(post.bodyMime, envelope, limits) : tooLarge(post, limits);
        if (item.unusable) request.note({ unusable: true });
        return accepted(await request.ingest([checked(item, dependencies.limits)]));
      } catch (error) {
        await tokens.release(post.token).catch(() => undefined);
        throw error;
      }
    },
  };
}

/**
 * Our own MTA's door: one raw message per POST, `Content-Type:
 * message/rfc822`, authenticated by an ingest bearer token (checked by the
 * transport before this runs). The SMTP envelope may come as the query's
 * `mail_from` and `recipient`. A message over the size limit is refused 413
 * before it is read, so the MTA bounces it rather than losing it.
 */
export function createMtaRoute(config: EmailConfig, dependencies: Pick<EmailRouteDependencies, "limits">): WebhookRoute {
  const limits = emailLimits(config, dependencies.limits);
  return {
    channel: "email",
    path: MTA_EMAIL_PATH,
    maxBodyBytes: limits.maxBytes,
    async handle(request) {
      if (request.method !== "POST") return refused(405, "method", "POST one message/rfc822 message here");
      const type = String(request.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
      if (type !== "message/rfc822") return refused(415, "content_type", "send Content-Type: message/rfc822");
      if (request.body.byteLength === 0) return refused(400, "empty", "the body holds no message");
      const item = await readEmail(
        request.body,
        { via: "mta", mailFrom: request.query.get("mail_from") ?? undefined, recipient: request.query.get("recipient") ?? undefined },
        limits,
      );
      if (item.unusable) request.note({ unusable: true });
      return accepted(await request.ingest([checked(item, dependencies.limits)]));
    },
  };
}

/** A message Mailgun posted past our size limit: an ERROR event that names its sender and size, never silence. */
function tooLarge(post: MailgunPost, limits: EmailLimits): EmailItem {
  return {
    source: EMAIL_SOURCE,
    senderId: post.from ?? post.sender ?? "",
    content: "",
    metadata: { via: "mailgun", mail_from: post.sender, recipient: post.recipient },
    externalId: null,
    unusable: `the message is larger than EMAIL_MAX_BYTES (${limits.maxBytes} bytes) and was not read`,
  };
}
