import { createHmac } from "node:crypto";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";

/**
 * Reads the database's digest key (`crm_privacy_keys`, row `digest`): every
 * replica and the relay compute the same keyed digests from it, and without
 * it the digests reveal nothing (a phone number's plain hash can be reversed
 * by trying every number).
 */
export async function readDigestKey(sequelize: Sequelize): Promise<Buffer> {
  const [row] = await sequelize.query<{ secret: Buffer }>("SELECT secret FROM crm_privacy_keys WHERE name = 'digest'", { type: QueryTypes.SELECT });
  if (!row) throw new Error("crm_privacy_keys has no 'digest' row: run the migrations");
  return row.secret;
}

function keyedDigest(key: Buffer, source: string, value: string): string {
  return createHmac("sha256", key).update(`${source}\u0000${value}`, "utf8").digest("hex");
}

/**
 * The token that stands for one sender in broker subjects
 * (`<prefix>.<source>.<token>`): the first 24 hex digits (96 bits) of
 * HMAC-SHA256(key, source NUL sender_id). It names no one, and an erasure
 * purges the sender's messages by it.
 */
export function senderStreamToken(key: Buffer, source: string, senderId: string): string {
  return keyedDigest(key, source, senderId).slice(0, 24);
}

/** What is kept of an erased event's (source, external_id): HMAC-SHA256(key, source NUL external_id), 64 hex digits. */
export function externalIdDigest(key: Buffer, source: string, externalId: string): string {
  return keyedDigest(key, source, externalId);
}
