import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import type { PrivacyRequestKind, PrivacyRequestState } from "../db/models/PrivacyRequest.js";
import { InvalidAuditPageTokenError } from "./errors.js";
import { describeSubject, type PrivacySubject } from "./privacy-subject.js";

/** What a privacy request did, as counts. */
export interface PrivacyCounts {
  contacts: number;
  deals: number;
  ingestEvents: number;
}

/** One record of the audit trail as it is listed. */
export interface PrivacyAuditRecord extends PrivacyCounts {
  id: string;
  kind: PrivacyRequestKind;
  state: PrivacyRequestState;
  requestedBy: string;
  subjectContacts: number;
  subjectSenders: number;
  subjectSources: string[];
  startedAt: Date;
  finishedAt: Date | null;
  durationMs: number | null;
  errorCode: string | null;
  /** The ERASURE event an erasure or retention run wrote when it was done; null otherwise. */
  erasureEventId: string | null;
}

/**
 * Records that a privacy request started, in its own short transaction, and
 * returns the record's id. Only counts and channels of the subject are kept
 * (describeSubject): the trail must not become a list of who asked.
 */
export async function startPrivacyRequest(
  sequelize: Sequelize,
  request: { kind: PrivacyRequestKind; requestedBy: string; subject: PrivacySubject },
): Promise<string> {
  const subject = describeSubject(request.subject);
  const [row] = await sequelize.query<{ id: string }>(
    `INSERT INTO crm_privacy_requests (kind, requested_by, subject_contacts, subject_senders, subject_sources)
     VALUES ($1, $2, $3, $4, $5::text[]) RETURNING id`,
    { bind: [request.kind, request.requestedBy, subject.contacts, subject.senders, subject.sources], type: QueryTypes.SELECT },
  );
  return row.id;
}

/** Records how a privacy request ended: its counts, its state, the error code if it failed, and how long it took. */
export async function finishPrivacyRequest(
  sequelize: Sequelize,
  id: string,
  outcome: PrivacyCounts & { state: Exclude<PrivacyRequestState, "RUNNING">; errorCode?: string },
): Promise<void> {
  await sequelize.query(
    `UPDATE crm_privacy_requests
     SET state = $2, contacts = $3, deals = $4, ingest_events = $5, error_code = $6,
       finished_at = clock_timestamp(), duration_ms = floor(extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint
     WHERE id = $1::uuid`,
    { bind: [id, outcome.state, outcome.contacts, outcome.deals, outcome.ingestEvents, outcome.errorCode ?? null] },
  );
}

/**
 * One page of the audit trail, newest first, and the token of the next page
 * (empty after the last). The token is the last record's (started_at, id):
 * it carries nothing a privacy token could not list anyway.
 */
export async function listPrivacyRequests(
  sequelize: Sequelize,
  page: { size: number; token: string },
): Promise<{ records: PrivacyAuditRecord[]; nextPageToken: string }> {
  const after = page.token ? decodeToken(page.token) : { at: null, id: null };
  const rows = await sequelize.query<AuditRow>(
    `${SELECT_RECORDS}
     WHERE $1::timestamptz IS NULL OR (started_at, id) < ($1::timestamptz, $2::uuid)
     ORDER BY started_at DESC, id DESC
     LIMIT $3`,
    { bind: [after.at, after.id, page.size + 1], type: QueryTypes.SELECT },
  );
  const records = rows.slice(0, page.size);
  const last = records.at(-1);
  return {
    records: records.map(toRecord),
    nextPageToken: rows.length > page.size && last ? Buffer.from(`${last.key_at}|${last.id}`).toString("base64url") : "",
  };
}

/** One record of the audit trail, or undefined when there is none with that id. */
export async function getPrivacyRequest(sequelize: Sequelize, id: string): Promise<PrivacyAuditRecord | undefined> {
  const [row] = await sequelize.query<AuditRow>(`${SELECT_RECORDS} WHERE id = $1::uuid`, { bind: [id], type: QueryTypes.SELECT });
  return row && toRecord(row);
}

const SELECT_RECORDS = `
    SELECT id, kind, state, requested_by, subject_contacts, subject_senders, subject_sources, contacts, deals, ingest_events,
      started_at, finished_at, duration_ms, error_code, started_at::text AS key_at,
      (SELECT erasure_event_id FROM crm_privacy_erasures WHERE request_id = id) AS erasure_event_id
    FROM crm_privacy_requests`;

function decodeToken(token: string): { at: string; id: string } {
  const match = /^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?[+-]\d\d(?::\d\d)?)\|([0-9a-f-]{36})$/.exec(Buffer.from(token, "base64url").toString("utf8"));
  if (!match) throw new InvalidAuditPageTokenError();
  return { at: match[1], id: match[2] };
}

interface AuditRow {
  id: string;
  kind: PrivacyRequestKind;
  state: PrivacyRequestState;
  requested_by: string;
  subject_contacts: number;
  subject_senders: number;
  subject_sources: string[];
  contacts: string;
  deals: string;
  ingest_events: string;
  started_at: Date;
  finished_at: Date | null;
  duration_ms: string | null;
  error_code: string | null;
  key_at: string;
  erasure_event_id: string | null;
}

function toRecord(row: AuditRow): PrivacyAuditRecord {
  return {
    id: row.id,
    kind: row.kind,
    state: row.state,
    requestedBy: row.requested_by,
    subjectContacts: row.subject_contacts,
    subjectSenders: row.subject_senders,
    subjectSources: row.subject_sources,
    contacts: Number(row.contacts),
    deals: Number(row.deals),
    ingestEvents: Number(row.ingest_events),
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    durationMs: row.duration_ms === null ? null : Number(row.duration_ms),
    errorCode: row.error_code,
    erasureEventId: row.erasure_event_id,
  };
}
