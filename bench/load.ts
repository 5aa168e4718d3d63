/**
 * The load generator, run by bench/run.ts as a process of its own: keeps
 * `concurrency` requests in flight for the warm-up and then the measured
 * window, and prints one JSON line per phase on stdout.
 *
 * With `rate`, an open loop instead: requests sent on a fixed schedule,
 * each timed from when it was due.
 *
 * Modes: `grpc` (gRPC over h2c), `connect` (Connect JSON over HTTP/1.1),
 * `route` (POST /ingest/message) against the server; `bare` and
 * `bare-connect`, the route's requests against the reference servers
 * (bench/bare-server.ts, bench/bare-connect-server.ts); `bare-grpc`, the
 * gRPC requests against the Connect reference server; `whatsapp` and
 * `whatsapp-10`, signed Meta deliveries of 1 and 10 text messages to
 * POST /webhooks/whatsapp; and `sql`, which does the same logical work
 * straight on a `pg` pool: the database's floor.
 */
import { createHmac } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { performance } from "node:perf_hooks";
import { create, fromBinary, toBinary, type JsonObject } from "@bufbuild/protobuf";
import pg from "pg";
import { IngestMessageRequestSchema, IngestMessageResponseSchema, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { floorIngest } from "./floor.js";
import { openLoop } from "./open-loop.js";
import { messageSource, type Message } from "./traffic.js";

export type LoadMode = "grpc" | "connect" | "route" | "sql" | "bare" | "bare-connect" | "bare-grpc" | "whatsapp" | "whatsapp-10";

/** Messages per request: one, except in a WhatsApp delivery of ten. */
const MESSAGES_PER_REQUEST: Partial<Record<LoadMode, number>> = { "whatsapp-10": 10 };

/** What bench/run.ts hands the load generator (as JSON in argv[2]). */
export interface LoadPlan {
  mode: LoadMode;
  /** The server's base URL (service modes) or the database URL (`sql`). */
  target: string;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  poolSize: number;
  newShare: number;
  /** Makes this run's new senders unique. */
  tag: string;
  /** `sql`: connections in the pool. */
  sqlPoolMax: number;
  /** `grpc`: HTTP/2 connections the concurrent calls are spread over. */
  h2Connections: number;
  /** Bearer token the server requires. */
  token: string;
  /** The WhatsApp app secret the server checks deliveries with. */
  whatsappSecret: string;
  /**
   * Open loop: requests per second sent on a fixed schedule whatever the
   * answers, each timed from when it was due (so a stall counts against
   * every request it delays, without coordinated omission). Absent: closed
   * loop, `concurrency` requests in flight.
   */
  rate?: number;
}

/** The load generator's answer, printed as the last line. */
export interface LoadResult {
  mode: LoadMode;
  /** Requests completed in the measured window, and how many of them failed. */
  measured: number;
  /** Messages in the measured window's successful requests (more than requests in a delivery of several). */
  measuredMessages: number;
  errors: number;
  /** Every success, warm-up included: what the database must hold afterwards. */
  succeeded: number;
  /** Successes whose sender was new: the contacts that must have been created. */
  newSendersSucceeded: number;
  failed: number;
  sampleErrors: string[];
  rps: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number; mean: number };
  /** The load generator's own CPU per 1,000 measured requests. */
  clientCpuMsPer1000: number;
}

/** Sends the messages of one request (one, except in a WhatsApp delivery of several) and throws unless all were stored. */
type Send = (messages: Message[]) => Promise<void>;

