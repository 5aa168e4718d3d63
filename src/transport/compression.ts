import { Code, ConnectError } from "@connectrpc/connect";
import type { Compression } from "@connectrpc/connect/protocol";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";

/**
 * The request encodings the server accepts (gzip and brotli, Connect's own),
 * with a body that does not decompress answered `invalid_argument`.
 *
 * connect-node labels some broken bodies `internal` (a truncated gzip stream
 * is zlib's Z_BUF_ERROR, which it does not map), so a client's bad bytes
 * would be answered and logged as a server fault. On a server every byte to
 * decompress came from the client. A body that decompresses past the size
 * limit stays `resource_exhausted` (413 on `/ingest/message`).
 */
export const acceptedCompressions: Compression[] = [compressionGzip, compressionBrotli].map((compression) => ({
  name: compression.name,
  compress: (bytes) => compression.compress(bytes),
  decompress: (bytes, readMaxBytes) =>
    compression.decompress(bytes, readMaxBytes).catch((error: unknown) => {
      const cause = ConnectError.from(error);
      if (cause.code === Code.ResourceExhausted) throw cause;
      throw new ConnectError(`the request body is not valid ${compression.name} data`, Code.InvalidArgument, undefined, undefined, error);
    }),
}));
