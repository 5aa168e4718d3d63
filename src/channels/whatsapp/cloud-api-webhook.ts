import type { Sequelize } from "sequelize-typescript";
import type { InputLimits, WhatsappWebhookConfig } from "../../config.js";
import type { PhoneRegion } from "../../ingest/identity/phone-number.js";
import type { IngestMessageInput } from "../../ingest/ingest-message.js";
import { withinEventLimits } from "../event-limits.js";
import { accepted, answer, hmacMatches, refused, secretMatches, type WebhookRoute } from "../webhook-route.js";
import { NotADeliveryError, readDelivery, WHATSAPP_SOURCE, type DeliveryItem } from "./cloud-api-delivery.js";
import { createUserLinks } from "./user-links.js";

/** Where Meta's console points the webhook (docs/channels.md). */
export const WHATSAPP_WEBHOOK_PATH = "/webhooks/whatsapp";

export interface WhatsappWebhookDependencies {
  sequelize: Sequelize;
  defaultPhoneRegion: PhoneRegion;
  /** Our limits on one event; an item over them is stored as an ERROR event that says why. */
  limits: InputLimits;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Meta's WhatsApp Cloud API webhook: `GET` answers the subscription
 * handshake, `POST` takes a signed delivery. The signature is checked over
 * the raw bytes before anything is parsed; then every message, status and
 * system notice of every entry and change is stored, and 200 is answered
 * once all are committed. Items we cannot store as they are (no id, no
 * sender, over our limits) are stored as ERROR events that say why, so one
 * bad item never makes Meta retry the whole delivery.
 */
export function createWhatsappWebhook(config: WhatsappWebhookConfig, dependencies: WhatsappWebhookDependencies): WebhookRoute {
  const userLinks = createUserLinks(dependencies.sequelize, dependencies.defaultPhoneRegion);
  return {
    channel: "whatsapp",
    path: WHATSAPP_WEBHOOK_PATH,
    maxBodyBytes: config.maxBodyBytes,
    async handle(request) {
      if (request.method === "GET") {
        const challenge = request.query.get("hub.challenge") ?? "";
        const token = request.query.get("hub.verify_token") ?? "";
        const verified = secretMatches(token, config.verifyTokens);
        if (request.query.get("hub.mode") !== "subscribe" || !verified || challenge === "" || challenge.length > 1024) {
          return refused(403, "verify_token", "the subscription could not be verified");
        }
        return answer(200, challenge);
      }

      const header = request.headers["x-hub-signature-256"];
      const signature = typeof header === "string" && header.startsWith("sha256=") ? header.slice("sha256=".length) : undefined;
      if (signature === undefined) return refused(401, "signature_missing", "X-Hub-Signature-256 is missing");
      if (!hmacMatches(request.body, signature, config.appSecrets)) return refused(401, "signature", "X-Hub-Signature-256 does not match the body");

      let body: unknown;
      try {
        body = JSON.parse(utf8.decode(request.body));
      } catch {
        return refused(400, "malformed", "the body is not JSON");
      }
      let delivery;
      try {
        delivery = readDelivery(body);
      } catch (error) {
        if (error instanceof NotADeliveryError) return refused(400, "malformed", error.message);
        throw error;
      }
      for (const item of delivery.ignored) request.ignored(item);

      const wanted = delivery.items.filter((item) => !item.phone && item.userId).map((item) => item.userId!);
      const numbers =
        delivery.links.length + delivery.renamedUserIds.length + wanted.length > 0
          ? await userLinks.resolve({ links: delivery.links, renamed: delivery.renamedUserIds, wanted })
          : new Map<string, string>();
      const inputs = delivery.items.map((item) => toInput(item, numbers, dependencies.limits));
      const summary = await request.ingest(inputs);
      request.note({ accounts: delivery.accounts, items: inputs.length, ...summary });
      return accepted(summary);
    },
  };
}

/**
 * The ingest input for one item: the sender is the number Meta sent, else
 * the number its BSUID is linked to, else the BSUID itself. An item over our
 * limits keeps its ids and type and says which limit it broke.
 */
function toInput(item: DeliveryItem, numbers: Map<string, string>, limits: InputLimits): IngestMessageInput {
  const senderId = item.phone ?? (item.userId ? (numbers.get(item.userId) ?? item.userId) : "");
  const input: IngestMessageInput = {
    source: WHATSAPP_SOURCE,
    senderId,
    content: item.content,
    metadata: item.metadata,
    externalId: item.externalId,
    kind: item.kind,
    ...(item.unusable && { unusable: item.unusable }),
  };
  return withinEventLimits(input, limits, { type: item.metadata.type, timestamp: item.metadata.timestamp, phone_number_id: item.metadata.phone_number_id });
}
