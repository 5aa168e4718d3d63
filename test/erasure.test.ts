import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";
import { type JsonObject } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestEventKind, IngestEventService, WatchIngestEventsRequest_Start as Start } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestService } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { PrivacyRequestKind, PrivacyRequestState, PrivacyService } from "../gen/aurora/crm/v1/privacy_service_pb.js";
import { createLogger } from "../src/observability/logger.js";
import { readDigestKey, senderStreamToken } from "../src/privacy/digest-key.js";
import { ErasureRunner, startErasure, startRetention } from "../src/privacy/erase-subject.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { openWatch, type OpenWatch } from "./support/feed.js";
import { readMetric } from "./support/metrics.js";
import { locateProgram, requires } from "./support/requirements.js";
import { rows } from "./support/rows.js";
import { startTestServer, useTestServer, type TestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";

describe(`the digest key (${databaseKind})`, () => {
  let first: TestDatabase;
  let second: TestDatabase;
  beforeAll(async () => {
    [first, second] = await Promise.all([createTestDatabase(), createTestDatabase()]);
  });
  afterAll(async () => {
    await Promise.all([first?.close(), second?.close()]);
  });

  it("is 32 random bytes made by the migration: the same on every read, different in another database", async () => {
    const key = await readDigestKey(first.sequelize);
    expect(key).toBeInstanceOf(Buffer);
    expect(key.length).toBe(32);
    expect((await readDigestKey(first.sequelize)).equals(key)).toBe(true);
    expect((await readDigestKey(second.sequelize)).equals(key)).toBe(false);
  });
});

const ingestToken = randomBytes(24).toString("base64url");
const feedToken = randomBytes(24).toString("base64url");
const dpoToken = randomBytes(24).toString("base64url");
const options = { apiTokens: [ingestToken], feedApiTokens: [feedToken], privacyTokens: [{ label: "dpo", token: dpoToken }], feed: { pollIntervalMs: 20 } };
const fixture = useTestServer(options);

const bearer =
  (token: string): Interceptor =>
  (next) =>
  (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
const grpc = (server: TestServer, token: string) => createGrpcTransport({ baseUrl: server.baseUrl, interceptors: [bearer(token)] });
const privacy = (server = fixture.server) => createClient(PrivacyService, grpc(server, dpoToken));
const feed = (server = fixture.server) => createClient(IngestEventService, grpc(server, feedToken));
const ingest = (message: { source: string; senderId: string; content: string; externalId?: string; metadata?: JsonObject }, server = fixture.server) =>
  createClient(IngestService, grpc(server, ingestToken)).ingestMessage(message);

/** A person with a WhatsApp contact (with a deal), an e-mail contact and a web visitor id, each with messages holding `secret`. */
async function seedPerson(secret: string) {
  const phone = `55119${randomBytes(4).readUInt32BE() % 10_000_000}`.padEnd(13, "7");
  const mail = `${secret}@example.com`;
  const visitor = `visitor-${secret}`;
  const whatsapp = [];
  for (let i = 0; i < 3; i++) {
    whatsapp.push(await ingest({ source: "whatsapp", senderId: phone, content: `oi ${secret} ${i}`, externalId: `wamid.${secret}.${i}`, metadata: { name: secret } }));
  }
  const email = await ingest({ source: "email", senderId: mail, content: `mail ${secret}`, externalId: `<${secret}@mail>` });
  const web = await ingest({ source: "web", senderId: visitor, content: `web ${secret}`, metadata: { page: `/${secret}` } });
  const contactId = whatsapp[0].contactId;
  await fixture.database.sequelize.query("UPDATE crm_contacts SET name = $2, phone = $3, metadata = $4::jsonb WHERE id = $1::uuid", {
    bind: [contactId, `Maria ${secret}`, phone, JSON.stringify({ note: secret })],
  });
  await fixture.database.sequelize.query("INSERT INTO crm_deals (contact_id, title) VALUES ($1::uuid, 'Plano anual')", { bind: [contactId] });
  await fixture.database.sequelize.query("INSERT INTO crm_whatsapp_user_links (user_id, whatsapp_id) VALUES ($1, $2)", { bind: [`BR.${secret}`, phone] });
  return {
    phone,
    mail,
    visitor,
    contactId,
    emailContactId: email.contactId,
    eventIds: [...whatsapp.map((answer) => answer.eventId), email.eventId, web.eventId],
    subject: { contactIds: [email.contactId], senders: [{ source: "whatsapp", senderId: phone }, { source: "web", senderId: visitor }] },
  };
}

const privacyMetric = (name: string, kind?: string) =>
  readMetric(fixture.server.baseUrl, `aurora_ingest_privacy_${name}`, kind ? { kind } : {}, { authorization: `Bearer ${feedToken}` });

async function eraseAndWait(subject: { contactIds?: string[]; senders?: Array<{ source: string; senderId: string }> }, server = fixture.server) {
  const { privacyRequest } = await privacy(server).eraseSubjectData({ subject });
  await server.erasures.idle();
  return { started: privacyRequest!, done: (await privacy(server).getPrivacyRequest({ id: privacyRequest!.id })).privacyRequest! };
}

/** Every stored field of an event row, as text. */
const eventRows = (ids: string[]) =>
  rows(
    fixture.database,
    `SELECT id, source, sender_id, content, metadata, external_id, trace_parent, error, status, kind, contact_id, created_at, feed_xid::text, feed_seq
     FROM crm_ingest_events WHERE id = ANY($1::uuid[]) ORDER BY feed_seq`,
    [ids],
  );

describe(`erasure through the privacy API (${databaseKind})`, () => {
  it("erases every event of the subject in place, clears the contacts, keeps deals linked, and writes one ERASURE event", async () => {
    const person = await seedPerson(`s${randomBytes(4).toString("hex")}`);
    const other = await ingest({ source: "web", senderId: "someone-else", content: "not erased" });
    const before = await eventRows(person.eventIds);
    const key = await readDigestKey(fixture.database.sequelize);
    const erasedBefore = await privacyMetric("events_erased", "ERASURE");

    const { started, done } = await eraseAndWait(person.subject);
    expect(started.kind).toBe(PrivacyRequestKind.ERASURE);
    expect(await privacyMetric("events_erased", "ERASURE")).toBe(erasedBefore! + 5);
    expect(await privacyMetric("jobs_running", "ERASURE")).toBe(0);
    expect(done).toMatchObject({ id: started.id, kind: PrivacyRequestKind.ERASURE, state: PrivacyRequestState.DONE, requestedBy: "dpo" });
    expect(done).toMatchObject({ ingestEvents: 5n, contacts: 2n, deals: 0n, subjectContacts: 1, subjectSenders: 2, subjectSources: ["web", "whatsapp"] });
    expect(done.erasureEventId).toMatch(/^[0-9a-f-]{36}$/);

    const after = await eventRows(person.eventIds);
    expect(after.map((row) => row.id)).toEqual(before.map((row) => row.id));
    for (const [i, row] of after.entries()) {
      // What stays: id, position, time, source, kind, status, contact.
      for (const kept of ["source", "status", "kind", "contact_id", "created_at", "feed_xid", "feed_seq"]) expect(row[kept]).toEqual(before[i][kept]);
      expect(row).toMatchObject({ sender_id: "", content: "", external_id: null, trace_parent: null, error: null });
      expect(row.metadata).toEqual({ erased: "ERASURE", privacy_request_id: started.id });
    }
    const [contact] = await rows(fixture.database, "SELECT name, whatsapp_id, email, phone, metadata FROM crm_contacts WHERE id = $1::uuid", [person.contactId]);
    expect(contact).toEqual({ name: null, whatsapp_id: null, email: null, phone: null, metadata: {} });
    expect(await rows(fixture.database, "SELECT email FROM crm_contacts WHERE id = $1::uuid", [person.emailContactId])).toEqual([{ email: null }]);
    expect(await rows(fixture.database, "SELECT title FROM crm_deals WHERE contact_id = $1::uuid", [person.contactId])).toEqual([{ title: "Plano anual" }]);
    expect(await rows(fixture.database, "SELECT user_id FROM crm_whatsapp_user_links WHERE whatsapp_id = $1", [person.phone])).toEqual([]);
    expect(await rows(fixture.database, "SELECT content FROM crm_ingest_events WHERE id = $1::uuid", [other.eventId])).toEqual([{ content: "not erased" }]);

    const [job] = await rows(fixture.database, "SELECT state, subject, stream_tokens, events_erased::int AS events FROM crm_privacy_erasures WHERE request_id = $1::uuid", [
      started.id,
    ]);
    const tokens = [
      senderStreamToken(key, "whatsapp", person.phone),
      senderStreamToken(key, "email", person.mail),
      senderStreamToken(key, "web", person.visitor),
    ].sort();
    expect(job).toEqual({ state: "DONE", subject: null, stream_tokens: tokens, events: 5 });

    const [erasure] = await eventRows([done.erasureEventId]);
    expect(erasure).toMatchObject({ source: "privacy", sender_id: "", content: "", kind: "ERASURE", status: "RECEIVED", contact_id: null, external_id: null });
    expect(erasure.metadata).toEqual({
      privacy_request_id: started.id,
      reason: "ERASURE",
      events_erased: 5,
      contacts_cleared: 2,
      contact_ids: [person.contactId, person.emailContactId].sort(),
      sender_stream_tokens: tokens,
    });
  });

  it("answers a retried request for a subject whose erasure runs with that erasure; nothing is done twice", async () => {
    const person = await seedPerson(`r${randomBytes(4).toString("hex")}`);
    const key = await readDigestKey(fixture.database.sequelize);
    const resolved = { ...person.subject, contactIds: [...person.subject.contactIds, person.contactId] };
    // Recorded but not yet carried out, as while a long erasure runs.
    const first = await startErasure(fixture.database.sequelize, key, { requestedBy: "dpo", subject: person.subject, resolved });
    const reordered = { contactIds: person.subject.contactIds, senders: [...person.subject.senders].reverse() };
    const { privacyRequest } = await privacy().eraseSubjectData({ subject: reordered });
    expect(first.started).toBe(true);
    expect(privacyRequest!.id).toBe(first.requestId);
    await fixture.server.erasures.idle();
    const done = (await privacy().getPrivacyRequest({ id: first.requestId })).privacyRequest!;
    expect(done).toMatchObject({ state: PrivacyRequestState.DONE, ingestEvents: 5n });
    const erasureEvents = await rows(fixture.database, "SELECT id FROM crm_ingest_events WHERE kind = 'ERASURE' AND metadata->>'privacy_request_id' = $1", [first.requestId]);
    expect(erasureEvents).toHaveLength(1);
  });

  it("continues a job stopped between batches on another runner, counting each event once", async () => {
    const person = await seedPerson(`c${randomBytes(4).toString("hex")}`);
    const key = await readDigestKey(fixture.database.sequelize);
    const resolved = { ...person.subject, contactIds: [...person.subject.contactIds, person.contactId] };
    const { requestId } = await startErasure(fixture.database.sequelize, key, { requestedBy: "dpo", subject: person.subject, resolved });
    const log = createLogger({ level: "silent" });
    const stopped = new ErasureRunner({ sequelize: fixture.database.sequelize, digestKey: key, log, batchRows: 2 });
    expect(await stopped.step(requestId)).toBe("more");
    expect(await stopped.step(requestId)).toBe("more");
    const [partial] = await rows(fixture.database, "SELECT events_erased::int AS events FROM crm_privacy_erasures WHERE request_id = $1::uuid", [requestId]);
    expect(partial.events).toBeGreaterThan(0);
    expect(partial.events).toBeLessThan(5);

    const next = new ErasureRunner({ sequelize: fixture.database.sequelize, digestKey: key, log, batchRows: 2 });
    next.wake();
    await next.idle();
    const done = (await privacy().getPrivacyRequest({ id: requestId })).privacyRequest!;
    expect(done).toMatchObject({ state: PrivacyRequestState.DONE, ingestEvents: 5n, contacts: 2n });
    expect((await eventRows(person.eventIds)).every((row) => row.sender_id === "" && row.content === "")).toBe(true);
  });

  it("refuses an unknown request id with not_found and a malformed one with invalid_argument", async () => {
    const missing = await privacy()
      .getPrivacyRequest({ id: "00000000-0000-4000-8000-000000000000" })
      .catch((error: unknown) => ConnectError.from(error));
    expect((missing as ConnectError).code).toBe(Code.NotFound);
    const bad = await privacy()
      .getPrivacyRequest({ id: "nope" })
      .catch((error: unknown) => ConnectError.from(error));
    expect((bad as ConnectError).code).toBe(Code.InvalidArgument);
    const empty = await privacy()
      .eraseSubjectData({ subject: {} })
      .catch((error: unknown) => ConnectError.from(error));
    expect((empty as ConnectError).code).toBe(Code.InvalidArgument);
  });
});

describe(`what readers see after an erasure, on every replica (${databaseKind})`, () => {
  let replica: TestServer;
  const watches: OpenWatch[] = [];
  beforeAll(async () => {
    replica = await startTestServer(fixture.database, options);
  });
  afterAll(async () => {
    for (const watch of watches) watch.cancel();
    await replica?.erasures.close();
    await replica?.server.close();
  });

  it("Get, List and Watch return the events erased on both replicas, buffered copies included, and carry the ERASURE event", async () => {
    const secret = `w${randomBytes(4).toString("hex")}`;
    // Each replica's hub buffers what follows: a watch from now on each.
    const live = [fixture.server, replica].map((server) => openWatch(feed(server), { start: Start.NOW }));
    watches.push(...live);
    await waitFor(() => live.every((watch) => watch.responses.length > 0));
    const startTokens = live.map((watch) => watch.lastToken());
    const person = await seedPerson(secret);
    await waitFor(() => live.every((watch) => person.eventIds.every((id) => watch.ids().includes(id))));

    // Erased through the other replica: this one learns of it only from the database.
    const { done } = await eraseAndWait(person.subject, replica);
    await waitFor(() => live.every((watch) => watch.ids().includes(done.erasureEventId)));
    const erasureEvent = live[0].responses.find((response) => response.ingestEvent?.id === done.erasureEventId)!.ingestEvent!;
    expect(erasureEvent.kind).toBe(IngestEventKind.ERASURE);
    expect(erasureEvent.metadata).toMatchObject({ privacy_request_id: done.id, events_erased: 5 });

    for (const [i, server] of [fixture.server, replica].entries()) {
      // A consumer resuming from before the erased events (inside the buffer) reads them erased.
      const resumed = openWatch(feed(server), { resumeToken: startTokens[i] });
      watches.push(resumed);
      await waitFor(() => resumed.ids().includes(done.erasureEventId));
      resumed.cancel();
      const seen = resumed.responses.flatMap((response) => (response.ingestEvent ? [response.ingestEvent] : []));
      expect(seen.map((event) => event.id)).toEqual([...person.eventIds, done.erasureEventId]);
      for (const event of seen.slice(0, -1)) {
        expect(event).toMatchObject({ senderId: "", content: "", metadata: { erased: "ERASURE" } });
        expect(event.externalId || undefined).toBeUndefined();
      }

      const got = await feed(server).getIngestEvent({ id: person.eventIds[0] });
      expect(got.ingestEvent).toMatchObject({ senderId: "", content: "" });
      expect(got.ingestEvent!.externalId || undefined).toBeUndefined();
      const listed = await feed(server).listIngestEvents({ pageSize: 1000 });
      const text = JSON.stringify(listed.ingestEvents.map((event) => [event.senderId, event.content, event.metadata, event.externalId]));
      expect(text).not.toContain(secret);
    }
  });
});

describe(`no return by retry (${databaseKind})`, () => {
  it("answers a provider's retry of an erased message as a duplicate of the erased event, and stores nothing", async () => {
    const person = await seedPerson(`d${randomBytes(4).toString("hex")}`);
    await eraseAndWait(person.subject);
    const count = async () => Number((await rows(fixture.database, "SELECT count(*)::int AS n FROM crm_ingest_events"))[0].n);
    const before = await count();
    const secret = person.mail.split("@")[0];
    const retry = await ingest({ source: "whatsapp", senderId: person.phone, content: `oi ${secret} 0`, externalId: `wamid.${secret}.0` });
    expect(retry).toMatchObject({ duplicate: true, eventId: person.eventIds[0], contactId: person.contactId });
    // The content cannot be compared any more: any message under the erased key is a duplicate.
    const reused = await ingest({ source: "email", senderId: person.mail, content: "other", externalId: `<${secret}@mail>` });
    expect(reused).toMatchObject({ duplicate: true, eventId: person.eventIds[3] });
    expect(await count()).toBe(before);
    expect(await rows(fixture.database, "SELECT id FROM crm_ingest_events WHERE content LIKE $1 OR sender_id = $2", [`%${secret}%`, person.phone])).toEqual([]);
    // The same external id on another source is another message.
    const elsewhere = await ingest({ source: "web", senderId: "v", content: "x", externalId: `wamid.${secret}.0` });
    expect(elsewhere.duplicate).toBe(false);
  });
});

describe(`proof: nothing erased remains readable (${databaseKind})`, () => {
  let replica: TestServer;
  let person: Awaited<ReturnType<typeof seedPerson>>;
  let erased: string[];
  beforeAll(async () => {
    replica = await startTestServer(fixture.database, options);
    const secret = `p${randomBytes(6).toString("hex")}`;
    person = await seedPerson(secret);
    await eraseAndWait(person.subject);
    erased = [secret, person.phone, person.mail, person.visitor];
  });
  afterAll(async () => {
    await replica?.erasures.close();
    await replica?.server.close();
  });
  const leaks = (text: string) => erased.filter((value) => text.includes(value));

  it("no row of any table holds an erased string", async () => {
    const tables = await rows<{ name: string }>(fixture.database, "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'");
    for (const { name } of tables) {
      const all = await rows(fixture.database, `SELECT t::text AS row FROM "${name}" t`);
      expect(leaks(all.map((row) => row.row).join("\n")), name).toEqual([]);
    }
  });

  // On PostgreSQL: the embedded database is a newer major version than Debian's pg_dump reads (the row scan above covers it).
  it.runIf(databaseKind === "postgres" && requires("pg_dump"))("pg_dump's logical dump of the database holds no erased string", async () => {
    // Run asynchronously: the embedded database answers from this very process.
    const dump = await promisify(execFile)(locateProgram("pg_dump") ?? "pg_dump", ["--no-owner", `--dbname=${fixture.database.url}`], {
      encoding: "utf8",
      maxBuffer: 512 * 1024 * 1024,
      timeout: 60_000,
    });
    expect(dump.stderr).toBe("");
    expect(dump.stdout).toContain("crm_ingest_events");
    expect(leaks(dump.stdout)).toEqual([]);
  });

  it("no feed RPC on either replica returns an erased string: Get, List, and Watch from the beginning", async () => {
    for (const server of [fixture.server, replica]) {
      const client = feed(server);
      const listed = await client.listIngestEvents({ pageSize: 1000 });
      const watch = openWatch(client, { start: Start.BEGINNING });
      const lastId = listed.ingestEvents.at(-1)!.id;
      await waitFor(() => watch.ids().includes(lastId));
      watch.cancel();
      const got = await Promise.all(person.eventIds.map((id) => client.getIngestEvent({ id })));
      const text = JSON.stringify([listed.ingestEvents, watch.responses, got], (_, value: unknown) => (typeof value === "bigint" ? value.toString() : value));
      expect(text).toContain(person.eventIds[0]);
      expect(leaks(text)).toEqual([]);
    }
  });
});

describe(`retention (${databaseKind})`, () => {
  it("erases the content of events older than N days, once, one run at a time, and tells the feed", async () => {
    const old = await ingest({ source: "web", senderId: "old-visitor", content: "old secret", metadata: { page: "/old" } });
    const recent = await ingest({ source: "web", senderId: "new-visitor", content: "recent" });
    await fixture.database.sequelize.query("UPDATE crm_ingest_events SET created_at = now() - interval '40 days' WHERE id = $1::uuid", { bind: [old.eventId] });
    const key = await readDigestKey(fixture.database.sequelize);
    const runner = new ErasureRunner({ sequelize: fixture.database.sequelize, digestKey: key, log: createLogger({ level: "silent" }), batchRows: 2 });

    const first = await startRetention(fixture.database.sequelize, 30);
    expect(first).toBeDefined();
    // One run at a time, whichever replica asks.
    expect(await startRetention(fixture.database.sequelize, 30)).toBeUndefined();
    // Its progress is in /metrics, read from the job table, on every replica.
    const erasedBefore = await privacyMetric("events_erased", "RETENTION");
    expect(await privacyMetric("jobs_running", "RETENTION")).toBe(1);
    expect(await privacyMetric("oldest_running_job_seconds")).toBeGreaterThanOrEqual(0);
    runner.wake();
    await runner.idle();
    expect(await privacyMetric("jobs_running", "RETENTION")).toBe(0);
    expect(await privacyMetric("oldest_running_job_seconds")).toBe(0);

    const [erased] = await eventRows([old.eventId]);
    expect(erased).toMatchObject({ content: "", sender_id: "old-visitor", trace_parent: null, metadata: { erased: "RETENTION", privacy_request_id: first } });
    expect((await eventRows([recent.eventId]))[0].content).toBe("recent");
    const record = (await privacy().getPrivacyRequest({ id: first! })).privacyRequest!;
    expect(record).toMatchObject({ kind: PrivacyRequestKind.RETENTION, state: PrivacyRequestState.DONE, requestedBy: "retention" });
    expect(record.ingestEvents).toBeGreaterThanOrEqual(1n);
    expect(await privacyMetric("events_erased", "RETENTION")).toBe(erasedBefore! + Number(record.ingestEvents));
    const [event] = await eventRows([record.erasureEventId]);
    expect(event).toMatchObject({ kind: "ERASURE", source: "privacy", metadata: { reason: "RETENTION", privacy_request_id: first } });

    // The next run starts at this one's cutoff: nothing is erased twice, and an empty run tells the feed nothing.
    const second = await startRetention(fixture.database.sequelize, 30);
    runner.wake();
    await runner.idle();
    const again = (await privacy().getPrivacyRequest({ id: second! })).privacyRequest!;
    expect(again).toMatchObject({ state: PrivacyRequestState.DONE, ingestEvents: 0n, erasureEventId: "" });
  });
});
