import cluster, { type Worker } from "node:cluster";

/** Where the workers listen, once all of them do. */
export interface WorkersAddress {
  address: string;
  port: number;
}

/**
 * Forks `count` copies of this entry point that all serve the same port
 * (node:cluster hands each new connection to the next worker), and resolves
 * once every one of them listens. SIGTERM and SIGINT are passed on to the
 * workers, which finish their requests and close; the primary exits when
 * all have, with 1 if any of them failed to stop cleanly. A worker that dies
 * on its own takes the others down and the primary exits 1, so the
 * supervisor restarts the service whole.
 */
export function startWorkers(count: number, log: (message: string) => void): Promise<WorkersAddress> {
  const workers = new Set<Worker>();
  let stopping = false;
  let exitCode = 0;
  const stop = (code: number) => {
    exitCode = Math.max(exitCode, code);
    if (stopping) return;
    stopping = true;
    for (const worker of workers) worker.process.kill("SIGTERM");
    if (workers.size === 0) process.exit(exitCode);
  };
  process.on("SIGTERM", () => {
    log("SIGTERM received: stopping the workers");
    stop(0);
  });
  process.on("SIGINT", () => stop(0));

  return new Promise((resolve) => {
    let listening = 0;
    cluster.on("listening", (_worker, address) => {
      if (++listening === count) resolve({ address: address.address ?? "", port: address.port });
    });
    cluster.on("exit", (worker, code, signal) => {
      workers.delete(worker);
      const unexpected = !stopping;
      if (unexpected) log(`worker ${worker.process.pid} exited (${signal ?? `code ${code}`}): stopping the others`);
      stop(unexpected || code !== 0 ? 1 : 0);
      if (workers.size === 0) process.exit(exitCode);
    });
    for (let i = 0; i < count; i++) workers.add(cluster.fork());
  });
}
