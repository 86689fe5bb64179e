// The eBPF job tracker against a real process (build/workloads/fdplay) that does one
// thing per command: each test drains, runs commands, drains again, and checks that the
// second report holds exactly the events those commands cause.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BpfObject, BpfObjectOpenError } from '../src/tracking/libbpf.js';
import { TrackingContractError, TrackingObjectMissingError, TrackingStateError } from '../src/tracking/bpf/errors.js';
import { checkContract } from '../src/tracking/bpf/events.js';
import { JobTracker, type ProcessActivity, type TrackingReport } from '../src/tracking/bpf/job-tracker.js';
import { statDevOf } from '../src/tracking/bpf/procfs.js';

const ROOT = resolve(import.meta.dirname, '..');
const FDPLAY = join(ROOT, 'build', 'workloads', 'fdplay');
const PAGE = 4096;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFSOCK = 0o140000;
const S_IFIFO = 0o010000;
const MADV_DONTNEED = 4;
const PROT_READ = 1;

/** fdplay, driven one command at a time over its stdin/stdout. */
class Fdplay {
  private buffered = '';
  private waiting: ((line: string) => void) | null = null;

  private constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      this.buffered += chunk;
      this.deliver();
    });
  }

  static async start(): Promise<Fdplay> {
    const workload = new Fdplay(spawn(FDPLAY, [], { stdio: ['pipe', 'pipe', 'pipe'] }));
    expect(await workload.nextLine()).toBe('ready');
    return workload;
  }

  get pid(): number {
    return this.child.pid!;
  }

  private deliver(): void {
    const newline = this.buffered.indexOf('\n');
    if (newline < 0 || !this.waiting) return;
    const line = this.buffered.slice(0, newline);
    this.buffered = this.buffered.slice(newline + 1);
    const waiting = this.waiting;
    this.waiting = null;
    waiting(line);
  }

  private nextLine(): Promise<string> {
    return new Promise((resolveLine) => {
      this.waiting = resolveLine;
      this.deliver();
    });
  }

  /** Runs one command; its "ok k=v …" answer as a record of numbers. */
  async run(command: string): Promise<Record<string, number>> {
    this.child.stdin.write(`${command}\n`);
    const line = await this.nextLine();
    if (!line.startsWith('ok')) throw new Error(`fdplay ${command}: ${line}`);
    const values: Record<string, number> = {};
    for (const field of line.split(' ').slice(1)) {
      const [key, value] = field.split('=') as [string, string];
      values[key] = Number(value.split(',')[0]);
    }
    return values;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolveExit) => this.child.once('exit', resolveExit));
    this.child.stdin.end('exit\n');
    await exited;
  }
}

let tracker: JobTracker;
let workload: Fdplay;
const scratch = mkdtempSync('/tmp/crinc-tracking-bpf-');

beforeAll(() => {
  tracker = JobTracker.open();
});

afterAll(() => {
  tracker.close();
  rmSync(scratch, { recursive: true, force: true });
});

async function startTracked(): Promise<Fdplay> {
  workload = await Fdplay.start();
  expect(tracker.track(workload.pid)).toEqual([workload.pid]);
  return workload;
}

afterEach(async () => {
  if (tracker.session !== null) tracker.untrack();
  await workload?.stop();
});

/** Drains, runs the commands, drains again: the replies and the second report. */
async function act(...commands: string[]): Promise<{ replies: Record<string, number>[]; report: TrackingReport; activity: ProcessActivity }> {
  tracker.drain();
  const replies: Record<string, number>[] = [];
  for (const command of commands) replies.push(await workload.run(command));
  const report = tracker.drain();
  const activity = report.processes.get(workload.pid);
  if (!activity) throw new Error(`no activity of ${workload.pid} in the report of ${commands.join('; ')}`);
  return { replies, report, activity };
}

function pagesIn(activity: ProcessActivity, start: number, pages: number): number[] {
  return [...activity.writtenPages.addresses].filter((address) => address >= start && address < start + pages * PAGE);
}

function pageRange(start: number, pages: number): number[] {
  return Array.from({ length: pages }, (_, i) => start + i * PAGE);
}

