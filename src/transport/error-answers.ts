import type { DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  createAsyncIterable,
  encodeEnvelope,
  type UniversalHandler,
  type UniversalHandlerFn,
  type UniversalServerRequest,
  type UniversalServerResponse,
} from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { grpcPercentEncode, grpcTrailer } from "./early-answers.js";

/** The content types the RPC paths accept, for answers that must name them. */
const ACCEPTED_CONTENT_TYPES =
  "application/json or application/proto (Connect), application/grpc[+proto|+json] (gRPC), application/grpc-web[+proto|+json] (gRPC-Web)";

export interface ErrorAnswerOptions {
  /** The path clients called when it is not the RPC's own (`/ingest/message`), which accepts JSON only. */
  plainPath?: string;
}

/**
 * Makes a handler's error answers say what went wrong, in the protocol the client speaks. Connect answers some
 * requests before any interceptor runs, so this is done on its responses:
 *
 * - A body that is not valid protobuf binary (truncated, a string that is
 *   not UTF-8, nested past the decoder's limit) is `invalid_argument`:
 *   connect-es labels it `internal` ("parse binary: …"), as its decoder is
 *   shared with clients, for whom a bad response is the server's fault.
 * - A JSON body with an unknown field, or a field of the wrong JSON type,
 *   names the field as it was sent.
 * - A wrong or missing Content-Type (415) and a wrong HTTP method (405),
 *   which Connect answers with an empty body, get a Connect error body.
 * - gRPC's `grpc-message` is percent-encoded as the gRPC spec says
 *   (`grpcPercentEncode`, early-answers.ts), as on every early answer.
 */
export function withReadableErrors(handler: UniversalHandler, options: ErrorAnswerOptions = {}): UniversalHandlerFn {
  return async (request) => readable(request, await handler(request), handler, options);
}

async function readable(
  request: UniversalServerRequest,
  response: UniversalServerResponse,
  handler: UniversalHandler,
  options: ErrorAnswerOptions,
): Promise<UniversalServerResponse> {
  const contentType = response.header?.get("content-type") ?? "";
  const body = response.body;

  // Refused before any protocol was chosen: Connect sends no body at all.
  if (body === undefined && (response.status === 415 || response.status === 405)) {
    const path = options.plainPath ?? handler.requestPath;
    const sent = request.header.get("content-type");
    const accepted = options.plainPath ? "application/json" : ACCEPTED_CONTENT_TYPES;
    const message =
      response.status === 415
        ? `${sent ? `Content-Type "${sent}" is not accepted` : "Content-Type is missing"} on ${path}: send ${accepted}` +
          (options.plainPath ? " (curl: -H 'Content-Type: application/json')" : "")
        : `${request.method} is not accepted on ${path}: send ${handler.allowedMethods.join(" or ")} with Content-Type ${accepted}`;
    const header = new Headers(response.header);
    header.set("content-type", "application/json");
    if (response.status === 405) header.set("allow", handler.allowedMethods.join(", "));
    // The body is not read: an HTTP/1.1 connection ends here, and says so to the client.
    if (request.httpVersion.startsWith("1.")) header.set("connection", "close");
    return { ...response, header, body: createAsyncIterable([errorToJsonBytes(new ConnectError(message, Code.Unimplemented), {})]) };
  }
  if (body === undefined || !(Symbol.asyncIterator in body)) return response;
  const input = handler.method.input;

  // Connect protocol: a unary error is a JSON body with a matching HTTP status.
  if (response.status !== 200 && contentType.startsWith("application/json") && !response.header?.has("content-encoding")) {
    const chunks: Uint8Array[] = [];
    for await (const chunk of body) chunks.push(chunk);
    let bytes: Uint8Array = Buffer.concat(chunks);
    let status = response.status;
    const error = errorFromJsonBytes(bytes, undefined, new ConnectError("unreadable error body"));
    const better = clearer(error, input);
    if (better) {
      bytes = errorToJsonBytes(better, {});
      status = codeToHttpStatus(better.code);
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
        rewriteStatus(trailer, input);
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
            if (rewriteStatus(trailer, input)) {
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

/** Makes an error status in gRPC trailers clearer and readable by every client; true when it changed. */
function rewriteStatus(trailer: Headers, input: DescMessage): boolean {
  const error = findTrailerError(trailer);
  if (!error) return false;
  const better = clearer(error, input);
  if (better) {
    trailer.delete("grpc-status-details-bin");
    grpcTrailer(better).forEach((value, name) => trailer.set(name, value));
  } else {
    trailer.set("grpc-message", grpcPercentEncode(error.rawMessage));
  }
  return true;
}

/** The same error, said so that the client can fix its request; undefined when it already is. */
function clearer(error: ConnectError | undefined, input: DescMessage): ConnectError | undefined {
  if (!error) return undefined;
  const message = error.rawMessage;
  if (error.code === Code.Internal && message.startsWith("parse binary:")) return new ConnectError(message, Code.InvalidArgument);
  if (error.code !== Code.InvalidArgument) return undefined;

  // @bufbuild/protobuf's JSON decoding errors, which name the message type rather than the field.
  const unknown = /^cannot decode message (\S+) from JSON: key "(.*)" is unknown$/s.exec(message);
  if (unknown) {
    const fields = unknown[1] === input.typeName ? `; the fields are ${input.fields.map((field) => field.name).join(", ")}` : "";
    return new ConnectError(`unknown field "${unknown[2]}"${fields}`, Code.InvalidArgument);
  }
  const wrongType = /^cannot decode field \S+\.([^.\s]+) from JSON: (.*)$/s.exec(message);
  if (wrongType) return new ConnectError(`${wrongType[1]}: ${wrongType[2]}`, Code.InvalidArgument);
  // A field of message type (metadata is a google.protobuf.Struct) is named by its type only.
  const wrongMessage = /^cannot decode message (\S+) from JSON (.*)$/s.exec(message);
  const field = wrongMessage && input.fields.find((candidate) => candidate.message?.typeName === wrongMessage[1]);
  if (wrongMessage && field) {
    const expected = wrongMessage[1] === "google.protobuf.Struct" ? "a JSON object" : `JSON for ${wrongMessage[1]}`;
    return new ConnectError(`${field.name}: expected ${expected}, got ${wrongMessage[2]}`, Code.InvalidArgument);
  }
  return undefined;
}
