import { Code, ConnectError, createContextKey } from "@connectrpc/connect";

/** The connection a call came on (an HTTP/2 session or a socket), set by the transport: streams are capped per connection too. */
export const connectionKey = createContextKey<object | undefined>(undefined, { description: "the call's connection" });

/** Streams one connection may hold open at once, so one client cannot take every slot. */
export const MAX_STREAMS_PER_CONNECTION = 10;

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
  private readonly perConnection = new WeakMap<object, number>();

  /** `max`: streams open at once; 0 refuses every stream. `maxPerConnection`: on one connection. */
  constructor(
    private readonly max: number,
    private readonly maxPerConnection = MAX_STREAMS_PER_CONNECTION,
  ) {}

  /** How many streams are open now. */
  get active(): number {
    return this.count;
  }

  /**
   * Takes a slot for a stream whose call is `signal`, or throws: returns a
   * signal that aborts when that call ends or the server shuts down.
   */
  open(signal: AbortSignal, connection?: object): AbortSignal {
    if (this.stopping.signal.aborted) throw new ConnectError("the server is shutting down", Code.Unavailable);
    if (this.count >= this.max) {
      throw new ConnectError(`too many open streams (at most ${this.max}); retry later`, Code.ResourceExhausted);
    }
    const onConnection = connection ? (this.perConnection.get(connection) ?? 0) : 0;
    if (connection && onConnection >= this.maxPerConnection) {
      throw new ConnectError(`too many open streams on this connection (at most ${this.maxPerConnection})`, Code.ResourceExhausted);
    }
    const ends = AbortSignal.any([signal, this.stopping.signal]);
    this.count++;
    if (connection) this.perConnection.set(connection, onConnection + 1);
    ends.addEventListener(
      "abort",
      () => {
        this.count--;
        if (connection) this.perConnection.set(connection, (this.perConnection.get(connection) ?? 1) - 1);
      },
      { once: true },
    );
    return ends;
  }

  /** Ends every open stream and refuses new ones: a step of graceful shutdown. */
  shutdown(): void {
    this.stopping.abort();
  }
}
