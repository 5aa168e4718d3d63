import { spawn } from "node:child_process";
import { appendFileSync } from "node:fs";
import path from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadRelayState } from "../src/feed/relay/relay-state.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startNats, type TestNats } from "./support/nats.js";
import { requires } from "./support/requirements.js";
import { auditStream, insertEvents, readStream, wholeFeed } from "./support/relay.js";

const root = path.resolve(import.meta.dirname, "..");
const STREAM = "CRASH_TEST";
let database: TestDatabase;
let nats: TestNats;

beforeAll(async () => {
  [database, nats] = await Promise.all([createTestDatabase(), startNats()]);
});

afterAll(async () => {
  await Promise.all([database?.close(), nats?.close()]);
});

/** Runs the relay in a child process until it exits (killed at its crash point) or `until()` holds (then SIGTERM). */
function runRelay(env: Record<string, string>, until?: () => Promise<boolean>): Promise<{ signal: NodeJS.Signals | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "test/support/relay-child.ts"], {
      cwd: root,
      env: {
        ...process.env,
        DATABASE_URL: database.url,
        NATS_URL: nats.url,
        NATS_STREAM: STREAM,
        NATS_STREAM_DUPLICATE_WINDOW_SECONDS: "1",
        RELAY_BATCH_SIZE: "50",
        RELAY_MAX_IN_FLIGHT: "100",
        RELAY_LEADER_RETRY_MS: "200",
        RELAY_LOCK: databaseKind === "embedded" ? "none" : "advisory",
        ...env,
      },
    });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    child.on("error", reject);
    child.on("exit", (_code, signal) => {
      if (process.env.RELAY_TEST_LOG) appendFileSync(process.env.RELAY_TEST_LOG, output);
      resolve({ signal, output });
    });
    if (until) {
      const poll = async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        if (await until().catch(() => false)) child.kill("SIGTERM");
        else setTimeout(() => void poll(), 100);
      };
      void poll();
    }
  });
}

async function streamLastSeq(): Promise<number> {
  const nc = await connect({ servers: nats.url });
  try {
    return (await (await jetstreamManager(nc)).streams.info(STREAM)).state.last_seq;
  } finally {
    await nc.close();
  }
}

describe.runIf(requires("nats-server"))(`relay killed at its crash points (${databaseKind})`, () => {
  it("leaves every event in the stream once, in feed order, past the duplicate window", async () => {
    for (let i = 0; i < 6; i++) await insertEvents(database.sequelize, 50, `crash-${i}`);

    // Killed between a publish and its acknowledgement.
    const first = await runRelay({ CRASH_AT: "publish", CRASH_AFTER: "120" });
    expect(first.signal, first.output).toBe("SIGKILL");
    expect(first.output).toContain("crashing at publish 120");
    // Stored in the stream, not saved: the stream is ahead of the saved state.
    const afterFirst = await loadRelayState(database.sequelize, STREAM);
    expect(await streamLastSeq()).toBeGreaterThan(afterFirst?.streamSeq ?? 0);
    // Past the duplicate window, Nats-Msg-Id no longer protects anything.
    await new Promise((resolve) => setTimeout(resolve, 1_500));

    // Killed between an acknowledgement and saving the position.
    const second = await runRelay({ CRASH_AT: "ack", CRASH_AFTER: "70" });
    expect(second.signal, second.output).toBe("SIGKILL");
    expect(second.output).toContain("crashing at ack 70");
    expect(await streamLastSeq()).toBeGreaterThan((await loadRelayState(database.sequelize, STREAM))?.streamSeq ?? 0);
    await new Promise((resolve) => setTimeout(resolve, 1_500));

    await insertEvents(database.sequelize, 50, "after");
    const feed = await wholeFeed(database.sequelize);
    const third = await runRelay({}, async () => (await streamLastSeq()) >= feed.length);
    expect(third.signal ?? "exited", third.output).not.toBe("SIGKILL");

    expect(auditStream(await readStream(nats.url, STREAM), feed)).toBeUndefined();
    expect((await loadRelayState(database.sequelize, STREAM))?.streamSeq).toBe(feed.length);
  }, 180_000);
});
