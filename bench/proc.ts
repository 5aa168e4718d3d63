/**
 * CPU and memory of another process tree, read from /proc (Linux): the
 * server runs in its own process, so process.cpuUsage() cannot see it.
 */
import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import { execFileSync } from "node:child_process";

const TICKS_PER_SECOND = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;

/**
 * A process and all its descendants that run `command` (with WORKERS=N: the
 * primary and its workers, without helpers such as tsx's esbuild service).
 */
export function processTree(root: number, command = "node"): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (!stat) continue;
    const list = children.get(stat.ppid) ?? [];
    list.push(Number(entry));
    children.set(stat.ppid, list);
  }
  const tree: number[] = [];
  const walk = (pid: number) => {
    if (commandOf(pid) === command) tree.push(pid);
    for (const child of children.get(pid) ?? []) walk(child);
  };
  walk(root);
  return tree;
}

function commandOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return undefined;
  }
}

function readStat(pid: number): { ppid: number; cpuMs: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name is in parentheses and may hold spaces: split after it.
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    // Fields 4 (ppid), 14 (utime) and 15 (stime) of proc(5), counted from the state field (3).
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return { ppid: Number(fields[1]), cpuMs: ((utime + stime) * 1000) / TICKS_PER_SECOND };
  } catch {
    return undefined;
  }
}

function readStatusKb(pid: number, key: "VmRSS" | "VmHWM"): number {
  try {
    const match = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/** Summed over the given processes: CPU time used so far, resident memory now, and peak resident memory. */
export function sample(pids: number[]): { cpuMs: number; rssMb: number; hwmMb: number } {
  let cpuMs = 0;
  let rssKb = 0;
  let hwmKb = 0;
  for (const pid of pids) {
    cpuMs += readStat(pid)?.cpuMs ?? 0;
    rssKb += readStatusKb(pid, "VmRSS");
    hwmKb += readStatusKb(pid, "VmHWM");
  }
  return { cpuMs, rssMb: rssKb / 1024, hwmMb: hwmKb / 1024 };
}

/** Whole-machine CPU: busy and total ticks so far, to tell how much else ran during a scenario. */
export function machineCpu(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
  const ticks = line.split(/\s+/).slice(1).map(Number);
  const idle = ticks[3] + (ticks[4] ?? 0);
  const total = ticks.reduce((sum, t) => sum + (Number.isFinite(t) ? t : 0), 0);
  return { busy: total - idle, total };
}

/**
 * The TCP ports (IPv4 and IPv6) that any of these processes listens on, read
 * from /proc: how the bench finds a server started on port 0 without relying
 * on what it logs.
 */
export function listeningPorts(pids: number[]): number[] {
  const inodes = new Set<string>();
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (match) inodes.add(match[1]);
      } catch {
        // Closed while we looked.
      }
    }
  }
  const ports = new Set<number>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      // local_address is hex "ADDR:PORT"; state 0A is LISTEN; field 9 is the inode.
      if (fields.length > 9 && fields[3] === "0A" && inodes.has(fields[9])) ports.add(parseInt(fields[1].split(":")[1], 16));
    }
  }
  return [...ports];
}

/** CPU time used so far by each of the given processes that still runs. */
export function cpuByPid(pids: number[]): Map<number, number> {
  const cpu = new Map<number, number>();
  for (const pid of pids) {
    const stat = readStat(pid);
    if (stat) cpu.set(pid, stat.cpuMs);
  }
  return cpu;
}

/**
 * CPU used between two readings by the processes seen in both: one that
 * ended in between (an idle pooled connection closed, say) drops out
 * instead of subtracting its whole life's CPU.
 */
export function cpuBetween(first: Map<number, number>, last: Map<number, number>): number {
  let ms = 0;
  for (const [pid, end] of last) {
    const start = first.get(pid);
    if (start !== undefined) ms += end - start;
  }
  return ms;
}
