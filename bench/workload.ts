// Real programs for the benchmarks: started as the init of their own PID namespace (so
// CRIU dumps them without --shell-job and no PID is left taken), dumped by CRIU into
// tmpfs, killed by pid and reaped. Also meant for the dirty-tracking benchmark (dirty.ts).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Scratch } from './util.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const COUNTER = join(ROOT, 'build', 'workloads', 'counter');
/** bench/workloads/node-heap.ts, built. */
export const NODE_HEAP = join(ROOT, 'dist', 'bench', 'workloads', 'node-heap.js');

export class Job {
  private readonly exited: Promise<void>;

  constructor(
    /** `unshare`, our child: we reap it. */
    private readonly outer: ChildProcess,
    /** The job's host PID (its namespace's init): what CRIU dumps and what we kill. */
    readonly pid: number,
    readonly log: string,
    private readonly scratch: Scratch,
  ) {
    this.exited = new Promise((done) => {
      if (outer.exitCode !== null || outer.signalCode !== null) done();
      else outer.once('exit', () => done());
    });
  }

  /** SIGKILL the namespace's init (which ends the namespace), then reap `unshare`. */
  async kill(): Promise<void> {
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    const timeout = sleep(10_000).then(() => {
      throw new Error(`unshare (pid ${this.outer.pid}) did not exit after its job ${this.pid} was killed`);
    });
    await Promise.race([this.exited, timeout]);
    this.scratch.untrackPid(this.pid);
    if (this.outer.pid) this.scratch.untrackPid(this.outer.pid);
  }
}

/**
 * `setsid unshare --pid --fork setsid CMD` with stdio off any terminal; resolves when the
 * job's log contains `ready` (a regexp), i.e. the program has built its state.
 */
export async function startJob(scratch: Scratch, name: string, cmd: string[], ready: RegExp, timeoutMs = 120_000): Promise<Job> {
  const log = scratch.dir(`${name}.log`);
  const fd = openSync(log, 'w', 0o600);
  // Not detached: `setsid` is then no group leader, so it does not fork, and `unshare`
  // stays our child (orphans are never reaped on this machine).
  const outer = spawn('setsid', ['unshare', '--pid', '--fork', 'setsid', ...cmd], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  if (outer.pid === undefined) throw new Error(`cannot start ${cmd.join(' ')}`);
  scratch.trackPid(outer.pid);
  const deadline = Date.now() + timeoutMs;
  let pid: number | undefined;
  for (;;) {
    if (outer.exitCode !== null || outer.signalCode !== null) {
      throw new Error(`${cmd.join(' ')} exited early: ${readFileSync(log, 'utf8').slice(-500)}`);
    }
    pid ??= childOf(outer.pid);
    if (pid !== undefined) scratch.trackPid(pid);
    if (pid !== undefined && ready.test(readFileSync(log, 'utf8'))) break;
    if (Date.now() > deadline) throw new Error(`${cmd.join(' ')} not ready after ${timeoutMs} ms: ${readFileSync(log, 'utf8').slice(-500)}`);
    await sleep(50);
  }
  return new Job(outer, pid, log, scratch);
}

function childOf(pid: number): number | undefined {
  try {
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    return children ? Number(children.split(/\s+/)[0]) : undefined;
  } catch {
    return undefined;
  }
}

/** `criu dump --leave-running` of the job into imagesDir (its log in a work dir beside it); seconds taken. */
export function criuDump(pid: number, imagesDir: string): number {
  const workDir = `${imagesDir}.work`;
  mkdirSync(imagesDir, { recursive: true, mode: 0o700 });
  mkdirSync(workDir, { recursive: true, mode: 0o700 });
  const t = performance.now();
  const r = spawnSync('criu', ['dump', '-t', String(pid), '-D', imagesDir, '-W', workDir, '-o', 'dump.log', '--leave-running'], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  const seconds = (performance.now() - t) / 1000;
  if (r.status !== 0) {
    const logPath = join(workDir, 'dump.log');
    const tail = existsSync(logPath) ? readFileSync(logPath, 'utf8').split('\n').filter((l) => l.startsWith('Error')).slice(-5).join('\n') : '';
    throw new Error(`criu dump of ${pid} failed (${r.status ?? r.signal}): ${r.stderr}${tail}`);
  }
  return seconds;
}

/** Total bytes of the regular files in a directory (not recursive). */
export function dirBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const st = statSync(join(dir, name));
    if (st.isFile()) total += st.size;
  }
  return total;
}

/** The pages-*.img files of an image directory. */
export function pagesFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => /^pages-\d+\.img$/.test(n))
    .sort()
    .map((n) => join(dir, n));
}
