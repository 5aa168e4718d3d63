/** A ListPrivacyRequests page token that no earlier page returned. */
export class InvalidAuditPageTokenError extends Error {
  constructor() {
    super("page_token is not a token this service returned");
  }
}

/** GetPrivacyRequest named a record the audit trail does not hold. */
export class PrivacyRequestNotFoundError extends Error {
  constructor(id: string) {
    super(`privacy request ${id} not found`);
  }
}
