/**
 * Prints `buf/validate/validate.proto` back out of the compiled descriptor
 * that `@bufbuild/protovalidate` ships, so buf can compile our annotations
 * offline (the Buf registry, where the file normally comes from, is out of
 * reach). `npm run vendor-validate` writes it to proto/buf/validate/;
 * `.ci/run` checks the vendored copy still matches the installed package.
 *
 * The printer covers what that one file uses: proto2 messages with optional
 * and repeated fields, oneofs, reserved ranges and names, extension ranges,
 * enums, extensions of the descriptor options, file options and the
 * `(predefined)` field option. Anything else makes it fail loudly rather
 * than print a different contract.
 */
import { writeFile } from "node:fs/promises";
import { getExtension, hasExtension, isFieldSet, type DescFile } from "@bufbuild/protobuf";
import { toText } from "@bufbuild/protobuf/txtpb";
import {
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FieldDescriptorProtoSchema,
  FileOptionsSchema,
  type DescriptorProto,
  type EnumDescriptorProto,
  type FieldDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate, predefined, PredefinedRulesSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

const HEADER = `// Copyright Buf Technologies, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//      http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

// protovalidate's buf/validate/validate.proto, printed by
// scripts/print-validate-proto.ts from the descriptor compiled into
// @bufbuild/protovalidate (the comments are not part of that descriptor).
// Vendored so buf compiles our annotations offline; excluded from lint,
// breaking checks and generation. Do not edit: run \`npm run vendor-validate\`.
`;

const scalarNames: Partial<Record<FieldDescriptorProto_Type, string>> = {
  [FieldDescriptorProto_Type.DOUBLE]: "double",
  [FieldDescriptorProto_Type.FLOAT]: "float",
  [FieldDescriptorProto_Type.INT64]: "int64",
  [FieldDescriptorProto_Type.UINT64]: "uint64",
  [FieldDescriptorProto_Type.INT32]: "int32",
  [FieldDescriptorProto_Type.FIXED64]: "fixed64",
  [FieldDescriptorProto_Type.FIXED32]: "fixed32",
  [FieldDescriptorProto_Type.BOOL]: "bool",
  [FieldDescriptorProto_Type.STRING]: "string",
  [FieldDescriptorProto_Type.BYTES]: "bytes",
  [FieldDescriptorProto_Type.UINT32]: "uint32",
  [FieldDescriptorProto_Type.SFIXED32]: "sfixed32",
  [FieldDescriptorProto_Type.SFIXED64]: "sfixed64",
  [FieldDescriptorProto_Type.SINT32]: "sint32",
  [FieldDescriptorProto_Type.SINT64]: "sint64",
};

/** Returns the `.proto` source of a proto2 file descriptor. */
function printFile(file: DescFile): string {
  const proto = file.proto;
  if (proto.syntax !== "" && proto.syntax !== "proto2") throw new Error(`unsupported syntax ${proto.syntax}`);
  const out: string[] = [HEADER, 'syntax = "proto2";', "", `package ${proto.package};`, ""];
  for (const dependency of proto.dependency) out.push(`import "${dependency}";`);
  out.push("");
  const options = proto.options;
  if (options) {
    const printed = ["$typeName", "uninterpretedOption", "javaMultipleFiles", "javaOuterClassname", "javaPackage", "goPackage"];
    const other = Object.keys(options).filter((key) => !printed.includes(key));
    if (other.length > 0 || options.$unknown?.length) throw new Error(`unsupported file options: ${other.join(", ")}`);
    if (isFieldSet(options, fileOption("javaMultipleFiles"))) out.push(`option java_multiple_files = ${options.javaMultipleFiles};`);
    if (isFieldSet(options, fileOption("javaOuterClassname"))) out.push(`option java_outer_classname = ${quote(options.javaOuterClassname)};`);
    if (isFieldSet(options, fileOption("javaPackage"))) out.push(`option java_package = ${quote(options.javaPackage)};`);
    if (isFieldSet(options, fileOption("goPackage"))) out.push(`option go_package = ${quote(options.goPackage)};`);
    out.push("");
  }
  for (const extension of proto.extension) {
    out.push(`extend ${extension.extendee} {`, `  ${printField(extension)}`, "}", "");
  }
  for (const message of proto.messageType) out.push(...printMessage(message), "");
  for (const enumType of proto.enumType) out.push(...printEnum(enumType), "");
  return out.join("\n").replace(/\n+$/, "\n");
}

function fileOption(name: "javaMultipleFiles" | "javaOuterClassname" | "javaPackage" | "goPackage") {
  return FileOptionsSchema.field[name];
}

function printMessage(message: DescriptorProto): string[] {
  if (message.nestedType.length > 0 || message.enumType.length > 0 || message.extension.length > 0 || message.options) {
    throw new Error(`message ${message.name}: nested declarations and message options are not supported`);
  }
  const lines = [`message ${message.name} {`];
  let openOneof: number | undefined;
  for (const field of message.field) {
    const oneof = isFieldSet(field, FieldDescriptorProtoSchema.field.oneofIndex) ? field.oneofIndex : undefined;
    if (oneof !== openOneof) {
      if (openOneof !== undefined) lines.push("  }");
      if (oneof !== undefined) {
        if (message.oneofDecl[oneof].options) throw new Error(`oneof options are not supported`);
        lines.push(`  oneof ${message.oneofDecl[oneof].name} {`);
      }
      openOneof = oneof;
    }
    const indent = oneof === undefined ? "  " : "    ";
    lines.push(...printField(field, oneof !== undefined).split("\n").map((line) => indent + line));
  }
  if (openOneof !== undefined) lines.push("  }");
  for (const range of message.extensionRange) {
    lines.push(`  extensions ${range.start} to ${range.end - 1 === 536870911 ? "max" : range.end - 1};`);
  }
  for (const range of message.reservedRange) {
    lines.push(`  reserved ${range.end - range.start === 1 ? range.start : `${range.start} to ${range.end - 1}`};`);
  }
  for (const name of message.reservedName) lines.push(`  reserved "${name}";`);
  lines.push("}");
  return lines;
}

function printField(field: FieldDescriptorProto, inOneof = false): string {
  if (isFieldSet(field, FieldDescriptorProtoSchema.field.defaultValue)) throw new Error(`${field.name}: default values are not supported`);
  let label = "";
  if (!inOneof) {
    if (field.label === FieldDescriptorProto_Label.OPTIONAL) label = "optional ";
    else if (field.label === FieldDescriptorProto_Label.REPEATED) label = "repeated ";
    else throw new Error(`${field.name}: label ${field.label} is not supported`);
  }
  const type = scalarNames[field.type] ?? field.typeName;
  if (!type || field.type === FieldDescriptorProto_Type.GROUP) throw new Error(`${field.name}: type ${field.type} is not supported`);
  let options = "";
  if (field.options) {
    const known = field.options.$unknown?.filter((u) => u.no !== predefined.number) ?? [];
    if (known.length > 0 || Object.keys(field.options).some((k) => !["$typeName", "$unknown", "targets", "editionDefaults", "uninterpretedOption"].includes(k))) {
      throw new Error(`${field.name}: field options other than (predefined) are not supported`);
    }
    if (hasExtension(field.options, predefined)) {
      const rules = getExtension(field.options, predefined);
      const text = toText(PredefinedRulesSchema, rules).trimEnd();
      options = ` [(predefined) = {\n${text.replace(/^/gm, "  ")}\n}]`;
    }
  }
  return `${label}${type} ${field.name} = ${field.number}${options};`;
}

function printEnum(enumType: EnumDescriptorProto): string[] {
  if (enumType.options) throw new Error(`enum ${enumType.name}: options are not supported`);
  const lines = [`enum ${enumType.name} {`, ...enumType.value.map((value) => `  ${value.name} = ${value.number};`)];
  // Enum reserved ranges are inclusive at both ends, unlike message ones.
  for (const range of enumType.reservedRange) {
    lines.push(`  reserved ${range.start === range.end ? range.start : `${range.start} to ${range.end}`};`);
  }
  for (const name of enumType.reservedName) lines.push(`  reserved "${name}";`);
  lines.push("}");
  return lines;
}

function quote(value: string): string {
  return JSON.stringify(value);
}

const source = printFile(file_buf_validate_validate);
if (process.argv[2]) await writeFile(process.argv[2], source);
else process.stdout.write(source);
