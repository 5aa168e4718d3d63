import { QueryTypes } from "sequelize";
import { describe, expect, it } from "vitest";
import { databaseKind } from "./support/database.js";
import { postJson, useTestServer } from "./support/server.js";

const fixture = useTestServer();

const ingest = (body: unknown) => postJson(fixture.server.baseUrl, "/ingest/message", body);

async function rows<T extends object = Record<string, unknown>>(sql: string, bind: unknown[] = []): Promise<T[]> {
  return fixture.database.sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

async function eventRow(id: string) {
  const [event] = await rows<any>("SELECT * FROM crm_ingest_events WHERE id = $1", [id]);
  return event;
}

describe(`POST /ingest/message (${databaseKind})`, () => {
  it("answers the seeds' request with real ids and stores a linked event", async () => {
    const { status, body } = await ingest({ source: "whatsapp", sender_id: "5511999999999", content: "teste", metadata: {} });

    expect(status).toBe(200);
    expect(body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_LINKED", error: "" });
    expect(body.event_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(body.contact_id).toMatch(/^[0-9a-f-]{36}$/);

    const event = await eventRow(body.event_id);
    expect(event).toMatchObject({
      source: "whatsapp",
      sender_id: "5511999999999",
      content: "teste",
      metadata: {},
      contact_id: body.contact_id,
      status: "LINKED",
      error: null,
    });
    expect(event.created_at).toBeInstanceOf(Date);
    const [contact] = await rows<any>("SELECT * FROM crm_contacts WHERE id = $1", [body.contact_id]);
    expect(contact.whatsapp_id).toBe("5511999999999");
  });

  it("links a second message from the same sender to the same contact", async () => {
    const first = await ingest({ source: "whatsapp", sender_id: "5521988887777", content: "oi", metadata: {} });
    const second = await ingest({ source: "whatsapp", sender_id: "5521988887777", content: "tudo bem?", metadata: {} });

    expect(second.body.contact_id).toBe(first.body.contact_id);
    expect(second.body.event_id).not.toBe(first.body.event_id);
    const contacts = await rows("SELECT id FROM crm_contacts WHERE whatsapp_id = $1", ["5521988887777"]);
    expect(contacts).toHaveLength(1);
    const events = await rows<any>("SELECT status FROM crm_ingest_events WHERE contact_id = $1", [first.body.contact_id]);
    expect(events.map((e) => e.status)).toEqual(["LINKED", "LINKED"]);
  });

  it("accepts camelCase field names and keeps metadata as sent", async () => {
    const metadata = { gateway: "zapi", attempt: 2, nested: { tags: ["a", "b"], ok: true, none: null } };
    const { status, body } = await ingest({ source: "whatsapp", senderId: "5531977776666", content: "camel", metadata });

    expect(status).toBe(200);
    expect((await eventRow(body.event_id)).metadata).toEqual(metadata);
  });

  it("resolves e-mail senders trimmed and lower-cased to one contact", async () => {
    const first = await ingest({ source: "email", sender_id: "  Ana.Souza@Example.COM ", content: "olá", metadata: {} });
    const second = await ingest({ source: "email", sender_id: "ana.souza@example.com", content: "de novo", metadata: {} });

    expect(first.body.event_status).toBe("INGEST_EVENT_STATUS_LINKED");
    expect(second.body.contact_id).toBe(first.body.contact_id);
    const [contact] = await rows<any>("SELECT email, whatsapp_id FROM crm_contacts WHERE id = $1", [first.body.contact_id]);
    expect(contact).toEqual({ email: "ana.souza@example.com", whatsapp_id: null });
    // The event keeps the sender exactly as it arrived.
    expect((await eventRow(first.body.event_id)).sender_id).toBe("  Ana.Souza@Example.COM ");
  });

  it("keeps an e-mail event whose sender is no address, in status ERROR with the reason, and creates no contact", async () => {
    const contactsBefore = await rows("SELECT id FROM crm_contacts");
    const { status, body } = await ingest({ source: "email", sender_id: "not-an-address", content: "x", metadata: {} });

    expect(status).toBe(200);
    expect(body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_ERROR", contact_id: "" });
    expect(body.error).toContain("not an e-mail address");
    expect(await eventRow(body.event_id)).toMatchObject({ status: "ERROR", contact_id: null, error: body.error });
    expect(await rows("SELECT id FROM crm_contacts")).toHaveLength(contactsBefore.length);
  });

  it("keeps a web message as RECEIVED with no contact", async () => {
    const { status, body } = await ingest({ source: "web", sender_id: "visitor-42", content: "quero um orçamento", metadata: {} });

    expect(status).toBe(200);
    expect(body).toMatchObject({ status: "persisted", event_status: "INGEST_EVENT_STATUS_RECEIVED", contact_id: "" });
    expect(await eventRow(body.event_id)).toMatchObject({ status: "RECEIVED", contact_id: null, source: "web" });
  });

  it("makes exactly one contact and 50 linked events from 50 concurrent messages of one new sender", async () => {
    const sender = "5511912345678";
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) => ingest({ source: "whatsapp", sender_id: sender, content: `msg ${i}`, metadata: {} })),
    );

    expect(responses.map((r) => r.status)).toEqual(Array(50).fill(200));
    const contactIds = new Set(responses.map((r) => r.body.contact_id));
    expect(contactIds.size).toBe(1);
    const contacts = await rows<any>("SELECT id FROM crm_contacts WHERE whatsapp_id = $1", [sender]);
    expect(contacts).toEqual([{ id: [...contactIds][0] }]);
    const events = await rows<any>("SELECT status, contact_id FROM crm_ingest_events WHERE sender_id = $1", [sender]);
    expect(events).toHaveLength(50);
    expect(events.every((e) => e.status === "LINKED" && e.contact_id === contacts[0].id)).toBe(true);
    expect(fixture.server.loggedErrors).toEqual([]);
  });

  it("never writes to crm_deals", async () => {
    expect(await rows("SELECT id FROM crm_deals")).toEqual([]);
  });
});
