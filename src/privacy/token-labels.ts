import { createHash, timingSafeEqual } from "node:crypto";

/** A privacy token as configured: the token, and the label the audit trail names it by. */
export interface PrivacyToken {
  token: string;
  /** The operator's name for it (`dpo`, `ops-ana`); absent: a fingerprint stands in. */
  label?: string;
}

/** How the audit trail names a token without a label: "sha256:" and the first 12 hex digits of its SHA-256. */
export function tokenFingerprint(token: string): string {
  return `sha256:${createHash("sha256").update(token, "utf8").digest("hex").slice(0, 12)}`;
}

/**
 * Returns how the audit trail names the caller of a request, from its
 * `Authorization` header: the matching token's label or fingerprint, or
 * "unknown" (only when no token is required, which the configuration does
 * not allow for the privacy API). Compared as the transport compares tokens:
 * SHA-256 digests with `timingSafeEqual`, every token every time.
 */
export function createRequesterLabel(tokens: readonly PrivacyToken[]): (authorization: string | null) => string {
  const digest = (value: string) => createHash("sha256").update(value, "utf8").digest();
  const known = tokens.map((entry) => ({ hash: digest(entry.token), label: entry.label ?? tokenFingerprint(entry.token) }));
  return (authorization) => {
    const presented = digest(/^Bearer +(\S+) *$/i.exec(authorization ?? "")?.[1] ?? "");
    let label = "unknown";
    for (const candidate of known) if (timingSafeEqual(candidate.hash, presented)) label = candidate.label;
    return label;
  };
}
