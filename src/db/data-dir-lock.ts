import { randomBytes } from "node:crypto";
import { linkSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import path from "node:path";

/** The file in the embedded data folder that names the process owning it. */
export const LOCK_FILE_NAME = "aurora-owner.lock";

/** Another process owns the data folder: opening it too would lose commits. */
export class DataDirInUseError extends Error {}

interface Owner {
  pid: number;
  host: string;
  startedAt: string;
  /** Tells this lock from a later one that happens to carry the same pid. */
  nonce: string;
}

/** Folders this process holds, so that a second open in the same process is refused too. */
const heldHere = new Set<string>();

/**
 * Makes this process the one owner of an embedded data folder. PGlite keeps
 * its own copy of the database's state in memory and writes it back to the
 * files: two processes on one folder each overwrite the other's commits, so
 * the second one must not open it at all.
 *
 * The lock file is created whole and atomically (written aside, then
 * hard-linked into place, which fails if it exists). A lock whose process is
 * gone (killed with `kill -9`, say) is stale and taken over; one whose pid is
 * alive on this host, or that was written on another host (whose processes
 * this one cannot see), is respected. Returns the function that releases it.
 */
export function lockDataDir(dataDir: string): () => void {
  const dir = path.resolve(dataDir);
  const file = path.join(dir, LOCK_FILE_NAME);
  const me: Owner = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), nonce: randomBytes(8).toString("hex") };
  if (heldHere.has(dir)) throw new DataDirInUseError(`the embedded database in ${dir} is already open in this process (${process.pid})`);

  const aside = `${file}.${process.pid}.${me.nonce}`;
  writeFileSync(aside, `${JSON.stringify(me)}\n`);
  try {
    // A few rounds: a stale lock taken over by another starter at the same moment sends us round again.
    for (let round = 0; round < 5; round++) {
      try {
        linkSync(aside, file);
        heldHere.add(dir);
        return () => release(dir, file, me);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const owner = readOwner(file);
      if (owner === "gone") continue;
      if (isAlive(owner)) throw inUse(dir, owner, file);
      removeStale(file, owner);
    }
    throw new DataDirInUseError(`could not take ${file} over: other processes keep replacing it`);
  } finally {
    unlinkSync(aside);
  }
}

function release(dir: string, file: string, me: Owner): void {
  heldHere.delete(dir);
  const owner = readOwner(file);
  if (owner !== "gone" && owner.nonce === me.nonce) unlinkSync(file);
}

function readOwner(file: string): Owner | "gone" {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Owner;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return "gone";
    // Unreadable content was never written by a live owner (the file is created whole): stale.
    return { pid: 0, host: hostname(), startedAt: "", nonce: "" };
  }
}

/** Whether the owner may still run. A pid on another host cannot be checked, so it counts as alive. */
function isAlive(owner: Owner): boolean {
  if (owner.host !== hostname()) return true;
  // Our own pid in a lock we do not hold: a restart reused it (pid 1 in a container, say).
  if (!Number.isInteger(owner.pid) || owner.pid <= 0 || owner.pid === process.pid) return false;
  try {
    process.kill(owner.pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to another user.
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Removes a stale lock without removing a fresh one that another starter
 * put in its place meanwhile: the file is first moved aside (atomic), then
 * deleted only if it is the lock judged stale, and put back otherwise.
 */
function removeStale(file: string, stale: Owner): void {
  const moved = `${file}.stale.${process.pid}`;
  try {
    renameSync(file, moved);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  const owner = readOwner(moved);
  if (owner !== "gone" && owner.nonce !== stale.nonce) {
    try {
      linkSync(moved, file);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
  }
  unlinkSync(moved);
}

function inUse(dir: string, owner: Owner, file: string): DataDirInUseError {
  const who = owner.host === hostname() ? `process ${owner.pid}` : `process ${owner.pid} on host ${owner.host}`;
  return new DataDirInUseError(
    `the embedded database in ${dir} is in use by ${who} (since ${owner.startedAt}). ` +
      "Only one process may open it: stop that one first, or give this one another EMBEDDED_DATA_DIR, " +
      `or set DATABASE_URL to use PostgreSQL. If no such process runs, delete ${file}.`,
  );
}
