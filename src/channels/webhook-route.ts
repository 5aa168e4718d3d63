/**
 * Shared plumbing for providers' webhooks (docs/channels.md): routes that a
 * provider calls with its own payload and its own proof (a signature, a JWT)
 * instead of our bearer tokens.
 *
 * The API, in full:
 * - A provider module exports a `WebhookRoute`: its channel name, the path
 *   it serves (exact, or a prefix ending in `/`), its body size limit and a
 *   `handle(request)` that returns a `WebhookAnswer`.
 * - Before `handle` runs, the raw body has been read within the route's limit
 *   (413 past it, before a byte is parsed; 408 when it is not received in
 *   time; 415 for a compressed body). `request.body` is those exact bytes:
 *   verify signatures over them, never over re-serialised JSON.
 * - `secretMatches` and `hmacMatches` compare a presented secret or signature
 *   against every configured one (several, so one can be rotated) in time
 *   that shows neither content nor length.
 * - `request.ingest(inputs)` stores every item of a delivery through the
 *   ingest command, all submitted at once (they share group-commit batches),
 *   and resolves once every one is committed; answer 200 only after it.
 *   An item the provider sent but we cannot store as a message goes in as
 *   an input with `unusable` set: it is stored as an ERROR event.
 * - `accepted(...)`, `refused(...)` and `answer(...)` build answers;
 *   deliveries accepted and refused (by reason), events stored and
 *   duplicates are counted per channel, parts acknowledged but not stored
 *   when the route calls `request.ignored(name)`, and the request's log line names
 *   the channel, the counts and any refusal reason (never a secret or
 *   message content).
 * - `createWebhookHandler(routes, options)` returns the plain-HTTP handler
 *   the route table (src/routes.ts) serves every route through, as a `node`
 *   line with `provider` access; it answers and returns true
 *   for a webhook path, returns false for anything else.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Counter, type Registry } from "prom-client";
import type { IngestMessage, IngestMessageInput } from "../ingest/ingest-message.js";
import { DuplicateConflictError } from "../ingest/errors.js";
import type { Logger } from "../observability/logger.js";
import type { Metrics } from "../observability/metrics.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** One provider's webhook. */
export interface WebhookRoute {
  /** Names the provider in metrics and log lines: `whatsapp`, `evolution`, `email`… */
  channel: string;
  /** The path served exactly, or every path under it when it ends in `/`. */
  path: string;
  /** Largest body read, in bytes; a larger one is refused 413 before it is parsed. */
  maxBodyBytes: number;
  /** Answers one request. A thrown error is logged and answered 500, which providers retry. */
  handle(request: WebhookRequest): Promise<WebhookAnswer>;
}

/** A request as a webhook route sees it: the raw body already read within the route's limit. */
export interface WebhookRequest {
  method: string;
  /** The path as received, without the query string. */
  path: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  /** The exact bytes received (empty for GET). */
  body: Buffer;
  /** Aborted when the client goes away before it is answered. */
  signal: AbortSignal;
  /** Stores every input through the ingest command; resolves once all are committed. */
  ingest(inputs: IngestMessageInput[]): Promise<IngestSummary>;
  /** Adds safe, non-personal fields to the request's log line (counts, ids of the provider's account). */
  note(fields: Record<string, unknown>): void;
  /** Counts a part of the delivery acknowledged but not stored, by a short fixed name (`field:account_update`). */
  ignored(item: string): void;
}

/** What a delivery stored. */
export interface IngestSummary {
  /** Events newly committed. */
  stored: number;
  /** Items whose (source, external_id) was already stored: nothing new was written for them. */
  duplicates: number;
  /** Of the stored events, those stored as ERROR. */
  errors: number;
}

/** How a route answers. Build it with `accepted`, `refused` or `answer`. */
export interface WebhookAnswer {
  status: number;
  body: string;
  contentType: string;
  /** `accepted`: a delivery was taken; `refused`: a delivery was refused (with `reason`); absent: neither (a handshake). */
  outcome?: "accepted" | "refused";
  /** Short, fixed reason for a refusal, the metric's label: `signature`, `malformed`, `too_large`… */
  reason?: string;
}

/** A delivery accepted: 200 with a small JSON body. */
export function accepted(summary?: Partial<IngestSummary>): WebhookAnswer {
  return { status: 200, contentType: "application/json", body: JSON.stringify({ status: "ok", ...summary }), outcome: "accepted" };
}

/** A delivery refused with `status`; `reason` is counted and logged, `message` is what the caller reads. */
export function refused(status: number, reason: string, message: string): WebhookAnswer {
  return { status, contentType: "application/json", body: JSON.stringify({ error: message }), outcome: "refused", reason };
}

/** Any other answer (a handshake's plain-text echo, a 403 to a wrong verify token). */
export function answer(status: number, body: string, contentType = "text/plain; charset=utf-8"): WebhookAnswer {
  return { status, body, contentType };
}

