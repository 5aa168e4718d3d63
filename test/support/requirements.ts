import { spawnSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import path from "node:path";

/**
 * Programs from outside npm that some tests drive. On a machine without one,
 * its tests are skipped (never passed) and the run prints one line saying what
 * they need; with AURORA_TEST_REQUIRE_ALL=1 (set by .ci/run) a missing program
 * fails the run instead, so CI always runs everything.
 */
export const REQUIRE_ALL_VARIABLE = "AURORA_TEST_REQUIRE_ALL";

export type ProgramName = "nats-server" | "chromium" | "openssl" | "curl" | "pg_dump";

interface Program {
  /** The vitest project whose tests need it. */
  project: "integration" | "system";
  /** Which tests are skipped without it. */
  tests: string;
  /** How to get it. */
  install: string;
  /** The command to run, or undefined when none is installed. */
  locate(): string | undefined;
}

/** Tests that need an outside program, by program. */
export const PROGRAMS: Record<ProgramName, Program> = {
  "nats-server": {
    project: "system",
    tests: "the relay's tests (test/relay*.test.ts, test/consumer-example.test.ts)",
    install: "nats-server 2.9 or later with JetStream (Debian: apt-get install nats-server; or set NATS_SERVER_BIN); no npm package ships it",
    locate: () => (process.env.NATS_SERVER_BIN ? runs(process.env.NATS_SERVER_BIN) : runs(onPath("nats-server") ?? "/usr/sbin/nats-server")),
  },
  chromium: {
    project: "system",
    tests: "the browser test (test/cors.test.ts, a page on another origin)",
    install: "headless Chromium on the PATH as chromium, chromium-browser or google-chrome (Debian: apt-get install chromium)",
    locate: () => ["chromium", "chromium-browser", "google-chrome"].map(onPath).find((command) => command && runs(command)),
  },
  openssl: {
    project: "integration",
    tests: "the TLS tests (test/tls.test.ts, the TLS cases of test/hardening.test.ts), whose certificates it makes",
    install: "the openssl command line tool (Debian: apt-get install openssl)",
    locate: () => runs(onPath("openssl"), "version"),
  },
  curl: {
    project: "integration",
    tests: "the curl cases of test/tls.test.ts",
    install: "curl with HTTP/2 (Debian: apt-get install curl)",
    locate: () => runs(onPath("curl")),
  },
  pg_dump: {
    project: "integration",
    tests: "the logical dump check of an erasure (test/erasure.test.ts)",
    install: "PostgreSQL's pg_dump (Debian: apt-get install postgresql-client)",
    locate: () => runs(onPath("pg_dump")),
  },
};

const located = new Map<ProgramName, string | undefined>();

/** The command that runs an outside program, or undefined when the machine has none. */
export function locateProgram(name: ProgramName): string | undefined {
  if (!located.has(name)) located.set(name, PROGRAMS[name].locate());
  return located.get(name);
}

/**
 * Whether the tests that need `name` should run: yes when it is installed,
 * and also when AURORA_TEST_REQUIRE_ALL is set (they then fail for want of
 * it rather than skip). Use as `describe.runIf(requires("nats-server"))`.
 */
export function requires(name: ProgramName): boolean {
  return locateProgram(name) !== undefined || requireAll();
}

/** Whether a missing program fails the run (CI) rather than skips its tests. */
export function requireAll(): boolean {
  return !["", "0", "false"].includes(process.env[REQUIRE_ALL_VARIABLE] ?? "");
}

/** The one line printed for a missing program: what is skipped (or, under AURORA_TEST_REQUIRE_ALL, cannot run) and what it needs. */
export function missingLine(name: ProgramName): string {
  const program = PROGRAMS[name];
  return `${requireAll() ? "CANNOT RUN" : "SKIPPED"} ${program.tests}: they need ${program.install}`;
}

function onPath(command: string): string | undefined {
  for (const folder of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!folder) continue;
    const candidate = path.join(folder, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

/** The command when it starts and exits 0 (with `--version`, or the given argument). */
function runs(command: string | undefined, argument = "--version"): string | undefined {
  if (!command) return undefined;
  const result = spawnSync(command, [argument], { stdio: "ignore", timeout: 20_000 });
  return result.status === 0 ? command : undefined;
}
