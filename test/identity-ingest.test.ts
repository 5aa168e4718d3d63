import { QueryTypes } from "sequelize";
import { describe, expect, it } from "vitest";
import { databaseKind } from "./support/database.js";
import { postJson, startTestServer, useTestServer } from "./support/server.js";

const fixture = useTestServer();

const ingest = (source: string, senderId: string, content = "oi", target = fixture.server) =>
  postJson(target.baseUrl, "/ingest/message", { source, sender_id: senderId, content, metadata: {} });

async function rows<T extends object = Record<string, unknown>>(sql: string, bind: unknown[] = []): Promise<T[]> {
  return fixture.database.sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

async function events(ids: string[]) {
  return rows<{ id: string; sender_id: string; contact_id: string | null; status: string; error: string | null }>(
    "SELECT id, sender_id, contact_id, status, error FROM crm_ingest_events WHERE id = ANY($1::uuid[])",
    [ids],
  );
}

const contactCount = async () => (await rows("SELECT id FROM crm_contacts")).length;

describe(`identity resolution through POST /ingest/message (${databaseKind})`, () => {
  it("makes one contact of one number sent concurrently with and without the ninth digit, in every form", async () => {
    const forms = [
      "5511987654321",
      "551187654321",
      "+55 (11) 8765-4321",
      "+55 11 98765-4321",
      "551187654321@c.us",
      "5511987654321@s.whatsapp.net",
      "11 98765-4321",
      "(11) 8765-4321",
    ];
    const sent = Array.from({ length: 40 }, (_, i) => forms[i % forms.length]);

    const responses = await Promise.all(sent.map((senderId, i) => ingest("whatsapp", senderId, `msg ${i}`)));

    expect(responses.map((r) => r.status)).toEqual(Array(40).fill(200));
    expect(responses.map((r) => r.body.event_status)).toEqual(Array(40).fill("INGEST_EVENT_STATUS_LINKED"));
    const contacts = await rows<{ id: string; whatsapp_id: string }>(
      "SELECT id, whatsapp_id FROM crm_contacts WHERE whatsapp_id LIKE '%87654321%'",
    );
    expect(contacts).toEqual([{ id: expect.any(String), whatsapp_id: "5511987654321" }]);
    expect(new Set(responses.map((r) => r.body.contact_id))).toEqual(new Set([contacts[0].id]));
    const stored = await events(responses.map((r) => r.body.event_id));
    expect(stored).toHaveLength(40);
    expect(stored.every((e) => e.status === "LINKED" && e.contact_id === contacts[0].id && e.error === null)).toBe(true);
    // Each event keeps its sender exactly as it arrived.
    expect(stored.map((e) => e.sender_id).sort()).toEqual([...sent].sort());
    expect(fixture.server.loggedErrors).toEqual([]);
  });

  it("keeps a landline and the mobile that differs from it only by the ninth digit as two contacts", async () => {
    const sent = ["551133334444", "5511933334444", "+55 11 3333-4444", "+55 (11) 93333-4444", "(11) 3333-4444", "11 93333-4444"];

    const responses = await Promise.all(sent.map((senderId) => ingest("whatsapp", senderId)));

    const contacts = await rows<{ id: string; whatsapp_id: string }>(
      "SELECT id, whatsapp_id FROM crm_contacts WHERE whatsapp_id LIKE '%33334444' ORDER BY whatsapp_id",
    );
    expect(contacts.map((c) => c.whatsapp_id)).toEqual(["551133334444", "5511933334444"]);
    const [landline, mobile] = contacts.map((c) => c.id);
    expect(responses.map((r) => r.body.contact_id)).toEqual([landline, mobile, landline, mobile, landline, mobile]);
    const stored = await events(responses.map((r) => r.body.event_id));
    expect(stored.filter((e) => e.contact_id === landline).map((e) => e.sender_id).sort()).toEqual(
      ["551133334444", "+55 11 3333-4444", "(11) 3333-4444"].sort(),
    );
  });

  it("stores opaque ids exactly, apart from the phone id with the same digits", async () => {
    const phone = await ingest("whatsapp", "5511955554444");
    const linkedDevice = await ingest("whatsapp", " 5511955554444@lid ");
    const businessScoped = await ingest("whatsapp", "BR.1234abcd");
    const businessScopedAgain = await ingest("whatsapp", "\tBR.1234abcd ");

    const ids = [phone, linkedDevice, businessScoped].map((r) => r.body.contact_id);
    expect(new Set(ids).size).toBe(3);
    expect(businessScopedAgain.body.contact_id).toBe(businessScoped.body.contact_id);
    const contacts = await rows<{ id: string; whatsapp_id: string }>("SELECT id, whatsapp_id FROM crm_contacts WHERE id = ANY($1::uuid[])", [ids]);
    expect(Object.fromEntries(contacts.map((c) => [c.id, c.whatsapp_id]))).toEqual({
      [ids[0]]: "5511955554444",
      [ids[1]]: "5511955554444@lid",
      [ids[2]]: "BR.1234abcd",
    });
  });

  it.each([
    // A blank sender_id is refused as bad input (400) before anything is stored; this one is empty only after cleaning.
    ["+ - ()", "it holds no number"],
    ["joao.silva", "it has letters but is neither a business-scoped id (like BR.1234abcd) nor an id ending in @lid"],
    ["+55 11 9999", "the number is too short"],
    ["1234567890123456789", "the number is too long"],
  ])("keeps the event of whatsapp sender %j in status ERROR, creating no contact", async (senderId, problem) => {
    const before = await contactCount();
    const { status, body } = await ingest("whatsapp", senderId);

    expect(status).toBe(200);
    const reason = `whatsapp sender_id ${JSON.stringify(senderId)} is not a WhatsApp id: ${problem}`;
    expect(body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_ERROR", contact_id: "", error: reason });
    expect(await events([body.event_id])).toEqual([
      { id: body.event_id, sender_id: senderId, contact_id: null, status: "ERROR", error: reason },
    ]);
    expect(await contactCount()).toBe(before);
  });

  it("resolves an e-mail display form and the bare address to one lower-cased contact", async () => {
    const display = await ingest("email", "Ana Lima <Ana.Lima+crm@Example.com>");
    const bare = await ingest("email", " ana.lima+CRM@example.com");
    const otherSpelling = await ingest("email", "analima+crm@example.com");

    expect(bare.body.contact_id).toBe(display.body.contact_id);
    expect(otherSpelling.body.contact_id).not.toBe(display.body.contact_id);
    const [contact] = await rows<any>("SELECT email, whatsapp_id FROM crm_contacts WHERE id = $1", [display.body.contact_id]);
    expect(contact).toEqual({ email: "ana.lima+crm@example.com", whatsapp_id: null });
    expect((await events([display.body.event_id]))[0].sender_id).toBe("Ana Lima <Ana.Lima+crm@Example.com>");
  });

  it("keeps an e-mail event with an address that is not valid in status ERROR, saying what was wrong", async () => {
    const before = await contactCount();
    const { body } = await ingest("email", "Ana <ana@localhost>");

    const reason = 'email sender_id "Ana <ana@localhost>" is not an e-mail address: its domain "localhost" is not an internet host name';
    expect(body).toMatchObject({ event_status: "INGEST_EVENT_STATUS_ERROR", contact_id: "", error: reason });
    expect(await events([body.event_id])).toMatchObject([{ status: "ERROR", contact_id: null, error: reason }]);
    expect(await contactCount()).toBe(before);
  });

  it("resolves through the Connect route as through the plain one", async () => {
    const plain = await ingest("whatsapp", "+55 48 9123-4567");
    const connect = await postJson(fixture.server.baseUrl, "/aurora.crm.v1.IngestService/IngestMessage", {
      source: "whatsapp",
      senderId: "5548991234567@c.us",
      content: "via connect",
    });

    expect(connect.status).toBe(200);
    expect(connect.body).toMatchObject({ eventStatus: "INGEST_EVENT_STATUS_LINKED", contactId: plain.body.contact_id });
    const [contact] = await rows<any>("SELECT whatsapp_id FROM crm_contacts WHERE id = $1", [plain.body.contact_id]);
    expect(contact.whatsapp_id).toBe("5548991234567");
  });

  it("reads national numbers in the default region the server was given", async () => {
    const portugal = await startTestServer(fixture.database, { defaultPhoneRegion: "PT" });
    try {
      const inPortugal = await ingest("whatsapp", "912 345 678", "olá", portugal);
      const inBrazil = await ingest("whatsapp", "912 345 678", "olá", fixture.server);

      expect(inPortugal.body.event_status).toBe("INGEST_EVENT_STATUS_LINKED");
      const [contact] = await rows<any>("SELECT whatsapp_id FROM crm_contacts WHERE id = $1", [inPortugal.body.contact_id]);
      expect(contact.whatsapp_id).toBe("351912345678");
      expect(inBrazil.body).toMatchObject({ event_status: "INGEST_EVENT_STATUS_ERROR", contact_id: "" });
    } finally {
      await portugal.server.close();
    }
  });
});