describe('layout and write faults', () => {
  it('reports mmap, written pages, madvise, mprotect, mremap and munmap exactly', async () => {
    await startTracked();

    const mapped = await act('mmap 4');
    const region = mapped.replies[0]!.addr!;
    expect(mapped.activity.layoutChanges).toMatchObject([{ op: 'mmap', syscall: 'mmap', start: region, length: 4 * PAGE, fd: -1 }]);
    expect(mapped.activity.layoutChanges).toHaveLength(1);
    expect(mapped.activity.changedRanges).toEqual([{ start: region, end: region + 4 * PAGE }]);
    expect(mapped.activity.fdChanges).toEqual([]);
    expect(mapped.report.complete).toBe(true);

    const touched = await act(`touch ${region} 4`);
    expect(touched.activity.layoutChanges).toEqual([]);
    expect(touched.activity.changedRanges).toEqual([]);
    expect(pagesIn(touched.activity, region, 4)).toEqual(pageRange(region, 4));
    expect(touched.activity.userWriteFaults).toBeGreaterThanOrEqual(4);
    expect(touched.activity.writtenPagesComplete).toBe(true);

    const zapped = await act(`madvise ${region} 2`);
    expect(zapped.activity.layoutChanges).toMatchObject([{ op: 'madvise', start: region, length: 2 * PAGE, detail: MADV_DONTNEED }]);
    expect(zapped.activity.changedRanges).toEqual([{ start: region, end: region + 2 * PAGE }]);

    // Zapped pages fault again; the others are still mapped writable and do not.
    const rewritten = await act(`touch ${region} 4`);
    expect(pagesIn(rewritten.activity, region, 4)).toEqual(pageRange(region, 2));

    const kernelWritten = await act(`read-zero ${region} 4`);
    expect(kernelWritten.activity.layoutChanges).toEqual([]);
    expect(kernelWritten.activity.fdChanges.map((change) => change.op)).toEqual(['opened', 'closed']);
    expect(kernelWritten.activity.fdChanges[0]).toMatchObject({ path: '/dev/zero' });

    const protectedRange = await act(`mprotect ${region} 4`);
    expect(protectedRange.activity.layoutChanges).toMatchObject([{ op: 'mprotect', start: region, length: 4 * PAGE, detail: PROT_READ }]);

    const moved = await act(`mremap ${region} 4 8`);
    const newRegion = moved.replies[0]!.addr!;
    expect(moved.activity.layoutChanges).toMatchObject([
      { op: 'mremap', start: newRegion, length: 8 * PAGE, oldStart: region, oldLength: 4 * PAGE },
    ]);
    expect(moved.activity.changedRanges).toEqual(
      [{ start: region, end: region + 4 * PAGE }, { start: newRegion, end: newRegion + 8 * PAGE }].sort((a, b) => a.start - b.start),
    );

    const unmapped = await act(`munmap ${newRegion} 8`);
    expect(unmapped.activity.layoutChanges).toMatchObject([{ op: 'munmap', start: newRegion, length: 8 * PAGE }]);
    expect(unmapped.report.complete).toBe(true);
  });

  it('counts the kernel writing into fresh pages for the process (read into them)', async () => {
    await startTracked();
    const region = (await workload.run('mmap 8')).addr!;
    const { activity } = await act(`read-zero ${region} 8`);
    expect(activity.kernelWriteFaults).toBeGreaterThanOrEqual(8);
    expect(pagesIn(activity, region, 8)).toEqual(pageRange(region, 8));
  });

  it('reports the program break moving up and down', async () => {
    await startTracked();
    const grown = await act('brk 4');
    const { old: oldBreak, new: newBreak } = grown.replies[0]!;
    expect(newBreak! - oldBreak!).toBe(4 * PAGE);
    expect(grown.activity.layoutChanges).toMatchObject([{ op: 'brk', start: oldBreak, length: 4 * PAGE, detail: 1 }]);

    const shrunk = await act('brk -4');
    expect(shrunk.activity.layoutChanges).toMatchObject([{ op: 'brk', start: oldBreak, length: 4 * PAGE, detail: 2 }]);
  });
});

