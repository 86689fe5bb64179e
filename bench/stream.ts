// Issue 10's benchmark: checkpoints and restores whose pages stream between CRIU and
// crinc, side by side with bare CRIU in the same run (bare: `criu dump --leave-running`
// into tmpfs, `criu restore -d` from it), for 1 GiB and 4 GiB jobs.
//
// The job is test/workloads/dirtier.c (every page pseudo-random data). One process does
// what the controller does: a Repository on a store under the bench's /dev/shm scratch,
// openCodecs, a JobTracker + TrackingSession, takeCheckpoint, restoreJob. Compared
// commands alternate (A B A B: first touch of memory costs extra here, and other work on
// the machine comes and goes):
//   full:      A (store 1, tracking: its first checkpoint, pre-copied), B, A (store 2, no
//              tracking: every page read in the freeze), B; each A against both B's
//   1% dirty:  tick, A (store 1, tracking), B; tick, B, A
//   restore:   A (default), B, A (--lazy), B — the job killed before each
// Frozen time: crinc's record.freezeMs (CRIU's freezing + frozen time, its page stream to
// crinc and crinc's work at the freeze included); bare: CRIU's own stats-dump. Peak RSS: this
// process's VmHWM (crinc runs in it, with the tracker): an upper bound of crinc's.
// Prints tables with targets and PASS/MISS; asserts nothing.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { takeCheckpoint } from '../src/controller/checkpoint.js';
import { type Codecs, openCodecs } from '../src/controller/codecs.js';
import { restoreJob } from '../src/controller/restore.js';
import { TrackingSession } from '../src/controller/tracking-session.js';
import { readDumpStats } from '../src/criu/images.js';
import { Repository } from '../src/store/repository.js';
import { becomeChildSubreaper, WNOHANG, waitpidRaw } from '../src/sys/libc.js';
import type { JobTracker } from '../src/tracking/bpf/job-tracker.js';
import { DIRTIER, Dirtier, openTracker } from './dirty-job.js';
import { type StageTimes, StageTimers } from './dirty-timers.js';
import { criuDump } from './workload.js';
import { GIB, memAvailable, MIB, printTable, type Scratch, verdict } from './util.js';

export const STREAM_TARGETS = {
  frozenFull: 1.2,
  frozenDirty1: 1.0,
  wallFull: 1.5,
  wallDirty1: 1.1,
  restoreDefault: 1.25,
  lazyRunning: 0.1,
  peakRssMiB: 512,
};

const JOB = 'stream-bench';
const CRIU_OPTIONS = ['--ext-unix-sk', '--file-locks', '--tcp-established'];

interface Side {
  repo: Repository;
  codecs: Codecs;
}

interface Checkpoint {
  frozenMs: number;
  wallMs: number;
  stages?: StageTimes;
}

interface SizeResult {
  mib: number;
  full: { a: Checkpoint[]; b: Checkpoint[] };
  dirty1: { a: Checkpoint[]; b: Checkpoint[] };
  restore: { a: number[]; b: number[]; lazyRunning: number; lazyAllIn: number };
  skipped?: string;
}

function bareDump(pid: number, dir: string): Checkpoint {
  rmSync(dir, { recursive: true, force: true });
  rmSync(`${dir}.work`, { recursive: true, force: true });
  const seconds = criuDump(pid, dir);
  const stats = readDumpStats(`${dir}.work`);
  return { wallMs: seconds * 1000, frozenMs: (stats.freezingTimeUs + stats.frozenTimeUs) / 1000 };
}

