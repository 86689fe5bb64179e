// `crinc run`: start a command as a job in its own PID namespace, detached from the
// terminal — or resume it from its newest checkpoint — and checkpoint it every interval
// while it runs. Asked to, it takes a final checkpoint and stops the job (batch
// schedulers' preemption and requeue).
import { spawn } from 'node:child_process';
import { accessSync, closeSync, constants as fsConstants, mkdirSync, openSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { becomeChildSubreaper, decodeWaitStatus, lastErrno, type WaitExit, waitpidRaw, WNOHANG } from '../sys/libc.js';
import { procStat } from '../sys/proc.js';
import { JobBusyError } from '../store/errors.js';
import { type CheckpointRecord, type Repository, validateJobName } from '../store/repository.js';
import { takeCheckpoint } from './checkpoint.js';
import type { Codecs } from './codecs.js';
import { ControlError, controlSocketPath, serveControl } from './control.js';
import { jobStatus } from './status.js';
import { TrackingSession } from './tracking-session.js';
import type { JobTracker } from '../tracking/bpf/job-tracker.js';
import { ControllerError, FinalCheckpointError, JobExistsError, JobNotRunningError, JobStartError, ResumeError } from './errors.js';
import { isRunning } from './procfs.js';
import { restoreJob, type RestoreResult } from './restore.js';
import { DEFAULT_STOP_GRACE_MS, stopProcess, type StopHow, type StopResult } from './stop.js';

/** How long the namespace's init may take to report its PID after `unshare` starts. */
const JOB_START_TIMEOUT_MS = 5000;
/**
 * Run by the namespace's init before it becomes the job: it writes its host PID (the
 * host's /proc, which is still mounted, resolves /proc/self to it) to fd 3, a pipe to
 * the controller, and closes it, then execs the command, which so keeps that PID. The
 * controller learns the PID even when the command ends at once (`/bin/true`).
 */
const JOB_EXEC_SCRIPT =
  'read -r host_pid _ </proc/self/stat; echo "$host_pid" >&3; exec 3>&-; ' +
  'out=$1; err=$2; shift 2; exec "$@" </dev/null >>"$out" 2>>"$err"';
/** How often the controller looks whether a restored job (its child by subreaping) ended. */
const RESTORED_EXIT_POLL_MS = 100;
/** How long the final checkpoint waits for a checkpoint already under way (crinc checkpoint). */
const FINAL_CHECKPOINT_BUSY_WAIT_MS = 30_000;
const FINAL_CHECKPOINT_BUSY_POLL_MS = 200;

/**
 * What a stop request asks for (the reason of RunOptions.signal): leave the job running
 * (Ctrl-C), or take a final checkpoint and stop the job so that a later `crinc run`
 * resumes it (SIGTERM, SIGUSR1: preemption, requeue, wall-time warning), or stop the job
 * without a checkpoint (`crinc stop`: SIGTERM, a grace time, SIGKILL).
 */
export type StopRequest = 'leave-running' | 'checkpoint-and-stop' | 'stop';

/** How the job came to run: started from its command, or restored from a checkpoint. */
export type JobStart = { how: 'started'; pid: number; freshRequested: boolean } | { how: 'restored'; pid: number; restore: RestoreResult };

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
  /** Start CMD even when the job has checkpoints (which stay in the store). */
  fresh: boolean;
  /** Stops the checkpoint loop; its reason is a StopRequest. */
  signal: AbortSignal;
  onStart: (start: JobStart) => void;
  onCheckpoint: (cp: CheckpointRecord) => void;
  onSkip: (reason: string) => void;
  onError: (e: Error) => void;
  onNotice: (message: string) => void;
}

export interface RunOutcome {
  pid: number;
  /**
   * Why the controller stopped: the job ended; it was asked to stop and left the job
   * running (or killed it, --kill-on-exit); it took a final checkpoint and stopped the job.
   */
  reason: 'job-exited' | 'stopped' | 'checkpointed';
  exitCode: number | null;
  exitSignal: NodeJS.Signals | null;
  /** With 'checkpointed': the final checkpoint, from which the next `crinc run` resumes. */
  finalCheckpoint: CheckpointRecord | null;
  /** With 'stopped': whether the controller ended the job (--kill-on-exit, crinc stop) and how; null when it goes on. */
  jobStopped: StopHow | null;
}


