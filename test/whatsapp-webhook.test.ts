import { createHmac } from "node:crypto";
import { request as httpRequest } from "node:http";
import { createConnectTransport } from "@connectrpc/connect-node";
import { describe, expect, it } from "vitest";
import { IngestEventKind, type IngestEvent } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { databaseKind } from "./support/database.js";
import { feedClient } from "./support/feed.js";
import { count, countEvents, rows } from "./support/rows.js";
import { startTestServer, useTestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";
import { postMessage } from "./support/ingest.js";
import { readMetric } from "./support/metrics.js";

// Meta's WhatsApp Cloud API webhook through the real server and database.
// Every fixture copies the shape of an example in Meta's webhook reference
// (developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/
// reference/messages and its per-type pages, named at each fixture); ids and
// numbers are ours. Signatures are computed here with the configured secrets.

const APP_SECRET = "new-app-secret-0123456789abcdef";
const OLD_APP_SECRET = "old-app-secret-0123456789abcdef";
const VERIFY_TOKEN = "verify-token-0123456789";
const MAX_BODY_BYTES = 256 * 1024;

const fixture = useTestServer({
  whatsapp: { appSecrets: [APP_SECRET, OLD_APP_SECRET], verifyTokens: [VERIFY_TOKEN], maxBodyBytes: MAX_BODY_BYTES },
  limits: { requestMaxBytes: 400 * 1024, senderIdMaxChars: 320, externalIdMaxChars: 320, contentMaxBytes: 4096, metadataMaxBytes: 8192, metadataMaxDepth: 10 },
});

/**
 * JSON as Meta serialises it: every character outside ASCII as a \uXXXX
 * escape (UTF-16 units, lower-case hex) and "/" as "\/". Meta signs these
 * bytes, so a check over re-serialised JSON fails on any such character
 * (github.com/tawn33y/whatsapp-cloud-api issue 60).
 */
function metaJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
    .replaceAll("/", "\\/");
}

