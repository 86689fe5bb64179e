// `crinc run`: start a command as a job in its own PID namespace, detached from the
// terminal, and checkpoint it every interval while it runs.
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { JobBusyError } from '../store/errors.js';
import { type CheckpointRecord, type Repository, validateJobName } from '../store/repository.js';
import { takeCheckpoint } from './checkpoint.js';
import type { Codecs } from './codecs.js';
import { JobExistsError, JobStartError } from './errors.js';
import { isRunning } from './procfs.js';

/** How long the namespace's init may take to appear after `unshare` starts. */
const JOB_START_TIMEOUT_MS = 5000;
const JOB_START_POLL_MS = 10;

export interface RunOptions {
  job: string;
  command: string[];
  intervalMs: number;
  killOnExit: boolean;
  cwd: string;
  /** Stops the checkpoint loop (Ctrl-C, SIGTERM). */
  signal: AbortSignal;
  onCheckpoint: (cp: CheckpointRecord) => void;
  onSkip: (reason: string) => void;
  onError: (e: Error) => void;
}

export interface RunOutcome {
  pid: number;
  /** Why the controller stopped: the job ended, or it was asked to stop. */
  reason: 'job-exited' | 'stopped';
  exitCode: number | null;
  exitSignal: NodeJS.Signals | null;
}

/** The host PID of the process that `unshare --fork` made the namespace's init. */
async function namespaceInit(unsharePid: number): Promise<number> {
  const deadline = Date.now() + JOB_START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    try {
      const children = readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim();
      if (children) return Number(children.split(/\s+/)[0]);
    } catch {
      break; // unshare itself is gone
    }
    await sleep(JOB_START_POLL_MS);
  }
  throw new JobStartError(`the job's process did not start within ${JOB_START_TIMEOUT_MS / 1000} s`);
}

export async function startJob(repo: Repository, opts: Pick<RunOptions, 'job' | 'command' | 'cwd'>) {
  validateJobName(opts.job);
  const existing = repo.findJob(opts.job);
  if (existing?.pid && isRunning(existing.pid)) throw new JobExistsError(opts.job, existing.pid);
  const jobDir = repo.jobDir(opts.job);
  mkdirSync(jobDir, { recursive: true, mode: 0o700 });
  const out = openSync(join(jobDir, 'stdout.log'), 'a', 0o600);
  const err = openSync(join(jobDir, 'stderr.log'), 'a', 0o600);
  // unshare forks the namespace's init; setsid makes it a session leader. With stdio on
  // files and no terminal, CRIU can dump and restore it without --shell-job.
  const child = spawn('unshare', ['--pid', '--fork', 'setsid', ...opts.command], {
    cwd: opts.cwd,
    detached: true,
    stdio: ['ignore', out, err],
  });
  closeSync(out);
  closeSync(err);
  const spawnError = new Promise<never>((_, reject) => child.once('error', (e) => reject(new JobStartError(`cannot start the job: ${e.message}`))));
  const pid = await Promise.race([namespaceInit(child.pid!), spawnError]);
  const now = Date.now();
  repo.saveJob({
    name: opts.job,
    createdAt: existing?.createdAt ?? now,
    command: opts.command,
    cwd: opts.cwd,
    pid,
    controllerPid: process.pid,
    state: 'running',
    updatedAt: now,
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { pid, exited, jobDir };
}

export async function runJob(repo: Repository, codecs: Codecs, opts: RunOptions): Promise<RunOutcome> {
  const { pid, exited } = await startJob(repo, opts);
  let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const jobEnded = exited.then((e) => (ended = e));
  while (!ended && !opts.signal.aborted) {
    await Promise.race([sleep(opts.intervalMs, undefined, { signal: opts.signal }).catch(() => undefined), jobEnded]);
    if (ended || opts.signal.aborted) break;
    try {
      opts.onCheckpoint(await takeCheckpoint(repo, codecs, opts.job));
    } catch (e) {
      if (e instanceof JobBusyError) opts.onSkip(e.message);
      else if (!isRunning(pid)) break;
      else opts.onError(e as Error);
    }
  }
  const job = repo.requireJob(opts.job);
  if (ended || !isRunning(pid)) {
    await jobEnded;
    // A restore may have given the job a new process meanwhile: only mark our own.
    if (job.pid === pid) repo.saveJob({ ...job, state: 'stopped', controllerPid: null, updatedAt: Date.now() });
    return { pid, reason: 'job-exited', exitCode: ended?.code ?? null, exitSignal: ended?.signal ?? null };
  }
  if (opts.killOnExit) {
    process.kill(pid, 'SIGKILL');
    await jobEnded;
    repo.saveJob({ ...job, state: 'stopped', controllerPid: null, updatedAt: Date.now() });
  } else {
    repo.saveJob({ ...job, controllerPid: null, updatedAt: Date.now() });
  }
  return { pid, reason: 'stopped', exitCode: null, exitSignal: null };
}