/** The host PID that the namespace's init wrote to the launch pipe (JOB_EXEC_SCRIPT). */
async function namespaceInit(pipe: Readable, launcherLog: string): Promise<number> {
  let text = '';
  const reported = new Promise<string>((resolve, reject) => {
    pipe.setEncoding('utf8');
    // unshare keeps its copy of the pipe open as long as the job runs: the line is the answer, not the end.
    pipe.on('data', (d: string) => {
      text += d;
      if (text.includes('\n')) resolve(text);
    });
    pipe.once('end', () => resolve(text));
    pipe.once('error', reject);
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new JobStartError(`the job's process did not report its PID within ${JOB_START_TIMEOUT_MS / 1000} s; see ${launcherLog}`)),
      JOB_START_TIMEOUT_MS,
    );
  });
  try {
    const line = (await Promise.race([reported, timeout])).trim();
    const pid = Number(line);
    if (!Number.isInteger(pid) || pid <= 1) throw new JobStartError(`the job could not be started (unshare or setsid failed): see ${launcherLog}`);
    return pid;
  } finally {
    clearTimeout(timer);
    pipe.destroy();
  }
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
  const launcherLogPath = join(jobDir, 'launcher.log');
  const launcherLog = openSync(launcherLogPath, 'a', 0o600);
  const child = spawn(
    'unshare',
    ['--pid', '--fork', 'setsid', 'sh', '-c', JOB_EXEC_SCRIPT, 'sh', join(jobDir, 'stdout.log'), join(jobDir, 'stderr.log'), ...opts.command],
    { cwd: opts.cwd, env: opts.env ?? process.env, detached: true, stdio: ['ignore', launcherLog, launcherLog, 'pipe'] },
  );
  closeSync(launcherLog);
  // Listened to at once: a job that ends at once must not be missed.
  const exited = new Promise<WaitExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const spawnError = new Promise<never>((_, reject) => child.once('error', (e) => reject(new JobStartError(`cannot start the job: ${e.message}`))));
  const pid = await Promise.race([namespaceInit(child.stdio[3] as Readable, launcherLogPath), spawnError]);
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
  return { pid, exited, jobDir, release: () => child.unref() };
}

export async function runJob(repo: Repository, codecs: Codecs, opts: RunOptions): Promise<RunOutcome> {
  const latest = opts.fresh ? undefined : repo.latestCheckpoint(opts.job);
  const { start, ...running } = latest ? await resumeJob(repo, codecs, opts, latest) : await startFresh(repo, opts);
  opts.onStart(start);
  return controlJob(repo, codecs, opts, running);
}

export interface RunningJob {
  pid: number;
  /** Settles when the job's process has ended (with its status when this process is its parent). */
  exited: Promise<WaitExit>;
  jobDir: string;
  /** Lets this process end while the job goes on. */
  release: () => void;
}

/** What controlling a running job needs: no command (it runs already), no start options. */
export type ControlOptions = Omit<RunOptions, 'command' | 'cwd' | 'fresh' | 'onStart'>;

