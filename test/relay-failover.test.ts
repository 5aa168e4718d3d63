import type { ChildProcess } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startNats, type TestNats } from "./support/nats.js";
import { requires } from "./support/requirements.js";
import { startService } from "./support/process.js";
import { auditStream, readStream, wholeFeed } from "./support/relay.js";
import { sleep } from "./support/wait.js";

const STREAM = "FAILOVER_TEST";
let database: TestDatabase;
let nats: TestNats;
const children: ChildProcess[] = [];

// Replicas share a PostgreSQL server; the embedded database belongs to one process.
describe.runIf(databaseKind === "postgres" && requires("nats-server"))("two replicas, one relay, failover under load (postgres)", () => {
  beforeAll(async () => {
    [database, nats] = await Promise.all([createTestDatabase(), startNats()]);
  });

  afterAll(async () => {
    for (const child of children) child.kill("SIGKILL");
    await Promise.all([database?.close(), nats?.close()]);
  });

  async function relayState(baseUrl: string): Promise<string | undefined> {
    const response = await fetch(`${baseUrl}/readyz`).catch(() => undefined);
    if (!response) return undefined;
    const body = (await response.json()) as { ready: boolean; relay?: { state: string } };
    expect(body.ready).toBe(true);
    return body.relay?.state;
  }

  it("keeps every acknowledged event in the stream once, in feed order, when the relaying replica is killed", async () => {
    const env = {
      DATABASE_URL: database.url,
      NATS_URL: nats.url,
      NATS_STREAM: STREAM,
      RELAY_LEADER_RETRY_MS: "500",
      LOG_LEVEL: "info",
      LOG_FORMAT: "json",
    };
    const replicas = [await startService(env), await startService(env)];
    children.push(...replicas.map((replica) => replica.child));
    const deadline = Date.now() + 20_000;
    let states: Array<string | undefined> = [];
    while (Date.now() < deadline) {
      states = await Promise.all(replicas.map((replica) => relayState(replica.baseUrl)));
      if (states.includes("active") && states.includes("standby")) break;
      await sleep(100);
    }
    expect(states.sort()).toEqual(["active", "standby"]);
    for (const replica of replicas) expect(replica.output()).toContain("feed relay on: stream FAILOVER_TEST");
    const activeIndex = (await relayState(replicas[0].baseUrl)) === "active" ? 0 : 1;
    const [active, survivor] = [replicas[activeIndex], replicas[1 - activeIndex]];

    const acknowledged: string[] = [];
    let loading = true;
    const sender = async (baseUrl: string, worker: number) => {
      for (let i = 0; loading; i++) {
        const response = await fetch(`${baseUrl}/ingest/message`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ source: "web", sender_id: `failover-${worker}-${i}`, content: "x", metadata: {} }),
        }).catch(() => undefined);
        if (response?.status === 200) acknowledged.push(((await response.json()) as { event_id: string }).event_id);
        else await sleep(20);
      }
    };
    const load = [0, 1, 2, 3].map((worker) => sender(worker % 2 ? active.baseUrl : survivor.baseUrl, worker));
    await sleep(2_000);

    active.child.kill("SIGKILL");
    const killedAt = Date.now();
    while ((await relayState(survivor.baseUrl)) !== "active") {
      expect(Date.now() - killedAt).toBeLessThan(5_000);
      await sleep(50);
    }
    const takeoverMs = Date.now() - killedAt;
    await sleep(2_000);
    loading = false;
    await Promise.all(load);

    const feed = await wholeFeed(database.sequelize);
    const waitUntil = Date.now() + 30_000;
    let messages = await readStream(nats.url, STREAM);
    while (messages.length < feed.length && Date.now() < waitUntil) {
      await sleep(200);
      messages = await readStream(nats.url, STREAM);
    }
    console.log(`acknowledged ${acknowledged.length}; feed ${feed.length}; stream ${messages.length}`);
    expect(acknowledged.length).toBeGreaterThan(20);
    expect(auditStream(messages, feed)).toBeUndefined();
    const inStream = new Set(messages.map((message) => message.event.id));
    expect(acknowledged.filter((id) => !inStream.has(id))).toEqual([]);
    expect(survivor.output()).toContain("relay lock taken");
    console.log(`failover: ${acknowledged.length} acknowledged events, survivor relaying ${takeoverMs} ms after the kill`);
  }, 120_000);
});
