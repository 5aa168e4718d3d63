import type { HorizonStatus } from "../feed/horizon.js";
import type { RelayStatus } from "../feed/relay/feed-relay.js";
import type { Metrics } from "../observability/metrics.js";
import type { DatabaseHealth } from "../db/database-health.js";
import type { PlainRoute } from "./route-table.js";

const json = (status: number, body: unknown) => ({ status, headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

/**
 * The plain routes for probes and scrapers: `GET /healthz` (the process is
 * alive: always 200, open), `GET /readyz` (200 when the database answers and
 * every migration is applied, 503 otherwise, with the reason as JSON; the
 * feed relay's state under `relay`, which never makes the service unready:
 * ingest does not need NATS; its details (errors name streams, databases and
 * servers) only to a caller with a valid token when tokens are configured;
 * whether the feed's horizon tells databases
 * apart under `feedHorizon`; open) and `GET /metrics` (Prometheus text; any
 * valid token, as it shows traffic).
 */
export function probeRoutes(
  health: DatabaseHealth,
  metrics: Metrics,
  relay?: { status(): RelayStatus },
  feedHorizon?: { status(): Promise<HorizonStatus> },
): PlainRoute[] {
  const methods = ["GET", "HEAD"];
  return [
    { kind: "plain", methods, path: "/healthz", access: "open", quiet: true, handle: () => json(200, { status: "alive" }) },
    {
      kind: "plain",
      methods,
      path: "/readyz",
      access: "open",
      quiet: true,
      async handle(request) {
        const readiness = await health.readiness();
        // Unknown while the database does not answer.
        const horizon = readiness.database === "reachable" ? await feedHorizon?.status().catch(() => undefined) : undefined;
        const relayStatus = relay && (request.holdsToken() ? relay.status() : { state: relay.status().state });
        const body = { ...readiness, ...(horizon && { feedHorizon: horizon }), ...(relayStatus && { relay: relayStatus }) };
        return json(readiness.ready ? 200 : 503, body);
      },
    },
    {
      kind: "plain",
      methods,
      path: "/metrics",
      access: "token",
      quiet: true,
      handle: async () => ({ status: 200, headers: { "content-type": metrics.registry.contentType }, body: await metrics.registry.metrics() }),
    },
  ];
}
