import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createServer } from "@httptoolkit/httpolyglot";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { defaultInputLimits, type InputLimits } from "./config.js";
import { errorInterceptor } from "./errors.js";
import { createHttpProbes, HTTP_PROBE_ROUTES } from "./health/http-probes.js";
import type { Logger } from "./observability/logger.js";
import type { Metrics } from "./observability/metrics.js";
import { createRequestObserver } from "./observability/request-observer.js";
import { REFLECTION_SERVICES } from "./reflection/reflection-service.js";
import { answerTooLargeWith413 } from "./request-size.js";
import { routes, SERVICES, type ServiceDependencies } from "./routes.js";
import { withUndecodableAsInvalidArgument } from "./undecodable-requests.js";
import { validationInterceptors } from "./validation.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** The plain JSON route the earlier version's clients call. */
export const PLAIN_INGEST_PATH = "/ingest/message";
const INGEST_MESSAGE_PATH = `/${IngestService.typeName}/${IngestService.method.ingestMessage.name}`;

export interface ServerOptions extends ServiceDependencies {
  log: Logger;
  metrics: Metrics;
  /** Request size limits; the defaults when omitted. */
  limits?: InputLimits;
}

/** A running server: where it listens and how to stop it. */
export interface IngestServer {
  listen(port: number, host: string): Promise<AddressInfo>;
  /** Reports NOT_SERVING, stops accepting, lets requests in flight finish (up to `graceMs`), then closes every connection. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Builds the HTTP server. One port speaks HTTP/1.1 and cleartext HTTP/2
 * (told apart by the connection's first bytes), so gRPC, gRPC-Web, Connect
 * and plain curl all reach the same handlers.
 */
export function buildServer(options: ServerOptions): IngestServer {
  // One log line and the metrics for every request; probes and scrapes log at debug.
  const observer = createRequestObserver({
    logger: options.log,
    metrics: options.metrics,
    services: [...SERVICES, ...REFLECTION_SERVICES],
    httpRoutes: HTTP_PROBE_ROUTES,
    quiet: [...HTTP_PROBE_ROUTES, ...Health.methods.map((method) => `/${Health.typeName}/${method.name}`)],
  });
  const probes = createHttpProbes(options.health, options.metrics);
  const limits = options.limits ?? defaultInputLimits;
  const interceptors = [observer.interceptor, errorInterceptor(options.log), ...validationInterceptors(limits)];
  const contextValues = observer.contextValues;
  // readMaxBytes refuses a larger body before it is parsed (resource_exhausted).
  const readMaxBytes = limits.requestMaxBytes;
  // JSON bodies must be UTF-8: a fatal decoder refuses other bytes
  // (invalid_argument) where the default one would store U+FFFD instead.
  // (textDecoder reaches Connect's JSON serialization, though its option type omits it.)
  const strictJson = { ignoreUnknownFields: true, textDecoder: new TextDecoder("utf-8", { fatal: true }) };
  const connectHandler = connectNodeAdapter({
    routes: withUndecodableAsInvalidArgument(routes(options)),
    interceptors,
    contextValues,
    readMaxBytes,
    jsonOptions: strictJson,
  });
  // `POST /ingest/message` is the IngestMessage RPC over the Connect protocol,
  // answered in snake_case with every field present, as the earlier version did.
  const plainJsonHandler = answerTooLargeWith413(
    readMaxBytes,
    connectNodeAdapter({
      routes: withUndecodableAsInvalidArgument(routes(options)),
      interceptors,
      contextValues,
      readMaxBytes,
      jsonOptions: { ...strictJson, useProtoFieldName: true, alwaysEmitImplicit: true },
    }),
  );

  let inFlight = 0;
  let drained: (() => void) | undefined;
  const sockets = new Set<Socket>();

  const server = createServer((req: Request, res: Response) => {
    observer.begin(req, res);
    inFlight++;
    res.once("close", () => {
      if (--inFlight === 0) drained?.();
    });
    if (probes(req, res)) return;
    if (req.url?.split("?")[0] === PLAIN_INGEST_PATH) {
      req.url = INGEST_MESSAGE_PATH;
      plainJsonHandler(req, res);
    } else {
      connectHandler(req, res);
    }
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });

  return {
    listen(port, host) {
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    async close(graceMs = 30_000) {
      // Health reports NOT_SERVING first, which also ends open Watch streams.
      options.health.shutdown();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, graceMs).unref();
        });
      }
      // Keep-alive and HTTP/2 connections would hold close() open forever.
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}