describe('descriptors', () => {
  it('reports exactly the fds opened, duplicated and closed', async () => {
    await startTracked();
    const path = join(scratch, 'data');

    const opened = await act(`open ${path}`);
    const fd = opened.replies[0]!.fd!;
    const stat = statSync(path, { bigint: true });
    expect(opened.activity.fdChanges).toHaveLength(1);
    expect(opened.activity.fdChanges[0]).toMatchObject({ op: 'opened', syscall: 'openat', fd, otherFd: -100, path });
    const file = opened.activity.fdChanges[0]!.file!;
    expect(file.mode & S_IFMT).toBe(S_IFREG);
    expect(BigInt(file.ino)).toBe(stat.ino);
    expect(statDevOf(file.dev)).toBe(stat.dev);
    expect(opened.activity.fdsChanged).toEqual([fd]);
    expect(opened.activity.layoutChanges).toEqual([]);
    expect(opened.activity.fileChanges).toEqual([]);

    const duplicated = await act(`dup ${fd}`, `dup2 ${fd} 50`, `fcntl-dupfd ${fd} 60`);
    const copy = duplicated.replies[0]!.fd!;
    expect(duplicated.replies[2]!.fd).toBe(60);
    expect(duplicated.activity.fdChanges).toMatchObject([
      { op: 'duplicated', syscall: 'dup', fd: copy, otherFd: fd },
      { op: 'duplicated', syscall: 'dup2', fd: 50, otherFd: fd },
      { op: 'duplicated', syscall: 'fcntl', fd: 60, otherFd: fd },
    ]);
    expect(duplicated.activity.fdChanges).toHaveLength(3);
    expect(duplicated.activity.fdsChanged).toEqual([copy, 50, 60].sort((a, b) => a - b));

    const closed = await act(`close ${copy}`, 'close-range 50 60');
    expect(closed.activity.fdChanges).toMatchObject([
      { op: 'closed', syscall: 'close', fd: copy },
      { op: 'range-closed', syscall: 'close_range', fd: 50, otherFd: 60 },
    ]);
    expect(closed.activity.fdChanges).toHaveLength(2);
    expect(closed.activity.fdsChanged).toEqual([copy]);
    expect(closed.activity.fdRangesClosed).toEqual([{ first: 50, last: 60, cloexecOnly: false }]);
    expect(closed.report.complete).toBe(true);
  });

  it('reports sockets, socket pairs, pipes, eventfds and memfds with their fds', async () => {
    await startTracked();
    const { replies, activity } = await act('socket', 'socketpair', 'pipe', 'eventfd', 'memfd crinc-test');
    const [socket, pair, pipe, eventfd, memfd] = replies as [Record<string, number>, Record<string, number>, Record<string, number>, Record<string, number>, Record<string, number>];
    expect(activity.fdChanges).toMatchObject([
      { op: 'opened', syscall: 'socket', fd: socket.fd },
      { op: 'opened-pair', syscall: 'socketpair', fd: pair.fd, otherFd: pair.fd2 },
      { op: 'opened-pair', fd: pipe.fd, otherFd: pipe.fd2 },
      { op: 'opened', syscall: 'eventfd2', fd: eventfd.fd },
      { op: 'opened', syscall: 'memfd_create', fd: memfd.fd, path: 'crinc-test' },
    ]);
    expect(activity.fdChanges).toHaveLength(5);
    expect(['pipe', 'pipe2']).toContain(activity.fdChanges[2]!.syscall);
    expect(activity.fdChanges[0]!.file!.mode & S_IFMT).toBe(S_IFSOCK);
    expect(activity.fdChanges[2]!.file!.mode & S_IFMT).toBe(S_IFIFO);
    expect(activity.fdsChanged).toEqual([socket.fd!, pair.fd!, pair.fd2!, pipe.fd!, pipe.fd2!, eventfd.fd!, memfd.fd!].sort((a, b) => a - b));
  });

  it('reports an fd received over a unix socket (SCM_RIGHTS)', async () => {
    await startTracked();
    const fd = (await workload.run(`open ${join(scratch, 'passed')}`)).fd!;
    const { activity } = await act(`pass-fd ${fd}`);
    expect(activity.fdChanges.map((change) => change.op)).toEqual(['opened-pair', 'received', 'closed', 'closed']);
    const [pair, received, firstClosed, secondClosed] = activity.fdChanges;
    expect(received!.syscall).toBe('recvmsg');
    expect(received!.file!.ino).toBe(Number(statSync(join(scratch, 'passed')).ino));
    expect([firstClosed!.fd, secondClosed!.fd]).toEqual([pair!.fd, pair!.otherFd]);
    expect(activity.fdTableComplete).toBe(true);
  });
});

