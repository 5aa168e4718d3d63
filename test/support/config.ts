import { ConfigError, loadConfig } from "../../src/config.js";

/** The problems `loadConfig` names for an environment; empty when it accepts it. */
export function configProblems(env: NodeJS.ProcessEnv): string[] {
  try {
    loadConfig(env);
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
}
