import { setTimeout as sleep } from "node:timers/promises";
import { toBinary, toJsonString } from "@bufbuild/protobuf";
import {
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type PubAck,
  type StoredMsg,
  type StreamConfig,
} from "@nats-io/jetstream";
import { connect, headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { IngestEventSchema } from "../../../gen/aurora/crm/v1/ingest_event_service_pb.js";
import type { RelayConfig } from "../../config.js";
import type { Logger } from "../../observability/logger.js";
import type { RelayMetrics } from "./relay-metrics.js";
import { readDigestKey, senderStreamToken } from "../../privacy/digest-key.js";
import { toIngestEventMessage } from "../ingest-event-message.js";
import {
  databaseTagOf,
  decodeResumeToken,
  encodeResumeToken,
  FEED_START,
  loadFeedIdentity,
  resumeTokenDatabaseTag,
  type FeedIdentity,
  type FeedPosition,
} from "../position.js";
import { readFeed, type FeedEvent } from "../read-feed.js";
import type { LeaderLock } from "./leader-lock.js";
import { loadRelayState, relayBacklog, saveRelayState } from "./relay-state.js";

/** Headers each message carries besides `Nats-Msg-Id` (the event id). */
export const RESUME_TOKEN_HEADER = "Aurora-Resume-Token";
/** The feed position in plain text, `<xid>:<seq>`: what the relay reconciles with. */
export const FEED_POSITION_HEADER = "Aurora-Feed-Position";
/** The W3C trace context the event was stored in, when it has one: consumers link their spans to it. */
export const TRACEPARENT_HEADER = "traceparent";
/** Set by JetStream from the publish's `msgID`: the event id. */
const MSG_ID_HEADER = "Nats-Msg-Id";

/** What `/readyz` shows of the relay. */
export interface RelayStatus {
  /** standby: another replica relays; active: this one does; stream_incompatible: the stream's settings forbid relaying. */
  state: "starting" | "standby" | "active" | "stream_incompatible" | "retrying" | "stopped";
  stream: string;
  natsConnected: boolean;
  /** The feed position (`xid:seq`) and stream sequence of the last event the stream acknowledged, as far as this replica knows. */
  position: string | null;
  streamSeq: number | null;
  lagEvents: number | null;
  lagSeconds: number | null;
  /** Differences between the existing stream and the configuration. */
  streamProblems: string[];
  lastError: string | null;
}

/** Points where tests stop the relay dead (kill -9) to check that nothing is lost or repeated. */
export interface RelayHooks {
  /** A publish has been sent; its acknowledgement may or may not have come back. */
  afterPublish?(event: FeedEvent, streamSeq: number): Promise<void> | void;
  /** The stream acknowledged an event; its position is not saved yet. */
  afterAck?(event: FeedEvent, streamSeq: number): Promise<void> | void;
}

export interface FeedRelayOptions {
  sequelize: Sequelize;
  config: RelayConfig;
  lock: LeaderLock;
  log: Logger;
  metrics: RelayMetrics;
  hooks?: RelayHooks;
}

/** The stream's settings are such that relaying to it could lose or repeat events; an operator must fix them. */
class StreamIncompatibleError extends Error {}
/** The stream is not where this relay expected it to be: another relay wrote, or a publish's fate is unknown. */
class StreamMovedError extends Error {}

interface Published {
  event: FeedEvent;
  streamSeq: number;
  ack: Promise<PubAck>;
  settled: boolean;
}

/**
 * Relays the feed to a JetStream stream, exactly once and in feed order
 * (docs/relay.md). Only the replica holding the leader lock publishes. On
 * taking over, and after any failure, it reconciles with the stream's last
 * message; each publish states the stream sequence it expects to follow
 * (`Nats-Expected-Last-Sequence`), so a stale relay's publish is refused and
 * never duplicates or reorders an event. NATS being down only grows the
 * backlog: the relay never touches the ingest path.
 */
export class FeedRelay {
  private readonly sequelize: Sequelize;
  private readonly config: RelayConfig;
  private readonly lock: LeaderLock;
  private readonly log: Logger;
  private readonly metrics: RelayMetrics;
  private readonly hooks: RelayHooks | undefined;
  private readonly stopping = new AbortController();
  private readonly subjects: string;
  private running: Promise<void> | undefined;
  private nc: NatsConnection | undefined;
  private js: JetStreamClient | undefined;
  private jsm: JetStreamManager | undefined;
  private identity: FeedIdentity | undefined;
  /** The database's digest key: subjects carry a keyed token of the sender, by which an erasure purges them. */
  private digestKey: Buffer | undefined;
  private state: RelayStatus;
  private saved: { position: FeedPosition; streamSeq: number } | undefined;

  constructor(options: FeedRelayOptions) {
    this.sequelize = options.sequelize;
    this.config = options.config;
    this.lock = options.lock;
    this.log = options.log.child({ component: "relay", stream: options.config.stream });
    this.metrics = options.metrics;
    this.hooks = options.hooks;
    this.subjects = `${options.config.subjectPrefix}.>`;
    this.state = {
      state: "starting",
      stream: options.config.stream,
      natsConnected: false,
      position: null,
      streamSeq: null,
      lagEvents: null,
      lagSeconds: null,
      streamProblems: [],
      lastError: null,
    };
    this.metrics.active.set(0);
  }

  /** Starts relaying in the background; never throws, never blocks start-up. */
  start(): void {
    this.running ??= this.run().catch((error: unknown) => {
      if (!this.stopping.signal.aborted) this.log.error({ err: error }, "relay stopped unexpectedly");
    });
  }

  status(): RelayStatus {
    return { ...this.state, streamProblems: [...this.state.streamProblems] };
  }

  /** Stops publishing, gives up leadership and closes the NATS connection. */
  async stop(): Promise<void> {
    this.stopping.abort(new Error("relay stopping"));
    // A first connection to an unreachable NATS cannot be cancelled: shutdown does not wait for it.
    await Promise.race([this.running, sleep(2_000)]);
    await this.lock.release();
    await this.nc?.close().catch(() => undefined);
    this.metrics.active.set(0);
    this.state.state = "stopped";
  }

  private async run(): Promise<void> {
    const signal = this.stopping.signal;
    void this.watchBacklog(signal);
    this.identity = await this.untilDone(() => loadFeedIdentity(this.sequelize), "database", signal);
    this.digestKey = await this.untilDone(() => readDigestKey(this.sequelize), "database", signal);
    // Keeps trying to connect, and reconnecting, for as long as the relay runs.
    this.nc = await connect({
      servers: this.config.natsUrl.split(",").map((url) => url.trim()),
      name: "aurora-crm-ingest relay",
      waitOnFirstConnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
    });
    if (signal.aborted) {
      await this.nc.close();
      return;
    }
    this.state.natsConnected = true;
    void this.watchConnection(this.nc);
    this.js = jetstream(this.nc);
    this.jsm = await jetstreamManager(this.nc, { checkAPI: false });
    this.log.info(`relay connected to NATS ${this.nc.getServer()}; waiting for the relay lock`);

    while (!signal.aborted) {
      this.state.state = "standby";
      let term: AbortSignal;
      try {
        term = await this.lock.acquire(signal);
      } catch {
        break;
      }
      this.metrics.active.set(1);
      this.state.state = "active";
      this.log.info("relay lock taken: this replica relays the feed");
      await this.lead(AbortSignal.any([term, signal]));
      this.metrics.active.set(0);
      this.metrics.streamIncompatible.set(0);
      if (!signal.aborted) this.log.warn("relay stopped publishing: leadership lost; standing by");
    }
  }

  /** While leading: make sure of the stream, reconcile, relay; on failure back off and start over. */
  private async lead(signal: AbortSignal): Promise<void> {
    let backoffMs = 250;
    while (!signal.aborted) {
      try {
        await this.ensureStream();
        const start = await this.reconcile();
        // Recovered: what went wrong before no longer describes the relay.
        this.state.state = "active";
        this.state.lastError = null;
        this.metrics.streamIncompatible.set(0);
        backoffMs = 250;
        await this.pump(start, signal);
      } catch (error) {
        if (signal.aborted) return;
        const reason = errorReason(error);
        this.metrics.publishErrors.inc({ reason });
        this.state.lastError = (error as Error).message;
        this.state.state = error instanceof StreamIncompatibleError ? "stream_incompatible" : "retrying";
        this.metrics.streamIncompatible.set(error instanceof StreamIncompatibleError ? 1 : 0);
        this.log.warn({ err: error, reason }, `relay paused (${reason}); reconciling with the stream in ${backoffMs} ms`);
        await sleep(backoffMs, undefined, { signal }).catch(() => undefined);
        backoffMs = Math.min(backoffMs * 2, 5_000);
      }
    }
  }

  /** Creates the stream when absent; checks an existing one and reports, never changes, what differs. */
  private async ensureStream(): Promise<void> {
    const jsm = this.jsm!;
    const wanted: Partial<StreamConfig> & { name: string } = {
      name: this.config.stream,
      subjects: [this.subjects],
      retention: RetentionPolicy.Limits,
      storage: this.config.storage === "file" ? StorageType.File : StorageType.Memory,
      num_replicas: this.config.replicas,
      max_age: nanos(this.config.maxAgeSeconds * 1000),
      duplicate_window: nanos(this.config.duplicateWindowSeconds * 1000),
    };
    let existing: StreamConfig;
    try {
      existing = (await jsm.streams.info(this.config.stream)).config;
    } catch (error) {
      if (!(error instanceof JetStreamApiError) || error.code !== 10059) throw error;
      await jsm.streams.add(wanted);
      this.log.info(
        { subjects: wanted.subjects, storage: wanted.storage, replicas: wanted.num_replicas, maxAgeSeconds: this.config.maxAgeSeconds },
        `created JetStream stream ${this.config.stream}`,
      );
      this.reportStreamProblems([]);
      return;
    }
    const fatal: string[] = [];
    const differences: string[] = [];
    if (!existing.subjects?.includes(this.subjects)) fatal.push(`subjects are ${JSON.stringify(existing.subjects ?? [])}, not including "${this.subjects}"`);
    if (existing.retention !== RetentionPolicy.Limits) fatal.push(`retention is "${existing.retention}", not "limits": messages would disappear once consumed`);
    // An age limit is the stream's documented retention; a count or size limit drops events whether or not anyone read them.
    const limits = (["max_msgs", "max_msgs_per_subject", "max_bytes"] as const).filter((limit) => (existing[limit] ?? -1) > 0);
    if (limits.length > 0) {
      fatal.push(`${limits.map((limit) => `${limit} is ${existing[limit]}`).join(", ")}: the stream would drop events before consumers read them; only max_age may limit it`);
    }
    if (existing.deny_purge || existing.deny_delete) fatal.push(`deny_purge or deny_delete is set: erasures could not remove the erased events' messages`);
    if (existing.discard === DiscardPolicy.New) fatal.push(`discard is "new": the stream would refuse events once full; use "old" with max_age only`);
    if (existing.storage !== wanted.storage) differences.push(`storage is "${existing.storage}", configured "${wanted.storage}"`);
    if (existing.num_replicas !== wanted.num_replicas) differences.push(`replicas are ${existing.num_replicas}, configured ${wanted.num_replicas}`);
    if (existing.max_age !== wanted.max_age) differences.push(`max age is ${existing.max_age / 1e9} s, configured ${this.config.maxAgeSeconds} s`);
    if (existing.duplicate_window !== wanted.duplicate_window) {
      differences.push(`duplicate window is ${existing.duplicate_window / 1e9} s, configured ${this.config.duplicateWindowSeconds} s`);
    }
    const problems = [...fatal, ...differences];
    if (problems.join() !== this.state.streamProblems.join() && problems.length > 0) {
      this.log.warn({ problems }, `JetStream stream ${this.config.stream} differs from the configuration; it is left unchanged`);
    }
    this.reportStreamProblems(problems);
    if (fatal.length > 0) throw new StreamIncompatibleError(`stream ${this.config.stream} cannot take the feed: ${fatal.join("; ")}`);
  }

  private reportStreamProblems(problems: string[]): void {
    this.state.streamProblems = problems;
    this.metrics.streamProblems.set(problems.length);
  }

  /**
   * Where to continue: after the stream's last message, read from its
   * position header. The saved state is used only when the stream cannot
   * say (its last message expired); an empty stream gets the whole feed.
   */
  private async reconcile(): Promise<{ position: FeedPosition; streamSeq: number }> {
    const jsm = this.jsm!;
    const info = await jsm.streams.info(this.config.stream);
    const lastSeq = info.state.last_seq;
    const saved = await loadRelayState(this.sequelize, this.config.stream);
    let start: { position: FeedPosition; streamSeq: number };
    if (lastSeq === 0) {
      if (saved && saved.streamSeq > 0) {
        this.log.warn(`stream ${this.config.stream} is empty although ${saved.streamSeq} message(s) were relayed to it: it was recreated; relaying the whole feed again`);
      }
      start = { position: FEED_START, streamSeq: 0 };
    } else {
      const last = await jsm.streams.getMessage(this.config.stream, { seq: lastSeq }).catch((error: unknown) => {
        if (error instanceof JetStreamApiError && error.code === 10037) return null;
        throw error;
      });
      const header = last?.header?.get(FEED_POSITION_HEADER);
      if (last && header) {
        this.checkOwnMessage(last);
        start = { position: parsePosition(header), streamSeq: lastSeq };
        if (saved && saved.streamSeq > lastSeq) {
          this.log.error(`stream ${this.config.stream} ends at sequence ${lastSeq} but the relay had reached ${saved.streamSeq}: it lost messages; relaying again from its last one`);
        }
      } else if (last) {
        throw this.incompatible(`the last message of stream ${this.config.stream} (sequence ${lastSeq}) has no ${FEED_POSITION_HEADER} header: something else publishes to ${this.subjects}`);
      } else if (saved && saved.streamSeq <= lastSeq) {
        // Gone (expired, or purged by an erasure): messages after the saved state are the feed events after it, in order.
        start = { position: await this.positionAtSequence(saved, lastSeq), streamSeq: lastSeq };
      } else if (saved) {
        this.log.error(
          `the last message of stream ${this.config.stream} (sequence ${lastSeq}) is gone and the saved state names sequence ${saved.streamSeq}: events relayed in between may be relayed again`,
        );
        start = { position: saved.position, streamSeq: lastSeq };
      } else {
        throw this.incompatible(`the last message of stream ${this.config.stream} is gone and no relay state is saved: cannot tell where to continue`);
      }
    }
    // Erasures relayed after the last save may have stopped before their purge: purging again is harmless.
    if (saved && saved.streamSeq < start.streamSeq && lastSeq > 0) await this.positionAtSequence(saved, start.streamSeq);
    this.log.info({ position: formatPosition(start.position), streamSeq: start.streamSeq }, "relay reconciled with the stream");
    // A stream that went back (recreated, lost messages) takes the saved state back with it.
    await this.save(start, saved !== undefined && saved.streamSeq > start.streamSeq);
    return start;
  }

  /**
   * Refuses a stream whose last message was relayed from another database:
   * positions of one database mean nothing in another, and the advisory
   * lock and saved state are per database, so two services would take turns
   * overwriting each other's place. The database is the one that signed the
   * message's resume token (every version of the relay has set it).
   */
  private checkOwnMessage(message: StoredMsg): void {
    const token = message.header?.get(RESUME_TOKEN_HEADER) ?? "";
    try {
      decodeResumeToken(this.identity!, token);
      return;
    } catch {
      const ours = databaseTagOf(this.identity!);
      const theirs = resumeTokenDatabaseTag(token);
      const whose = theirs === undefined ? "carries no resume token" : theirs === ours ? "carries a resume token this database did not sign" : `was relayed from database ${theirs}`;
      throw this.incompatible(
        `the last message of stream ${this.config.stream} (sequence ${message.seq}) ${whose}, not from this database (${ours}): ` +
          `two databases' relays share the stream; give each its own NATS_STREAM and NATS_SUBJECT_PREFIX (docs/relay.md)`,
      );
    }
  }

  /**
   * The feed position of stream message `streamSeq`, counted from the saved
   * state: message `saved.streamSeq + n` is the n-th feed event after the
   * saved position, since the stream is the feed, in order, once. Purges
   * again, on the way, for the erasures among those events.
   */
  private async positionAtSequence(saved: { position: FeedPosition; streamSeq: number }, streamSeq: number): Promise<FeedPosition> {
    let position = saved.position;
    let seq = saved.streamSeq;
    while (seq < streamSeq) {
      const { events } = await readFeed(this.sequelize, { after: position, limit: Math.min(this.config.batchSize, streamSeq - seq) });
      if (events.length === 0) {
        throw this.incompatible(`stream ${this.config.stream} has ${streamSeq - seq} message(s) more than the feed has events after the saved state`);
      }
      for (const event of events) {
        seq += 1;
        if (event.kind === "ERASURE") await this.purgeErased(event, seq);
      }
      position = events.at(-1)!.position;
    }
    return position;
  }

  /**
   * Removes from the stream every message of the events an erasure erased,
   * once its ERASURE event (stream sequence `erasureSeq`) is in the stream:
   * by the senders' subject tokens (`<prefix>.*.<token>`), only below
   * `erasureSeq`, so a later message of the same sender stays; and, among
   * messages published before subjects carried the token
   * (`<prefix>.<source>`), those whose event this erasure erased, found by
   * reading each of them (they age out with the stream's max age). Every
   * step can be repeated.
   */
  private async purgeErased(event: FeedEvent, erasureSeq: number): Promise<void> {
    const requestId = event.metadata.privacy_request_id;
    if (typeof requestId !== "string") return;
    const jsm = this.jsm!;
    const [row] = await this.sequelize.query<{ stream_tokens: string[] }>("SELECT stream_tokens FROM crm_privacy_erasures WHERE request_id = $1::uuid", {
      bind: [requestId],
      type: QueryTypes.SELECT,
    });
    let purged = 0;
    for (const token of row?.stream_tokens ?? []) {
      purged += (await jsm.streams.purge(this.config.stream, { filter: `${this.config.subjectPrefix}.*.${token}`, seq: erasureSeq })).purged;
    }
    purged += await this.deleteLegacyMessages(requestId, erasureSeq);
    this.log.info({ privacyRequestId: requestId, erasureSeq, purged }, "relay purged the erased events' messages from the stream");
  }

  /** Deletes the messages on `<prefix>.<source>` (the subjects of earlier versions) below `beforeSeq` whose events `requestId` erased. */
  private async deleteLegacyMessages(requestId: string, beforeSeq: number): Promise<number> {
    const jsm = this.jsm!;
    const legacy = `${this.config.subjectPrefix}.*`;
    const info = await jsm.streams.info(this.config.stream, { subjects_filter: legacy });
    if (Object.keys(info.state.subjects ?? {}).length === 0) return 0;
    let deleted = 0;
    let seq = info.state.first_seq;
    for (let done = false; !done; ) {
      const batch = new Map<string, number>();
      while (batch.size < 500) {
        // The server has answered next_by_subj since 2.9; this client types it for direct gets only.
        const next = { next_by_subj: legacy, seq } as unknown as { seq: number };
        const message = await jsm.streams.getMessage(this.config.stream, next).catch((error: unknown) => {
          if (error instanceof JetStreamApiError && error.code === 10037) return null;
          throw error;
        });
        if (!message || message.seq >= beforeSeq) {
          done = true;
          break;
        }
        batch.set(message.header?.get(MSG_ID_HEADER) ?? "", message.seq);
        seq = message.seq + 1;
      }
      if (batch.size === 0) break;
      const erased = await this.sequelize.query<{ id: string }>(
        "SELECT id::text AS id FROM crm_ingest_events WHERE id::text = ANY($1::text[]) AND metadata->>'privacy_request_id' = $2 AND kind <> 'ERASURE'",
        { bind: [[...batch.keys()], requestId], type: QueryTypes.SELECT },
      );
      for (const { id } of erased) {
        // erase: the message's bytes are overwritten, not only unlinked.
        if (await jsm.streams.deleteMessage(this.config.stream, batch.get(id)!, true).catch(() => false)) deleted += 1;
      }
    }
    return deleted;
  }

  /** A reason to refuse the stream, listed with its settings' problems in `/readyz`. */
  private incompatible(problem: string): StreamIncompatibleError {
    this.reportStreamProblems([...this.state.streamProblems, problem]);
    return new StreamIncompatibleError(problem);
  }

  /**
   * Reads the feed and publishes without waiting for each acknowledgement:
   * up to `maxInFlight` publishes are on the wire at once, each expecting the
   * sequence of the one before. Acknowledgements are checked in order; the
   * first that fails ends the run (the caller reconciles).
   */
  private async pump(start: { position: FeedPosition; streamSeq: number }, signal: AbortSignal): Promise<void> {
    const pending: Published[] = [];
    let readPosition = start.position;
    let nextSeq = start.streamSeq + 1;
    let acked = start;
    let savedAt = Date.now();

    const settleOldest = async () => {
      const published = pending.shift()!;
      const ack = await published.ack;
      // A duplicate at the expected sequence is this very event, stored there by another relay: the stream is as expected.
      if (ack.seq !== published.streamSeq) {
        throw new StreamMovedError(`stream acknowledged event ${published.event.id} as sequence ${ack.seq}${ack.duplicate ? " (duplicate)" : ""}, expected ${published.streamSeq}`);
      }
      this.metrics.published.inc();
      // Before the position moves past it: a relay that stops here purges again when it reconciles.
      if (published.event.kind === "ERASURE") await this.purgeErased(published.event, ack.seq);
      acked = { position: published.event.position, streamSeq: ack.seq };
      if (this.hooks?.afterAck) await this.hooks.afterAck(published.event, ack.seq);
    };
    const saveAcked = async (force: boolean) => {
      if (acked.streamSeq === this.saved?.streamSeq || (!force && Date.now() - savedAt < 200)) return;
      savedAt = Date.now();
      await this.save(acked);
    };

    try {
      while (!signal.aborted) {
        const { events } = await readFeed(this.sequelize, { after: readPosition, limit: this.config.batchSize });
        if (events.length === 0) {
          while (pending.length > 0) await settleOldest();
          await saveAcked(true);
          await sleep(this.config.pollMs, undefined, { signal }).catch(() => undefined);
          continue;
        }
        for (const event of events) {
          // The first publish after reconciling goes alone: once it lands, the stream's last message is this
          // database's, so no other database's relay can land one in between (its publishes expect other sequences).
          if (pending.length >= (acked === start ? 1 : this.config.maxInFlight)) await settleOldest();
          // Leadership can end while waiting: not one more publish then.
          if (signal.aborted) return;
          pending.push(this.publish(event, nextSeq));
          if (this.hooks?.afterPublish) await this.hooks.afterPublish(event, nextSeq);
          nextSeq += 1;
        }
        readPosition = events.at(-1)!.position;
        while (pending[0]?.settled) await settleOldest();
        await saveAcked(false);
      }
    } finally {
      // Whatever is still on the wire lands or is refused before anyone reconciles.
      await Promise.allSettled(pending.map((published) => published.ack));
    }
  }

  private publish(event: FeedEvent, streamSeq: number): Published {
    const message = toIngestEventMessage(event);
    const data = this.config.encoding === "json" ? Buffer.from(toJsonString(IngestEventSchema, message)) : toBinary(IngestEventSchema, message);
    const h = headers();
    h.set(RESUME_TOKEN_HEADER, encodeResumeToken(this.identity!, event.position));
    h.set(FEED_POSITION_HEADER, formatPosition(event.position));
    h.set("Content-Type", this.config.encoding === "json" ? "application/json" : "application/protobuf");
    if (event.traceParent) h.set(TRACEPARENT_HEADER, event.traceParent);
    const published: Published = {
      event,
      streamSeq,
      settled: false,
      ack: this.js!.publish(this.subjectOf(event), data, {
        msgID: event.id,
        headers: h,
        expect: { lastSequence: streamSeq - 1 },
        timeout: this.config.ackTimeoutMs,
      }),
    };
    void published.ack.then(
      () => {
        published.settled = true;
        this.metrics.commitToAck.observe((Date.now() - event.createdAt.getTime()) / 1000);
      },
      () => (published.settled = true),
    );
    return published;
  }

  /** `<prefix>.<source>.<token>`: the token stands for the sender (a keyed digest that names no one), so an erasure can purge the sender's messages. */
  private subjectOf(event: FeedEvent): string {
    return `${this.config.subjectPrefix}.${subjectToken(event.source)}.${senderStreamToken(this.digestKey!, event.source, event.senderId)}`;
  }

  private async save(state: { position: FeedPosition; streamSeq: number }, rewind = false): Promise<void> {
    await saveRelayState(this.sequelize, this.config.stream, state, rewind);
    this.saved = state;
    this.state.position = formatPosition(state.position);
    this.state.streamSeq = state.streamSeq;
  }

  /** Every replica reports the backlog from the saved state, so the lag is visible whichever one relays. */
  private async watchBacklog(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        const backlog = await relayBacklog(this.sequelize, this.config.stream, 100_000);
        const seconds = backlog.oldestCreatedAt ? Math.max(0, (Date.now() - backlog.oldestCreatedAt.getTime()) / 1000) : 0;
        this.metrics.lagEvents.set(backlog.events);
        this.metrics.lagSeconds.set(seconds);
        this.state.lagEvents = backlog.events;
        this.state.lagSeconds = seconds;
      } catch {
        // The database health check reports an unreachable database.
      }
      await sleep(1_000, undefined, { signal }).catch(() => undefined);
    }
  }

  private async watchConnection(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") {
        this.state.natsConnected = false;
        this.log.warn("relay lost its NATS connection; events wait in the database until it is back");
      } else if (status.type === "reconnect") {
        this.state.natsConnected = true;
        this.log.info(`relay reconnected to NATS ${nc.getServer()}`);
      }
    }
  }

  /** Retries `action` until it succeeds or the relay stops. */
  private async untilDone<T>(action: () => Promise<T>, reason: string, signal: AbortSignal): Promise<T> {
    for (;;) {
      try {
        const result = await action();
        this.state.lastError = null;
        return result;
      } catch (error) {
        if (signal.aborted) throw error;
        this.metrics.publishErrors.inc({ reason });
        this.state.lastError = (error as Error).message;
        await sleep(1_000, undefined, { signal }).catch(() => undefined);
      }
    }
  }
}

/** `<xid>:<seq>`, the position header's form. */
export function formatPosition(position: FeedPosition): string {
  return `${position.xid}:${position.seq}`;
}

export function parsePosition(text: string): FeedPosition {
  const match = /^(\d+):(\d+)$/.exec(text);
  if (!match) throw new StreamIncompatibleError(`${FEED_POSITION_HEADER} "${text}" is not <xid>:<seq>`);
  return { xid: BigInt(match[1]), seq: BigInt(match[2]) };
}

/** A source as a subject token; sources are lower-case tokens already, but events stored before that rule may not be. */
function subjectToken(source: string): string {
  return source.replace(/[^A-Za-z0-9_-]/g, "_") || "_";
}

function errorReason(error: unknown): string {
  if (error instanceof StreamIncompatibleError) return "stream";
  if (error instanceof StreamMovedError) return "refused";
  if (error instanceof JetStreamApiError) return error.code === 10071 ? "refused" : "nats";
  const name = (error as Error)?.name ?? "";
  if (/timeout/i.test(name) || /timeout|timed out/i.test((error as Error)?.message ?? "")) return "timeout";
  if (/Sequelize|Database|Connection(Refused|Error)/.test(name)) return "database";
  return "nats";
}