describe('files', () => {
  it('reports writes, positional writes and truncation of a regular file with their byte ranges', async () => {
    await startTracked();
    const path = join(scratch, 'log');
    writeFileSync(path, '');
    const fd = (await workload.run(`open ${path}`)).fd!;
    const { report, activity } = await act(`write ${fd} 100`, `write ${fd} 50`, `pwrite ${fd} 8192 10`);
    expect(activity.fdChanges).toEqual([]);
    expect(activity.fileChanges).toHaveLength(1);
    const change = activity.fileChanges[0]!;
    expect(change).toMatchObject({
      path,
      openedAs: [],
      writers: [workload.pid],
      ranges: [{ start: 0, end: 150 }, { start: 8192, end: 8202 }],
      wholeFile: false,
      tailChangedFrom: null,
      writes: 3,
      bytesWritten: 160,
    });
    expect(BigInt(change.file.ino)).toBe(statSync(path, { bigint: true }).ino);
    expect(report.files).toEqual([change]);

    const truncated = await act(`ftruncate ${fd} 10`);
    expect(truncated.activity.fileChanges).toMatchObject([{ path, ranges: [], tailChangedFrom: 10, writes: 0 }]);

    const reopened = await act(`open-trunc ${path}`);
    expect(reopened.activity.fdChanges).toMatchObject([{ op: 'opened', fd: reopened.replies[0]!.fd, path }]);
    expect(reopened.activity.fileChanges).toMatchObject([{ path, openedAs: [path], ranges: [], tailChangedFrom: 0, writes: 0 }]);
  });

  it('does not report writes to pipes and sockets', async () => {
    await startTracked();
    const { fd2 } = await workload.run('pipe');
    tracker.drain();
    await workload.run(`write ${fd2} 10`);
    const report = tracker.drain();
    expect(report.files).toEqual([]);
    expect(report.processes.get(workload.pid)?.fileChanges ?? []).toEqual([]);
  });

  it('turns a hole punched into a shared mapping into changed pages', async () => {
    await startTracked();
    const fd = (await workload.run('memfd shared')).fd!;
    await workload.run(`ftruncate ${fd} ${16 * PAGE}`);
    const region = (await workload.run(`mmap-shared ${fd} 16`)).addr!;
    await workload.run(`touch ${region} 16`);
    const { activity } = await act(`punch ${fd} ${4 * PAGE} ${2 * PAGE}`);
    expect(activity.layoutChanges).toEqual([]);
    expect(activity.fileChanges).toMatchObject([{ ranges: [{ start: 4 * PAGE, end: 6 * PAGE }] }]);
    expect(activity.changedRanges).toEqual([{ start: region + 4 * PAGE, end: region + 6 * PAGE }]);
  });
});

describe('processes', () => {
  it('tracks a child from its fork: its mapping, its written pages, its exit', async () => {
    await startTracked();
    const { replies, report } = await act('fork-write 3');
    const { pid: child, addr: region } = replies[0]! as { pid: number; addr: number };
    expect(report.forks).toMatchObject([{ kind: 'fork', tgid: workload.pid, childTgid: child, childTracked: true, sharesMemory: false }]);
    expect(report.exits).toMatchObject([{ kind: 'exit', tgid: child, exitStatus: 0 }]);
    const activity = report.processes.get(child)!;
    expect(activity.layoutChanges).toMatchObject([{ op: 'mmap', start: region, length: 3 * PAGE }]);
    expect(pagesIn(activity, region, 3)).toEqual(pageRange(region, 3));
    expect(report.live).toEqual([workload.pid]);
  });

  it('reports a child exec and keeps tracking its program', async () => {
    await startTracked();
    const { replies, report } = await act('fork-exec /bin/true');
    const child = replies[0]!.pid!;
    expect(report.forks).toMatchObject([{ childTgid: child }]);
    expect(report.execs).toMatchObject([{ kind: 'exec', tgid: child, filename: '/bin/true' }]);
    expect(report.exits).toMatchObject([{ tgid: child, exitStatus: 0 }]);
    // The exec'd program's own mappings (the loader's mmaps) are seen: still tracked.
    expect(report.processes.get(child)!.layoutChanges.some((change) => change.op === 'mmap')).toBe(true);
    const activity = report.processes.get(child)!;
    expect(activity.execed).toBe(true);
    expect(activity.changedRangesComplete).toBe(false);
    expect(activity.fdTableComplete).toBe(false);
    // Seen, not lost: the report stays complete.
    expect(report.complete).toBe(true);
  });

  it('seeds the processes that exist when tracking starts, and sees them exit', async () => {
    workload = await Fdplay.start();
    const child = (await workload.run('fork-pause')).pid!;
    expect(tracker.track(workload.pid)).toEqual([workload.pid, child]);
    const { report } = await act(`kill ${child}`);
    const SIGTERM = 15;
    expect(report.exits).toMatchObject([{ tgid: child, exitStatus: SIGTERM }]);
    expect(report.forks).toEqual([]);
    expect(report.live).toEqual([workload.pid]);
  });

  it('refuses a second track, forgets everything on untrack, and tracks again', async () => {
    workload = await Fdplay.start();
    expect(tracker.track(workload.pid)).toEqual([workload.pid]);
    expect(() => tracker.track(workload.pid)).toThrow(TrackingStateError);
    tracker.untrack();
    expect(() => tracker.drain()).toThrow(TrackingStateError);
    expect(tracker.track(workload.pid)).toEqual([workload.pid]);
    expect(tracker.drain().live).toEqual([workload.pid]);
  });
});

