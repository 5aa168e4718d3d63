/** How the batcher groups messages: see docs/group-commit.md. */
export interface BatcherOptions {
  /** Most messages written together in one batch. */
  maxBatch: number;
  /** Most batches being written at once; further messages wait for one to finish and go in the next. */
  maxInFlight: number;
  /** Called with each batch's size as it is sent (for the batch-size histogram). */
  onBatch?: (size: number) => void;
}

/** Writes a batch and answers each of its items, in order: a result, or the error that item alone gets. */
export type BatchWriter<Item, Result> = (items: Item[]) => Promise<Array<Result | Error>>;

interface Entry<Item, Result> {
  item: Item;
  signal: AbortSignal | undefined;
  resolve(result: Result): void;
  reject(error: unknown): void;
}

/**
 * Group commit. Items submitted while `maxInFlight` batches are being
 * written wait in a queue; when a batch finishes, everything queued (up to
 * `maxBatch`) goes out as the next one. An idle batcher sends an item within
 * the same turn of the event loop (after the I/O callbacks of that turn, so
 * requests read together leave together), never after a timer. So batches
 * grow with load by themselves, and a lone request pays no wait.
 *
 * An item whose signal aborted (cancelled, past its deadline) before its
 * batch left is dropped from it with the signal's reason. A batch that fails
 * as a whole fails every item in it; nothing is answered before `write`
 * resolved, that is, before the batch committed.
 */
export class IngestBatcher<Item, Result> {
  private queue: Array<Entry<Item, Result>> = [];
  private inFlight = 0;
  private scheduled = false;

  constructor(
    private readonly write: BatchWriter<Item, Result>,
    private readonly options: BatcherOptions,
  ) {}

  /** Queues an item for the next batch; resolves once that batch committed. */
  submit(item: Item, signal?: AbortSignal): Promise<Result> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<Result>((resolve, reject) => {
      this.queue.push({ item, signal, resolve, reject });
      if (this.scheduled || this.inFlight >= this.options.maxInFlight) return;
      this.scheduled = true;
      setImmediate(this.flush);
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch: Array<Entry<Item, Result>> = [];
      while (batch.length < this.options.maxBatch && this.queue.length > 0) {
        const entry = this.queue.shift()!;
        if (entry.signal?.aborted) entry.reject(abortReason(entry.signal));
        else batch.push(entry);
      }
      if (batch.length > 0) this.send(batch);
    }
  };

  private send(batch: Array<Entry<Item, Result>>): void {
    this.inFlight++;
    this.options.onBatch?.(batch.length);
    this.write(batch.map((entry) => entry.item)).then(
      (results) => {
        batch.forEach((entry, i) => {
          const result = results[i];
          if (result instanceof Error) entry.reject(result);
          else entry.resolve(result);
        });
      },
      (error: unknown) => {
        for (const entry of batch) entry.reject(error);
      },
    ).finally(() => {
      this.inFlight--;
      this.flush();
    });
  }
}

/** Why a signal aborted, as an Error (what its aborter gave, when that was one). */
function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new Error(`request aborted: ${String(reason)}`);
}