/** Kills a restored job (our child: this process is a subreaper) and reaps it. */
async function killRestored(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const [r] = waitpidRaw(pid, WNOHANG);
    if (r === pid || r === -1) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function oneSize(scratch: Scratch, tracker: JobTracker, timers: StageTimers, mib: number): Promise<SizeResult> {
  const result: SizeResult = { mib, full: { a: [], b: [] }, dirty1: { a: [], b: [] }, restore: { a: [], b: [], lazyRunning: NaN, lazyAllIn: NaN } };
  // The job, a bare image and two stores of (incompressible) pages at once (the second
  // store goes before the restores, which add a restored copy), and slack.
  const need = 4 * mib * MIB + GIB;
  const avail = memAvailable(readFileSync('/proc/meminfo', 'utf8'));
  if (avail < need) {
    result.skipped = `${(avail / GIB).toFixed(1)} GiB available, ${(need / GIB).toFixed(1)} GiB needed`;
    return result;
  }
  const closers: (() => void | Promise<void>)[] = [];
  try {
    const job = await Dirtier.start(scratch, mib);
    closers.push(() => job.kill());
    const open = async (dir: string): Promise<Side> => {
      const repo = Repository.open(dir, { create: true });
      const now = Date.now();
      repo.saveJob({ name: JOB, createdAt: now, command: [DIRTIER], cwd: '/', pid: job.pid, controllerPid: process.pid, state: 'running', updatedAt: now });
      const codecs = await openCodecs(repo);
      closers.push(() => codecs.pool.close());
      closers.push(() => repo.close());
      closers.push(() => rmSync(dir, { recursive: true, force: true }));
      return { repo, codecs };
    };
    const tracked = await open(scratch.dir(`stream-store-tracking-${mib}`));
    const untrackedDir = scratch.dir(`stream-store-full-${mib}`);
    const untracked = await open(untrackedDir);
    const session = new TrackingSession(job.pid, tracker);
    let sessionOpen = true;
    const closeSession = () => {
      if (sessionOpen) session.close();
      sessionOpen = false;
    };
    closers.push(closeSession);
    const bareDir = scratch.dir(`stream-bare-${mib}`);
    closers.push(() => rmSync(bareDir, { recursive: true, force: true }));
    closers.push(() => rmSync(`${bareDir}.work`, { recursive: true, force: true }));
    const crinc = async (side: Side, tracking?: TrackingSession): Promise<Checkpoint> => {
      timers.take();
      const t = performance.now();
      const record = await takeCheckpoint(side.repo, side.codecs, JOB, tracking ? { tracking } : {});
      const wallMs = performance.now() - t;
      const stages = timers.take();
      // As crinc's controllers do once a checkpoint is answered (src/controller/run.ts, daemon.ts).
      side.repo.compactChunkIndex();
      return { wallMs, frozenMs: record.freezeMs, stages };
    };

    result.full.a.push(await crinc(tracked, session));
    result.full.b.push(bareDump(job.pid, bareDir));
    result.full.a.push(await crinc(untracked));
    result.full.b.push(bareDump(job.pid, bareDir));
    untracked.repo.close();
    rmSync(untrackedDir, { recursive: true, force: true });

    const onePercent = Math.max(1, Math.round(job.pages / 100));
    await job.tick(onePercent);
    result.dirty1.a.push(await crinc(tracked, session));
    result.dirty1.b.push(bareDump(job.pid, bareDir));
    await job.tick(onePercent);
    result.dirty1.b.push(bareDump(job.pid, bareDir));
    result.dirty1.a.push(await crinc(tracked, session));
    const latest = tracked.repo.latestCheckpoint(JOB)!;
    closeSession();
    await job.kill();

    const bareRestore = async (): Promise<number> => {
      const work = `${bareDir}.restore`;
      rmSync(work, { recursive: true, force: true });
      mkdirSync(work, { mode: 0o700 });
      const t = performance.now();
      const r = spawnSync('criu', ['restore', '-D', bareDir, '-W', work, '-o', 'restore.log', '-d', '--pidfile', join(work, 'pid'), ...CRIU_OPTIONS], { encoding: 'utf8' });
      const ms = performance.now() - t;
      if (r.status !== 0) throw new Error(`bare criu restore failed: ${r.stderr}`);
      await killRestored(Number(readFileSync(join(work, 'pid'), 'utf8')));
      rmSync(work, { recursive: true, force: true });
      return ms;
    };
    const crincRestore = async (lazy: boolean): Promise<{ running: number; allIn: number }> => {
      const t = performance.now();
      const r = await restoreJob(tracked.repo, tracked.codecs, JOB, { id: latest.id }, { lazy });
      const running = performance.now() - t;
      await r.allPagesIn;
      const allIn = performance.now() - t;
      await killRestored(r.pid);
      return { running, allIn };
    };
    result.restore.a.push((await crincRestore(false)).allIn);
    result.restore.b.push(await bareRestore());
    const lazy = await crincRestore(true);
    result.restore.lazyRunning = lazy.running;
    result.restore.lazyAllIn = lazy.allIn;
    result.restore.b.push(await bareRestore());
    result.restore.a.push((await crincRestore(false)).allIn);
  } finally {
    for (const fn of closers.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`stream: cleanup: ${(e as Error).message}`);
      }
    }
  }
  return result;
}

const mean = (v: number[]): number => v.reduce((s, x) => s + x, 0) / v.length;
const fmt = (v: number[]): string => v.map((x) => (x / 1000).toFixed(2)).join(', ');
const ratio = (a: number[], b: number[]): number => mean(a) / mean(b);

