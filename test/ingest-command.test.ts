import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DuplicateConflictError } from "../src/ingest/errors.js";
import { createIngestMessage, type IngestDependencies, type IngestMessage, type IngestMessageInput } from "../src/ingest/ingest-message.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { count, rows } from "./support/rows.js";

// The ingest command against the real database, without a server: what it
// stores, links, answers and refuses. The network tests check each protocol
// reaches it; these check what it does.

let database: TestDatabase;
let dependencies: IngestDependencies;
let ingestMessage: IngestMessage;

beforeAll(async () => {
  database = await createTestDatabase();
  dependencies = { sequelize: database.sequelize, defaultPhoneRegion: "BR" };
  ingestMessage = createIngestMessage(dependencies);
});
afterAll(async () => database?.close());

const ingest = (message: Partial<IngestMessageInput> & { source: string; senderId: string }) =>
  ingestMessage({ content: "oi", metadata: {}, externalId: null, ...message });

/** The outcome of a call that must fail: its error. */
const refusal = (message: Parameters<typeof ingest>[0]) =>
  ingest(message).then(
    () => expect.fail("the command accepted the message"),
    (error: unknown) => error,
  );

const event = async (id: string) => (await rows(database, "SELECT * FROM crm_ingest_events WHERE id = $1", [id]))[0];
const contactsWith = (column: "whatsapp_id" | "email", pattern: string) =>
  rows<{ id: string; value: string }>(database, `SELECT id, ${column} AS value FROM crm_contacts WHERE ${column} LIKE $1 ORDER BY ${column}`, [pattern]);

describe(`ingestMessage: statuses (${databaseKind})`, () => {
  it("stores a WhatsApp message LINKED to a new contact, then the next one to the same contact", async () => {
    const first = await ingest({ source: "whatsapp", senderId: "5511999999999", content: "teste", metadata: { gateway: "zapi" } });
    const second = await ingest({ source: "whatsapp", senderId: "+55 11 99999-9999", content: "de novo" });

    expect(first).toEqual({ eventId: expect.any(String), contactId: expect.any(String), contactCreated: true, status: "LINKED", error: null, duplicate: false });
    expect(second).toMatchObject({ contactId: first.contactId, contactCreated: false, status: "LINKED", duplicate: false });
    expect(second.eventId).not.toBe(first.eventId);
    expect(await event(first.eventId)).toMatchObject({
      source: "whatsapp",
      sender_id: "5511999999999",
      content: "teste",
      metadata: { gateway: "zapi" },
      external_id: null,
      contact_id: first.contactId,
      status: "LINKED",
      error: null,
    });
    // The event keeps the sender as it arrived; the contact holds the canonical value.
    expect((await event(second.eventId)).sender_id).toBe("+55 11 99999-9999");
    expect(await contactsWith("whatsapp_id", "%99999999")).toEqual([{ id: first.contactId, value: "5511999999999" }]);
  });

  it("stores a message of a source without an identity rule as RECEIVED, with no contact", async () => {
    const contactsBefore = await count(database, "crm_contacts");
    const result = await ingest({ source: "web", senderId: "visitor-42", content: "quero um orçamento" });

    expect(result).toMatchObject({ contactId: null, contactCreated: false, status: "RECEIVED", error: null, duplicate: false });
    expect(await event(result.eventId)).toMatchObject({ source: "web", sender_id: "visitor-42", status: "RECEIVED", contact_id: null });
    expect(await count(database, "crm_contacts")).toBe(contactsBefore);
  });

  it.each([
    ["whatsapp", "joao.silva", "is not a WhatsApp id: it has letters"],
    ["whatsapp", "+55 11 9999", "is not a WhatsApp id: the number is too short"],
    ["email", "Ana <ana@localhost>", 'is not an e-mail address: its domain "localhost" is not an internet host name'],
  ])("stores a %s message from %j as ERROR with the reason, creating no contact", async (source, senderId, reason) => {
    const contactsBefore = await count(database, "crm_contacts");
    const result = await ingest({ source, senderId });

    expect(result).toMatchObject({ contactId: null, contactCreated: false, status: "ERROR", duplicate: false });
    expect(result.error).toContain(`${source} sender_id ${JSON.stringify(senderId)} ${reason}`);
    expect(await event(result.eventId)).toMatchObject({ sender_id: senderId, status: "ERROR", contact_id: null, error: result.error });
    expect(await count(database, "crm_contacts")).toBe(contactsBefore);
  });
});

