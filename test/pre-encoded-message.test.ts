import { create, fromBinary, toBinary, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  IngestEventKind,
  IngestEventSchema,
  WatchIngestEventsResponseSchema,
} from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { preEncodedMessage, wantsBinary } from "../src/services/pre-encoded-message.js";

describe("a message encoded once for many streams", () => {
  const ingestEvent = create(IngestEventSchema, {
    id: "3f1c8a52-8f0e-4c39-9b7e-0d3c2a1b4e5f",
    source: "whatsapp",
    senderId: "+55 11 99999-9999",
    content: "olá ".repeat(100),
    metadata: { n: 1, tags: ["a"] },
    externalId: "wamid.1",
    status: IngestEventStatus.LINKED,
    createdAt: timestampFromDate(new Date("2026-12-04T12:00:00Z")),
    kind: IngestEventKind.MESSAGE,
  });
  const resumeToken = "AQ".repeat(30);
  const plain = create(WatchIngestEventsResponseSchema, { ingestEvent, resumeToken });
  const encoded = preEncodedMessage(WatchIngestEventsResponseSchema, [
    { no: 1, bytes: toBinary(IngestEventSchema, ingestEvent) },
    { no: 2, bytes: new TextEncoder().encode(resumeToken) },
  ]);

  it("encodes to exactly the bytes of the message with its fields set, and decodes to it", () => {
    expect(Buffer.from(toBinary(WatchIngestEventsResponseSchema, encoded))).toEqual(Buffer.from(toBinary(WatchIngestEventsResponseSchema, plain)));
    expect(fromBinary(WatchIngestEventsResponseSchema, toBinary(WatchIngestEventsResponseSchema, encoded))).toEqual(plain);
  });

  it("is for binary encodings only: JSON leaves it empty, and JSON requests are told apart", () => {
    expect(toJsonString(WatchIngestEventsResponseSchema, encoded)).toBe("{}");
    expect(["application/grpc", "application/grpc+proto", "application/grpc-web+proto", "application/connect+proto"].map(wantsBinary)).toEqual([
      true,
      true,
      true,
      true,
    ]);
    expect(["application/grpc+json", "application/grpc-web+json", "application/connect+json", "application/json"].map(wantsBinary)).toEqual([
      false,
      false,
      false,
      false,
    ]);
  });
});
