import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Every file starts its own database and server; the embedded database
    // takes a few seconds to boot.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
  },
});
