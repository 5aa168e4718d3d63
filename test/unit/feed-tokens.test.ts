import { describe, expect, it } from "vitest";
import { InvalidFeedTokenError } from "../../src/feed/errors.js";
import { decodePageToken, decodeResumeToken, encodePageToken, encodeResumeToken, FEED_START, type FeedIdentity } from "../../src/feed/position.js";

// What crm_feed_identity holds for a database, written out: tokens need no database.
const identity: FeedIdentity = { databaseId: "6f1c0d5e-2b7a-4c39-9e84-1d2f3a4b5c6d", tokenKey: Buffer.alloc(32, 0x5a) };
const otherIdentity: FeedIdentity = { databaseId: "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d", tokenKey: Buffer.alloc(32, 0x17) };

describe("resume and page tokens", () => {
  const position = { xid: 123_456_789_012n, seq: 42n };

  const refusal = (decode: () => unknown): string => {
    try {
      decode();
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidFeedTokenError);
      return (error as Error).message;
    }
    throw new Error("the token was accepted");
  };

  it("round-trip and are opaque, short, URL-safe strings", () => {
    const token = encodeResumeToken(identity, position);
    expect(token).toMatch(/^[A-Za-z0-9_-]{40,80}$/);
    expect(decodeResumeToken(identity, token)).toEqual(position);
    expect(decodeResumeToken(identity, encodeResumeToken(identity, FEED_START))).toEqual(FEED_START);
    const filters = { source: "web", contactId: undefined, status: "LINKED" };
    expect(decodePageToken(identity, encodePageToken(identity, position, filters), filters)).toEqual(position);
  });

  it("refuse malformed tokens, saying so", () => {
    for (const token of ["", "x", "not a token!", "AAAA", encodeResumeToken(identity, position).slice(0, -2)]) {
      expect(refusal(() => decodeResumeToken(identity, token))).toMatch(/^resume_token: .*malformed/);
    }
    // A page token is not a resume token, and the other way round.
    expect(refusal(() => decodeResumeToken(identity, encodePageToken(identity, position, {})))).toMatch(/malformed/);
    expect(refusal(() => decodePageToken(identity, encodeResumeToken(identity, position), {}))).toMatch(/^page_token: .*malformed/);
  });

  it("have one spelling: another string for the same bytes (spare bits of the last character) is refused", () => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const twinsOf = (token: string) =>
      [...alphabet]
        .map((last) => token.slice(0, -1) + last)
        .filter((spelling) => spelling !== token && Buffer.from(spelling, "base64url").equals(Buffer.from(token, "base64url")));
    const resume = encodeResumeToken(identity, position);
    const page = encodePageToken(identity, position, {});
    expect(twinsOf(resume).length).toBeGreaterThan(0);
    expect(twinsOf(page).length).toBeGreaterThan(0);
    for (const twin of twinsOf(resume)) expect(refusal(() => decodeResumeToken(identity, twin))).toMatch(/malformed/);
    for (const twin of twinsOf(page)) expect(refusal(() => decodePageToken(identity, twin, {}))).toMatch(/malformed/);
    expect(decodeResumeToken(identity, resume)).toEqual(position);
    expect(decodePageToken(identity, page, {})).toEqual(position);
  });

  it("refuse a token whose position was changed or whose signature was forged", () => {
    const bytes = Buffer.from(encodeResumeToken(identity, position), "base64url");
    const changed = Buffer.from(bytes);
    changed[20] ^= 1; // the seq
    expect(refusal(() => decodeResumeToken(identity, changed.toString("base64url")))).toMatch(/invalid signature .*forged/);
    const forged = Buffer.from(bytes);
    forged[forged.length - 1] ^= 1;
    expect(refusal(() => decodeResumeToken(identity, forged.toString("base64url")))).toMatch(/invalid signature/);
  });

  it("refuse a token from another database", () => {
    const foreign = encodeResumeToken(otherIdentity, position);
    expect(refusal(() => decodeResumeToken(identity, foreign))).toMatch(/another database/);
    // Even one signed with this database's key: the tag is checked first.
    expect(refusal(() => decodeResumeToken(identity, encodeResumeToken({ ...otherIdentity, tokenKey: identity.tokenKey }, position)))).toMatch(/another database/);
  });

  it("refuse a page token sent with other filters", () => {
    const token = encodePageToken(identity, position, { source: "web" });
    expect(refusal(() => decodePageToken(identity, token, { source: "email" }))).toMatch(/other filters/);
    expect(refusal(() => decodePageToken(identity, token, {}))).toMatch(/other filters/);
  });
});
