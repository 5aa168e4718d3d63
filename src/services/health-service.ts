import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import type { DatabaseHealth } from "../db/database-health.js";

/**
 * `grpc.health.v1.Health` over the database's health: SERVING while the
 * database answers, NOT_SERVING while it does not and once shutdown began.
 * It knows the server as a whole (service "") and each of `services`, which
 * all share the one database.
 */
export function createHealthService(health: DatabaseHealth, services: string[]): ServiceImpl<typeof Health> {
  const known = new Set(["", ...services]);
  const status = (serving: boolean) => (serving ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);

  return {
    async check(request) {
      if (!known.has(request.service)) throw new ConnectError(`unknown service "${request.service}"`, Code.NotFound);
      return { status: status(await health.serving()) };
    },

    async *watch(request, context) {
      if (!known.has(request.service)) {
        // The protocol keeps the stream open: the service may become known later.
        yield { status: ServingStatus.SERVICE_UNKNOWN };
        await new Promise((resolve) => context.signal.addEventListener("abort", resolve, { once: true }));
        return;
      }
      for await (const serving of health.watch(context.signal)) yield { status: status(serving) };
    },

    async list() {
      const current = { status: status(await health.serving()) };
      return { statuses: Object.fromEntries([...known].map((service) => [service, current])) };
    },
  };
}
