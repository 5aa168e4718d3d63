import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError, createClient, createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import type { JsonObject } from "@bufbuild/protobuf";
import { ConnectionError, DatabaseError } from "sequelize";
import { describe, expect, it } from "vitest";
import { IngestEventService, WatchIngestEventsRequest_Start } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService, type IngestMessageRequest } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import { defaultInputLimits, loadConfig, type InputLimits } from "../../src/config.js";
import { FeedClosedError, FeedWatchLimitError, IngestEventNotFoundError, InvalidFeedTokenError } from "../../src/feed/errors.js";
import { DuplicateConflictError } from "../../src/ingest/errors.js";
import { DatabaseTimeoutError, errorInterceptor, toConnectError } from "../../src/interceptors/errors.js";
import { deadlineInterceptor } from "../../src/interceptors/request-deadline.js";
import { validationInterceptors } from "../../src/interceptors/validation.js";
import { createLogger } from "../../src/observability/logger.js";
import { configProblems } from "../support/config.js";

// The interceptors on an in-memory Connect router, in the server's order
// (errors, validation, deadline), in front of handlers written here: no
// database, no server, no socket. test/validation.test.ts and
// test/bad-input.test.ts check the same rules through the real server.

/** A logger that keeps its lines in memory. */
function memoryLog() {
  const lines: Array<Record<string, any>> = [];
  const log = createLogger({ level: "trace", destination: { write: (line: string) => void lines.push(JSON.parse(line)) } });
  return { log, lines };
}

type Handler = ServiceImpl<typeof IngestService>["ingestMessage"];

/** A client of an in-memory IngestService whose handler is `handler`, and the requests that reached it. */
function inMemory(handler: Handler = () => ({ eventId: "e", status: "persisted" }), options: { limits?: InputLimits; timeoutMs?: number } = {}) {
  const { log, lines } = memoryLog();
  const reached: IngestMessageRequest[] = [];
  const transport = createRouterTransport(
    (router) => {
      router.service(IngestService, {
        ingestMessage(request, context) {
          reached.push(request);
          return handler(request, context);
        },
      });
      router.service(IngestEventService, {
        async *watchIngestEvents() {
          yield { resumeToken: "first" };
          throw new FeedClosedError();
        },
      });
    },
    {
      router: {
        interceptors: [
          errorInterceptor(log),
          ...validationInterceptors(options.limits ?? defaultInputLimits),
          ...(options.timeoutMs ? [deadlineInterceptor(options.timeoutMs)] : []),
        ],
      },
    },
  );
  return { client: createClient(IngestService, transport), feed: createClient(IngestEventService, transport), reached, lines };
}

/** The error a call fails with. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConnectError);
  return error as ConnectError;
}

/** The violations of an InvalidArgument answer, as [field, rule id] pairs. */
function violationsOf(error: ConnectError): Array<[string, string]> {
  expect(error.code).toBe(Code.InvalidArgument);
  const [details] = error.findDetails(ViolationsSchema);
  return (details?.violations ?? []).map((v) => [v.field?.elements.map((e) => e.fieldName).join(".") ?? "", v.ruleId]);
}

const valid = { source: "web", senderId: "visitor", content: "hello", metadata: {} };
const nested = (depth: number): JsonObject => (depth <= 1 ? { leaf: true } : { level: nested(depth - 1) });

