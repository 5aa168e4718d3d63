import { QueryTypes } from "sequelize";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createReplayTokens } from "../src/channels/email/replay-tokens.js";
import { createTestDatabase, databaseKind, type TestDatabase } from "./support/database.js";

let database: TestDatabase;
beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.close();
});

describe(`webhook replay tokens (${databaseKind})`, () => {
  const inFiveMinutes = () => new Date(Date.now() + 300_000);

  it("lets a token be claimed once per provider, and again once released", async () => {
    const mailgun = createReplayTokens(database.sequelize, "mailgun");
    expect(await mailgun.claim("token-1", inFiveMinutes())).toBe(true);
    expect(await mailgun.claim("token-1", inFiveMinutes())).toBe(false);
    expect(await createReplayTokens(database.sequelize, "other").claim("token-1", inFiveMinutes())).toBe(true);
    await mailgun.release("token-1");
    expect(await mailgun.claim("token-1", inFiveMinutes())).toBe(true);
  });

  it("takes over a token whose row expired, and deletes expired rows as tokens arrive", async () => {
    const mailgun = createReplayTokens(database.sequelize, "mailgun");
    expect(await mailgun.claim("token-2", new Date(Date.now() - 1_000))).toBe(true);
    expect(await mailgun.claim("token-3", new Date(Date.now() - 1_000))).toBe(true);
    expect(await mailgun.claim("token-2", inFiveMinutes())).toBe(true);
    await mailgun.claim("token-4", inFiveMinutes());
    const rows = await database.sequelize.query<{ token: string }>(
      "SELECT token FROM crm_webhook_replay_tokens WHERE expires_at < now()",
      { type: QueryTypes.SELECT },
    );
    expect(rows).toEqual([]);
  });

  it("gives one token to exactly one of many claims at once", async () => {
    const mailgun = createReplayTokens(database.sequelize, "mailgun");
    const claims = await Promise.all(Array.from({ length: 8 }, () => mailgun.claim("token-raced", inFiveMinutes())));
    expect(claims.filter(Boolean)).toHaveLength(1);
  });
});
