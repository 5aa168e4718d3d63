import { describe, expect, it } from "vitest";
import { databaseKind } from "./support/database.js";
import { countEvents as countEventsIn } from "./support/rows.js";
import { useTestServer } from "./support/server.js";

const fixture = useTestServer();

const countEvents = () => countEventsIn(fixture.database);

describe(`HTTP edge cases (${databaseKind})`, () => {
  it.each([
    ["no JSON content type", "POST", "/ingest/message", { "content-type": "application/x-www-form-urlencoded" }, "source=web", 415],
    ["malformed JSON", "POST", "/ingest/message", { "content-type": "application/json" }, '{"source": "web",', 400],
    ["GET on the route", "GET", "/ingest/message", {}, undefined, 405],
    ["GET on the RPC", "GET", "/aurora.crm.v1.IngestService/IngestMessage", {}, undefined, 405],
    ["an unknown path", "POST", "/nowhere", { "content-type": "application/json" }, "{}", 404],
  ])("answers %s with the usual 4xx and stores nothing", async (_name, method, path, headers, body, expected) => {
    const before = await countEvents();
    const response = await fetch(fixture.server.baseUrl + path, { method, headers, body });
    await response.arrayBuffer();

    expect(response.status).toBe(expected);
    expect(await countEvents()).toBe(before);
  });

  it("names the problem in a Connect error body for malformed JSON", async () => {
    const response = await fetch(`${fixture.server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{nope",
    });
    expect(await response.json()).toMatchObject({ code: "invalid_argument" });
  });

  it("keeps serving after bad requests", async () => {
    const response = await fetch(`${fixture.server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ source: "web", sender_id: "v1", content: "still here", metadata: {} }),
    });
    expect(response.status).toBe(200);
  });
});

describe(`invalid input (${databaseKind})`, () => {
  it.each(["source", "sender_id", "content"])("answers 400 invalid_argument naming a blank %s, and stores nothing", async (field) => {
    const before = await countEvents();
    const body = { source: "web", sender_id: "v1", content: "hello", metadata: {}, [field]: "  " };
    const response = await fetch(`${fixture.server.baseUrl}/ingest/message`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });

    expect(response.status).toBe(400);
    const error = await response.json();
    expect(error.code).toBe("invalid_argument");
    expect(error.message).toContain(field);
    expect(await countEvents()).toBe(before);
  });
});
