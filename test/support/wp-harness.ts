// The harness of the write-protection tests (test/tracking-wp.test.ts): test/workloads/wpmem
// driven over fifos, an oracle that reads a stopped process's memory through /proc/PID/mem
// (independent of the tracker: /proc/PID/pagemap flags say which pages hold private data),
// and the judge of a scan against two snapshots. Soundness: every page whose content
// differs from the previous round is in the scan's `dirty` set or outside its `tracked`
// ranges (the caller hashes those).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants as fsc, openSync, readdirSync, readFileSync, readSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { containsAddress, formatRange, intersect, normalize, pageCount, subtract, union, type Range } from '../../src/tracking/page-ranges.js';
import { PAGE_SIZE } from '../../src/tracking/uffd-abi.js';
import {
  readVmas,
  WriteTracker,
  type ScanResult,
  type Vma,
} from '../../src/tracking/write-protect.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
export const WPMEM = join(ROOT, 'build', 'workloads', 'wpmem');

// ---- the workload --------------------------------------------------------------------

/** One line-command channel: a pipe pair to the main process, or two FIFOs to a child. */
class Channel {
  private readonly queue: string[] = [];
  private waiters: Array<(line: string) => void> = [];
  constructor(
    lines: Interface,
    private readonly send: (line: string) => void,
  ) {
    lines.on('line', (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.queue.push(l);
    });
  }
  async cmd(line: string): Promise<string[]> {
    const got = new Promise<string>((res) => {
      const queued = this.queue.shift();
      if (queued !== undefined) res(queued);
      else this.waiters.push(res);
    });
    this.send(line + '\n');
    const reply = await Promise.race([got, sleep(30_000).then(() => `err timeout waiting for "${line.slice(0, 60)}"`)]);
    if (!reply.startsWith('ok')) throw new Error(`workload: ${line.slice(0, 80)} -> ${reply}`);
    return reply.split(' ').slice(1);
  }
}

class Proc {
  constructor(
    readonly pid: number,
    readonly channel: Channel,
    private readonly cleanup: () => void,
  ) {}
  cmd(line: string): Promise<string[]> {
    return this.channel.cmd(line);
  }
  async alloc(pages: number, kind: 'any' | 'thp' | 'aligned' = 'any'): Promise<number> {
    const [hex] = await this.cmd(`${{ any: 'alloc', thp: 'allocthp', aligned: 'allocaligned' }[kind]} ${pages}`);
    return Number.parseInt(hex!, 16);
  }
  async stop(): Promise<void> {
    process.kill(this.pid, 'SIGSTOP');
    await waitStopped(this.pid);
  }
  cont(): void {
    process.kill(this.pid, 'SIGCONT');
  }
  kill(): void {
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    this.cleanup();
  }
}

export const started: Proc[] = [];

/** Where the harness makes its fifos and logs: set by the test file before any scenario (useScratchDir). */
let dir = '';
export function useScratchDir(path: string): void {
  dir = path;
}