describe("validation: the proto's rules and the configured limits", () => {
  it.each([
    ["a missing source", { source: "" }, "source", "required"],
    ["a source with capitals", { source: "WhatsApp" }, "source", "string.pattern"],
    ["a source of 33 characters", { source: "a".repeat(33) }, "source", "string.pattern"],
    ["a blank sender_id", { senderId: " \t\u00a0" }, "sender_id", "string.not_blank"],
    ["a blank content", { content: "\n  \u2003" }, "content", "string.not_blank"],
    ["an empty external_id", { externalId: "" }, "external_id", "string.not_blank"],
    ["a sender_id of 321 characters", { senderId: "s".repeat(321) }, "sender_id", "string.max_len"],
    ["a sender_id of 321 code points in 642 UTF-16 units", { senderId: "😀".repeat(321) }, "sender_id", "string.max_len"],
    ["an external_id of 321 characters", { externalId: "k".repeat(321) }, "external_id", "string.max_len"],
    ["a content of 256 KiB and one byte", { content: "é".repeat(128 * 1024) + "!" }, "content", "string.max_bytes"],
    ["metadata 11 levels deep", { metadata: nested(11) }, "metadata", "metadata.max_depth"],
    ["metadata over 64 KiB as JSON", { metadata: { blob: "x".repeat(64 * 1024) } }, "metadata", "metadata.max_bytes"],
    ["metadata over 64 KiB in many keys", { metadata: Object.fromEntries(Array.from({ length: 9000 }, (_, i) => [`key-${i}`, i])) }, "metadata", "metadata.max_bytes"],
    ["a NUL in content", { content: "a\u0000b" }, "content", "string.no_nul"],
    ["a NUL in a metadata string", { metadata: { deep: { list: ["ok", "a\u0000"] } } }, "metadata", "string.no_nul"],
    ["a NUL in a metadata key", { metadata: { "k\u0000": 1 } }, "metadata", "string.no_nul"],
  ])("refuses %s as invalid_argument naming the field and rule, before the handler", async (_name, change, field, rule) => {
    const { client, reached } = inMemory();
    expect(violationsOf(await failure(client.ingestMessage({ ...valid, ...change })))).toEqual([[field, rule]]);
    expect(reached).toEqual([]);
  });

  it("names every broken limit at once, one violation per rule", async () => {
    const { client } = inMemory();
    const error = await failure(client.ingestMessage({ ...valid, senderId: "s".repeat(400), content: "a\u0000", metadata: { a: "\u0000", b: "\u0000" } }));
    expect(violationsOf(error).sort()).toEqual([["content", "string.no_nul"], ["metadata", "string.no_nul"], ["sender_id", "string.max_len"]]);
  });

  it.each([
    ["a sender_id of 320 code points", { senderId: "😀".repeat(320) }],
    ["a content of exactly 256 KiB", { content: "é".repeat(128 * 1024) }],
    ["metadata 10 levels deep", { metadata: nested(10) }],
    ["an external_id of 320 characters", { externalId: "k".repeat(320) }],
    ["text with inner spaces and paired surrogates", { senderId: " a b ", content: " 😀 ", metadata: { "😀": "😀" } }],
  ])("lets %s through to the handler unchanged", async (_name, change) => {
    const { client, reached } = inMemory();
    await client.ingestMessage({ ...valid, ...change });
    expect(reached).toHaveLength(1);
    const expected = { ...valid, ...change };
    expect({ senderId: reached[0].senderId, content: reached[0].content, metadata: reached[0].metadata }).toEqual({
      senderId: expected.senderId,
      content: expected.content,
      metadata: expected.metadata,
    });
  });

  it("applies the limits it is given", async () => {
    const { client, reached } = inMemory(undefined, { limits: loadConfig({ MAX_CONTENT_BYTES: "4", MAX_METADATA_DEPTH: "2" }).limits });
    expect((await failure(client.ingestMessage({ ...valid, content: "12345" }))).message).toContain("content: must be at most 4 bytes");
    expect(violationsOf(await failure(client.ingestMessage({ ...valid, content: "1234", metadata: nested(3) })))).toEqual([["metadata", "metadata.max_depth"]]);
    await client.ingestMessage({ ...valid, content: "1234", metadata: nested(2) });
    expect(reached).toHaveLength(1);
  });
});

describe("limits in the configuration", () => {
  it("reads every limit from the environment, defaulting each one", () => {
    expect(loadConfig({}).limits).toEqual(defaultInputLimits);
    expect(defaultInputLimits).toEqual({
      requestMaxBytes: 409_600,
      senderIdMaxChars: 320,
      externalIdMaxChars: 320,
      contentMaxBytes: 262_144,
      metadataMaxBytes: 65_536,
      metadataMaxDepth: 10,
    });
    const config = loadConfig({
      MAX_REQUEST_BYTES: "4096",
      MAX_SENDER_ID_CHARS: "64",
      MAX_EXTERNAL_ID_CHARS: "100",
      MAX_CONTENT_BYTES: "1000",
      MAX_METADATA_BYTES: "500",
      MAX_METADATA_DEPTH: "3",
    });
    expect(config.limits).toEqual({
      requestMaxBytes: 4096,
      senderIdMaxChars: 64,
      externalIdMaxChars: 100,
      contentMaxBytes: 1000,
      metadataMaxBytes: 500,
      metadataMaxDepth: 3,
    });
  });

  it("names every bad limit at once", () => {
    const problems = configProblems({ MAX_CONTENT_BYTES: "lots", MAX_METADATA_DEPTH: "1000", MAX_REQUEST_BYTES: "-1" });
    expect(problems.map((problem) => problem.split(" ")[0]).sort()).toEqual(["MAX_CONTENT_BYTES", "MAX_METADATA_DEPTH", "MAX_REQUEST_BYTES"]);
  });
});

/** A database error as Sequelize raises it, with the driver's error (and its SQLSTATE or errno) as `original`. */
function databaseError(code: string, message = "driver says no"): DatabaseError {
  return new DatabaseError(Object.assign(new Error(message), { code, sql: "SELECT 1", parameters: [] }));
}

