/**
 * Told when this process committed an ingest event, so the feed's watchers
 * read at once instead of at their next poll. Calling it is cheap and never
 * fails; commits by other processes are found by polling.
 */
export interface FeedNotifier {
  committed(): void;
}
