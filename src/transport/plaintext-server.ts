import http from "node:http";
import http2 from "node:http2";
import net from "node:net";

type Listener = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

export interface PlaintextServerOptions {
  /** How long a new connection may take to send the bytes that tell its protocol; then it is closed. */
  firstBytesTimeoutMs?: number;
  /** Options of the HTTP/1.1 server (node:http's `headersTimeout`, `requestTimeout`, ...). */
  http1?: http.ServerOptions;
  /** Options of the HTTP/2 server (`settings`, `maxSessionMemory`, ...). */
  http2?: http2.ServerOptions;
}

/** What every HTTP/2 client without TLS sends first ("prior knowledge", as gRPC clients do). */
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * A cleartext server speaking HTTP/1.1 and HTTP/2 (h2c with prior knowledge)
 * on one port, told apart by the connection's first bytes. It emits
 * `connection` for every socket and `session` for every HTTP/2 session.
 *
 * Each server gets the plain socket with the sniffed bytes pushed back, so
 * it reads them first, as if it had accepted the connection itself: no
 * stream wrapper under every HTTP/2 read and write. Why the port works this
 * way: docs/one-port-server.md.
 *
 * Slow or silent clients cannot hold sockets for ever: a connection must tell
 * its protocol within `firstBytesTimeoutMs` (default 60 s), and HTTP/1.1
 * requests are held to node:http's `headersTimeout` and `requestTimeout`.
 */
export function createPlaintextServer(listener: Listener, options: PlaintextServerOptions = {}): net.Server {
  const firstBytesTimeoutMs = options.firstBytesTimeoutMs ?? 60_000;
  const http1Server = http.createServer(options.http1 ?? {}, listener);
  const http2Server = http2.createServer(options.http2 ?? {}, listener);
  const server = net.createServer((socket) => {
    // Until a protocol server owns the socket, an error (a reset) or silence only ends it.
    const ignore = () => undefined;
    const giveUp = () => socket.destroy();
    socket.on("error", ignore);
    socket.setTimeout(firstBytesTimeoutMs);
    socket.on("timeout", giveUp);
    let head: Buffer = Buffer.alloc(0);
    // Paused-mode reads: once the protocol server adds its own listeners, the
    // socket flows again, starting with the bytes pushed back.
    const sniff = () => {
      const chunk = socket.read() as Buffer | null;
      if (chunk === null) return;
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const start = head.subarray(0, HTTP2_PREFACE.length);
      const couldBeHttp2 = start.equals(HTTP2_PREFACE.subarray(0, start.length));
      if (couldBeHttp2 && head.length < HTTP2_PREFACE.length) return;
      socket.off("readable", sniff);
      socket.off("error", ignore);
      socket.off("timeout", giveUp);
      socket.setTimeout(0);
      socket.unshift(head);
      (couldBeHttp2 ? http2Server : http1Server).emit("connection", socket);
    };
    socket.on("readable", sniff);
  });
  http2Server.on("session", (session) => server.emit("session", session));
  // node:http enforces headersTimeout and requestTimeout from when it starts
  // listening; the socket server listens in its place, so it passes that on.
  server.on("listening", () => http1Server.emit("listening"));
  server.on("close", () => http1Server.close());
  return server;
}