describe("error rewriting: one table from errors to Connect codes", () => {
  it.each([
    ["a conflicting retry", new DuplicateConflictError(), Code.AlreadyExists, "send a new external_id for a new message"],
    ["a bad feed token", new InvalidFeedTokenError("page_token", "is not a page token"), Code.InvalidArgument, "page_token: is not a page token"],
    ["an unknown event", new IngestEventNotFoundError("e-2"), Code.NotFound, "ingest event e-2 does not exist"],
    ["the watch limit", new FeedWatchLimitError(3), Code.ResourceExhausted, "limit of 3 watch streams"],
    ["a server shutting down", new FeedClosedError(), Code.Unavailable, "shutting down"],
    ["a value the database cannot store (SQLSTATE 22)", databaseError("22P05"), Code.InvalidArgument, "a field holds a value the database cannot store"],
  ])("answers %s with its code and a message that says what to do", (_name, error, code, message) => {
    const { log, lines } = memoryLog();
    const answer = toConnectError(error, log);
    expect(answer.code).toBe(code);
    expect(answer.rawMessage).toContain(message);
    expect(lines).toEqual([]);
  });

  it.each([
    ["our own deadline", new DatabaseTimeoutError(50)],
    ["a connection Sequelize could not open", new ConnectionError(new Error("connect ECONNREFUSED 127.0.0.1:5432"))],
    ["a refused connection (errno)", databaseError("ECONNREFUSED")],
    ["a connection exception (SQLSTATE 08006)", databaseError("08006")],
    ["too many connections (SQLSTATE 53300)", databaseError("53300")],
    ["a statement timeout (SQLSTATE 57014)", databaseError("57014")],
    ["an idle-in-transaction timeout (SQLSTATE 25P03)", databaseError("25P03")],
    ["a connection dropped mid-query", databaseError("", "Connection terminated unexpectedly")],
  ])("answers %s as unavailable (retry later), logged as a warning", (_name, error) => {
    const { log, lines } = memoryLog();
    const answer = toConnectError(error, log);
    expect([answer.code, answer.rawMessage]).toEqual([Code.Unavailable, "database unavailable, retry later"]);
    expect(lines.map((line) => [line.level, line.msg])).toEqual([[40, "database unavailable"]]);
  });

  it("answers anything else as internal, logging the cause and never sending it", () => {
    const { log, lines } = memoryLog();
    for (const error of [new Error("secret detail"), databaseError("23505", "secret constraint"), "a string"]) {
      const answer = toConnectError(error, log);
      expect([answer.code, answer.rawMessage]).toEqual([Code.Internal, "internal error"]);
    }
    expect(lines.map((line) => [line.level, line.msg])).toEqual(Array(3).fill([50, "internal error"]));
    expect(lines[0].err.message).toBe("secret detail");
  });

  it("keeps a ConnectError as it is", () => {
    const error = new ConnectError("nope", Code.PermissionDenied);
    expect(toConnectError(error, memoryLog().log)).toBe(error);
  });

  it("rewrites what a handler throws, over a Connect router", async () => {
    const conflict = inMemory(() => {
      throw new DuplicateConflictError();
    });
    const answer = await failure(conflict.client.ingestMessage(valid));
    expect(answer.code).toBe(Code.AlreadyExists);
    expect(answer.rawMessage).toContain("already stored for this source");

    const crash = inMemory(() => Promise.reject(new Error("secret detail")));
    const internal = await failure(crash.client.ingestMessage(valid));
    expect([internal.code, internal.rawMessage]).toEqual([Code.Internal, "internal error"]);
    expect(crash.lines.map((line) => line.err?.message)).toEqual(["secret detail"]);
  });

  it("rewrites an error raised while a response stream is being produced", async () => {
    const { feed, lines } = inMemory();
    const error = await failure(
      (async () => {
        for await (const _ of feed.watchIngestEvents({ start: WatchIngestEventsRequest_Start.BEGINNING }));
      })(),
    );
    expect(lines).toEqual([]);
    expect(error.code).toBe(Code.Unavailable);
    expect(error.rawMessage).toContain("resume from the last resume token");
  });
});

describe("the request deadline", () => {
  it("answers a request still running after the deadline as unavailable, and aborts the handler's signal", async () => {
    let handlerSignal: AbortSignal | undefined;
    const { client } = inMemory(
      (_request, context) => {
        handlerSignal = context.signal;
        return new Promise(() => {}); // a database that never answers
      },
      { timeoutMs: 50 },
    );
    const error = await failure(client.ingestMessage(valid));
    expect([error.code, error.rawMessage]).toEqual([Code.Unavailable, "database unavailable, retry later"]);
    expect(handlerSignal?.aborted).toBe(true);
    expect(handlerSignal?.reason).toBeInstanceOf(DatabaseTimeoutError);
  });

  it("lets a request that answers in time through", async () => {
    const { client } = inMemory(async () => ({ eventId: "quick", status: "persisted" }), { timeoutMs: 1_000 });
    expect((await client.ingestMessage(valid)).eventId).toBe("quick");
  });
});
