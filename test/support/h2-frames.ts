import net from "node:net";

/**
 * Raw HTTP/2 frames, for tests that must behave as a hostile client does:
 * ignore the server's SETTINGS, open streams past its limit, never send a
 * body. Node's own client obeys the server and cannot do that.
 */
export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, GOAWAY: 7 } as const;

export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head.writeUInt8(type, 3);
  head.writeUInt8(flags, 4);
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/** HPACK integer with an `n`-bit prefix. */
function hpackInteger(value: number, n: number, first = 0): number[] {
  const max = (1 << n) - 1;
  if (value < max) return [first | value];
  const bytes = [first | max];
  value -= max;
  while (value >= 128) {
    bytes.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  bytes.push(value);
  return bytes;
}

/** A HEADERS frame (END_HEADERS; END_STREAM only when `endStream`), each header a literal without indexing. */
export function headersFrame(streamId: number, headers: Array<[string, string]>, endStream = false): Buffer {
  const block: number[] = [];
  for (const [name, value] of headers) {
    block.push(0, ...hpackInteger(name.length, 7), ...Buffer.from(name), ...hpackInteger(Buffer.byteLength(value), 7), ...Buffer.from(value));
  }
  return frame(FRAME.HEADERS, 0x4 | (endStream ? 0x1 : 0), streamId, Buffer.from(block));
}

export interface ReceivedFrame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

/** A raw HTTP/2 connection: frames it received, and whether the server closed it. */
export interface RawH2Connection {
  socket: net.Socket;
  frames: ReceivedFrame[];
  closed: Promise<void>;
  isClosed(): boolean;
}

/** Connects, sends the preface and an empty SETTINGS frame, and collects what the server sends. */
export function connectRawH2(port: number): Promise<RawH2Connection> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    const frames: ReceivedFrame[] = [];
    let pending = Buffer.alloc(0);
    let closed = false;
    socket.on("data", (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        frames.push({ type: pending[3], flags: pending[4], streamId: pending.readUInt32BE(5) & 0x7fffffff, payload: pending.subarray(9, 9 + length) });
        pending = pending.subarray(9 + length);
      }
    });
    socket.on("error", () => undefined);
    const closedPromise = new Promise<void>((done) => socket.once("close", () => ((closed = true), done())));
    socket.once("connect", () => {
      socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
      resolve({ socket, frames, closed: closedPromise, isClosed: () => closed });
    });
    socket.once("error", reject);
  });
}

/** The value of setting `id` (3 is MAX_CONCURRENT_STREAMS) in the server's first SETTINGS frame. */
export function serverSetting(frames: ReceivedFrame[], id: number): number | undefined {
  const settings = frames.find((f) => f.type === FRAME.SETTINGS && (f.flags & 0x1) === 0);
  if (!settings) return undefined;
  for (let offset = 0; offset + 6 <= settings.payload.length; offset += 6) {
    if (settings.payload.readUInt16BE(offset) === id) return settings.payload.readUInt32BE(offset + 2);
  }
  return undefined;
}