export async function startWorkload(command: string[] = [WPMEM]): Promise<Proc & { child: ChildProcess }> {
  const child = spawn(command[0]!, command.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const channel = new Channel(lines, (l) => child.stdin!.write(l));
  const proc = Object.assign(new Proc(child.pid!, channel, () => lines.close()), { child });
  started.push(proc);
  // The first answer proves the workload has reached its command loop.
  await proc.cmd('read 0 0');
  return proc;
}

/** A command FIFO and a reply FIFO, opened so that neither open blocks. */
function fifoChannel(tag: string): { cmdPath: string; replyPath: string; channel: Channel; cleanup: () => void } {
  const cmdPath = join(dir, `cmd-${tag}`);
  const replyPath = join(dir, `reply-${tag}`);
  for (const f of [cmdPath, replyPath]) expect(spawnSync('mkfifo', [f]).status).toBe(0);
  // O_RDWR: opening a FIFO this way never blocks, whoever opens the other end when.
  const cmdFd = openSync(cmdPath, fsc.O_RDWR);
  const replyFd = openSync(replyPath, fsc.O_RDWR | fsc.O_NONBLOCK);
  const socket = new Socket({ fd: replyFd, readable: true, writable: false });
  const lines = createInterface({ input: socket });
  const channel = new Channel(lines, (l) => writeSync(cmdFd, l));
  let closed = false;
  return {
    cmdPath,
    replyPath,
    channel,
    cleanup: () => {
      if (closed) return;
      closed = true;
      lines.close();
      socket.destroy();
      closeSync(cmdFd);
    },
  };
}

/** Forks the workload's main process; the child answers on two FIFOs. */
export async function forkChild(parent: Proc): Promise<Proc> {
  const f = fifoChannel(`child-${started.length}`);
  const [pid] = await parent.cmd(`fork ${f.cmdPath} ${f.replyPath}`);
  const proc = new Proc(Number(pid), f.channel, f.cleanup);
  started.push(proc);
  await proc.cmd('read 0 0');
  return proc;
}

/**
 * The workload in its own session with stdin and stdout on FIFOs (CRIU dumps FIFOs by
 * path; Node's own stdio pipes are socketpairs, which CRIU calls external sockets).
 */
export async function startSessionWorkload(): Promise<Proc & { child: ChildProcess }> {
  const f = fifoChannel(`session-${started.length}`);
  const log = join(dir, `session-${started.length}.log`);
  const child = spawn('setsid', ['sh', '-c', `exec ${WPMEM} <${f.cmdPath} >${f.replyPath} 2>${log}`], { stdio: 'ignore' });
  const proc = Object.assign(new Proc(child.pid!, f.channel, f.cleanup), { child });
  started.push(proc);
  await proc.cmd('read 0 0');
  return proc;
}

export async function waitStopped(pid: number): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const states = readdirSync(`/proc/${pid}/task`).map((tid) => {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return stat[stat.lastIndexOf(')') + 2];
    });
    if (states.every((s) => s === 'T' || s === 't')) return;
    await sleep(2);
  }
  throw new Error(`process ${pid} did not stop`);
}

// ---- the oracle: what the memory holds -----------------------------------------------

/** Present-or-swapped pages that are not page-cache pages hold the process's own data. */
const PM_PRESENT = 1n << 63n;
const PM_FILE = 1n << 61n;
/** The pte is write-protected by userfaultfd. */
export const PM_UFFD_WP = 1n << 57n;
const SPECIAL = new Set(['[vdso]', '[vvar]', '[vvar_vclock]', '[uprobes]']);

interface Snapshot {
  vmas: Vma[];
  domain: Range[];
  /** Page address → content, for pages holding private data. */
  data: Map<number, Buffer>;
}

/** Everything CRIU would dump of the private mappings, read while the process is stopped. */
export function snapshot(pid: number): Snapshot {
  const vmas = readVmas(pid).filter((v) => v.perms[3] === 'p' && !SPECIAL.has(v.name));
  const data = new Map<number, Buffer>();
  const pagemap = openSync(`/proc/${pid}/pagemap`, 'r');
  const mem = openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const v of vmas) {
      const pages = (v.end - v.start) / PAGE_SIZE;
      const entries = Buffer.alloc(pages * 8);
      expect(readSync(pagemap, entries, 0, entries.length, (v.start / PAGE_SIZE) * 8)).toBe(entries.length);
      let run = -1;
      const flush = (upTo: number): void => {
        if (run < 0) return;
        const bytes = Buffer.alloc((upTo - run) * PAGE_SIZE);
        const got = readSync(mem, bytes, 0, bytes.length, v.start + run * PAGE_SIZE);
        expect(got).toBe(bytes.length);
        for (let i = run; i < upTo; i++) data.set(v.start + i * PAGE_SIZE, bytes.subarray((i - run) * PAGE_SIZE, (i - run + 1) * PAGE_SIZE));
        run = -1;
      };
      for (let i = 0; i < pages; i++) {
        const e = entries.readBigUInt64LE(i * 8);
        // With no swap active (asserted in beforeAll) a "swapped" entry is a pte marker
        // (uffd-wp or guard) or a transient migration entry: no data of its own.
        const privateData = (e & PM_PRESENT) !== 0n && (e & PM_FILE) === 0n;
        if (privateData && run < 0) run = i;
        if (!privateData) flush(i);
      }
      flush(pages);
    }
  } finally {
    closeSync(pagemap);
    closeSync(mem);
  }
  return { vmas, domain: normalize(vmas), data };
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

/** What a page reads as: its data, zeros (anonymous, unpopulated), the file's page, or nothing. */
export function contentOf(s: Snapshot, address: number): Buffer | string {
  const d = s.data.get(address);
  if (d) return d;
  const vma = s.vmas.find((v) => address >= v.start && address < v.end);
  if (!vma) return 'unmapped';
  return vma.name.startsWith('/') ? `file ${vma.name}` : ZERO_PAGE;
}

