import { createHmac } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { QueryTypes, UniqueConstraintError, type Transaction } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import type { FeedNotifier } from "../feed/feed-notifier.js";
import type { Logger } from "../observability/logger.js";
import { externalIdDigest, senderStreamToken } from "./digest-key.js";
import { describeSubject, type PrivacySubject } from "./privacy-subject.js";

/**
 * What an erased event keeps and what replaces the rest (docs/privacy.md,
 * "What an erased event looks like"). `sender_id` becomes "", which no
 * stored message can have (ingest refuses a blank sender): it marks the row
 * as erased, so a later erasure of the same contact skips it.
 */
export const ERASED = {
  content: "",
  senderId: "",
  /** An ERROR event keeps its status; its text, which can quote the sender, becomes this. */
  error: "erased",
} as const;

/** The source of the events that record an erasure or a retention run. */
export const ERASURE_EVENT_SOURCE = "privacy";

/** Events erased per transaction: short enough never to hold the feed's horizon back for long. */
export const ERASURE_BATCH_ROWS = 1000;

/** The subject of an erasure job, as it is kept while the job runs: contact ids and senders, sorted. */
interface JobSubject {
  contactIds: string[];
  senders: Array<{ source: string; senderId: string }>;
}

/**
 * Starts erasing a person's data, or finds the erasure of the same subject
 * already running: records the request (the audit trail, with no personal
 * data) and its job in one transaction and returns the request's id. The
 * job is carried out by an ErasureRunner; `resolved` is the subject with the
 * contacts its senders resolve to (resolveSubject).
 */
export async function startErasure(
  sequelize: Sequelize,
  key: Buffer,
  request: { requestedBy: string; subject: PrivacySubject; resolved: PrivacySubject },
): Promise<{ requestId: string; started: boolean }> {
  const subject = jobSubject(request.resolved);
  // The digest of what was asked, so a retry finds its job; it names no one.
  const digest = createHmac("sha256", key).update(JSON.stringify(jobSubject(request.subject)), "utf8").digest("hex");
  const described = describeSubject(request.subject);
  const attempt = () =>
    sequelize.transaction(async (transaction) => {
      const running = await runningJob(sequelize, digest, transaction);
      if (running) return { requestId: running, started: false };
      const [row] = await sequelize.query<{ request_id: string }>(
        `WITH request AS (
           INSERT INTO crm_privacy_requests (kind, requested_by, subject_contacts, subject_senders, subject_sources)
           VALUES ('ERASURE', $1, $2, $3, $4::text[]) RETURNING id)
         INSERT INTO crm_privacy_erasures (request_id, kind, subject_digest, subject)
         SELECT id, 'ERASURE', $5, $6::jsonb FROM request RETURNING request_id`,
        {
          bind: [request.requestedBy, described.contacts, described.senders, described.sources, digest, JSON.stringify(subject)],
          transaction,
          type: QueryTypes.SELECT,
        },
      );
      return { requestId: row.request_id, started: true };
    });
  try {
    return await attempt();
  } catch (error) {
    // The same subject started at the same moment elsewhere: the unique index chose; answer with that job.
    if (error instanceof UniqueConstraintError) return attempt();
    throw error;
  }
}

async function runningJob(sequelize: Sequelize, digest: string, transaction: Transaction): Promise<string | undefined> {
  const [row] = await sequelize.query<{ request_id: string }>(
    "SELECT request_id FROM crm_privacy_erasures WHERE subject_digest = $1 AND state = 'RUNNING'",
    { bind: [digest], transaction, type: QueryTypes.SELECT },
  );
  return row?.request_id;
}

function jobSubject(subject: PrivacySubject): JobSubject {
  const senders = new Map(subject.senders.map((sender) => [`${sender.source}\u0000${sender.senderId}`, sender]));
  return {
    contactIds: [...new Set(subject.contactIds.map((id) => id.toLowerCase()))].sort(),
    senders: [...senders.keys()].sort().map((key) => ({ source: senders.get(key)!.source, senderId: senders.get(key)!.senderId })),
  };
}

