import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { createAsyncIterable, encodeEnvelope, type UniversalHandler, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";

/**
 * Registers the routes, then makes every handler answer a request body that
 * is not valid protobuf binary (truncated, a string that is not UTF-8,
 * nested past the decoder's limit) with `invalid_argument`.
 *
 * connect-es 2.1 labels that failure `internal` ("parse binary: …"), because
 * it shares the decoder with its clients, for whom a bad response is the
 * server's fault; on a server the bad bytes are the client's. The decoding
 * happens before any interceptor runs, so the answer is relabelled in each
 * protocol's own form: the Connect error body and HTTP status, gRPC's
 * trailers, gRPC-Web's trailer frame. Only that error is touched. (JSON
 * bodies already fail as `invalid_argument`.)
 */
export function withUndecodableAsInvalidArgument(routes: (router: ConnectRouter) => void) {
  return (router: ConnectRouter) => {
    routes(router);
    // The Node adapter reads the handlers after this returns.
    router.handlers.forEach((handler, index) => {
      router.handlers[index] = Object.assign(async (request: Parameters<UniversalHandler>[0]) => relabel(await handler(request)), handler);
    });
  };
}

const PARSE_FAILURE = "parse binary:";

function isParseFailure(error: ConnectError | undefined): error is ConnectError {
  return error !== undefined && error.code === Code.Internal && error.rawMessage.startsWith(PARSE_FAILURE);
}

const asInvalidArgument = (error: ConnectError) => new ConnectError(error.rawMessage, Code.InvalidArgument);

async function relabel(response: UniversalServerResponse): Promise<UniversalServerResponse> {
  const contentType = response.header?.get("content-type") ?? "";
  const body = response.body;
  if (body === undefined || !(Symbol.asyncIterator in body)) return response;

  // Connect protocol: a unary error is a JSON body with a matching HTTP status.
  if (response.status !== 200 && contentType.startsWith("application/json") && !response.header?.has("content-encoding")) {
    const chunks: Uint8Array[] = [];
    for await (const chunk of body) chunks.push(chunk);
    let bytes: Uint8Array = Buffer.concat(chunks);
    let status = response.status;
    const error = errorFromJsonBytes(bytes, undefined, new ConnectError("unreadable error body"));
    if (isParseFailure(error)) {
      bytes = errorToJsonBytes(asInvalidArgument(error), {});
      status = codeToHttpStatus(Code.InvalidArgument);
      response.header?.set("content-length", String(bytes.byteLength));
    }
    return { ...response, status, body: createAsyncIterable([bytes]) };
  }

  // gRPC: the status travels in trailers, filled in once the body is done.
  if (contentType.startsWith("application/grpc") && !contentType.startsWith("application/grpc-web") && response.trailer) {
    const trailer = response.trailer;
    return {
      ...response,
      body: (async function* () {
        yield* body;
        const error = findTrailerError(trailer);
        if (isParseFailure(error)) setTrailerStatus(trailer, asInvalidArgument(error));
      })(),
    };
  }

  // gRPC-Web: the status travels in the body's last frame, flagged as trailers.
  if (contentType.startsWith("application/grpc-web")) {
    return {
      ...response,
      body: (async function* () {
        for await (const chunk of body) {
          if (chunk[0] === trailerFlag) {
            const trailer = trailerParse(chunk.subarray(5));
            const error = findTrailerError(trailer);
            if (isParseFailure(error)) {
              setTrailerStatus(trailer, asInvalidArgument(error));
              yield encodeEnvelope(trailerFlag, trailerSerialize(trailer));
              continue;
            }
          }
          yield chunk;
        }
      })(),
    };
  }
  return response;
}
