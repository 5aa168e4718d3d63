import { createRegistry, toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/** A reflection request as both protocol versions spell it. */
interface ReflectionRequest {
  messageRequest:
    | { case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices"; value: string }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: undefined; value?: undefined };
}

/** The reflection services, in both protocol versions. */
export const REFLECTION_SERVICES = [ServerReflectionV1, ServerReflectionV1alpha];

// gRPC status codes, as reflection's ErrorResponse carries them.
const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

/**
 * gRPC server reflection, `grpc.reflection.v1` and the older
 * `grpc.reflection.v1alpha` (which older grpcurl versions use), answering
 * from the compiled descriptors of `services`, of the reflection services
 * themselves and of every file they import (google/protobuf/struct.proto, …).
 * Tools such as `buf curl` and `grpcurl` then need no .proto files.
 * Returns each version's service and implementation, for the route table.
 */
export function createReflectionServices(services: DescService[]): Array<{ service: DescService; implementation: object }> {
  const answer = createAnswerer([...services, ...REFLECTION_SERVICES]);
  const v1: ServiceImpl<typeof ServerReflectionV1> = {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: answer(request, sent) };
      }
    },
  };
  const v1alpha: ServiceImpl<typeof ServerReflectionV1alpha> = {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: answer(request, sent) };
      }
    },
  };
  return [
    { service: ServerReflectionV1, implementation: v1 },
    { service: ServerReflectionV1alpha, implementation: v1alpha },
  ];
}

/**
 * Indexes the services' files and their imports, and returns a function that
 * answers one reflection request. The requested file is sent with the imports
 * it needs, skipping imports already sent on the same stream, as gRPC's own
 * servers do.
 */
function createAnswerer(services: DescService[]) {
  const files = new Map<string, DescFile>();
  const collect = (file: DescFile) => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    file.dependencies.forEach(collect);
  };
  services.forEach((service) => collect(service.file));
  const registry = createRegistry(...files.values());
  const serviceNames = services.map((service) => service.typeName);

  const fileOfSymbol = (symbol: string): DescFile | undefined => {
    const desc = registry.get(symbol);
    if (desc) return desc.kind === "extension" || desc.kind === "service" || desc.kind === "message" || desc.kind === "enum" ? desc.file : undefined;
    // A method (`pkg.Service.Method`) or a field (`pkg.Message.field`) lives in its parent's file.
    const dot = symbol.lastIndexOf(".");
    const parent = dot > 0 ? registry.get(symbol.slice(0, dot)) : undefined;
    const member = symbol.slice(dot + 1);
    if (parent?.kind === "service" && parent.methods.some((m) => m.name === member)) return parent.file;
    if (parent?.kind === "message" && parent.fields.some((f) => f.name === member)) return parent.file;
    return undefined;
  };

  const withImports = (file: DescFile, sent: Set<string>): Uint8Array[] => {
    const out = [toBinary(FileDescriptorProtoSchema, file.proto)];
    sent.add(file.proto.name);
    const visit = (f: DescFile) => {
      if (sent.has(f.proto.name)) return;
      sent.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      f.dependencies.forEach(visit);
    };
    file.dependencies.forEach(visit);
    return out;
  };

  const fileResponse = (file: DescFile | undefined, what: string, sent: Set<string>) =>
    file
      ? { case: "fileDescriptorResponse" as const, value: { fileDescriptorProto: withImports(file, sent) } }
      : { case: "errorResponse" as const, value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` } };

  return (request: ReflectionRequest, sent: Set<string>) => {
    const req = request.messageRequest;
    switch (req.case) {
      case "listServices":
        return { case: "listServicesResponse" as const, value: { service: serviceNames.map((name) => ({ name })) } };
      case "fileByFilename":
        return fileResponse(files.get(req.value), `file "${req.value}"`, sent);
      case "fileContainingSymbol":
        return fileResponse(fileOfSymbol(req.value), `symbol "${req.value}"`, sent);
      case "fileContainingExtension": {
        const extendee = registry.getMessage(req.value.containingType);
        const extension = extendee && registry.getExtensionFor(extendee, req.value.extensionNumber);
        return fileResponse(extension?.file, `extension ${req.value.extensionNumber} of "${req.value.containingType}"`, sent);
      }
      case "allExtensionNumbersOfType": {
        const extendee = registry.getMessage(req.value);
        if (!extendee) return { case: "errorResponse" as const, value: { errorCode: NOT_FOUND, errorMessage: `type "${req.value}" not found` } };
        const numbers = [...registry].flatMap((desc) => (desc.kind === "extension" && desc.extendee.typeName === req.value ? [desc.number] : []));
        return { case: "allExtensionNumbersResponse" as const, value: { baseTypeName: req.value, extensionNumber: numbers } };
      }
      default:
        return { case: "errorResponse" as const, value: { errorCode: INVALID_ARGUMENT, errorMessage: "no request set" } };
    }
  };
}
