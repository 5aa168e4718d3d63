import { createHmac } from "node:crypto";
import { describe, expect, it } from "vitest";
import { externalIdDigest, senderStreamToken } from "../../src/privacy/digest-key.js";

const key = Buffer.alloc(32, 7);

describe("keyed digests", () => {
  it("a sender's stream token is the first 24 hex digits of HMAC-SHA256(key, source NUL sender)", () => {
    const expected = createHmac("sha256", key).update("whatsapp\u00005511999990001").digest("hex").slice(0, 24);
    expect(senderStreamToken(key, "whatsapp", "5511999990001")).toBe(expected);
    expect(senderStreamToken(key, "whatsapp", "5511999990001")).toMatch(/^[0-9a-f]{24}$/);
  });

  it("differs by source, by value and by key, and the separator keeps (source, value) pairs apart", () => {
    const token = senderStreamToken(key, "whatsapp", "5511999990001");
    expect(senderStreamToken(key, "email", "5511999990001")).not.toBe(token);
    expect(senderStreamToken(key, "whatsapp", "5511999990002")).not.toBe(token);
    expect(senderStreamToken(Buffer.alloc(32, 8), "whatsapp", "5511999990001")).not.toBe(token);
    expect(senderStreamToken(key, "ab", "c")).not.toBe(senderStreamToken(key, "a", "bc"));
  });

  it("an external id's digest is the whole HMAC, 64 hex digits", () => {
    const digest = externalIdDigest(key, "whatsapp", "wamid.1");
    expect(digest).toMatch(/^[0-9a-f]{64}$/);
    expect(digest.slice(0, 24)).toBe(senderStreamToken(key, "whatsapp", "wamid.1"));
  });
});
