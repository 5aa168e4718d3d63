import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

/**
 * A message of `schema` whose binary encoding is `fields`, each already
 * encoded (a length-delimited field's bytes: a sub-message or a string).
 *
 * Connect serialises every message a stream yields, once per stream. The
 * same event sent to many streams is therefore encoded once per stream,
 * unless the message carries its fields as unknown fields: protobuf-es
 * writes those verbatim (`writeUnknownFields`, on by default), so the
 * encoding work is done here once and each stream only copies bytes. The
 * result encodes to exactly the bytes of the message with those fields set;
 * it is for binary encodings only (JSON leaves unknown fields out).
 */
export function preEncodedMessage<Desc extends DescMessage>(schema: Desc, fields: Array<{ no: number; bytes: Uint8Array }>): MessageShape<Desc> {
  const message = create(schema);
  message.$unknown = fields.map(({ no, bytes }) => ({ no, wireType: WireType.LengthDelimited, data: new BinaryWriter().bytes(bytes).finish() }));
  return message;
}

/** Whether a request's Content-Type asks for the binary protobuf encoding (gRPC, gRPC-Web or Connect), not JSON. */
export function wantsBinary(contentType: string | null): boolean {
  return contentType !== null && !/json/i.test(contentType);
}
