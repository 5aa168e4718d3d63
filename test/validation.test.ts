import http2 from "node:http2";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JsonObject } from "@bufbuild/protobuf";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { defaultInputLimits, loadConfig, type InputLimits } from "../src/config.js";
import { databaseKind } from "./support/database.js";
import { countEvents as countEventsIn, rows } from "./support/rows.js";
import { startTestServer, useTestServer, type TestServer } from "./support/server.js";
import { postJson, postMessage } from "./support/ingest.js";

const fixture = useTestServer();
let client: Client<typeof IngestService>;

beforeAll(() => {
  client = createClient(IngestService, createConnectTransport({ baseUrl: fixture.server.baseUrl, httpVersion: "1.1" }));
});

const countEvents = () => countEventsIn(fixture.database);

/** The request's fields in the plain route's snake_case. */
const snake = (request: Record<string, unknown>) =>
  Object.fromEntries(Object.entries(request).map(([key, value]) => [key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), value]));

/** The violations a typed client sees, as [field, rule id] pairs. */
function violationsOf(error: unknown): Array<[string, string]> {
  expect(error).toBeInstanceOf(ConnectError);
  const connectError = error as ConnectError;
  expect(connectError.code).toBe(Code.InvalidArgument);
  const [details] = connectError.findDetails(ViolationsSchema);
  return (details?.violations ?? []).map((v) => [v.field?.elements.map((e) => e.fieldName).join(".") ?? "", v.ruleId]);
}

const valid = { source: "web", senderId: "visitor", content: "hello", metadata: {} };
const nested = (depth: number): JsonObject => (depth <= 1 ? { leaf: true } : { level: nested(depth - 1) });

