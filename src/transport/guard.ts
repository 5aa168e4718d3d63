import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../observability/logger.js";
import { afterAnswer, answerEarly } from "./early-answers.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;
type Handler = (req: Request, res: Response) => void;

/**
 * Wraps the request handler so that nothing a client sends can throw out of
 * it and stop the process (an exception in a `request` event is uncaught).
 * - A request without a usable authority (no `Host` over HTTP/1.0, an empty
 *   or unparsable `Host` or `:authority`) is answered 400
 *   `invalid_argument` before it reaches Connect, which would throw turning
 *   it into a URL.
 * - Anything else the handler throws is logged and answered `internal`.
 * - Once a response is complete, a request body the handler did not read
 *   (refused, too large, too slow) is dropped within bounds or cut off
 *   (`afterAnswer`, early-answers.ts), never read to its end.
 */
export function guardRequests(handler: Handler, log: Logger): Handler {
  return (req, res) => {
    if (!hasUsableAuthority(req)) {
      answerEarly(req, res, new ConnectError("the request has no valid Host header or :authority", Code.InvalidArgument));
      return;
    }
    res.once("finish", () => afterAnswer(req, res));
    try {
      handler(req, res);
    } catch (error) {
      log.error({ err: error, method: printable(req.method), path: printable(req.url) }, "request handler failed");
      answerEarly(req, res, new ConnectError("internal error", Code.Internal));
    }
  };
}

/** Whether Connect can build the request's URL from its authority and path, as it does for every request. */
function hasUsableAuthority(req: Request): boolean {
  const authority = "authority" in req ? req.authority : req.headers.host;
  const scheme = "encrypted" in req.socket && req.socket.encrypted ? "https" : "http";
  return typeof authority === "string" && authority !== "" && URL.canParse(req.url ?? "", `${scheme}://${authority}`);
}

/** At most 100 characters of a value a client chose, for a log line. */
function printable(value: string | undefined): string | undefined {
  return value === undefined ? undefined : JSON.stringify(value.slice(0, 100)).slice(1, -1);
}
