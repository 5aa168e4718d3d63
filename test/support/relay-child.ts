/**
 * A relay in a process of its own, for crash tests: relays the feed of
 * DATABASE_URL to NATS_URL and kills itself with SIGKILL at a crash point:
 * CRASH_AT=publish (right after the Nth publish reached the server, before
 * its acknowledgement is read) or CRASH_AT=ack (right after the Nth
 * acknowledgement, before the position is saved). Without CRASH_AT it relays
 * until SIGTERM.
 */
import { Registry } from "prom-client";
import { loadConfig } from "../../src/config.js";
import { openDatabase } from "../../src/db/database.js";
import { createFeedRelay } from "../../src/feed/relay/start-relay.js";
import { createLogger } from "../../src/observability/logger.js";

const config = loadConfig();
const crashAt = process.env.CRASH_AT;
const crashAfter = Number(process.env.CRASH_AFTER ?? "1");
const log = createLogger({ level: "info", format: "json" });
const database = await openDatabase({ kind: "postgres", url: config.databaseUrl! }, { poolMax: 2 });
let count = 0;
const crash = (point: string) => async () => {
  if (point !== crashAt || ++count < crashAfter) return;
  // Give the publish time to reach the server (its acknowledgement is then on its way back).
  if (point === "publish") await new Promise((resolve) => setTimeout(resolve, 20));
  process.stdout.write(`crashing at ${point} ${count}\n`);
  process.kill(process.pid, "SIGKILL");
};
const relay = createFeedRelay(config.relay!, {
  sequelize: database.sequelize,
  // The embedded database under test is reached over its socket: one process, so no lock is needed.
  databaseUrl: process.env.RELAY_LOCK === "none" ? undefined : config.databaseUrl,
  log,
  registry: new Registry(),
  hooks: { afterPublish: crash("publish"), afterAck: crash("ack") },
});
relay.start();
process.on("SIGTERM", () => {
  void relay.stop().then(() => database.close()).then(() => process.exit(0));
});
