import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { databaseKind } from "./support/database.js";
import { rows } from "./support/rows.js";
import { feedClient, feedTransports } from "./support/feed.js";
import { startTestServer, useTestServer } from "./support/server.js";

const fixture = useTestServer();
const LIST = "/aurora.crm.v1.IngestEventService/ListIngestEvents";

/** ListIngestEvents over Connect JSON, as a browser or curl calls it. */
async function listJson(baseUrl: string, request: object): Promise<{ status: number; bytes: number; body: any }> {
  const response = await fetch(baseUrl + LIST, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request) });
  const text = await response.text();
  return { status: response.status, bytes: Buffer.byteLength(text), body: JSON.parse(text) };
}

describe(`feed pages are bounded by size (${databaseKind})`, () => {
  it("a Connect JSON page of events of control characters ends early with a next token instead of failing", async () => {
    // 350 events of 256 KiB of U+0001: 6 bytes each in JSON, so a page of
    // all of them (about 550 million characters) is longer than any string.
    await fixture.database.sequelize.query(
      "INSERT INTO crm_ingest_events (source, sender_id, content) SELECT 'web', 'ctl-' || n, repeat(chr(1), 262144) FROM generate_series(1, 350) AS n",
    );
    const order = (await rows<{ sender_id: string }>(fixture.database, "SELECT sender_id FROM crm_ingest_events ORDER BY feed_xid, feed_seq")).map((row) => row.sender_id);

    const first = await listJson(fixture.server.baseUrl, { pageSize: 1000 });
    expect(first.status).toBe(200);
    const firstSenders = first.body.ingestEvents.map((event: { senderId: string }) => event.senderId);
    expect(firstSenders.length).toBeGreaterThanOrEqual(1);
    expect(firstSenders).toEqual(order.slice(0, firstSenders.length));
    expect(firstSenders.length).toBeLessThan(350);
    // The page's budget (stored bytes) times the worst JSON escaping, plus one event.
    expect(first.bytes).toBeLessThan(6 * (fixture.server.feedHub.readMaxBytes + 263_000));
    expect(first.body.nextPageToken).toBeTruthy();

    const second = await listJson(fixture.server.baseUrl, { pageSize: 1000, pageToken: first.body.nextPageToken });
    expect(second.status).toBe(200);
    const secondSenders = second.body.ingestEvents.map((event: { senderId: string }) => event.senderId);
    expect(secondSenders).toEqual(order.slice(firstSenders.length, firstSenders.length + secondSenders.length));
    expect(secondSenders.length).toBeGreaterThanOrEqual(1);
    const line = [...fixture.server.logLines].reverse().find((entry) => entry.procedure === LIST);
    expect(line).toMatchObject({ code: "ok", feed: { events: secondSenders.length } });
  });

  it("a page that cannot be encoded is answered and logged as internal, with its cause logged", async () => {
    // Without a budget (as before), the same page fails while Connect encodes it, after the handler returned.
    const unbounded = await startTestServer(fixture.database, { feed: { readMaxBytes: 2 ** 40 } });
    try {
      const answer = await listJson(unbounded.baseUrl, { pageSize: 1000 });
      expect(answer.status).toBe(500);
      expect(answer.body.code).toBe("internal");
      const line = [...unbounded.logLines].reverse().find((entry) => entry.procedure === LIST);
      expect(line).toMatchObject({ code: "internal", level: 40 });
      expect(unbounded.loggedErrors.map((entry) => entry.msg)).toContain("the answer could not be encoded");
    } finally {
      await unbounded.server.close();
    }
  });

  it("a read that runs out of time answers deadline_exceeded and is logged as such", async () => {
    const server = await startTestServer(fixture.database, { requestTimeoutMs: 400 });
    const transaction = await fixture.database.sequelize.transaction();
    try {
      // The table is locked (on the embedded database, its one connection is held): the read waits past the request's time.
      await fixture.database.sequelize.query("LOCK TABLE crm_ingest_events IN ACCESS EXCLUSIVE MODE", { transaction });
      const error = await feedClient(feedTransports["gRPC"](server.baseUrl))
        .listIngestEvents({ pageSize: 10 })
        .then(() => undefined, (failure: unknown) => ConnectError.from(failure));
      expect(error?.code).toBe(Code.DeadlineExceeded);
      expect(error?.rawMessage).toMatch(/^the read did not finish within 400 ms/);
      const line = [...server.logLines].reverse().find((entry) => entry.procedure === LIST);
      expect(line).toMatchObject({ code: "deadline_exceeded", level: 40 });
    } finally {
      await transaction.rollback();
      await server.server.close();
    }
  });

  it("a filtered page examines at most FEED_READ_MAX_SCAN events: fewer or no events, and a next token to continue", async () => {
    const server = await startTestServer(fixture.database, { feed: { readMaxScan: 100 } });
    try {
      const total = (await rows<{ n: string }>(fixture.database, "SELECT count(*) AS n FROM crm_ingest_events"))[0].n;
      const client = feedClient(feedTransports["gRPC"](server.baseUrl));
      // No event is from 'email': each page examines 100 events and says where to go on.
      const pages: number[] = [];
      let pageToken = "";
      do {
        const page = await client.listIngestEvents({ source: "email", pageSize: 10, pageToken });
        pages.push(page.ingestEvents.length);
        pageToken = page.nextPageToken;
      } while (pageToken && pages.length < 100);
      expect(pages).toEqual(Array.from({ length: Math.ceil(Number(total) / 100) }, () => 0));
    } finally {
      await server.server.close();
    }
  });
});
