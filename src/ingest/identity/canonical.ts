/** The canonical value of one identity, or what keeps the input from being one. */
export type Canonical = { ok: true; value: string } | { ok: false; problem: string };

/** A canonical value. */
export function canonical(value: string): Canonical {
  return { ok: true, value };
}

/** No canonical value, with the problem phrased to follow "…is not a <kind>: ". */
export function notCanonical(problem: string): Canonical {
  return { ok: false, problem };
}
