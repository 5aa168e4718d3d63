import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { QueryTypes } from "sequelize";
import { afterAll, describe, expect, it } from "vitest";
import { DataDirInUseError, LOCK_FILE_NAME, lockDataDir } from "../src/db/data-dir-lock.js";
import { openDatabase } from "../src/db/database.js";
import { databaseKind } from "./support/database.js";
import { runScript, startService } from "./support/process.js";
import { postMessage } from "./support/ingest.js";

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The pid of a process that has exited: what a lock left by `kill -9` names. */
function deadPid(): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["-e", ""]);
    child.on("error", reject);
    child.on("exit", () => resolve(child.pid!));
  });
}

const writeLock = (dir: string, owner: object) => writeFileSync(path.join(dir, LOCK_FILE_NAME), JSON.stringify(owner));

describe("the embedded data folder's lock", () => {
  it("is held by one owner at a time, and released for the next", async () => {
    const dir = await tempDir("aurora-lock-");
    const release = lockDataDir(dir);
    expect(JSON.parse(readFileSync(path.join(dir, LOCK_FILE_NAME), "utf8"))).toMatchObject({ pid: process.pid, host: os.hostname() });
    // A second open, even from the same process, is refused.
    expect(() => lockDataDir(dir)).toThrow(DataDirInUseError);
    release();
    expect(existsSync(path.join(dir, LOCK_FILE_NAME))).toBe(false);
    lockDataDir(dir)();
  });

  it("refuses a folder whose owner is alive, naming the folder and the owner's pid", async () => {
    const dir = await tempDir("aurora-lock-");
    const owner = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"]);
    cleanups.push(async () => owner.kill("SIGKILL"));
    writeLock(dir, { pid: owner.pid, host: os.hostname(), startedAt: "2026-01-01T00:00:00.000Z", nonce: "a" });
    expect(() => lockDataDir(dir)).toThrow(new RegExp(`${dir}.*in use by process ${owner.pid} `));
  });

  it("takes over a lock whose process is gone, or whose content is unreadable", async () => {
    const dir = await tempDir("aurora-lock-");
    const lockFile = path.join(dir, LOCK_FILE_NAME);
    const holder = () => JSON.parse(readFileSync(lockFile, "utf8"));
    const dead = await deadPid();
    for (const stale of [JSON.stringify({ pid: dead, host: os.hostname(), startedAt: "2026-01-01T00:00:00.000Z", nonce: "b" }), "{trunc"]) {
      writeFileSync(lockFile, stale);
      const release = lockDataDir(dir);
      // This process holds it now, under a lock of its own: not the stale one.
      expect(holder()).toMatchObject({ pid: process.pid, host: os.hostname() });
      expect(holder().nonce).not.toBe("b");
      expect(() => lockDataDir(dir)).toThrow(DataDirInUseError);
      release();
      expect(existsSync(lockFile)).toBe(false);
    }
  });

  it("respects a lock written on another host, whose processes it cannot see", async () => {
    const dir = await tempDir("aurora-lock-");
    writeLock(dir, { pid: await deadPid(), host: "elsewhere.example", startedAt: "2026-01-01T00:00:00.000Z", nonce: "c" });
    expect(() => lockDataDir(dir)).toThrow(/in use by process \d+ on host elsewhere\.example/);
  });
});

// Two real services on one folder: the second must refuse, and every
// acknowledged event must survive, also after `kill -9` of the first.
describe.runIf(databaseKind === "embedded")("two processes on one embedded data folder", () => {
  it("lets only the first serve; after kill -9 the next starts, and nothing acknowledged is lost", async () => {
    const dataDir = path.join(await tempDir("aurora-owner-"), "pglite");
    const env = { DATABASE_URL: "", EMBEDDED_DATA_DIR: dataDir };
    const sender = "5511966665555";
    const ingest = async (baseUrl: string, content: string) => {
      const { status, body } = await postMessage(baseUrl, { source: "whatsapp", sender_id: sender, content, metadata: {} });
      expect(status).toBe(200);
      return body as { event_id: string; contact_id: string };
    };

    const first = await startService(env);
    cleanups.push(async () => first.child.kill("SIGKILL"));
    const acknowledged = [await ingest(first.baseUrl, "one")];

    // A second `npm start` and `npm run migrate` refuse at once, naming the folder and the owner.
    const second = await runScript("src/main.ts", [], { ...env, PORT: "0" });
    expect(second.code).toBe(1);
    expect(second.output).toContain(`the embedded database in ${dataDir} is in use by process ${first.child.pid}`);
    expect(second.output).not.toContain("listening on");
    const migrate = await runScript("src/cli/migrate.ts", ["status"], env);
    expect(migrate.code).toBe(1);
    expect(migrate.output).toContain(`in use by process ${first.child.pid}`);
    expect(migrate.output).not.toMatch(/\n\s+at /);

    acknowledged.push(await ingest(first.baseUrl, "two"));
    const killed = new Promise((resolve) => first.child.once("exit", (_code, signal) => resolve(signal)));
    first.child.kill("SIGKILL");
    expect(await killed).toBe("SIGKILL");
    expect(existsSync(path.join(dataDir, LOCK_FILE_NAME))).toBe(true);

    // The stale lock does not block the next start.
    const third = await startService(env);
    const stopped = new Promise((resolve) => third.child.once("exit", resolve));
    cleanups.push(async () => third.child.kill("SIGKILL"));
    acknowledged.push(await ingest(third.baseUrl, "three"));
    await expect(openDatabase({ kind: "embedded", dataDir })).rejects.toThrow(`in use by process ${third.child.pid}`);
    third.child.kill("SIGTERM");
    expect(await stopped).toBe(0);
    expect(existsSync(path.join(dataDir, LOCK_FILE_NAME))).toBe(false);

    const database = await openDatabase({ kind: "embedded", dataDir }, { poolMax: 2 });
    cleanups.push(() => database.close());
    const events = await database.sequelize.query<{ id: string; contact_id: string }>(
      "SELECT id, contact_id FROM crm_ingest_events WHERE sender_id = $1",
      { bind: [sender], type: QueryTypes.SELECT },
    );
    expect(events.map((event) => event.id).sort()).toEqual(acknowledged.map((ack) => ack.event_id).sort());
    expect(new Set([...events.map((event) => event.contact_id), ...acknowledged.map((ack) => ack.contact_id)]).size).toBe(1);
    const contacts = await database.sequelize.query("SELECT id FROM crm_contacts WHERE whatsapp_id = $1", { bind: [sender], type: QueryTypes.SELECT });
    expect(contacts).toHaveLength(1);
  }, 180_000);
});
