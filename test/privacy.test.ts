import { randomBytes } from "node:crypto";
import { create, type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestEventService } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import {
  ExportSubjectDataRequestSchema,
  PrivacyRequestKind,
  PrivacyRequestState,
  PrivacyService,
  type ExportSubjectDataResponse,
} from "../gen/aurora/crm/v1/privacy_service_pb.js";
import { EVENTS_OF_CONTACT, EVENTS_OF_SENDER, exportSubject } from "../src/privacy/export-subject.js";
import { tokenFingerprint } from "../src/privacy/token-labels.js";
import { databaseKind } from "./support/database.js";
import { startTestServer, useTestServer } from "./support/server.js";

const ingestToken = randomBytes(24).toString("base64url");
const feedToken = randomBytes(24).toString("base64url");
const dpoToken = randomBytes(24).toString("base64url");
const unlabelledToken = randomBytes(24).toString("base64url");

const fixture = useTestServer({
  apiTokens: [ingestToken],
  feedApiTokens: [feedToken],
  privacyTokens: [{ label: "dpo", token: dpoToken }, { token: unlabelledToken }],
});

const bearer =
  (token: string): Interceptor =>
  (next) =>
  (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
const grpc = (token: string) => createGrpcTransport({ baseUrl: fixture.server.baseUrl, interceptors: [bearer(token)] });
const privacy = (token = dpoToken) => createClient(PrivacyService, grpc(token));
const ingest = (message: { source: string; senderId: string; content: string; externalId?: string; metadata?: JsonObject }) =>
  createClient(IngestService, grpc(ingestToken)).ingestMessage(message);

/** Every item of an export, in order. */
async function exportAll(subject: { contactIds?: string[]; senders?: Array<{ source: string; senderId: string }> }, token = dpoToken) {
  const items: ExportSubjectDataResponse[] = [];
  for await (const item of privacy(token).exportSubjectData({ subject })) items.push(item);
  return items;
}
const ofCase = <C extends ExportSubjectDataResponse["item"]["case"]>(items: ExportSubjectDataResponse[], kind: C) =>
  items.flatMap((item) => (item.item.case === kind ? [item.item.value as Extract<ExportSubjectDataResponse["item"], { case: C }>["value"]] : []));

const refusal = (call: Promise<unknown>) =>
  call.then(
    () => expect.fail("the call succeeded"),
    (error: unknown) => ConnectError.from(error),
  );

describe(`privacy API: scopes (${databaseKind})`, () => {
  it("refuses ingest and feed tokens with permission_denied, and lets privacy tokens neither ingest nor read the feed", async () => {
    for (const token of [ingestToken, feedToken]) {
      const error = await refusal(privacy(token).listPrivacyRequests({}));
      expect(error.code).toBe(Code.PermissionDenied);
      expect(error.rawMessage).toBe("this token may not call the privacy API");
    }
    const ingestError = await refusal(createClient(IngestService, grpc(dpoToken)).ingestMessage({ source: "web", senderId: "v", content: "x" }));
    expect(ingestError.code).toBe(Code.PermissionDenied);
    const feedError = await refusal(createClient(IngestEventService, grpc(dpoToken)).listIngestEvents({}));
    expect(feedError.code).toBe(Code.PermissionDenied);
    const strangerError = await refusal(privacy(randomBytes(24).toString("base64url")).listPrivacyRequests({}));
    expect(strangerError.code).toBe(Code.Unauthenticated);
  });

  it("is not served at all without privacy tokens", async () => {
    const server = await startTestServer(fixture.database);
    try {
      const client = createClient(PrivacyService, createGrpcTransport({ baseUrl: server.baseUrl }));
      const error = await refusal(client.listPrivacyRequests({}));
      expect(error.code).toBe(Code.Unimplemented);
    } finally {
      await server.server.close();
    }
  });

  it("refuses a subject that names nobody, or a contact id that is not a UUID, with invalid_argument", async () => {
    expect((await refusal(exportAll({}))).code).toBe(Code.InvalidArgument);
    expect((await refusal(exportAll({ contactIds: ["not-a-uuid"] }))).code).toBe(Code.InvalidArgument);
    expect((await refusal(exportAll({ senders: [{ source: "web", senderId: "" }] }))).code).toBe(Code.InvalidArgument);
  });
});

describe(`privacy API: export (${databaseKind})`, () => {
  // One person: a WhatsApp contact, an e-mail contact, and web events with no contact.
  const person = { whatsapp: "5511987650001", email: "ana.souza@example.com.br", visitor: "visitor-ana-77" };
  const stored: { whatsapp: string[]; email: string[]; web: string[]; other: string[] } = { whatsapp: [], email: [], web: [], other: [] };
  let whatsappContact: string;
  let emailContact: string;
  let dealId: string;

  beforeAll(async () => {
    for (let i = 0; i < 3; i++) {
      const sent = await ingest({ source: "whatsapp", senderId: person.whatsapp, content: `oi ${i}`, externalId: `wamid.ana.${i}`, metadata: { profile: { name: "Ana Souza" } } });
      stored.whatsapp.push(sent.eventId);
      whatsappContact = sent.contactId;
    }
    const mail = await ingest({ source: "email", senderId: person.email, content: "Olá, quero meus dados" });
    stored.email.push(mail.eventId);
    emailContact = mail.contactId;
    for (let i = 0; i < 2; i++) stored.web.push((await ingest({ source: "web", senderId: person.visitor, content: `form ${i}` })).eventId);
    // Somebody else, who must not appear.
    stored.other.push((await ingest({ source: "whatsapp", senderId: "5511987650002", content: "outra pessoa" })).eventId);
    stored.other.push((await ingest({ source: "web", senderId: "visitor-other", content: "outro" })).eventId);
    const [deal] = await fixture.database.sequelize.query<{ id: string }>(
      "INSERT INTO crm_deals (contact_id, title, value, metadata) VALUES ($1, 'Plano anual', 1500.50, '{\"seller\":\"x\"}') RETURNING id",
      { bind: [whatsappContact], type: QueryTypes.SELECT },
    );
    dealId = deal.id;
  });

  it("streams the contacts, their deals, every event once (linked or from a named sender), and a summary", async () => {
    const items = await exportAll({
      contactIds: [whatsappContact, emailContact.toUpperCase()],
      // The WhatsApp sender is named too: its events come once, with the contact.
      senders: [
        { source: "web", senderId: person.visitor },
        { source: "whatsapp", senderId: person.whatsapp },
      ],
    });

    const contacts = ofCase(items, "contact");
    expect(contacts.map((c) => c.id).sort()).toEqual([whatsappContact, emailContact].sort());
    expect(contacts.find((c) => c.id === whatsappContact)).toMatchObject({ whatsappId: person.whatsapp, email: "" });
    expect(contacts.find((c) => c.id === emailContact)).toMatchObject({ email: person.email });
    expect(ofCase(items, "deal")).toEqual([expect.objectContaining({ id: dealId, contactId: whatsappContact, title: "Plano anual", value: "1500.50" })]);

    const events = ofCase(items, "ingestEvent");
    expect(events.map((e) => e.id).sort()).toEqual([...stored.whatsapp, ...stored.email, ...stored.web].sort());
    expect(events.find((e) => e.id === stored.whatsapp[0])).toMatchObject({ content: "oi 0", externalId: "wamid.ana.0", senderId: person.whatsapp });
    expect(events.find((e) => e.id === stored.whatsapp[0])?.metadata).toEqual({ profile: { name: "Ana Souza" } });

    // Contacts first, then deals, then events, and the summary last.
    const order = items.map((item) => item.item.case);
    expect(order).toEqual([...order].sort((a, b) => ["contact", "deal", "ingestEvent", "summary"].indexOf(a!) - ["contact", "deal", "ingestEvent", "summary"].indexOf(b!)));
    expect(items.at(-1)?.item).toMatchObject({ case: "summary", value: { contacts: 2n, deals: 1n, ingestEvents: 6n } });
  });

  it("finds the contact a WhatsApp or e-mail sender resolves to, under another spelling of the sender", async () => {
    const items = await exportAll({ senders: [{ source: "email", senderId: " Ana.Souza@EXAMPLE.com.br " }] });
    expect(ofCase(items, "contact").map((c) => c.id)).toEqual([emailContact]);
    expect(ofCase(items, "ingestEvent").map((e) => e.id)).toEqual(stored.email);
  });

  it("skips a contact id that names no contact, and finds nothing for a sender never seen", async () => {
    const items = await exportAll({ contactIds: ["00000000-0000-4000-8000-000000000000"], senders: [{ source: "web", senderId: "nobody" }] });
    expect(items).toHaveLength(1);
    expect(items[0].item).toMatchObject({ case: "summary", value: { contacts: 0n, deals: 0n, ingestEvents: 0n } });
  });

  it("answers in Connect's JSON too, the form that can be handed to the person", async () => {
    const client = createClient(PrivacyService, createConnectTransport({ baseUrl: fixture.server.baseUrl, httpVersion: "1.1", useBinaryFormat: false, interceptors: [bearer(dpoToken)] }));
    const items: ExportSubjectDataResponse[] = [];
    for await (const item of client.exportSubjectData(create(ExportSubjectDataRequestSchema, { subject: { contactIds: [emailContact] } }))) items.push(item);
    expect(ofCase(items, "ingestEvent").map((e) => e.content)).toEqual(["Olá, quero meus dados"]);
  });

  it("records each request in the audit trail with counts, the token's label and timings, and no personal data", async () => {
    const before = (await privacy().listPrivacyRequests({ pageSize: 1000 })).privacyRequests.length;
    await exportAll({ contactIds: [whatsappContact], senders: [{ source: "web", senderId: person.visitor }, { source: "email", senderId: person.email }] });
    await exportAll({ senders: [{ source: "web", senderId: person.visitor }] }, unlabelledToken);

    const { privacyRequests } = await privacy().listPrivacyRequests({ pageSize: 1000 });
    expect(privacyRequests).toHaveLength(before + 2);
    const [unlabelled, dpo] = privacyRequests;
    expect(dpo).toMatchObject({
      kind: PrivacyRequestKind.EXPORT,
      state: PrivacyRequestState.DONE,
      requestedBy: "dpo",
      subjectContacts: 1,
      subjectSenders: 2,
      subjectSources: ["email", "web"],
      // The e-mail sender brings its contact.
      contacts: 2n,
      deals: 1n,
      ingestEvents: 3n + 1n + 2n,
      errorCode: "",
    });
    expect(dpo.durationMs).toBeGreaterThanOrEqual(0n);
    expect(dpo.finishedAt!.seconds).toBeGreaterThanOrEqual(dpo.startedAt!.seconds);
    expect(unlabelled).toMatchObject({ requestedBy: tokenFingerprint(unlabelledToken), ingestEvents: 2n });
    expect(unlabelled.requestedBy).toMatch(/^sha256:[0-9a-f]{12}$/);

    // The stored rows hold none of the subject's identifiers, and no token.
    const rows = await fixture.database.sequelize.query<{ row: string }>("SELECT row_to_json(r)::text AS row FROM crm_privacy_requests r", { type: QueryTypes.SELECT });
    const text = rows.map((r) => r.row).join("\n");
    for (const secret of [whatsappContact, emailContact, person.whatsapp, person.email, person.visitor, dpoToken, unlabelledToken]) {
      expect(text).not.toContain(secret);
    }
  });

  it("pages the audit trail newest first, and refuses a page token it did not issue", async () => {
    const all = (await privacy().listPrivacyRequests({ pageSize: 1000 })).privacyRequests;
    expect(all.length).toBeGreaterThanOrEqual(4);
    const paged = [];
    let pageToken = "";
    do {
      const page = await privacy().listPrivacyRequests({ pageSize: 2, pageToken });
      paged.push(...page.privacyRequests);
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(paged.map((r) => r.id)).toEqual(all.map((r) => r.id));
    const starts = all.map((r) => Number(r.startedAt!.seconds) * 1e9 + r.startedAt!.nanos);
    expect(starts).toEqual([...starts].sort((a, b) => b - a));
    expect((await refusal(privacy().listPrivacyRequests({ pageToken: "bm90LWEtdG9rZW4" }))).code).toBe(Code.InvalidArgument);
  });
});

describe(`privacy API: a person with many events (${databaseKind})`, () => {
  let contactId: string;
  const total = 2_500;

  beforeAll(async () => {
    contactId = (await ingest({ source: "whatsapp", senderId: "5511987659999", content: "primeira" })).contactId;
    // Ten events per created_at, so the keyset's tie-breaker is what keeps each once; and other senders around them.
    await fixture.database.sequelize.query(
      `INSERT INTO crm_ingest_events (source, sender_id, content, contact_id, status, created_at)
       SELECT 'whatsapp', '5511987659999', 'msg ' || n, $1::uuid, 'LINKED', now() - (n / 10) * interval '1 second' FROM generate_series(2, $2::int) AS n`,
      { bind: [contactId, total] },
    );
    await fixture.database.sequelize.query(
      `INSERT INTO crm_ingest_events (source, sender_id, content, status, created_at)
       SELECT 'web', CASE WHEN n % 2 = 0 THEN 'bulk-visitor' ELSE 'visitor-' || n END, 'page ' || n, 'RECEIVED', now() - (n / 20) * interval '1 second'
       FROM generate_series(1, $1::int) AS n`,
      { bind: [2 * total] },
    );
    await fixture.database.sequelize.query("ANALYZE crm_ingest_events");
  });

  it("reads them in chunks, each event once, however many share a created_at", async () => {
    const ids = new Set<string>();
    let count = 0;
    for await (const item of exportSubject(fixture.database.sequelize, { contactIds: [contactId], senders: [{ source: "web", senderId: "bulk-visitor" }] }, 97)) {
      if ("event" in item) {
        ids.add(item.event.id);
        count++;
      }
    }
    expect(count).toBe(2 * total);
    expect(ids.size).toBe(2 * total);
  });

  it("reads each chunk with an index range scan that starts at the chunk's key, never by scanning the table", async () => {
    const keyOf = async (where: string, bind: unknown[]) =>
      (
        await fixture.database.sequelize.query<{ at: string; id: string }>(
          `SELECT created_at::text AS at, id::text AS id FROM crm_ingest_events WHERE ${where} ORDER BY created_at, id::text OFFSET 1000 LIMIT 1`,
          { bind, type: QueryTypes.SELECT },
        )
      )[0];
    const contactKey = await keyOf("contact_id = $1", [contactId]);
    const senderKey = await keyOf("source = 'web' AND sender_id = $1", ["bulk-visitor"]);
    const plans = [
      [EVENTS_OF_CONTACT, [contactId, contactKey.at, contactKey.id, 100], "crm_ingest_events_contact_id_created_at_idx"],
      [EVENTS_OF_SENDER, ["web", "bulk-visitor", [contactId], senderKey.at, senderKey.id, 100], "crm_ingest_events_source_sender_id_created_at_idx"],
    ] as const;
    for (const [sql, bind, index] of plans) {
      const [row] = await fixture.database.sequelize.query<{ "QUERY PLAN": unknown }>(`EXPLAIN (FORMAT JSON) ${sql}`, { bind: [...bind], type: QueryTypes.SELECT });
      const plan = JSON.stringify(row["QUERY PLAN"]);
      expect(plan).toContain(`"Index Name":"${index}"`);
      expect(plan).toMatch(/"Index Cond":"[^"]*created_at >=/);
      expect(plan).not.toContain("Seq Scan");
    }
  });

  it("records an export the client abandons as FAILED with how far it got", async () => {
    const controller = new AbortController();
    const stream = privacy().exportSubjectData({ subject: { contactIds: [contactId] } }, { signal: controller.signal });
    const seen: ExportSubjectDataResponse[] = [];
    await expect(
      (async () => {
        for await (const item of stream) {
          seen.push(item);
          controller.abort();
        }
      })(),
    ).rejects.toThrow();
    expect(seen).toHaveLength(1);
    let record;
    for (let i = 0; i < 100 && record?.state !== PrivacyRequestState.FAILED; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      [record] = (await privacy().listPrivacyRequests({ pageSize: 1 })).privacyRequests;
    }
    expect(record).toMatchObject({ state: PrivacyRequestState.FAILED, errorCode: "canceled" });
    expect(record?.finishedAt).toBeDefined();
  });

  it("streams all of them through the server", async () => {
    let events = 0;
    for await (const item of privacy().exportSubjectData({ subject: { contactIds: [contactId] } })) if (item.item.case === "ingestEvent") events++;
    expect(events).toBe(total);
  });
});

afterAll(() => {
  expect(fixture.server.loggedErrors).toEqual([]);
});