/** What the job runner needs. */
export interface ErasureRunnerOptions {
  sequelize: Sequelize;
  /** The database's digest key (readDigestKey). */
  digestKey: Buffer;
  log: Logger;
  /** Told when an ERASURE event is committed, so this process's watchers read it at once. */
  feedNotifier?: FeedNotifier;
  batchRows?: number;
  /**
   * Pause after each batch, so ingest keeps most of the database meanwhile:
   * 100,000 events take about 15 s unpaced on 2 cores and triple ingest's
   * p99 (bench/erasure.ts); paced, well within the 60 s target.
   */
  pauseMs?: number;
  /** How often `start()` looks for unfinished jobs (another replica's, or one this process was stopped in). */
  resumeIntervalMs?: number;
  /** EVENT_CONTENT_RETENTION_DAYS: with `start()`, a retention run is started every `retentionIntervalMs`; 0: none. */
  retentionDays?: number;
  retentionIntervalMs?: number;
}

/**
 * Carries out erasure jobs, a batch per short transaction. Each batch locks
 * its job's row (SKIP LOCKED): replicas never work on one job at once, and
 * the job's cursor and counts move with the rows they describe, so a job
 * stopped anywhere (a crash, a deploy) continues where its last commit left
 * it, on whichever replica looks first, and nothing is counted twice.
 */
export class ErasureRunner {
  private readonly sequelize: Sequelize;
  private readonly key: Buffer;
  private readonly log: Logger;
  private readonly batchRows: number;
  private readonly pauseMs: number;
  private readonly resumeIntervalMs: number;
  private readonly feedNotifier?: FeedNotifier;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private retentionTimer: NodeJS.Timeout | undefined;
  private readonly retentionDays: number;
  private readonly retentionIntervalMs: number;

  constructor(options: ErasureRunnerOptions) {
    this.sequelize = options.sequelize;
    this.key = options.digestKey;
    this.log = options.log;
    this.feedNotifier = options.feedNotifier;
    this.batchRows = options.batchRows ?? ERASURE_BATCH_ROWS;
    this.pauseMs = options.pauseMs ?? 150;
    this.resumeIntervalMs = options.resumeIntervalMs ?? 30_000;
    this.retentionDays = options.retentionDays ?? 0;
    this.retentionIntervalMs = options.retentionIntervalMs ?? 3_600_000;
  }

  /** Continues unfinished jobs now and then every `resumeIntervalMs`. */
  start(): void {
    this.wake();
    this.timer = setInterval(() => this.wake(), this.resumeIntervalMs);
    this.timer.unref();
    if (this.retentionDays > 0) {
      this.retain();
      this.retentionTimer = setInterval(() => this.retain(), this.retentionIntervalMs);
      this.retentionTimer.unref();
    }
  }

  /** Starts a retention run unless one runs on some replica, and works on it. */
  retain(): void {
    startRetention(this.sequelize, this.retentionDays).then(
      (started) => started && this.wake(),
      (error: unknown) => this.log.error({ err: error }, "retention run could not start; it is tried again later"),
    );
  }

