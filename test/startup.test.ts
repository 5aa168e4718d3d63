import { mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";
import { runScript, startService } from "./support/process.js";
import { postMessage } from "./support/ingest.js";

describe("npm start", () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const cleanup of cleanups) await cleanup();
  });

  it("with no DATABASE_URL, creates and migrates the embedded database and serves the seeds' request", async () => {
    const dataDir = path.join(await mkdtemp(path.join(os.tmpdir(), "aurora-start-")), "nested", "pglite");
    cleanups.push(() => rm(path.dirname(path.dirname(dataDir)), { recursive: true, force: true }));
    const service = await startService({ DATABASE_URL: "", EMBEDDED_DATA_DIR: dataDir });
    const exited = new Promise((resolve) => service.child.once("exit", resolve));
    cleanups.push(async () => {
      service.child.kill("SIGKILL");
    });

    const { status, body } = await postMessage(service.baseUrl, {
      source: "whatsapp",
      sender_id: "5511999999999",
      content: "teste",
      metadata: {},
    });
    expect(status).toBe(200);
    expect(body.status).toBe("persisted");

    // Start-up lines are JSON (stdout is no terminal here), and each names the database;
    // the one that says where the service listens also names the schema version.
    const lines = service
      .output()
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line));
    const listening = lines.findIndex((line) => /listening on/.test(line.msg));
    expect(listening).toBeGreaterThan(0);
    for (const line of lines.slice(0, listening + 1)) expect(line.database).toBe(`embedded ${dataDir}`);
    const migrations = (await readdir(path.resolve(import.meta.dirname, "../migrations"))).filter((name) => name.endsWith(".ts")).sort();
    const version = path.basename(migrations.at(-1)!, ".ts");
    expect(lines[listening]).toMatchObject({ level: 30, schemaVersion: version });
    expect(lines[listening].msg).toContain(`schema ${version} (${migrations.length} applied, 0 pending)`);

    service.child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });

  it("refuses bad configuration, naming every bad variable", async () => {
    const result = await runScript("src/main.ts", [], { PORT: "eighty", DATABASE_URL: "mysql://x", DATABASE_POOL_MAX: "0" });
    expect(result.code).toBe(1);
    expect(result.output).toContain("PORT must be an integer");
    expect(result.output).toContain("DATABASE_URL must start with postgres://");
    expect(result.output).toContain("DATABASE_POOL_MAX must be an integer");
  });

  describe.runIf(databaseKind === "postgres")("against PostgreSQL", () => {
    let database: TestDatabase;
    afterAll(async () => database?.close());

    it("refuses to serve while migrations are pending and says to run npm run migrate", async () => {
      database = await createTestDatabase({ migrate: false, poolMax: 1 });
      const result = await runScript("src/main.ts", [], { DATABASE_URL: database.url, PORT: "0" });
      expect(result.code).toBe(1);
      // Every migration file is pending on an empty database.
      const migrations = (await readdir("migrations")).filter((file) => file.endsWith(".ts")).length;
      expect(result.output).toContain(`${migrations} pending migration(s)`);
      expect(result.output).toContain("npm run migrate");
    });
  });
});
