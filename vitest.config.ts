import { defineConfig } from "vitest/config";

/**
 * Three tiers, each a vitest project (`vitest run --project unit`):
 * - unit: pure code and in-memory Connect routers, no database, no server,
 *   no other process; seconds (`npm run test:unit`).
 * - integration: a real server on an ephemeral port over a real database
 *   (the embedded one, or PostgreSQL with TEST_DATABASE_URL), in the test's process.
 * - system: the service, the relay, a browser or nats-server in processes
 *   of their own: crashes, restarts, failover, start-up and shutdown.
 */
const system = [
  "test/consumer-example.test.ts",
  "test/cors.test.ts",
  "test/crash.test.ts",
  "test/data-dir-lock.test.ts",
  "test/relay.test.ts",
  "test/relay-crash.test.ts",
  "test/relay-failover.test.ts",
  "test/relay-service.test.ts",
  "test/shutdown.test.ts",
  "test/startup.test.ts",
  "test/workers.test.ts",
];

// Every integration and system file starts its own database and server; the
// embedded database takes a few seconds to boot.
const slow = {
  testTimeout: 60_000,
  hookTimeout: 120_000,
  pool: "forks" as const,
  // Prints what a missing outside program skips, or fails the run under AURORA_TEST_REQUIRE_ALL.
  globalSetup: ["test/support/global-setup.ts"],
};

export default defineConfig({
  test: {
    projects: [
      { test: { name: "unit", include: ["test/unit/**/*.test.ts"], testTimeout: 5_000 } },
      { test: { name: "integration", include: ["test/*.test.ts"], exclude: system, ...slow } },
      { test: { name: "system", include: system, ...slow } },
    ],
  },
});
