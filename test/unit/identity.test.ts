import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { cachedSenderIdentity, senderIdentity, type IdentityOptions } from "../../src/ingest/identity/sender-identity.js";
import { configProblems } from "../support/config.js";

const brazil: IdentityOptions = { defaultPhoneRegion: "BR" };

/** A canonical value the sender must map to, or the problem that must end its reason. */
type Expected = string | { invalid: string };

const TOO_SHORT = { invalid: "the number is too short" };
const TOO_LONG = { invalid: "the number is too long" };
const NOT_VALID = { invalid: "the number is not a valid phone number" };
const LETTERS = {
  invalid: "it has letters but is neither a business-scoped id (like BR.1234abcd) nor an id ending in @lid",
};

const whatsappCases: [string, string, Expected][] = [
  // One São Paulo mobile in every form gateways send.
  ["plain E.164 digits", "5511999999999", "5511999999999"],
  ["E.164 with + and separators", "+55 11 99999-9999", "5511999999999"],
  ["old form without the ninth digit, with parentheses", "+55 (11) 9999-9999", "5511999999999"],
  ["international prefix 00", "005511999999999", "5511999999999"],
  ["JID @c.us", "5511999999999@c.us", "5511999999999"],
  ["JID @s.whatsapp.net", "5511999999999@s.whatsapp.net", "5511999999999"],
  ["surrounding whitespace", "  5511999999999\t", "5511999999999"],
  ["dots as separators", "+55.11.99999.9999", "5511999999999"],
  ["national number, default region BR", "11 99999-9999", "5511999999999"],
  ["national number without the ninth digit", "(11) 9999-9999", "5511999999999"],
  ["national number with trunk prefix 0", "011 99999-9999", "5511999999999"],
  ["old form as a JID", "551199999999@s.whatsapp.net", "5511999999999"],
  // Brazilian mobiles from several area codes, without and with the ninth digit.
  ["Rio de Janeiro (21) without 9", "552188887777", "5521988887777"],
  ["Rio de Janeiro (21) with 9", "5521988887777", "5521988887777"],
  ["Belo Horizonte (31) without 9", "553187654321", "5531987654321"],
  ["Belo Horizonte (31) with 9", "+55 31 98765-4321", "5531987654321"],
  ["Curitiba (41) without 9", "554196543210", "5541996543210"],
  ["Brasília (61) without 9, subscriber starting with 7", "556178123456", "5561978123456"],
  ["Fortaleza (85) without 9, subscriber starting with 6", "558566554433", "5585966554433"],
  ["Porto Alegre (51) with 9", "5551999887766", "5551999887766"],
  ["Manaus (92) without 9", "+55 92 9123-4567", "5592991234567"],
  ["Salvador (71) without 9, as a JID", "557188776655@c.us", "5571988776655"],
  // Brazilian landlines: 8-digit subscriber numbers starting with 2 to 5 get no 9.
  ["São Paulo landline starting with 3", "551133334444", "551133334444"],
  ["Rio de Janeiro landline starting with 2", "+55 21 2555-1234", "552125551234"],
  ["Brasília landline", "556133221100", "556133221100"],
  ["São Paulo landline starting with 4", "+55 11 4123-4567", "551141234567"],
  ["São Paulo landline starting with 5", "+55 11 5123-4567", "551151234567"],
  ["national landline, default region BR", "(41) 3322-1100", "554133221100"],
  // Other countries: read by their own rules, never touched by the ninth-digit rule.
  ["US number without + (international reading first)", "12025550123", "12025550123"],
  ["US number with + and separators", "+1 (202) 555-0123", "12025550123"],
  ["US number shaped like an old Brazilian mobile", "+1 617 855 1234", "16178551234"],
  ["UK mobile", "+44 7911 123456", "447911123456"],
  ["Portuguese mobile with 00", "00351912345678", "351912345678"],
  ["German mobile", "+49 151 23456789", "4915123456789"],
  ["Argentine mobile keeps its own 9", "+54 9 11 1234-5678", "5491112345678"],
  ["Norwegian number: a valid international reading wins over BR", "4799998888", "4799998888"],
  // Ids that are not phone numbers: opaque, exact after trimming.
  ["business-scoped user id", "BR.1234abcd", "BR.1234abcd"],
  ["business-scoped user id, trimmed", "  US.13491208655302741918 ", "US.13491208655302741918"],
  ["linked-device id", "123456789012345@lid", "123456789012345@lid"],
  ["linked-device id, trimmed", " 98765@lid\n", "98765@lid"],
  ["linked-device id with a phone's digits stays apart from the phone", "5511999999999@lid", "5511999999999@lid"],
  // What cannot be normalised.
  ["empty", "", { invalid: "it is empty" }],
  ["only whitespace", "   ", { invalid: "it is empty" }],
  ["a name", "joao.silva", LETTERS],
  ["business-scoped id with a lower-case country", "br.1234abcd", LETTERS],
  ["linked-device id in upper case", "123@LID", LETTERS],
  ["group JID", "120363025000000000@g.us", LETTERS],
  ["number with an extension", "+55 11 99999-9999 ext. 12", LETTERS],
  ["symbols a number cannot have", "55#11999999999", { invalid: "it has characters a phone number cannot have" }],
  ["only a prefix", "+", { invalid: "it holds no number" }],
  ["too short, with country code", "+55 11 9999", TOO_SHORT],
  ["too short, digits only", "123", TOO_SHORT],
  ["too long", "1234567890123456789", TOO_LONG],
  ["Brazilian number with one digit too many", "+55 11 99999-99999", TOO_LONG],
  ["unknown country code", "+999 123456789", { invalid: "the number starts with no known country code" }],
  ["Brazilian area code that does not exist", "5520999998888", NOT_VALID],
  ["Brazilian subscriber number starting with 1", "+55 11 1234-5678", NOT_VALID],
];

