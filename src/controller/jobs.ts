// `crinc jobs`: every job of the store, its process, whether the daemon manages it, its
// last checkpoint. The same rows come from the daemon (which adds when it checkpoints
// next) and, without one, from the store and /proc.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { JobRecord, ManagedJobRecord, Repository } from '../store/repository.js';
import { procStat } from '../sys/proc.js';
import { STAGING_ROOT } from './checkpoint.js';
import { ControllerError } from './errors.js';
import { isRunning } from './procfs.js';
import { namespacePid } from './tracking-session.js';

/**
 * `running`/`stopped`: the process runs or not (a job nobody manages);
 * `exited`: a managed job's process ended and the daemon saw it end;
 * `dead`: a managed job's process is gone without the daemon seeing it end
 * (killed while the daemon was down, or found gone at the daemon's start);
 * `restoring`: a restore runs, or was killed after CRIU began (the next restore settles it).
 */
export type JobRowState = 'running' | 'stopped' | 'exited' | 'dead' | 'restoring';

export interface JobRow {
  job: string;
  pid: number | null;
  state: JobRowState;
  command: string[];
  lastCheckpoint: { id: number; takenAt: string } | null;
  managed: {
    origin: ManagedJobRecord['origin'];
    intervalMs: number;
    /** How the process ended, for exited and dead jobs. */
    ended: string | null;
    /** Only in the daemon's answer: when it takes the next checkpoint. */
    nextCheckpointAt?: string | null;
  } | null;
}

export function jobRows(repo: Repository): JobRow[] {
  const managed = new Map(repo.listManagedJobs().map((m) => [m.job, m]));
  return repo.listJobs().map((j) => {
    const last = repo.latestCheckpoint(j.name);
    const m = managed.get(j.name);
    const running = j.pid !== null && isRunning(j.pid);
    let state: JobRowState = running ? 'running' : j.state === 'restoring' ? 'restoring' : 'stopped';
    // A managed job still marked active whose process is gone died while no daemon watched.
    if (m && !running && state !== 'restoring') state = m.state === 'exited' ? 'exited' : 'dead';
    return {
      job: j.name,
      pid: j.pid,
      state,
      command: j.command,
      lastCheckpoint: last ? { id: last.id, takenAt: new Date(last.takenAt).toISOString() } : null,
      managed: m ? { origin: m.origin, intervalMs: m.intervalMs, ended: m.ended } : null,
    };
  });
}

// ---- the `restoring` guard: a restore killed mid-way, then retried ---------------------
// The job's record says `restoring` from just before CRIU starts until the restore has
// recorded the restored process (restore.ts). A record still saying so means a restore
// was killed there: its CRIU may have brought the job back all the same. A retry looks
// for that process first and adopts it, instead of starting a second copy of the job.

/** USER_HZ: the unit of /proc/PID/stat's start time (fixed at 100 in Linux's x86-64 ABI). */
const USER_HZ = 100;
/** /proc's start times are rounded (boot time to the second): a process started this much before the mark still counts. */
const START_TIME_SLACK_MS = 2000;

export class RestoredAlreadyError extends ControllerError {
  override name = 'RestoredAlreadyError';
  constructor(readonly job: string, readonly pid: number, since: number) {
    super(
      `job "${job}" was brought back by a restore that was interrupted (begun at ${new Date(since).toISOString()}): it runs as pid ${pid}, ` +
        `and crinc now knows it. Nothing was restored again. To go back to a checkpoint after all, \`crinc stop ${job}\` first.`,
    );
  }
}

export class RestoreInProgressError extends ControllerError {
  override name = 'RestoreInProgressError';
  constructor(readonly job: string, criuPid: number) {
    super(`job "${job}": the CRIU of an interrupted restore (pid ${criuPid}) is still running; wait for it to end, then try again (ps -p ${criuPid}).`);
  }
}

/** When pid started, in ms since the epoch; undefined when it is gone. */
function processStartedAt(pid: number): number | undefined {
  const stat = procStat(pid);
  if (!stat) return undefined;
  const bootSeconds = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))![1]);
  return bootSeconds * 1000 + (stat.startTicks * 1000) / USER_HZ;
}

function readlinkOrNull(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

/** The running `criu restore` processes that work in a crinc restore's staging. */
function criuRestoresRunning(): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let args: string[];
    try {
      args = readFileSync(`/proc/${p}/cmdline`, 'latin1').split('\0');
    } catch {
      continue;
    }
    if (args[0]?.endsWith('criu') && args[1] === 'restore' && args.some((a) => a.startsWith(join(STAGING_ROOT, 'crinc-restore-')))) out.push(Number(p));
  }
  return out;
}

/**
 * The process an interrupted restore of the job brought back: started after the restore
 * began, running the job's command, and either the init of its own PID namespace with
 * its stdout on the job's log (a job crinc run started), or with the PID the job's
 * checkpoints name as their root (an attached job, restored with its old PIDs).
 */
function restoredProcess(repo: Repository, job: JobRecord): number | undefined {
  const stdoutLog = join(repo.jobDir(job.name), 'stdout.log');
  const rootPids = new Set(repo.listCheckpoints(job.name).map((c) => c.rootPid).filter((p): p is number => p !== null));
  const command = job.command.join('\0');
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const pid = Number(p);
    const started = processStartedAt(pid);
    if (started === undefined || started < job.updatedAt - START_TIME_SLACK_MS || !isRunning(pid)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0$/, '');
    } catch {
      continue;
    }
    if (cmdline !== command) continue;
    const ownNamespace = readlinkOrNull(`/proc/${pid}/fd/1`) === stdoutLog && namespacePid(pid) === 1;
    if (ownNamespace || rootPids.has(pid)) return pid;
  }
  return undefined;
}

/**
 * Before a restore: when the job's record says `restoring` (a restore was killed after
 * CRIU began), finds what that restore did. Its process running: recorded as the job's,
 * and RestoredAlreadyError. Its CRIU still running: RestoreInProgressError. Neither:
 * the record says `stopped` again, and the restore may go on.
 */
export function settleInterruptedRestore(repo: Repository, jobName: string): void {
  const job = repo.requireJob(jobName);
  if (job.state !== 'restoring' || repo.readOnly) return;
  const pid = restoredProcess(repo, job);
  if (pid !== undefined) {
    repo.saveJob({ ...job, pid, state: 'running', controllerPid: null, updatedAt: Date.now() });
    throw new RestoredAlreadyError(jobName, pid, job.updatedAt);
  }
  const criu = criuRestoresRunning();
  if (criu.length > 0) throw new RestoreInProgressError(jobName, criu[0]!);
  repo.saveJob({ ...job, state: 'stopped', updatedAt: Date.now() });
}

/** Just before CRIU restores the job: a restore killed from now on is found by settleInterruptedRestore. */
export function markRestoring(repo: Repository, jobName: string): void {
  if (!repo.readOnly) repo.saveJob({ ...repo.requireJob(jobName), state: 'restoring', updatedAt: Date.now() });
}

/** CRIU failed: nothing was brought back. */
export function markRestoreFailed(repo: Repository, jobName: string): void {
  if (!repo.readOnly) repo.saveJob({ ...repo.requireJob(jobName), state: 'stopped', updatedAt: Date.now() });
}
