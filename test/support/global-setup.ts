import type { TestProject } from "vitest/node";
import { locateProgram, missingLine, PROGRAMS, REQUIRE_ALL_VARIABLE, requireAll, type ProgramName } from "./requirements.js";

/**
 * Once per project and run, before any test file: prints one line for each
 * outside program this project's tests need and the machine lacks (those
 * tests are skipped), or fails the run when AURORA_TEST_REQUIRE_ALL is set.
 */
export default function setup(project: TestProject): void {
  const missing = (Object.keys(PROGRAMS) as ProgramName[]).filter((name) => PROGRAMS[name].project === project.name && !locateProgram(name));
  if (missing.length === 0) return;
  const lines = missing.map(missingLine);
  if (requireAll()) {
    throw new Error(`${REQUIRE_ALL_VARIABLE} is set, so no test may be skipped for a missing program:\n${lines.join("\n")}`);
  }
  for (const line of lines) console.log(line);
}
