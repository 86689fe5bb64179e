// `crinc run`: start a command as a job in its own PID namespace, detached from the
// terminal, and checkpoint it every interval while it runs.
import { spawn } from 'node:child_process';
import { accessSync, closeSync, constants as fsConstants, mkdirSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { JobBusyError } from '../store/errors.js';
import { type CheckpointRecord, type Repository, validateJobName } from '../store/repository.js';
import { takeCheckpoint } from './checkpoint.js';
import type { Codecs } from './codecs.js';
import { ControlError, controlSocketPath, serveControl } from './control.js';
import { jobStatus } from './status.js';
import { TrackingSession } from './tracking-session.js';
import type { JobTracker } from '../tracking/bpf/job-tracker.js';
import { JobExistsError, JobStartError } from './errors.js';
import { isRunning } from './procfs.js';

/** How long the namespace's init may take to appear after `unshare` starts. */
const JOB_START_TIMEOUT_MS = 5000;
const JOB_START_POLL_MS = 10;
const JOB_EXEC_SCRIPT = 'out=$1; err=$2; shift 2; exec "$@" </dev/null >>"$out" 2>>"$err"';

export interface RunOptions {
  job: string;
  command: string[];
  intervalMs: number;
  killOnExit: boolean;
  cwd: string;
  /** Dirty tracking (eBPF + write protection), so checkpoints cost what changed. */
  tracking: boolean;
  /** Verification mode: hash clean pages anyway and fail on any that changed. */
  verifyTracking: boolean;
  /** Stops the checkpoint loop (Ctrl-C, SIGTERM). */
  signal: AbortSignal;
  onCheckpoint: (cp: CheckpointRecord) => void;
  onSkip: (reason: string) => void;
  onError: (e: Error) => void;
  onNotice: (message: string) => void;
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

export async function startJob(repo: Repository, opts: Pick<RunOptions, 'job' | 'command' | 'cwd'> & { env?: NodeJS.ProcessEnv }): Promise<RunningJob> {
  validateJobName(opts.job);
  const executable = findExecutable(opts.command[0]!, opts.cwd);
  if (!executable) throw new JobStartError(`cannot start the job: "${opts.command[0]}" is not an executable file (nor found on PATH)`);
  const existing = repo.findJob(opts.job);
  if (existing?.pid && isRunning(existing.pid)) throw new JobExistsError(opts.job, existing.pid);
  const jobDir = repo.jobDir(opts.job);
  mkdirSync(jobDir, { recursive: true, mode: 0o700 });
  // unshare forks the namespace's init; setsid makes it a session leader; sh points the
  // job's stdio at its log files and execs the command, which so stays the init. With
  // stdio on files and no terminal, CRIU dumps and restores it without --shell-job.
  // unshare's own messages go to launcher.log, never into the job's logs.
  for (const log of ['stdout.log', 'stderr.log']) closeSync(openSync(join(jobDir, log), 'a', 0o600));
  const launcherLog = openSync(join(jobDir, 'launcher.log'), 'a', 0o600);
  const child = spawn(
    'unshare',
    ['--pid', '--fork', 'setsid', 'sh', '-c', JOB_EXEC_SCRIPT, 'sh', join(jobDir, 'stdout.log'), join(jobDir, 'stderr.log'), ...opts.command],
    { cwd: opts.cwd, env: opts.env ?? process.env, detached: true, stdio: ['ignore', launcherLog, launcherLog] },
  );
  closeSync(launcherLog);
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
  return { pid, exited, jobDir, release: () => child.unref() };
}

export async function runJob(repo: Repository, codecs: Codecs, opts: RunOptions): Promise<RunOutcome> {
  // A long-lived controller keeps every chunk id in memory: new ids need no query.
  repo.preloadKnown();
  return controlJob(repo, codecs, opts, await startJob(repo, opts));
}

export interface RunningJob {
  pid: number;
  /** Settles when the job's process has ended (with its status when this process is its parent). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  jobDir: string;
  /** Lets this process end while the job goes on. */
  release: () => void;
}

/** Checkpoints a running job every interval and serves its control socket, until it ends or opts.signal stops it. */
export async function controlJob(repo: Repository, codecs: Codecs, opts: Omit<RunOptions, 'command' | 'cwd'>, running: RunningJob): Promise<RunOutcome> {
  const { pid, exited, jobDir, release } = running;
  const tracking = opts.tracking ? await startTracking(pid, opts.onNotice) : undefined;
  const checkpoint = async (keepImagesDir?: string) => {
    const cp = await takeCheckpoint(repo, codecs, opts.job, { keepImagesDir, tracking, verifyTracking: opts.verifyTracking });
    opts.onCheckpoint(cp);
    return cp;
  };
  const socket = controlSocketPath(jobDir);
  const control = await serveControl(socket, async (req) => {
    if (req.op === 'checkpoint') return checkpoint(req.keepImagesDir);
    if (req.op === 'status') return jobStatus(repo, opts.job, true, tracking ?? null);
    throw new ControlError(`unknown request "${(req as { op: string }).op}"`);
  });
  try {
    const outcome = await superviseJob(repo, opts, pid, exited, checkpoint);
    if (outcome.reason === 'stopped') release();
    return outcome;
  } finally {
    control.close();
    rmSync(socket, { force: true });
    tracking?.close();
  }
}

/** Loads the eBPF programs and arms write protection; without them checkpoints are full, and say why. */
export async function startTracking(pid: number, notice: (m: string) => void): Promise<TrackingSession | undefined> {
  let tracker: JobTracker | undefined;
  try {
    const { JobTracker } = await import('../tracking/bpf/job-tracker.js');
    tracker = JobTracker.open();
    return new TrackingSession(pid, tracker);
  } catch (e) {
    tracker?.close();
    notice(`dirty tracking is off: ${(e as Error).message}. Every checkpoint reads and hashes all pages.`);
    return undefined;
  }
}

async function superviseJob(
  repo: Repository,
  opts: Omit<RunOptions, 'command' | 'cwd'>,
  pid: number,
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>,
  checkpoint: () => Promise<CheckpointRecord>,
): Promise<RunOutcome> {
  let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const jobEnded = exited.then((e) => (ended = e));
  // Ends the pending wait between checkpoints when the job ends first.
  const waits = new AbortController();
  void jobEnded.then(() => waits.abort());
  const waitSignal = AbortSignal.any([opts.signal, waits.signal]);
  while (!ended && !opts.signal.aborted) {
    await sleep(opts.intervalMs, undefined, { signal: waitSignal }).catch(() => undefined);
    if (ended || opts.signal.aborted) break;
    try {
      await checkpoint();
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

function findExecutable(cmd: string, cwd: string): string | undefined {
  const candidates = cmd.includes('/')
    ? [resolve(cwd, cmd)]
    : (process.env.PATH ?? '/usr/bin:/bin').split(':').filter(Boolean).map((d) => join(d, cmd));
  for (const c of candidates) {
    try {
      accessSync(c, fsConstants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch {
      // not here
    }
  }
  return undefined;
}
