import http from "node:http";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestMessageRequestSchema, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { grpcPercentEncode } from "../src/transport/early-answers.js";
import { databaseKind } from "./support/database.js";
import { useTestServer } from "./support/server.js";
import { postJson, postMessage } from "./support/ingest.js";

const fixture = useTestServer();

const countEvents = async () =>
  Number((await fixture.database.sequelize.query<{ n: string }>("SELECT count(*) AS n FROM crm_ingest_events", { type: QueryTypes.SELECT }))[0].n);

const RPC_PATH = "/aurora.crm.v1.IngestService/IngestMessage";
const valid = { source: "web", sender_id: "visitor", content: "hello", metadata: {} };

/** A raw HTTP/1.1 request, so that even the Content-Type header can be left out. */
function rawRequest(method: string, urlPath: string, headers: Record<string, string>, body?: string) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: any }>((resolve, reject) => {
    const request = http.request(fixture.server.baseUrl + urlPath, { method, headers }, (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => (text += chunk));
      response.on("end", () => resolve({ status: response.statusCode!, headers: response.headers, body: text ? JSON.parse(text) : undefined }));
    });
    request.on("error", reject);
    request.end(body);
  });
}

describe(`unknown JSON fields (${databaseKind})`, () => {
  it.each([
    ["/ingest/message", "/ingest/message", { ...valid, externalID: "k1" }],
    ["the RPC in Connect JSON", RPC_PATH, { source: "web", senderId: "visitor", content: "hello", externalID: "k1" }],
  ])("on %s are refused as invalid_argument naming the field, twice, and nothing is stored", async (_name, urlPath, body) => {
    const before = await countEvents();
    for (let attempt = 0; attempt < 2; attempt++) {
      const response = await postJson(fixture.server.baseUrl, urlPath, body);
      expect(response.status).toBe(400);
      expect(response.body).toEqual({
        code: "invalid_argument",
        message: 'unknown field "externalID"; the fields are source, sender_id, content, metadata, external_id',
      });
    }
    expect(await countEvents()).toBe(before);
  });

  it("on gRPC with the JSON codec are refused too", async () => {
    const response = await fetch(fixture.server.baseUrl + RPC_PATH, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+json" },
      body: new Uint8Array(envelope(JSON.stringify({ ...valid, externalID: "k1" }))),
    });
    const trailer = Buffer.from(await response.arrayBuffer()).subarray(5).toString();
    expect(trailer).toContain("grpc-status: 3");
    expect(trailer).toContain('grpc-message: unknown field "externalID"; the fields are source, sender_id, content, metadata, external_id');
  });

  it("are kept to binary protobuf's own rule: skipped, for clients built on a newer contract", async () => {
    const known = toBinary(IngestMessageRequestSchema, create(IngestMessageRequestSchema, { source: "web", senderId: "newer", content: "hello" }));
    // Field 99, varint 1: a field this contract does not have.
    const body = Buffer.concat([known, Buffer.from([0x98, 0x06, 0x01])]);
    const response = await fetch(fixture.server.baseUrl + RPC_PATH, { method: "POST", headers: { "content-type": "application/proto" }, body });
    expect(response.status).toBe(200);
  });
});

describe(`a JSON value of the wrong type (${databaseKind})`, () => {
  it.each([
    ["metadata as a string", { metadata: "abc" }, 'metadata: expected a JSON object, got "abc"'],
    ["source as a number", { source: 5 }, "source: expected string, got 5"],
    ["content as an object", { content: {} }, "content: expected string, got object"],
    ["external_id as a list", { external_id: ["k"] }, "external_id: expected string, got Array(1)"],
  ])("is refused naming the field: %s", async (_name, change, message) => {
    const before = await countEvents();
    const response = await postMessage(fixture.server.baseUrl, { ...valid, ...change });
    expect(response.status).toBe(400);
    expect(response.body).toEqual({ code: "invalid_argument", message });
    expect(await countEvents()).toBe(before);
  });
});

