import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../observability/logger.js";
import { answerEarly } from "./early-answers.js";
import type { PlainReply, PlainRoute } from "./route-table.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/**
 * Serves a plain route: checks the method (405 with `Allow`), reads the raw
 * body up to the route's `maxBodyBytes` (413 past it, 408 when it does not
 * arrive within `bodyTimeoutMs`), calls the route, and writes its reply.
 * Whatever the route throws is logged and answered 500 `internal`, its
 * cause never sent.
 */
export async function servePlainRoute(
  route: PlainRoute,
  params: Record<string, string>,
  req: Request,
  res: Response,
  context: { log: Logger; bodyTimeoutMs: number; holdsToken(): boolean },
): Promise<void> {
  const method = req.method ?? "";
  const [path, query = ""] = (req.url ?? "/").split("?", 2);
  if (!route.methods.includes(method)) {
    const error = new ConnectError(`${method.slice(0, 16)} is not accepted on ${route.path}: use ${route.methods.join(" or ")}`, Code.Unimplemented);
    return answerEarly(req, res, error, { status: 405, headers: { allow: route.methods.join(", ") } });
  }
  let body: Buffer;
  try {
    body = await readBody(req, route.maxBodyBytes ?? 0, context.bodyTimeoutMs);
  } catch (error) {
    return answerEarly(req, res, ConnectError.from(error));
  }
  let reply: PlainReply;
  try {
    const request = { method, path, params, query: new URLSearchParams(query), headers: req.headers, log: context.log, holdsToken: context.holdsToken };
    reply = await route.handle(request, body);
  } catch (error) {
    context.log.error({ err: error, route: route.path }, "plain route failed");
    return answerEarly(req, res, new ConnectError("internal error", Code.Internal));
  }
  if (res.headersSent || res.destroyed) return;
  (res as ServerResponse).writeHead(reply.status, { "cache-control": "no-store", ...reply.headers });
  (res as ServerResponse).end(reply.body);
}

/** The request body, whole; `ResourceExhausted` past `maxBytes`, `DeadlineExceeded` past `timeoutMs`. Empty when `maxBytes` is 0. */
function readBody(req: Request, maxBytes: number, timeoutMs: number): Promise<Buffer> {
  if (maxBytes === 0) return Promise.resolve(Buffer.alloc(0));
  const tooLarge = new ConnectError(`the request body is larger than ${maxBytes} bytes`, Code.ResourceExhausted);
  if (Number(req.headers["content-length"] ?? 0) > maxBytes) return Promise.reject(tooLarge);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = (error?: ConnectError) => {
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      if (!error) return resolve(Buffer.concat(chunks));
      // What is left is the early answer's to drain or cut off.
      req.pause();
      reject(error);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) settle(tooLarge);
      else chunks.push(chunk);
    };
    const onEnd = () => settle();
    const onError = () => settle(new ConnectError("the request body was cut off", Code.Canceled));
    const timer = setTimeout(() => settle(new ConnectError(`the request body was not received within ${timeoutMs} ms`, Code.DeadlineExceeded)), timeoutMs);
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onError);
  });
}
