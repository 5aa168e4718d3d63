import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { QueryTypes } from "sequelize";
import type { Sequelize } from "sequelize-typescript";
import { InvalidFeedTokenError } from "./errors.js";

/**
 * A place in the feed: after the event written by transaction `xid` with
 * insertion number `seq`. The feed is ordered by (xid, seq); see docs/feed.md.
 */
export interface FeedPosition {
  xid: bigint;
  seq: bigint;
}

/** Before every event, events stored before the feed existed (xid 0) included. */
export const FEED_START: FeedPosition = Object.freeze({ xid: 0n, seq: 0n });

/** Orders two positions: negative when `a` comes first, zero when equal. */
export function comparePositions(a: FeedPosition, b: FeedPosition): number {
  if (a.xid !== b.xid) return a.xid < b.xid ? -1 : 1;
  return a.seq === b.seq ? 0 : a.seq < b.seq ? -1 : 1;
}

/** The later of two positions. */
export function laterPosition(a: FeedPosition, b: FeedPosition): FeedPosition {
  return comparePositions(a, b) >= 0 ? a : b;
}

/** The earlier of two positions. */
export function earlierPosition(a: FeedPosition, b: FeedPosition): FeedPosition {
  return comparePositions(a, b) <= 0 ? a : b;
}

/** What tokens are bound to: this database's random id and the key that signs them (crm_feed_identity). */
export interface FeedIdentity {
  databaseId: string;
  tokenKey: Buffer;
}

/** Reads the database's feed identity, written once by the feed migration. */
export async function loadFeedIdentity(sequelize: Sequelize): Promise<FeedIdentity> {
  const [row] = await sequelize.query<{ database_id: string; token_key: Buffer }>(
    "SELECT database_id, token_key FROM crm_feed_identity",
    { type: QueryTypes.SELECT },
  );
  if (!row) throw new Error("crm_feed_identity is empty: the feed migration did not complete");
  return { databaseId: row.database_id, tokenKey: row.token_key };
}

// Layout, before base64url: kind (1 byte) | database tag (8) | xid (8) |
// seq (8) | [filters fingerprint (8), page tokens only] | HMAC-SHA256 (16).
const RESUME = 1;
const PAGE = 2;
const TAG_BYTES = 8;
const MAC_BYTES = 16;
const BODY_BYTES = 1 + TAG_BYTES + 16;

/** Encodes a position as an opaque, signed resume token bound to this database. */
export function encodeResumeToken(identity: FeedIdentity, position: FeedPosition): string {
  return seal(identity, body(RESUME, identity, position));
}

/**
 * Decodes a resume token. Throws InvalidFeedTokenError (InvalidArgument) when
 * it is not one of this database's resume tokens; never falls back to a start.
 */
export function decodeResumeToken(identity: FeedIdentity, token: string, field = "resume_token"): FeedPosition {
  return open(identity, token, RESUME, field, BODY_BYTES);
}

/** Encodes the position a page ends at, bound to the filters of its request (AIP-158 page tokens). */
export function encodePageToken(identity: FeedIdentity, position: FeedPosition, filters: FeedFilters | undefined): string {
  return seal(identity, Buffer.concat([body(PAGE, identity, position), filtersFingerprint(filters)]));
}

/** Decodes a page token; refuses one issued for other filters. */
export function decodePageToken(identity: FeedIdentity, token: string, filters: FeedFilters | undefined, field = "page_token"): FeedPosition {
  const bytes = verified(identity, token, PAGE, field, BODY_BYTES + 8);
  if (!bytes.subarray(BODY_BYTES).equals(filtersFingerprint(filters))) {
    throw new InvalidFeedTokenError(field, "was issued for a request with other filters; send the same filters or start without a token");
  }
  return positionOf(bytes);
}

/** Filters on the feed; an unset field matches every event. */
export interface FeedFilters {
  source?: string;
  contactId?: string;
  status?: string;
}

function filtersFingerprint(filters: FeedFilters | undefined): Buffer {
  const canonical = JSON.stringify([filters?.source ?? null, filters?.contactId ?? null, filters?.status ?? null]);
  return createHash("sha256").update(canonical).digest().subarray(0, 8);
}

/** The 16 hex digits that name this database in its tokens: the first 8 bytes of its random id. */
export function databaseTagOf(identity: FeedIdentity): string {
  return databaseTag(identity).toString("hex");
}

/** The database tag a resume token was issued for, signature unchecked; undefined for anything that is not a resume token. */
export function resumeTokenDatabaseTag(token: string): string | undefined {
  const bytes = /^[A-Za-z0-9_-]+$/.test(token) ? Buffer.from(token, "base64url") : Buffer.alloc(0);
  return bytes.length === BODY_BYTES + MAC_BYTES && bytes[0] === RESUME ? bytes.subarray(1, 1 + TAG_BYTES).toString("hex") : undefined;
}

function databaseTag(identity: FeedIdentity): Buffer {
  return Buffer.from(identity.databaseId.replace(/-/g, ""), "hex").subarray(0, TAG_BYTES);
}

function body(kind: number, identity: FeedIdentity, position: FeedPosition): Buffer {
  const bytes = Buffer.alloc(BODY_BYTES);
  bytes[0] = kind;
  databaseTag(identity).copy(bytes, 1);
  bytes.writeBigUInt64BE(position.xid, 1 + TAG_BYTES);
  bytes.writeBigUInt64BE(position.seq, 1 + TAG_BYTES + 8);
  return bytes;
}

const mac = (identity: FeedIdentity, bytes: Buffer) => createHmac("sha256", identity.tokenKey).update(bytes).digest().subarray(0, MAC_BYTES);

function seal(identity: FeedIdentity, bytes: Buffer): string {
  return Buffer.concat([bytes, mac(identity, bytes)]).toString("base64url");
}

function open(identity: FeedIdentity, token: string, kind: number, field: string, length: number): FeedPosition {
  return positionOf(verified(identity, token, kind, field, length));
}

/** Checks a token's shape, then its database, then its signature, and says which failed. */
function verified(identity: FeedIdentity, token: string, kind: number, field: string, length: number): Buffer {
  const name = kind === RESUME ? "resume token" : "page token";
  const bytes = /^[A-Za-z0-9_-]*$/.test(token) ? Buffer.from(token, "base64url") : Buffer.alloc(0);
  // One spelling per token: base64url leaves spare low bits in the last
  // character, so several strings decode to the same bytes; only the one we
  // issue (the bytes encoded again) is accepted.
  if (bytes.length !== length + MAC_BYTES || bytes[0] !== kind || bytes.toString("base64url") !== token) {
    throw new InvalidFeedTokenError(field, `is not a ${name} of this service (malformed); use a token exactly as it was received`);
  }
  const content = bytes.subarray(0, length);
  if (!content.subarray(1, 1 + TAG_BYTES).equals(databaseTag(identity))) {
    throw new InvalidFeedTokenError(field, `was issued by another database; positions of one database mean nothing in another`);
  }
  if (!timingSafeEqual(bytes.subarray(length), mac(identity, content))) {
    throw new InvalidFeedTokenError(field, `has an invalid signature (altered or forged); use a token exactly as it was received`);
  }
  return content;
}

function positionOf(bytes: Buffer): FeedPosition {
  return { xid: bytes.readBigUInt64BE(1 + TAG_BYTES), seq: bytes.readBigUInt64BE(1 + TAG_BYTES + 8) };
}