/**
 * True when `presented` equals one of `secrets`. Both sides are hashed to
 * SHA-256 and every secret is compared every time with `timingSafeEqual`, so
 * neither a secret's content nor its length shows in the time taken.
 */
export function secretMatches(presented: string, secrets: readonly string[]): boolean {
  const digest = (value: string) => createHash("sha256").update(value, "utf8").digest();
  const given = digest(presented);
  let match = false;
  for (const secret of secrets) if (timingSafeEqual(digest(secret), given)) match = true;
  return match && secrets.length > 0;
}

/**
 * True when `signatureHex` is the hex HMAC of `body` under one of `secrets`
 * (`sha256` unless told). Every secret is tried every time, compared with
 * `timingSafeEqual`; a signature that is not hex of the digest's length is
 * false without comparing.
 */
export function hmacMatches(body: Buffer, signatureHex: string, secrets: readonly string[], algorithm: "sha256" | "sha1" = "sha256"): boolean {
  const length = algorithm === "sha256" ? 32 : 20;
  if (!new RegExp(`^[0-9a-fA-F]{${length * 2}}$`).test(signatureHex)) return false;
  const given = Buffer.from(signatureHex, "hex");
  let match = false;
  for (const secret of secrets) if (timingSafeEqual(createHmac(algorithm, secret).update(body).digest(), given)) match = true;
  return match;
}

/** Counters of the webhook routes, by channel. */
export interface WebhookMetrics {
  accepted: Counter<"channel">;
  refused: Counter<"channel" | "reason">;
  stored: Counter<"channel" | "kind">;
  duplicates: Counter<"channel">;
  /** Parts of deliveries acknowledged but not stored (fields or item types a route does not map), by what they were. */
  ignored: Counter<"channel" | "item">;
}

const registered = new WeakMap<Registry, WebhookMetrics>();

/** The webhook counters on `registry`, registered once per registry. */
export function webhookMetrics(registry: Registry): WebhookMetrics {
  const existing = registered.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const prefix = "aurora_ingest_webhook_";
  const metrics: WebhookMetrics = {
    accepted: new Counter({ name: `${prefix}deliveries_accepted_total`, help: "Webhook deliveries answered 200, by channel.", labelNames: ["channel"], registers }),
    refused: new Counter({
      name: `${prefix}deliveries_refused_total`,
      help: "Webhook deliveries refused (nothing stored), by channel and reason.",
      labelNames: ["channel", "reason"],
      registers,
    }),
    stored: new Counter({ name: `${prefix}events_stored_total`, help: "Events committed from webhook deliveries, by channel and kind.", labelNames: ["channel", "kind"], registers }),
    duplicates: new Counter({
      name: `${prefix}duplicates_total`,
      help: "Webhook items already stored (a provider's retry): nothing new written.",
      labelNames: ["channel"],
      registers,
    }),
    ignored: new Counter({
      name: `${prefix}items_ignored_total`,
      help: "Parts of webhook deliveries acknowledged but not stored, by channel and what they were.",
      labelNames: ["channel", "item"],
      registers,
    }),
  };
  registered.set(registry, metrics);
  return metrics;
}

export interface WebhookHandlerOptions {
  log: Logger;
  metrics: Metrics;
  /** The one ingest command of the process, shared with the RPCs (one group-commit batcher). */
  ingest: IngestMessage;
  /** Longest a client may take to send the body once its headers arrived: then 408. */
  bodyTimeoutMs: number;
  /** Adds fields to the request's log line (the request observer's). */
  note?: (req: Request, fields: Record<string, unknown>) => void;
}

/**
 * The plain-HTTP handler for every webhook route: returns false for a path
 * no route serves; otherwise reads the body within the route's limit, runs
 * the route, writes its answer, counts it, and returns true.
 */
