// `crinc daemon`: one long-lived controller per store that checkpoints every job it
// manages on that job's own schedule, watches their processes, and answers the other
// crinc commands on <store>/daemon.sock (the control protocol of control.ts, with more
// requests). What it manages is in the store's index (managed_jobs), so a restarted
// daemon resumes every schedule and reports, rather than forgets, a job that died.
import { closeSync, ftruncateSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { collectGarbage } from '../store/gc.js';
import { scrubSlice } from './verify.js';
import { type CheckpointRecord, type ManagedJobRecord, Repository } from '../store/repository.js';
import { becomeChildSubreaper, decodeWaitStatus, tryLockExclusive, type WaitExit, waitpidRaw, WNOHANG } from '../sys/libc.js';
import { procStat } from '../sys/proc.js';
import { attachTarget, registerAttached } from './attach.js';
import { takeCheckpoint } from './checkpoint.js';
import { type Codecs, openCodecs } from './codecs.js';
import { askController, ControlError, controlSocketPath, serveControl } from './control.js';
import { ControllerError, JobExistsError } from './errors.js';
import { jobRows, type JobRow } from './jobs.js';
import type { Logger } from './log.js';
import { isRunning } from './procfs.js';
import { recoverStore } from './recovery.js';
import { restoreJob, type RestoreResult, type RestoreTarget } from './restore.js';
import { restoreForResume, type RunningJob, startJob, startTracking } from './run.js';
import { DaemonMetrics, METRICS_PATH } from './metrics.js';
import { type JobStatus, jobStatus } from './status.js';
import { stopProcess, type StopResult } from './stop.js';
import type { TrackingSession } from './tracking-session.js';

export const DAEMON_SOCKET = 'daemon.sock';
export const DAEMON_LOCK = 'daemon.lock';
/** How often the daemon looks whether the processes of jobs that are not its children still run. */
export const JOB_WATCH_MS = 1000;

export type DaemonRequest =
  | { op: 'jobs' }
  | { op: 'status'; job: string }
  | { op: 'checkpoint'; job: string; keepImagesDir?: string }
  | { op: 'run'; job: string; command: string[]; cwd: string; env: Record<string, string>; intervalMs: number; tracking: boolean; fresh: boolean }
  | { op: 'attach'; job: string; pid: number; intervalMs: number; tracking: boolean }
  | { op: 'restore'; job: string; target: RestoreTarget }
  | { op: 'stop'; job: string; checkpoint: boolean; graceMs: number };

/** The daemon's answer to run and attach. */
export interface Registered {
  job: string;
  pid: number;
  intervalMs: number;
  daemonPid: number;
  /** run: the checkpoint the job was resumed from, if it was. */
  resumedFrom?: number;
}

export class DaemonRunningError extends ControllerError {
  override name = 'DaemonRunningError';
  constructor(store: string, holder: string) {
    super(`a crinc daemon already serves the store ${store} (${holder}); one daemon per store. Stop it first (systemctl stop crinc, or kill its pid).`);
  }
}

export function daemonSocketPath(store: string): string {
  return join(store, DAEMON_SOCKET);
}

/** Asks the store's daemon; undefined when none runs (the caller works standalone). */
export function askDaemon(store: string, req: DaemonRequest): Promise<unknown | undefined> {
  return askController(daemonSocketPath(store), req);
}

interface ManagedJob {
  record: ManagedJobRecord;
  pid: number;
  tracking: TrackingSession | undefined;
  timer: NodeJS.Timeout | undefined;
  /** When its next checkpoint is due (ms since the epoch). */
  due: number;
  /** For the processes the daemon started: settles with their exit status. */
  exited: RunningJob['exited'] | undefined;
  /** Set by `crinc stop`: how the job ended, as its record will say. */
  stoppedAs?: string;
}

export interface DaemonOptions {
  log: Logger;
  /** Verification mode for every checkpoint the daemon takes (CRINC_VERIFY_TRACKING=1). */
  verifyTracking: boolean;
  /** How often to collect garbage (the space of checkpoints retention forgot); 0: never. */
  gcEveryMs: number;
  /** How often to re-read a slice of the store (verify.ts scrubSlice); 0: never. */
  scrubEveryMs: number;
  /** Serve Prometheus metrics there (metrics.ts); none: no endpoint. */
  metrics?: { host: string; port: number };
}

export class Daemon {
  private readonly jobs = new Map<string, ManagedJob>();
  /** Checkpoints run one at a time: they share the codec pool and the machine's cores. */
  private queue: Promise<unknown> = Promise.resolve();
  private server: Server | undefined;
  private watch: NodeJS.Timeout | undefined;
  private gcTimer: NodeJS.Timeout | undefined;
  private scrubTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private metrics: DaemonMetrics | undefined;

  private constructor(
    readonly store: string,
    private readonly repo: Repository,
    private readonly codecs: Codecs,
    private readonly lockFd: number,
    private readonly opts: DaemonOptions,
  ) {}

  static async start(store: string, opts: DaemonOptions): Promise<Daemon> {
    const repo = Repository.open(store, { create: true });
    const lockPath = join(store, DAEMON_LOCK);
    const lockFd = openSync(lockPath, 'a+', 0o600);
    if (!tryLockExclusive(lockFd)) {
      closeSync(lockFd);
      repo.close();
      throw new DaemonRunningError(store, readFileSync(lockPath, 'utf8').trim() || 'another process');
    }
    ftruncateSync(lockFd);
    writeFileSync(lockFd, `crinc daemon pid ${process.pid} since ${new Date().toISOString()}`);
    // Jobs that `criu restore -d` leaves behind, and jobs whose launcher died, become ours to reap.
    becomeChildSubreaper();
    const recovered = recoverStore(repo);
    if (recovered.packFiles.length + recovered.stagingDirs.length > 0) {
      opts.log.warn('removed leftovers of interrupted checkpoints, restores or GCs', null, { files: [...recovered.packFiles, ...recovered.stagingDirs].join(' ') });
    }
    const daemon = new Daemon(store, repo, await openCodecs(repo), lockFd, opts);
    if (opts.metrics) await daemon.serveMetrics(opts.metrics.host, opts.metrics.port);
    await daemon.resume();
    daemon.server = await serveControl<DaemonRequest>(daemonSocketPath(store), (req) => daemon.handle(req));
    daemon.server.ref();
    daemon.watch = setInterval(() => daemon.watchJobs(), JOB_WATCH_MS);
    if (opts.gcEveryMs > 0) daemon.gcTimer = setInterval(() => void daemon.collect(), opts.gcEveryMs);
    if (opts.scrubEveryMs > 0) daemon.scrubTimer = setInterval(() => void daemon.scrub(), opts.scrubEveryMs);
    opts.log.info('daemon started', null, {
      store, socket: daemonSocketPath(store), pid: process.pid, jobs: daemon.jobs.size,
      ...(opts.metrics ? { metrics: `http://${opts.metrics.host}:${opts.metrics.port}${METRICS_PATH}` } : {}),
    });
    return daemon;
  }

  private async serveMetrics(host: string, port: number): Promise<void> {
    const metrics = new DaemonMetrics({
      jobs: () => [...this.jobs.values()].map((m) => ({ job: m.record.job, tracking: m.tracking, lastSuccess: this.repo.latestCheckpoint(m.record.job) })),
      store: () => this.repo.figures(),
    });
    try {
      await metrics.listen(host, port);
    } catch (e) {
      await this.codecs.pool.close();
      this.repo.close();
      closeSync(this.lockFd);
      throw e;
    }
    this.metrics = metrics;
  }

  /** Stops scheduling, lets a checkpoint in progress finish, and leaves every job running. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.watch);
    clearInterval(this.gcTimer);
    clearInterval(this.scrubTimer);
    for (const m of this.jobs.values()) clearTimeout(m.timer);
    this.server?.close();
    this.metrics?.close();
    rmSync(daemonSocketPath(this.store), { force: true });
    await this.queue.catch(() => undefined);
    for (const [name, m] of this.jobs) {
      m.tracking?.close();
      const job = this.repo.findJob(name);
      if (job && job.controllerPid === process.pid) this.repo.saveJob({ ...job, controllerPid: null, updatedAt: Date.now() });
    }
    await this.codecs.pool.close();
    this.repo.close();
    closeSync(this.lockFd);
    this.opts.log.info('daemon stopped; its jobs keep running and their schedules resume when it starts again', null, { jobs: this.jobs.size });
  }

  // ---- requests -----------------------------------------------------------------------

  private async handle(req: DaemonRequest): Promise<unknown> {
    if (this.stopping) throw new ControlError('the daemon is stopping; try again once it has restarted');
    switch (req.op) {
      case 'jobs':
        return this.jobRows();
      case 'status':
        return this.status(req.job);
      case 'checkpoint':
        return this.checkpointNow(req.job, req.keepImagesDir);
      case 'run':
        return this.run(req);
      case 'attach':
        return this.attach(req);
      case 'restore':
        return this.restore(req.job, req.target);
      case 'stop':
        return this.stopJob(req.job, req.checkpoint, req.graceMs);
      default:
        throw new ControlError(`unknown request "${(req as { op: string }).op}"`);
    }
  }

  private jobRows(): JobRow[] {
    return jobRows(this.repo).map((r) => {
      const m = this.jobs.get(r.job);
      return r.managed && m ? { ...r, managed: { ...r.managed, nextCheckpointAt: new Date(m.due).toISOString() } } : r;
    });
  }

  private async status(job: string): Promise<JobStatus> {
    const m = this.jobs.get(job);
    if (m) return jobStatus(this.repo, job, true, m.tracking ?? null);
    this.repo.requireJob(job);
    // A job under its own `crinc run` answers for itself.
    return ((await askController(controlSocketPath(this.repo.jobDir(job)), { op: 'status' })) as JobStatus | undefined) ?? jobStatus(this.repo, job, false, null);
  }

  private async checkpointNow(job: string, keepImagesDir: string | undefined): Promise<CheckpointRecord> {
    const m = this.jobs.get(job);
    if (m) return this.checkpoint(m, keepImagesDir);
    this.repo.requireJob(job);
    const viaController = (await askController(controlSocketPath(this.repo.jobDir(job)), { op: 'checkpoint', keepImagesDir })) as CheckpointRecord | undefined;
    return viaController ?? this.exclusive(() => this.withRepo((repo) => takeCheckpoint(repo, this.codecs, job, { keepImagesDir })));
  }

  /** As crinc run in the foreground: resumes the job from its newest checkpoint when it has one (unless fresh), else starts it. */
  private async run(req: Extract<DaemonRequest, { op: 'run' }>): Promise<Registered> {
    this.refuseManaged(req.job);
    const latest = req.fresh ? undefined : this.repo.latestCheckpoint(req.job);
    if (latest) {
      // The restored process is the daemon's child (a subreaper): its watch reaps it.
      const result = await this.exclusive(() => this.withRepo((repo) => restoreForResume(repo, this.codecs, req.job, req.command, latest)));
      return { ...(await this.manage(req.job, 'run', { pid: result.pid }, req.intervalMs, req.tracking)), resumedFrom: latest.id };
    }
    const running = await startJob(this.repo, { job: req.job, command: req.command, cwd: req.cwd, env: req.env });
    running.release();
    return this.manage(req.job, 'run', running, req.intervalMs, req.tracking);
  }

  private async attach(req: Extract<DaemonRequest, { op: 'attach' }>): Promise<Registered> {
    const target = attachTarget(req.pid);
    this.refuseManaged(req.job);
    registerAttached(this.repo, req.job, req.pid, target);
    // Not the daemon's child: its watch finds the end.
    return this.manage(req.job, 'attach', { pid: req.pid }, req.intervalMs, req.tracking);
  }

  /**
   * Restores a job the daemon manages or managed, and manages it again on its schedule:
   * the restored process is the daemon's child (it is a subreaper), reaped by it.
   */
  private async restore(job: string, target: RestoreTarget): Promise<RestoreResult> {
    const record = this.repo.findManagedJob(job);
    if (!record) throw new ControlError(`job "${job}" is not managed by the daemon; restore it without one (this is a bug in the asking command)`);
    // restoreJob refuses while the job's process runs.
    const result = await this.exclusive(() => this.withRepo((repo) => restoreJob(repo, this.codecs, job, target)));
    const previous = this.jobs.get(job);
    if (previous) this.ended(previous, 'exited', 'ended before a restore');
    const now = Date.now();
    const resumed: ManagedJobRecord = { ...record, state: 'active', ended: null, updatedAt: now };
    this.repo.saveManagedJob(resumed);
    const saved = this.repo.requireJob(job);
    this.repo.saveJob({ ...saved, controllerPid: process.pid, updatedAt: now });
    await this.track(resumed, result.pid, undefined, now + record.intervalMs);
    this.opts.log.info('restored a managed job; its schedule goes on', job, { pid: result.pid, checkpoint: result.checkpoint.id });
    return result;
  }

  /**
   * `crinc stop` of a job: a final checkpoint if asked, then the process ended (stop.ts)
   * and reaped; its record says it was stopped. In the daemon's queue, so no scheduled
   * checkpoint runs into the kill. A job the daemon does not manage is its own
   * controller's to stop, or the asking command's (undefined).
   */
  private async stopJob(job: string, checkpoint: boolean, graceMs: number): Promise<StopResult | undefined> {
    const m = this.jobs.get(job);
    if (!m) {
      this.repo.requireJob(job);
      return (await askController(controlSocketPath(this.repo.jobDir(job)), { op: 'stop', checkpoint, graceMs })) as StopResult | undefined;
    }
    return this.exclusive(async () => {
      const cp = checkpoint ? await this.checkpointUnqueued(m) : null;
      m.stoppedAs = cp ? `stopped by crinc stop after checkpoint ${cp.id}` : 'stopped by crinc stop';
      const how = await stopProcess(m.pid, cp ? 0 : graceMs);
      if (m.exited) await m.exited;
      else this.reapIfChild(m.pid);
      this.ended(m, 'exited', m.stoppedAs);
      return { job, pid: m.pid, how, checkpoint: cp };
    });
  }

  private refuseManaged(job: string): void {
    const m = this.jobs.get(job);
    if (m) throw new JobExistsError(job, m.pid);
  }

  // ---- managed jobs -------------------------------------------------------------------

  /** running.exited: when the daemon is the process's parent through the launcher; otherwise its watch finds the end. */
  private async manage(job: string, origin: ManagedJobRecord['origin'], running: { pid: number; exited?: RunningJob['exited'] }, intervalMs: number, tracking: boolean): Promise<Registered> {
    const now = Date.now();
    const record: ManagedJobRecord = { job, origin, intervalMs, tracking, state: 'active', ended: null, registeredAt: now, updatedAt: now };
    this.repo.saveManagedJob(record);
    const m = await this.track(record, running.pid, running.exited, now + intervalMs);
    this.opts.log.info(`managing ${origin === 'run' ? 'a new' : 'an attached'} job`, job, { pid: running.pid, intervalMs, tracking: Boolean(m.tracking) });
    return { job, pid: running.pid, intervalMs, daemonPid: process.pid };
  }

  private async track(record: ManagedJobRecord, pid: number, exited: RunningJob['exited'] | undefined, due: number): Promise<ManagedJob> {
    const trackingSession = record.tracking
      ? await startTracking(pid, (msg) => this.opts.log.warn(msg, record.job, { pid }))
      : undefined;
    const m: ManagedJob = { record, pid, tracking: trackingSession, timer: undefined, due, exited };
    this.jobs.set(record.job, m);
    exited?.then((status) => this.ended(m, 'exited', m.stoppedAs ?? howEnded(status)));
    this.schedule(m);
    return m;
  }

  /** Takes up, after a restart, every job that was active: its schedule goes on; a job whose process died is marked dead. */
  private async resume(): Promise<void> {
    for (const record of this.repo.listManagedJobs()) {
      if (record.state !== 'active') continue;
      const job = this.repo.findJob(record.job);
      if (!job || job.pid === null || !isRunning(job.pid)) {
        this.markEnded(record, job?.pid ?? null, 'dead', 'its process ended while no daemon watched');
        continue;
      }
      this.repo.saveJob({ ...job, controllerPid: process.pid, updatedAt: Date.now() });
      const last = this.repo.latestCheckpoint(record.job);
      const due = Math.max(Date.now(), (last?.takenAt ?? record.registeredAt) + record.intervalMs);
      await this.track(record, job.pid, undefined, due);
      this.opts.log.info('resumed the schedule of a managed job', record.job, { pid: job.pid, intervalMs: record.intervalMs, nextCheckpointAt: new Date(due).toISOString() });
    }
  }

  private schedule(m: ManagedJob): void {
    if (this.stopping || !this.jobs.has(m.record.job)) return;
    clearTimeout(m.timer);
    m.timer = setTimeout(() => void this.periodic(m), Math.max(0, m.due - Date.now()));
  }

  /** One scheduled checkpoint; the next is due one interval after its moment (takenAt), as after a restart. */
  private async periodic(m: ManagedJob): Promise<void> {
    m.due = Date.now() + m.record.intervalMs;
    try {
      m.due = (await this.checkpoint(m)).takenAt + m.record.intervalMs;
    } catch (e) {
      // A job that ended meanwhile is the watch's to report; anything else is logged and retried next interval.
      if (isRunning(m.pid)) this.opts.log.error(`checkpoint failed: ${(e as Error).message}`, m.record.job, { error: (e as Error).name });
    }
    this.schedule(m);
  }

  private checkpoint(m: ManagedJob, keepImagesDir?: string): Promise<CheckpointRecord> {
    const taken = this.exclusive(() => this.checkpointUnqueued(m, keepImagesDir));
    // The chunk index runs its commit added are merged next, while nothing waits: the
    // next checkpoint need not (it merges what is left before its freeze anyway).
    void taken.then(() => this.exclusive(() => this.mergeIndexRuns(m.record.job)), () => undefined);
    return taken;
  }

  private async mergeIndexRuns(job: string): Promise<void> {
    try {
      await this.withRepo(async (repo) => repo.compactChunkIndex());
    } catch (e) {
      this.opts.log.error(`merging the chunk index after a checkpoint failed (the next checkpoint tries again): ${(e as Error).message}`, job, { error: (e as Error).name });
    }
  }

  /** A checkpoint of a managed job; only from inside the daemon's queue. */
  private async checkpointUnqueued(m: ManagedJob, keepImagesDir?: string): Promise<CheckpointRecord> {
    let cp: CheckpointRecord;
    try {
      cp = await this.withRepo((repo) =>
        takeCheckpoint(repo, this.codecs, m.record.job, { keepImagesDir, tracking: m.tracking, verifyTracking: this.opts.verifyTracking }),
      );
    } catch (e) {
      // A job that ended meanwhile did not fail a checkpoint: it has nothing to checkpoint.
      if (isRunning(m.pid)) this.metrics?.checkpointFailed(m.record.job, e);
      throw e;
    }
    this.metrics?.checkpointTaken(cp);
    this.opts.log.info('checkpoint', m.record.job, {
      id: cp.id, mode: cp.mode, imageBytes: cp.imageBytes, storedBytes: cp.storedBytes, durationMs: Math.round(cp.durationMs), freezeMs: Math.round(cp.freezeMs),
    });
    return cp;
  }

  /** GC between checkpoints (in the daemon's queue); checkpoints of other processes wait for its exclusive store lock. */
  private collect(): Promise<void> {
    return this.exclusive(async () => {
      try {
        const r = await this.withRepo((repo) => collectGarbage(repo, this.codecs.chunks, { dryRun: false }));
        // The daemon's own memory too: an operator (and npm run longrun) sees it stay flat.
        const memory = process.memoryUsage();
        this.opts.log.info('gc', null, {
          bytesFreed: r.bytesFreed, bytesBefore: r.bytesBefore, bytesAfter: r.bytesAfter, deadChunks: r.deadChunks, deadPacks: r.deadPacks, repackedPacks: r.repackedPacks,
          daemonRssBytes: memory.rss, daemonHeapUsedBytes: memory.heapUsed, daemonBuffersBytes: memory.arrayBuffers,
        });
      } catch (e) {
        this.opts.log.error(`gc failed: ${(e as Error).message}`, null, { error: (e as Error).name });
      }
    });
  }

  /** A bounded slice of the store re-read (in the daemon's queue): damage found is quarantined before a checkpoint builds on it. */
  private scrub(): Promise<void> {
    return this.exclusive(async () => {
      try {
        const r = await this.withRepo((repo) => scrubSlice(repo, this.codecs));
        const fields = { packs: r.packs, bytesRead: r.bytesRead, badChunks: r.badChunks, damagedCheckpoints: r.damaged.map((d) => d.id).join(' ') };
        if (r.badChunks > 0) this.opts.log.error('scrub found damaged chunks: quarantined; crinc list marks the damaged checkpoints', null, fields);
        else this.opts.log.info('scrub', null, fields);
      } catch (e) {
        this.opts.log.error(`scrub failed: ${(e as Error).message}`, null, { error: (e as Error).name });
      }
    });
  }

  /**
   * A Repository per operation: a long-lived one caches every chunk id it has seen, which
   * grows without bound over months, and would go stale when gc removes chunks.
   */
  private async withRepo<T>(fn: (repo: Repository) => Promise<T>): Promise<T> {
    const repo = Repository.open(this.store, { create: false });
    try {
      return await fn(repo);
    } finally {
      repo.close();
    }
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Jobs that are not the daemon's children: looked at every JOB_WATCH_MS; adopted ones are reaped here. */
  private watchJobs(): void {
    for (const m of this.jobs.values()) {
      if (m.exited) continue; // the child's exit event reports it
      const stat = procStat(m.pid);
      if (stat && stat.state !== 'Z' && stat.state !== 'X') continue;
      const status = this.reapIfChild(m.pid);
      this.ended(m, 'exited', status ? howEnded(status) : 'ended; its exit status went to its parent');
    }
  }

  /** Reaps pid when it is the daemon's zombie child (adopted as a subreaper); its exit status, else undefined. */
  private reapIfChild(pid: number): WaitExit | undefined {
    const stat = procStat(pid);
    if (stat?.state !== 'Z' || stat.ppid !== process.pid) return undefined;
    const [r, status] = waitpidRaw(pid, WNOHANG);
    return r === pid ? decodeWaitStatus(status) : undefined;
  }

  private ended(m: ManagedJob, state: 'exited' | 'dead', how: string): void {
    if (this.jobs.get(m.record.job) !== m) return;
    this.jobs.delete(m.record.job);
    clearTimeout(m.timer);
    m.tracking?.close();
    if (this.stopping) return;
    this.markEnded(m.record, m.pid, state, how);
  }

  private markEnded(record: ManagedJobRecord, pid: number | null, state: 'exited' | 'dead', how: string): void {
    const now = Date.now();
    this.repo.saveManagedJob({ ...record, state, ended: how, updatedAt: now });
    const job = this.repo.findJob(record.job);
    // A restore may have given the job a new process meanwhile: only mark our own.
    if (job && job.pid === pid) this.repo.saveJob({ ...job, state: 'stopped', controllerPid: null, updatedAt: now });
    this.opts.log.log(state === 'dead' ? 'warn' : 'info', state === 'dead' ? 'job is dead' : 'job exited', record.job, { pid, how });
  }
}

function howEnded(exit: WaitExit): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}
