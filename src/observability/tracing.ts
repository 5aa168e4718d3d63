import { ROOT_CONTEXT, trace, type Context, type DiagLogger, type SpanContext, type TextMapGetter, type Tracer } from "@opentelemetry/api";
import type { SpanExporter } from "@opentelemetry/sdk-trace-base";
import type { TracingConfig } from "../config.js";
import type { Logger } from "./logger.js";

/** The service's name in traces unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` says otherwise. */
export const SERVICE_NAME = "aurora-crm-ingest";

/**
 * Tracing for one process: a tracer whose spans are batched and exported
 * over OTLP, and the W3C Trace Context propagator. Created by the entry point
 * only when tracing is configured and handed to what makes spans; when it is
 * off, nothing of it exists.
 */
export interface Tracing {
  tracer: Tracer;
  /** The caller's trace context from `traceparent`/`tracestate`, or the root context when there is none or it is malformed. */
  extract(headers: Headers): Context;
  /** The `traceparent` (and `tracestate`, if any) headers that name a span, for whatever carries the trace on. */
  inject(span: SpanContext): Record<string, string>;
  /** Exports every finished span now. */
  forceFlush(): Promise<void>;
  /** Exports what is left and stops; spans ended afterwards are dropped. */
  shutdown(): Promise<void>;
}

export interface TracingOptions extends TracingConfig {
  /**
   * Where spans go instead of what the SDK reads from
   * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`/`OTEL_EXPORTER_OTLP_ENDPOINT`
   * (tests point it at their own receiver).
   */
  url?: string;
}

/**
 * A W3C `traceparent` of version 00 (https://www.w3.org/TR/trace-context/#traceparent-header):
 * lower-case hex, a trace id and a span id that are not all zeros, and flags.
 */
const TRACEPARENT = /^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$/;

/** The header if it is a well-formed `traceparent`, else null. */
export function validTraceParent(header: string | null): string | null {
  return header !== null && TRACEPARENT.test(header) ? header : null;
}

/**
 * The `traceparent` an ingested event is stored with (docs/tracing.md): the
 * request's server span when tracing is on; when it is off, the caller's own
 * as received, if well-formed, so the trace goes on past a service that does
 * not export; otherwise null.
 */
export function eventTraceParent(tracing: Tracing | undefined, request: Context | undefined, header: Headers): string | null {
  const span = tracing && request && trace.getSpanContext(request);
  if (span) return tracing.inject(span).traceparent ?? null;
  return validTraceParent(header.get("traceparent"));
}

const headersGetter: TextMapGetter<Headers> = {
  get: (headers, key) => headers.get(key) ?? undefined,
  keys: (headers) => [...headers.keys()],
};

/**
 * Builds the tracer provider without registering it globally: spans are made
 * only through the `Tracing` handed in, and parents are passed explicitly,
 * so no context manager (async hooks) runs on the request path. The SDK is
 * loaded here, on demand: a service without tracing never loads it. The SDK
 * reads the standard variables itself: `OTEL_SERVICE_NAME`,
 * `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
 * `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS|TIMEOUT|COMPRESSION`, `OTEL_BSP_*`
 * and the span limits.
 */
export async function createTracing(options: TracingOptions): Promise<Tracing> {
  const [{ W3CTraceContextPropagator }, resources, { BasicTracerProvider, BatchSpanProcessor }, { ATTR_SERVICE_NAME }] = await Promise.all([
    import("@opentelemetry/core"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/sdk-trace-base"),
    import("@opentelemetry/semantic-conventions"),
  ]);
  const exporterOptions = options.url ? { url: options.url } : {};
  const exporter: SpanExporter =
    options.protocol === "http/json"
      ? new (await import("@opentelemetry/exporter-trace-otlp-http")).OTLPTraceExporter(exporterOptions)
      : new (await import("@opentelemetry/exporter-trace-otlp-proto")).OTLPTraceExporter(exporterOptions);
  // Later resources win: ours over the SDK's defaults, the environment's over ours.
  const resource = resources
    .defaultResource()
    .merge(resources.resourceFromAttributes({ [ATTR_SERVICE_NAME]: SERVICE_NAME, "process.pid": process.pid }))
    .merge(resources.detectResources({ detectors: [resources.hostDetector, resources.envDetector] }));
  const provider = new BasicTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(exporter)] });
  const propagator = new W3CTraceContextPropagator();
  return {
    tracer: provider.getTracer(SERVICE_NAME),
    extract: (headers) => propagator.extract(ROOT_CONTEXT, headers, headersGetter),
    inject(span) {
      const carrier: Record<string, string> = {};
      propagator.inject(trace.setSpanContext(ROOT_CONTEXT, span), carrier, {
        set: (target, key, value) => {
          target[key] = value;
        },
      });
      return carrier;
    },
    forceFlush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}

/**
 * The SDK reports export failures (collector unreachable, refused batch)
 * through the OpenTelemetry diagnostics API; this sends them to our log.
 */
export function tracingDiagnostics(log: Logger): DiagLogger {
  const child = log.child({ component: "opentelemetry" });
  const ignore = () => undefined;
  return {
    error: (message, ...args) => child.warn({ details: args.map(String) }, message),
    warn: (message, ...args) => child.warn({ details: args.map(String) }, message),
    info: ignore,
    debug: ignore,
    verbose: ignore,
  };
}
