import type { IncomingMessage, ServerResponse } from "node:http";
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from "node:http2";
import type { AddressInfo, Server, Socket } from "node:net";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { createTokenCheck, rejectUnauthenticated } from "./auth.js";
import { defaultInputLimits, type Config, type InputLimits } from "./config.js";
import { errorInterceptor } from "./errors.js";
import { createHttpProbes, HTTP_PROBE_ROUTES } from "./health/http-probes.js";
import type { Logger } from "./observability/logger.js";
import type { Metrics } from "./observability/metrics.js";
import { createRequestObserver } from "./observability/request-observer.js";
import { createPlaintextServer } from "./plaintext-server.js";
import { REFLECTION_SERVICES } from "./reflection/reflection-service.js";
import { deadlineInterceptor } from "./request-deadline.js";
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
  /** Bearer tokens required on everything but health and readiness checks; none or empty: no authentication. */
  apiTokens?: string[];
  /** Serve TLS only (ALPN h2 and http/1.1), with client certificates required when `clientCa` is set. */
  tls?: Config["tls"];
  /** Longest a request may wait on the database before it is answered `Unavailable`. */
  requestTimeoutMs?: number;
}

/** A running server: where it listens and how to stop it. */
export interface IngestServer {
  listen(port: number, host: string): Promise<AddressInfo>;
  /**
   * Reports NOT_SERVING, stops accepting, lets requests in flight finish (up
   * to `graceMs`), then closes every connection. Resolves to how many
   * requests were cut off.
   */
  close(graceMs?: number): Promise<number>;
}

/**
 * Builds the HTTP server. One port speaks HTTP/1.1 and cleartext HTTP/2
 * (told apart by the connection's first bytes), or with `tls` only TLS
 * (told apart by ALPN), so gRPC, gRPC-Web, Connect and plain curl all reach
 * the same handlers. With tokens, requests are authenticated before their
 * body is read.
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
  if (options.requestTimeoutMs) interceptors.push(deadlineInterceptor(options.requestTimeoutMs));
  const authenticated = options.apiTokens?.length ? createTokenCheck(options.apiTokens) : () => true;
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
  let closing = false;
  const sockets = new Set<Socket>();
  const sessions = new Set<Http2Session>();
  // HTTP/1.1 connections, with how many of their requests are in flight.
  const http1 = new Map<Socket, number>();
  const track = <T extends Socket | Http2Session>(set: Set<T>) => (item: T) => {
    set.add(item);
    item.once("close", () => set.delete(item));
  };

  const listener = (req: Request, res: Response) => {
    observer.begin(req, res);
    inFlight++;
    const socket = req.httpVersionMajor === 1 ? req.socket : undefined;
    if (socket && !http1.has(socket)) socket.once("close", () => http1.delete(socket));
    if (socket) http1.set(socket, (http1.get(socket) ?? 0) + 1);
    res.once("close", () => {
      if (socket && http1.has(socket)) {
        const busy = http1.get(socket)! - 1;
        http1.set(socket, busy);
        // While closing, a keep-alive connection ends once its last answer is sent.
        if (closing && busy === 0) socket.end();
      }
      if (--inFlight === 0) drained?.();
    });
    if (!authenticated(req)) return rejectUnauthenticated(req, res);
    if (probes(req, res)) return;
    if (req.url?.split("?")[0] === PLAIN_INGEST_PATH) {
      req.url = INGEST_MESSAGE_PATH;
      plainJsonHandler(req, res);
    } else {
      connectHandler(req, res);
    }
  };
  const server: Server = options.tls
    ? createSecureServer(
        {
          allowHTTP1: true,
          ALPNProtocols: ["h2", "http/1.1"],
          cert: options.tls.cert,
          key: options.tls.key,
          ...(options.tls.clientCa && { ca: options.tls.clientCa, requestCert: true, rejectUnauthorized: true }),
        },
        listener,
      )
    : createPlaintextServer(listener);
  server.on("connection", track(sockets));
  // A response leaves in several small writes (HTTP/2 headers, data and
  // trailers); with Nagle on, the later ones wait for the client's delayed ACK.
  server.on("connection", (socket: Socket) => socket.setNoDelay(true));
  server.on("secureConnection", track(sockets));
  server.on("session", track(sessions));

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
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // No new requests on open connections: HTTP/2 clients get GOAWAY, idle
      // HTTP/1.1 connections end, busy ones end after their response.
      for (const session of sessions) session.close();
      for (const [socket, busy] of http1) {
        if (busy === 0) socket.end();
      }
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, graceMs).unref();
        });
      }
      const cutOff = inFlight;
      // Let the last answers reach their clients, then drop whatever is left
      // (connections that never sent a request, requests past the grace period).
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 500).unref())]);
      for (const socket of sockets) socket.destroy();
      await closed;
      return cutOff;
    },
  };
}