const signature = (body: string | Buffer, secret = APP_SECRET) => `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;

/** POSTs a delivery as Meta does: JSON body, signed unless told otherwise. */
async function deliver(body: string, options: { secret?: string; signature?: string | null; baseUrl?: string } = {}) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  const signed = options.signature === undefined ? signature(body, options.secret) : options.signature;
  if (signed !== null) headers["x-hub-signature-256"] = signed;
  const response = await fetch(`${options.baseUrl ?? fixture.server.baseUrl}/webhooks/whatsapp`, { method: "POST", headers, body });
  return { status: response.status, body: await response.text() };
}

/** The envelope every Meta example shares: one entry of one `messages` change. */
function envelope(value: Record<string, unknown>, businessAccountId = "102290129340398") {
  return {
    object: "whatsapp_business_account",
    entry: [{ id: businessAccountId, changes: [{ value: { messaging_product: "whatsapp", metadata: BUSINESS, ...value }, field: "messages" }] }],
  };
}
const BUSINESS = { display_phone_number: "15550783881", phone_number_id: "106540352242922" };

/** Events of one source in the feed (ListIngestEvents), as a consumer reads them. */
async function listed(): Promise<IngestEvent[]> {
  const client = feedClient(createConnectTransport({ baseUrl: fixture.server.baseUrl, httpVersion: "1.1" }));
  const events: IngestEvent[] = [];
  let pageToken = "";
  do {
    const page = await client.listIngestEvents({ source: "whatsapp", pageSize: 1000, pageToken });
    events.push(...page.ingestEvents);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return events;
}
/**
 * The feed's events by external id, once every one named is listed: the feed
 * delivers an event once older transactions anywhere in the cluster ended
 * (docs/feed.md), so a commit may show a moment later.
 */
async function inFeed(...externalIds: string[]): Promise<Map<string | undefined, IngestEvent>> {
  let events = new Map<string | undefined, IngestEvent>();
  await waitFor(async () => {
    events = new Map((await listed()).map((event) => [event.externalId, event]));
    return externalIds.every((id) => events.has(id));
  }, 10_000);
  return events;
}
const byExternalId = async (externalId: string) => (await inFeed(externalId)).get(externalId);

/** A counter's value in this server's metrics; 0 while nothing was counted. */
const metric = async (name: string, labels: Record<string, string>) => (await readMetric(fixture.server.baseUrl, name, labels)) ?? 0;

describe(`WhatsApp Cloud API webhook (${databaseKind})`, () => {
  it("answers Meta's subscription handshake with the challenge only for a configured verify token", async () => {
    const url = (token: string, mode = "subscribe") =>
      `${fixture.server.baseUrl}/webhooks/whatsapp?hub.mode=${mode}&hub.challenge=1158201444&hub.verify_token=${encodeURIComponent(token)}`;

    const ok = await fetch(url(VERIFY_TOKEN));
    expect(ok.status).toBe(200);
    expect(ok.headers.get("content-type")).toMatch(/^text\/plain/);
    expect(await ok.text()).toBe("1158201444");
    expect((await fetch(url("wrong-token-0123456789"))).status).toBe(403);
    expect((await fetch(url(VERIFY_TOKEN, "unsubscribe"))).status).toBe(403);
  });

  it("stores a text message, resolves its sender to a contact and shows it in ListIngestEvents", async () => {
    // Shape: messages webhook reference, "Incoming messages" (a text message).
    const delivery = envelope({
      contacts: [{ profile: { name: "Sheena Nelson" }, wa_id: "16505551234" }],
      messages: [
        {
          from: "16505551234",
          id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
          timestamp: "1749416383",
          type: "text",
          text: { body: "Does it come in another color?" },
        },
      ],
    });

    const response = await deliver(metaJson(delivery));

    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toMatchObject({ status: "ok", stored: 1, duplicates: 0 });
    const event = await byExternalId("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=");
    expect(event).toMatchObject({ source: "whatsapp", senderId: "16505551234", content: "Does it come in another color?", kind: IngestEventKind.MESSAGE });
    expect(event!.contactId).toMatch(/^[0-9a-f-]{36}$/);
    expect(event!.metadata).toEqual({
      type: "text",
      timestamp: "1749416383",
      profile_name: "Sheena Nelson",
      phone_number_id: "106540352242922",
      display_phone_number: "15550783881",
      business_account_id: "102290129340398",
    });
  });

  it("stores every message of every entry and change, each type with readable content and its metadata", async () => {
    const contact = (wa_id: string) => [{ profile: { name: "Maria Souza" }, wa_id }];
    const delivery = {
      object: "whatsapp_business_account",
      entry: [
        {
          id: "102290129340398",
          changes: [
            {
              field: "messages",
              value: {
                messaging_product: "whatsapp",
                metadata: BUSINESS,
                contacts: contact("5511987650001"),
                messages: [
                  // Shape: …/reference/messages/image (caption, media id, MIME type, SHA-256).
                  {
                    from: "5511987650001",
                    id: "wamid.batch-image-caption",
                    timestamp: "1749416400",
                    type: "image",
                    image: { caption: "Segue a foto do pedido", mime_type: "image/jpeg", sha256: "c3e2f7b9…", id: "1003383421387256" },
                  },
                  // The same, without a caption.
                  { from: "5511987650001", id: "wamid.batch-image", timestamp: "1749416401", type: "image", image: { mime_type: "image/jpeg", sha256: "abc", id: "1003383421387257" } },
                  // Shape: …/reference/messages/sticker.
                  { from: "5511987650001", id: "wamid.batch-sticker", timestamp: "1749416402", type: "sticker", sticker: { mime_type: "image/webp", sha256: "def", id: "1003383421387258", animated: false } },
                  // Shape: …/reference/messages/reaction, replying (context) to a message we sent.
                  {
                    from: "5511987650001",
                    id: "wamid.batch-reaction",
                    timestamp: "1749416403",
                    type: "reaction",
                    reaction: { message_id: "wamid.sent-by-us", emoji: "👍" },
                  },
                ],
              },
            },
            {
              field: "messages",
              value: {
                messaging_product: "whatsapp",
                metadata: BUSINESS,
                contacts: contact("5511987650002"),
                messages: [
                  // Shape: …/reference/messages/location.
                  {
                    from: "5511987650002",
                    id: "wamid.batch-location",
                    timestamp: "1749416404",
                    type: "location",
                    location: { address: "Av. Paulista, 1578", latitude: -23.5614, longitude: -46.6558, name: "MASP", url: "https://masp.org.br" },
                  },
                  // Shape: …/reference/messages/contacts.
                  {
                    from: "5511987650002",
                    id: "wamid.batch-contacts",
                    timestamp: "1749416405",
                    type: "contacts",
                    contacts: [{ name: { formatted_name: "João Lima", first_name: "João" }, phones: [{ phone: "+55 11 98765-0003", wa_id: "5511987650003", type: "CELL" }] }],
                  },
                ],
              },
            },
          ],
        },
        {
          id: "102290129340399",
          changes: [
            {
              field: "messages",
              value: {
                messaging_product: "whatsapp",
                metadata: { display_phone_number: "15550783882", phone_number_id: "106540352242923" },
                contacts: contact("5511987650004"),
                messages: [
                  // Shape: …/reference/messages/interactive (button_reply), with the context of our message.
                  {
                    context: { from: "15550783882", id: "wamid.our-buttons" },
                    from: "5511987650004",
                    id: "wamid.batch-button-reply",
                    timestamp: "1749416406",
                    type: "interactive",
                    interactive: { type: "button_reply", button_reply: { id: "confirm", title: "Confirmar" } },
                  },
                  // Shape: …/reference/messages/interactive (list_reply).
                  {
                    from: "5511987650004",
                    id: "wamid.batch-list-reply",
                    timestamp: "1749416407",
                    type: "interactive",
                    interactive: { type: "list_reply", list_reply: { id: "plan-2", title: "Plano Pro", description: "R$ 99 por mês" } },
                  },
                  // Shape: …/reference/messages/button (a template's quick-reply button).
                  { from: "5511987650004", id: "wamid.batch-button", timestamp: "1749416408", type: "button", button: { payload: "STOP", text: "Parar promoções" } },
                  // Shape: …/reference/messages/document.
                  {
                    from: "5511987650004",
                    id: "wamid.batch-document",
                    timestamp: "1749416409",
                    type: "document",
                    document: { filename: "boleto.pdf", mime_type: "application/pdf", sha256: "ghi", id: "1003383421387259" },
                  },
                  // Shape: …/reference/messages/unsupported.
                  {
                    from: "5511987650004",
                    id: "wamid.batch-unsupported",
                    timestamp: "1749416410",
                    type: "unsupported",
                    errors: [{ code: 131051, title: "Message type unknown", message: "Message type unknown", error_data: { details: "Message type is currently not supported." } }],
                    unsupported: { type: "edit" },
                  },
                ],
              },
            },
          ],
        },
      ],
    };

    const response = await deliver(metaJson(delivery));

    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toMatchObject({ stored: 11, duplicates: 0, errors: 0 });
    const ids = ["image-caption", "image", "sticker", "reaction", "location", "contacts", "button-reply", "list-reply", "button", "document", "unsupported"];
    const events = await inFeed(...ids.map((id) => `wamid.batch-${id}`));
    const content = (id: string) => events.get(id)?.content;
    expect(content("wamid.batch-image-caption")).toBe("Segue a foto do pedido");
    expect(content("wamid.batch-image")).toBe("[image]");
    expect(content("wamid.batch-sticker")).toBe("[sticker]");
    expect(content("wamid.batch-reaction")).toBe("[reaction] 👍");
    expect(content("wamid.batch-location")).toBe("[location] MASP, Av. Paulista, 1578 (-23.5614, -46.6558)");
    expect(content("wamid.batch-contacts")).toBe("[contact] João Lima +55 11 98765-0003");
    expect(content("wamid.batch-button-reply")).toBe("Confirmar");
    expect(content("wamid.batch-list-reply")).toBe("Plano Pro");
    expect(content("wamid.batch-button")).toBe("Parar promoções");
    expect(content("wamid.batch-document")).toBe("[document] boleto.pdf");
    expect(content("wamid.batch-unsupported")).toBe("[unsupported]");
    expect(events.get("wamid.batch-image-caption")!.metadata).toMatchObject({
      type: "image",
      media: { id: "1003383421387256", mime_type: "image/jpeg", sha256: "c3e2f7b9…", caption: "Segue a foto do pedido" },
    });
    expect(events.get("wamid.batch-button-reply")!.metadata).toMatchObject({
      context: { from: "15550783882", id: "wamid.our-buttons" },
      business_account_id: "102290129340399",
      phone_number_id: "106540352242923",
      interactive: { type: "button_reply", id: "confirm", title: "Confirmar" },
    });
    expect(events.get("wamid.batch-unsupported")!.metadata).toMatchObject({ errors: [expect.objectContaining({ code: 131051 })] });
    // One contact per sender, whatever the number of its messages.
    const contacts = new Set([...events.values()].filter((e) => e.externalId?.startsWith("wamid.batch-")).map((e) => e.contactId));
    expect(contacts.size).toBe(3);
  });

  it("stores a delivery sent twice once: the retry stores nothing new and counts duplicates", async () => {
    // Shape: messages webhook reference, "Incoming messages", two messages in one change.
    const body = metaJson(
      envelope({
        contacts: [{ profile: { name: "Ana" }, wa_id: "5521987650010" }],
        messages: [
          { from: "5521987650010", id: "wamid.retry-1", timestamp: "1749416500", type: "text", text: { body: "primeira" } },
          { from: "5521987650010", id: "wamid.retry-2", timestamp: "1749416501", type: "text", text: { body: "segunda" } },
        ],
      }),
    );
    const duplicatesBefore = await metric("aurora_ingest_webhook_duplicates_total", { channel: "whatsapp" });

    const first = await deliver(body);
    const eventsAfterFirst = await countEvents(fixture.database);
    const second = await deliver(body);

    expect(first.status).toBe(200);
    expect(second.status).toBe(200);
    expect(JSON.parse(second.body)).toMatchObject({ stored: 0, duplicates: 2 });
    expect(await countEvents(fixture.database)).toBe(eventsAfterFirst);
    expect(await metric("aurora_ingest_webhook_duplicates_total", { channel: "whatsapp" })).toBe(duplicatesBefore + 2);
  });

  it("keeps text Meta escaped as \\uXXXX exactly, verified over the bytes as sent", async () => {
    const text = "Olá! Está disponível em São Paulo? 👍 contato@loja.com.br / R$ 50";
    const body = metaJson(
      envelope({
        contacts: [{ profile: { name: "Conceição Araújo" }, wa_id: "5531987650020" }],
        messages: [{ from: "5531987650020", id: "wamid.escaped", timestamp: "1749416600", type: "text", text: { body: text } }],
      }),
    );
    expect(body).toContain("Ol\\u00e1");
    expect(body).toContain("\\ud83d\\udc4d");
    expect(body).not.toBe(JSON.stringify(JSON.parse(body)));

    expect((await deliver(body)).status).toBe(200);
    const event = await byExternalId("wamid.escaped");
    expect(event?.content).toBe(text);
    expect(event?.metadata?.profile_name).toBe("Conceição Araújo");
  });

  it("stores statuses as STATUS events, once per (message, status), linked to an existing contact and creating none", async () => {
    // Shape: messages webhook reference, "Status messages" (sent, delivered, read; failed with errors).
    const status = (id: string, state: string, recipient: string, extra: Record<string, unknown> = {}) => ({
      id,
      status: state,
      timestamp: "1749416700",
      recipient_id: recipient,
      conversation: { id: "conv-1", origin: { type: "service" } },
      pricing: { billable: true, pricing_model: "PMP", category: "service" },
      ...extra,
    });
    // A contact exists for 5511987650001 (an earlier test); none for 5511987659999.
    const contactsBefore = await count(fixture.database, "crm_contacts");
    const body = metaJson(
      envelope({
        statuses: [
          status("wamid.out-1", "sent", "5511987650001"),
          status("wamid.out-1", "delivered", "5511987650001"),
          status("wamid.out-1", "read", "5511987650001"),
          status("wamid.out-2", "failed", "5511987659999", {
            errors: [{ code: 131047, title: "Re-engagement message", message: "Re-engagement message", error_data: { details: "More than 24 hours have passed." } }],
          }),
        ],
      }),
    );

    const first = await deliver(body);
    const again = await deliver(body);

    expect(JSON.parse(first.body)).toMatchObject({ stored: 4 });
    expect(JSON.parse(again.body)).toMatchObject({ stored: 0, duplicates: 4 });
    expect(await count(fixture.database, "crm_contacts")).toBe(contactsBefore);
    const events = await inFeed("wamid.out-1:sent", "wamid.out-1:delivered", "wamid.out-1:read", "wamid.out-2:failed");
    const [existing] = await rows(fixture.database, "SELECT id FROM crm_contacts WHERE whatsapp_id = '5511987650001'");
    expect(events.get("wamid.out-1:read")).toMatchObject({ kind: IngestEventKind.STATUS, content: "read", contactId: existing.id });
    expect(events.get("wamid.out-1:sent")?.kind).toBe(IngestEventKind.STATUS);
    expect(events.get("wamid.out-1:delivered")?.kind).toBe(IngestEventKind.STATUS);
    const failed = events.get("wamid.out-2:failed");
    expect(failed).toMatchObject({ kind: IngestEventKind.STATUS, content: "failed: (131047) Re-engagement message", contactId: "" });
    expect(failed!.metadata).toMatchObject({ status: "failed", message_id: "wamid.out-2", errors: [expect.objectContaining({ code: 131047 })] });
  });

  it("refuses a missing or wrong signature with 401 and stores nothing", async () => {
    const body = metaJson(
      envelope({ contacts: [{ profile: { name: "X" }, wa_id: "5511987650030" }], messages: [{ from: "5511987650030", id: "wamid.forged", timestamp: "1", type: "text", text: { body: "forged" } }] }),
    );
    const before = await countEvents(fixture.database);
    const refusedBefore = await metric("aurora_ingest_webhook_deliveries_refused_total", { channel: "whatsapp", reason: "signature" });

    expect((await deliver(body, { signature: null })).status).toBe(401);
    expect((await deliver(body, { secret: "some-other-secret-0123456789" })).status).toBe(401);
    expect((await deliver(body, { signature: "sha256=zz" })).status).toBe(401);
    // Signed over the re-serialised JSON instead of the bytes sent.
    expect((await deliver(body.replace("forged", "forgeD"), { signature: signature(body) })).status).toBe(401);

    expect(await countEvents(fixture.database)).toBe(before);
    expect(await metric("aurora_ingest_webhook_deliveries_refused_total", { channel: "whatsapp", reason: "signature" })).toBe(refusedBefore + 3);
    expect(await metric("aurora_ingest_webhook_deliveries_refused_total", { channel: "whatsapp", reason: "signature_missing" })).toBeGreaterThanOrEqual(1);
    expect(fixture.server.logText()).not.toContain(APP_SECRET);
  });

  it("accepts a delivery signed with the previous secret while it is being rotated", async () => {
    const body = metaJson(
      envelope({ contacts: [{ profile: { name: "R" }, wa_id: "5511987650040" }], messages: [{ from: "5511987650040", id: "wamid.rotated", timestamp: "1", type: "text", text: { body: "old secret" } }] }),
    );

    expect((await deliver(body, { secret: OLD_APP_SECRET })).status).toBe(200);
    expect((await byExternalId("wamid.rotated"))?.content).toBe("old secret");
  });

  it("refuses a signed body that is not JSON with 400, counted, storing nothing", async () => {
    const before = await countEvents(fixture.database);
    const malformedBefore = await metric("aurora_ingest_webhook_deliveries_refused_total", { channel: "whatsapp", reason: "malformed" });

    expect((await deliver('{"object":"whatsapp_business_account","entry":[')).status).toBe(400);
    expect((await deliver(Buffer.from([0x7b, 0xff, 0x7d]).toString("latin1"))).status).toBe(400);

    expect(await countEvents(fixture.database)).toBe(before);
    expect(await metric("aurora_ingest_webhook_deliveries_refused_total", { channel: "whatsapp", reason: "malformed" })).toBe(malformedBefore + 2);
  });

  it("refuses a body over the route's limit with 413, declared or streamed, before reading it", async () => {
    const before = await countEvents(fixture.database);
    const big = metaJson(envelope({ messages: [{ from: "5511987650050", id: "wamid.big", timestamp: "1", type: "text", text: { body: "x".repeat(MAX_BODY_BYTES) } }] }));

    expect((await deliver(big)).status).toBe(413);
    // Without a Content-Length (chunked), refused once the count passes the limit.
    const streamed = await new Promise<number>((resolve, reject) => {
      const url = new URL(`${fixture.server.baseUrl}/webhooks/whatsapp`);
      const req = httpRequest(url, { method: "POST", headers: { "content-type": "application/json", "x-hub-signature-256": signature(big) } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", reject);
      req.write(big.slice(0, 200_000));
      req.end(big.slice(200_000));
    });
    expect(streamed).toBe(413);
    expect(await countEvents(fixture.database)).toBe(before);
  });

  it("stores the usable messages of a delivery and an ERROR event for each unusable one", async () => {
    const body = metaJson(
      envelope({
        contacts: [{ profile: { name: "L" }, wa_id: "5511987650060" }],
        messages: [
          { from: "5511987650060", id: "wamid.fine", timestamp: "1", type: "text", text: { body: "ok" } },
          // Over the server's content limit (4096 bytes here).
          { from: "5511987650060", id: "wamid.too-long", timestamp: "2", type: "text", text: { body: "y".repeat(5000) } },
          // No id: Meta never sends this, but a delivery must not be refused for it.
          { from: "5511987650060", timestamp: "3", type: "text", text: { body: "sem id" } },
        ],
      }),
    );

    const response = await deliver(body);
    const again = await deliver(body);

    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toMatchObject({ stored: 3, errors: 2 });
    expect(JSON.parse(again.body)).toMatchObject({ stored: 0, duplicates: 3 });
    await inFeed("wamid.fine", "wamid.too-long");
    let events: IngestEvent[] = [];
    await waitFor(async () => (events = await listed()).some((e) => e.externalId?.startsWith("unusable:")), 10_000);
    expect(events.find((e) => e.externalId === "wamid.fine")?.content).toBe("ok");
    const tooLong = events.find((e) => e.externalId === "wamid.too-long")!;
    expect(tooLong.error).toContain("content must be at most 4096 bytes");
    expect(tooLong.contactId).toBe("");
    const noId = events.find((e) => e.externalId?.startsWith("unusable:"))!;
    expect(noId.error).toBe("the WhatsApp message has no id");
  });

  it("resolves the Brazilian number without its ninth digit to the contact of the number with it", async () => {
    const direct = await postMessage(fixture.server.baseUrl, { source: "whatsapp", sender_id: "5511987650070", content: "via api" });
    // Shape: "Incoming messages"; a number registered before the ninth digit, as Meta may still send it.
    const body = metaJson(
      envelope({ contacts: [{ profile: { name: "N" }, wa_id: "551187650070" }], messages: [{ from: "551187650070", id: "wamid.eight-digits", timestamp: "1", type: "text", text: { body: "oi" } }] }),
    );

    expect((await deliver(body)).status).toBe(200);
    expect((await byExternalId("wamid.eight-digits"))?.contactId).toBe(direct.body.contact_id);
  });

  it("resolves a business-scoped user id sent alone to the contact of the number it came with, also after it changed", async () => {
    // Shape: messages webhook with BSUIDs (…/business-scoped-user-ids): contacts[].user_id beside wa_id, messages[].from_user_id.
    const withNumber = metaJson(
      envelope({
        contacts: [{ profile: { name: "Bia" }, wa_id: "5511987650080", user_id: "BR.1502576394655843" }],
        messages: [{ from: "5511987650080", from_user_id: "BR.1502576394655843", id: "wamid.bsuid-1", timestamp: "1", type: "text", text: { body: "com número" } }],
      }),
    );
    // A user who adopted a username: no wa_id, no from.
    const alone = metaJson(
      envelope({
        contacts: [{ profile: { name: "Bia" }, user_id: "BR.1502576394655843", username: "@bia" }],
        messages: [{ from_user_id: "BR.1502576394655843", id: "wamid.bsuid-2", timestamp: "2", type: "text", text: { body: "só o id" } }],
      }),
    );
    // Shape: …/reference/messages/system, user_changed_user_id (no contacts array).
    const changed = metaJson(
      envelope({
        messages: [
          {
            from_user_id: "BR.1502576394655843",
            id: "wamid.bsuid-changed",
            timestamp: "3",
            type: "system",
            system: { body: "User Bia changed their business-scoped user ID", type: "user_changed_user_id", user_id: "BR.9990001112223334", previous_user_id: "BR.1502576394655843" },
          },
        ],
      }),
    );
    const afterChange = metaJson(
      envelope({
        contacts: [{ profile: { name: "Bia" }, user_id: "BR.9990001112223334" }],
        messages: [{ from_user_id: "BR.9990001112223334", id: "wamid.bsuid-3", timestamp: "4", type: "text", text: { body: "id novo" } }],
      }),
    );

    for (const body of [withNumber, alone, changed, afterChange]) expect((await deliver(body)).status).toBe(200);

    const first = await byExternalId("wamid.bsuid-1");
    expect(first?.contactId).toMatch(/^[0-9a-f-]{36}$/);
    expect(await byExternalId("wamid.bsuid-2")).toMatchObject({ contactId: first!.contactId, senderId: "5511987650080" });
    expect((await byExternalId("wamid.bsuid-2"))!.metadata).toMatchObject({ user_id: "BR.1502576394655843", username: "@bia" });
    expect(await byExternalId("wamid.bsuid-changed")).toMatchObject({ kind: IngestEventKind.SYSTEM, contactId: first!.contactId });
    expect(await byExternalId("wamid.bsuid-3")).toMatchObject({ contactId: first!.contactId });
    const links = await rows(fixture.database, "SELECT user_id, whatsapp_id FROM crm_whatsapp_user_links WHERE whatsapp_id = '5511987650080' ORDER BY user_id");
    expect(links).toEqual([
      { user_id: "BR.1502576394655843", whatsapp_id: "5511987650080" },
      { user_id: "BR.9990001112223334", whatsapp_id: "5511987650080" },
    ]);
  });

  it("acknowledges and counts changes of other fields without storing them", async () => {
    const before = await countEvents(fixture.database);
    // Shape: …/reference/user_preferences (another field of the same account).
    const body = metaJson({
      object: "whatsapp_business_account",
      entry: [
        {
          id: "102290129340398",
          changes: [
            {
              field: "user_preferences",
              value: { messaging_product: "whatsapp", metadata: BUSINESS, user_preferences: [{ wa_id: "5511987650001", detail: "stop", category: "marketing_messages", value: "stop", timestamp: 1 }] },
            },
          ],
        },
      ],
    });

    expect((await deliver(body)).status).toBe(200);
    expect(await countEvents(fixture.database)).toBe(before);
    expect(await metric("aurora_ingest_webhook_items_ignored_total", { channel: "whatsapp", item: "field:user_preferences" })).toBe(1);
    expect(await metric("aurora_ingest_webhook_deliveries_accepted_total", { channel: "whatsapp" })).toBeGreaterThan(5);
  });

  it("is authenticated by Meta's signature, not by our bearer tokens, and logs no content", async () => {
    const guarded = await startTestServer(fixture.database, {
      apiTokens: ["ingest-token-0123456789abcdef"],
      whatsapp: { appSecrets: [APP_SECRET], verifyTokens: [VERIFY_TOKEN], maxBodyBytes: MAX_BODY_BYTES },
    });
    try {
      const body = metaJson(
        envelope({ contacts: [{ profile: { name: "T" }, wa_id: "5511987650090" }], messages: [{ from: "5511987650090", id: "wamid.no-bearer", timestamp: "1", type: "text", text: { body: "conteúdo privado" } }] }),
      );
      const plain = await postMessage(guarded.baseUrl, { source: "whatsapp", sender_id: "5511987650090", content: "x" });

      expect(plain.status).toBe(401);
      expect((await deliver(body, { baseUrl: guarded.baseUrl })).status).toBe(200);
      expect((await deliver(body, { baseUrl: guarded.baseUrl, signature: null })).status).toBe(401);
      const line = guarded.logLines.find((l) => l.path === "/webhooks/whatsapp" && l.httpStatus === 200);
      expect(line).toMatchObject({ channel: "whatsapp", stored: 1, duplicates: 0, accounts: ["102290129340398"] });
      expect(guarded.logText()).not.toContain("privado");
      expect(guarded.logText()).not.toContain(APP_SECRET);
    } finally {
      await guarded.server.close();
    }
  });

  it("is not served until its secrets are configured", async () => {
    const bare = await startTestServer(fixture.database);
    try {
      const body = metaJson(envelope({ messages: [] }));
      expect((await deliver(body, { baseUrl: bare.baseUrl })).status).toBe(404);
    } finally {
      await bare.server.close();
    }
  });
});
