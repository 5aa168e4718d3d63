import { EventEmitter } from "node:events";
import { createRequire } from "node:module";
import { pino, type DestinationStream, type Logger } from "pino";

export type { Logger };

export interface LoggerOptions {
  /** A pino level name, or `silent`. */
  level: string;
  /** `json` lines, `pretty` for people, or `auto`: pretty when stdout is a terminal. */
  format?: "auto" | "json" | "pretty";
  /** Where lines go instead of stdout (tests pass an in-memory stream). */
  destination?: DestinationStream;
}

/** Keys that hold personal data wherever they appear in a log object. */
const PERSONAL_KEYS = ["content", "metadata", "senderId", "sender_id"];

/**
 * Creates the service's logger: one JSON object per line, or coloured
 * readable lines when a person watches a terminal. Created by the entry point
 * and handed to whatever logs.
 *
 * Personal data (LGPD): message `content`, `metadata` and full sender ids are
 * never passed to the logger above debug. As a second line of defence those
 * keys are redacted wherever they appear at the top level or one level down,
 * and errors are reduced to type, message, code and stack, because database
 * errors carry the failed statement's parameters.
 */
export function createLogger(options: LoggerOptions): Logger {
  const format = options.format ?? "auto";
  const human = format === "pretty" || (format === "auto" && !options.destination && process.stdout.isTTY === true);
  const destination = options.destination ?? (human ? prettyStream() : undefined);
  return pino(
    {
      level: options.level,
      base: { service: "aurora-crm-ingest" },
      timestamp: pino.stdTimeFunctions.isoTime,
      serializers: { err: serializeError },
      redact: {
        paths: PERSONAL_KEYS.flatMap((key) => [key, `*.${key}`]),
        censor: "[redacted]",
      },
    },
    destination ?? stdoutDestination(),
  );
}

/**
 * Standard output, written asynchronously: a line is queued and the process
 * goes on, and lines queued while a write is under way leave together in the
 * next one. A synchronous write per line cost the route about 6% of its CPU
 * and stalled every request whenever the reader of stdout fell behind.
 * Nothing is lost on a graceful stop: `endLog` writes out what is queued
 * before the process exits (and pino writes it synchronously at `exit` in
 * any case). A reader stalled for long enough to queue `MAX_QUEUED_BYTES`
 * loses the lines after that, counted on stderr, rather than the process's memory.
 */
function stdoutDestination(): DestinationStream {
  const stream = pino.destination({ dest: 1, sync: false, maxLength: MAX_QUEUED_BYTES });
  let dropped = 0;
  stream.on("drop", () => {
    if (dropped++ === 0) process.stderr.write(`log lines dropped: more than ${MAX_QUEUED_BYTES} bytes waiting for stdout\n`);
  });
  return stream;
}

const MAX_QUEUED_BYTES = 16 * 1024 * 1024;

/**
 * Writes out every line the logger still holds and resolves once they are
 * written (or after `waitMs`): the last thing before the process exits. The
 * logger must not be used afterwards.
 */
export function endLog(log: Logger, waitMs = 5_000): Promise<void> {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  if (!(stream instanceof EventEmitter) || !("end" in stream) || typeof stream.end !== "function") return Promise.resolve();
  const end = stream.end.bind(stream) as () => void;
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, waitMs);
    stream.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    end();
  });
}

/**
 * Coloured single lines from pino-pretty, a development dependency: where it
 * is not installed (a production install), JSON lines and a notice saying so.
 */
function prettyStream(): DestinationStream | undefined {
  let pretty: typeof import("pino-pretty");
  try {
    pretty = createRequire(import.meta.url)("pino-pretty");
  } catch {
    process.stderr.write("pretty logs need the pino-pretty package, which is not installed: logging JSON lines\n");
    return undefined;
  }
  return pretty({ colorize: true, singleLine: true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname,service" });
}

/**
 * Masks a sender id for logs: seven asterisks and its last four characters
 * (`*******9999`), enough to tell senders apart when tracing, not enough to
 * identify anyone. Ids shorter than eight characters are masked whole.
 */
export function maskSenderId(senderId: string): string {
  const id = senderId.trim();
  return id.length < 8 ? "********" : `*******${id.slice(-4)}`;
}

interface SerializedError {
  type: string;
  message: string;
  code?: string;
  stack?: string;
  cause?: SerializedError;
}

/**
 * Keeps what an operator needs from an error (type, message, SQLSTATE or
 * system code, stack, cause) and drops the rest: Sequelize and pg errors carry
 * the statement's bound parameters (message content, sender ids) and `detail`
 * lines that quote stored values.
 */
export function serializeError(error: unknown, depth = 0): SerializedError {
  if (!(error instanceof Error)) return { type: typeof error, message: String(error) };
  const code = (error as { code?: string | number }).code ?? (error as { original?: { code?: string | number } }).original?.code;
  const cause = (error as { cause?: unknown }).cause ?? (error as { original?: unknown }).original;
  return {
    type: error.constructor?.name ?? error.name,
    message: error.message,
    ...(code !== undefined && { code: String(code) }),
    stack: error.stack,
    ...(cause !== undefined && cause !== error && depth < 3 && { cause: serializeError(cause, depth + 1) }),
  };
}
