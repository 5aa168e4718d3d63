import { randomInt } from "node:crypto";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { WatchIngestEventsRequest_Start as Start } from "../gen/aurora/crm/v1/ingest_event_service_pb.js";
import { databaseKind } from "./support/database.js";
import { feedClient, feedTransports, ingestClient, listAllIds, openWatch, type OpenWatch } from "./support/feed.js";
import { useTestServer } from "./support/server.js";
import { sleep, waitFor } from "./support/wait.js";

const fixture = useTestServer({ feed: { checkpointIntervalMs: 200, bufferEvents: 50 } });
const transport = () => feedTransports["gRPC"](fixture.server.baseUrl);

async function connect(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: fixture.database.url });
  await client.connect();
  return client;
}

/** Events an ingest through the service stores, by id. */
const ingest = (senderId: string, source = "web") => ingestClient(transport()).ingestMessage({ source, senderId, content: "x" });

/** The ids after the event with `id` in a listing; the whole listing for "". */
const after = (listing: string[], id: string) => listing.slice(id ? listing.indexOf(id) + 1 : 0);

describe(`commit order (${databaseKind})`, () => {
  // The embedded database runs one transaction at a time: there a later
  // transaction cannot commit while an earlier one is open.
  it.skipIf(databaseKind === "embedded")(
    "an event that commits while an older transaction is open waits for it; after a commit both arrive, oldest first; after a rollback only the later",
    async () => {
      const client = feedClient(transport());
      const holder = await connect();
      try {
        // A: an ingest through the service that inserts its event and then
        // waits on the foreign key to a contact row locked here.
        const sender = "5511988887777";
        const first = await ingest(sender, "whatsapp");
        // Deliverable once every older transaction of the cluster ended (other databases' too).
        let before: string[] = [];
        while (!before.includes(first.eventId)) before = await listAllIds(client);
        const watch = openWatch(client, { start: Start.NOW });
        await waitFor(() => watch.responses.length > 0);

        await holder.query("BEGIN");
        await holder.query("SELECT 1 FROM crm_contacts WHERE whatsapp_id = $1 FOR UPDATE", [sender]);
        const a = ingest(sender, "whatsapp");
        await sleep(300); // A has inserted its event and waits on the lock
        const b = await ingest("visitor-b"); // B commits
        await sleep(300); // several polls and checkpoints
        expect(watch.ids()).toEqual([]);
        expect(await listAllIds(client)).toEqual(before);
        expect((await client.listIngestEvents({})).ingestEvents.map((e) => e.id)).not.toContain(b.eventId);
        await holder.query("COMMIT");
        const aId = (await a).eventId;
        await waitFor(() => watch.ids().length === 2);
        expect(watch.ids()).toEqual([aId, b.eventId]);
        expect(await listAllIds(client)).toEqual([...before, aId, b.eventId]);

        // A again, this time written by a transaction that rolls back.
        await holder.query("BEGIN");
        await holder.query("INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ('web', 'rolled-back', 'x')");
        const later = await ingest("visitor-c");
        await sleep(300);
        expect(watch.ids()).toHaveLength(2);
        await holder.query("ROLLBACK");
        await waitFor(() => watch.ids().length === 3);
        expect(watch.ids()[2]).toBe(later.eventId);
        await sleep(200);
        expect(watch.ids()).toHaveLength(3);
        watch.cancel();
      } finally {
        await holder.end();
      }
    },
  );

  // A START_NOW watch on a process whose hub is idle (its earlier watches
  // ended) used to take "now" from a read of the last deliverable event; a
  // read delayed by anything (here a lock held by another connection; in the
  // field, a statement queue or a slow scan while an older transaction held
  // the horizon) placed "now" after events that committed once the stream
  // was open, and the watch never delivered them.
  it.skipIf(databaseKind === "embedded")(
    "a START_NOW watch on an idle hub delivers every event that commits after it opened, however late its start is read",
    async () => {
      const client = feedClient(transport());
      const holder = await connect();
      try {
        // An earlier watch from a resume token, ended: the hub is idle again.
        const seed = await ingest("earlier-watch");
        let listing: string[] = [];
        while (!listing.includes(seed.eventId)) listing = await listAllIds(client);
        const token = (await client.listIngestEvents({ pageSize: 1 })).resumeToken;
        const earlier = openWatch(client, { resumeToken: token });
        await waitFor(() => earlier.responses.length > 0);
        earlier.cancel();
        await earlier.ended;
        await waitFor(() => fixture.server.feedHub.openWatches === 0);

        await holder.query("BEGIN");
        await holder.query("LOCK TABLE crm_ingest_events IN ACCESS EXCLUSIVE MODE");
        const watch = openWatch(client, { start: Start.NOW });
        await sleep(400); // the stream is open
        const { rows } = await holder.query<{ id: string }>(
          "INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ('web', 'after-open', 'x') RETURNING id",
        );
        await holder.query("COMMIT");
        const later = [(await ingest("after-open-2")).eventId, (await ingest("after-open-3")).eventId];
        await waitFor(() => watch.ids().length >= 3, 10_000).catch(() => undefined);
        expect(watch.ids()).toEqual([rows[0].id, ...later]);
        watch.cancel();
      } finally {
        await holder.end();
      }
    },
  );

  it("random concurrent writers, commit delays and rollbacks; readers resuming from random tokens all see the committed set once, in one order", async () => {
    const client = feedClient(transport());
    const start = await listAllIds(client);
    const writers = databaseKind === "embedded" ? 3 : 8;
    const transactionsEach = databaseKind === "embedded" ? 8 : 15;
    const committed = new Set<string>();
    const rolledBack = new Set<string>();

    // Readers: each opens at a random moment from a token some other reader
    // was given for an event (or from the beginning), and some of them are
    // cancelled at a random point and resumed from their last event's token.
    type Reader = { startAfter: string; streams: OpenWatch[]; lastEvent: () => string; ids: () => string[] };
    const readers: Reader[] = [];
    const tokens: Array<{ id: string; token: string }> = [];
    const openReader = (startAfter: string, token: string | undefined): Reader => {
      const stream = () =>
        openWatch(client, token ? { resumeToken: token } : { start: Start.BEGINNING }, (response) => {
          if (response.ingestEvent) tokens.push({ id: response.ingestEvent.id, token: response.resumeToken });
        });
      const reader: Reader = {
        startAfter,
        streams: [stream()],
        ids: () => reader.streams.flatMap((s) => s.ids()),
        lastEvent: () => reader.ids().at(-1) ?? startAfter,
      };
      return reader;
    };
    readers.push(openReader("", undefined));
    let writing = true;
    const readersLoop = (async () => {
      while (writing) {
        await sleep(randomInt(20, 120));
        if (tokens.length > 0 && readers.length < 12) {
          const from = tokens[randomInt(tokens.length)];
          readers.push(openReader(from.id, from.token));
        }
        const reader = readers[randomInt(readers.length)];
        const current = reader.streams.at(-1)!;
        if (current.ids().length > 0) {
          // Cut the stream and resume from the token of the last event it delivered.
          current.cancel();
          await current.ended;
          const token = [...current.responses].reverse().find((r) => r.ingestEvent)!.resumeToken;
          reader.streams.push(
            openWatch(client, { resumeToken: token }, (response) => {
              if (response.ingestEvent) tokens.push({ id: response.ingestEvent.id, token: response.resumeToken });
            }),
          );
        }
      }
    })();

    const writer = async (w: number) => {
      // The embedded database runs one transaction at a time and serves
      // only the service's pool: there every writer goes through the service.
      const connection = databaseKind === "embedded" ? undefined : await connect();
      try {
        for (let t = 0; t < transactionsEach; t++) {
          if (!connection || randomInt(4) === 0) {
            // Through the service: commits on its own.
            committed.add((await ingest(`svc-${w}-${t}`)).eventId);
            continue;
          }
          await connection.query("BEGIN");
          const ids: string[] = [];
          for (let n = randomInt(1, 4); n > 0; n--) {
            const { rows } = await connection.query<{ id: string }>(
              "INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ('web', $1, 'x') RETURNING id",
              [`w${w}-${t}-${n}`],
            );
            ids.push(rows[0].id);
          }
          await sleep(randomInt(0, databaseKind === "embedded" ? 5 : 40));
          const commit = randomInt(5) > 0;
          await connection.query(commit ? "COMMIT" : "ROLLBACK");
          for (const id of ids) (commit ? committed : rolledBack).add(id);
        }
      } finally {
        await connection?.end();
      }
    };
    await Promise.all(Array.from({ length: writers }, (_, w) => writer(w)));
    writing = false;
    await readersLoop;

    // Committed events become deliverable once every older transaction of
    // the cluster ended (other databases' included).
    let listing: string[] = [];
    for (let waited = 0; waited < 30_000 && listing.length < start.length + committed.size; waited += 100) {
      listing = await listAllIds(client, 7);
      if (listing.length < start.length + committed.size) await sleep(100);
    }
    listing = await listAllIds(client, 7);
    const fresh = listing.slice(start.length);
    expect(listing.slice(0, start.length)).toEqual(start);
    expect(new Set(fresh)).toEqual(committed);
    expect(fresh).toHaveLength(committed.size);
    expect(rolledBack.size + committed.size).toBeGreaterThan(0);

    // Resuming a listing from tokens handed out by the watches gives the same order.
    for (const { id, token } of tokens.filter((_, i) => i % 17 === 0)) {
      const ids: string[] = [];
      const watch = openWatch(client, { resumeToken: token });
      await waitFor(() => watch.ids().length >= after(listing, id).length, 10_000).catch(() => undefined);
      ids.push(...watch.ids());
      watch.cancel();
      expect(ids).toEqual(after(listing, id));
    }
    for (const reader of readers) {
      await waitFor(() => reader.ids().length >= after(listing, reader.startAfter).length, 30_000).catch(() => undefined);
      expect(reader.ids()).toEqual(after(listing, reader.startAfter));
      reader.streams.at(-1)!.cancel();
    }
    expect(readers.length).toBeGreaterThan(3);
  });
});