const emailCases: [string, string, Expected][] = [
  ["plain address", "ana@example.com", "ana@example.com"],
  ["upper case and whitespace", "  ANA.Souza@Example.COM ", "ana.souza@example.com"],
  ["display form", "Ana Souza <Ana@Example.com>", "ana@example.com"],
  ["angle brackets only", "<ana@example.com>", "ana@example.com"],
  ["quoted display name with a comma", '"Souza, Ana" <Ana@Example.com>', "ana@example.com"],
  ["dots and +tag are kept", "Ana <Ana.Souza+CRM@Gmail.com>", "ana.souza+crm@gmail.com"],
  ["comment in the address", "ana (financeiro) @example.com.br", "ana@example.com.br"],
  ["non-ASCII local part", "José@Exemplo.com.br", "josé@exemplo.com.br"],
  ["empty", " ", { invalid: "it is empty" }],
  ["no @", "not-an-address", { invalid: 'it has no "@"' }],
  ["two @", "ana@@example.com", { invalid: "it is not well-formed" }],
  ["unclosed angle bracket", "Ana <ana@example.com", { invalid: "it is not well-formed" }],
  ["two addresses", "ana@example.com, bia@example.com", { invalid: "it holds more than one address" }],
  ["a group", "Equipe: ana@example.com;", { invalid: "it is a group, not one address" }],
  ["quoted local part", '"ana souza"@example.com', { invalid: "its local part needs quotes, which we do not accept" }],
  ["domain without a dot", "ana@localhost", { invalid: 'its domain "localhost" is not an internet host name' }],
  ["IP literal domain", "ana@[10.0.0.1]", { invalid: 'its domain "[10.0.0.1]" is not an internet host name' }],
  ["numeric top-level domain", "ana@10.0.0.1", { invalid: 'its domain "10.0.0.1" is not an internet host name' }],
  ["underscore in the domain", "ana@exa_mple.com", { invalid: 'its domain "exa_mple.com" is not an internet host name' }],
];

const cases: [string, string, string, Expected][] = [
  ...whatsappCases.map(([name, id, expected]): [string, string, string, Expected] => ["whatsapp", name, id, expected]),
  ...emailCases.map(([name, id, expected]): [string, string, string, Expected] => ["email", name, id, expected]),
];

const column = { whatsapp: "whatsapp_id", email: "email" } as const;
const expectedKind = { whatsapp: "a WhatsApp id", email: "an e-mail address" } as const;

