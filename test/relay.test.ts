import { toBinary } from "@bufbuild/protobuf";
import { DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type StreamConfig } from "@nats-io/jetstream";
import { connect, headers } from "@nats-io/transport-node";
import { IngestEventSchema } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { toIngestEventMessage } from "../src/feed/ingest-event-message.js";
import { Registry } from "prom-client";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RelayConfig } from "../src/config.js";
import { databaseTagOf, decodeResumeToken, encodeResumeToken, loadFeedIdentity } from "../src/feed/position.js";
import { readDigestKey, senderStreamToken } from "../src/privacy/digest-key.js";
import { ErasureRunner, startErasure } from "../src/privacy/erase-subject.js";
import { FEED_POSITION_HEADER, formatPosition, RESUME_TOKEN_HEADER, type FeedRelay } from "../src/feed/relay/feed-relay.js";
import { soleLeader } from "../src/feed/relay/leader-lock.js";
import { FeedRelay as Relay } from "../src/feed/relay/feed-relay.js";
import { createFeedRelay } from "../src/feed/relay/start-relay.js";
import { createLogger } from "../src/observability/logger.js";
import { createRelayMetrics } from "../src/feed/relay/relay-metrics.js";
import { createTestDatabase, databaseKind, testServerUrl, type TestDatabase } from "./support/database.js";
import { startNats, type TestNats } from "./support/nats.js";
import { requires } from "./support/requirements.js";
import { auditStream, insertEvents, readStream, relayConfig, wholeFeed } from "./support/relay.js";
import { startTestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";

let database: TestDatabase;
let nats: TestNats;
const log = createLogger({ level: "silent" });
const relays: FeedRelay[] = [];
let streams = 0;

beforeAll(async () => {
  [database, nats] = await Promise.all([createTestDatabase(), startNats()]);
});

afterAll(async () => {
  await Promise.all(relays.map((relay) => relay.stop()));
  await Promise.all([database?.close(), nats?.close()]);
});

/** Each test relays to a stream of its own (the feed is shared: the stream starts with every event so far). */
function newStream(): string {
  streams += 1;
  return `TEST_${streams}`;
}

function startRelay(config: RelayConfig, options: { sole?: boolean; registry?: Registry; database?: TestDatabase } = {}): FeedRelay {
  const registry = options.registry ?? new Registry();
  const { sequelize, url } = options.database ?? database;
  const relay = options.sole
    ? new Relay({ sequelize, config, lock: soleLeader(), log, metrics: createRelayMetrics(registry) })
    : createFeedRelay(config, { sequelize, databaseUrl: testServerUrl ? url : undefined, log, registry });
  relays.push(relay);
  relay.start();
  return relay;
}

async function caughtUp(config: RelayConfig, timeoutMs = 30_000, of: TestDatabase = database): Promise<void> {
  const feed = await wholeFeed(of.sequelize);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const messages = await readStream(config.natsUrl, config.stream, config.encoding).catch(() => []);
    if (messages.length >= feed.length) return;
    if (Date.now() > deadline) throw new Error(`stream holds ${messages.length} of ${feed.length} events`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Waits until the stream holds as many messages as the feed of `of` (this file's database by default) and checks it is exactly that feed. */
async function expectExactlyTheFeed(config: RelayConfig, of: TestDatabase = database): Promise<void> {
  await caughtUp(config, 30_000, of);
  const messages = await readStream(config.natsUrl, config.stream, config.encoding);
  expect(auditStream(messages, await wholeFeed(of.sequelize))).toBeUndefined();
}

describe.runIf(requires("nats-server"))(`feed relay (${databaseKind})`, () => {
  it("creates the stream and relays every event once, in feed order, with its id, position and resume token", async () => {
    await insertEvents(database.sequelize, 50, "a");
    await insertEvents(database.sequelize, 1, "b");
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.one", maxAgeSeconds: 3600 });
    const relay = startRelay(config);
    await insertEvents(database.sequelize, 30, "c");
    await expectExactlyTheFeed(config);

    const nc = await connect({ servers: nats.url });
    const info = await (await jetstreamManager(nc)).streams.info(config.stream);
    await nc.close();
    expect(info.config).toMatchObject({
      subjects: ["test.one.>"],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      num_replicas: 1,
      max_age: 3600 * 1e9,
      duplicate_window: 120 * 1e9,
    });

    const identity = await loadFeedIdentity(database.sequelize);
    const key = await readDigestKey(database.sequelize);
    const feed = await wholeFeed(database.sequelize);
    const messages = await readStream(nats.url, config.stream);
    messages.forEach((message, i) => {
      // The sender only as a keyed token: a subject names no one.
      expect(message.subject).toBe(`test.one.web.${senderStreamToken(key, "web", feed[i].senderId)}`);
      expect(message.subject).not.toContain(feed[i].senderId);
      expect(decodeResumeToken(identity, message.resumeToken!)).toEqual(feed[i].position);
      expect(message.event.metadata).toEqual(feed[i].metadata);
      expect(message.event.createdAt).toBeDefined();
    });
    await waitFor(() => relay.status().streamSeq === feed.length);
    expect(relay.status()).toMatchObject({ state: "active", natsConnected: true, streamProblems: [] });
  });

  it("sends the IngestEvent as JSON when asked", async () => {
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.json", encoding: "json" });
    startRelay(config);
    await insertEvents(database.sequelize, 5, "json");
    await expectExactlyTheFeed(config);
  });

  it("carries each event's trace context as a traceparent header, and none for an event stored without one", async () => {
    const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const [traced] = await database.sequelize.query<{ id: string }>(
      "INSERT INTO crm_ingest_events (source, sender_id, content, trace_parent) VALUES ('web', 'traced', 'x', $1) RETURNING id",
      { bind: [traceParent], type: QueryTypes.SELECT },
    );
    const [untraced] = await insertEvents(database.sequelize, 1, "untraced");
    for (const encoding of ["binary", "json"] as const) {
      const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: `test.trace.${encoding}`, encoding });
      startRelay(config);
      await expectExactlyTheFeed(config);
      const messages = await readStream(config.natsUrl, config.stream, encoding);
      expect(messages.find((m) => m.event.id === traced.id)).toMatchObject({ traceParent, event: { traceParent } });
      expect(messages.find((m) => m.event.id === untraced)).toMatchObject({ traceParent: undefined, event: { traceParent: "" } });
    }
  });

  it("stops promptly while NATS has never been reachable", async () => {
    const unreachable = await startNats({ started: false });
    const relay = startRelay(relayConfig(unreachable.url, { stream: newStream() }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(relay.status()).toMatchObject({ state: "starting", natsConnected: false });
    const started = Date.now();
    await relay.stop();
    expect(Date.now() - started).toBeLessThan(5_000);
    await unreachable.close();
  });

  it("reports an existing stream with other settings and leaves it unchanged", async () => {
    const stream = newStream();
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: stream, subjects: ["other.>"], storage: StorageType.Memory });
    const registry = new Registry();
    const relay = startRelay(relayConfig(nats.url, { stream, subjectPrefix: "test.bad" }), { registry });
    await waitFor(() => relay.status().state === "stream_incompatible", 10_000);
    expect(relay.status().streamProblems).toEqual([
      expect.stringContaining('not including "test.bad.>"'),
      expect.stringContaining('storage is "memory", configured "file"'),
      expect.stringContaining("max age"),
    ]);
    expect(await registry.getSingleMetricAsString("aurora_ingest_relay_stream_problems")).toMatch(/ 3$/m);
    const info = await jsm.streams.info(stream);
    expect(info.config.subjects).toEqual(["other.>"]);
    expect(info.state.messages).toBe(0);
    await nc.close();
  });

  it("refuses a stream whose limits can drop events, and accepts one limited by age only", async () => {
    const nc = await connect({ servers: nats.url });
    const jsm = await jetstreamManager(nc);
    const cases: Array<[Partial<StreamConfig>, RegExp]> = [
      [{ max_msgs_per_subject: 1 }, /max_msgs_per_subject is 1: the stream would drop events/],
      [{ max_msgs: 3 }, /max_msgs is 3: the stream would drop events/],
      [{ max_bytes: 1_000_000 }, /max_bytes is 1000000: the stream would drop events/],
      [{ discard: DiscardPolicy.New }, /discard is "new"/],
    ];
    await insertEvents(database.sequelize, 10, "limits");
    const refused = await Promise.all(
      cases.map(async ([limits]) => {
        const stream = newStream();
        const subjectPrefix = `test.limits.${stream}`;
        await jsm.streams.add({ name: stream, subjects: [`${subjectPrefix}.>`], max_age: 3600 * 1e9, ...limits });
        const registry = new Registry();
        const relay = startRelay(relayConfig(nats.url, { stream, subjectPrefix, maxAgeSeconds: 3600 }), { registry });
        return { stream, relay, registry };
      }),
    );
    for (const [i, { stream, relay, registry }] of refused.entries()) {
      await waitFor(() => relay.status().state === "stream_incompatible", 10_000);
      expect(relay.status().streamProblems).toEqual([expect.stringMatching(cases[i][1])]);
      expect(relay.status().lastError).toMatch(cases[i][1]);
      expect(await registry.getSingleMetricAsString("aurora_ingest_relay_stream_incompatible")).toMatch(/ 1$/m);
      expect((await jsm.streams.info(stream)).state.messages).toBe(0);
    }

    // An age limit is the stream's documented retention.
    const stream = newStream();
    await jsm.streams.add({ name: stream, subjects: ["test.aged.>"], max_age: 300 * 1e9, duplicate_window: 120 * 1e9 });
    const registry = new Registry();
    const config = relayConfig(nats.url, { stream, subjectPrefix: "test.aged", maxAgeSeconds: 3600 });
    const relay = startRelay(config, { registry });
    await expectExactlyTheFeed(config);
    expect(relay.status()).toMatchObject({ state: "active", streamProblems: [expect.stringContaining("max age is 300 s")] });
    expect(await registry.getSingleMetricAsString("aurora_ingest_relay_stream_incompatible")).toMatch(/ 0$/m);
    await nc.close();
  });

  it("refuses a stream whose last message another database relayed: two services with one NATS_STREAM", async () => {
    const other = await createTestDatabase();
    try {
      await insertEvents(database.sequelize, 20, "ours");
      await insertEvents(other.sequelize, 30, "theirs");
      const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.shared" });
      const ours = startRelay(config);
      await expectExactlyTheFeed(config);

      const registry = new Registry();
      const theirs = startRelay(config, { database: other, registry });
      await waitFor(() => theirs.status().state === "stream_incompatible", 10_000);
      const [ourTag, theirTag] = [databaseTagOf(await loadFeedIdentity(database.sequelize)), databaseTagOf(await loadFeedIdentity(other.sequelize))];
      const problem = `was relayed from database ${ourTag}, not from this database (${theirTag})`;
      expect(theirs.status().streamProblems).toEqual([expect.stringContaining(problem)]);
      expect(theirs.status().lastError).toContain(problem);
      expect(await registry.getSingleMetricAsString("aurora_ingest_relay_stream_incompatible")).toMatch(/ 1$/m);

      // Both keep storing; the stream keeps one database's feed, whole and in order.
      await insertEvents(other.sequelize, 10, "theirs-2");
      await insertEvents(database.sequelize, 10, "ours-2");
      await expectExactlyTheFeed(config);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(theirs.status().state).toBe("stream_incompatible");
      expect(ours.status()).toMatchObject({ state: "active", streamProblems: [] });
      await expectExactlyTheFeed(config);

      // Two relays of two databases starting at once on an empty stream: one keeps it whole, the other stops.
      for (let round = 0; round < 3; round++) {
        const empty = relayConfig(nats.url, { stream: newStream(), subjectPrefix: `test.race${round}`, maxInFlight: 50, batchSize: 50 });
        const pair = [startRelay(empty), startRelay(empty, { database: other })];
        await waitFor(() => pair.some((relay) => relay.status().state === "stream_incompatible"), 10_000);
        const winner = pair.findIndex((relay) => relay.status().state !== "stream_incompatible");
        expect(winner).toBeGreaterThanOrEqual(0);
        await expectExactlyTheFeed(empty, winner === 0 ? database : other);
        await Promise.all(relays.splice(-2).map((relay) => relay.stop()));
      }

      // /readyz names streams and databases only to a caller with a token.
      const token = "readyz-test-token";
      const server = await startTestServer(other, { apiTokens: [token], relay: theirs });
      try {
        const anonymous = await (await fetch(`${server.baseUrl}/readyz`)).json();
        expect(anonymous.relay).toEqual({ state: "stream_incompatible" });
        const holder = await (await fetch(`${server.baseUrl}/readyz`, { headers: { authorization: `Bearer ${token}` } })).json();
        expect(holder.relay).toMatchObject({ state: "stream_incompatible", stream: config.stream, lastError: expect.stringContaining(problem) });
      } finally {
        await server.server.close();
      }
    } finally {
      await Promise.all(relays.splice(-1).map((relay) => relay.stop()));
      await other.close();
    }
  });

  it("purges an erased sender's messages once the ERASURE event is relayed, keeps everyone else's, and continues without repeating or skipping", async () => {
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.erase" });
    const key = await readDigestKey(database.sequelize);
    const [erasedSender, keptSender] = ["erase-me-5511999990001", "keep-me-5511999990002"];
    const said = async (sender: string, content: string, count: number) =>
      database.sequelize.query(
        `INSERT INTO crm_ingest_events (source, sender_id, content, metadata)
         SELECT 'whatsapp', $1, $2 || ' ' || n, '{}'::jsonb FROM generate_series(1, $3::int) AS n`,
        { bind: [sender, content, count] },
      );
    await said(erasedSender, "secret words", 3);
    await said(keptSender, "kept words", 3);
    // An earlier version relayed the feed so far on <prefix>.<source>, without the sender's token.
    const identity = await loadFeedIdentity(database.sequelize);
    const nc = await connect({ servers: nats.url });
    await (await jetstreamManager(nc)).streams.add({ name: config.stream, subjects: ["test.erase.>"], max_age: 7 * 24 * 3600 * 1e9 });
    const js = jetstream(nc);
    for (const [i, event] of (await wholeFeed(database.sequelize)).entries()) {
      const h = headers();
      h.set(RESUME_TOKEN_HEADER, encodeResumeToken(identity, event.position));
      h.set(FEED_POSITION_HEADER, formatPosition(event.position));
      if (event.traceParent) h.set("traceparent", event.traceParent);
      await js.publish(`test.erase.${event.source}`, toBinary(IngestEventSchema, toIngestEventMessage(event)), { msgID: event.id, headers: h, expect: { lastSequence: i } });
    }
    await nc.close();
    await said(erasedSender, "secret words again", 2);
    const relay = startRelay(config);
    await expectExactlyTheFeed(config);
    const token = senderStreamToken(key, "whatsapp", erasedSender);
    const streamed = await readStream(nats.url, config.stream);
    expect(streamed.filter((m) => m.subject === `test.erase.whatsapp.${token}`)).toHaveLength(2);
    expect(streamed.filter((m) => m.subject === "test.erase.whatsapp")).toHaveLength(6);

    // Through the erasure job, as the privacy API starts it.
    const erase = async () => {
      const subject = { contactIds: [], senders: [{ source: "whatsapp", senderId: erasedSender }] };
      await startErasure(database.sequelize, key, { requestedBy: "relay test", subject, resolved: subject });
      const runner = new ErasureRunner({ sequelize: database.sequelize, digestKey: key, log });
      runner.wake();
      await runner.idle();
      await runner.close();
    };
    await erase();
    // The same person writes again after the erasure: that message stays.
    await said(erasedSender, "after erasure", 1);
    await said(keptSender, "more kept words", 2);

    const feed = await wholeFeed(database.sequelize);
    const expected = feed.filter((event) => !(event.senderId === "" && event.kind !== "ERASURE"));
    const streamIds = async () => (await readStream(nats.url, config.stream)).map((m) => m.event.id);
    await waitFor(async () => (await streamIds()).length === expected.length && (await streamIds()).at(-1) === expected.at(-1)!.id, 20_000);
    const messages = await readStream(nats.url, config.stream);
    expect(messages.map((m) => m.event.id)).toEqual(expected.map((event) => event.id));
    expect(messages.filter((m) => m.subject === `test.erase.whatsapp.${token}`).map((m) => m.event.content)).toEqual(["after erasure 1"]);
    expect(messages.some((m) => m.event.content.startsWith("secret words"))).toBe(false);
    expect(messages.filter((m) => m.subject === "test.erase.whatsapp").map((m) => m.event.content)).toEqual(["kept words 1", "kept words 2", "kept words 3"]);

    // A relay that starts again (and purges again) neither republishes nor skips, nor removes the later message.
    await relay.stop();
    const again = startRelay(config);
    await said(keptSender, "after restart", 3);
    const final = (await wholeFeed(database.sequelize)).filter((event) => !(event.senderId === "" && event.kind !== "ERASURE"));
    await waitFor(async () => (await streamIds()).length >= final.length, 20_000);
    await waitFor(() => again.status().state === "active", 5_000);
    expect(await streamIds()).toEqual(final.map((event) => event.id));

    // The stream's last message gone (purged by hand) and the saved state behind it, as after a crash before a save:
    // the relay counts from the saved state along the feed, so it neither repeats nor skips.
    await again.stop();
    const before = await readStream(nats.url, config.stream);
    const behind = before.at(-4)!;
    const [xid, seq] = behind.position!.split(":");
    await database.sequelize.query("UPDATE crm_feed_relay_state SET feed_xid = $1::xid8, feed_seq = $2, stream_seq = $3 WHERE stream_name = $4", {
      bind: [xid, seq, behind.seq, config.stream],
    });
    const manager = await connect({ servers: nats.url });
    await (await jetstreamManager(manager)).streams.deleteMessage(config.stream, before.at(-1)!.seq);
    await manager.close();
    startRelay(config);
    await said(keptSender, "after the last message was lost", 2);
    const gone = before.at(-1)!.event.id;
    const last = (await wholeFeed(database.sequelize)).filter((event) => !(event.senderId === "" && event.kind !== "ERASURE") && event.id !== gone);
    await waitFor(async () => (await streamIds()).length >= last.length, 20_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await streamIds()).toEqual(last.map((event) => event.id));
  });

  it("keeps every event once through a NATS restart and an outage longer than the duplicate window", async () => {
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.outage", duplicateWindowSeconds: 1, ackTimeoutMs: 500 });
    const relay = startRelay(config);
    await insertEvents(database.sequelize, 200, "before");
    await caughtUp(config);

    await nats.kill();
    await waitFor(() => !relay.status().natsConnected, 10_000);
    // Ingest goes on; the backlog waits in the database, longer than the duplicate window.
    for (let i = 0; i < 5; i++) await insertEvents(database.sequelize, 40, `during-${i}`);
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(relay.status().lastError).toEqual(expect.any(String));
    await nats.start();
    await insertEvents(database.sequelize, 50, "after");
    await expectExactlyTheFeed(config);
    // Recovered: the outage's error no longer describes the relay.
    await waitFor(() => relay.status().lastError === null, 5_000);
    expect(relay.status()).toMatchObject({ state: "active", natsConnected: true, lastError: null });
  });

  it("two relays publishing at once, without a lock, leave each event in the stream once", async () => {
    // Both think they lead (no lock at all): only the expected-last-sequence fencing keeps the stream right.
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.two", batchSize: 20, maxInFlight: 20 });
    const registries = [new Registry(), new Registry()];
    startRelay(config, { sole: true, registry: registries[0] });
    startRelay(config, { sole: true, registry: registries[1] });
    for (let i = 0; i < 20; i++) await insertEvents(database.sequelize, 25, `two-${i}`);
    await expectExactlyTheFeed(config);
  });

  it("refuses a stale relay's publishes once the duplicate window is past, and the stale relay catches up without repeating", async () => {
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.stale", duplicateWindowSeconds: 1, maxInFlight: 1, batchSize: 10 });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let paused = false;
    const staleRegistry = new Registry();
    const stale = new Relay({
      sequelize: database.sequelize,
      config,
      lock: soleLeader(),
      log,
      metrics: createRelayMetrics(staleRegistry),
      hooks: {
        async afterPublish() {
          if (paused) return;
          paused = true;
          await gate;
        },
      },
    });
    relays.push(stale);
    stale.start();
    await waitFor(() => paused, 20_000);
    // Another relay takes the stream far ahead while the first one hangs, past the duplicate window.
    const current = startRelay(config, { sole: true });
    await caughtUp(config);
    await current.stop();
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    release();
    await insertEvents(database.sequelize, 20, "stale");
    await expectExactlyTheFeed(config);
    expect(await staleRegistry.getSingleMetricAsString("aurora_ingest_relay_publish_errors_total")).toMatch(/reason="refused"} [1-9]/);
  });

  it.runIf(databaseKind === "postgres")("elects one relay among replicas through the advisory lock; the other takes over when it stops", async () => {
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.lock" });
    const first = startRelay(config);
    await waitFor(() => first.status().state === "active", 10_000);
    const second = startRelay(config);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(second.status().state).toBe("standby");
    await insertEvents(database.sequelize, 100, "lock");
    await first.stop();
    const stoppedAt = Date.now();
    await waitFor(() => second.status().state === "active", 5_000);
    expect(Date.now() - stoppedAt).toBeLessThan(5_000);
    await insertEvents(database.sequelize, 100, "lock-2");
    await expectExactlyTheFeed(config);
  });

  it.runIf(databaseKind === "postgres")("stops relaying at once when its lock connection is lost", async () => {
    const config = relayConfig(nats.url, { stream: newStream(), subjectPrefix: "test.lost" });
    const relay = startRelay(config);
    await waitFor(() => relay.status().state === "active", 10_000);
    const other = startRelay(config);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const [active, standby] = relay.status().state === "active" ? [relay, other] : [other, relay];
    expect(standby.status().state).toBe("standby");
    // The server ends the leader's lock session, as a failover of PostgreSQL or a network cut would.
    await database.sequelize.query(
      `SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
       WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()`,
    );
    await waitFor(() => active.status().state !== "active", 5_000);
    await waitFor(() => standby.status().state === "active" || active.status().state === "active", 5_000);
    await insertEvents(database.sequelize, 50, "lost");
    await expectExactlyTheFeed(config);
  });
});
