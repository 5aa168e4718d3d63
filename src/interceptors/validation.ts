import { isMessage, type DescField, type JsonValue } from "@bufbuild/protobuf";
import type { Path } from "@bufbuild/protobuf/reflect";
import { createValidator, ValidationError, Violation, violationsToProto } from "@bufbuild/protovalidate";
import { FieldRulesSchema, StringRulesSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createValidateInterceptor } from "@connectrpc/validate";
import { IngestMessageRequestSchema, type IngestMessageRequest } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import type { InputLimits } from "../config.js";
import { metadataJson } from "../ingest/metadata-json.js";

/**
 * The interceptors that check every request before a handler sees it. Both
 * answer the same way: `InvalidArgument`, a message naming the field and the
 * rule, and a `buf.validate.Violations` detail with one entry per broken rule.
 *
 * 1. protovalidate enforces the rules annotated in the proto: the fixed shape
 *    of a request (required fields, no blank text, the source token). The
 *    proto is the contract clients read, so these rules live there.
 * 2. `limitsInterceptor` enforces what static annotations cannot express: the
 *    size limits an operator configures (an annotation cannot read the
 *    configuration, and a default written in the proto would be a second,
 *    disagreeing source of truth), the depth and size of metadata, and text
 *    that PostgreSQL cannot store as sent.
 *
 * Handlers and commands trust whatever passes and re-check nothing.
 */
export function validationInterceptors(limits: InputLimits): Interceptor[] {
  // The limits go first: they are cheap and stop early, and an oversized
  // request should cost as little as possible before it is refused.
  return [limitsInterceptor(limits), createValidateInterceptor({ validator: createValidator() })];
}

/** Refuses an IngestMessage request that breaks a configured limit or holds text the database would alter or refuse. */
function limitsInterceptor(limits: InputLimits): Interceptor {
  return (next) => async (request) => {
    if (!request.stream && isMessage(request.message, IngestMessageRequestSchema)) {
      const violations = ingestMessageViolations(request.message, limits);
      if (violations.length > 0) {
        const error = new ValidationError(violations);
        const [value, desc] = violationsToProto(violations);
        throw new ConnectError(error.message, Code.InvalidArgument, undefined, [{ desc, value }], error);
      }
    }
    return next(request);
  };
}

const field = IngestMessageRequestSchema.field;
const stringRule = (rule: DescField): Path => [FieldRulesSchema.field.string, rule];

/** Every configured limit and storage rule that an IngestMessage request breaks; empty when it may be stored. */
export function ingestMessageViolations(request: IngestMessageRequest, limits: InputLimits): Violation[] {
  const violations: Violation[] = [];
  const add = (target: DescField, ruleId: string, message: string, rule: Path = []) =>
    violations.push(new Violation(message, ruleId, [target], rule, false));

  for (const [target, value] of [
    [field.source, request.source],
    [field.senderId, request.senderId],
    [field.content, request.content],
    [field.externalId, request.externalId ?? ""],
  ] as const) {
    const problem = unstorable(value);
    if (problem) add(target, problem.ruleId, problem.message);
  }
  if (longerThan(request.senderId, limits.senderIdMaxChars)) {
    add(field.senderId, "string.max_len", `must be at most ${limits.senderIdMaxChars} characters`, stringRule(StringRulesSchema.field.maxLen));
  }
  if (request.externalId !== undefined && longerThan(request.externalId, limits.externalIdMaxChars)) {
    add(field.externalId, "string.max_len", `must be at most ${limits.externalIdMaxChars} characters`, stringRule(StringRulesSchema.field.maxLen));
  }
  if (Buffer.byteLength(request.content, "utf8") > limits.contentMaxBytes) {
    add(field.content, "string.max_bytes", `must be at most ${limits.contentMaxBytes} bytes`, stringRule(StringRulesSchema.field.maxBytes));
  }
  if (request.metadata !== undefined) {
    for (const problem of metadataProblems(request.metadata, limits)) add(field.metadata, problem.ruleId, problem.message);
  }
  return violations;
}

type Problem = { ruleId: string; message: string };

/**
 * Why PostgreSQL cannot keep this text as sent, if it cannot. JSON allows
 * both, and both tested alike on PostgreSQL 15 and the embedded database:
 * - NUL (U+0000): jsonb refuses the escape `\u0000` (SQLSTATE 22P05), and in
 *   a text column Sequelize silently stores the two characters `\0` instead.
 * - An unpaired UTF-16 surrogate (a JSON escape such as `\ud800` alone):
 *   jsonb refuses it (22P02), and a text column silently gets U+FFFD.
 * Refusing both here means what is stored is exactly what was sent.
 */