describe("senderIdentity", () => {
  it.each(cases)("%s: %s (%j)", (source, _name, senderId, expected) => {
    const identity = senderIdentity(source, senderId, brazil);
    if (typeof expected === "string") {
      expect(identity).toEqual({ kind: "contact", key: { column: column[source as keyof typeof column], value: expected } });
    } else {
      expect(identity).toEqual({
        kind: "invalid",
        reason: `${source} sender_id ${JSON.stringify(senderId)} is not ${expectedKind[source as keyof typeof expectedKind]}: ${expected.invalid}`,
      });
    }
  });

  it("gives phone numbers digits only and opaque ids never digits only, so the two cannot collide", () => {
    for (const [, senderId, expected] of whatsappCases) {
      if (typeof expected !== "string") continue;
      const opaque = /[A-Za-z]/.test(senderId.replace(/@(c\.us|s\.whatsapp\.net)$/, ""));
      expect(/^[0-9]+$/.test(expected)).toBe(!opaque);
    }
  });

  it("has no identity rule for other sources", () => {
    expect(senderIdentity("web", "visitor-42", brazil)).toEqual({ kind: "none" });
    expect(senderIdentity("sms", "+5511999999999", brazil)).toEqual({ kind: "none" });
  });

  it("cuts a very long sender short in the reason", () => {
    const identity = senderIdentity("whatsapp", "x".repeat(1000), brazil);
    expect(identity).toEqual({ kind: "invalid", reason: `whatsapp sender_id "${"x".repeat(80)}…" is not a WhatsApp id: ${LETTERS.invalid}` });
  });
});

describe("default phone region", () => {
  it.each([
    ["PT", "912 345 678", "351912345678"],
    ["US", "(202) 555-0123", "12025550123"],
    ["BR", "(21) 98888-7777", "5521988887777"],
  ] as const)("reads national numbers in %s: %s", (region, senderId, canonical) => {
    expect(senderIdentity("whatsapp", senderId, { defaultPhoneRegion: region })).toEqual({
      kind: "contact",
      key: { column: "whatsapp_id", value: canonical },
    });
  });

  it("does not read a Portuguese national number as Brazilian", () => {
    expect(senderIdentity("whatsapp", "912 345 678", brazil)).toMatchObject({ kind: "invalid" });
  });

  it("does not apply the ninth-digit rule to national numbers of another region", () => {
    expect(senderIdentity("whatsapp", "(11) 9999-9999", { defaultPhoneRegion: "US" })).toMatchObject({ kind: "invalid" });
  });

  it("comes from DEFAULT_PHONE_REGION, BR unless set, in any letter case", () => {
    expect(loadConfig({}).defaultPhoneRegion).toBe("BR");
    expect(loadConfig({ DEFAULT_PHONE_REGION: "pt" }).defaultPhoneRegion).toBe("PT");
  });

  it("refuses a region the phone-number rules do not know, naming the variable", () => {
    expect(configProblems({ DEFAULT_PHONE_REGION: "XX" })).toEqual([expect.stringContaining("DEFAULT_PHONE_REGION")]);
    expect(configProblems({ DEFAULT_PHONE_REGION: "Brazil" })).toEqual([
      'DEFAULT_PHONE_REGION must be a two-letter region code such as BR or PT, got "Brazil"',
    ]);
  });
});

describe("cachedSenderIdentity", () => {
  it("answers exactly as senderIdentity, for senders seen before, evicted or never seen", () => {
    const options = { defaultPhoneRegion: "BR" as const };
    const cached = cachedSenderIdentity(options, 2);
    const senders: Array<[string, string]> = [
      ["whatsapp", "+55 11 99999-0001"],
      ["email", " Ana@Example.com "],
      ["whatsapp", "not a number"],
      ["web", "visitor"],
      ["whatsapp", "+55 11 99999-0001"],
      ["email", "x".repeat(400)],
      ["email", " Ana@Example.com "],
    ];
    for (const [source, senderId] of [...senders, ...senders]) {
      expect(cached(source, senderId)).toEqual(senderIdentity(source, senderId, options));
    }
  });
});
