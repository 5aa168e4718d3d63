import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import type { DatabaseHealth } from "../db/database-health.js";
import { connectionKey, type OpenStreams } from "./stream-limits.js";

/**
 * `grpc.health.v1.Health` over the database's health: SERVING while the
 * database answers, NOT_SERVING while it does not and once shutdown began.
 * It knows the server as a whole (service "") and each of `services`, which
 * all share the one database. Watches take a slot of `streams`, so they are
 * capped and end at shutdown.
 */
export function createHealthService(health: DatabaseHealth, services: string[], streams: OpenStreams): ServiceImpl<typeof Health> {
  const known = new Set(["", ...services]);
  const status = (serving: boolean) => (serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
  const unknown = (service: string) => new ConnectError(`unknown service "${service.slice(0, 200)}"`, Code.NotFound);

  return {
    async check(request) {
      if (!known.has(request.service)) throw unknown(request.service);
      return { status: status(await health.serving()) };
    },

    async *watch(request, context) {
      // The protocol would keep the stream open in case the service appears
      // later; ours never changes at run time, so the answer is final.
      if (!known.has(request.service)) throw unknown(request.service);
      const signal = streams.open(context.signal, context.values.get(connectionKey));
      let last: boolean | undefined;
      for await (const serving of health.watch(signal)) yield { status: status((last = serving)) };
      // Ended by shutdown while the client still listens: its last word is NOT_SERVING.
      if (!context.signal.aborted && last !== false) yield { status: ServingStatus.NOT_SERVING };
    },

    async list() {
      const current = { status: status(await health.serving()) };
      return { statuses: Object.fromEntries([...known].map((service) => [service, current])) };
    },
  };
}