describe('losses are reported, never silent', () => {
  it('counts file events dropped when the ring buffer overflowed', async () => {
    const slow = JobTracker.open({ consumeIntervalMs: 3_600_000 });
    const saved = tracker;
    tracker = slow;
    try {
      await startTracked();
      const fd = (await workload.run(`open ${join(scratch, 'flood')}`)).fd!;
      // 160k one-byte writes: 72-byte events (+8 bytes of ring buffer header) overflow 8 MiB.
      const { report } = await act(`writes ${fd} 160000`);
      expect(report.lost.fileEvents).toBeGreaterThan(0);
      expect(report.complete).toBe(false);
      expect(report.incompleteBecause.some((reason) => reason.includes('file events lost'))).toBe(true);
      const change = report.files[0]!;
      expect(change.writes + report.lost.fileEvents).toBe(160000);
      tracker.untrack();
    } finally {
      tracker = saved;
      slow.close();
    }
  });
});

describe('errors', () => {
  it('refuses an object whose event layout differs from events.ts', () => {
    const object = BpfObject.openFile(join(ROOT, 'build', 'bpf', 'crinc.bpf.o'));
    try {
      const btf = object.btf();
      const shifted = {
        enumValues: (name: string) => btf.enumValues(name),
        structLayout: (name: string) => {
          const layout = btf.structLayout(name);
          if (name !== 'crinc_fd_event') return layout;
          return { ...layout, members: layout.members.map((m) => (m.name === 'fd' ? { ...m, offset: m.offset + 4 } : m)) };
        },
      } as unknown as ReturnType<BpfObject['btf']>;
      const maps = { tracked: 8192, processStats: 8192, writtenPages: 262144, events: 8 << 20, lossCounters: 10 };
      const stub = Object.fromEntries(Object.entries(maps).map(([name, maxEntries]) => [name, { name, maxEntries }])) as unknown as Parameters<typeof checkContract>[1];
      expect(() => checkContract(btf, stub)).not.toThrow();
      expect(() => checkContract(shifted, stub)).toThrow(TrackingContractError);
      expect(() => checkContract(shifted, stub)).toThrow(/crinc_fd_event: fd at 36/);
    } finally {
      object.close();
    }
  });

  it('names a missing object and an invalid one', () => {
    expect(() => JobTracker.open({ objectPath: join(scratch, 'missing.bpf.o') })).toThrow(TrackingObjectMissingError);
    const notAnObject = join(scratch, 'not-an-object.bpf.o');
    writeFileSync(notAnObject, 'not ELF');
    expect(() => BpfObject.openFile(notAnObject)).toThrow(BpfObjectOpenError);
    try {
      BpfObject.openFile(notAnObject);
    } catch (error) {
      expect((error as BpfObjectOpenError).errnoName).toMatch(/^LIBBPF_ERRNO__FORMAT/);
      expect((error as Error).message).toContain(notAnObject);
    }
  });
});
