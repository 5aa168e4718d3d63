import type { PhoneRegion } from "../../src/identity/phone-number.js";
import { buildServer, type IngestServer } from "../../src/server.js";
import type { TestDatabase } from "./database.js";

/** A real server on an ephemeral loopback port, over the given database. */
export interface TestServer {
  baseUrl: string;
  server: IngestServer;
  /** Errors the server logged, so tests can assert nothing unexpected happened. */
  loggedErrors: unknown[];
}

export async function startTestServer(
  database: TestDatabase,
  options: { defaultPhoneRegion?: PhoneRegion } = {},
): Promise<TestServer> {
  const loggedErrors: unknown[] = [];
  const server = buildServer({
    sequelize: database.sequelize,
    defaultPhoneRegion: options.defaultPhoneRegion ?? "BR",
    log: (_message, error) => loggedErrors.push(error),
  });
  const address = await server.listen(0, "127.0.0.1");
  return { baseUrl: `http://127.0.0.1:${address.port}`, server, loggedErrors };
}

/** POSTs JSON to a path and returns the status and parsed body. */
export async function postJson(baseUrl: string, path: string, body: unknown): Promise<{ status: number; body: any }> {
  const response = await fetch(baseUrl + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : undefined };
}
