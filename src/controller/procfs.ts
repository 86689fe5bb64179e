// What /proc says about a live job: whether a pid runs, its process tree, and which
// regular files its processes hold open for writing.
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { childrenOf, hasExited } from '../sys/proc.js';

const O_ACCMODE = 0o3;
const O_WRONLY = 0o1;
const O_RDWR = 0o2;

/** True when pid exists and is not a zombie. */
export function isRunning(pid: number): boolean {
  return !hasExited(pid);
}

/** How often exitedWithin looks again. */
const EXIT_POLL_MS = 20;

/** Whether pid has ended (gone, or a zombie for its parent to reap) within ms. */
export async function exitedWithin(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (isRunning(pid)) {
    if (Date.now() > deadline) return false;
    await sleep(EXIT_POLL_MS);
  }
  return true;
}

/** The pid and all its descendants (threads' children included). */
export function processTree(root: number): number[] {
  const out: number[] = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift()!;
    out.push(pid);
    queue.push(...childrenOf(pid));
  }
  return out;
}

/** Absolute paths of the regular files any process of the tree has open for writing. */
export function filesOpenForWriting(pids: number[]): string[] {
  const paths = new Set<string>();
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const flagsLine = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
        if (!flagsLine) continue;
        const acc = parseInt(flagsLine[1]!, 8) & O_ACCMODE;
        if (acc !== O_WRONLY && acc !== O_RDWR) continue;
        const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
        // Unlinked files and anonymous objects (pipes, sockets, memfd) are not files to keep.
        if (!target.startsWith('/') || target.endsWith(' (deleted)')) continue;
        if (!statSync(`/proc/${pid}/fd/${fd}`).isFile()) continue;
        paths.add(target);
      } catch {
        // the fd was closed meanwhile
      }
    }
  }
  return [...paths].sort();
}
