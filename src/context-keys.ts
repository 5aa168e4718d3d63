/**
 * The values a request carries between the transport, the interceptors and
 * the handlers (Connect context values). They live here, below all of them,
 * so that observability and the interceptors read what a handler left
 * without importing the handler.
 */
import { createContextKey } from "@connectrpc/connect";
import type { Context } from "@opentelemetry/api";
import type { Logger } from "pino";
import type { IngestMessageResult } from "./ingest/ingest-message.js";

/** The request's logger (bound to its request id), for code that logs on a request's behalf. */
export const requestLoggerKey = createContextKey<Logger | undefined>(undefined, { description: "logger of the current request" });

/** The span of the request being served, as a context its child spans start from. */
export const requestTraceKey = createContextKey<Context | undefined>(undefined, { description: "trace context of the current request" });

/** The ingest command's result for the current request, left for request logs and metrics. */
export const ingestResultKey = createContextKey<IngestMessageResult | undefined>(undefined, {
  description: "result of the ingest command",
});

/** What a feed read returned, for the request's log line: counts only, never personal data. */
export interface FeedReadSummary {
  events: number;
  checkpoints?: number;
}

/** The current feed read's summary, filled in by the feed's handlers as they answer. */
export const feedReadKey = createContextKey<FeedReadSummary | undefined>(undefined, { description: "what a feed read returned" });
