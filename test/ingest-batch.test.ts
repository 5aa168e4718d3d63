import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DuplicateConflictError } from "../src/ingest/errors.js";
import { createIngestMessage, type IngestMessage, type IngestMessageInput } from "../src/ingest/ingest-message.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";

// The ingest command straight over a real database: messages submitted in
// one turn of the event loop are written as one batch, and each must get
// exactly the answer it would get alone.

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.close();
});

/** A command whose batch sizes are recorded. */
function command(options: { maxBatch?: number; maxInFlight?: number } = {}): { ingest: IngestMessage; batches: number[] } {
  const batches: number[] = [];
  const ingest = createIngestMessage({
    sequelize: database.sequelize,
    defaultPhoneRegion: "BR",
    ingestBatch: { maxBatch: options.maxBatch ?? 64, maxInFlight: options.maxInFlight ?? 1, onBatch: (size) => batches.push(size) },
  });
  return { ingest, batches };
}

const message = (change: Partial<IngestMessageInput>): IngestMessageInput => ({
  source: "whatsapp",
  senderId: "5511900001000",
  content: "oi",
  metadata: {},
  externalId: null,
  ...change,
});

async function rows<T extends object = Record<string, any>>(sql: string, bind: unknown[] = []): Promise<T[]> {
  return database.sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

describe(`group commit (${databaseKind})`, () => {
  it("sends the batch statement as a function of each connection's session, whose plan PostgreSQL keeps", async () => {
    // Several connections at once: each one the pool opens is set up, not only the first.
    const sessions = await Promise.all(
      [1, 2, 3].map(() =>
        database.sequelize.transaction((transaction) =>
          database.sequelize.query<{ pid: number; functions: number }>(
            `SELECT pg_backend_pid() AS pid, (SELECT count(*)::int FROM pg_proc
               WHERE proname = 'aurora_store_events' AND pronamespace = pg_my_temp_schema()) AS functions, pg_sleep(0.05)`,
            { transaction, type: QueryTypes.SELECT },
          ),
        ),
      ),
    );
    expect(sessions.map(([session]) => session.functions)).toEqual([1, 1, 1]);
    const { ingest } = command();
    expect((await ingest(message({ senderId: "5511900001900", content: "via the function" }))).status).toBe("LINKED");
  });

  it("gives every message of one batch its own outcome, exactly as alone", async () => {
    const { ingest: seed } = command();
    const stored = await seed(message({ source: "email", senderId: "ana@example.com", content: "antes", externalId: "k-table" }));

    const { ingest, batches } = command();
    const sent = [
      message({ senderId: "5511900001001", content: "a" }), // 0: new sender
      message({ senderId: "+55 11 90000-1001", content: "b" }), // 1: the same new sender, another spelling
      message({ source: "web", senderId: "visitor", content: "c" }), // 2: no identity rule: RECEIVED
      message({ senderId: "not a number", content: "d" }), // 3: invalid sender: ERROR
      message({ senderId: "5511900001002", content: "e", externalId: "k-batch" }), // 4: original
      message({ senderId: "5511900001002", content: "e", externalId: "k-batch" }), // 5: its copy in the same batch
      message({ senderId: "5511900001003", content: "other", externalId: "k-batch" }), // 6: key reused by a new sender
      message({ source: "email", senderId: "ana@example.com", content: "antes", externalId: "k-table" }), // 7: copy of a stored one
      message({ source: "email", senderId: "ana@example.com", content: "depois", externalId: "k-table" }), // 8: key reused
      message({ source: "email", senderId: " ANA@example.com ", content: "f" }), // 9: existing contact
    ];
    const results = await Promise.allSettled(sent.map((m) => ingest(m)));
    expect(batches).toEqual([sent.length]);

    const value = (i: number) => (results[i] as PromiseFulfilledResult<any>).value;
    const reason = (i: number) => (results[i] as PromiseRejectedResult).reason;
    expect(results.map((r) => r.status)).toEqual([
      "fulfilled", "fulfilled", "fulfilled", "fulfilled", "fulfilled", "fulfilled", "rejected", "fulfilled", "rejected", "fulfilled",
    ]);
    expect(value(0)).toMatchObject({ status: "LINKED", contactCreated: true, duplicate: false, error: null });
    expect(value(1)).toMatchObject({ status: "LINKED", contactId: value(0).contactId, contactCreated: false, duplicate: false });
    expect(value(1).eventId).not.toBe(value(0).eventId);
    expect(value(2)).toMatchObject({ status: "RECEIVED", contactId: null, contactCreated: false, duplicate: false });
    expect(value(3)).toMatchObject({ status: "ERROR", contactId: null, contactCreated: false, duplicate: false });
    expect(value(3).error).toContain("is not a WhatsApp id");
    expect(value(4)).toMatchObject({ status: "LINKED", contactCreated: true, duplicate: false });
    expect(value(5)).toEqual({ ...value(4), contactCreated: false, duplicate: true });
    expect(reason(6)).toBeInstanceOf(DuplicateConflictError);
    expect(reason(6).message).not.toContain(value(4).eventId);
    expect(value(7)).toEqual({ ...stored, duplicate: true, contactCreated: false });
    expect(reason(8)).toBeInstanceOf(DuplicateConflictError);
    expect(reason(8).message).not.toContain(stored.eventId);
    expect(value(9)).toMatchObject({ status: "LINKED", contactId: stored.contactId, contactCreated: false });

    // In the database: one event per stored message, one contact per new sender, none for the refused one.
    const events = await rows("SELECT id, content, contact_id, status FROM crm_ingest_events WHERE id = ANY($1::uuid[])", [
      [0, 1, 2, 3, 4, 9].map((i) => value(i).eventId),
    ]);
    expect(events).toHaveLength(6);
    expect(await rows("SELECT whatsapp_id FROM crm_contacts WHERE whatsapp_id LIKE '55119000010%' ORDER BY 1")).toEqual([
      { whatsapp_id: "5511900001001" },
      { whatsapp_id: "5511900001002" },
    ]);
    expect(await rows("SELECT content FROM crm_ingest_events WHERE external_id IN ('k-batch', 'k-table') ORDER BY 1")).toEqual([
      { content: "antes" },
      { content: "e" },
    ]);
  });

  it("collects messages that arrive while a batch is in flight into the next one, up to the batch size", async () => {
    const { ingest, batches } = command({ maxBatch: 4, maxInFlight: 1 });
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => ingest(message({ source: "web", senderId: `v${i}`, content: `n${i}` }))));
    expect(batches).toEqual([4, 4, 2]);
    expect(new Set(results.map((r) => r.eventId)).size).toBe(10);

    // A lone message at an idle batcher goes out at once, alone.
    await ingest(message({ source: "web", senderId: "alone", content: "x" }));
    expect(batches).toEqual([4, 4, 2, 1]);
  });

  it("leaves out of its batch a message whose request was cancelled before the batch was sent", async () => {
    const { ingest, batches } = command();
    const cancelled = new AbortController();
    const reason = new Error("client went away");
    const kept = ingest(message({ source: "web", senderId: "kept", content: "kept" }));
    const dropped = ingest(message({ source: "web", senderId: "dropped", content: "dropped" }), cancelled.signal);
    cancelled.abort(reason);

    await expect(dropped).rejects.toBe(reason);
    expect((await kept).status).toBe("RECEIVED");
    expect(batches).toEqual([1]);
    expect(await rows("SELECT id FROM crm_ingest_events WHERE sender_id = 'dropped'")).toEqual([]);
  });

  it("fails only the message whose value the database refuses, not its batch-mates", async () => {
    const { ingest, batches } = command();
    const results = await Promise.allSettled([
      ingest(message({ source: "web", senderId: "good-1", content: "fine" })),
      ingest(message({ source: "web", senderId: "bad", content: "nul \u0000 here" })),
      ingest(message({ source: "web", senderId: "good-2", content: "fine" })),
    ]);
    expect(batches).toEqual([3]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect((await rows("SELECT sender_id FROM crm_ingest_events WHERE sender_id IN ('good-1', 'good-2', 'bad') ORDER BY 1")).map((r) => r.sender_id)).toEqual([
      "good-1",
      "good-2",
    ]);
  });

  it("settles batches of two processes that create the same new contacts at once: one contact each, every message stored", async () => {
    for (let round = 0; round < 5; round++) {
      const senders = Array.from({ length: 6 }, (_, i) => `55119000${round}${String(i).padStart(4, "0")}`);
      const commands = [command(), command(), command()];
      const sends = commands.flatMap(({ ingest }, c) => senders.map((senderId) => ingest(message({ senderId, content: `c${c}` }))));
      const results = await Promise.all(sends);

      const contacts = await rows<{ id: string; whatsapp_id: string }>("SELECT id, whatsapp_id FROM crm_contacts WHERE whatsapp_id = ANY($1)", [senders]);
      expect(contacts).toHaveLength(senders.length);
      const idOf = new Map(contacts.map((c) => [c.whatsapp_id, c.id]));
      results.forEach((result, i) => expect(result.contactId).toBe(idOf.get(senders[i % senders.length])));
      // Exactly one message per new sender says it created the contact.
      expect(results.filter((r) => r.contactCreated)).toHaveLength(senders.length);
      expect(await rows("SELECT id FROM crm_ingest_events WHERE id = ANY($1::uuid[])", [results.map((r) => r.eventId)])).toHaveLength(results.length);
    }
  });
});