export function createWebhookHandler(
  routes: readonly WebhookRoute[],
  options: WebhookHandlerOptions,
): (req: Request, res: Response, note?: (fields: Record<string, unknown>) => void) => boolean {
  const counters = webhookMetrics(options.metrics.registry);
  const find = (path: string) => routes.find((route) => (route.path.endsWith("/") ? path.startsWith(route.path) : path === route.path));
  return (req, res, noteFields) => {
    const url = req.url ?? "/";
    const queryAt = url.indexOf("?");
    const path = queryAt < 0 ? url : url.slice(0, queryAt);
    const route = find(path);
    if (!route) return false;
    const note = (fields: Record<string, unknown>) => (noteFields ? noteFields(fields) : options.note?.(req, fields));
    note({ channel: route.channel });
    const aborted = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) aborted.abort();
    });
    const run = async (): Promise<WebhookAnswer> => {
      const method = req.method ?? "GET";
      if (method !== "GET" && method !== "POST") return refused(405, "method", "use GET or POST");
      let body: Buffer = Buffer.alloc(0);
      if (method === "POST") {
        const encoding = String(req.headers["content-encoding"] ?? "identity").toLowerCase();
        if (encoding !== "identity") return refused(415, "encoding", "send the body uncompressed");
        const read = await readBody(req, route.maxBodyBytes, options.bodyTimeoutMs);
        if (read === "too_large") return refused(413, "too_large", `the body is larger than ${route.maxBodyBytes} bytes`);
        if (read === "timeout") return refused(408, "body_timeout", `the body was not received within ${options.bodyTimeoutMs} ms`);
        if (read === "aborted") return refused(400, "aborted", "the body ended early");
        body = read;
      }
      return route.handle({
        method,
        path,
        query: new URLSearchParams(queryAt < 0 ? "" : url.slice(queryAt + 1)),
        headers: req.headers,
        body,
        signal: aborted.signal,
        ingest: (inputs) => ingestAll(inputs, route.channel, aborted.signal),
        note,
        ignored: (item) => counters.ignored.inc({ channel: route.channel, item }),
      });
    };
    const ingestAll = async (inputs: IngestMessageInput[], channel: string, signal: AbortSignal): Promise<IngestSummary> => {
      // All submitted before any is awaited, so they join the same batches.
      const settled = await Promise.allSettled(inputs.map((input) => options.ingest(input, signal)));
      const summary: IngestSummary = { stored: 0, duplicates: 0, errors: 0 };
      let failure: Error | undefined;
      settled.forEach((outcome, i) => {
        if (outcome.status === "rejected") {
          // A provider's id reused with other content (or our own rendering
          // of it changed between versions): the original stays; retrying
          // could never change that, so it counts as a duplicate.
          if (outcome.reason instanceof DuplicateConflictError) {
            options.log.warn({ channel }, "webhook item repeats a stored id with other content; the stored event is kept");
            summary.duplicates++;
            counters.duplicates.inc({ channel });
          } else {
            failure ??= outcome.reason instanceof Error ? outcome.reason : new Error("the ingest command failed", { cause: outcome.reason });
          }
          return;
        }
        const result = outcome.value;
        if (result.duplicate) {
          summary.duplicates++;
          counters.duplicates.inc({ channel });
          options.metrics.duplicates.inc();
          return;
        }
        summary.stored++;
        if (result.status === "ERROR") summary.errors++;
        counters.stored.inc({ channel, kind: inputs[i].kind ?? "MESSAGE" });
        options.metrics.eventsStored.inc({ status: result.status });
        if (result.contactCreated) options.metrics.contactsCreated.inc();
      });
      // What was committed stays; the provider's retry finds it and stores the rest.
      if (failure) throw failure;
      return summary;
    };
    run()
      .catch((error: unknown) => {
        if (aborted.signal.aborted) return refused(499, "client_gone", "the client went away");
        options.log.error({ err: error, channel: route.channel }, "webhook delivery failed; the provider will retry");
        return { status: 500, contentType: "application/json", body: JSON.stringify({ error: "internal error" }) } satisfies WebhookAnswer;
      })
      .then((result) => {
        if (result.outcome === "accepted") counters.accepted.inc({ channel: route.channel });
        if (result.outcome === "refused") {
          counters.refused.inc({ channel: route.channel, reason: result.reason ?? "other" });
          note({ refused: result.reason });
        }
        write(req, res, result);
      })
      .catch(() => res.destroy());
    return true;
  };
}

function write(req: Request, res: Response, result: WebhookAnswer): void {
  if (res.headersSent || res.destroyed) return;
  // A refused HTTP/1.1 body may still be arriving: the connection closes rather than read it.
  if (req.httpVersionMajor === 1 && !req.complete) res.setHeader("connection", "close");
  (res as ServerResponse).writeHead(result.status, { "content-type": result.contentType, "cache-control": "no-store" });
  (res as ServerResponse).end(result.body);
}

/**
 * Reads the whole body, refusing it as soon as it is known to pass `maxBytes`
 * (a declared Content-Length over it is refused before a byte is read) or
 * when it has not all arrived within `timeoutMs`.
 */
function readBody(req: Request, maxBytes: number, timeoutMs: number): Promise<Buffer | "too_large" | "timeout" | "aborted"> {
  const declared = Number(req.headers["content-length"] ?? NaN);
  if (Number.isFinite(declared) && declared > maxBytes) return Promise.resolve("too_large");
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (result: Buffer | "too_large" | "timeout" | "aborted") => {
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onAbort);
      req.off("close", onAbort);
      if (typeof result === "string") req.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) return finish("too_large");
      chunks.push(chunk);
    };
    const onEnd = () => finish(Buffer.concat(chunks, size));
    const onAbort = () => finish("aborted");
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onAbort);
    req.once("close", onAbort);
  });
}
