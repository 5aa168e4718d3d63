import type { IncomingMessage, ServerResponse } from "node:http";
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse, type ServerOptions as Http2Options } from "node:http2";
import type { AddressInfo, Server, Socket } from "node:net";
import { defaultServerLimits, type Config, type ServerLimits } from "../config.js";
import type { DatabaseHealth } from "../db/database-health.js";
import type { FeedHub } from "../feed/feed-hub.js";
import type { OpenStreams } from "../services/stream-limits.js";
import { closeIdleSessions, trackConnections } from "./connections.js";
import { guardRequests } from "./guard.js";
import { createPlaintextServer } from "./plaintext-server.js";
import { createRequestHandler, type RequestHandlerOptions } from "./request-handler.js";

export interface ServerOptions extends Omit<RequestHandlerOptions, "bodyTimeoutMs"> {
  /** Reports NOT_SERVING first when the server closes. */
  health: DatabaseHealth;
  /** The open watches' cap (`MAX_OPEN_WATCHES`), the routes' too: ended when the server closes. */
  streams: OpenStreams;
  /** The feed's watch streams: ended when the server closes. */
  feedHub: FeedHub;
  /** Serve TLS only (ALPN h2 and http/1.1), with client certificates required when `clientCa` is set. */
  tls?: Config["tls"];
  /** Connections, HTTP/2 streams, body deadline and open watches; the defaults when omitted. */
  serverLimits?: Partial<ServerLimits>;
}

/** A running server: where it listens and how to stop it. */
export interface IngestServer {
  listen(port: number, host: string): Promise<AddressInfo>;
  /**
   * Reports NOT_SERVING, ends open watches, stops accepting, lets requests
   * in flight finish (up to `graceMs`), then closes every connection.
   * Resolves to how many requests were cut off.
   */
  close(graceMs?: number): Promise<number>;
}

/**
 * Builds the server. One port speaks HTTP/1.1 and cleartext HTTP/2 (told
 * apart by the connection's first bytes), or with `tls` only TLS (told apart
 * by ALPN), so gRPC, gRPC-Web, Connect and plain curl all reach the same
 * handler.
 *
 * What one client can hold is bounded the same way in cleartext and TLS
 * (limits and defaults in docs/hardening.md): open connections, streams per
 * HTTP/2 connection and its memory, HTTP/2 connections left idle, the time
 * to send a body, and open watches.
 */
export function buildServer(options: ServerOptions): IngestServer {
  const limits = { ...defaultServerLimits, ...options.serverLimits };
  const { streams } = options;
  const handler = guardRequests(createRequestHandler({ ...options, bodyTimeoutMs: limits.requestBodyTimeoutMs }), options.log);
  const listener = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    connections.request(req, res);
    handler(req, res);
  };
  const http2: Http2Options = {
    // Advertised to clients; nghttp2 refuses streams past it (REFUSED_STREAM),
    // and a peer that keeps opening them after 100 refusals loses its session.
    settings: { maxConcurrentStreams: limits.http2MaxConcurrentStreams },
    maxSessionMemory: limits.http2MaxSessionMemoryMb,
    maxSessionRejectedStreams: 100,
  };
  const server: Server = options.tls
    ? createSecureServer(
        {
          ...http2,
          allowHTTP1: true,
          ALPNProtocols: ["h2", "http/1.1"],
          cert: options.tls.cert,
          key: options.tls.key,
          ...(options.tls.clientCa && { ca: options.tls.clientCa, requestCert: true, rejectUnauthorized: true }),
        },
        listener,
      )
    : createPlaintextServer(listener, { http2 });
  // Connections past the cap are closed as soon as they are accepted.
  server.maxConnections = limits.maxConnections;
  const connections = trackConnections(server);
  closeIdleSessions(server, limits.http2IdleTimeoutMs);
  // A response leaves in several small writes (HTTP/2 headers, data and
  // trailers); with Nagle on, the later ones wait for the client's delayed ACK.
  server.on("connection", (socket: Socket) => socket.setNoDelay(true));

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
      // Health reports NOT_SERVING first; open watches say so and end.
      options.health.shutdown();
      streams.shutdown();
      // Feed watch streams end now (Unavailable), so their clients resume elsewhere.
      options.feedHub.close();
      return connections.drain(graceMs);
    },
  };
}