/** Checkpoints a running job every interval and serves its control socket, until it ends or opts.signal stops it. */
export async function controlJob(repo: Repository, codecs: Codecs, opts: ControlOptions, running: RunningJob): Promise<RunOutcome> {
  const { pid, exited, jobDir, release } = running;
  // A job that ended already (a command that ends at once) has nothing to track.
  const tracking = opts.tracking && isRunning(pid) ? await startTracking(pid, opts.onNotice) : undefined;
  let checkpointing = 0;
  const checkpoint = async (keepImagesDir?: string) => {
    checkpointing++;
    let cp: CheckpointRecord;
    try {
      cp = await takeCheckpoint(repo, codecs, opts.job, { keepImagesDir, tracking, verifyTracking: opts.verifyTracking });
    } finally {
      checkpointing--;
    }
    opts.onCheckpoint(cp);
    // The chunk index runs its commit added are merged once the caller has its answer,
    // while nothing waits (the next checkpoint merges what is left before its freeze).
    // Never during a checkpoint: the merge is synchronous and would stall its freeze.
    setImmediate(() => {
      if (checkpointing > 0 || !repo.isOpen) return;
      try {
        repo.compactChunkIndex();
      } catch (e) {
        opts.onNotice(`merging the chunk index after a checkpoint failed (the next checkpoint tries again): ${(e as Error).message}`);
      }
    });
    return cp;
  };
  // `crinc stop` asks through the control socket: it ends supervision as a signal would.
  const stopAsked = new AbortController();
  let stopGraceMs = DEFAULT_STOP_GRACE_MS;
  let supervised: Promise<RunOutcome> | undefined;
  const socket = controlSocketPath(jobDir);
  const control = await serveControl(socket, async (req) => {
    if (req.op === 'checkpoint') return checkpoint(req.keepImagesDir);
    if (req.op === 'status') return jobStatus(repo, opts.job, true, tracking ?? null);
    if (req.op === 'stop') {
      stopGraceMs = req.graceMs;
      if (!stopAsked.signal.aborted) stopAsked.abort(req.checkpoint ? 'checkpoint-and-stop' : 'stop');
      return stopAnswer(opts.job, await supervised!);
    }
    throw new ControlError(`unknown request "${(req as { op: string }).op}"`);
  });
  try {
    supervised = superviseJob(repo, { ...opts, signal: AbortSignal.any([opts.signal, stopAsked.signal]) }, pid, exited, checkpoint, () => stopGraceMs);
    const outcome = await supervised;
    if (outcome.reason === 'stopped' && outcome.jobStopped === null) release();
    return outcome;
  } finally {
    control.close();
    rmSync(socket, { force: true });
    tracking?.close();
  }
}

async function startFresh(repo: Repository, opts: RunOptions) {
  const started = await startJob(repo, opts);
  return { ...started, start: { how: 'started', pid: started.pid, freshRequested: opts.fresh } satisfies JobStart };
}

/**
 * The restore behind a resume (crinc run, or the daemon's run): refuses while the job's
 * process runs or when its checkpoints are of another command, and says what to do
 * when the restore fails. The caller must be a child subreaper to adopt the process.
 */
export async function restoreForResume(repo: Repository, codecs: Codecs, jobName: string, command: string[], checkpoint: CheckpointRecord): Promise<RestoreResult> {
  const job = repo.requireJob(jobName);
  if (job.pid !== null && isRunning(job.pid)) throw new JobExistsError(jobName, job.pid);
  if (JSON.stringify(job.command) !== JSON.stringify(command)) {
    throw new ResumeError(
      `job "${jobName}" has checkpoints of another command (${job.command.join(' ')}); ` +
        `resuming them would not run "${command.join(' ')}". Use another --job name, or --fresh to start this command anew`,
    );
  }
  try {
    return await restoreJob(repo, codecs, jobName, { id: checkpoint.id });
  } catch (e) {
    throw new ResumeError(
      `cannot resume job "${jobName}" from its checkpoint ${checkpoint.id}: ${(e as Error).message}\n` +
        `Its checkpoints and files are as they were. --fresh starts the command anew instead.`,
      { cause: e },
    );
  }
}

/**
 * Restores the job's newest checkpoint through the restore pipeline and adopts the
 * restored process: `criu restore -d` leaves it to the nearest subreaper, this process.
 */