describe(`ingestMessage: kinds (${databaseKind})`, () => {
  it("stores a message as kind MESSAGE when no kind is given", async () => {
    const result = await ingest({ source: "web", senderId: "visitor-kind-1" });
    expect((await event(result.eventId)).kind).toBe("MESSAGE");
  });

  it("links an event of another kind to the sender's existing contact", async () => {
    const message = await ingest({ source: "whatsapp", senderId: "5511977770001", content: "oi" });
    const status = await ingest({ source: "whatsapp", senderId: "5511977770001", content: "[read]", kind: "STATUS", externalId: "wamid.kind-1:read" });
    expect(status).toMatchObject({ contactId: message.contactId, contactCreated: false, status: "LINKED", duplicate: false });
    expect(await event(status.eventId)).toMatchObject({ kind: "STATUS", status: "LINKED", contact_id: message.contactId });
  });

  it("never creates a contact for an event of another kind: it is stored RECEIVED without one, in a batch beside a message that does create one", async () => {
    const before = await count(database, "crm_contacts");
    const [status, message] = await Promise.all([
      ingest({ source: "whatsapp", senderId: "5511977770002", content: "[delivered]", kind: "STATUS", externalId: "wamid.kind-2:delivered" }),
      ingest({ source: "whatsapp", senderId: "5511977770003", content: "oi" }),
    ]);
    expect(status).toMatchObject({ contactId: null, contactCreated: false, status: "RECEIVED", error: null });
    expect(await event(status.eventId)).toMatchObject({ kind: "STATUS", status: "RECEIVED", contact_id: null });
    expect(message).toMatchObject({ contactCreated: true, status: "LINKED" });
    expect(await count(database, "crm_contacts")).toBe(before + 1);
    expect(await contactsWith("whatsapp_id", "5511977770002")).toEqual([]);
  });
});

describe(`ingestMessage: identity (${databaseKind})`, () => {
  it("makes one contact of one number sent concurrently in every form, with and without the ninth digit", async () => {
    const forms = ["5511987654321", "551187654321", "+55 (11) 8765-4321", "551187654321@c.us", "5511987654321@s.whatsapp.net", "(11) 8765-4321"];
    const sent = Array.from({ length: 30 }, (_, i) => forms[i % forms.length]);
    const results = await Promise.all(sent.map((senderId, i) => ingest({ source: "whatsapp", senderId, content: `msg ${i}` })));

    const contacts = await contactsWith("whatsapp_id", "%87654321");
    expect(contacts).toEqual([{ id: expect.any(String), value: "5511987654321" }]);
    expect(new Set(results.map((r) => r.contactId))).toEqual(new Set([contacts[0].id]));
    expect(results.filter((r) => r.contactCreated)).toHaveLength(1);
    const stored = await rows<{ sender_id: string }>(database, "SELECT sender_id FROM crm_ingest_events WHERE contact_id = $1", [contacts[0].id]);
    expect(stored.map((e) => e.sender_id).sort()).toEqual([...sent].sort());
  });

  it("keeps a landline and the mobile that differs from it only by the ninth digit apart", async () => {
    const landline = await ingest({ source: "whatsapp", senderId: "+55 11 3333-4444" });
    const mobile = await ingest({ source: "whatsapp", senderId: "11 93333-4444" });

    expect(mobile.contactId).not.toBe(landline.contactId);
    expect(await contactsWith("whatsapp_id", "%33334444")).toEqual([
      { id: landline.contactId, value: "551133334444" },
      { id: mobile.contactId, value: "5511933334444" },
    ]);
  });

  it("keeps opaque WhatsApp ids exactly, apart from the phone id with the same digits", async () => {
    const phone = await ingest({ source: "whatsapp", senderId: "5511955554444" });
    const linkedDevice = await ingest({ source: "whatsapp", senderId: " 5511955554444@lid " });
    const businessScoped = await ingest({ source: "whatsapp", senderId: "\tBR.1234abcd " });

    expect(new Set([phone.contactId, linkedDevice.contactId, businessScoped.contactId]).size).toBe(3);
    expect(await contactsWith("whatsapp_id", "%5511955554444%")).toEqual([
      { id: phone.contactId, value: "5511955554444" },
      { id: linkedDevice.contactId, value: "5511955554444@lid" },
    ]);
    expect(await contactsWith("whatsapp_id", "BR.%")).toEqual([{ id: businessScoped.contactId, value: "BR.1234abcd" }]);
  });

  it("resolves an e-mail display form and the bare address to one lower-cased contact, and another spelling to another", async () => {
    const display = await ingest({ source: "email", senderId: "Ana Lima <Ana.Lima+crm@Example.com>" });
    const bare = await ingest({ source: "email", senderId: " ana.lima+CRM@example.com" });
    const otherSpelling = await ingest({ source: "email", senderId: "analima+crm@example.com" });

    expect(bare.contactId).toBe(display.contactId);
    expect(otherSpelling.contactId).not.toBe(display.contactId);
    expect(await contactsWith("email", "%lima+crm@example.com")).toEqual([
      { id: display.contactId, value: "ana.lima+crm@example.com" },
      { id: otherSpelling.contactId, value: "analima+crm@example.com" },
    ]);
  });

  it("reads national numbers in the region it is given", async () => {
    const inPortugal = await createIngestMessage({ ...dependencies, defaultPhoneRegion: "PT" })({
      source: "whatsapp",
      senderId: "912 345 678",
      content: "olá",
      metadata: {},
      externalId: null,
    });
    const inBrazil = await ingest({ source: "whatsapp", senderId: "912 345 678" });

    expect(inPortugal.status).toBe("LINKED");
    expect(await contactsWith("whatsapp_id", "351%")).toEqual([{ id: inPortugal.contactId, value: "351912345678" }]);
    expect(inBrazil).toMatchObject({ status: "ERROR", contactId: null });
  });
});