  /** Works on every unfinished job now (a new one was just recorded). */
  wake(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.runAll()
      .catch((error: unknown) => this.log.error({ err: error }, "privacy erasure failed; it continues at the next attempt"))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  /** Resolves once the work under way now is done (tests, and shutdown). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Stops after the batch under way; an unfinished job continues at the next start. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    clearInterval(this.retentionTimer);
    await this.running;
  }

  private async runAll(): Promise<void> {
    const jobs = await this.sequelize.query<{ request_id: string }>(
      "SELECT request_id FROM crm_privacy_erasures WHERE state = 'RUNNING' ORDER BY updated_at",
      { type: QueryTypes.SELECT },
    );
    for (const job of jobs) {
      while (!this.closed && (await this.step(job.request_id)) === "more") await sleep(this.pauseMs);
    }
  }

  /** One batch of a job in its own transaction: erases up to `batchRows` events, or finishes the job. */
  async step(requestId: string): Promise<"more" | "done" | "busy"> {
    let finished: string | undefined;
    let firstDigests = false;
    const outcome = await this.sequelize.transaction(async (transaction) => {
      const query = <Row extends object>(sql: string, bind: unknown[]) => this.sequelize.query<Row>(sql, { bind, transaction, type: QueryTypes.SELECT });
      const [job] = await query<JobRow>(
        `SELECT request_id, kind, subject, scope_index, cursor_at::text AS cursor_at, cursor_id, events_erased::int AS events_erased, stream_tokens
         FROM crm_privacy_erasures WHERE request_id = $1::uuid AND state = 'RUNNING' FOR UPDATE SKIP LOCKED`,
        [requestId],
      );
      if (!job) return "busy" as const;
      if (job.kind === "RETENTION") {
        const outcome = await this.retentionStep(job, transaction);
        if (outcome !== "more") finished = outcome.eventId;
        return outcome === "more" ? outcome : ("done" as const);
      }
      const subject = job.subject as JobSubject;
      const scopes = [...subject.contactIds.map((contactId) => ({ contactId })), ...subject.senders];
      if (job.scope_index >= scopes.length) {
        finished = await this.finish(job, transaction);
        return "done" as const;
      }
      const scope = scopes[job.scope_index];
      const rows =
        "contactId" in scope
          ? await query<EventKeyRow>(EVENTS_OF_CONTACT, [scope.contactId, job.cursor_at, job.cursor_id, this.batchRows])
          : await query<EventKeyRow>(EVENTS_OF_SENDER, [scope.source, scope.senderId, job.cursor_at, job.cursor_id, this.batchRows]);
      // Computed before the sender ids are erased: the relay purges the stream by these tokens.
      const tokens = [...new Set(rows.map((row) => senderStreamToken(this.key, row.source, row.sender_id)))];
      const withExternalId = rows.filter((row) => row.external_id !== null);
      await query(ERASE_EVENTS, [rows.map((row) => row.id), requestId, ERASED.content, ERASED.senderId, ERASED.error]);
      await query(
        "INSERT INTO crm_privacy_erased_ids (digest, event_id) SELECT * FROM unnest($1::text[], $2::uuid[]) ON CONFLICT (digest) DO NOTHING RETURNING digest",
        [withExternalId.map((row) => externalIdDigest(this.key, row.source, row.external_id!)), withExternalId.map((row) => row.id)],
      );
      const last = rows.at(-1);
      const scopeDone = rows.length < this.batchRows;
      await query(
        `UPDATE crm_privacy_erasures
         SET scope_index = scope_index + $2, cursor_at = $3::timestamptz, cursor_id = $4::uuid, events_erased = events_erased + $5,
           stream_tokens = ARRAY(SELECT DISTINCT token FROM unnest(stream_tokens || $6::text[]) AS token ORDER BY token), updated_at = now()
         WHERE request_id = $1::uuid RETURNING request_id`,
        [requestId, scopeDone ? 1 : 0, scopeDone ? null : last!.key_at, scopeDone ? null : last!.id, rows.length, tokens],
      );
      await query("UPDATE crm_privacy_requests SET ingest_events = ingest_events + $2 WHERE id = $1::uuid RETURNING id", [requestId, rows.length]);
      firstDigests = job.events_erased === 0 && withExternalId.length > 0;
      return "more" as const;
    });
    // Fresh statistics once the job's first digests and again at its end, so
    // ingest's cached plan looks erased digests up by their index: planned
    // while the table was empty, it would scan it (bench/erasure.ts).
    if (firstDigests || finished) await this.sequelize.query("ANALYZE crm_privacy_erased_ids");
    if (finished) {
      this.feedNotifier?.committed();
      this.log.info({ privacyRequestId: requestId, erasureEventId: finished }, "privacy erasure done");
    }
    return outcome;
  }

  /**
   * One batch of a retention run: erases the content, metadata, error text
   * and trace context of up to `batchRows` events created before the run's
   * cutoff and after its cursor (sender and external id stay: they are what
   * links an event to its contact and keeps a provider's retry out), or, when
   * none is left, writes the run's ERASURE event and closes it.
   */
  private async retentionStep(job: JobRow, transaction: Transaction): Promise<"more" | { eventId: string | undefined }> {
    const query = <Row extends object>(sql: string, bind: unknown[]) => this.sequelize.query<Row>(sql, { bind, transaction, type: QueryTypes.SELECT });
    const subject = job.subject as RetentionSubject;
    const rows = await query<{ id: string; key_at: string }>(RETAINED_EVENTS, [subject.before, job.cursor_at ?? subject.after, job.cursor_id, this.batchRows]);
    if (rows.length === 0) {
      const metadata = { privacy_request_id: job.request_id, reason: "RETENTION", events_erased: job.events_erased, erased_before: subject.before };
      // A run that found nothing to erase tells the feed nothing.
      const [event] =
        job.events_erased === 0
          ? [{ id: null }]
          : await query<{ id: string }>(
              `INSERT INTO crm_ingest_events (source, sender_id, content, metadata, status, kind)
               VALUES ($1, '', '', $2::jsonb, 'RECEIVED', 'ERASURE') RETURNING id`,
              [ERASURE_EVENT_SOURCE, JSON.stringify(metadata)],
            );
      await query(
        "UPDATE crm_privacy_erasures SET state = 'DONE', erasure_event_id = $2::uuid, updated_at = now() WHERE request_id = $1::uuid RETURNING request_id",
        [job.request_id, event.id],
      );
      await query(
        `UPDATE crm_privacy_requests
         SET state = 'DONE', finished_at = clock_timestamp(), duration_ms = floor(extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint
         WHERE id = $1::uuid RETURNING id`,
        [job.request_id],
      );
      return { eventId: event.id ?? undefined };
    }
    await query(ERASE_RETAINED, [rows.map((row) => row.id), job.request_id, ERASED.content, ERASED.error]);
    const last = rows.at(-1)!;
    await query(
      `UPDATE crm_privacy_erasures SET cursor_at = $2::timestamptz, cursor_id = $3::uuid, events_erased = events_erased + $4, updated_at = now()
       WHERE request_id = $1::uuid RETURNING request_id`,
      [job.request_id, last.key_at, last.id, rows.length],
    );
    await query("UPDATE crm_privacy_requests SET ingest_events = ingest_events + $2 WHERE id = $1::uuid RETURNING id", [job.request_id, rows.length]);
    return "more";
  }

  /**
   * The job's last transaction: clears the contacts' identifying fields (the
   * rows stay, and their deals), forgets the WhatsApp user ids linked to
   * them, writes the ERASURE event, and closes the job and its audit record.
   * The subject is dropped from the job: only counts and tokens stay.
   */
  private async finish(job: JobRow, transaction: Transaction): Promise<string> {
    const query = <Row extends object>(sql: string, bind: unknown[]) => this.sequelize.query<Row>(sql, { bind, transaction, type: QueryTypes.SELECT });
    const subject = job.subject as JobSubject;
    const whatsappSenders = subject.senders.filter((sender) => sender.source === "whatsapp").map((sender) => sender.senderId);
    const cleared = await query<{ id: string }>(CLEAR_CONTACTS, [subject.contactIds, whatsappSenders]);
    const contactIds = cleared.map((row) => row.id).sort();
    const metadata = {
      privacy_request_id: job.request_id,
      reason: "ERASURE",
      events_erased: job.events_erased,
      contacts_cleared: contactIds.length,
      contact_ids: contactIds,
      sender_stream_tokens: job.stream_tokens,
    };
    const [event] = await query<{ id: string }>(
      `INSERT INTO crm_ingest_events (source, sender_id, content, metadata, status, kind)
       VALUES ($1, $2, '', $3::jsonb, 'RECEIVED', 'ERASURE') RETURNING id`,
      [ERASURE_EVENT_SOURCE, ERASED.senderId, JSON.stringify(metadata)],
    );
    await query(
      `UPDATE crm_privacy_erasures SET state = 'DONE', subject = NULL, contacts_cleared = $2, erasure_event_id = $3::uuid, updated_at = now()
       WHERE request_id = $1::uuid RETURNING request_id`,
      [job.request_id, contactIds.length, event.id],
    );
    await query(
      `UPDATE crm_privacy_requests
       SET state = 'DONE', contacts = $2, finished_at = clock_timestamp(), duration_ms = floor(extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint
       WHERE id = $1::uuid RETURNING id`,
      [job.request_id, contactIds.length],
    );
    return event.id;
  }
}

interface JobRow {
  request_id: string;
  kind: "ERASURE" | "RETENTION";
  subject: JobSubject | RetentionSubject;
  scope_index: number;
  cursor_at: string | null;
  cursor_id: string | null;
  events_erased: number;
  stream_tokens: string[];
}

/** A retention run's subject: events created in [after, before). No personal data. */
interface RetentionSubject {
  before: string;
  after: string | null;
}

interface EventKeyRow {
  id: string;
  source: string;
  sender_id: string;
  external_id: string | null;
  key_at: string;
}

// Keyset pages in (created_at, id) order over the indexes the export uses;
// `created_at >= $n` bounds the index range, so a page never walks back over
// the rows (or the dead index entries) of the pages before it.
const KEYSET = (at: number) => `
      AND ($${at}::timestamptz IS NULL OR (created_at >= $${at}::timestamptz AND (created_at, id) > ($${at}::timestamptz, $${at + 1}::uuid)))
    ORDER BY created_at, id
    LIMIT $${at + 2}`;

const EVENT_KEY_COLUMNS = "id, source, sender_id, external_id, created_at::text AS key_at";

/** A contact's events not erased yet (a blank sender marks an erased one), a batch after a key. */
const EVENTS_OF_CONTACT = `
    SELECT ${EVENT_KEY_COLUMNS} FROM crm_ingest_events
    WHERE contact_id = $1::uuid AND sender_id <> '' ${KEYSET(2)}`;

/** A sender's events, a batch after a key. */
const EVENTS_OF_SENDER = `
    SELECT ${EVENT_KEY_COLUMNS} FROM crm_ingest_events
    WHERE source = $1::text AND sender_id = $2::text ${KEYSET(3)}`;

/** Erases a batch of events in place: id, position, time, source, kind, status and contact stay. */
const ERASE_EVENTS = `
    UPDATE crm_ingest_events
    SET content = $3, sender_id = $4, external_id = NULL, trace_parent = NULL,
      metadata = jsonb_build_object('erased', 'ERASURE', 'privacy_request_id', $2::text),
      error = CASE WHEN error IS NULL THEN NULL ELSE $5 END
    WHERE id = ANY($1::uuid[])
    RETURNING id`;

/**
 * Clears the identifying fields of the subject's contacts (a contact already
 * cleared is left alone and not counted) and deletes the WhatsApp user ids
 * (BSUIDs) linked to their numbers or named as senders. Returns the ids of
 * the contacts cleared.
 */
const CLEAR_CONTACTS = `
    WITH subject AS (
      SELECT id, whatsapp_id FROM crm_contacts
      WHERE id = ANY($1::uuid[]) AND (name IS NOT NULL OR whatsapp_id IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL OR metadata <> '{}'::jsonb)
      FOR UPDATE
    ), links AS (
      DELETE FROM crm_whatsapp_user_links
      WHERE whatsapp_id IN (SELECT whatsapp_id FROM subject) OR user_id = ANY($2::text[])
    )
    UPDATE crm_contacts SET name = NULL, whatsapp_id = NULL, email = NULL, phone = NULL, metadata = '{}'::jsonb, updated_at = now()
    WHERE id IN (SELECT id FROM subject)
    RETURNING id`;

/** Events created before a run's cutoff, after its cursor; ERASURE events are records, not content, and stay. */
const RETAINED_EVENTS = `
    SELECT id, created_at::text AS key_at FROM crm_ingest_events
    WHERE created_at < $1::timestamptz AND kind <> 'ERASURE'
      AND ($2::timestamptz IS NULL OR (created_at >= $2::timestamptz AND (created_at, id) > ($2::timestamptz, coalesce($3::uuid, '00000000-0000-0000-0000-000000000000'::uuid))))
    ORDER BY created_at, id
    LIMIT $4`;

/** Erases the content of a batch of old events in place; sender, external id, contact and everything else stay. */
const ERASE_RETAINED = `
    UPDATE crm_ingest_events
    SET content = $3, trace_parent = NULL,
      metadata = jsonb_build_object('erased', 'RETENTION', 'privacy_request_id', $2::text),
      error = CASE WHEN error IS NULL THEN NULL ELSE $4 END
    WHERE id = ANY($1::uuid[])
    RETURNING id`;

/**
 * Starts a retention run erasing the content of events older than `days`
 * days, unless one is running (on any replica: the job table's unique index
 * on the running subject digest lets one run exist at a time). A run starts
 * where the last finished run's cutoff was, so each event is erased once.
 * Returns the run's request id, or undefined when one was already running.
 */
export async function startRetention(sequelize: Sequelize, days: number): Promise<string | undefined> {
  try {
    return await sequelize.transaction(async (transaction) => {
      const [row] = await sequelize.query<{ request_id: string }>(
        `WITH last AS (
           SELECT max(subject->>'before') AS after FROM crm_privacy_erasures WHERE kind = 'RETENTION' AND state = 'DONE'
         ), request AS (
           INSERT INTO crm_privacy_requests (kind, requested_by) VALUES ('RETENTION', 'retention') RETURNING id
         )
         INSERT INTO crm_privacy_erasures (request_id, kind, subject_digest, subject)
         SELECT request.id, 'RETENTION', 'retention',
           jsonb_build_object('before', (now() - make_interval(days => $1))::text, 'after', last.after)
         FROM request, last
         RETURNING request_id`,
        { bind: [days], transaction, type: QueryTypes.SELECT },
      );
      return row.request_id;
    });
  } catch (error) {
    if (error instanceof UniqueConstraintError) return undefined;
    throw error;
  }
}
