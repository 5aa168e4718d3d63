import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { BinaryReader } from "@bufbuild/protobuf/wire";

/** One span as an OTLP receiver got it, in the shape of OTLP's JSON encoding, ids as lower-case hex. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** Empty for a root span. */
  parentSpanId: string;
  traceState: string;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  attributes: Record<string, unknown>;
  events: Array<{ name: string; attributes: Record<string, unknown> }>;
  links: Array<{ traceId: string; spanId: string; attributes: Record<string, unknown> }>;
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string };
  /** The resource the exporting process described itself with (service.name, …). */
  resource: Record<string, unknown>;
}

/** A real OTLP/HTTP traces receiver on an ephemeral loopback port, as a collector would run it. */
export interface OtlpReceiver {
  /** The base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT); traces arrive at `${endpoint}/v1/traces`. */
  endpoint: string;
  spans: ReceivedSpan[];
  /** The raw bodies received, for "never appears" assertions. */
  bodies: Buffer[];
  /** Content types of the export requests received. */
  contentTypes: string[];
  /** Resolves once a span matching `match` has arrived (polling, up to `timeoutMs`). */
  waitFor(match: (span: ReceivedSpan) => boolean, timeoutMs?: number): Promise<ReceivedSpan>;
  close(): Promise<void>;
}

/** Starts a receiver that decodes OTLP protobuf (`application/x-protobuf`) and JSON (`application/json`) export requests. */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const bodies: Buffer[] = [];
  const contentTypes: string[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => receive(req, res, Buffer.concat(chunks)));
  });
  const receive = (req: IncomingMessage, res: ServerResponse, body: Buffer) => {
    if (req.method !== "POST" || req.url !== "/v1/traces") {
      res.writeHead(404).end();
      return;
    }
    const contentType = String(req.headers["content-type"] ?? "");
    bodies.push(body);
    contentTypes.push(contentType);
    try {
      if (contentType.startsWith("application/json")) {
        spans.push(...fromJson(JSON.parse(body.toString("utf8"))));
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      } else {
        spans.push(...fromProtobuf(body));
        // An empty ExportTraceServiceResponse.
        res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
      }
    } catch (error) {
      res.writeHead(400).end(String(error));
    }
  };
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    spans,
    bodies,
    contentTypes,
    async waitFor(match, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = spans.find(match);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`no matching span within ${timeoutMs} ms; received: ${spans.map((s) => s.name).join(", ")}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

// --- OTLP JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding) ---

function fromJson(request: any): ReceivedSpan[] {
  return (request.resourceSpans ?? []).flatMap((resourceSpans: any) => {
    const resource = jsonAttributes(resourceSpans.resource?.attributes);
    return (resourceSpans.scopeSpans ?? []).flatMap((scopeSpans: any) =>
      (scopeSpans.spans ?? []).map(
        (span: any): ReceivedSpan => ({
          traceId: span.traceId ?? "",
          spanId: span.spanId ?? "",
          parentSpanId: span.parentSpanId ?? "",
          traceState: span.traceState ?? "",
          name: span.name ?? "",
          kind: span.kind ?? 0,
          attributes: jsonAttributes(span.attributes),
          events: (span.events ?? []).map((event: any) => ({ name: event.name, attributes: jsonAttributes(event.attributes) })),
          links: (span.links ?? []).map((link: any) => ({ traceId: link.traceId, spanId: link.spanId, attributes: jsonAttributes(link.attributes) })),
          status: { code: span.status?.code ?? 0, message: span.status?.message ?? "" },
          resource,
        }),
      ),
    );
  });
}

function jsonAttributes(list: any[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, jsonValue(kv.value ?? {})]));
}

function jsonValue(value: any): unknown {
  if ("stringValue" in value) return value.stringValue;
  if ("boolValue" in value) return value.boolValue;
  if ("intValue" in value) return Number(value.intValue);
  if ("doubleValue" in value) return value.doubleValue;
  if ("arrayValue" in value) return (value.arrayValue.values ?? []).map(jsonValue);
  if ("kvlistValue" in value) return jsonAttributes(value.kvlistValue.values);
  if ("bytesValue" in value) return value.bytesValue;
  return undefined;
}

// --- OTLP protobuf (opentelemetry/proto/collector/trace/v1/trace_service.proto and the messages it uses) ---

type Scalar = "string" | "bytes" | "varint" | "int64" | "double" | "bool" | "fixed32" | "fixed64";
type Schema = { [field: number]: [name: string, type: Scalar | (() => Schema), repeated?: "repeated"] };

const anyValue = (): Schema => ({
  1: ["stringValue", "string"],
  2: ["boolValue", "bool"],
  3: ["intValue", "int64"],
  4: ["doubleValue", "double"],
  5: ["arrayValue", () => ({ 1: ["values", anyValue, "repeated"] })],
  6: ["kvlistValue", () => ({ 1: ["values", keyValue, "repeated"] })],
  7: ["bytesValue", "bytes"],
});
const keyValue = (): Schema => ({ 1: ["key", "string"], 2: ["value", anyValue] });
const span = (): Schema => ({
  1: ["traceId", "bytes"],
  2: ["spanId", "bytes"],
  3: ["traceState", "string"],
  4: ["parentSpanId", "bytes"],
  5: ["name", "string"],
  6: ["kind", "varint"],
  7: ["startTimeUnixNano", "fixed64"],
  8: ["endTimeUnixNano", "fixed64"],
  9: ["attributes", keyValue, "repeated"],
  11: ["events", () => ({ 1: ["timeUnixNano", "fixed64"], 2: ["name", "string"], 3: ["attributes", keyValue, "repeated"] }), "repeated"],
  13: [
    "links",
    () => ({ 1: ["traceId", "bytes"], 2: ["spanId", "bytes"], 3: ["traceState", "string"], 4: ["attributes", keyValue, "repeated"] }),
    "repeated",
  ],
  15: ["status", () => ({ 2: ["message", "string"], 3: ["code", "varint"] })],
  16: ["flags", "fixed32"],
});
const exportTraceServiceRequest = (): Schema => ({
  1: [
    "resourceSpans",
    () => ({
      1: ["resource", () => ({ 1: ["attributes", keyValue, "repeated"] })],
      2: ["scopeSpans", () => ({ 1: ["scope", () => ({ 1: ["name", "string"], 2: ["version", "string"] })], 2: ["spans", span, "repeated"] }), "repeated"],
    }),
    "repeated",
  ],
});

/** Decodes a message by its schema into the same shape as OTLP's JSON encoding (bytes as hex). Unknown fields are skipped. */
function decode(bytes: Uint8Array, schema: Schema): any {
  const reader = new BinaryReader(bytes);
  const out: any = {};
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    const field = schema[fieldNo];
    if (!field) {
      reader.skip(wireType);
      continue;
    }
    const [name, type, repeated] = field;
    let value: unknown;
    if (typeof type === "function") value = decode(reader.bytes(), type());
    else if (type === "string") value = reader.string();
    else if (type === "bytes") value = Buffer.from(reader.bytes()).toString("hex");
    else if (type === "varint") value = reader.int32();
    else if (type === "int64") value = Number(reader.int64());
    else if (type === "double") value = reader.double();
    else if (type === "bool") value = reader.bool();
    else if (type === "fixed32") value = reader.fixed32();
    else value = String(reader.fixed64());
    if (repeated) (out[name] ??= []).push(value);
    else out[name] = value;
  }
  return out;
}

function fromProtobuf(body: Uint8Array): ReceivedSpan[] {
  return fromJson(decode(body, exportTraceServiceRequest()));
}
