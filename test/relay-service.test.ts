import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startNats, type TestNats } from "./support/nats.js";
import { startService } from "./support/process.js";
import { readMetric } from "./support/metrics.js";
import { readStream } from "./support/relay.js";
import { requires } from "./support/requirements.js";
import { waitFor } from "./support/wait.js";
import { postMessage } from "./support/ingest.js";

let database: TestDatabase | undefined;
let dataDir: string | undefined;
let nats: TestNats;
const children: ChildProcess[] = [];

beforeAll(async () => {
  nats = await startNats({ started: false });
  if (databaseKind === "postgres") database = await createTestDatabase();
  else dataDir = await mkdtemp(path.join(os.tmpdir(), "aurora-relay-service-"));
});

afterAll(async () => {
  for (const child of children) child.kill("SIGKILL");
  await Promise.all([database?.close(), nats?.close()]);
  for (const dir of dataDir ? [dataDir, `${dataDir}-off`] : []) await rm(dir, { recursive: true, force: true });
});

const databaseEnv = (): Record<string, string> => (database ? { DATABASE_URL: database.url } : { DATABASE_URL: "", EMBEDDED_DATA_DIR: dataDir! });

async function readyz(baseUrl: string): Promise<{ status: number; body: any }> {
  const response = await fetch(`${baseUrl}/readyz`);
  return { status: response.status, body: await response.json() };
}

describe.runIf(requires("nats-server"))(`the service with NATS unreachable (${databaseKind})`, () => {
  it("stores and acknowledges, stays ready, shows the relay's backlog, and relays it once NATS is up", async () => {
    const service = await startService({ ...databaseEnv(), NATS_URL: nats.url, NATS_STREAM: "SERVICE_TEST", LOG_FORMAT: "json" });
    children.push(service.child);
    // Logged right after "listening on".
    await waitFor(() => service.output().includes("feed relay on: stream SERVICE_TEST"), 5_000);

    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const started = Date.now();
      const { status, body } = await postMessage(service.baseUrl, { source: "web", sender_id: `offline-${i}`, content: "x", metadata: {} });
      expect(status).toBe(200);
      // No publish on the request path: NATS being down costs a request nothing (the ack timeout is 5 s).
      expect(Date.now() - started).toBeLessThan(2_000);
      ids.push(body.event_id);
    }
    const deadline = Date.now() + 10_000;
    let ready = await readyz(service.baseUrl);
    while (ready.body.relay?.lagEvents !== 5 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      ready = await readyz(service.baseUrl);
    }
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ ready: true, relay: { natsConnected: false, lagEvents: 5 } });
    expect(await readMetric(service.baseUrl, "aurora_ingest_relay_lag_events")).toBe(5);
    expect(await readMetric(service.baseUrl, "aurora_ingest_relay_active")).toBe(0);

    await nats.start();
    const until = Date.now() + 20_000;
    let messages = await readStream(nats.url, "SERVICE_TEST").catch(() => []);
    while (messages.length < 5 && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      messages = await readStream(nats.url, "SERVICE_TEST").catch(() => []);
    }
    expect(messages.map((message) => message.event.id)).toEqual(ids);
    const drained = Date.now() + 5_000;
    while ((await readyz(service.baseUrl)).body.relay.lagEvents !== 0 && Date.now() < drained) await new Promise((r) => setTimeout(r, 100));
    expect((await readyz(service.baseUrl)).body.relay).toMatchObject({ state: "active", natsConnected: true, lagEvents: 0, lagSeconds: 0 });
    expect(await readMetric(service.baseUrl, "aurora_ingest_relay_active")).toBe(1);
    expect(await readMetric(service.baseUrl, "aurora_ingest_relay_published_total")).toBe(5);
    service.child.kill("SIGTERM");
  }, 180_000);

  it("says at start-up that the relay is off without NATS_URL", async () => {
    const service = await startService({ ...databaseEnv(), ...(dataDir ? { EMBEDDED_DATA_DIR: `${dataDir}-off` } : {}), NATS_URL: "" });
    children.push(service.child);
    await waitFor(() => service.output().includes("feed relay off: NATS_URL is not set"), 5_000);
    expect((await readyz(service.baseUrl)).body.relay).toBeUndefined();
  }, 180_000);
});
