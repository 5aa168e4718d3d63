import type { Sequelize } from "sequelize-typescript";
import { FeedClosedError, FeedWatchLimitError } from "./errors.js";
import type { Logger } from "../observability/logger.js";
import type { FeedNotifier } from "./feed-notifier.js";
import { comparePositions, earlierPosition, laterPosition, type FeedFilters, type FeedPosition } from "./position.js";
import { currentFeedPosition, readFeed, type FeedEvent } from "./read-feed.js";

export interface FeedHubOptions {
  sequelize: Sequelize;
  log: Logger;
  /** How often the feed is read while anyone watches, for commits by other processes. */
  pollIntervalMs?: number;
  /** How long a watch stays silent before it sends a checkpoint. */
  checkpointIntervalMs?: number;
  /** Most watches open at once in this process; more are refused. */
  maxWatches?: number;
  /** Most recent events kept in memory for watchers that fell a little behind. */
  bufferEvents?: number;
  /** Byte budget of every feed read this process serves (a List page, a poll, a watch catching up; see readFeed's `maxBytes`). */
  readMaxBytes?: number;
  /** Most events one filtered read examines (readFeed's `maxScan`): a List page, a filtered watch catching up. */
  readMaxScan?: number;
  /** Most bytes of events (readFeed's weights) kept in that buffer. */
  bufferMaxBytes?: number;
}

/** One item of a watch: an event and the position after it, or a checkpoint (no event) at the current position. */
export interface FeedItem {
  event?: FeedEvent;
  position: FeedPosition;
}

/** Where a watch starts: after a position, or after the last event deliverable now. */
export type WatchStart = FeedPosition | "now";

// Events read per statement, by the shared poll and by a watch catching up.
const PAGE = 500;
// Wake-ups by local commits are merged into at most one read per this many ms.
const MIN_POLL_GAP_MS = 5;

/**
 * The feed as one process serves it to its watchers. While anyone watches,
 * one shared poll reads the feed after the last event it saw (one statement
 * per poll, whatever the number of watchers), at `pollIntervalMs` and at
 * once when this process commits an event (`committed()`, the FeedNotifier).
 * What it reads is kept in a bounded buffer that every watcher reads from.
 *
 * A watcher behind the buffer (resuming from an old token, or too slow to
 * keep up) reads the feed on its own, page by page, until it reaches the
 * buffer, and then shares the poll. Either way it delivers exactly the
 * events after its position, in order: both paths read the same feed (see
 * readFeed), and a watcher only ever moves forward from its own position.
 */
export class FeedHub implements FeedNotifier {
  private readonly sequelize: Sequelize;
  private readonly log: Logger;
  readonly pollIntervalMs: number;
  readonly checkpointIntervalMs: number;
  readonly maxWatches: number;
  readonly readMaxBytes: number;
  readonly readMaxScan: number;
  private readonly bufferEvents: number;
  private readonly bufferMaxBytes: number;

  private watches = 0;
  private closed = false;
  /** Set while polling: the position after the last event read, and the events in (bufferStart, tail]. */
  private tail: FeedPosition | undefined;
  private bufferStart: FeedPosition | undefined;
  private buffer: FeedEvent[] = [];
  private bufferBytes = 0;
  private starting: Promise<void> | undefined;
  private generation = 0;
  private pollTimer: NodeJS.Timeout | undefined;
  private pollDue = 0;
  private polling = false;
  private pollAgain = false;
  private lastPollStarted = 0;
  private readonly waiters = new Set<() => void>();

  constructor(options: FeedHubOptions) {
    this.sequelize = options.sequelize;
    this.log = options.log;
    this.pollIntervalMs = options.pollIntervalMs ?? 50;
    this.checkpointIntervalMs = options.checkpointIntervalMs ?? 15_000;
    this.maxWatches = options.maxWatches ?? 1_000;
    this.bufferEvents = options.bufferEvents ?? 10_000;
    this.readMaxBytes = options.readMaxBytes ?? 512 * 1024;
    this.readMaxScan = options.readMaxScan ?? 10_000;
    this.bufferMaxBytes = options.bufferMaxBytes ?? 32 * 1024 * 1024;
  }

