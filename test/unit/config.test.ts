import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { environment, loadConfig } from "../../src/config.js";
import { configProblems } from "../support/config.js";

const root = path.resolve(import.meta.dirname, "../..");

/** The `NAME=value` lines of .env.example, as an environment. */
async function envExample(): Promise<Record<string, string>> {
  const text = await readFile(path.join(root, ".env.example"), "utf8");
  return Object.fromEntries(
    text
      .split("\n")
      .filter((line) => /^[A-Z][A-Z0-9_]*=/.test(line))
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
  );
}

/** The names loadConfig looks up, found by handing it an environment that records every lookup. */
function variablesRead(): string[] {
  const read = new Set<string>();
  const env = new Proxy({}, {
    get(_target, name) {
      if (typeof name === "string") read.add(name);
      return undefined;
    },
  });
  loadConfig(env);
  return [...read].sort();
}

describe("configuration", () => {
  it(".env.example documents exactly the variables of the schema, and the service reads no other", async () => {
    const declared = Object.keys(environment.shape).sort();
    expect(Object.keys(await envExample()).sort()).toEqual(declared);
    expect(variablesRead()).toEqual(declared);
  });

  it(".env.example gives the defaults the service really uses", async () => {
    expect(loadConfig(await envExample())).toEqual(loadConfig({}));
  });

  it("reads the log settings", () => {
    expect(loadConfig({ LOG_LEVEL: "debug", LOG_FORMAT: "json" })).toMatchObject({ logLevel: "debug", logFormat: "json" });
  });

  it("lists every bad variable at once", () => {
    expect(configProblems({ PORT: "-1", LOG_LEVEL: "loud", LOG_FORMAT: "xml", DATABASE_URL: "mysql://x", DATABASE_POOL_MAX: "0" })).toEqual([
      'PORT must be an integer from 0 to 65535, got "-1"',
      "DATABASE_URL must start with postgres:// or postgresql://",
      'DATABASE_POOL_MAX must be an integer from 1 to 1000, got "0"',
      'LOG_LEVEL must be one of trace, debug, info, warn, error, fatal, silent, got "loud"',
      'LOG_FORMAT must be one of auto, json, pretty, got "xml"',
    ]);
  });

  it("checks the rules across variables even when a single variable is bad", () => {
    expect(configProblems({ PORT: "http", DATABASE_URL: "", WORKERS: "2", TLS_KEY_FILE: "/nonexistent/key.pem", TLS_CLIENT_CA_FILE: path.join(root, "package.json") })).toEqual([
      'PORT must be an integer from 0 to 65535, got "http"',
      "TLS_KEY_FILE names a file that cannot be read (ENOENT): /nonexistent/key.pem",
      "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE",
      "WORKERS above 1 needs DATABASE_URL: the embedded database lives inside one process and cannot be shared",
    ]);
  });

  it("refuses WORKERS that is not a positive integer, or above 1 with the embedded database", () => {
    expect(configProblems({ WORKERS: "0" })).toEqual([expect.stringContaining("WORKERS must be an integer from 1 to 64")]);
    expect(configProblems({ DATABASE_URL: "", WORKERS: "2" })).toEqual([expect.stringContaining("WORKERS above 1 needs DATABASE_URL")]);
    expect(configProblems({ DATABASE_URL: "postgres://db/aurora", WORKERS: "2" })).toEqual([]);
  });

  it("reads CORS_ALLOWED_ORIGINS as browser origins, none by default", () => {
    expect(loadConfig({}).corsAllowedOrigins).toEqual([]);
    expect(loadConfig({ CORS_ALLOWED_ORIGINS: " https://app.example.com, http://localhost:5173 " }).corsAllowedOrigins).toEqual([
      "https://app.example.com",
      "http://localhost:5173",
    ]);
    expect(loadConfig({ CORS_ALLOWED_ORIGINS: "*" }).corsAllowedOrigins).toEqual(["*"]);
    expect(() => loadConfig({ CORS_ALLOWED_ORIGINS: "https://app.example.com/,app.example.com" })).toThrow(
      /CORS_ALLOWED_ORIGINS must list origins .* got "https:\/\/app\.example\.com\/"[\s\S]*got "app\.example\.com"/,
    );
  });

  it("serves Evolution's and Mailgun's routes only with their keys, from variables or files, and never prints a key", async () => {
    expect(loadConfig({}).evolution).toBeUndefined();
    expect(loadConfig({}).email).toEqual({ maxBytes: 10 * 1024 * 1024, mailgunSigningKeys: [] });
    const keyFile = path.join(await mkdtemp(path.join(os.tmpdir(), "aurora-keys-")), "mailgun");
    await writeFile(keyFile, "# rotating\nkey-current-0123456789abcdef\nkey-previous-0123456789abcde\n");
    const config = loadConfig({ EVOLUTION_JWT_KEYS: "evolution-key-0123456789", MAILGUN_SIGNING_KEYS_FILE: keyFile });
    expect(config.evolution).toEqual({ jwtKeys: ["evolution-key-0123456789"], maxBodyBytes: 8 * 1024 * 1024 });
    expect(config.email.mailgunSigningKeys).toEqual(["key-current-0123456789abcdef", "key-previous-0123456789abcde"]);
    const problems = configProblems({ EVOLUTION_JWT_KEYS: "short-secret", MAILGUN_SIGNING_KEYS: "another short" });
    expect(problems).toEqual([
      "EVOLUTION_JWT_KEYS entry #1 must be at least 16 characters with no spaces",
      "MAILGUN_SIGNING_KEYS entry #1 must be at least 16 characters with no spaces",
    ]);
    expect(problems.join()).not.toContain("short-secret");
  });

  it("reads PRIVACY_API_TOKENS with optional labels, only beside ingest tokens, never shared with another scope", () => {
    const ingest = "ingest-token-0123456789";
    expect(loadConfig({}).privacyTokens).toEqual([]);
    expect(loadConfig({ INGEST_API_TOKENS: ingest, PRIVACY_API_TOKENS: "dpo:privacy-token-0123456789, privacy-token-abcdefghij" }).privacyTokens).toEqual([
      { label: "dpo", token: "privacy-token-0123456789" },
      { token: "privacy-token-abcdefghij" },
    ]);
    expect(configProblems({ PRIVACY_API_TOKENS: "privacy-token-0123456789" })).toEqual([expect.stringContaining("PRIVACY_API_TOKENS needs INGEST_API_TOKENS")]);
    expect(configProblems({ INGEST_API_TOKENS: ingest, PRIVACY_API_TOKENS: `dpo:${ingest}` })).toEqual([
      "PRIVACY_API_TOKENS entry #1 is also an ingest or feed token: a privacy token may do nothing else",
    ]);
    expect(configProblems({ INGEST_API_TOKENS: ingest, PRIVACY_API_TOKENS: "a-very-long-label:short" })).toEqual([
      "PRIVACY_API_TOKENS entry #1 must be at least 16 characters after its label",
    ]);
  });
});
