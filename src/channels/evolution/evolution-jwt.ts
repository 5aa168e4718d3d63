import { errors, jwtVerify } from "jose";

/** Why a request's JWT was refused; each is counted as a refusal reason. */
export type EvolutionJwtRefusal = "jwt_missing" | "jwt_invalid" | "jwt_expired";

/** The outcome of checking an Evolution delivery's `Authorization` header. */
export type EvolutionJwtCheck = { ok: true } | { ok: false; reason: EvolutionJwtRefusal };

/** How long Evolution's tokens live (`exp = iat + 600`), and the clock skew tolerated on either side. */
const TOKEN_LIFETIME_S = 600;
const CLOCK_TOLERANCE_S = 30;

/**
 * Returns a check of `Authorization: Bearer <JWT>` as Evolution API sends it
 * when an instance's webhook headers carry `jwt_key`: HS256, claims `iat`,
 * `exp` (10 minutes later), `app: "evolution"`, `action: "webhook"`. Several
 * keys are accepted so one can be rotated. The token covers none of the
 * body (docs/channels.md says what that allows); `maxTokenAge` bounds how
 * long a captured token works even if a key signed one with a later `exp`.
 */
export function createEvolutionJwtCheck(keys: readonly string[]): (authorization: string | undefined, now?: Date) => Promise<EvolutionJwtCheck> {
  const secrets = keys.map((key) => new TextEncoder().encode(key));
  return async (authorization, now = new Date()) => {
    const match = /^Bearer +(\S+) *$/i.exec(authorization ?? "");
    if (!match) return { ok: false, reason: "jwt_missing" };
    let expired = false;
    for (const secret of secrets) {
      try {
        const { payload } = await jwtVerify(match[1], secret, {
          algorithms: ["HS256"],
          requiredClaims: ["iat", "exp"],
          clockTolerance: CLOCK_TOLERANCE_S,
          maxTokenAge: TOKEN_LIFETIME_S,
          currentDate: now,
        });
        if (payload.app !== "evolution" || payload.action !== "webhook") return { ok: false, reason: "jwt_invalid" };
        return { ok: true };
      } catch (error) {
        // A signature that fails may fit the next key; a good signature with
        // an expired token is expired whichever key comes next.
        if (error instanceof errors.JWTExpired) expired = true;
      }
    }
    return { ok: false, reason: expired ? "jwt_expired" : "jwt_invalid" };
  };
}
