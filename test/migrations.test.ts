import { mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMigrator } from "../src/db/migrator.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { runScript } from "./support/process.js";

let database: TestDatabase;

beforeAll(async () => {
  database = await createTestDatabase({ migrate: false });
});

afterAll(async () => {
  await database?.close();
});

async function tables(): Promise<string[]> {
  const rows = await database.sequelize.query<{ tablename: string }>(
    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'crm_%' AND tablename <> 'crm_schema_migrations' ORDER BY tablename",
    { type: QueryTypes.SELECT },
  );
  return rows.map((row) => row.tablename);
}

async function indexes(table: string): Promise<string[]> {
  const rows = await database.sequelize.query<{ indexdef: string }>("SELECT indexdef FROM pg_indexes WHERE tablename = $1", {
    bind: [table],
    type: QueryTypes.SELECT,
  });
  return rows.map((row) => row.indexdef);
}

async function columns(table: string): Promise<string[]> {
  const rows = await database.sequelize.query<{ column_name: string }>(
    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
    { bind: [table], type: QueryTypes.SELECT },
  );
  return rows.map((row) => row.column_name);
}

/** Every table the migrations create, once all are applied. */
const ALL_TABLES = [
  "crm_contacts",
  "crm_deals",
  "crm_feed_identity",
  "crm_feed_relay_state",
  "crm_ingest_events",
  "crm_privacy_erased_ids",
  "crm_privacy_erasures",
  "crm_privacy_keys",
  "crm_privacy_requests",
  "crm_webhook_replay_tokens",
  "crm_whatsapp_user_links",
];

