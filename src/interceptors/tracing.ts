import { isMessage } from "@bufbuild/protobuf";
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { SpanKind, SpanStatusCode, trace, type Span } from "@opentelemetry/api";
import { IngestMessageRequestSchema } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { ingestResultKey, requestTraceKey } from "../context-keys.js";
import { maskSenderId } from "../observability/logger.js";
import { isServerFault, observedRequest } from "../observability/request-observer.js";
import type { Tracing } from "../observability/tracing.js";

/**
 * One server span per RPC, a child of the caller's `traceparent`, named by
 * the procedure (`aurora.crm.v1.IngestService/IngestMessage`) with the
 * standard RPC attributes and the request id. Its trace and span ids go to
 * the request's log line. Health checks are not traced: probes call them all
 * day and they say nothing about a message.
 *
 * Personal data (LGPD): spans carry the masked sender only; never the
 * content, the metadata, a full sender id or an error's message (database
 * errors can quote stored values).
 */
export function tracingInterceptor(tracing: Tracing): Interceptor {
  return (next) => async (req) => {
    if (req.service.typeName === Health.typeName) return next(req);
    const grpc = (req.header.get("content-type") ?? "").startsWith("application/grpc");
    const request = observedRequest(req.contextValues);
    const parent = tracing.extract(req.header);
    const span = tracing.tracer.startSpan(
      `${req.service.typeName}/${req.method.name}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "rpc.system": grpc ? "grpc" : "connect_rpc",
          "rpc.service": req.service.typeName,
          "rpc.method": req.method.name,
          ...(request && { "aurora.request_id": request.id }),
        },
      },
      parent,
    );
    req.contextValues.set(requestTraceKey, trace.setSpan(parent, span));
    if (request) {
      const { traceId, spanId } = span.spanContext();
      Object.assign(request.fields, { trace_id: traceId, span_id: spanId });
    }
    if (!req.stream && isMessage(req.message, IngestMessageRequestSchema)) {
      span.setAttributes({ "aurora.ingest.source": req.message.source, "aurora.ingest.sender": maskSenderId(req.message.senderId) });
    }
    try {
      const res = await next(req);
      const ingested = req.contextValues.get(ingestResultKey);
      if (ingested) {
        span.setAttributes({
          "aurora.ingest.event_id": ingested.eventId,
          "aurora.ingest.event_status": ingested.status,
          "aurora.ingest.duplicate": ingested.duplicate,
        });
      }
      if (!res.stream) {
        end(span, grpc, undefined);
        return res;
      }
      return { ...res, message: traceStream(res.message, span, grpc) };
    } catch (error) {
      end(span, grpc, error);
      throw error;
    }
  };
}

/** Ends the span when the response stream does, however it does. */
async function* traceStream<T>(messages: AsyncIterable<T>, span: Span, grpc: boolean): AsyncIterable<T> {
  let failure: unknown;
  try {
    yield* messages;
  } catch (error) {
    failure = error;
    throw error;
  } finally {
    end(span, grpc, failure);
  }
}

/** Records the outcome (gRPC status code, or the Connect error code) and ends the span. */
function end(span: Span, grpc: boolean, error: unknown): void {
  const code = error === undefined ? undefined : ConnectError.from(error).code;
  if (grpc) span.setAttribute("rpc.grpc.status_code", code ?? 0);
  else if (code !== undefined) span.setAttribute("rpc.connect_rpc.error_code", codeToString(code));
  if (code !== undefined && isServerFault(code)) span.setStatus({ code: SpanStatusCode.ERROR, message: codeToString(code) });
  span.end();
}
