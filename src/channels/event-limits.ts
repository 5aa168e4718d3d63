import { create, type JsonObject } from "@bufbuild/protobuf";
import { IngestMessageRequestSchema } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import type { InputLimits } from "../config.js";
import type { IngestMessageInput } from "../ingest/ingest-message.js";
import { ingestMessageViolations } from "../interceptors/validation.js";

/**
 * An item checked against the limits and storage rules every event obeys
 * (the ones `/ingest/message` enforces): within them it is returned as it
 * is; otherwise it becomes an ERROR event that keeps its ids and `keep`'s
 * metadata, says which rule it broke, and stores none of the rest, so the
 * provider gets its 200 and nothing is dropped without a trace.
 */
export function withinEventLimits(input: IngestMessageInput, limits: InputLimits, keep: Record<string, unknown>): IngestMessageInput {
  const violations = ingestMessageViolations(
    create(IngestMessageRequestSchema, {
      source: input.source,
      senderId: input.senderId,
      content: input.content,
      metadata: input.metadata as JsonObject,
      externalId: input.externalId ?? undefined,
    }),
    limits,
  );
  if (violations.length === 0) return input;
  const reasons = violations.map((violation) => `${violation.field.map((f) => ("name" in f ? f.name : f.kind)).join(".")} ${violation.message}`);
  const fits = (value: string, max: number) => value.length <= max && !value.includes("\u0000");
  return {
    ...input,
    senderId: fits(input.senderId, limits.senderIdMaxChars) ? input.senderId : "",
    externalId: input.externalId && fits(input.externalId, limits.externalIdMaxChars) ? input.externalId : null,
    content: "[over our limits]",
    metadata: keep,
    unusable: input.unusable ?? `not stored as sent: ${reasons.join("; ")}`,
  };
}
