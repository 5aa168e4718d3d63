import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { Sequelize } from "sequelize-typescript";
import {
  ContactSchema,
  DealSchema,
  PrivacyRequestKind,
  PrivacyRequestSchema,
  PrivacyRequestState,
  type PrivacyService,
} from "../../gen/aurora/crm/v1/privacy_service_pb.js";
import { toIngestEventMessage } from "../feed/ingest-event-message.js";
import type { IdentityOptions } from "../ingest/identity/sender-identity.js";
import { exportSubject, resolveSubject, type ContactRecord, type DealRecord } from "../privacy/export-subject.js";
import { finishPrivacyRequest, getPrivacyRequest, listPrivacyRequests, startPrivacyRequest, type PrivacyAuditRecord, type PrivacyCounts } from "../privacy/privacy-audit.js";
import type { PrivacySubject } from "../privacy/privacy-subject.js";
import { startErasure, type ErasureRunner } from "../privacy/erase-subject.js";
import { PrivacyRequestNotFoundError } from "../privacy/errors.js";
import { createRequesterLabel, type PrivacyToken } from "../privacy/token-labels.js";
import type { OpenStreams } from "./stream-limits.js";

/** What the privacy handlers need: the database, the stream cap, and the privacy tokens (to name the caller in the audit trail). */
export interface PrivacyDependencies extends IdentityOptions {
  sequelize: Sequelize;
  streams: OpenStreams;
  privacyTokens: readonly PrivacyToken[];
  /** The database's digest key (readDigestKey), which names an erasure's subject without naming the person. */
  digestKey: Buffer;
  /** Carries out erasures in the background; woken when one is recorded. */
  erasures: ErasureRunner;
}

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;

/** The PrivacyService handlers: map the request to the export, the erasure or the audit trail, and the results back. */
export function createPrivacyService(dependencies: PrivacyDependencies): ServiceImpl<typeof PrivacyService> {
  const { sequelize, streams } = dependencies;
  const requesterOf = createRequesterLabel(dependencies.privacyTokens);
  const readRecord = async (id: string) => {
    const record = await getPrivacyRequest(sequelize, id);
    if (!record) throw new PrivacyRequestNotFoundError(id);
    return record;
  };

  return {
    async *exportSubjectData(request, context) {
      const subject = subjectOf(request);
      const signal = streams.open(context.signal);
      const requestId = await startPrivacyRequest(sequelize, { kind: "EXPORT", requestedBy: requesterOf(context.requestHeader.get("authorization")), subject });
      const counts: PrivacyCounts = { contacts: 0, deals: 0, ingestEvents: 0 };
      // Recorded once, however the call ends: a stream cancelled while it
      // waits at `yield` may never reach `finally`, so the abort records it too.
      let recorded: Promise<void> | undefined;
      const finish = (error?: unknown) =>
        (recorded ??= finishPrivacyRequest(sequelize, requestId, {
          ...counts,
          state: error === undefined ? "DONE" : "FAILED",
          errorCode: error === undefined ? undefined : codeToString(ConnectError.from(error).code),
        }));
      const onAbort = () => void finish(signal.reason ?? new Error("aborted")).catch(() => undefined);
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        for await (const item of exportSubject(sequelize, await resolveSubject(sequelize, subject, dependencies))) {
          if (signal.aborted) throw ConnectError.from(signal.reason);
          if ("contact" in item) {
            counts.contacts++;
            yield { item: { case: "contact", value: toContactMessage(item.contact) } };
          } else if ("deal" in item) {
            counts.deals++;
            yield { item: { case: "deal", value: toDealMessage(item.deal) } };
          } else {
            counts.ingestEvents++;
            yield { item: { case: "ingestEvent", value: toIngestEventMessage(item.event) } };
          }
        }
        signal.removeEventListener("abort", onAbort);
        await finish();
        yield { item: { case: "summary", value: { requestId, contacts: BigInt(counts.contacts), deals: BigInt(counts.deals), ingestEvents: BigInt(counts.ingestEvents) } } };
      } catch (error) {
        signal.removeEventListener("abort", onAbort);
        await finish(error);
        throw error;
      }
    },

    async eraseSubjectData(request, context) {
      const subject = subjectOf(request);
      const resolved = await resolveSubject(sequelize, subject, dependencies);
      const requestedBy = requesterOf(context.requestHeader.get("authorization"));
      const { requestId } = await startErasure(sequelize, dependencies.digestKey, { requestedBy, subject, resolved });
      dependencies.erasures.wake();
      return { privacyRequest: toPrivacyRequestMessage(await readRecord(requestId)) };
    },

    async getPrivacyRequest(request) {
      return { privacyRequest: toPrivacyRequestMessage(await readRecord(request.id)) };
    },

    async listPrivacyRequests(request) {
      const size = Math.min(request.pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
      const page = await listPrivacyRequests(sequelize, { size, token: request.pageToken });
      return { privacyRequests: page.records.map(toPrivacyRequestMessage), nextPageToken: page.nextPageToken };
    },
  };
}

function subjectOf(request: { subject?: { contactIds: string[]; senders: Array<{ source: string; senderId: string }> } }): PrivacySubject {
  return {
    contactIds: request.subject?.contactIds ?? [],
    senders: (request.subject?.senders ?? []).map(({ source, senderId }) => ({ source, senderId })),
  };
}

const KIND_TO_PROTO: Record<PrivacyAuditRecord["kind"], PrivacyRequestKind> = {
  EXPORT: PrivacyRequestKind.EXPORT,
  ERASURE: PrivacyRequestKind.ERASURE,
  RETENTION: PrivacyRequestKind.RETENTION,
};

const STATE_TO_PROTO: Record<PrivacyAuditRecord["state"], PrivacyRequestState> = {
  RUNNING: PrivacyRequestState.RUNNING,
  DONE: PrivacyRequestState.DONE,
  FAILED: PrivacyRequestState.FAILED,
};

function toContactMessage(contact: ContactRecord) {
  return create(ContactSchema, {
    id: contact.id,
    name: contact.name ?? "",
    whatsappId: contact.whatsappId ?? "",
    email: contact.email ?? "",
    phone: contact.phone ?? "",
    metadata: contact.metadata as never,
    createdAt: timestampFromDate(contact.createdAt),
    updatedAt: timestampFromDate(contact.updatedAt),
  });
}

function toDealMessage(deal: DealRecord) {
  return create(DealSchema, {
    id: deal.id,
    contactId: deal.contactId,
    title: deal.title,
    stage: deal.stage,
    value: deal.value ?? "",
    metadata: deal.metadata as never,
    createdAt: timestampFromDate(deal.createdAt),
    updatedAt: timestampFromDate(deal.updatedAt),
  });
}

function toPrivacyRequestMessage(record: PrivacyAuditRecord) {
  return create(PrivacyRequestSchema, {
    id: record.id,
    kind: KIND_TO_PROTO[record.kind],
    state: STATE_TO_PROTO[record.state],
    requestedBy: record.requestedBy,
    subjectContacts: record.subjectContacts,
    subjectSenders: record.subjectSenders,
    subjectSources: record.subjectSources,
    contacts: BigInt(record.contacts),
    deals: BigInt(record.deals),
    ingestEvents: BigInt(record.ingestEvents),
    startedAt: timestampFromDate(record.startedAt),
    finishedAt: record.finishedAt ? timestampFromDate(record.finishedAt) : undefined,
    durationMs: BigInt(record.durationMs ?? 0),
    errorCode: record.errorCode ?? "",
    erasureEventId: record.erasureEventId ?? "",
  });
}
