import { describe, expect, it } from "vitest";
import { readEvolutionDelivery } from "../../src/channels/evolution/evolution-delivery.js";
import { createEvolutionJwtCheck } from "../../src/channels/evolution/evolution-jwt.js";
import { envelope, EVOLUTION_KEY, evolutionJwt, groupMessage, imageMessage, INSTANCE, lidMessage, ownMessage, statusUpdate, storyMessage, textMessage } from "../fixtures/evolution.js";



describe("Evolution's JWT", () => {
  const check = createEvolutionJwtCheck(["retired-key-0123456789abcdef", EVOLUTION_KEY]);

  it("accepts a fresh token signed with any configured key", async () => {
    expect(await check(`Bearer ${await evolutionJwt()}`)).toEqual({ ok: true });
    expect(await check(`bearer ${await evolutionJwt("retired-key-0123456789abcdef")}`)).toEqual({ ok: true });
  });

  it("refuses a missing, wrongly signed, expired or foreign token", async () => {
    expect(await check(undefined)).toEqual({ ok: false, reason: "jwt_missing" });
    expect(await check("Basic abc")).toEqual({ ok: false, reason: "jwt_missing" });
    expect(await check(`Bearer ${await evolutionJwt("another-key-0123456789abcdef")}`)).toEqual({ ok: false, reason: "jwt_invalid" });
    const old = Math.floor(Date.now() / 1000) - 700;
    expect(await check(`Bearer ${await evolutionJwt(EVOLUTION_KEY, { iat: old })}`)).toEqual({ ok: false, reason: "jwt_expired" });
    expect(await check(`Bearer ${await evolutionJwt(EVOLUTION_KEY, { action: "login" })}`)).toEqual({ ok: false, reason: "jwt_invalid" });
    // A long-lived token signed with our key still stops working 10 minutes after it was issued.
    const longLived = await evolutionJwt(EVOLUTION_KEY, { iat: Math.floor(Date.now() / 1000) - 900, lifetime: 3600 });
    expect((await check(`Bearer ${longLived}`)).ok).toBe(false);
    const none = `${Buffer.from('{"alg":"none"}').toString("base64url")}.${Buffer.from('{"app":"evolution","action":"webhook"}').toString("base64url")}.`;
    expect(await check(`Bearer ${none}`)).toEqual({ ok: false, reason: "jwt_invalid" });
  });
});

describe("reading an Evolution delivery", () => {
  const read = (body: unknown, instance = INSTANCE) => readEvolutionDelivery(JSON.stringify(body), instance);

  it("maps a customer's text message", () => {
    const reading = read(envelope("messages.upsert", textMessage("3EB0C431C26A1916E8A1", "Oi, quero um orçamento")));
    expect(reading).toMatchObject({ ok: true });
    if (!reading.ok) return;
    expect(reading.delivery.items).toEqual([
      {
        source: "whatsapp",
        senderId: "5511987654321@s.whatsapp.net",
        content: "Oi, quero um orçamento",
        externalId: `${INSTANCE}:3EB0C431C26A1916E8A1`,
        kind: "MESSAGE",
        metadata: {
          gateway: "evolution",
          instance: INSTANCE,
          instance_number: "5511955550000@s.whatsapp.net",
          message_id: "3EB0C431C26A1916E8A1",
          type: "conversation",
          timestamp: 1796375702,
          push_name: "Maria Oliveira",
          remote_jid: "5511987654321@s.whatsapp.net",
          date_time: "2026-12-04T09:15:02.123Z",
        },
      },
    ]);
    expect(JSON.stringify(reading.delivery)).not.toContain("DO-NOT-STORE");
  });

  it("takes the phone's jid from remoteJidAlt when the chat is a LID", () => {
    const reading = read(envelope("messages.upsert", lidMessage("3EB0AAAA", "oi")));
    expect(reading.ok && reading.delivery.items[0]).toMatchObject({
      senderId: "5521998877665@s.whatsapp.net",
      metadata: { remote_jid: "204857392011234@lid", remote_jid_alt: "5521998877665@s.whatsapp.net" },
    });
  });

  it("leaves out our own messages, groups and status stories, and acknowledges other events", () => {
    const skipped = (body: unknown) => {
      const reading = read(body);
      return reading.ok ? { items: reading.delivery.items.length, skipped: reading.delivery.skipped } : reading;
    };
    expect(skipped(envelope("messages.upsert", ownMessage("3EB0B")))).toEqual({ items: 0, skipped: ["from_me"] });
    expect(skipped(envelope("messages.upsert", groupMessage("3EB0C")))).toEqual({ items: 0, skipped: ["group"] });
    expect(skipped(envelope("messages.upsert", storyMessage("3EB0D")))).toEqual({ items: 0, skipped: ["status_broadcast"] });
    expect(skipped(envelope("connection.update", { state: "open" }))).toEqual({ items: 0, skipped: ["other_event"] });
  });

  it("labels a media message without text and describes its file, never its bytes", () => {
    const reading = read(envelope("messages.upsert", imageMessage("3EB0E")));
    expect(reading.ok && reading.delivery.items[0]).toMatchObject({
      content: "[image]",
      metadata: { type: "imageMessage", media: { kind: "image", mime_type: "image/jpeg", file_length: "48213" } },
    });
    expect(JSON.stringify(reading)).not.toContain("/9j/4AAQ");
    expect(JSON.stringify(reading)).not.toContain("c2VjcmV0");
  });

  it("maps a status update to a STATUS event keyed by message and status", () => {
    const reading = read(envelope("messages.update", statusUpdate("3EB0F", "READ")));
    expect(reading.ok && reading.delivery.items).toEqual([
      {
        source: "whatsapp",
        senderId: "5511987654321@s.whatsapp.net",
        content: "READ",
        externalId: `${INSTANCE}:3EB0F:READ`,
        kind: "STATUS",
        metadata: expect.objectContaining({ message_id: "3EB0F", status: "READ", from_me: true }),
      },
    ]);
  });

  it("marks an item it cannot use instead of dropping it", () => {
    const broken = textMessage("x", "sem id");
    (broken.key as Record<string, unknown>).id = undefined;
    const reading = read(envelope("messages.upsert", broken));
    expect(reading.ok && reading.delivery.items[0]).toMatchObject({ unusable: "the message has no key.id", externalId: null });
  });

  it("refuses a body that is not JSON, not an Evolution envelope, or for another instance", () => {
    expect(readEvolutionDelivery("{not json", INSTANCE)).toEqual({ ok: false, reason: "bad_json" });
    expect(read({ hello: "world" })).toEqual({ ok: false, reason: "bad_shape" });
    expect(read(envelope("messages.upsert", textMessage("a", "b"), "outra-instancia"))).toEqual({ ok: false, reason: "wrong_instance" });
  });
});
