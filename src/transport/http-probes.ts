import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { HorizonStatus } from "../feed/horizon.js";
import type { RelayStatus } from "../feed/relay/feed-relay.js";
import type { Metrics } from "../observability/metrics.js";
import type { DatabaseHealth } from "../db/database-health.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** The plain HTTP routes for probes and scrapers. */
export const HTTP_PROBE_ROUTES = ["/healthz", "/readyz", "/metrics"];

/**
 * Answers `GET /healthz` (the process is alive: always 200), `GET /readyz`
 * (200 when the database answers and every migration is applied, 503
 * otherwise, with the reason as JSON; the feed relay's state under `relay`,
 * which never makes the service unready: ingest does not need NATS; whether
 * the feed's horizon tells databases apart under `feedHorizon`) and
 * `GET /metrics` (Prometheus text).
 * Returns false for any other request, which then goes to Connect.
 */
export function createHttpProbes(
  health: DatabaseHealth,
  metrics: Metrics,
  relay?: { status(): RelayStatus },
  feedHorizon?: { status(): Promise<HorizonStatus> },
) {
  return (req: Request, res: Response): boolean => {
    const path = (req.url ?? "/").split("?")[0];
    if (!HTTP_PROBE_ROUTES.includes(path)) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(res, 405, "application/json", JSON.stringify({ error: "use GET" }), { allow: "GET, HEAD" });
      return true;
    }
    const answer = async () => {
      if (path === "/healthz") return send(res, 200, "application/json", JSON.stringify({ status: "alive" }));
      if (path === "/readyz") {
        const readiness = await health.readiness();
        // Unknown while the database does not answer.
        const horizon = readiness.database === "reachable" ? await feedHorizon?.status().catch(() => undefined) : undefined;
        const body = { ...readiness, ...(horizon && { feedHorizon: horizon }), ...(relay && { relay: relay.status() }) };
        return send(res, readiness.ready ? 200 : 503, "application/json", JSON.stringify(body));
      }
      send(res, 200, metrics.registry.contentType, await metrics.registry.metrics());
    };
    answer().catch(() => {
      if (!res.headersSent) send(res, 500, "application/json", JSON.stringify({ error: "internal error" }));
      else res.destroy();
    });
    return true;
  };
}

function send(res: Response, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  (res as ServerResponse).writeHead(status, { "content-type": contentType, "cache-control": "no-store", ...headers });
  (res as ServerResponse).end(body);
}