describe(`4xx answers say what to do (${databaseKind})`, () => {
  it("a missing Content-Type on /ingest/message: 415 naming application/json", async () => {
    const response = await rawRequest("POST", "/ingest/message", {}, JSON.stringify(valid));
    expect(response.status).toBe(415);
    expect(response.headers["content-type"]).toBe("application/json");
    expect(response.body).toEqual({
      code: "unimplemented",
      message: "Content-Type is missing on /ingest/message: send application/json (curl: -H 'Content-Type: application/json')",
    });
  });

  it("curl's form encoding on the RPC path: 415 naming every accepted type", async () => {
    const response = await rawRequest("POST", RPC_PATH, { "content-type": "application/x-www-form-urlencoded" }, "source=web");
    expect(response.status).toBe(415);
    expect(response.body.message).toBe(
      `Content-Type "application/x-www-form-urlencoded" is not accepted on ${RPC_PATH}: send application/json or application/proto (Connect), ` +
        "application/grpc[+proto|+json] (gRPC), application/grpc-web[+proto|+json] (gRPC-Web)",
    );
  });

  it.each(["/ingest/message", RPC_PATH])("GET on %s: 405 with Allow and a body naming POST", async (urlPath) => {
    const response = await rawRequest("GET", urlPath, {});
    expect(response.status).toBe(405);
    expect(response.headers.allow).toBe("POST");
    expect(response.body).toMatchObject({
      code: "unimplemented",
      message: expect.stringMatching(new RegExp(`^GET is not accepted on ${urlPath}: send POST with Content-Type application/json`)),
    });
  });

  it("an unknown path: 404 naming the paths this service serves", async () => {
    const response = await rawRequest("POST", "/ingest/messages", { "content-type": "application/json" }, "{}");
    expect(response.status).toBe(404);
    expect(response.body.code).toBe("unimplemented");
    expect(response.body.message).toMatch(/^no such path: POST \/ingest\/messages; this service serves POST \/ingest\/message, GET \/healthz, /);
    expect(response.body.message).toContain(RPC_PATH);
    expect(response.body.message).toContain("/grpc.health.v1.Health/Check");
  });

  it("an unknown method over gRPC: unimplemented, naming the paths, readable in @grpc/grpc-js", async () => {
    const client = new grpc.Client(new URL(fixture.server.baseUrl).host, grpc.credentials.createInsecure());
    const error = await new Promise<grpc.ServiceError>((resolve, reject) =>
      client.makeUnaryRequest(
        "/aurora.crm.v1.IngestServices/IngestMessage",
        (value: Buffer) => value,
        (value: Buffer) => value,
        Buffer.alloc(0),
        (e) => (e ? resolve(e) : reject(new Error("expected an error"))),
      ),
    );
    client.close();
    expect(error.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(error.details).toMatch(/^no such path: POST \/aurora\.crm\.v1\.IngestServices\/IngestMessage; this service serves POST \/ingest\/message, /);
  });
});

describe(`error messages in @grpc/grpc-js (${databaseKind})`, () => {
  let client: grpc.Client & Record<string, any>;
  beforeAll(() => {
    const definition = protoLoader.loadSync("aurora/crm/v1/ingest_service.proto", {
      includeDirs: [path.resolve(import.meta.dirname, "../proto")],
      keepCase: true,
    });
    const loaded = grpc.loadPackageDefinition(definition) as any;
    client = new loaded.aurora.crm.v1.IngestService(new URL(fixture.server.baseUrl).host, grpc.credentials.createInsecure());
  });
  afterAll(() => client?.close());

  const call = (request: object) =>
    new Promise<grpc.ServiceError>((resolve, reject) =>
      client.IngestMessage(request, (error: grpc.ServiceError | null) => (error ? resolve(error) : reject(new Error("expected an error")))),
    );

  it("reads the same text a Connect client reads, with : , ; $ { } as sent", async () => {
    const connect = createClient(IngestService, createConnectTransport({ baseUrl: fixture.server.baseUrl, httpVersion: "1.1" }));
    const cases = [
      { source: "Web Chat", sender_id: "v", content: "c" },
      { source: "web", sender_id: " ", content: "c", external_id: "" },
    ];
    for (const request of cases) {
      const error = await call(request);
      const expected = await failure(
        connect.ingestMessage({ source: request.source, senderId: request.sender_id, content: request.content, externalId: request.external_id }),
      );
      expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toBe(expected.rawMessage);
      expect(error.details).not.toMatch(/%[0-9A-F]{2}/);
    }
    expect((await call(cases[0])).details).toMatch(/^source: does not match regex pattern `\^\[a-z\]\[a-z0-9_-\]\{0,31\}\$` \[string\.pattern\]/);
  });

  it("an idempotency conflict, with its ; and ,", async () => {
    const first = { source: "web", sender_id: "grpc-js", content: "one", external_id: "grpc-js-conflict" };
    expect((await postMessage(fixture.server.baseUrl, first)).status).toBe(200);
    const error = await call({ ...first, content: "two" });
    const connect = createClient(IngestService, createConnectTransport({ baseUrl: fixture.server.baseUrl, httpVersion: "1.1" }));
    const expected = await failure(connect.ingestMessage({ source: "web", senderId: "grpc-js", content: "two", externalId: "grpc-js-conflict" }));
    expect(error.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(error.details).toBe(expected.rawMessage);
    expect(error.details).toMatch(/^[^%]*[,;][^%]*$/);
  });

  it("keeps the violations detail for gRPC and gRPC-Web clients", async () => {
    const baseUrl = fixture.server.baseUrl;
    for (const transport of [createGrpcTransport({ baseUrl }), createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })]) {
      const error = await failure(createClient(IngestService, transport).ingestMessage({ source: "Web Chat", senderId: "v", content: "c" }));
      expect(error.rawMessage).toContain("source: does not match regex pattern `^[a-z][a-z0-9_-]{0,31}$`");
      expect(error.findDetails(ViolationsSchema)[0].violations[0].ruleId).toBe("string.pattern");
    }
  });

  it("percent-encodes only what the gRPC spec asks, so decodeURI and decodeURIComponent both read it", () => {
    const message = "olá; a,b: $x {0,31} 100% \n/?#&=+@";
    const encoded = grpcPercentEncode(message);
    expect(encoded).toBe("ol%C3%A1; a,b: $x {0,31} 100%25 %0A/?#&=+@");
    expect(decodeURI(encoded)).toBe(message);
    expect(decodeURIComponent(encoded)).toBe(message);
  });
});

/** The error a call that must fail failed with. */
function failure(call: Promise<unknown>): Promise<ConnectError> {
  return call.then(
    () => {
      throw new Error("expected an error");
    },
    (error: unknown) => ConnectError.from(error),
  );
}

/** One gRPC-Web data frame. */
function envelope(text: string): Buffer {
  const data = Buffer.from(text);
  const header = Buffer.alloc(5);
  header.writeUInt32BE(data.length, 1);
  return Buffer.concat([header, data]);
}
