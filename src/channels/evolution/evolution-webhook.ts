import type { EvolutionWebhookConfig, InputLimits } from "../../config.js";
import { withinEventLimits } from "../event-limits.js";
import { accepted, refused, type WebhookRoute } from "../webhook-route.js";
import { readEvolutionDelivery } from "./evolution-delivery.js";
import { createEvolutionJwtCheck } from "./evolution-jwt.js";

/** Every instance posts under this prefix: `/webhooks/evolution/<instance>`, plus `/<event>` when its webhook is set "by events". */
export const EVOLUTION_WEBHOOK_PATH = "/webhooks/evolution/";

/**
 * The Evolution API webhook (docs/channels.md): the JWT is checked before the
 * body is parsed, the body's instance must be the path's, then every event a
 * delivery holds is stored (an unusable one as an ERROR event) and only then
 * answered 200. Refusals use statuses Evolution does not retry (401, 403,
 * 400, 404): retrying could never make them pass.
 */
export function createEvolutionWebhook(config: EvolutionWebhookConfig, dependencies: { limits: InputLimits }): WebhookRoute {
  const checkJwt = createEvolutionJwtCheck(config.jwtKeys);
  return {
    channel: "evolution",
    path: EVOLUTION_WEBHOOK_PATH,
    maxBodyBytes: config.maxBodyBytes,
    async handle(request) {
      if (request.method !== "POST") return refused(405, "method", "POST Evolution's webhook deliveries here");
      const [instance, event, ...rest] = request.path.slice(EVOLUTION_WEBHOOK_PATH.length).split("/");
      if (!instance || rest.length > 0 || (event !== undefined && !/^[a-z-]+$/.test(event))) {
        return refused(404, "path", `post to ${EVOLUTION_WEBHOOK_PATH}<instance>`);
      }
      const jwt = await checkJwt(request.headers.authorization);
      if (!jwt.ok) return refused(401, jwt.reason, "a valid JWT from the instance's jwt_key is required");
      const reading = readEvolutionDelivery(request.body.toString("utf8"), safeDecode(instance));
      if (!reading.ok) {
        if (reading.reason === "wrong_instance") return refused(403, reading.reason, "the body's instance is not the one in the path");
        return refused(400, reading.reason, "the body is not an Evolution API webhook delivery");
      }
      const { delivery } = reading;
      request.note({ instance: delivery.instance, event: delivery.event, items: delivery.items.length });
      for (const skip of delivery.skipped) request.ignored(skip === "other_event" ? `event:${eventName(delivery.event)}` : skip);
      if (delivery.items.length === 0) return accepted({ stored: 0, duplicates: 0, errors: 0 });
      const inputs = delivery.items.map((item) =>
        withinEventLimits(item, dependencies.limits, { gateway: "evolution", instance: delivery.instance, message_id: item.metadata.message_id, type: item.metadata.type }),
      );
      return accepted(await request.ingest(inputs));
    },
  };
}

/** An event's name for a metric label: Evolution's own names are few and fixed; anything else is `other`. */
function eventName(event: string): string {
  return /^[a-z]+([._][a-z]+){0,3}$/i.test(event) && event.length <= 40 ? event.toLowerCase().replace(/_/g, ".") : "other";
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
