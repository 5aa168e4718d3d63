import { createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { QueryTypes } from "sequelize";
import { beforeEach, describe, expect, it } from "vitest";
import { IngestEventKind, type IngestEvent } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { databaseKind } from "./support/database.js";
import { feedClient, feedTransports } from "./support/feed.js";
import { useTestServer } from "./support/server.js";
import { metricValue } from "./support/metrics.js";

const SIGNING_KEY = "key-0123456789abcdef0123456789abcdef";
const INGEST_TOKEN = "ingest-token-0123456789abcdef";
const FEED_TOKEN = "feed-token-0123456789abcdef";

const context = useTestServer({
  apiTokens: [INGEST_TOKEN],
  feedApiTokens: [FEED_TOKEN],
  email: { maxBytes: 256 * 1024, mailgunSigningKeys: [SIGNING_KEY] },
});

const fixture = (name: string) => readFileSync(new URL(`./fixtures/email/${name}`, import.meta.url));

/**
 * Posts a message as Mailgun's forward() to a URL ending in `mime` does
 * (documentation.mailgun.com, "Receiving Messages via HTTP through a forward()
 * action"): multipart/form-data with body-mime as a plain field, and the
 * proof fields of "Securing Webhooks" computed here.
 */
async function mailgun(raw: Buffer, proof: Partial<{ timestamp: string; token: string; signature: string }> = {}) {
  const timestamp = proof.timestamp ?? String(Math.floor(Date.now() / 1000));
  const token = proof.token ?? randomBytes(25).toString("hex");
  const signature = proof.signature ?? createHmac("sha256", SIGNING_KEY).update(timestamp + token).digest("hex");
  const boundary = `----mailgun${randomBytes(8).toString("hex")}`;
  const field = (name: string, value: string | Buffer) =>
    Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n`), Buffer.from(value), Buffer.from("\r\n")]);
  const body = Buffer.concat([
    field("recipient", "vendas@aurora.example"),
    field("sender", "bounces@example.com.br"),
    field("timestamp", timestamp),
    field("token", token),
    field("signature", signature),
    field("body-mime", raw),
    Buffer.from(`--${boundary}--\r\n`),
  ]);
  const response = await fetch(`${context.server.baseUrl}/webhooks/email/mailgun/mime`, {
    method: "POST",
    headers: { "content-type": `multipart/form-data; boundary=${boundary}` },
    body,
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown>, token, timestamp, signature };
}

/** Posts a message as our own MTA's delivery script does. */
async function mta(raw: Buffer, token: string | null = INGEST_TOKEN, contentType = "message/rfc822") {
  const response = await fetch(`${context.server.baseUrl}/ingest/email?mail_from=joao%40provedor.com.br&recipient=vendas%40aurora.example`, {
    method: "POST",
    headers: { "content-type": contentType, ...(token && { authorization: `Bearer ${token}` }) },
    body: new Uint8Array(raw),
  });
  return { status: response.status, body: await response.text() };
}

async function feed(): Promise<IngestEvent[]> {
  return (await feedClient(feedTransports["gRPC"](context.server.baseUrl, FEED_TOKEN)).listIngestEvents({ pageSize: 1000, source: "email" })).ingestEvents;
}

async function stored(): Promise<number> {
  const [row] = await context.database.sequelize.query<{ n: number }>("SELECT count(*)::int AS n FROM crm_ingest_events", { type: QueryTypes.SELECT });
  return row.n;
}

/** Deliveries refused for `reason` so far; 0 while none was. */
async function refusals(reason: string): Promise<number> {
  return metricValue(await context.server.metrics.registry.metrics(), "aurora_ingest_webhook_deliveries_refused_total", { reason }) ?? 0;
}

describe(`inbound e-mail (${databaseKind})`, () => {
  let before: number;
  beforeEach(async () => {
    before = await stored();
  });

  it("stores a Mailgun post: the Portuguese reply without its history, threading, and the receiving server's results", async () => {
    const answer = await mailgun(fixture("reply-pt-gmail.eml"));
    expect(answer).toMatchObject({ status: 200, body: { status: "ok", stored: 1, duplicates: 0, errors: 0 } });
    const event = (await feed()).find((e) => e.externalId === "CAF=reply-0001@mail.example.com.br");
    expect(event).toMatchObject({
      source: "email",
      senderId: "Ana.Souza@Example.com.br",
      content: "Obrigada! Podemos fechar com pagamento em 30 dias. Você consegue\nenviar o contrato até sexta?",
      kind: IngestEventKind.MESSAGE,
      status: IngestEventStatus.LINKED,
    });
    expect(event?.metadata).toMatchObject({
      via: "mailgun",
      subject: "Re: Proposta de orçamento",
      in_reply_to: "<proposta-77@aurora.example>",
      recipient: "vendas@aurora.example",
      authentication: { spf: "pass", dkim: "pass", dmarc: "pass" },
    });
    const [contact] = await context.database.sequelize.query<{ n: number }>("SELECT count(*)::int AS n FROM crm_contacts WHERE email = 'ana.souza@example.com.br'", {
      type: QueryTypes.SELECT,
    });
    expect(contact.n).toBe(1);
  });

  it("refuses a replayed token (406, never retried) and a stale timestamp, storing nothing", async () => {
    const first = await mailgun(fixture("html-only.eml"));
    expect(first.status).toBe(200);
    const replay = await mailgun(fixture("auto-reply.eml"), { timestamp: first.timestamp, token: first.token, signature: first.signature });
    expect(replay).toMatchObject({ status: 406, body: { error: "this signature's token was already used" } });
    const stale = await mailgun(fixture("auto-reply.eml"), { timestamp: String(Math.floor(Date.now() / 1000) - 301) });
    expect(stale.status).toBe(401);
    const wrong = await mailgun(fixture("auto-reply.eml"), { signature: "0".repeat(64) });
    expect(wrong.status).toBe(401);
    expect(await stored()).toBe(before + 1);
    expect(await refusals("replayed_token")).toBe(1);
    expect(await refusals("timestamp_stale")).toBe(1);
    expect(await refusals("signature_invalid")).toBe(1);
    expect((await feed()).some((e) => e.metadata?.subject === "Resposta automática: Proposta")).toBe(false);
    expect(context.server.logText()).not.toContain(SIGNING_KEY);
  });

  it("stores a message our MTA posts with an ingest token: ISO-8859-1 headers and 8-bit body decoded", async () => {
    expect((await mta(fixture("latin1-8bit.eml"))).status).toBe(200);
    const event = (await feed()).find((e) => e.externalId === "20261203090000.4411@provedor.com.br");
    expect(event).toMatchObject({ senderId: "joao@provedor.com.br", content: "Bom dia, gostaria de um orçamento para 3 licenças.\nAtenciosamente,\nJoão Peçanha" });
    expect(event?.metadata).toMatchObject({ via: "mta", subject: "Solicitação de orçamento", from_name: "João Peçanha", mail_from: "joao@provedor.com.br" });
  });

  it("reads quoted-printable Windows-1252, HTML-only mail, attachments and auto-replies through the MTA's door", async () => {
    for (const name of ["windows-1252-qp.eml", "attachment-no-message-id.eml", "auto-reply.eml"]) expect((await mta(fixture(name))).status).toBe(200);
    const events = await feed();
    expect(events.find((e) => e.externalId === "qp-1252-0001@loja.example.com.br")?.content).toBe("O preço “promocional” é €10 – válido até sexta.");
    const attachment = events.find((e) => e.externalId?.startsWith("sha256:"));
    expect(attachment?.metadata?.attachments).toEqual([{ file_name: "contrato-assinado.pdf", mime_type: "application/pdf", size: 1055, disposition: "attachment" }]);
    expect(events.find((e) => e.externalId === "auto-0001@example.net")?.metadata).toMatchObject({ auto_reply: true });
    expect(events.find((e) => e.externalId === "html-only-0001@example.org")?.content).toBe("Quero dois planos & suporte.\n\nVer pedido");
  });

  it("deduplicates one message arriving through both doors, by its Message-ID", async () => {
    expect((await mta(fixture("reply-pt-gmail.eml"))).body).toContain('"duplicates":1');
    expect(await stored()).toBe(before);
  });

  it("stores a message it cannot read as an ERROR event, answering 200 so it is not retried", async () => {
    const noFrom = Buffer.from("Subject: sem remetente\r\nMessage-ID: <no-from-1@x>\r\n\r\ncorpo\r\n");
    expect((await mta(noFrom)).status).toBe(200);
    const event = (await feed()).find((e) => e.externalId === "no-from-1@x");
    expect(event).toMatchObject({ status: IngestEventStatus.ERROR, error: "the message has no From address" });
  });

  it("stores a message that breaks a storage rule (a NUL character) as an ERROR event that says so", async () => {
    const nul = Buffer.from("From: a@example.com\r\nMessage-ID: <nul-1@x>\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nantes=00depois\r\n");
    expect((await mta(nul)).status).toBe(200);
    const event = (await feed()).find((e) => e.externalId === "nul-1@x");
    expect(event).toMatchObject({ status: IngestEventStatus.ERROR, content: "[over our limits]", senderId: "a@example.com" });
    expect(event?.error).toMatch(/^not stored as sent: content /);
  });

  it("needs an ingest token, message/rfc822, and a body within EMAIL_MAX_BYTES on the MTA's door", async () => {
    expect((await mta(fixture("latin1-8bit.eml"), null)).status).toBe(401);
    expect((await mta(fixture("latin1-8bit.eml"), FEED_TOKEN)).status).toBe(403);
    expect((await mta(fixture("latin1-8bit.eml"), INGEST_TOKEN, "text/plain")).status).toBe(415);
    const huge = Buffer.concat([fixture("latin1-8bit.eml"), Buffer.alloc(300 * 1024, "a")]);
    expect((await mta(huge)).status).toBe(413);
    expect(await stored()).toBe(before);
  });
});
