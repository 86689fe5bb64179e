// `crinc stop JOB`: end a job's process for good. A job started by crinc run is the init
// of its own PID namespace, and the kernel drops every signal sent to an init from its
// parent namespace for which it has no handler — SIGKILL aside: a plain `kill PID` does
// nothing to most jobs. crinc asks nicely (SIGTERM, for a job that handles it), waits a
// grace time, then sends SIGKILL, and waits until the process is gone.
import type { CheckpointRecord, Repository } from '../store/repository.js';
import { takeCheckpoint } from './checkpoint.js';
import type { Codecs } from './codecs.js';
import { ControllerError } from './errors.js';
import { exitedWithin, isRunning } from './procfs.js';

/** How long a job may take to end on SIGTERM before it gets SIGKILL (crinc stop --grace). */
export const DEFAULT_STOP_GRACE_MS = 10_000;
/** After SIGKILL the kernel ends a process within milliseconds; longer means it is stuck in the kernel (D state). */
const KILL_WAIT_MS = 10_000;

export class JobStopError extends ControllerError {
  override name = 'JobStopError';
}

/** How the process ended: on SIGTERM within the grace time, or on SIGKILL. */
export type StopHow = 'terminated' | 'killed';

/** What `crinc stop` reports: how the job ended, and its final checkpoint when one was asked for. */
export interface StopResult {
  job: string;
  pid: number;
  /** 'exited': it had ended by itself before crinc stopped it. */
  how: StopHow | 'exited';
  checkpoint: CheckpointRecord | null;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

/**
 * SIGTERM, up to graceMs for the process to end, then SIGKILL; resolves once it has
 * ended (gone, or a zombie for its parent to reap). graceMs 0: SIGKILL at once (after a
 * final checkpoint the job must not run on and change its files).
 */
export async function stopProcess(pid: number, graceMs: number): Promise<StopHow> {
  if (graceMs > 0) {
    signal(pid, 'SIGTERM');
    if (await exitedWithin(pid, graceMs)) return 'terminated';
  }
  signal(pid, 'SIGKILL');
  if (!(await exitedWithin(pid, KILL_WAIT_MS))) {
    throw new JobStopError(`process ${pid} did not end within ${KILL_WAIT_MS / 1000} s of SIGKILL: it is stuck in the kernel (state D; see /proc/${pid}/stack). It ends when the kernel call it waits on returns.`);
  }
  return 'killed';
}

/**
 * `crinc stop` when no controller runs the job: the final checkpoint (if asked) is a
 * standalone one, then the process is ended and the job's records say it stopped.
 * The process is not this command's child: its parent (or init) reaps it.
 */
export async function stopJobStandalone(repo: Repository, codecs: Codecs, jobName: string, opts: { checkpoint: boolean; graceMs: number }): Promise<StopResult> {
  const job = repo.requireJob(jobName);
  if (job.pid === null || !isRunning(job.pid)) return { job: jobName, pid: job.pid ?? 0, how: 'exited', checkpoint: null };
  const checkpoint = opts.checkpoint ? await takeCheckpoint(repo, codecs, jobName) : null;
  const how = await stopProcess(job.pid, checkpoint ? 0 : opts.graceMs);
  const now = Date.now();
  repo.saveJob({ ...repo.requireJob(jobName), state: 'stopped', controllerPid: null, updatedAt: now });
  const managed = repo.findManagedJob(jobName);
  if (managed?.state === 'active') {
    repo.saveManagedJob({ ...managed, state: 'exited', ended: checkpoint ? `stopped by crinc stop after checkpoint ${checkpoint.id}` : 'stopped by crinc stop', updatedAt: now });
  }
  return { job: jobName, pid: job.pid, how, checkpoint };
}
