import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;
type Handler = (req: Request, res: Response) => void;

/**
 * Wraps the plain JSON route's handler so that a body over `maxBytes` is
 * answered `413 Payload Too Large`, with a Connect error body whose code is
 * `resource_exhausted`.
 *
 * Connect enforces the limit itself (`readMaxBytes`: a declared length over
 * it is refused before a byte is read, an undeclared one as soon as the count
 * passes it), but its protocol maps `resource_exhausted` to HTTP 429, which
 * tells a plain HTTP client to slow down rather than to send less. Here:
 * - a declared Content-Length over the limit is answered 413 at once, and
 *   over HTTP/1.1 the connection is closed rather than read to the end;
 * - a body without a declared length is counted as Connect reads it, and
 *   only if it passed the limit does Connect's 429 become 413. Any other 429
 *   (a rate limit, say) is left as it is.
 * The RPC paths keep Connect's and gRPC's own mapping.
 */
export function answerTooLargeWith413(maxBytes: number, handler: Handler): Handler {
  return (req, res) => {
    const declared = Number(req.headers["content-length"]);
    if (declared > maxBytes) {
      const body = JSON.stringify({ code: "resource_exhausted", message: `request body of ${declared} bytes is larger than the limit of ${maxBytes} bytes` });
      const headers: Record<string, string | number> = { "content-type": "application/json", "content-length": Buffer.byteLength(body) };
      // HTTP/2 forbids the header; its stream ends with the response.
      if (req.httpVersionMajor === 1) headers.connection = "close";
      res.writeHead(413, headers);
      res.end(body);
      return;
    }
    if (req.headers["content-length"] === undefined) {
      let read = 0;
      const chunks = req[Symbol.asyncIterator].bind(req);
      req[Symbol.asyncIterator] = async function* () {
        for await (const chunk of chunks()) {
          read += (chunk as Buffer).byteLength;
          yield chunk;
        }
      } as unknown as typeof req[typeof Symbol.asyncIterator];
      const writeHead = res.writeHead.bind(res) as (status: number, ...rest: unknown[]) => Response;
      (res as { writeHead: unknown }).writeHead = (status: number, ...rest: unknown[]) =>
        writeHead(status === 429 && read > maxBytes ? 413 : status, ...rest);
    }
    handler(req, res);
  };
}
