/**
 * `npx tsx bench/profile-top.ts <file.cpuprofile> [frames]`: the frames that
 * took the most CPU in a `node --cpu-prof` profile (self time, as a share of
 * all samples, idle included), and the same summed by package (or `src/`,
 * `node:` internals, `(garbage collector)`, …). `npm run bench -- --cpu-prof
 * <dir>` writes one profile per service process.
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, count = "10"] = process.argv.slice(2);
if (!file) throw new Error("usage: bench/profile-top.ts <file.cpuprofile> [frames]");
const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;

// Self time per node: each sample's time delta goes to the node it hit.
const selfUs = new Map<number, number>();
profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, profile.timeDeltas[i] ?? 0)));
const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);

const byFrame = new Map<string, number>();
const byPlace = new Map<string, number>();
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0;
  if (us === 0) continue;
  const { functionName, url, lineNumber } = node.callFrame;
  const where = place(url);
  const frame = `${functionName || "(anonymous)"} ${url ? `${shortUrl(url)}:${lineNumber + 1}` : ""}`.trim();
  byFrame.set(frame, (byFrame.get(frame) ?? 0) + us);
  byPlace.set(where, (byPlace.get(where) ?? 0) + us);
}

const share = (us: number) => `${((us / totalUs) * 100).toFixed(1).padStart(5)}%`;
console.log(`${file}: ${(totalUs / 1e6).toFixed(1)} s sampled`);
console.log("\nself time by frame:");
for (const [frame, us] of [...byFrame].sort((a, b) => b[1] - a[1]).slice(0, Number(count))) console.log(`${share(us)}  ${frame}`);
console.log("\nself time by package:");
for (const [where, us] of [...byPlace].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`${share(us)}  ${where}`);

/** `node_modules/@scope/name/…` -> `@scope/name`; our sources -> `src/…` folder; Node's own -> `node:`; no URL -> `(native)`. */
function place(url: string): string {
  if (!url) return "(native: gc, idle, program, syscalls)";
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (modules) return modules[1];
  if (url.startsWith("node:")) return "node: internals";
  const ours = /\/dist\/(src\/[^/]+|gen)\//.exec(url);
  return ours ? ours[1] : url;
}

function shortUrl(url: string): string {
  const modules = url.lastIndexOf("node_modules/");
  if (modules >= 0) return url.slice(modules + "node_modules/".length);
  const dist = url.indexOf("/dist/");
  return dist >= 0 ? url.slice(dist + 1) : url;
}
