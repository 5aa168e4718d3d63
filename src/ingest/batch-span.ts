import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type Context, type Link, type Span } from "@opentelemetry/api";
import type { Sequelize } from "sequelize-typescript";
import type { Tracing } from "../observability/tracing.js";
import { sqlState } from "../db/sql-state.js";

/** Named as OpenTelemetry's database conventions name a statement: operation, then the table. */
export const BATCH_SPAN_NAME = "INSERT crm_ingest_events";

/** Runs one batch write inside its span, given the trace context of each request the batch carries. */
export type BatchTracer = <T>(requests: Array<Context | undefined>, write: (span: Span) => Promise<T>) => Promise<T>;

/**
 * The database span of each batch write (docs/tracing.md): one CLIENT span
 * for the batch's transaction, retries and splits included. A batch serves
 * many requests but a span has one parent: its parent is the first request
 * it carries whose trace is sampled (the first at all when none is: the
 * default sampler follows the parent, so the batch is recorded whenever one
 * of its requests is), and it links to every request's span, the parent's
 * too: how OpenTelemetry models work done for many traces at once.
 *
 * Attributes follow the database conventions (`db.system.name`,
 * `db.namespace`, `db.operation.name`, `db.collection.name`, `server.*`);
 * the number of messages is `aurora.ingest.batch.size`, not
 * `db.operation.batch.size`, which the conventions reserve for several
 * statements sent together (ours is one statement over many rows). No SQL
 * text, no bound values and no error message: they would carry personal data.
 */
export function createBatchTracer(tracing: Tracing, sequelize: Sequelize): BatchTracer {
  const { database, host, port } = sequelize.config;
  const constant: Attributes = {
    "db.system.name": "postgresql",
    "db.operation.name": "INSERT",
    "db.collection.name": "crm_ingest_events",
    ...(database && { "db.namespace": database }),
    ...(host && { "server.address": host }),
    ...(Number(port) > 0 && { "server.port": Number(port) }),
  };
  return async (requests, write) => {
    const links: Link[] = [];
    let parent: Context | undefined;
    let sampled = false;
    for (const request of requests) {
      const context = request && trace.getSpanContext(request);
      if (!context) continue;
      links.push({ context });
      if (sampled) continue;
      sampled = (context.traceFlags & TraceFlags.SAMPLED) !== 0;
      if (sampled || !parent) parent = request;
    }
    const span = tracing.tracer.startSpan(
      BATCH_SPAN_NAME,
      { kind: SpanKind.CLIENT, links, attributes: { ...constant, "aurora.ingest.batch.size": requests.length } },
      parent ?? ROOT_CONTEXT,
    );
    try {
      return await write(span);
    } catch (error) {
      // The SQLSTATE, or the error's class: never its message.
      const code = sqlState(error);
      span.setAttributes({ "error.type": code || (error instanceof Error ? error.name : "unknown"), ...(code && { "db.response.status_code": code }) });
      span.setStatus({ code: SpanStatusCode.ERROR });
      throw error;
    } finally {
      span.end();
    }
  };
}