export function sameContent(a: Buffer | string, b: Buffer | string): boolean {
  if (typeof a === 'string' || typeof b === 'string') return a === b;
  return a.equals(b);
}

interface Verdict {
  changed: number;
  changedTracked: number;
  missed: number[];
  dirty: number;
  /** dirty pages whose content did not change */
  unchangedButDirty: number[];
}

/** Compares two snapshots with a scan taken at the second one; asserts the invariants. */
function judge(prev: Snapshot, cur: Snapshot, scan: ScanResult): Verdict {
  // Tracked pages must have been mapped at both moments.
  const trackedOutside = subtract(scan.tracked, intersect(prev.domain, cur.domain));
  expect(trackedOutside.map(formatRange), 'tracked pages that were not mapped at both scans').toEqual([]);
  expect(subtract(scan.dirty, scan.tracked), 'dirty is within tracked').toEqual([]);
  const verdict: Verdict = { changed: 0, changedTracked: 0, missed: [], dirty: pageCount(scan.dirty), unchangedButDirty: [] };
  for (const r of union(prev.domain, cur.domain)) {
    for (let a = r.start; a < r.end; a += PAGE_SIZE) {
      const changed = !sameContent(contentOf(prev, a), contentOf(cur, a));
      const tracked = containsAddress(scan.tracked, a);
      const dirty = containsAddress(scan.dirty, a);
      if (changed) {
        verdict.changed++;
        if (tracked) verdict.changedTracked++;
        if (tracked && !dirty) verdict.missed.push(a);
      } else if (dirty) {
        verdict.unchangedButDirty.push(a);
      }
    }
  }
  return verdict;
}

function hexPages(addresses: number[], limit = 10): string {
  return addresses
    .slice(0, limit)
    .map((a) => '0x' + a.toString(16))
    .join(' ');
}

/** A process under test: its tracker, and the snapshot of the previous round. */
export class Tracked {
  prev: Snapshot;
  rounds = 0;
  totals = { changed: 0, changedTracked: 0, missed: 0, dirty: 0, unchangedButDirty: 0 };
  constructor(
    readonly proc: Proc,
    readonly tracker: WriteTracker,
  ) {
    this.prev = snapshot(proc.pid);
  }

  static async arm(proc: Proc, whileStopped = true): Promise<Tracked> {
    if (whileStopped) await proc.stop();
    const tracker = WriteTracker.arm(proc.pid);
    const t = new Tracked(proc, tracker);
    if (whileStopped) proc.cont();
    return t;
  }

  /** Stops the process, snapshots, scans, judges, and lets it go on. */
  async round(label: string, options: { registerNew?: boolean; frozenBy?: string } = {}): Promise<{ scan: ScanResult; verdict: Verdict; added: Range[] }> {
    // frozenBy: someone else (CRIU) holds the process stopped; do not stop or resume it.
    if (!options.frozenBy) await this.proc.stop();
    try {
      const cur = snapshot(this.proc.pid);
      // The order a checkpoint uses in its freeze: register new VMAs, then scan.
      const added = options.registerNew ? this.tracker.registerNew() : [];
      const scan = this.tracker.scan();
      expect(scan.sequence).toBe(this.rounds + 1);
      const verdict = judge(this.prev, cur, scan);
      this.rounds++;
      this.totals.changed += verdict.changed;
      this.totals.changedTracked += verdict.changedTracked;
      this.totals.missed += verdict.missed.length;
      this.totals.dirty += verdict.dirty;
      this.totals.unchangedButDirty += verdict.unchangedButDirty.length;
      expect(verdict.missed.length, `${label}: changed pages the scan calls clean: ${hexPages(verdict.missed)}`).toBe(0);
      this.prev = cur;
      return { scan, verdict, added };
    } finally {
      if (!options.frozenBy) this.proc.cont();
    }
  }
}

export function pagesOf(base: number, indices: number[]): Range[] {
  return normalize(indices.map((i) => ({ start: base + i * PAGE_SIZE, end: base + (i + 1) * PAGE_SIZE })));
}

export function region(base: number, pages: number): Range[] {
  return [{ start: base, end: base + pages * PAGE_SIZE }];
}

export function pickPages(rand: () => number, pages: number, count: number): number[] {
  const set = new Set<number>();
  while (set.size < Math.min(count, pages)) set.add(Math.floor(rand() * pages));
  return [...set].sort((a, b) => a - b);
}