describe(`ingestMessage: retries with external_id (${databaseKind})`, () => {
  it("answers a retry with the original's ids and status, flagged duplicate, storing nothing new and keeping the original metadata", async () => {
    const message = { source: "whatsapp", senderId: "5511900000001", content: "pedido 1", externalId: "wamid.HBgN001" };
    const first = await ingest({ ...message, metadata: { attempt: 1 } });
    const events = await count(database, "crm_ingest_events");
    const contacts = await count(database, "crm_contacts");
    const retry = await ingest({ ...message, metadata: { attempt: 2 } });

    expect(first).toMatchObject({ status: "LINKED", contactCreated: true, duplicate: false });
    expect(retry).toEqual({ ...first, contactCreated: false, duplicate: true });
    expect(await count(database, "crm_ingest_events")).toBe(events);
    expect(await count(database, "crm_contacts")).toBe(contacts);
    expect(await event(first.eventId)).toMatchObject({ external_id: "wamid.HBgN001", metadata: { attempt: 1 } });
  });

  it("replays an event stored as ERROR or RECEIVED as it was stored", async () => {
    for (const message of [
      { source: "email", senderId: "not-an-address", externalId: "k-error" },
      { source: "web", senderId: "visitor-1", externalId: "k-received" },
    ]) {
      const first = await ingest(message);
      expect(await ingest(message)).toEqual({ ...first, duplicate: true });
    }
  });

  it("refuses the same key with different content, naming neither the original nor the field, storing nothing", async () => {
    const original = await ingest({ source: "whatsapp", senderId: "5511900000003", content: "primeira", externalId: "wamid.REUSED" });
    const events = await count(database, "crm_ingest_events");
    const error = await refusal({ source: "whatsapp", senderId: "5511900000003", content: "outra coisa", externalId: "wamid.REUSED" });

    expect(error).toBeInstanceOf(DuplicateConflictError);
    expect((error as Error).message).not.toContain(original.eventId);
    expect((error as Error).message).not.toMatch(/content|sender/);
    expect(await count(database, "crm_ingest_events")).toBe(events);
  });

  it("refuses the same key from a different, new sender without creating that sender's contact", async () => {
    const original = await ingest({ source: "whatsapp", senderId: "5511900000004", externalId: "wamid.STOLEN" });
    const contacts = await count(database, "crm_contacts");
    const error = await refusal({ source: "whatsapp", senderId: "5511900000005", externalId: "wamid.STOLEN" });

    expect(error).toBeInstanceOf(DuplicateConflictError);
    expect((error as Error).message).not.toContain(original.eventId);
    expect(await count(database, "crm_contacts")).toBe(contacts);
    expect(await contactsWith("whatsapp_id", "5511900000005")).toEqual([]);
  });

  it("stores one event for 20 concurrent copies and answers every copy with its ids, one of them not a duplicate", async () => {
    const message = { source: "whatsapp", senderId: "5511900000020", content: "concorrente", externalId: "wamid.CONCURRENT" };
    const results = await Promise.all(Array.from({ length: 20 }, () => ingest(message)));

    expect(new Set(results.map((r) => r.eventId)).size).toBe(1);
    expect(new Set(results.map((r) => r.contactId)).size).toBe(1);
    expect(results.filter((r) => !r.duplicate)).toHaveLength(1);
    expect(results.filter((r) => r.contactCreated)).toHaveLength(1);
    expect(await rows(database, "SELECT id FROM crm_ingest_events WHERE external_id = $1", [message.externalId])).toEqual([{ id: results[0].eventId }]);
    expect(await contactsWith("whatsapp_id", "5511900000020")).toHaveLength(1);
  });

  it("settles concurrent copies that disagree: one event, its copies replayed, the others refused, no stray contacts", async () => {
    const senders = Array.from({ length: 10 }, (_, i) => `55119100000${String(i).padStart(2, "0")}`);
    const contacts = await count(database, "crm_contacts");
    // Two copies of each of 10 different messages, all under one key.
    const messages = [...senders, ...senders].map((senderId) => ({ source: "whatsapp", senderId, content: `from ${senderId}`, externalId: "wamid.RACE" }));
    const outcomes = await Promise.allSettled(messages.map((message) => ingest(message)));

    const [stored] = await rows<{ id: string; sender_id: string }>(database, "SELECT id, sender_id FROM crm_ingest_events WHERE external_id = 'wamid.RACE'");
    outcomes.forEach((outcome, i) => {
      if (messages[i].senderId === stored.sender_id) {
        expect(outcome).toMatchObject({ status: "fulfilled", value: { eventId: stored.id } });
      } else {
        expect(outcome).toMatchObject({ status: "rejected", reason: expect.any(DuplicateConflictError) });
      }
    });
    expect(outcomes.filter((o) => o.status === "fulfilled" && !o.value.duplicate)).toHaveLength(1);
    expect(await count(database, "crm_contacts")).toBe(contacts + 1);
    expect((await contactsWith("whatsapp_id", "551191%")).map((c) => c.value)).toEqual([stored.sender_id]);
  });

  it("scopes a key to its source, and stores every copy of a message without one", async () => {
    const web = await ingest({ source: "web", senderId: "visitor-2", externalId: "shared-key" });
    const chat = await ingest({ source: "chat", senderId: "visitor-2", externalId: "shared-key" });
    const first = await ingest({ source: "web", senderId: "visitor-3", content: "sem chave" });
    const second = await ingest({ source: "web", senderId: "visitor-3", content: "sem chave" });

    expect(chat).toMatchObject({ duplicate: false });
    expect(chat.eventId).not.toBe(web.eventId);
    expect(second).toMatchObject({ duplicate: false });
    expect(second.eventId).not.toBe(first.eventId);
  });
});

describe(`ingestMessage: what it never does (${databaseKind})`, () => {
  it("splits no sender, leaves no contact without an event nor a LINKED event without a contact, and writes no deal", async () => {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => ingest({ source: "whatsapp", senderId: "5511912345678", content: `msg ${i}` })));

    const contacts = await contactsWith("whatsapp_id", "5511912345678");
    expect(contacts).toHaveLength(1);
    expect(results.every((r) => r.status === "LINKED" && r.contactId === contacts[0].id)).toBe(true);
    expect(results.filter((r) => r.contactCreated)).toHaveLength(1);
    expect(await rows(database, "SELECT c.id FROM crm_contacts c WHERE NOT EXISTS (SELECT FROM crm_ingest_events e WHERE e.contact_id = c.id)")).toEqual([]);
    expect(await rows(database, "SELECT id FROM crm_ingest_events WHERE status = 'LINKED' AND contact_id IS NULL")).toEqual([]);
    expect(await count(database, "crm_deals")).toBe(0);
  });
});
