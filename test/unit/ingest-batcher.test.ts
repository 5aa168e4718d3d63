import { describe, expect, it } from "vitest";
import { IngestBatcher, type BatcherOptions } from "../../src/ingest/ingest-batcher.js";

/**
 * A writer that holds each batch until the test releases it, and records
 * what it was given. The batcher is generic over its write function; its
 * writes to the database are tested in test/ingest-batch.test.ts.
 */
function fakeWriter() {
  const batches: string[][] = [];
  const pending: Array<(results: Array<string | Error>) => void> = [];
  const failures: Array<(error: Error) => void> = [];
  const write = (items: string[]) =>
    new Promise<Array<string | Error>>((resolve, reject) => {
      batches.push(items);
      pending.push(resolve);
      failures.push(reject);
    });
  return {
    write,
    batches,
    /** Commits the oldest unanswered batch with one result per item (an Error fails that item alone). */
    commit(answer: (item: string) => string | Error = (item) => `stored ${item}`) {
      const index = batches.length - pending.length;
      failures.shift();
      pending.shift()!(batches[index].map(answer));
    },
    /** Fails the oldest unanswered batch as a whole. */
    fail(error: Error) {
      pending.shift();
      failures.shift()!(error);
    },
  };
}

const options = (change: Partial<BatcherOptions> = {}): BatcherOptions => ({ maxBatch: 4, maxInFlight: 1, ...change });
/** Lets the batcher's setImmediate flush, and the promise callbacks after it, run. */
const turn = () => new Promise((resolve) => setImmediate(resolve));

describe("IngestBatcher", () => {
  it("sends a lone item at once, alone, within the same turn of the event loop", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options());
    const result = batcher.submit("a");
    await turn();
    expect(writer.batches).toEqual([["a"]]);
    writer.commit();
    await expect(result).resolves.toBe("stored a");
  });

  it("collects items submitted while a batch is in flight into the next batches, up to maxBatch each, in order", async () => {
    const writer = fakeWriter();
    const sizes: number[] = [];
    const batcher = new IngestBatcher(writer.write, options({ onBatch: (size) => sizes.push(size) }));
    const first = batcher.submit("0");
    await turn();
    const rest = Array.from({ length: 9 }, (_, i) => batcher.submit(String(i + 1)));
    await turn();
    expect(writer.batches).toEqual([["0"]]); // one batch in flight at most

    writer.commit();
    await turn();
    expect(writer.batches.at(-1)).toEqual(["1", "2", "3", "4"]);
    writer.commit();
    await turn();
    expect(writer.batches.at(-1)).toEqual(["5", "6", "7", "8"]);
    writer.commit();
    await turn();
    expect(writer.batches.at(-1)).toEqual(["9"]);
    writer.commit();

    expect(await Promise.all([first, ...rest])).toEqual(Array.from({ length: 10 }, (_, i) => `stored ${i}`));
    expect(sizes).toEqual([1, 4, 4, 1]);
  });

  it("writes up to maxInFlight batches at once", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options({ maxBatch: 2, maxInFlight: 2 }));
    const results = ["a", "b", "c", "d", "e"].map((item) => batcher.submit(item));
    await turn();
    expect(writer.batches).toEqual([["a", "b"], ["c", "d"]]);
    writer.commit();
    await turn();
    expect(writer.batches).toEqual([["a", "b"], ["c", "d"], ["e"]]);
    writer.commit();
    writer.commit();
    expect(await Promise.all(results)).toEqual(["stored a", "stored b", "stored c", "stored d", "stored e"]);
  });

  it("fails only the item whose result is an error, not its batch-mates", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options());
    const results = ["ok-1", "bad", "ok-2"].map((item) => batcher.submit(item));
    await turn();
    const refused = new Error("refused");
    writer.commit((item) => (item === "bad" ? refused : `stored ${item}`));
    await expect(results[0]).resolves.toBe("stored ok-1");
    await expect(results[1]).rejects.toBe(refused);
    await expect(results[2]).resolves.toBe("stored ok-2");
  });

  it("fails every item of a batch whose write fails, answers none before, and goes on with the next", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options());
    const settled: string[] = [];
    const results = ["a", "b"].map((item) => batcher.submit(item).then(
      () => settled.push(`${item} ok`),
      () => settled.push(`${item} failed`),
    ));
    await turn();
    await turn();
    expect(settled).toEqual([]); // nothing answered before the write settled
    writer.fail(new Error("connection lost"));
    await Promise.all(results);
    expect(settled).toEqual(["a failed", "b failed"]);

    const next = batcher.submit("c");
    await turn();
    writer.commit();
    await expect(next).resolves.toBe("stored c");
  });

  it("drops an item whose signal aborted before its batch left, with the signal's reason", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options());
    const cancelled = new AbortController();
    const reason = new Error("client went away");
    const kept = batcher.submit("kept");
    const dropped = batcher.submit("dropped", cancelled.signal);
    cancelled.abort(reason);
    await expect(dropped).rejects.toBe(reason);
    await turn();
    expect(writer.batches).toEqual([["kept"]]);
    writer.commit();
    await expect(kept).resolves.toBe("stored kept");
  });

  it("refuses an item whose signal already aborted without queueing it, and wraps a reason that is not an Error", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options());
    await expect(batcher.submit("late", AbortSignal.abort(new Error("deadline")))).rejects.toThrow("deadline");
    await expect(batcher.submit("late", AbortSignal.abort("gone"))).rejects.toThrow("request aborted: gone");
    await turn();
    expect(writer.batches).toEqual([]);
  });

  it("keeps an item whose signal aborts after its batch left: the write may commit it", async () => {
    const writer = fakeWriter();
    const batcher = new IngestBatcher(writer.write, options());
    const cancelled = new AbortController();
    const result = batcher.submit("sent", cancelled.signal);
    await turn();
    cancelled.abort(new Error("too late"));
    writer.commit();
    await expect(result).resolves.toBe("stored sent");
  });
});