describe(`migrations (${databaseKind})`, () => {
  it("go up, down one at a time, and up again", async () => {
    const migrator = createMigrator(database.sequelize);

    const applied = await migrator.up();
    expect(applied.map((m) => m.name)).toEqual([
      "2026.01.03T00.02.contacts-deals",
      "2026.01.03T00.03.ingest-events",
      "2026.01.04T00.01.ingest-event-external-id",
      "2026.01.05T00.01.ingest-event-feed",
      "2026.01.07T00.01.feed-relay-state",
      "2026.12.02T00.01.ingest-event-trace-parent",
      "2026.12.04T00.01.ingest-event-kind",
      "2026.12.04T00.02.whatsapp-user-links",
      "2026.12.04T00.03.webhook-replay-tokens",
      "2026.12.04T00.04.privacy-requests",
      "2026.12.04T00.05.privacy-erasure",
    ]);
    expect(await tables()).toEqual(ALL_TABLES);
    expect(await indexes("crm_whatsapp_user_links")).toEqual(
      expect.arrayContaining([expect.stringMatching(/INDEX crm_whatsapp_user_links_whatsapp_id_idx .*\(whatsapp_id\)/)]),
    );
    expect(await indexes("crm_webhook_replay_tokens")).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/UNIQUE INDEX crm_webhook_replay_tokens_pkey .*\(provider, token\)/),
        expect.stringMatching(/INDEX crm_webhook_replay_tokens_expires_at_idx .*\(expires_at\)/),
      ]),
    );
    expect(await indexes("crm_contacts")).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/UNIQUE INDEX crm_contacts_whatsapp_id_key .*\(whatsapp_id\)/),
        expect.stringMatching(/UNIQUE INDEX crm_contacts_email_key .*\(email\)/),
      ]),
    );
    expect(await indexes("crm_ingest_events")).toEqual(
      expect.arrayContaining([expect.stringMatching(/UNIQUE INDEX crm_ingest_events_source_external_id_key .*\(source, external_id\)/)]),
    );
    expect(await indexes("crm_ingest_events")).toEqual(
      expect.arrayContaining([expect.stringMatching(/UNIQUE INDEX crm_ingest_events_feed_position_key .*\(feed_xid, feed_seq\)/)]),
    );
    expect(await columns("crm_ingest_events")).toContain("trace_parent");
    expect(await columns("crm_ingest_events")).toContain("kind");
    expect(await indexes("crm_ingest_events")).toEqual(
      expect.arrayContaining([expect.stringMatching(/INDEX crm_ingest_events_source_sender_id_created_at_idx .*\(source, sender_id, created_at\)/)]),
    );
    const [key] = await database.sequelize.query<{ name: string; bytes: number }>("SELECT name, length(secret) AS bytes FROM crm_privacy_keys", {
      type: QueryTypes.SELECT,
    });
    expect(key).toEqual({ name: "digest", bytes: 32 });
    expect(await migrator.pending()).toEqual([]);

    await migrator.down();
    expect(await tables()).not.toContain("crm_privacy_keys");
    expect(await tables()).not.toContain("crm_privacy_erasures");
    expect(await tables()).not.toContain("crm_privacy_erased_ids");
    expect(await tables()).toContain("crm_privacy_requests");
    await migrator.down();
    expect(await tables()).not.toContain("crm_privacy_requests");
    expect(await indexes("crm_ingest_events")).toEqual(
      expect.arrayContaining([expect.stringMatching(/INDEX crm_ingest_events_source_sender_id_idx .*\(source, sender_id\)$/)]),
    );
    expect((await indexes("crm_ingest_events")).join("\n")).not.toContain("created_at_idx ON public.crm_ingest_events USING btree (source");
    await migrator.down();
    expect(await tables()).not.toContain("crm_webhook_replay_tokens");
    await migrator.down();
    expect(await tables()).not.toContain("crm_whatsapp_user_links");
    await migrator.down();
    expect(await columns("crm_ingest_events")).not.toContain("kind");
    expect(await columns("crm_ingest_events")).toContain("trace_parent");
    await migrator.down();
    expect(await columns("crm_ingest_events")).not.toContain("trace_parent");
    expect(await tables()).toEqual(["crm_contacts", "crm_deals", "crm_feed_identity", "crm_feed_relay_state", "crm_ingest_events"]);
    await migrator.down();
    expect(await tables()).toEqual(["crm_contacts", "crm_deals", "crm_feed_identity", "crm_ingest_events"]);
    await migrator.down();
    expect(await columns("crm_ingest_events")).not.toContain("feed_xid");
    expect(await columns("crm_ingest_events")).not.toContain("feed_seq");
    expect((await indexes("crm_ingest_events")).join("\n")).not.toContain("feed_");
    expect(await tables()).toEqual(["crm_contacts", "crm_deals", "crm_ingest_events"]);
    await migrator.down();
    expect(await columns("crm_ingest_events")).not.toContain("external_id");
    expect((await indexes("crm_ingest_events")).join("\n")).not.toContain("external_id");
    expect(await tables()).toEqual(["crm_contacts", "crm_deals", "crm_ingest_events"]);
    await migrator.down();
    expect(await tables()).toEqual(["crm_contacts", "crm_deals"]);
    await migrator.down();
    expect(await tables()).toEqual([]);
    expect((await migrator.pending()).length).toBe(11);

    await migrator.up();
    expect(await tables()).toEqual(ALL_TABLES);
    expect(await columns("crm_ingest_events")).toEqual(expect.arrayContaining(["external_id", "feed_xid", "feed_seq", "trace_parent", "kind"]));
  });

  it("refuse a status outside RECEIVED, LINKED and ERROR", async () => {
    await expect(
      database.sequelize.query("INSERT INTO crm_ingest_events (source, sender_id, content, status) VALUES ('web', 'x', 'y', 'DONE')"),
    ).rejects.toThrow(/crm_ingest_events_status_check/);
  });

  it("refuse a kind outside MESSAGE, STATUS, SYSTEM and ERASURE, and store MESSAGE when none is given", async () => {
    await expect(
      database.sequelize.query("INSERT INTO crm_ingest_events (source, sender_id, content, kind) VALUES ('web', 'x', 'y', 'NOTE')"),
    ).rejects.toThrow(/crm_ingest_events_kind_check/);
    const [row] = await database.sequelize.query<{ kind: string }>(
      "INSERT INTO crm_ingest_events (source, sender_id, content) VALUES ('web', 'x', 'y') RETURNING kind",
      { type: QueryTypes.SELECT },
    );
    expect(row.kind).toBe("MESSAGE");
  });
});

