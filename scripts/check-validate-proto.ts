/**
 * Checks that the vendored `proto/buf/validate/validate.proto` is the file
 * `@bufbuild/protovalidate` was generated from: buf compiles it, and its
 * descriptor, stripped the way generated code embeds descriptors (no source
 * info, no dependency list, no default JSON names), must equal the one the
 * package ships; and `proto/buf/validate/VERSION` must name the upstream tag
 * the package's README says it is compatible with. Exits 1 otherwise.
 *
 * The file itself is bufbuild/protovalidate's
 * `proto/protovalidate/buf/validate/validate.proto` at that tag, unchanged.
 *
 * Usage: tsx scripts/check-validate-proto.ts [path to a validate.proto]
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { equals, fromBinary, toJson } from "@bufbuild/protobuf";
import { embedFileDesc } from "@bufbuild/protobuf/codegenv2";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

const FILE = "buf/validate/validate.proto";
const vendored = process.argv[2] ?? path.join("proto", FILE);

/** Compiles one .proto file on its own with buf and returns its descriptor. */
function compile(protoPath: string): FileDescriptorProto {
  const dir = mkdtempSync(path.join(tmpdir(), "validate-proto-"));
  try {
    mkdirSync(path.join(dir, path.dirname(FILE)), { recursive: true });
    copyFileSync(protoPath, path.join(dir, FILE));
    const image = execFileSync("npx", ["buf", "build", dir, "--path", path.join(dir, FILE), "--as-file-descriptor-set", "-o", "-#format=binpb"], {
      maxBuffer: 64 * 1024 * 1024,
    });
    const file = fromBinary(FileDescriptorSetSchema, image).file.find((f) => f.name === FILE);
    if (!file) throw new Error(`buf build produced no ${FILE}`);
    return file;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const stripped = (file: FileDescriptorProto) => embedFileDesc(file).proto();
const ours = stripped(compile(vendored));
const theirs = stripped(file_buf_validate_validate.proto);
if (!equals(FileDescriptorProtoSchema, ours, theirs)) {
  const a = JSON.stringify(toJson(FileDescriptorProtoSchema, ours), null, 1).split("\n");
  const b = JSON.stringify(toJson(FileDescriptorProtoSchema, theirs), null, 1).split("\n");
  const line = a.findIndex((l, i) => l !== b[i]);
  console.error(`${vendored} differs from @bufbuild/protovalidate's descriptor near:\n  ours:    ${a[line]}\n  package: ${b[line]}`);
  process.exit(1);
}

const pinned = readFileSync(path.join("proto", path.dirname(FILE), "VERSION"), "utf8").trim();
const readme = readFileSync(path.join("node_modules", "@bufbuild", "protovalidate", "README.md"), "utf8");
const upstream = /<!-- upstreamProtovalidateRef -->([^<]+)<!-- upstreamProtovalidateRef -->/.exec(readme)?.[1];
if (upstream && upstream !== pinned) {
  console.error(`proto/buf/validate/VERSION says ${pinned}; @bufbuild/protovalidate was generated from ${upstream}: vendor that tag's validate.proto`);
  process.exit(1);
}
console.log(`${vendored}: descriptor equals @bufbuild/protovalidate's (upstream ${upstream ?? pinned})`);