  /** Watches open in this process. */
  get openWatches(): number {
    return this.watches;
  }

  /** A local commit: read the feed now rather than at the next poll. */
  committed(): void {
    if (this.tail === undefined || this.closed) return;
    const wait = this.lastPollStarted + MIN_POLL_GAP_MS - Date.now();
    if (wait <= 0) void this.poll();
    else this.schedulePoll(wait);
  }

  /**
   * Every event after `start` that matches `filters`, in commit order, each
   * with its position, and a checkpoint after every `checkpointIntervalMs`
   * without one (a "now" watch begins with one, at its start); until `signal` aborts (the iterator then just ends) or the
   * hub closes (FeedClosedError). Refuses with FeedWatchLimitError beyond
   * `maxWatches`.
   */
  async *watch(start: WatchStart, filters: FeedFilters, signal: AbortSignal): AsyncGenerator<FeedItem> {
    if (this.closed) throw new FeedClosedError();
    if (this.watches >= this.maxWatches) throw new FeedWatchLimitError(this.maxWatches);
    // The slot is given back when the signal aborts, not only in `finally`:
    // a stream cancelled while its consumer waits at `yield` may never be
    // resumed, and its `finally` would then never run.
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      signal.removeEventListener("abort", release);
      if (--this.watches === 0) this.stop();
    };
    this.watches++;
    signal.addEventListener("abort", release, { once: true });
    try {
      await this.start();
      let position = start === "now" ? this.tail! : start;
      let lastSent = Date.now();
      // "Now" is fixed here: a first checkpoint tells the client from where,
      // so it knows every event committed from then on will arrive.
      if (start === "now") yield { position };
      while (!signal.aborted) {
        if (this.closed) throw new FeedClosedError();
        if (Date.now() - lastSent >= this.checkpointIntervalMs) {
          yield { position };
          lastSent = Date.now();
          continue;
        }
        const fromBuffer = this.eventsAfter(position);
        let items: FeedItem[];
        if (fromBuffer) {
          if (fromBuffer.length === 0) {
            await this.changed(signal, lastSent + this.checkpointIntervalMs - Date.now());
            continue;
          }
          items = fromBuffer.map((event) => ({ event, position: event.position }));
        } else {
          // Behind the buffer: read on our own, within the read budget. A
          // read that stopped at neither its limit nor its budget saw every
          // event before its horizon, so it has seen everything up to the
          // poll's tail as it was before the read, or up to its horizon when
          // that is lower: a horizon can dip below an earlier read's when
          // another database's transaction ends during the read (docs/feed.md).
          const tailBefore = this.tail!;
          const page = await readFeed(this.sequelize, { after: position, limit: PAGE, maxBytes: this.readMaxBytes, maxScan: this.readMaxScan, filters });
          items = page.events.map((event) => ({ event, position: event.position }));
          // (A filtered read that reached its scan bound ends after its last match.)
          items.push({ position: page.more ? page.position : laterPosition(page.position, earlierPosition(tailBefore, page.horizon)) });
        }
        for (const item of items) {
          position = laterPosition(position, item.position);
          if (item.event && matches(item.event, filters)) {
            yield item;
            lastSent = Date.now();
            if (signal.aborted) return;
          }
        }
      }
    } finally {
      release();
    }
  }

  /** Ends every watch (FeedClosedError) and stops polling, at shutdown. */
  close(): void {
    this.closed = true;
    this.stop();
    for (const wake of this.waiters) wake();
  }

  /** The buffered events after `position`, or undefined when the buffer does not reach back that far. */
  private eventsAfter(position: FeedPosition): FeedEvent[] | undefined {
    if (this.bufferStart === undefined || comparePositions(position, this.bufferStart) < 0) return undefined;
    // Binary search for the first event after `position`.
    let low = 0;
    let high = this.buffer.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (comparePositions(this.buffer[middle].position, position) <= 0) low = middle + 1;
      else high = middle;
    }
    return this.buffer.slice(low);
  }

  /** Resolves when the poll read something new, the hub closes, `signal` aborts, or after `timeoutMs`. */
  private changed(signal: AbortSignal, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, timeoutMs));
      this.waiters.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  /** Starts the shared poll at the current end of the feed, once, for the first watcher. */
  private start(): Promise<void> {
    if (this.tail !== undefined) return Promise.resolve();
    this.starting ??= (async () => {
      const generation = this.generation;
      try {
        const position = await currentFeedPosition(this.sequelize);
        if (generation !== this.generation || this.closed) return;
        this.tail = this.bufferStart = position;
        this.buffer = [];
        this.bufferBytes = 0;
        this.schedulePoll(this.pollIntervalMs);
      } finally {
        this.starting = undefined;
      }
    })();
    return this.starting.then(() => {
      if (this.closed) throw new FeedClosedError();
      if (this.tail === undefined) return this.start();
    });
  }

  /** Stops polling and forgets the buffer, when the last watcher leaves. */
  private stop(): void {
    this.generation++;
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    this.tail = this.bufferStart = undefined;
    this.buffer = [];
    this.bufferBytes = 0;
  }

  private schedulePoll(delayMs: number): void {
    const due = Date.now() + delayMs;
    if (this.pollTimer) {
      if (this.pollDue <= due) return;
      clearTimeout(this.pollTimer);
    }
    this.pollDue = due;
    this.pollTimer = setTimeout(() => {
      this.pollTimer = undefined;
      void this.poll();
    }, delayMs);
  }

  private async poll(): Promise<void> {
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    const generation = this.generation;
    this.polling = true;
    try {
      do {
        this.pollAgain = false;
        this.lastPollStarted = Date.now();
        if (this.tail === undefined) return;
        const page = await readFeed(this.sequelize, { after: this.tail, limit: PAGE, maxBytes: this.readMaxBytes });
        if (generation !== this.generation) return;
        if (page.events.length > 0) this.append(page.events, page.position);
        if (page.more) this.pollAgain = true;
      } while (this.pollAgain);
    } catch (error) {
      // The database is unreachable or slow: watchers wait (and send
      // checkpoints), and the next poll tries again.
      this.log.warn({ err: error }, "feed poll failed");
    } finally {
      this.polling = false;
      // (A new generation may have started meanwhile and asked for a poll.)
      if (!this.closed && this.tail !== undefined) this.schedulePoll(this.pollAgain ? 0 : this.pollIntervalMs);
    }
  }

  private append(events: FeedEvent[], tail: FeedPosition): void {
    if (events.some((event) => event.kind === "ERASURE")) return this.forgetErased(tail);
    this.buffer.push(...events);
    for (const event of events) this.bufferBytes += event.bytes ?? 0;
    this.tail = tail;
    // Bounded by count and by bytes (events can be 0.3 MiB each), trimmed
    // in steps of half the buffer, not on every append.
    if (this.buffer.length > this.bufferEvents * 1.5 || this.bufferBytes > this.bufferMaxBytes * 1.5) {
      let drop = 0;
      while (drop < this.buffer.length && (this.buffer.length - drop > this.bufferEvents || this.bufferBytes > this.bufferMaxBytes)) {
        this.bufferBytes -= this.buffer[drop++].bytes ?? 0;
      }
      this.bufferStart = this.buffer[drop - 1].position;
      this.buffer = this.buffer.slice(drop);
    }
    for (const wake of [...this.waiters]) wake();
  }

  /**
   * An erasure changed events this hub may hold (docs/privacy.md): the buffer
   * restarts empty after the page that brought the ERASURE event, so every
   * watcher behind it reads those events again from the database, erased,
   * and the messages converted per event object go with the old objects.
   * Every replica's poll reads the same ERASURE event, so each forgets its
   * copies, with no other channel between replicas.
   */
  private forgetErased(tail: FeedPosition): void {
    this.buffer = [];
    this.bufferBytes = 0;
    this.tail = this.bufferStart = tail;
    for (const wake of [...this.waiters]) wake();
  }
}

/** Whether an event passes a watch's filters. */
export function matches(event: FeedEvent, filters: FeedFilters): boolean {
  return (
    (filters.source === undefined || event.source === filters.source) &&
    (filters.contactId === undefined || event.contactId === filters.contactId) &&
    (filters.status === undefined || event.status === filters.status)
  );
}
