/**
 * `npx tsx bench/span-cost.ts [requests]`: the CPU that tracing adds to one
 * RPC, measured apart from the network and the database, whose noise on a
 * shared machine is far larger than this cost.
 *
 * The same in-memory Connect router (createRouterTransport) serves an
 * IngestMessage handler that answers at once, with and without the tracing
 * interceptor, in alternating rounds; each traced call carries a caller's
 * traceparent and exports, with the SDK's defaults (batched OTLP protobuf),
 * to an HTTP sink in this process that only counts. The figure is this
 * process's CPU time per call (process.cpuUsage), traced minus untraced, so
 * it includes span creation, the batch processor, serialisation and the
 * export requests.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createClient, createRouterTransport, type Interceptor } from "@connectrpc/connect";
import { IngestEventStatus, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { tracingInterceptor } from "../src/interceptors/tracing.js";
import { createTracing } from "../src/observability/tracing.js";

const requests = Number(process.argv[2] ?? 20_000);
const rounds = 8;

const received = { requests: 0, bytes: 0 };
const sink = createServer((req, res) => {
  received.requests++;
  req.on("data", (chunk: Buffer) => (received.bytes += chunk.length));
  req.on("end", () => res.writeHead(200).end());
});
await new Promise<void>((resolve) => sink.listen(0, "127.0.0.1", resolve));
// A queue that holds every span of a round: calls here are far quicker than
// real requests, and the default queue (2048) would drop spans, understating the cost.
process.env.OTEL_BSP_MAX_QUEUE_SIZE ??= "1000000";
const tracing = await createTracing({ protocol: "http/protobuf", url: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/v1/traces` });

function client(interceptors: Interceptor[]) {
  const transport = createRouterTransport(
    (router) =>
      router.service(IngestService, {
        ingestMessage: () => ({ eventId: "3c8a988e-0000-4000-8000-000000000000", status: "persisted", eventStatus: IngestEventStatus.RECEIVED }),
      }),
    { router: { interceptors } },
  );
  return createClient(IngestService, transport);
}

const plain = client([]);
const traced = client([tracingInterceptor(tracing)]);
const message = { source: "whatsapp", senderId: "5511999999999", content: "teste", metadata: {} };
const headers = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" };

/** CPU microseconds per call, `requests` calls, 32 at a time. */
async function measure(call: typeof plain, flush: boolean): Promise<number> {
  const before = process.cpuUsage();
  for (let i = 0; i < requests; i += 32) {
    await Promise.all(Array.from({ length: 32 }, () => call.ingestMessage(message, { headers })));
  }
  if (flush) await tracing.forceFlush();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / requests;
}

await measure(plain, false);
await measure(traced, true);
const plainUs: number[] = [];
const tracedUs: number[] = [];
for (let round = 0; round < rounds; round++) {
  plainUs.push(await measure(plain, false));
  tracedUs.push(await measure(traced, true));
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const fmt = (values: number[]) => values.map((v) => v.toFixed(1)).join(", ");
console.log(`untraced µs CPU per call: ${fmt(plainUs)} (median ${median(plainUs).toFixed(1)})`);
console.log(`traced   µs CPU per call: ${fmt(tracedUs)} (median ${median(tracedUs).toFixed(1)})`);
const spans = (rounds + 1) * requests;
console.log(
  `tracing adds ${(median(tracedUs) - median(plainUs)).toFixed(1)} µs of CPU per call; ` +
    `exported ${spans} spans in ${received.requests} requests, ${(received.bytes / spans).toFixed(0)} bytes per span`,
);
await tracing.shutdown();
sink.close();