function unstorable(text: string, where: () => string = () => ""): Problem | undefined {
  if (text.includes("\u0000")) return { ruleId: "string.no_nul", message: `must not contain a NUL character (U+0000)${where()}` };
  if (LONE_SURROGATE.test(text)) return { ruleId: "string.well_formed", message: `must not contain an unpaired UTF-16 surrogate${where()}` };
  return undefined;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const UNPRINTABLE = new RegExp(`\\u0000|${LONE_SURROGATE.source}`, "g");

/** True when `text` has more than `max` Unicode code points. */
function longerThan(text: string, max: number): boolean {
  if (text.length <= max) return false; // UTF-16 units never undercount code points
  let count = 0;
  for (const _ of text) if (++count > max) return true;
  return false;
}

/**
 * What is wrong with the metadata: nesting deeper than allowed (the object
 * itself is level 1; each object or array inside adds one), text PostgreSQL
 * cannot store in keys or strings, numbers JSON cannot hold (NaN and
 * infinities, which only the binary encoding can carry), and JSON larger than
 * allowed. The walk uses its own stack and stops descending past the limit,
 * so no input can exhaust the call stack. It also counts the least its JSON
 * can take (every key and string at least its length plus quotes) and stops
 * as soon as that passes the size limit, so oversized metadata costs at most
 * a walk over the limit's worth of it.
 */
function metadataProblems(metadata: { [key: string]: JsonValue }, limits: InputLimits): Problem[] {
  const problems: Problem[] = [];
  const seen = new Set<string>();
  const report = (problem: Problem) => {
    if (seen.has(problem.ruleId)) return; // one violation per rule is enough to act on
    seen.add(problem.ruleId);
    problems.push(problem);
  };
  const stack: Array<{ value: JsonValue; depth: number; pointer: string }> = [{ value: metadata, depth: 1, pointer: "" }];
  let leastBytes = 0;
  const tooLarge = { ruleId: "metadata.max_bytes", message: `must be at most ${limits.metadataMaxBytes} bytes as JSON` };
  while (stack.length > 0) {
    if (leastBytes > limits.metadataMaxBytes) {
      if (!seen.has("metadata.max_depth")) report(tooLarge);
      return problems;
    }
    const { value, depth, pointer } = stack.pop()!;
    // A UTF-16 unit is at least one UTF-8 byte: a string takes at least its length and quotes, anything else a byte.
    leastBytes += typeof value === "string" ? value.length + 2 : 1;
    if (typeof value === "string") {
      const problem = unstorable(value, () => ` at ${printablePointer(pointer)}`);
      if (problem) report(problem);
    } else if (typeof value === "number") {
      if (!Number.isFinite(value)) report({ ruleId: "metadata.json", message: `must hold only JSON numbers, not ${value}, at ${printablePointer(pointer)}` });
    } else if (value !== null && typeof value === "object") {
      if (depth > limits.metadataMaxDepth) {
        report({ ruleId: "metadata.max_depth", message: `must be at most ${limits.metadataMaxDepth} levels deep` });
        continue;
      }
      const entries: Array<[string, JsonValue]> = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
      for (const [key, child] of entries) {
        if (!Array.isArray(value)) leastBytes += key.length + 3; // quotes and colon
        const childPointer = `${pointer}/${key.replaceAll("~", "~0").replaceAll("/", "~1")}`;
        if (!Array.isArray(value)) {
          const problem = unstorable(key, () => ` in the key at ${printablePointer(childPointer)}`);
          if (problem) report(problem);
        }
        stack.push({ value: child, depth: depth + 1, pointer: childPointer });
      }
    }
  }
  // Measured only once the walk found the metadata within the depth limit.
  if (!seen.has("metadata.max_depth") && Buffer.byteLength(metadataJson(metadata), "utf8") > limits.metadataMaxBytes) report(tooLarge);
  return problems;
}

/** A JSON pointer safe to put in an error message: offending characters escaped, long ones cut. */
function printablePointer(pointer: string): string {
  const escaped = [...pointer.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)];
  return escaped.length > 200 ? `${escaped.slice(0, 200).join("")}…` : escaped.join("");
}
