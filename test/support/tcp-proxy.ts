import net from "node:net";

/** A loopback TCP proxy in front of a server (here: the database) that a test can cut off, silence and restore. */
export interface TcpProxy {
  /** The proxy's own port on 127.0.0.1. */
  port: number;
  /** Bytes clients have sent through the proxy so far. */
  bytesFromClients(): number;
  /** Drops every open connection and refuses new ones, as if the server went away. */
  cut(): void;
  /** Keeps connections open but silent, and accepts new ones that never answer, as a partitioned network does. */
  blackhole(): void;
  /** Passes connections through again; connections caught in a black hole are reset (their streams are corrupt). */
  restore(): void;
  close(): Promise<void>;
}

/** Starts a proxy on an ephemeral loopback port that forwards each connection to `target`. */
export async function startTcpProxy(target: { host: string; port: number } | { path: string }): Promise<TcpProxy> {
  let mode: "forward" | "refuse" | "blackhole" = "forward";
  let bytes = 0;
  type Pair = { client: net.Socket; upstream?: net.Socket; stuck: boolean };
  const pairs = new Set<Pair>();

  const server = net.createServer((client) => {
    if (mode === "refuse") return client.resetAndDestroy();
    const pair: Pair = { client, stuck: mode === "blackhole" };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      pair.upstream?.destroy();
    };
    client.on("error", drop).on("close", drop);
    client.on("data", (chunk) => {
      if (pair.stuck) return;
      bytes += chunk.length;
      pair.upstream?.write(chunk);
    });
    if (pair.stuck) return;
    client.pause();
    const upstream = net.connect({ ...target }, () => client.resume());
    pair.upstream = upstream;
    upstream.on("error", drop).on("close", drop);
    upstream.on("data", (chunk) => {
      if (!pair.stuck) client.write(chunk);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });

  return {
    port: (server.address() as net.AddressInfo).port,
    bytesFromClients: () => bytes,
    cut() {
      mode = "refuse";
      for (const pair of pairs) pair.client.resetAndDestroy();
    },
    blackhole() {
      mode = "blackhole";
      for (const pair of pairs) pair.stuck = true;
    },
    restore() {
      mode = "forward";
      for (const pair of pairs) if (pair.stuck) pair.client.resetAndDestroy();
    },
    async close() {
      for (const pair of pairs) pair.client.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
