/** A resume or page token that cannot be used: malformed, altered, forged, or issued by another database. */
export class InvalidFeedTokenError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}
