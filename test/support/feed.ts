import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { IngestEventService, type WatchIngestEventsResponse } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../../gen/aurora/crm/v1/ingest_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { WatchIngestEventsRequestSchema } from "../../gen/aurora/crm/v1/ingest_event_service_pb.js";

/** The transports a feed consumer may use: gRPC over HTTP/2, and Connect over HTTP/1.1. */
export const feedTransports: Record<string, (baseUrl: string, token?: string) => Transport> = {
  "gRPC": (baseUrl, token) => createGrpcTransport({ baseUrl, interceptors: bearer(token) }),
  "Connect over HTTP/1.1": (baseUrl, token) => createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors: bearer(token) }),
};

function bearer(token: string | undefined) {
  return token
    ? [(next: any) => (request: any) => (request.header.set("authorization", `Bearer ${token}`), next(request))]
    : [];
}

export function feedClient(transport: Transport): Client<typeof IngestEventService> {
  return createClient(IngestEventService, transport);
}

export function ingestClient(transport: Transport): Client<typeof IngestService> {
  return createClient(IngestService, transport);
}

/** A watch stream read in the background: what arrived so far, and how to stop it. */
export interface OpenWatch {
  responses: WatchIngestEventsResponse[];
  /** Event ids received, in order. */
  ids(): string[];
  /** The resume token of the last response received. */
  lastToken(): string;
  /** Resolves when the stream ended, with its error (undefined when it ended cleanly or was cancelled). */
  ended: Promise<unknown>;
  cancel(): void;
}

/** Opens a watch and reads it in the background. */
export function openWatch(
  client: Client<typeof IngestEventService>,
  request: MessageInitShape<typeof WatchIngestEventsRequestSchema>,
  onResponse?: (response: WatchIngestEventsResponse) => void,
): OpenWatch {
  const controller = new AbortController();
  const responses: WatchIngestEventsResponse[] = [];
  const ended = (async () => {
    try {
      for await (const response of client.watchIngestEvents(request, { signal: controller.signal })) {
        responses.push(response);
        onResponse?.(response);
      }
      return undefined;
    } catch (error) {
      return controller.signal.aborted ? undefined : error;
    }
  })();
  return {
    responses,
    ids: () => responses.flatMap((response) => (response.ingestEvent ? [response.ingestEvent.id] : [])),
    lastToken: () => responses.at(-1)?.resumeToken ?? "",
    ended,
    cancel: () => controller.abort(),
  };
}

/** Every event id of the feed, by listing it page by page. */
export async function listAllIds(client: Client<typeof IngestEventService>, pageSize = 1000): Promise<string[]> {
  const ids: string[] = [];
  let pageToken = "";
  do {
    const page = await client.listIngestEvents({ pageSize, pageToken });
    ids.push(...page.ingestEvents.map((event) => event.id));
    pageToken = page.nextPageToken;
  } while (pageToken);
  return ids;
}
