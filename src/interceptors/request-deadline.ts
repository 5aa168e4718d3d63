import type { Interceptor } from "@connectrpc/connect";
import { abortable } from "../abortable.js";
import { DatabaseTimeoutError } from "./errors.js";

/**
 * Interceptor that answers a request still running after `timeoutMs` with
 * `DatabaseTimeoutError`: `DeadlineExceeded` for a read (a standard Get or
 * List method, AIP-131/132, which changes nothing), `Unavailable` for the
 * rest, so a client never waits longer than
 * that on a database that is gone or stuck. The handler's signal aborts at
 * the same moment, so a message still waiting for its batch is left out of
 * it. The work left behind is bounded too: every pool wait and statement has
 * the same timeout, and a transaction that fails is rolled back. Like any
 * request whose answer is lost, a batch already sent may still commit late;
 * a retry with the same `external_id` then gets the stored event back.
 */
export function deadlineInterceptor(timeoutMs: number): Interceptor {
  return (next) => async (request) => {
    // Only unary calls: a stream (a health watch, say) may rightly stay open.
    if (request.stream) return next(request);
    // The handler's signal aborts with the error the client gets, so code that reads its reason sees why.
    const timeout = AbortSignal.timeout(timeoutMs);
    const deadline = new AbortController();
    const expired = () => deadline.abort(new DatabaseTimeoutError(timeoutMs, /^(Get|List)[A-Z]/.test(request.method.name)));
    timeout.addEventListener("abort", expired, { once: true });
    const signal = AbortSignal.any([request.signal, deadline.signal]);
    try {
      return await abortable(next({ ...request, signal }), signal);
    } finally {
      timeout.removeEventListener("abort", expired);
    }
  };
}