function emit(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function main(plan: LoadPlan): Promise<void> {
  const { send, close } = await sender(plan);
  const whatsapp = plan.mode === "whatsapp" || plan.mode === "whatsapp-10";
  const next = messageSource({ poolSize: plan.poolSize, newShare: plan.newShare, tag: plan.tag, whatsappOnly: whatsapp });
  const perRequest = MESSAGES_PER_REQUEST[plan.mode] ?? 1;

  let latencies = new Float64Array(1 << 16);
  let measured = 0;
  let measuredMessages = 0;
  let errors = 0;
  let succeeded = 0;
  let newSendersSucceeded = 0;
  let failed = 0;
  const sampleErrors: string[] = [];

  const start = performance.now();
  const measureFrom = start + plan.warmupMs;
  const stopAt = measureFrom + plan.durationMs;
  // Tell bench/run.ts when the measured window opens and closes, so it can
  // sample the server at the same moments. The timers may fire late on a
  // busy machine; the loops' end closes the window at the latest.
  let cpuAtMeasure: NodeJS.CpuUsage | undefined;
  const measuring = () => {
    if (cpuAtMeasure) return;
    cpuAtMeasure = process.cpuUsage();
    emit({ type: "measuring" });
  };
  let cpuSpent: NodeJS.CpuUsage | undefined;
  const stopped = () => {
    if (cpuSpent) return;
    measuring();
    cpuSpent = process.cpuUsage(cpuAtMeasure);
    emit({ type: "stopped" });
  };
  const warm = setTimeout(measuring, plan.warmupMs);
  const stop = setTimeout(stopped, plan.warmupMs + plan.durationMs);

  /** Sends one request due at `t0`; counted when due in the window (open loop) or when sent and answered in it (closed loop). */
  const one = async (t0: number, open: boolean) => {
    const messages = Array.from({ length: perRequest }, next);
    let ok = true;
    try {
      await send(messages);
      succeeded += messages.length;
      newSendersSucceeded += messages.filter((message) => message.isNew).length;
    } catch (error) {
      ok = false;
      failed++;
      if (sampleErrors.length < 5) sampleErrors.push(String((error as Error)?.message ?? error));
    }
    const t1 = performance.now();
    if (t0 < measureFrom || (open ? t0 >= stopAt : t1 > stopAt)) return;
    measured++;
    if (!ok) {
      errors++;
      return;
    }
    measuredMessages += messages.length;
    if (measured > latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[measured - errors - 1] = t1 - t0;
  };
  const loop = async () => {
    while (performance.now() < stopAt) await one(performance.now(), false);
  };
  if (plan.rate) await openLoop(plan.rate, start, (due) => due < stopAt, (due) => one(due, true));
  else await Promise.all(Array.from({ length: plan.concurrency }, loop));
  clearTimeout(warm);
  clearTimeout(stop);
  stopped();
  await close();

  const sorted = latencies.subarray(0, measured - errors).sort();
  const at = (q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : NaN);
  const cpu = cpuSpent!;
  const result: LoadResult = {
    mode: plan.mode,
    measured,
    measuredMessages,
    errors,
    succeeded,
    newSendersSucceeded,
    failed,
    sampleErrors,
    rps: measured / (plan.durationMs / 1000),
    latencyMs: {
      p50: at(0.5),
      p90: at(0.9),
      p99: at(0.99),
      max: sorted.length ? sorted[sorted.length - 1] : NaN,
      mean: sorted.reduce((sum, v) => sum + v, 0) / (sorted.length || 1),
    },
    clientCpuMsPer1000: measured ? ((cpu.user + cpu.system) / 1000 / measured) * 1000 : NaN,
  };
  emit({ type: "result", result });
}

/**
 * A function that sends one message (and throws unless it was stored), for
 * the plan's mode. The clients are minimal (node:http, node:http2) so that
 * the load generator's own CPU stays small next to the server's on the same
 * machine; the protocol work measured is the server's.
 */
async function sender(plan: LoadPlan): Promise<{ send: Send; close: () => Promise<void> }> {
  switch (plan.mode) {
    case "grpc":
    case "bare-grpc": {
      // A gRPC client multiplexes calls over few HTTP/2 connections; more than
      // one lets several worker processes share the load.
      const { hostname, port } = new URL(plan.target);
      const sessions = Array.from({ length: plan.h2Connections }, () =>
        http2.connect(plan.target, { createConnection: () => net.connect({ host: hostname, port: Number(port), noDelay: true }) }),
      );
      let turn = 0;
      return {
        send: ([m]) => grpcCall(sessions[turn++ % sessions.length], m, plan.token),
        close: async () => {
          for (const session of sessions) session.close();
        },
      };
    }
    case "connect":
    case "route":
    case "bare":
    case "bare-connect": {
      const agent = new http.Agent({ keepAlive: true, maxSockets: plan.concurrency, noDelay: true });
      const connect = plan.mode === "connect";
      const url = new URL(connect ? INGEST_MESSAGE_PATH : "/ingest/message", plan.target);
      return {
        send: async ([m]) => {
          const request = connect
            ? { source: m.source, senderId: m.senderId, content: m.content, metadata: m.metadata, externalId: m.externalId }
            : { source: m.source, sender_id: m.senderId, content: m.content, metadata: m.metadata, external_id: m.externalId };
          const body = JSON.parse(await postJson(agent, url, JSON.stringify(request), plan.token)) as { eventId?: string; event_id?: string };
          if (!(connect ? body.eventId : body.event_id)) throw new Error(`no event id in ${JSON.stringify(body)}`);
        },
        close: async () => agent.destroy(),
      };
    }
    case "whatsapp":
    case "whatsapp-10": {
      const agent = new http.Agent({ keepAlive: true, maxSockets: plan.concurrency, noDelay: true });
      const url = new URL("/webhooks/whatsapp", plan.target);
      return {
        send: async (messages) => {
          const body = JSON.stringify(whatsappDelivery(messages));
          const signature = `sha256=${createHmac("sha256", plan.whatsappSecret).update(body).digest("hex")}`;
          const answer = JSON.parse(await postJson(agent, url, body, "", { "x-hub-signature-256": signature })) as { stored?: number; duplicates?: number };
          if (answer.stored !== messages.length) throw new Error(`${answer.stored} of ${messages.length} stored: ${JSON.stringify(answer)}`);
        },
        close: async () => agent.destroy(),
      };
    }
    case "sql":
      return sqlFloor(plan);
  }
}

/**
 * A Meta Cloud API delivery as its webhook reference shows it: one entry,
 * one `messages` change per message (each with its sender's contact), text
 * messages with a `wamid` id.
 */
function whatsappDelivery(messages: Message[]) {
  const timestamp = String(Math.floor(Date.now() / 1000));
  return {
    object: "whatsapp_business_account",
    entry: [
      {
        id: "102290129340398",
        changes: messages.map((m) => ({
          field: "messages",
          value: {
            messaging_product: "whatsapp",
            metadata: { display_phone_number: "15550783881", phone_number_id: "106540352242922" },
            contacts: [{ profile: { name: "Cliente" }, wa_id: m.senderId }],
            messages: [{ from: m.senderId, id: m.externalId, timestamp, type: "text", text: { body: m.content } }],
          },
        })),
      },
    ],
  };
}

const INGEST_MESSAGE_PATH = `/${IngestService.typeName}/${IngestService.method.ingestMessage.name}`;

/** One unary gRPC call: a length-prefixed protobuf message out, status from the trailers (or trailers-only headers). */
function grpcCall(session: http2.ClientHttp2Session, m: Message, token: string): Promise<void> {
  const message = toBinary(
    IngestMessageRequestSchema,
    create(IngestMessageRequestSchema, {
      source: m.source,
      senderId: m.senderId,
      content: m.content,
      metadata: m.metadata as JsonObject,
      externalId: m.externalId,
    }),
  );
  const frame = Buffer.allocUnsafe(5 + message.length);
  frame[0] = 0;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ":method": "POST",
      ":path": INGEST_MESSAGE_PATH,
      "content-type": "application/grpc",
      te: "trailers",
      authorization: `Bearer ${token}`,
    });
    const chunks: Buffer[] = [];
    let status: string | undefined;
    let statusMessage = "";
    const take = (headers: http2.IncomingHttpHeaders) => {
      if (headers["grpc-status"] !== undefined) {
        status = String(headers["grpc-status"]);
        statusMessage = decodeURIComponent(String(headers["grpc-message"] ?? ""));
      }
    };
    stream.on("response", take);
    stream.on("trailers", take);
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("error", reject);
    stream.on("close", () => {
      try {
        if (status !== "0") throw new Error(`grpc-status ${status}: ${statusMessage}`);
        const body = Buffer.concat(chunks);
        const response = fromBinary(IngestMessageResponseSchema, body.subarray(5, 5 + body.readUInt32BE(1)));
        if (!response.eventId) throw new Error("no event id in the response");
        resolve();
      } catch (error) {
        reject(error);
      }
    });
    stream.end(frame);
  });
}

function postJson(agent: http.Agent, url: URL, body: string, token: string, extra: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const headers = {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      ...(token && { authorization: `Bearer ${token}` }),
      ...extra,
    };
    const request = http.request(
      url,
      { method: "POST", agent, headers },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => (text += chunk));
        response.on("end", () => (response.statusCode === 200 ? resolve(text) : reject(new Error(`HTTP ${response.statusCode}: ${text}`))));
        response.on("error", reject);
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}

/** The floor: the statement straight on a `pg` pool, no server. */
async function sqlFloor(plan: LoadPlan): Promise<{ send: Send; close: () => Promise<void> }> {
  const pool = new pg.Pool({ connectionString: plan.target, max: plan.sqlPoolMax });
  return {
    send: async ([m]) => void (await floorIngest(pool, m)),
    close: () => pool.end(),
  };
}

main(JSON.parse(process.argv[2]) as LoadPlan).catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
