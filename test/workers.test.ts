import { afterAll, describe, expect, it } from "vitest";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { startService } from "./support/process.js";
import { postMessage } from "./support/ingest.js";

// Its configuration rules are checked in config.test.ts.
describe("WORKERS", () => {
  describe.runIf(databaseKind === "postgres")("against PostgreSQL", () => {
    let database: TestDatabase;
    afterAll(async () => database?.close());

    it("serves one port from 2 worker processes and stops them all on SIGTERM", async () => {
      database = await createTestDatabase({ poolMax: 1 });
      const service = await startService({ DATABASE_URL: database.url, WORKERS: "2" });
      // "close" comes after the output is read to its end.
      const exited = new Promise((resolve) => service.child.once("close", resolve));
      expect(service.output()).toContain("2 workers");

      const responses = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          postMessage(service.baseUrl, { source: "whatsapp", sender_id: "5511955554444", content: `m${i}`, metadata: {} }),
        ),
      );
      expect(responses.map((r) => r.status)).toEqual(Array(6).fill(200));
      expect(new Set(responses.map((r) => r.body.contact_id)).size).toBe(1);

      service.child.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(service.output().match(/finishing requests in flight/g)).toHaveLength(2);
    });
  });
});
