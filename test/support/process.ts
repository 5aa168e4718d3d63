import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "../..");
const tsx = path.join(root, "node_modules/.bin/tsx");

/** Runs one of the project's scripts (e.g. `src/cli/migrate.ts`) to completion and returns its exit code and output. */
export function runScript(script: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(tsx, [script, ...args], { cwd: root, env: { ...process.env, ...env } });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output }));
  });
}

/** Starts `src/main.ts` and resolves once it says where it listens. */
export function startService(env: Record<string, string>): Promise<{ child: ChildProcess; baseUrl: string; output: () => string }> {
  return new Promise((resolve, reject) => {
    // One node process (the tsx CLI would put a parent in front of it), so
    // signals and SIGKILL reach the server itself.
    const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], { cwd: root, env: { ...process.env, PORT: "0", ...env } });
    let output = "";
    const onData = (chunk: Buffer) => {
      output += chunk;
      const match = /listening on (https?:\/\/\S+)/.exec(output);
      if (match) resolve({ child, baseUrl: match[1], output: () => output });
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`service exited with ${code}:\n${output}`)));
  });
}
