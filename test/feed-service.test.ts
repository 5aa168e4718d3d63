import { randomBytes, randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IngestEventKind, WatchIngestEventsRequest_Start as Start } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { IngestEventStatus } from "../gen/aurora/crm/v1/ingest_service_pb.js";
import { databaseKind } from "./support/database.js";
import { feedClient, feedTransports, ingestClient, listAllIds, openWatch } from "./support/feed.js";
import { startTestServer, useTestServer, type TestServer } from "./support/server.js";
import { waitFor } from "./support/wait.js";

const fixture = useTestServer({ feed: { checkpointIntervalMs: 300, maxWatches: 5 } });
const grpc = (server = fixture.server) => feedTransports["gRPC"](server.baseUrl);
const ingest = (source: string, senderId: string, extra: { externalId?: string; content?: string } = {}) =>
  ingestClient(grpc()).ingestMessage({ source, senderId, content: extra.content ?? "olá", metadata: { n: 1, tags: ["a"] }, ...extra });

const errorOf = async (call: Promise<unknown>): Promise<ConnectError> => {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded");
};

describe(`IngestEventService (${databaseKind})`, () => {
  it("GetIngestEvent returns every stored field; NotFound for an unknown id, InvalidArgument for a malformed one", async () => {
    const stored = await ingest("whatsapp", "+55 11 99999-9999", { externalId: "wamid.1" });
    const { ingestEvent } = await feedClient(grpc()).getIngestEvent({ id: stored.eventId });
    expect(ingestEvent).toMatchObject({
      id: stored.eventId,
      source: "whatsapp",
      senderId: "+55 11 99999-9999",
      content: "olá",
      metadata: { n: 1, tags: ["a"] },
      externalId: "wamid.1",
      contactId: stored.contactId,
      status: IngestEventStatus.LINKED,
      error: "",
      kind: IngestEventKind.MESSAGE,
    });
    expect(Math.abs(Number(ingestEvent!.createdAt!.seconds) * 1000 - Date.now())).toBeLessThan(60_000);

    expect((await errorOf(feedClient(grpc()).getIngestEvent({ id: randomUUID() }))).code).toBe(Code.NotFound);
    const malformed = await errorOf(feedClient(grpc()).getIngestEvent({ id: "42" }));
    expect(malformed.code).toBe(Code.InvalidArgument);
    expect(malformed.rawMessage).toMatch(/^id: must be a valid UUID/);
  });

  it("ListIngestEvents pages in commit order with filters and a resume token; a replayed message adds nothing", async () => {
    for (let i = 0; i < 7; i++) await ingest("web", `visitor-${i}`);
    await ingest("email", "Ana <ana@example.com>", { externalId: "m-1" });
    const replay = await ingest("email", "Ana <ana@example.com>", { externalId: "m-1" });
    expect(replay.duplicate).toBe(true);

    const client = feedClient(grpc());
    const all = await listAllIds(client);
    expect(all).toHaveLength(9);
    const first = await client.listIngestEvents({ pageSize: 4 });
    expect(first.ingestEvents.map((event) => event.id)).toEqual(all.slice(0, 4));
    const second = await client.listIngestEvents({ pageSize: 4, pageToken: first.nextPageToken });
    expect(second.ingestEvents.map((event) => event.id)).toEqual(all.slice(4, 8));
    const last = await client.listIngestEvents({ pageSize: 4, pageToken: second.nextPageToken });
    expect(last.ingestEvents.map((event) => event.id)).toEqual(all.slice(8));
    expect(last.nextPageToken).toBe("");

    const web = await client.listIngestEvents({ source: "web", pageSize: 3 });
    expect(web.ingestEvents.map((event) => event.senderId)).toEqual(["visitor-0", "visitor-1", "visitor-2"]);
    const webNext = await client.listIngestEvents({ source: "web", pageSize: 100, pageToken: web.nextPageToken });
    expect(webNext.ingestEvents.map((event) => event.senderId)).toEqual(["visitor-3", "visitor-4", "visitor-5", "visitor-6"]);
    const linked = await client.listIngestEvents({ status: IngestEventStatus.LINKED });
    expect(linked.ingestEvents.map((event) => event.source)).toEqual(["whatsapp", "email"]);
    const contact = linked.ingestEvents[1].contactId;
    expect((await client.listIngestEvents({ contactId: contact })).ingestEvents.map((event) => event.id)).toEqual([linked.ingestEvents[1].id]);

    const refused = await errorOf(client.listIngestEvents({ source: "email", pageToken: web.nextPageToken }));
    expect(refused.code).toBe(Code.InvalidArgument);
    expect(refused.rawMessage).toMatch(/^page_token: was issued for a request with other filters/);
    expect((await errorOf(client.listIngestEvents({ pageSize: -1 }))).code).toBe(Code.InvalidArgument);
    expect((await errorOf(client.listIngestEvents({ contactId: "nope" }))).code).toBe(Code.InvalidArgument);

    // A watch from a page's resume token continues right after that page.
    const watch = openWatch(client, { resumeToken: first.resumeToken });
    await waitFor(() => watch.ids().length === 5);
    expect(watch.ids()).toEqual(all.slice(4));
    watch.cancel();
  });

  it("ListIngestEvents from a resume token: exclusive of its position, with the filters given, continued by page tokens", async () => {
    const client = feedClient(grpc());
    const runA = `ra${randomBytes(4).toString("hex")}`;
    const runB = `rb${randomBytes(4).toString("hex")}`;
    for (let i = 0; i < 3; i++) await ingest(runA, `a-${i}`);
    for (let i = 0; i < 3; i++) await ingest(runB, `b-${i}`);
    const all = await listAllIds(client);
    const ours = (await client.listIngestEvents({ pageSize: 1000, pageToken: "" })).ingestEvents.filter((event) => event.source === runA || event.source === runB);
    expect(ours.map((event) => event.senderId)).toEqual(["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]);

    // A watch's token after a-1, as a stream consumer holds it (the relay's Aurora-Resume-Token is the same token).
    const watch = openWatch(client, { start: Start.BEGINNING });
    await waitFor(() => watch.ids().length === all.length);
    const afterA1 = watch.responses.find((response) => response.ingestEvent?.id === ours[1].id)!.resumeToken;
    watch.cancel();

    const rest = await client.listIngestEvents({ resumeToken: afterA1, pageSize: 1000 });
    expect(rest.ingestEvents.map((event) => event.id)).toEqual(all.slice(all.indexOf(ours[1].id) + 1));
    // Filters apply as given; the next page continues with a page token for those filters.
    const firstB = await client.listIngestEvents({ resumeToken: afterA1, source: runB, pageSize: 2 });
    expect(firstB.ingestEvents.map((event) => event.senderId)).toEqual(["b-0", "b-1"]);
    const nextB = await client.listIngestEvents({ pageToken: firstB.nextPageToken, source: runB, pageSize: 2 });
    expect(nextB.ingestEvents.map((event) => event.senderId)).toEqual(["b-2"]);
    expect(nextB.nextPageToken).toBe("");
    // An empty page keeps the position it started from.
    const onlyA = await client.listIngestEvents({ resumeToken: afterA1, source: runA });
    expect(onlyA.ingestEvents.map((event) => event.senderId)).toEqual(["a-2"]);
    const atEnd = await client.listIngestEvents({ resumeToken: rest.resumeToken });
    expect(atEnd.ingestEvents).toEqual([]);
    expect(atEnd.resumeToken).toBe(rest.resumeToken);

    const both = await errorOf(client.listIngestEvents({ resumeToken: afterA1, pageToken: firstB.nextPageToken, source: runB }));
    expect(both.code).toBe(Code.InvalidArgument);
    expect(both.rawMessage).toMatch(/set at most one of page_token or resume_token/);
    const pageAsResume = await errorOf(client.listIngestEvents({ resumeToken: firstB.nextPageToken, source: runB }));
    expect(pageAsResume.code).toBe(Code.InvalidArgument);
    expect(pageAsResume.rawMessage).toMatch(/^resume_token: is not a resume token/);
    const forged = Buffer.from(afterA1, "base64url");
    forged[12] ^= 0xff;
    const altered = await errorOf(client.listIngestEvents({ resumeToken: forged.toString("base64url") }));
    expect(altered.code).toBe(Code.InvalidArgument);
    expect(altered.rawMessage).toMatch(/^resume_token: has an invalid signature/);
  });

  it.each(Object.keys(feedTransports))("WatchIngestEvents over %s: from the beginning, from now, from a token, with checkpoints", async (name) => {
    const client = feedClient(feedTransports[name](fixture.server.baseUrl));
    const existing = await listAllIds(client);
    const fromBeginning = openWatch(client, { start: Start.BEGINNING });
    const fromNow = openWatch(client, { start: Start.NOW });
    await waitFor(() => fromBeginning.ids().length === existing.length);
    await waitFor(() => fromNow.responses.length > 0); // a checkpoint: the stream is open
    const rare = name === "gRPC" ? "sms-grpc" : "sms-connect";
    const sources = await Promise.all([ingest("web", `watch-${name}-1`), ingest(rare, `watch-${name}-2`)]);
    const expected = [...existing, ...(await listAllIds(client)).slice(existing.length)];
    expect(expected.slice(existing.length).sort()).toEqual(sources.map((s) => s.eventId).sort());

    await waitFor(() => fromBeginning.ids().length === expected.length && fromNow.ids().length === 2);
    expect(fromBeginning.ids()).toEqual(expected);
    expect(fromNow.ids()).toEqual(expected.slice(existing.length));

    // Checkpoints carry the current position: resuming from one misses nothing and repeats nothing.
    const checkpoints = fromNow.responses.filter((response) => !response.ingestEvent);
    await waitFor(() => fromNow.responses.filter((response) => !response.ingestEvent).length > checkpoints.length);
    const resumed = openWatch(client, { resumeToken: fromNow.lastToken() });
    const next = await ingest("web", `watch-${name}-3`);
    await waitFor(() => resumed.ids().length === 1);
    expect(resumed.ids()).toEqual([next.eventId]);
    // Filters apply to watches too.
    const filtered = openWatch(client, { start: Start.BEGINNING, source: rare });
    await waitFor(() => filtered.ids().length === 1);
    expect(filtered.ids()).toEqual([sources[1].eventId]);
    for (const watch of [fromBeginning, fromNow, resumed, filtered]) watch.cancel();
    for (const watch of [fromBeginning, fromNow, resumed, filtered]) expect(await watch.ended).toBeUndefined();
    await waitFor(() => fixture.server.feedHub.openWatches === 0);
  });

  it("refuses malformed, forged and foreign resume tokens with InvalidArgument saying so", async () => {
    const client = feedClient(grpc());
    const { resumeToken } = await client.listIngestEvents({ pageSize: 1 });
    const forged = Buffer.from(resumeToken, "base64url");
    forged[12] ^= 0xff;
    const cases: Array<[string, RegExp]> = [
      ["garbage!", /malformed/],
      [randomBytes(41).toString("base64url"), /malformed|another database/],
      [forged.toString("base64url"), /invalid signature \(altered or forged\)/],
    ];
    for (const [token, message] of cases) {
      const watch = openWatch(client, { resumeToken: token });
      const error = ConnectError.from(await watch.ended);
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toMatch(/^resume_token: /);
      expect(error.rawMessage).toMatch(message);
    }
    const neither = ConnectError.from(await openWatch(client, {}).ended);
    expect(neither.code).toBe(Code.InvalidArgument);
    expect(neither.rawMessage).toMatch(/set exactly one of resume_token or start/);
  });

  it("caps watch streams per process with ResourceExhausted", async () => {
    const client = feedClient(grpc());
    const watches = Array.from({ length: 5 }, () => openWatch(client, { start: Start.NOW }));
    await waitFor(() => fixture.server.feedHub.openWatches === 5);
    const refused = ConnectError.from(await openWatch(client, { start: Start.NOW }).ended);
    expect(refused.code).toBe(Code.ResourceExhausted);
    for (const watch of watches) watch.cancel();
    await waitFor(() => fixture.server.feedHub.openWatches === 0);
  });

  it("reports the feed's lag and open watches as metrics", async () => {
    const response = await fetch(`${fixture.server.baseUrl}/metrics`);
    const text = await response.text();
    expect(text).toMatch(/^aurora_ingest_feed_undeliverable_events 0$/m);
    expect(text).toMatch(/^aurora_ingest_feed_horizon_age_seconds \d/m);
    expect(text).toMatch(/^aurora_ingest_feed_watch_streams 0$/m);
  });

  it("logs feed reads with counts, never content or senders", async () => {
    await feedClient(grpc()).listIngestEvents({ pageSize: 2 });
    const line = [...fixture.server.logLines].reverse().find((entry) => entry.procedure === "/aurora.crm.v1.IngestEventService/ListIngestEvents");
    expect(line).toMatchObject({ code: "ok", feed: { events: 2 } });
    expect(fixture.server.logText()).not.toContain("visitor-");
    expect(fixture.server.logText()).not.toContain("olá");
  });

  it("ends watch streams promptly with Unavailable when the server shuts down", async () => {
    const other: TestServer = await startTestServer(fixture.database);
    const watch = openWatch(feedClient(grpc(other)), { start: Start.BEGINNING });
    await waitFor(() => watch.responses.length > 0);
    const started = Date.now();
    const cutOff = await other.server.close(10_000);
    const error = ConnectError.from(await watch.ended);
    expect(error.code).toBe(Code.Unavailable);
    expect(error.rawMessage).toMatch(/shutting down; resume from the last resume token/);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(cutOff).toBe(0);
  });
});

describe("who may read the feed", () => {
  const ingestToken = randomBytes(24).toString("base64url");
  const feedToken = randomBytes(24).toString("base64url");
  const bothToken = randomBytes(24).toString("base64url");
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer(fixture.database, { apiTokens: [ingestToken, bothToken], feedApiTokens: [feedToken, bothToken] });
  });
  afterAll(async () => {
    await server?.server.close();
  });

  it.each(Object.keys(feedTransports))("over %s: ingest tokens may not read, feed tokens may not ingest, a token in both may do both", async (name) => {
    const as = (token?: string) => feedTransports[name](server.baseUrl, token);
    const message = { source: "web", senderId: "scoped", content: "x" };

    expect((await errorOf(feedClient(as(ingestToken)).listIngestEvents({})))).toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: "this token may not read the event feed",
    });
    expect(ConnectError.from(await openWatch(feedClient(as(ingestToken)), { start: Start.NOW }).ended).code).toBe(Code.PermissionDenied);
    expect((await errorOf(ingestClient(as(feedToken)).ingestMessage(message)))).toMatchObject({
      code: Code.PermissionDenied,
      rawMessage: "this token may not ingest messages",
    });
    expect((await errorOf(feedClient(as()).listIngestEvents({}))).code).toBe(Code.Unauthenticated);

    const stored = await ingestClient(as(ingestToken)).ingestMessage(message);
    expect((await feedClient(as(feedToken)).getIngestEvent({ id: stored.eventId })).ingestEvent?.senderId).toBe("scoped");
    const both = await ingestClient(as(bothToken)).ingestMessage(message);
    expect((await feedClient(as(bothToken)).getIngestEvent({ id: both.eventId })).ingestEvent?.id).toBe(both.eventId);
  });

  it("answers plain JSON with 403 permission_denied", async () => {
    const response = await fetch(`${server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${feedToken}` },
      body: JSON.stringify({ source: "web", sender_id: "x", content: "y" }),
    });
    expect(response.status).toBe(403);
    expect(await response.json()).toMatchObject({ code: "permission_denied" });
  });
});