describe("npm run migrate", () => {
  let env: Record<string, string>;
  let dataDir: string | undefined;
  let target: TestDatabase | undefined;

  beforeAll(async () => {
    if (databaseKind === "postgres") {
      target = await createTestDatabase({ migrate: false, poolMax: 1 });
      env = { DATABASE_URL: target.url };
    } else {
      dataDir = await mkdtemp(path.join(os.tmpdir(), "aurora-migrate-"));
      env = { DATABASE_URL: "", EMBEDDED_DATA_DIR: dataDir };
    }
  });

  afterAll(async () => {
    await target?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it("applies, reports status, is harmless when run twice, and reverts the last", async () => {
    const first = await runScript("src/cli/migrate.ts", [], env);
    expect(first.code).toBe(0);
    expect(first.output).toContain(
      "applied: 2026.01.03T00.02.contacts-deals, 2026.01.03T00.03.ingest-events, 2026.01.04T00.01.ingest-event-external-id, 2026.01.05T00.01.ingest-event-feed, 2026.01.07T00.01.feed-relay-state, 2026.12.02T00.01.ingest-event-trace-parent",
    );
    expect(first.output).not.toMatch(/password/i);

    const second = await runScript("src/cli/migrate.ts", ["up"], env);
    expect(second.code).toBe(0);
    expect(second.output).toContain("nothing to apply");

    // Every migration file, in the order their names sort: the CLI lists them all, applied.
    const names = (await readdir("migrations")).filter((file) => file.endsWith(".ts")).map((file) => file.slice(0, -3)).sort();
    const [previous, last] = names.slice(-2);
    const status = await runScript("src/cli/migrate.ts", ["status"], env);
    expect(status.output).toMatch(new RegExp(names.map((name) => `applied\\s+${name.replaceAll(".", "\\.")}`).join("\\n")));
    const url = env.DATABASE_URL ? new URL(env.DATABASE_URL) : undefined;
    expect(status.output).toContain(`database: ${url ? `postgres ${url.hostname}:${url.port || 5432}${url.pathname}` : `embedded ${dataDir}`}`);
    expect(status.output).toContain(`schema version: ${last} (${names.length} applied, 0 pending)`);

    const down = await runScript("src/cli/migrate.ts", ["down"], env);
    expect(down.output).toContain(`reverted: ${last}`);
    const after = await runScript("src/cli/migrate.ts", ["status"], env);
    expect(after.output).toMatch(new RegExp(`applied\\s+${previous.replaceAll(".", "\\.")}\\npending\\s+${last.replaceAll(".", "\\.")}`));
    expect(after.output).toContain(`schema version: ${previous} (${names.length - 1} applied, 1 pending)`);
    // Five processes, each opening the database: the embedded one takes seconds to boot on a busy machine.
  }, 180_000);

  it("rejects an unknown command with a non-zero exit and the usage, no stack trace", async () => {
    const result = await runScript("src/cli/migrate.ts", ["sideways"], env);
    expect(result.code).not.toBe(0);
    expect(result.output).toContain('unknown command "sideways"');
    expect(result.output).toContain("usage: npm run migrate");
    expect(result.output).not.toMatch(/\n\s+at /);
  });

  it("prints its usage for help", async () => {
    for (const help of ["help", "--help"]) {
      const result = await runScript("src/cli/migrate.ts", [help], env);
      expect(result.code).toBe(0);
      expect(result.output).toMatch(/^usage: npm run migrate \[-- <command>\]\n\n {2}up /);
    }
  });
});