function vmHwmMiB(): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Runs the streaming benchmark for each job size (MiB). */
export async function streaming(scratch: Scratch, sizesMib: number[] = [1024, 4096]): Promise<void> {
  const title = 'Streaming checkpoint and restore, × bare CRIU in the same run (issue 10)';
  if (!existsSync(DIRTIER)) {
    console.log(`\n${title}: skipped, ${DIRTIER} is not built (bash scripts/setup.sh --build-only)`);
    return;
  }
  const tracker = await openTracker(title);
  if (!tracker) return;
  becomeChildSubreaper();
  const timers = new StageTimers();
  timers.install();
  const rows: string[][] = [];
  const notes: string[] = [];
  try {
    for (const mib of sizesMib) {
      const r = await oneSize(scratch, tracker, timers, mib);
      const size = `${mib / 1024} GiB`;
      if (r.skipped) {
        rows.push([size, 'skipped', r.skipped, '', '', '', '']);
        continue;
      }
      const line = (what: string, a: number[], b: number[], target: number) => {
        const x = ratio(a, b);
        rows.push([size, what, fmt(a), fmt(b), `${x.toFixed(2)}×`, `≤ ${target}×`, verdict(x, target, true)]);
      };
      // Each full run against both bare dumps: the tracked one (pre-copied, as `crinc run` takes a job's first) and the --no-tracking one.
      const [trackedFull, untrackedFull] = r.full.a as [Checkpoint, Checkpoint];
      const bareFull = r.full.b;
      line('frozen, full checkpoint, tracked: pre-copied (s)', [trackedFull.frozenMs], bareFull.map((c) => c.frozenMs), STREAM_TARGETS.frozenFull);
      line('frozen, full checkpoint, --no-tracking (s)', [untrackedFull.frozenMs], bareFull.map((c) => c.frozenMs), STREAM_TARGETS.frozenFull);
      line('frozen, 1% dirty (s)', r.dirty1.a.map((c) => c.frozenMs), r.dirty1.b.map((c) => c.frozenMs), STREAM_TARGETS.frozenDirty1);
      line('wall, full checkpoint, tracked: pre-copied (s)', [trackedFull.wallMs], bareFull.map((c) => c.wallMs), STREAM_TARGETS.wallFull);
      line('wall, full checkpoint, --no-tracking (s)', [untrackedFull.wallMs], bareFull.map((c) => c.wallMs), STREAM_TARGETS.wallFull);
      line('wall, 1% dirty (s)', r.dirty1.a.map((c) => c.wallMs), r.dirty1.b.map((c) => c.wallMs), STREAM_TARGETS.wallDirty1);
      line('restore, default: all pages in (s)', r.restore.a, r.restore.b, STREAM_TARGETS.restoreDefault);
      line('restore --lazy: job running (s)', [r.restore.lazyRunning], r.restore.b, STREAM_TARGETS.lazyRunning);
      rows.push([size, 'restore --lazy: all pages in (s)', fmt([r.restore.lazyAllIn]), fmt(r.restore.b), `${ratio([r.restore.lazyAllIn], r.restore.b).toFixed(2)}×`, '', '']);
      for (const [what, cps] of [['full', r.full.a], ['1% dirty', r.dirty1.a]] as const) {
        notes.push(
          `${size} ${what}, where crinc's time goes (per run, s): ` +
            cps
              .map((c) => {
                const precopy = c.stages?.precopyMs ?? 0;
                const before = precopy > 0 ? `pre-copy while the job ran ${(precopy / 1000).toFixed(2)}, ` : '';
                return `${before}scan ${((c.stages?.scanMs ?? NaN) / 1000).toFixed(3)}, stream + ingest ${(((c.stages?.ingestMs ?? NaN) - precopy) / 1000).toFixed(2)}, commit ${((c.stages?.commitMs ?? NaN) / 1000).toFixed(2)}`;
              })
              .join(' | '),
        );
      }
    }
  } finally {
    timers.uninstall();
    tracker.close();
  }
  const hwm = vmHwmMiB();
  rows.push(['all', 'peak RSS of the process running crinc (MiB)', hwm.toFixed(0), '', '', `≤ ${STREAM_TARGETS.peakRssMiB}`, verdict(hwm, STREAM_TARGETS.peakRssMiB, true)]);
  notes.unshift('runs in order A B A B; ratio = mean(crinc) / mean(bare). Store on /dev/shm. Full: first run with tracking armed (store 1: its pages are pre-copied while the job runs, the freeze reads only those written since), second without (store 2, all pages new, all read in the freeze).');
  printTable(title, ['job', 'measure', 'crinc runs', 'bare runs', 'ratio', 'target', 'PASS/MISS'], rows, notes);
}