async function resumeJob(repo: Repository, codecs: Codecs, opts: RunOptions, checkpoint: CheckpointRecord) {
  becomeChildSubreaper();
  const restore = await restoreForResume(repo, codecs, opts.job, opts.command, checkpoint);
  const { pid } = restore;
  const parent = procStat(pid)?.ppid;
  if (parent !== process.pid) {
    throw new ControllerError(`the restored job (pid ${pid}) is ${parent === undefined ? 'gone' : `a child of ${parent}`}, not a child of this controller: cannot watch it`);
  }
  repo.saveJob({ ...repo.requireJob(opts.job), controllerPid: process.pid, updatedAt: Date.now() });
  let poll: NodeJS.Timeout | undefined;
  const exited = new Promise<WaitExit>((resolve, reject) => {
    poll = setInterval(() => {
      const [r, status] = waitpidRaw(pid, WNOHANG);
      if (r === 0) return;
      clearInterval(poll);
      if (r !== pid) reject(new ControllerError(`waitpid(${pid}) failed with errno ${lastErrno()}: cannot tell how the restored job ended`));
      else resolve(decodeWaitStatus(status));
    }, RESTORED_EXIT_POLL_MS);
  });
  const release = () => clearInterval(poll);
  return { pid, exited, jobDir: repo.jobDir(opts.job), release, start: { how: 'restored', pid, restore } satisfies JobStart };
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
  opts: ControlOptions,
  pid: number,
  exited: Promise<WaitExit>,
  checkpoint: () => Promise<CheckpointRecord>,
  stopGraceMs: () => number,
): Promise<RunOutcome> {
  let ended: WaitExit | undefined;
  let watchError: Error | undefined;
  const jobEnded = exited.then(
    (e) => (ended = e),
    (e: Error) => {
      watchError = e;
      return (ended = { code: null, signal: null });
    },
  );
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
  if (watchError) throw watchError;
  const markStopped = () => {
    const job = repo.requireJob(opts.job);
    // A restore may have given the job a new process meanwhile: only mark our own.
    if (job.pid === pid) repo.saveJob({ ...job, state: 'stopped', controllerPid: null, updatedAt: Date.now() });
  };
  const jobExited = async (): Promise<RunOutcome> => {
    await jobEnded;
    markStopped();
    return { pid, reason: 'job-exited', exitCode: ended?.code ?? null, exitSignal: ended?.signal ?? null, finalCheckpoint: null, jobStopped: null };
  };
  if (ended || !isRunning(pid)) return jobExited();
  const request = opts.signal.reason as StopRequest | undefined;
  if (request === 'checkpoint-and-stop') {
    // The job is stopped even when the final checkpoint fails: the scheduler ends it
    // anyway, and its earlier checkpoints stay restorable.
    let finalCheckpoint: CheckpointRecord | undefined;
    let failure: unknown;
    try {
      finalCheckpoint = await finalCheckpointOf(checkpoint);
    } catch (e) {
      failure = e;
    }
    // The job ended by itself before the final dump began: its own exit is the outcome.
    if (failure instanceof JobNotRunningError) return jobExited();
    // At once: after its final checkpoint the job must not run on and change its files.
    await stopProcess(pid, 0);
    await jobEnded;
    markStopped();
    if (failure) throw new FinalCheckpointError(opts.job, repo.latestCheckpoint(opts.job) ?? null, failure as Error);
    return { pid, reason: 'checkpointed', exitCode: null, exitSignal: null, finalCheckpoint: finalCheckpoint!, jobStopped: 'killed' };
  }
  let jobStopped: StopHow | null = null;
  if (request === 'stop' || opts.killOnExit) {
    jobStopped = await stopProcess(pid, request === 'stop' ? stopGraceMs() : 0);
    await jobEnded;
    markStopped();
  } else {
    repo.saveJob({ ...repo.requireJob(opts.job), controllerPid: null, updatedAt: Date.now() });
  }
  return { pid, reason: 'stopped', exitCode: null, exitSignal: null, finalCheckpoint: null, jobStopped };
}

/** The answer to `crinc stop` through the control socket, once supervision has ended. */
function stopAnswer(job: string, o: RunOutcome): StopResult {
  return { job, pid: o.pid, how: o.jobStopped ?? 'exited', checkpoint: o.finalCheckpoint };
}

/** One more checkpoint; waits for one already under way (`crinc checkpoint` through the controller). */
async function finalCheckpointOf(checkpoint: () => Promise<CheckpointRecord>): Promise<CheckpointRecord> {
  const deadline = Date.now() + FINAL_CHECKPOINT_BUSY_WAIT_MS;
  for (;;) {
    try {
      return await checkpoint();
    } catch (e) {
      if (!(e instanceof JobBusyError) || Date.now() > deadline) throw e;
    }
    await sleep(FINAL_CHECKPOINT_BUSY_POLL_MS);
  }
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
