/** A resume or page token that cannot be used: malformed, altered, forged, or issued by another database. */
export class InvalidFeedTokenError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** No stored event has the id asked for. */
export class IngestEventNotFoundError extends Error {
  constructor(id: string) {
    super(`ingest event ${id} does not exist`);
  }
}

/** The process is at its limit of open feed watches. */
export class FeedWatchLimitError extends Error {
  constructor(limit: number) {
    super(`this server already serves its limit of ${limit} watch streams; retry later or on another instance`);
  }
}

/** The server is shutting down: the watch ended, and resumes from its last token elsewhere or later. */
export class FeedClosedError extends Error {
  constructor() {
    super("the server is shutting down; resume from the last resume token received");
  }
}
