import type { IncomingMessage, ServerResponse } from "node:http";
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import type { AddressInfo, Server, Socket } from "node:net";
import type { Config } from "../config.js";
import { trackConnections } from "./connections.js";
import { createPlaintextServer } from "./plaintext-server.js";
import { createRequestHandler, type RequestHandlerOptions } from "./request-handler.js";

export interface ServerOptions extends RequestHandlerOptions {
  /** Serve TLS only (ALPN h2 and http/1.1), with client certificates required when `clientCa` is set. */
  tls?: Config["tls"];
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
 * Builds the server. One port speaks HTTP/1.1 and cleartext HTTP/2 (told
 * apart by the connection's first bytes), or with `tls` only TLS (told apart
 * by ALPN), so gRPC, gRPC-Web, Connect and plain curl all reach the same
 * handler.
 */
export function buildServer(options: ServerOptions): IngestServer {
  const handler = createRequestHandler(options);
  const listener = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    connections.request(req, res);
    handler(req, res);
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
  const connections = trackConnections(server);
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
      // Health reports NOT_SERVING first, which also ends open Watch streams.
      options.health.shutdown();
      return connections.drain(graceMs);
    },
  };
}
