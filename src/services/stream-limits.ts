import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The long-lived streams of one process (every kind of Watch): how many may
 * be open at once, and the switch that ends them all at shutdown.
 *
 * A server-streaming handler asks for a slot first and then streams until the
 * signal it got back aborts, which happens when the client goes away, when
 * the call ends, or when the server shuts down:
 *
 * ```ts
 * async *watch(request, context) {
 *   const signal = streams.open(context.signal); // ResourceExhausted when full, Unavailable once shutting down
 *   while (!signal.aborted) {
 *     yield await nextChange(signal);
 *   }
 * }
 * ```
 *
 * The slot is given back when `context.signal` aborts (Connect aborts it when
 * a call ends, however it ends) or at shutdown. One instance is shared by
 * every streaming service of a server, so the cap is per process.
 */
export class OpenStreams {
  private readonly stopping = new AbortController();
  private count = 0;

  /** `max`: streams open at once; 0 refuses every stream. */
  constructor(private readonly max: number) {}

  /** How many streams are open now. */
  get active(): number {
    return this.count;
  }

  /**
   * Takes a slot for a stream whose call is `signal`, or throws: returns a
   * signal that aborts when that call ends or the server shuts down.
   */
  open(signal: AbortSignal): AbortSignal {
    if (this.stopping.signal.aborted) throw new ConnectError("the server is shutting down", Code.Unavailable);
    if (this.count >= this.max) {
      throw new ConnectError(`too many open streams (at most ${this.max}); retry later`, Code.ResourceExhausted);
    }
    const ends = AbortSignal.any([signal, this.stopping.signal]);
    this.count++;
    ends.addEventListener("abort", () => this.count--, { once: true });
    return ends;
  }

  /** Ends every open stream and refuses new ones: a step of graceful shutdown. */
  shutdown(): void {
    this.stopping.abort();
  }
}
