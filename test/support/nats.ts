import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { locateProgram } from "./requirements.js";

// NATS_SERVER_BIN, else nats-server on the PATH, else Debian's /usr/sbin/nats-server (see requirements.ts).
const natsServer = () => locateProgram("nats-server") ?? process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server";

/** A JetStream nats-server of a test's own, on a free loopback port, with its own store folder. */
export interface TestNats {
  port: number;
  url: string;
  /** Stops the server as a crash would (SIGKILL); its store stays for `start()`. */
  kill(): Promise<void>;
  /** Starts it again on the same port and store. */
  start(): Promise<void>;
  /** Stops it and removes its store. */
  close(): Promise<void>;
}

/** Starts a nats-server with JetStream on a free port; resolves once it accepts connections. With `started: false`, only picks the port. */
export async function startNats(options: { started?: boolean } = {}): Promise<TestNats> {
  const storeDir = await mkdtemp(path.join(os.tmpdir(), "aurora-nats-"));
  const port = await freePort();
  let child: ChildProcess | undefined;
  let output = "";

  const start = async () => {
    output = "";
    child = spawn(natsServer(), ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (chunk) => (output += chunk));
    child.stderr!.on("data", (chunk) => (output += chunk));
    const deadline = Date.now() + 15_000;
    while (!/Server is ready/.test(output)) {
      if (child.exitCode !== null) throw new Error(`nats-server exited with ${child.exitCode}:\n${output}`);
      if (Date.now() > deadline) throw new Error(`nats-server did not start:\n${output}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  const kill = async () => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once("exit", resolve));
    running.kill("SIGKILL");
    await exited;
  };
  if (options.started ?? true) await start();
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    kill,
    start,
    async close() {
      await kill();
      await rm(storeDir, { recursive: true, force: true });
    },
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
