/** A ListPrivacyRequests page token that no earlier page returned. */
export class InvalidAuditPageTokenError extends Error {
  constructor() {
    super("page_token is not a token this service returned");
  }
}
