import { Code, ConnectError } from "@connectrpc/connect";
import type { UniversalHandlerFn, UniversalServerRequest } from "@connectrpc/connect/protocol";
import { abortable } from "../abortable.js";

export interface RequestBodyLimits {
  /** Longest a client may take to send a body once Connect starts reading it. */
  bodyTimeoutMs: number;
  /**
   * Answer the way plain HTTP clients understand (the `/ingest/message` route):
   * a body over the size limit, compressed or not, is 413 rather than the
   * Connect protocol's 429, and a body not received in time 408 rather than 504.
   */
  plainHttpStatuses?: boolean;
}

/**
 * Bounds how a handler receives its request body. The size limit itself is
 * Connect's `readMaxBytes` (a declared length over it is refused before a
 * byte is read, an undeclared one as soon as the count passes it, a
 * compressed one as soon as it decompresses past it), which answers
 * `resource_exhausted`. Here:
 * - the body must arrive within `bodyTimeoutMs`, or the call fails with
 *   `deadline_exceeded`: a client that sends headers and then trickles or
 *   withholds its body cannot hold a request open;
 * - with `plainHttpStatuses`, the HTTP statuses change as described there
 *   (on that route `resource_exhausted` can only mean "too large").
 * Working on Connect's universal request and response keeps this out of
 * Node's request objects; the RPC paths keep Connect's and gRPC's own mapping.
 */
export function limitRequestBody(handler: UniversalHandlerFn, limits: RequestBodyLimits): UniversalHandlerFn {
  return async (request: UniversalServerRequest) => {
    const body = request.body;
    if (typeof body !== "object" || body === null || !(Symbol.asyncIterator in body)) return handler(request);
    const deadline = { expired: false };
    let response = await handler({ ...request, body: receivedWithin(body, limits.bodyTimeoutMs, deadline) });
    // A client too slow to send its body is not waited for again: its HTTP/1.1 connection ends (early-answers.ts).
    if (deadline.expired && request.httpVersion.startsWith("1.")) {
      const header = new Headers(response.header);
      header.set("connection", "close");
      response = { ...response, header };
    }
    if (!limits.plainHttpStatuses) return response;
    if (response.status === 429) return { ...response, status: 413 };
    if (response.status === 504 && deadline.expired) return { ...response, status: 408 };
    return response;
  };
}

/** Yields `body`'s chunks, failing with `deadline_exceeded` if the last one has not arrived within `ms`. */
async function* receivedWithin(body: AsyncIterable<Uint8Array>, ms: number, deadline: { expired: boolean }): AsyncIterable<Uint8Array> {
  const timeout = AbortSignal.timeout(ms);
  const chunks = body[Symbol.asyncIterator]();
  for (;;) {
    const next = await abortable(chunks.next(), timeout).catch((error: unknown) => {
      if (!timeout.aborted) throw error;
      deadline.expired = true;
      throw new ConnectError(`the request body was not received within ${ms} ms`, Code.DeadlineExceeded);
    });
    if (next.done) return;
    yield next.value;
  }
}
