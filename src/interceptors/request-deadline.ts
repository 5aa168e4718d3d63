import type { Interceptor } from "@connectrpc/connect";
import { DatabaseTimeoutError } from "./errors.js";

/**
 * Interceptor that answers a request still running after `timeoutMs` with
 * `DatabaseTimeoutError` (`Unavailable`), so a client never waits longer than
 * that on a database that is gone or stuck. The work left behind is bounded
 * too: every pool wait and statement has the same timeout, and a statement
 * that fails leaves nothing written. Like any request whose answer is lost,
 * it may still commit late; a retry with the same `external_id` then gets
 * the stored event back.
 */
export function deadlineInterceptor(timeoutMs: number): Interceptor {
  return (next) => async (request) => {
    // Only unary calls: a stream (a health watch, say) may rightly stay open.
    if (request.stream) return next(request);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DatabaseTimeoutError(timeoutMs)), timeoutMs);
    });
    try {
      return await Promise.race([next(request), deadline]);
    } finally {
      clearTimeout(timer);
    }
  };
}