describe(`input rules (${databaseKind})`, () => {
  it.each([
    ["a missing source", { source: "" }, "source", "required"],
    ["a source with capitals", { source: "WhatsApp" }, "source", "string.pattern"],
    ["a source with a space", { source: "web chat" }, "source", "string.pattern"],
    ["a source of 33 characters", { source: "a".repeat(33) }, "source", "string.pattern"],
    ["a missing sender_id", { senderId: "" }, "sender_id", "required"],
    ["a blank sender_id", { senderId: " \t\u00a0" }, "sender_id", "string.not_blank"],
    ["a missing content", { content: "" }, "content", "required"],
    ["a blank content", { content: "\n  \u2003" }, "content", "string.not_blank"],
    ["an empty external_id", { externalId: "" }, "external_id", "string.not_blank"],
    ["a blank external_id", { externalId: "   " }, "external_id", "string.not_blank"],
    ["a sender_id of 321 characters", { senderId: "s".repeat(321) }, "sender_id", "string.max_len"],
    ["an external_id of 321 characters", { externalId: "k".repeat(321) }, "external_id", "string.max_len"],
    ["a content of 256 KiB and one byte", { content: "é".repeat(128 * 1024) + "!" }, "content", "string.max_bytes"],
    ["metadata 11 levels deep", { metadata: nested(11) }, "metadata", "metadata.max_depth"],
    ["metadata over 64 KiB as JSON", { metadata: { blob: "x".repeat(64 * 1024) } }, "metadata", "metadata.max_bytes"],
    ["a NUL in content", { content: "a\u0000b" }, "content", "string.no_nul"],
    ["a NUL in sender_id", { senderId: "a\u0000" }, "sender_id", "string.no_nul"],
    ["a NUL in external_id", { externalId: "\u0000" }, "external_id", "string.no_nul"],
    ["a NUL in a metadata string", { metadata: { deep: { list: ["ok", "a\u0000"] } } }, "metadata", "string.no_nul"],
    ["a NUL in a metadata key", { metadata: { "k\u0000": 1 } }, "metadata", "string.no_nul"],
  ])("refuses %s as invalid_argument naming the field and rule, and stores nothing", async (_name, change, field, rule) => {
    const request = { ...valid, ...change };
    const before = await countEvents();

    const error = await client.ingestMessage(request).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(violationsOf(error)).toEqual([[field, rule]]);

    const plain = await postMessage(fixture.server.baseUrl, snake(request));
    expect(plain.status).toBe(400);
    expect(plain.body.code).toBe("invalid_argument");
    expect(plain.body.message).toContain(field);
    expect(plain.body.message).toContain(`[${rule}]`);
    expect(plain.body.details[0].debug.violations[0]).toMatchObject({ field: { elements: [{ field_name: field }] }, rule_id: rule });

    expect(await countEvents()).toBe(before);
  });

  it.each([
    ["a sender_id of 320 characters, counted as code points", { senderId: "😀".repeat(320) }],
    ["a content of exactly 256 KiB", { content: "é".repeat(128 * 1024) }],
    ["metadata 10 levels deep", { metadata: nested(10) }],
    ["an external_id of 320 characters", { externalId: "k".repeat(320) }],
    ["text with inner spaces and paired surrogates", { senderId: " a b ", content: " 😀 ", metadata: { "😀": "😀" } }],
  ])("accepts %s", async (_name, change) => {
    const response = await client.ingestMessage({ ...valid, ...change });
    const [event] = await rows(fixture.database, "SELECT sender_id, content, metadata FROM crm_ingest_events WHERE id = $1", [response.eventId]);
    const expected = { ...valid, ...change };
    expect(event).toEqual({ sender_id: expected.senderId, content: expected.content, metadata: expected.metadata });
  });

  // Typed clients cannot send these: their encoders replace a lone surrogate
  // with U+FFFD. Raw JSON can, as the escape "\ud800".
  it.each([
    ["content", `{"source":"web","sender_id":"x","content":"a\\ud800b"}`, undefined],
    ["sender_id", `{"source":"web","sender_id":"\\udc00","content":"x"}`, undefined],
    ["external_id", `{"source":"web","sender_id":"x","content":"x","external_id":"k\\ud800"}`, undefined],
    ["metadata", `{"source":"web","sender_id":"x","content":"x","metadata":{"k":["\\ud800"]}}`, "string.well_formed"],
    ["metadata", `{"source":"web","sender_id":"x","content":"x","metadata":{"\\udc00x":1}}`, "string.well_formed"],
  ])("refuses a lone surrogate in %s as 400 naming the field, on both paths", async (field, body, rule) => {
    const before = await countEvents();
    for (const route of ["/ingest/message", "/aurora.crm.v1.IngestService/IngestMessage"]) {
      const response = await postJson(fixture.server.baseUrl, route, body);
      expect(response.status).toBe(400);
      expect(response.body.code).toBe("invalid_argument");
      expect(response.body.message).toContain(field);
      // The parser refuses top-level fields itself; metadata is checked by our rule.
      if (rule) expect(response.body.message).toContain(`[${rule}]`);
    }
    expect(await countEvents()).toBe(before);
  });

  it("refuses JSON that is not UTF-8 instead of storing replacement characters", async () => {
    const before = await countEvents();
    const body = Buffer.concat([Buffer.from('{"source":"web","sender_id":"x","content":"caf'), Buffer.from([0xe9]), Buffer.from('"}')]);
    const response = await fetch(`${fixture.server.baseUrl}/ingest/message`, { method: "POST", headers: { "content-type": "application/json" }, body });

    expect(response.status).toBe(400);
    expect((await response.json()).code).toBe("invalid_argument");
    expect(await countEvents()).toBe(before);
  });

  it("refuses metadata that is not a JSON object, or nests past what the parser takes", async () => {
    const before = await countEvents();
    for (const metadata of ["[]", '"text"', "42", `${'{"a":'.repeat(50_000)}1${"}".repeat(50_000)}`, `{"a":${"[".repeat(200_000)}${"]".repeat(200_000)}}`]) {
      const response = await postMessage(fixture.server.baseUrl, `{"source":"web","sender_id":"x","content":"y","metadata":${metadata}}`);
      expect(response.status).toBe(400);
      expect(response.body.code).toBe("invalid_argument");
    }
    expect(await countEvents()).toBe(before);
    expect(fixture.server.loggedErrors).toEqual([]);
  });

  it("refuses NaN and infinite metadata numbers, which only the binary encoding carries", async () => {
    const grpc = createClient(IngestService, createGrpcTransport({ baseUrl: fixture.server.baseUrl }));
    const before = await countEvents();
    for (const value of [NaN, Infinity]) {
      const error = await grpc.ingestMessage({ ...valid, metadata: { value } }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(violationsOf(error)).toEqual([["metadata", "metadata.json"]]);
    }
    expect(await countEvents()).toBe(before);
  });

  it("refuses a body over the limit (400 KiB): 413 on the plain route, resource_exhausted over RPC, before parsing it", async () => {
    const before = await countEvents();
    const content = "x".repeat(defaultInputLimits.requestMaxBytes);

    const plain = await postMessage(fixture.server.baseUrl, { source: "web", sender_id: "x", content });
    expect(plain.status).toBe(413);
    expect(plain.body.code).toBe("resource_exhausted");

    const chunked = await fetch(`${fixture.server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new Blob([JSON.stringify({ source: "web", sender_id: "x", content })]).stream(),
      duplex: "half",
    } as RequestInit);
    // Sent without a Content-Length, so Connect's own count refused it.
    expect(chunked.status).toBe(413);
    const chunkedError = await chunked.json();
    expect(chunkedError.code).toBe("resource_exhausted");
    expect(chunkedError.message).not.toContain("request body of");

    const error = await client.ingestMessage({ ...valid, content }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(error?.code).toBe(Code.ResourceExhausted);

    expect(await countEvents()).toBe(before);
    const after = await postMessage(fixture.server.baseUrl, { source: "web", sender_id: "x", content: "still serving" });
    expect(after.status).toBe(200);
  });
});

describe(`bytes that are not protobuf (${databaseKind})`, () => {
  const path = "/aurora.crm.v1.IngestService/IngestMessage";
  const varint = (n: number) => {
    const bytes: number[] = [];
    for (; n > 127; n >>>= 7) bytes.push((n & 127) | 128);
    return [...bytes, n];
  };
  const field = (tag: number, payload: number[]) => [tag, ...varint(payload.length), ...payload];
  const ascii = (text: string) => [...Buffer.from(text)];
  // Struct { fields { key: "a" value { struct_value: … } } }, 150 levels: past the decoder's limit of 100.
  let deep: number[] = [];
  for (let i = 0; i < 150; i++) deep = field(0x0a, [...field(0x0a, ascii("a")), ...field(0x12, field(0x2a, deep))]);
  const head = [...field(0x0a, ascii("web")), ...field(0x12, ascii("x"))];
  const bodies: Array<[string, Uint8Array]> = [
    ["a string that is not UTF-8", new Uint8Array([...head, ...field(0x1a, [0x63, 0x61, 0x66, 0xe9])])],
    ["a truncated message", new Uint8Array([...head, 0x1a, 0x10, 0x61])],
    ["metadata nested 150 levels", new Uint8Array([...head, ...field(0x1a, ascii("y")), ...field(0x22, deep)])],
  ];
  /** One uncompressed gRPC message frame. */
  const envelope = (message: Uint8Array) => {
    const bytes = Buffer.alloc(5 + message.byteLength);
    bytes.writeUInt32BE(message.byteLength, 1);
    bytes.set(message, 5);
    return bytes;
  };

  it.each(bodies)("answers %s over Connect with 400 invalid_argument", async (_name, body) => {
    const before = await countEvents();
    const response = await fetch(fixture.server.baseUrl + path, { method: "POST", headers: { "content-type": "application/proto" }, body: Buffer.from(body) });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ code: "invalid_argument", message: expect.stringContaining("parse binary") });
    expect(await countEvents()).toBe(before);
  });

  it.each(bodies)("answers %s over gRPC-Web with status 3 (INVALID_ARGUMENT)", async (_name, body) => {
    const response = await fetch(fixture.server.baseUrl + path, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
      body: envelope(body),
    });
    const bytes = Buffer.from(await response.arrayBuffer());
    expect(bytes[0]).toBe(0x80);
    expect(bytes.subarray(5).toString()).toMatch(/grpc-status: 3\r\n/);
  });

  it.each(bodies)("answers %s over gRPC with status 3 (INVALID_ARGUMENT)", async (_name, body) => {
    const session = http2.connect(fixture.server.baseUrl);
    try {
      const trailers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
        const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
        stream.on("trailers", resolve);
        stream.on("error", reject);
        stream.resume();
        stream.end(envelope(body));
      });
      expect(trailers["grpc-status"]).toBe("3");
    } finally {
      session.close();
    }
  });
});

describe(`configured limits (${databaseKind})`, () => {
  const limits: InputLimits = {
    requestMaxBytes: 2048,
    senderIdMaxChars: 8,
    externalIdMaxChars: 6,
    contentMaxBytes: 16,
    metadataMaxBytes: 32,
    metadataMaxDepth: 2,
  };
  let small: TestServer;
  let smallClient: Client<typeof IngestService>;

  beforeAll(async () => {
    small = await startTestServer(fixture.database, { limits });
    smallClient = createClient(IngestService, createConnectTransport({ baseUrl: small.baseUrl, httpVersion: "1.1" }));
  });
  afterAll(async () => small?.server.close());

  it.each([
    ["sender_id", { senderId: "123456789" }, { senderId: "12345678" }, "string.max_len"],
    ["external_id", { externalId: "1234567" }, { externalId: "123456" }, "string.max_len"],
    ["content", { content: "é".repeat(8) + "!" }, { content: "é".repeat(8) }, "string.max_bytes"],
    ["metadata", { metadata: { a: { b: {} } } }, { metadata: { a: { b: 1 } } }, "metadata.max_depth"],
    // {"text":"…"} is 11 bytes of JSON around the text.
    ["metadata", { metadata: { text: "x".repeat(22) } }, { metadata: { text: "x".repeat(21) } }, "metadata.max_bytes"],
  ])("holds %s to the configured limit", async (field, over, within, rule) => {
    const before = await countEvents();
    const error = await smallClient.ingestMessage({ ...valid, ...over }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(violationsOf(error)).toEqual([[field, rule]]);
    expect((error as ConnectError).rawMessage).toMatch(/at most (8|6|16|32|2) /);
    expect(await countEvents()).toBe(before);

    await smallClient.ingestMessage({ ...valid, ...within });
    expect(await countEvents()).toBe(before + 1);
  });

  it("holds the request body to the configured limit", async () => {
    const response = await postMessage(small.baseUrl, { source: "web", sender_id: "x", content: "y", metadata: { pad: "p".repeat(2048) } });
    expect(response.status).toBe(413);
    expect(response.body.message).toContain("2048");
  });
});

// How the configuration reads the limits, and each rule, are checked in test/unit/interceptors.test.ts.
describe("limits in the configuration", () => {
  it("serves with the limits the configuration reads from the environment", async () => {
    const server = await startTestServer(fixture.database, { limits: loadConfig({ MAX_CONTENT_BYTES: "4" }).limits });
    try {
      const tooLong = await postMessage(server.baseUrl, { source: "web", sender_id: "x", content: "12345" });
      expect(tooLong.status).toBe(400);
      expect(tooLong.body.message).toContain("content: must be at most 4 bytes");
      const fits = await postMessage(server.baseUrl, { source: "web", sender_id: "x", content: "1234" });
      expect(fits.status).toBe(200);
    } finally {
      await server.server.close();
    }
  });
});
