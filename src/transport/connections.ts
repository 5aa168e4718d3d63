import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse, Http2Session } from "node:http2";
import type { Server, Socket } from "node:net";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** The open connections and requests of a server, so that it can drain them at shutdown. */
export interface ConnectionTracker {
  /** Call for every request as it arrives. */
  request(req: Request, res: Response): void;
  /**
   * Stops accepting, lets requests in flight finish (up to `graceMs`), then
   * closes every connection. Resolves to how many requests were cut off.
   */
  drain(graceMs: number): Promise<number>;
}

/** Tracks the sockets, HTTP/2 sessions and requests in flight of `server`. */
export function trackConnections(server: Server): ConnectionTracker {
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
  server.on("connection", track(sockets));
  server.on("secureConnection", track(sockets));
  server.on("session", track(sessions));

  return {
    request(req, res) {
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
    },

    async drain(graceMs) {
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

/**
 * Closes (GOAWAY) every HTTP/2 session of `server` that has had no open
 * stream for `idleMs`, including one that never opened any: a client cannot
 * hold a connection by sending only the preface. A client that comes back
 * opens a new connection, as gRPC clients do on their own. (HTTP/1.1
 * keep-alive connections have node:http's own idle timeout.)
 */
export function closeIdleSessions(server: Server, idleMs: number): void {
  server.on("session", (session: Http2Session) => {
    let open = 0;
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      timer = setTimeout(() => session.close(), idleMs);
      timer.unref();
    };
    session.on("stream", (stream) => {
      clearTimeout(timer);
      open++;
      stream.once("close", () => {
        if (--open === 0 && !session.closed) arm();
      });
    });
    session.once("close", () => clearTimeout(timer));
    arm();
  });
}
