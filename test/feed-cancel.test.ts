import { describe, expect, it } from "vitest";
import { WatchIngestEventsRequest_Start as Start } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { databaseKind } from "./support/database.js";
import { feedClient, feedTransports, openWatch } from "./support/feed.js";
import { useTestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";

const fixture = useTestServer({ feed: { checkpointIntervalMs: 200 } });

describe(`cancelled watch streams (${databaseKind})`, () => {
  it("give their slot back at once, whatever the server was doing, and are not logged as errors", async () => {
    // Events large enough that a stream that stops reading fills its window while the server writes.
    await fixture.database.sequelize.query(
      "INSERT INTO crm_ingest_events (source, sender_id, content) SELECT 'web', 'big-' || g, repeat('x', 60000) FROM generate_series(1, 100) g",
    );
    for (const name of Object.keys(feedTransports)) {
      const watches = Array.from({ length: 20 }, (_, i) => {
        const watch = openWatch(feedClient(feedTransports[name](fixture.server.baseUrl)), { start: i % 2 ? Start.BEGINNING : Start.NOW });
        return watch;
      });
      await waitFor(() => watches.every((watch) => watch.responses.length > 0), 60_000);
      expect(fixture.server.feedHub.openWatches).toBe(20);
      for (const watch of watches) watch.cancel();
      await Promise.all(watches.map((watch) => watch.ended));
      await waitFor(() => fixture.server.feedHub.openWatches === 0, 5_000).catch(() => undefined);
      expect(fixture.server.feedHub.openWatches, name).toBe(0);
    }
    const metrics = await fixture.server.metrics.registry.metrics();
    expect(metrics).toMatch(/aurora_ingest_feed_watch_streams(\{[^}]*\})? 0/);
    expect(fixture.server.loggedErrors).toEqual([]);
  });
});
