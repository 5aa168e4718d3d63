/**
 * The feed's figures for `npm run bench`: watch latency (commit to receipt)
 * at a fixed ingest rate, and the latency of List pages at random positions.
 * The open watch streams that the ingest-throughput rows run beside are
 * opened here too.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { setMaxListeners } from "node:events";
import pg from "pg";
import { IngestEventService, WatchIngestEventsRequest_Start as Start } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus, IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { encodePageToken, type FeedIdentity } from "../src/feed/position.js";

type Quantiles = { n: number; p50: number; p99: number; max: number };

function quantiles(values: number[]): Quantiles {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  return { n: sorted.length, p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? NaN };
}

const clients = (baseUrl: string, token: string) => {
  const transport = createGrpcTransport({
    baseUrl,
    interceptors: [(next) => (request) => (request.header.set("authorization", `Bearer ${token}`), next(request))],
  });
  return { feed: createClient(IngestEventService, transport), ingest: createClient(IngestService, transport) };
};

/** Opens `count` watch streams from now; `close()` ends them and says how many events each received. */
export function openWatchStreams(baseUrl: string, token: string, count: number) {
  const { feed } = clients(baseUrl, token);
  const controller = new AbortController();
  // Every stream listens on this one signal.
  setMaxListeners(count + 10, controller.signal);
  const received = new Array<number>(count).fill(0);
  let failures = 0;
  const streams = received.map(async (_, i) => {
    try {
      for await (const response of feed.watchIngestEvents({ start: Start.NOW }, { signal: controller.signal })) {
        if (response.ingestEvent) received[i]++;
      }
    } catch {
      if (!controller.signal.aborted) failures++;
    }
  });
  return {
    received,
    async close() {
      controller.abort();
      await Promise.all(streams);
      return { received, failures };
    },
  };
}

/**
 * Commit-to-receipt latency of one open watch, with messages sent at a fixed
 * rate, in two ways: through the service (a commit in the watching process,
 * which wakes its watchers at once) and by INSERTs on a connection of our own
 * (a commit by another process, found by polling). The clock starts when the
 * commit is acknowledged, so the figures include nothing of the ingest itself.
 */
export async function watchLatency(baseUrl: string, token: string, databaseUrl: string, ratePerSecond: number, durationMs: number) {
  const { feed, ingest } = clients(baseUrl, token);
  const controller = new AbortController();
  const receivedAt = new Map<string, number>();
  const watching = (async () => {
    try {
      for await (const response of feed.watchIngestEvents({ start: Start.NOW }, { signal: controller.signal })) {
        if (response.ingestEvent) receivedAt.set(response.ingestEvent.id, performance.now());
      }
    } catch {
      // ended by abort
    }
  })();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  const committedAt = { local: new Map<string, number>(), other: new Map<string, number>() };
  const interval = 1000 / ratePerSecond;
  const started = performance.now();
  let n = 0;
  const pending: Promise<void>[] = [];
  while (performance.now() - started < durationMs) {
    const which = n % 2 === 0 ? "local" : "other";
    const tag = `feed-bench-${n++}`;
    pending.push(
      (which === "local"
        ? ingest.ingestMessage({ source: "web", senderId: tag, content: "latency probe" }).then((r) => r.eventId)
        : db.query<{ id: string }>("INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ('web', $1, 'latency probe') RETURNING id", [tag]).then((r) => r.rows[0].id)
      ).then((id) => void committedAt[which].set(id, performance.now())),
    );
    const next = started + n * interval;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, next - performance.now())));
  }
  await Promise.all(pending);
  const deadline = performance.now() + 5_000;
  const all = () => [...committedAt.local.keys(), ...committedAt.other.keys()];
  while (all().some((id) => !receivedAt.has(id)) && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  controller.abort();
  await watching;
  await db.end();
  const latencies = (commits: Map<string, number>) => [...commits].filter(([id]) => receivedAt.has(id)).map(([id, at]) => Math.max(0, receivedAt.get(id)! - at));
  return {
    sameProcess: quantiles(latencies(committedAt.local)),
    otherProcess: quantiles(latencies(committedAt.other)),
    missing: all().filter((id) => !receivedAt.has(id)).length,
  };
}

/** Latency of ListIngestEvents pages of 100 starting at random positions of the stored feed. */
export async function listPageLatency(baseUrl: string, token: string, databaseUrl: string, requests: number) {
  const { feed } = clients(baseUrl, token);
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  const { rows: keys } = await db.query<{ database_id: string; token_key: Buffer }>("SELECT database_id, token_key FROM crm_feed_identity");
  const identity: FeedIdentity = { databaseId: keys[0].database_id, tokenKey: keys[0].token_key };
  const { rows: total } = await db.query<{ n: string }>("SELECT count(*) AS n FROM crm_ingest_events");
  const positions: string[] = [];
  for (let i = 0; i < 20; i++) {
    const offset = Math.floor(Math.random() * Number(total[0].n));
    const { rows } = await db.query<{ x: string; s: string }>(
      "SELECT feed_xid::text AS x, feed_seq::text AS s FROM crm_ingest_events ORDER BY feed_xid, feed_seq OFFSET $1 LIMIT 1",
      [offset],
    );
    if (rows[0]) positions.push(encodePageToken(identity, { xid: BigInt(rows[0].x), seq: BigInt(rows[0].s) }, {}));
  }
  await db.end();
  const times: number[] = [];
  for (let i = 0; i < requests + 20; i++) {
    const began = performance.now();
    await feed.listIngestEvents({ pageSize: 100, pageToken: i % 4 === 0 ? "" : positions[i % positions.length] });
    if (i >= 20) times.push(performance.now() - began); // the first ones warm up
  }
  // A filter pair no index serves and no stored event matches (the history has
  // no web events): each page examines its bound of rows (FEED_READ_MAX_SCAN)
  // and ends with a token, the worst a filtered reader can ask for.
  const filteredTimes: number[] = [];
  let pageToken = "";
  for (let i = 0; i < 40; i++) {
    const began = performance.now();
    const page = await feed.listIngestEvents({ pageSize: 100, source: "web", status: IngestEventStatus.LINKED, pageToken });
    filteredTimes.push(performance.now() - began);
    pageToken = page.nextPageToken;
  }
  return { events: Number(total[0].n), ...quantiles(times), filtered: quantiles(filteredTimes) };
}
