import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createServer } from "@httptoolkit/httpolyglot";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { errorInterceptor, type ErrorLogger } from "./errors.js";
import { routes, type ServiceDependencies } from "./routes.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** The plain JSON route the earlier version's clients call. */
export const PLAIN_INGEST_PATH = "/ingest/message";
const INGEST_MESSAGE_PATH = `/${IngestService.typeName}/${IngestService.method.ingestMessage.name}`;

export interface ServerOptions extends ServiceDependencies {
  log: ErrorLogger;
}

/** A running server: where it listens and how to stop it. */
export interface IngestServer {
  listen(port: number, host: string): Promise<AddressInfo>;
  /** Stops accepting, lets requests in flight finish (up to `graceMs`), then closes every connection. */
  close(graceMs?: number): Promise<void>;
}

/**
 * Builds the HTTP server. One port speaks HTTP/1.1 and cleartext HTTP/2
 * (told apart by the connection's first bytes), so gRPC, gRPC-Web, Connect
 * and plain curl all reach the same handlers.
 */
export function buildServer(options: ServerOptions): IngestServer {
  const interceptors = [errorInterceptor(options.log)];
  const connectHandler = connectNodeAdapter({ routes: routes(options), interceptors });
  // `POST /ingest/message` is the IngestMessage RPC over the Connect protocol,
  // answered in snake_case with every field present, as the earlier version did.
  const plainJsonHandler = connectNodeAdapter({
    routes: routes(options),
    interceptors,
    jsonOptions: { useProtoFieldName: true, alwaysEmitImplicit: true },
  });

  let inFlight = 0;
  let drained: (() => void) | undefined;
  const sockets = new Set<Socket>();

  const server = createServer((req: Request, res: Response) => {
    inFlight++;
    res.once("close", () => {
      if (--inFlight === 0) drained?.();
    });
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
