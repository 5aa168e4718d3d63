import { createHash, createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { checkMailgunSignature, readMailgunForm } from "../../src/channels/email/mailgun.js";
import { defaultEmailLimits, readEmail, repairC1, replyOf } from "../../src/channels/email/read-email.js";

const fixture = (name: string) => new Uint8Array(readFileSync(new URL(`../fixtures/email/${name}`, import.meta.url)));

describe("reading an e-mail", () => {
  it("keeps a Portuguese reply without its quoted history, with threading and the receiving server's results", async () => {
    const item = await readEmail(fixture("reply-pt-gmail.eml"), { via: "mta" });
    expect(item.unusable).toBeUndefined();
    expect(item.senderId).toBe("Ana.Souza@Example.com.br");
    expect(item.externalId).toBe("CAF=reply-0001@mail.example.com.br");
    expect(item.content).toBe("Obrigada! Podemos fechar com pagamento em 30 dias. Você consegue\nenviar o contrato até sexta?");
    expect(item.metadata).toMatchObject({
      via: "mta",
      subject: "Re: Proposta de orçamento",
      from_name: "Ana Souza",
      to: ["vendas@aurora.example"],
      cc: ["financeiro@example.com.br"],
      in_reply_to: "<proposta-77@aurora.example>",
      references: ["<pedido-12@aurora.example>", "<proposta-77@aurora.example>"],
      quoted_history_removed: true,
      // The topmost header is the receiving server's; the forged one below it is kept raw, not believed.
      authentication: { spf: "pass", dkim: "pass", dmarc: "pass" },
    });
    expect((item.metadata.authentication as { authentication_results: string[] }).authentication_results).toHaveLength(2);
    expect(item.metadata.auto_reply).toBeUndefined();
  });

  it("decodes ISO-8859-1 headers and an 8-bit body", async () => {
    const item = await readEmail(fixture("latin1-8bit.eml"), { via: "mta" });
    expect(item.metadata).toMatchObject({ subject: "Solicitação de orçamento", from_name: "João Peçanha", authentication: { spf: "softfail" } });
    expect(item.content).toBe("Bom dia, gostaria de um orçamento para 3 licenças.\nAtenciosamente,\nJoão Peçanha");
  });

  it("decodes windows-1252's own characters (euro sign, curly quotes, dash) in quoted-printable body and subject", async () => {
    const item = await readEmail(fixture("windows-1252-qp.eml"), { via: "mta" });
    expect(item.metadata.subject).toBe("Preço – “promoção”");
    expect(item.content).toBe("O preço “promocional” é €10 – válido até sexta.");
  });

  it("takes the text from the HTML when there is no text part, without styles, link targets or images", async () => {
    const item = await readEmail(fixture("html-only.eml"), { via: "mta" });
    expect(item.content).toBe("Quero dois planos & suporte.\n\nVer pedido");
  });

  it("describes attachments without their bytes, and uses a digest of the raw message when there is no Message-ID", async () => {
    const raw = fixture("attachment-no-message-id.eml");
    const item = await readEmail(raw, { via: "mailgun", mailFrom: "bounce@example.com.br", recipient: "vendas@aurora.example" });
    expect(item.externalId).toBe(`sha256:${createHash("sha256").update(raw).digest("hex")}`);
    expect(item.senderId).toBe("ana.souza@example.com.br");
    expect(item.content).toBe("Segue o contrato assinado.");
    expect(item.metadata).toMatchObject({
      mail_from: "bounce@example.com.br",
      recipient: "vendas@aurora.example",
      attachments: [{ file_name: "contrato-assinado.pdf", mime_type: "application/pdf", size: 31 + 1024, disposition: "attachment" }],
    });
    expect(JSON.stringify(item.metadata)).not.toContain("PDF-1.4");
  });

  it("flags an automatic reply", async () => {
    const item = await readEmail(fixture("auto-reply.eml"), { via: "mta" });
    expect(item.metadata.auto_reply).toBe(true);
    expect(item.content).toBe("Estou de férias até 05/01. Em caso de urgência, ligue para a recepção.");
  });

  it("turns what cannot be read into an item to store as an ERROR, never a throw", async () => {
    const noFrom = await readEmail(new TextEncoder().encode("Subject: x\r\n\r\nbody\r\n"), { via: "mta" });
    expect(noFrom.unusable).toBe("the message has no From address");
    const deep = Array.from({ length: 30 }, (_, i) => `Content-Type: multipart/mixed; boundary=b${i}\r\n\r\n--b${i}\r\n`).join("");
    const tooDeep = await readEmail(new TextEncoder().encode(`From: a@example.com\r\n${deep}`), { via: "mta" }, { ...defaultEmailLimits, maxNestingDepth: 5 });
    expect(tooDeep.unusable).toMatch(/could not be parsed as MIME/);
    expect(tooDeep.externalId).toMatch(/^sha256:/);
  });

  it("cuts content at the limit, never inside a character, and says so", async () => {
    const raw = new TextEncoder().encode(`From: a@example.com\r\nMessage-ID: <long@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${"ção ".repeat(100)}\r\n`);
    const item = await readEmail(raw, { via: "mta" }, { ...defaultEmailLimits, contentMaxBytes: 11 });
    expect(item.content).toBe("ção ção");
    expect(item.metadata.content_truncated).toBe(true);
  });

  it("keeps at most 50 recipients and references (the thread's root and its latest), so metadata stays small", async () => {
    const to = Array.from({ length: 120 }, (_, i) => `r${i}@example.com`).join(", ");
    const references = Array.from({ length: 80 }, (_, i) => `<m${i}@x>`).join(" ");
    const item = await readEmail(new TextEncoder().encode(`From: a@example.com\r\nTo: ${to}\r\nReferences: ${references}\r\n\r\nhi\r\n`), { via: "mta" });
    expect(item.metadata.to).toHaveLength(50);
    expect(item.metadata.references).toEqual(["<m0@x>", ...Array.from({ length: 49 }, (_, i) => `<m${i + 31}@x>`)]);
  });

  it("keeps the whole text of a message that is nothing but a quote", () => {
    expect(replyOf("> só a citação\n> mais nada")).toBe("> só a citação\n> mais nada");
  });

  it("reads C1 control codes back as windows-1252", () => {
    expect(repairC1("\u0080 \u0093x\u0094 \u0096")).toBe("€ “x” –");
  });
});

describe("Mailgun's proof", () => {
  const key = "key-mailgun-signing-0123456789";
  const sign = (timestamp: string, token: string, with_ = key) => createHmac("sha256", with_).update(timestamp + token).digest("hex");
  const now = new Date("2026-12-04T12:00:00Z");
  const fresh = String(now.getTime() / 1000 - 10);

  it("accepts a signature by any configured key, and refuses a wrong, missing or stale one", () => {
    const token = "a".repeat(50);
    expect(checkMailgunSignature({ timestamp: fresh, token, signature: sign(fresh, token) }, ["old-key-0123456789", key], now)).toEqual({ ok: true });
    expect(checkMailgunSignature({ timestamp: fresh, token, signature: sign(fresh, token, "other") }, [key], now)).toEqual({ ok: false, reason: "signature_invalid" });
    expect(checkMailgunSignature({ timestamp: fresh, token, signature: "" }, [key], now)).toEqual({ ok: false, reason: "signature_missing" });
    // A subaccount's post also carries the primary account's signature.
    expect(checkMailgunSignature({ timestamp: fresh, token, signature: sign(fresh, token, "sub"), parentSignature: sign(fresh, token) }, [key], now)).toEqual({ ok: true });
    const stale = String(now.getTime() / 1000 - 301);
    expect(checkMailgunSignature({ timestamp: stale, token, signature: sign(stale, token) }, [key], now)).toEqual({ ok: false, reason: "timestamp_stale" });
  });

  it("reads body-mime byte for byte from a multipart form field, 8-bit Latin-1 included", async () => {
    // Mailgun posts multipart/form-data when a message has attachments, body-mime as a plain field.
    const raw = fixture("latin1-8bit.eml");
    const boundary = "mailgun-boundary-1234";
    const field = (name: string, value: string | Uint8Array) =>
      Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n`), Buffer.from(value), Buffer.from("\r\n")]);
    const body = Buffer.concat([
      field("timestamp", fresh),
      field("token", "t".repeat(50)),
      field("signature", sign(fresh, "t".repeat(50))),
      field("recipient", "vendas@aurora.example"),
      field("sender", "joao@provedor.com.br"),
      field("body-mime", raw),
      Buffer.from(`--${boundary}--\r\n`),
    ]);
    const post = await readMailgunForm(body, `multipart/form-data; boundary=${boundary}`, 1024 * 1024);
    expect(post).toMatchObject({ timestamp: fresh, recipient: "vendas@aurora.example", sender: "joao@provedor.com.br" });
    expect(Buffer.compare(Buffer.from(post!.bodyMime!), Buffer.from(raw))).toBe(0);
  });

  it("reads an urlencoded form, and refuses what is not a form", async () => {
    const body = new TextEncoder().encode(new URLSearchParams({ timestamp: fresh, token: "x", signature: "y", "body-mime": "From: a@b.c\r\n\r\nhi" }).toString());
    const post = await readMailgunForm(body, "application/x-www-form-urlencoded", 1024);
    expect(new TextDecoder().decode(post!.bodyMime)).toBe("From: a@b.c\r\n\r\nhi");
    expect(await readMailgunForm(body, "application/json", 1024)).toBeUndefined();
    expect(await readMailgunForm(body, "application/x-www-form-urlencoded", 12)).toMatchObject({ bodyMime: undefined, bodyMimeTooLarge: true });
    expect(await readMailgunForm(body, "application/x-www-form-urlencoded", 8)).toBeUndefined();
  });
});
