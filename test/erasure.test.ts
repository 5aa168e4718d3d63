import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readDigestKey } from "../src/privacy/digest-key.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";

describe(`the digest key (${databaseKind})`, () => {
  let first: TestDatabase;
  let second: TestDatabase;
  beforeAll(async () => {
    [first, second] = await Promise.all([createTestDatabase(), createTestDatabase()]);
  });
  afterAll(async () => {
    await Promise.all([first?.close(), second?.close()]);
  });

  it("is 32 random bytes made by the migration: the same on every read, different in another database", async () => {
    const key = await readDigestKey(first.sequelize);
    expect(key).toBeInstanceOf(Buffer);
    expect(key.length).toBe(32);
    expect((await readDigestKey(first.sequelize)).equals(key)).toBe(true);
    expect((await readDigestKey(second.sequelize)).equals(key)).toBe(false);
  });
});
