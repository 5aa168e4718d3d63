import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { ServerReflection, type ServerReflectionResponse } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { databaseKind } from "./support/database.js";
import { rows } from "./support/rows.js";
import { useTestServer } from "./support/server.js";

const buf = path.resolve(import.meta.dirname, "../node_modules/.bin/buf");

const fixture = useTestServer();

/** Runs `buf curl` (the local binary from npm, no network) and returns what it printed. */
async function bufCurl(...args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(buf, ["curl", ...args], { timeout: 60_000 });
  return stdout;
}

const SERVICES = [
  "aurora.crm.v1.IngestEventService",
  "aurora.crm.v1.IngestService",
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
];

describe(`gRPC server reflection (${databaseKind})`, () => {
  it("lets buf curl list the services, over HTTP/1.1 and over gRPC", async () => {
    expect((await bufCurl("--list-services", fixture.server.baseUrl)).trim().split("\n")).toEqual(SERVICES);
    const grpc = await bufCurl("--list-services", "--protocol", "grpc", "--http2-prior-knowledge", fixture.server.baseUrl);
    expect(grpc.trim().split("\n")).toEqual(SERVICES);
  });

  it("lists them over grpc.reflection.v1alpha too, for older clients", async () => {
    const output = await bufCurl("--list-services", "--reflect-protocol", "grpc-v1alpha", "--http2-prior-knowledge", fixture.server.baseUrl);
    expect(output.trim().split("\n")).toEqual(SERVICES);
  });

  it("lets buf curl call IngestMessage over gRPC with no .proto files", async () => {
    const output = await bufCurl(
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-d",
      JSON.stringify({ source: "whatsapp", sender_id: "5511955554444", content: "sem schema", metadata: { via: "reflection" } }),
      `${fixture.server.baseUrl}/aurora.crm.v1.IngestService/IngestMessage`,
    );
    const response = JSON.parse(output);
    expect(response).toMatchObject({ status: "persisted", eventStatus: "INGEST_EVENT_STATUS_LINKED" });
    const [event] = await rows(fixture.database, "SELECT content, metadata FROM crm_ingest_events WHERE id = $1", [response.eventId]);
    expect(event).toEqual({ content: "sem schema", metadata: { via: "reflection" } });
  });

  it("answers symbols and file names with the file and its imports, and NOT_FOUND for unknown ones", async () => {
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: fixture.server.baseUrl }));
    async function* requests() {
      yield { messageRequest: { case: "fileContainingSymbol" as const, value: "aurora.crm.v1.IngestService.IngestMessage" } };
      yield { messageRequest: { case: "fileByFilename" as const, value: "google/protobuf/struct.proto" } };
      yield { messageRequest: { case: "fileContainingSymbol" as const, value: "aurora.crm.v1.Nothing" } };
    }
    const responses: ServerReflectionResponse["messageResponse"][] = [];
    for await (const response of client.serverReflectionInfo(requests())) responses.push(response.messageResponse);

    const names = (r: (typeof responses)[number]) =>
      r.case === "fileDescriptorResponse" ? r.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name) : r.case;
    expect(names(responses[0])).toEqual([
      "aurora/crm/v1/ingest_service.proto",
      "buf/validate/validate.proto",
      "google/protobuf/descriptor.proto",
      "google/protobuf/duration.proto",
      "google/protobuf/field_mask.proto",
      "google/protobuf/timestamp.proto",
      "google/protobuf/struct.proto",
    ]);
    // The file asked for always comes; imports already sent on this stream do not.
    expect(names(responses[1])).toEqual(["google/protobuf/struct.proto"]);
    expect(responses[2]).toMatchObject({ case: "errorResponse", value: { errorCode: 5 } });
  });
});
