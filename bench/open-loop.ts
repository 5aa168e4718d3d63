import { performance } from "node:perf_hooks";

/**
 * An open loop: the i-th call is due at `start + i / rate` (ms, rate per
 * second) and is made then, whatever earlier calls are doing, or at once
 * when the generator is late (letting answers in every 16 calls). Each call
 * gets its due time, so a stall counts against every call it delays, without
 * coordinated omission. Stops when `more(due)` is false, and resolves once
 * every call made has settled.
 */
export async function openLoop(rate: number, start: number, more: (due: number) => boolean, call: (due: number) => Promise<void>): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; ; i++) {
    const due = start + (i * 1000) / rate;
    if (!more(due)) break;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    else if (i % 16 === 0) await new Promise(setImmediate);
    const request = call(due).finally(() => inFlight.delete(request));
    inFlight.add(request);
  }
  await Promise.all(inFlight);
}
