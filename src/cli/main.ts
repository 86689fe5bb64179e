#!/usr/bin/env node
// crinc's command line: thin commands over the controller.
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { spawn } from 'node:child_process';
import { accessSync, appendFileSync, closeSync, constants as fsConstants, readFileSync, type Stats, statSync, writeFileSync } from 'node:fs';
import { asOperatingError } from '../errors.js';
import { constants as osConstants } from 'node:os';
import { join, resolve } from 'node:path';
import { packageRoot } from '../sys/package-root.js';
import { criuVersion } from '../criu/criu.js';
import { takeCheckpoint } from '../controller/checkpoint.js';
import { openCodecs } from '../controller/codecs.js';
import { attachedJob, attachTarget, jobNameFor, registerAttached } from '../controller/attach.js';
import { askController, controlSocketPath } from '../controller/control.js';
import { askDaemon, Daemon, type Registered } from '../controller/daemon.js';
import { type JobRow, jobRows } from '../controller/jobs.js';
import { Logger } from '../controller/log.js';
import { CheckpointCancelledError, NoCheckpointError, NotRootError, StorePathError, StoreReadOnlyError } from '../controller/errors.js';
import { exportCheckpoint } from '../controller/materialize.js';
import { resolveCheckpoint, restoreJob, type RestoreResult, type RestoreTarget } from '../controller/restore.js';
import { type ControlOptions, controlJob, type JobStart, runJob, type RunOutcome, type StopRequest } from '../controller/run.js';
import { type JobStatus, jobStatus } from '../controller/status.js';
import { type StopResult, stopJobStandalone } from '../controller/stop.js';
import { parseDuration, parseTimeSpec } from '../controller/time-spec.js';
import { DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT, METRICS_PATH, parseMetricsAddress } from '../controller/metrics.js';
import { pruneJob } from '../controller/retention.js';
import { recoverStore } from '../controller/recovery.js';
import { verifyStore } from '../controller/verify.js';
import { repairStore } from '../controller/repair.js';
import { collectGarbage } from '../store/gc.js';
import { type CheckpointRecord, Repository } from '../store/repository.js';
import { DEFAULT_CACHE_ROOT, isS3Url, openS3Store } from '../store/s3.js';
import { formatBytes, formatCheckpoint, formatDuration, printStatus, printTable } from './format.js';
import { withProgress } from './progress.js';
import { addRetentionOptions, RETENTION_HELP, type RetentionFlags, retentionFromOptions } from './retention-options.js';

export const DEFAULT_STORE = '/var/lib/crinc';
const DEFAULT_INTERVAL = '5m';
/** How often the daemon collects garbage by default: forgotten checkpoints' space comes back within the hour. */
const DAEMON_GC_EVERY = '1h';
/** How often the daemon re-reads a slice of the store by default: damage is found (and quarantined) within hours. */
const DAEMON_SCRUB_EVERY = '1h';
/** Debug aid: keep each checkpoint's CRIU images, as CRIU wrote them, in $CRINC_KEEP_IMAGES/<id>/. */
const KEEP_IMAGES_ENV = 'CRINC_KEEP_IMAGES';
/** Verification mode: every page hashed anyway; a page tracking called clean that changed fails the checkpoint. */
const VERIFY_TRACKING_ENV = 'CRINC_VERIFY_TRACKING';
/**
 * `crinc run`'s exit code after SIGTERM or SIGUSR1: the final checkpoint is committed and
 * the job stopped; running the same command again resumes it (a batch script requeues
 * itself on it). EX_TEMPFAIL of sysexits.h: "try again later".
 */
export const EXIT_CHECKPOINTED = 75;
/** The shell's convention for a job killed by a signal: 128 + its number. */
const SIGNALED_EXIT_BASE = 128;
/** A command that Ctrl-C interrupted (cancelled, or finished anyway): as if SIGINT had ended it. */
const INTERRUPTED_EXIT = SIGNALED_EXIT_BASE + osConstants.signals.SIGINT;

/** Ctrl-C on a command that may stop at any point (crash-safe): says what it leaves, exits at once. */
function cancelOnInterrupt(leaves: string): void {
  process.once('SIGINT', () => {
    console.error(`crinc: cancelled; ${leaves}`);
    process.exit(INTERRUPTED_EXIT);
  });
}

/** Ctrl-C on a command that must not stop halfway: it says so and goes on; the returned probe tells whether it came. */
function finishOnInterrupt(why: string): () => boolean {
  let interrupted = false;
  process.on('SIGINT', () => {
    if (!interrupted) console.error(`crinc: Ctrl-C: ${why}; waiting for it`);
    interrupted = true;
  });
  return () => interrupted;
}


/** Set in the detached process that serves a `restore --lazy` (the fd of its result pipe). */
const LAZY_SERVER_ENV = 'CRINC_LAZY_SERVER';

/**
 * `restore --lazy`: the same command runs again detached; it restores, reports its result
 * on a pipe, and stays to serve pages. This process prints that result and returns.
 */
async function detachLazyRestore(json: boolean): Promise<void> {
  const child = spawn(process.execPath, process.argv.slice(1), {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: { ...process.env, [LAZY_SERVER_ENV]: '3' },
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let report = '';
  child.stdio[3]!.on('data', (d: Buffer) => (report += d.toString()));
  const ended = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const reported = new Promise<void>((resolve) => child.stdio[3]!.once('end', () => resolve()));
  await Promise.race([reported, ended]);
  if (!report.endsWith('\n')) {
    const code = await ended;
    await new Promise((resolve) => setImmediate(resolve));
    process.stderr.write(stderr);
    process.exitCode = code ?? 1;
    return;
  }
  child.unref();
  (child.stderr as NodeJS.ReadableStream & { destroy(): void }).destroy();
  const r = JSON.parse(report) as { pid: number; checkpoint: number; takenAt: string; rolledBack: string[]; preRestore: number | null; job: string; server: number };
  if (json) {
    console.log(JSON.stringify(r));
  } else {
    console.log(`restored ${r.job} from checkpoint ${r.checkpoint} (taken ${r.takenAt}): pid ${r.pid}, running; pages arrive from crinc process ${r.server}`);
    for (const f of r.rolledBack) console.log(`  rolled back ${f}`);
    if (r.preRestore !== null) console.log(`  their newer content is kept as snapshot ${r.preRestore} (crinc list ${r.job})`);
  }
}

/** In the detached process: report the running job, then serve its pages until all are in. */
async function serveLazyRestore(repo: Repository, job: string, r: RestoreResult): Promise<void> {
  const report = { job, pid: r.pid, checkpoint: r.checkpoint.id, takenAt: new Date(r.checkpoint.takenAt).toISOString(), rolledBack: r.rolledBack, preRestore: r.preRestore?.id ?? null, server: process.pid };
  const fd = Number(process.env[LAZY_SERVER_ENV]);
  writeFileSync(fd, `${JSON.stringify(report)}\n`);
  closeSync(fd);
  // Nobody reads this process's stderr any more: what happens now goes to the job's directory.
  process.stderr.on('error', () => undefined);
  const log = join(repo.jobDir(job), 'lazy-restore.log');
  try {
    await r.allPagesIn;
    appendFileSync(log, `${new Date().toISOString()} checkpoint ${r.checkpoint.id}: every page is in (pid ${r.pid})\n`);
  } catch (e) {
    appendFileSync(log, `${new Date().toISOString()} checkpoint ${r.checkpoint.id}: lazy restore failed: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
  repo.close();
}

function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new NotRootError();
}

interface StoreOptions {
  store?: string;
  cache?: string;
}

/**
 * What a command does to the store: create it if missing, write to it, or only read it.
 * Reading works on a store on a read-only file system (a snapshot); writing says why not.
 */
type StoreAccess = 'create' | 'write' | 'read';

/** Whether dir is on a read-only file system (its mount, or a read-only bind of it). */
function onReadOnlyFileSystem(dir: string): boolean {
  try {
    accessSync(dir, fsConstants.W_OK);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EROFS';
  }
}

/** A store directory, or an S3 store (s3://bucket/prefix) with its local index in the cache. */
/** The store this command opened: a damaged or missing chunk that ends the command is quarantined in it. */
let openedRepo: Repository | undefined;

async function openStore(o: StoreOptions, access: StoreAccess): Promise<Repository> {
  requireRoot();
  const spec = o.store ?? process.env.CRINC_STORE ?? DEFAULT_STORE;
  const create = access === 'create';
  let repo: Repository;
  if (!isS3Url(spec)) {
    if (o.cache !== undefined) throw new InvalidArgumentError(`--cache is for s3:// stores; the store directory ${spec} keeps its own index`);
    openedStore = resolve(spec);
    requireStoreDirectory(openedStore);
    const readOnly = onReadOnlyFileSystem(openedStore);
    if (readOnly && access !== 'read') throw new StoreReadOnlyError(openedStore, commandName());
    repo = Repository.open(openedStore, { create, readOnly });
    // Nothing to recover in a store that cannot have changed since it was made read-only.
    if (readOnly) return repo;
  } else {
    const cache = o.cache ?? process.env.CRINC_CACHE;
    repo = await openS3Store(spec, {
      create,
      cacheDir: cache === undefined ? undefined : resolve(cache),
      onWarning: (m) => console.error(`crinc: warning: ${m}`),
    });
  }
  const recovered = recoverStore(repo);
  const count = recovered.packFiles.length + recovered.stagingDirs.length;
  if (count > 0) console.error(`crinc: removed ${count} leftover file(s) of interrupted checkpoints, restores or GCs: ${[...recovered.packFiles, ...recovered.stagingDirs].join(', ')}`);
  if (recovered.checkpoints.length > 0) console.error(`crinc: indexed checkpoint(s) ${recovered.checkpoints.join(', ')}, committed by a crinc that was killed before it could index them`);
  openedRepo = repo;
  return repo;
}

/** The crinc command being run, for messages. */
function commandName(): string {
  return process.argv[2] ?? 'this command';
}

/** The store directory the command works on, named in messages about files inside it. */
let openedStore: string | undefined;

/** A store path that exists must be a directory (a file there is no store, nor "no store"). */
function requireStoreDirectory(dir: string): void {
  let st: Stats;
  try {
    st = statSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // not made yet: Repository.open says so or creates it
    throw e;
  }
  if (!st.isDirectory()) throw new StorePathError(dir);
}

const storeOption = () =>
  new Option('--store <dir|s3-url>', `store directory, or s3://BUCKET/PREFIX for a store in S3 (default: $CRINC_STORE or ${DEFAULT_STORE})`);
const cacheOption = () =>
  new Option('--cache <dir>', `with an s3:// store: directory of its local index, job logs and locks (default: $CRINC_CACHE or ${DEFAULT_CACHE_ROOT}/<hash of the URL>)`);

function durationArg(v: string): number {
  try {
    return parseDuration(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

/**
 * The shortest interval between checkpoints: each one freezes the job and dumps it, and
 * one every few milliseconds would keep the job frozen most of the time.
 */
export const MIN_INTERVAL_MS = 500;

function intervalArg(v: string): number {
  if (/^\s*\d+(\.\d+)?\s*$/.test(v)) throw new InvalidArgumentError(`"${v}" has no unit: write it like 30s, 5m or 1h (at least ${MIN_INTERVAL_MS} ms)`);
  const ms = durationArg(v);
  if (ms < MIN_INTERVAL_MS) throw new InvalidArgumentError(`"${v}" is too short: checkpoints must be at least ${MIN_INTERVAL_MS} ms apart (each one freezes the job)`);
  return ms;
}

function durationOrZeroArg(v: string): number {
  return v.trim() === '0' ? 0 : durationArg(v);
}

function intArg(v: string): number {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`"${v}" is not a whole number`);
  return Number(v);
}

export function buildProgram(): Command {
  const program = new Command('crinc')
    .description('Incremental checkpoints of Linux processes: CRIU dumps into a content-addressed store, restore at any stored moment.')
    .version(JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')).version as string)
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('daemon')
    .description('serve the store: checkpoint every managed job on its own schedule, watch their processes, collect garbage, answer the other crinc commands on <store>/daemon.sock')
    .addOption(new Option('--gc-every <duration>', 'run crinc gc this often ("0" for never)').default(DAEMON_GC_EVERY).argParser(durationOrZeroArg))
    .addOption(new Option('--scrub-every <duration>', 're-read and check a slice (1 GiB) of the packs this often, quarantining damage ("0" for never)').default(DAEMON_SCRUB_EVERY).argParser(durationOrZeroArg))
    .addOption(new Option('--metrics [host:port]', `serve Prometheus metrics at http://HOST:PORT${METRICS_PATH} (default ${DEFAULT_METRICS_HOST}:${DEFAULT_METRICS_PORT}: this machine only)`))
    .addOption(storeOption())
    .addHelpText('after', `
Examples:
  crinc daemon --store /var/lib/crinc
  crinc daemon --gc-every 10m
  crinc daemon --metrics                      (Prometheus: http://${DEFAULT_METRICS_HOST}:${DEFAULT_METRICS_PORT}${METRICS_PATH}; metric names in the README)
  systemctl start crinc            (examples/systemd/crinc.service)

While it runs, crinc run and crinc attach hand their job to it and return; crinc jobs,
status and checkpoint ask it. Jobs keep running when it stops; when it starts again it
resumes their schedules and marks jobs whose process died meanwhile "dead".
Logs: one JSON object per line on stderr (time, level, job, msg, fields); readable
lines when stderr is a terminal.`)
    .action(async (o: { gcEvery: number | string; scrubEvery: number | string; metrics?: string | true; store?: string }) => {
      requireRoot();
      criuVersion();
      const gcEveryMs = typeof o.gcEvery === 'string' ? parseDuration(o.gcEvery) : o.gcEvery;
      const scrubEveryMs = typeof o.scrubEvery === 'string' ? parseDuration(o.scrubEvery) : o.scrubEvery;
      const spec = o.store ?? process.env.CRINC_STORE ?? DEFAULT_STORE;
      if (isS3Url(spec)) {
        throw new InvalidArgumentError(`crinc daemon serves a store directory, and ${spec} is an S3 store: run each job with crinc run --foreground --store ${spec} instead`);
      }
      openedStore = resolve(spec);
      requireStoreDirectory(openedStore);
      if (onReadOnlyFileSystem(openedStore)) throw new StoreReadOnlyError(openedStore, 'daemon');
      const metrics = o.metrics === undefined ? undefined : o.metrics === true ? { host: DEFAULT_METRICS_HOST, port: DEFAULT_METRICS_PORT } : parseMetricsAddress(o.metrics);
      const daemon = await Daemon.start(openedStore, { log: new Logger(), verifyTracking: process.env[VERIFY_TRACKING_ENV] === '1', gcEveryMs, scrubEveryMs, metrics });
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await daemon.stop();
    });

  addRetentionOptions(program
    .command('run'))
    .description('start CMD as a job (own PID namespace, detached from the terminal, output in the job\'s log files) and checkpoint it every interval')
    .addOption(new Option('--job <name>', 'job name (default: the command\'s base name)'))
    .addOption(new Option('--interval <duration>', `time between checkpoints, e.g. 30s, 5m, 1h (at least ${MIN_INTERVAL_MS} ms)`).default(DEFAULT_INTERVAL).argParser(intervalArg))
    .option('--kill-on-exit', 'when Ctrl-C (SIGINT) stops crinc, kill the job too instead of leaving it running')
    .option('--fresh', 'start CMD anew even when the job has checkpoints (they stay in the store)')
    .option('--foreground', 'stay the job\'s controller in the foreground even when a daemon serves the store (batch scripts: the job step must last as long as the job)')
    .option('--no-tracking', 'no dirty tracking: every checkpoint reads and hashes all pages while the job is frozen (no pre-copy either)')
    .addOption(storeOption())
    .addOption(cacheOption())
    .argument('<cmd...>', 'the command and its arguments (put them after --)')
    .addHelpText('after', `
Examples:
  crinc run --job sim --interval 10m -- ./simulate --steps 1000000
  crinc run --job web --interval 30s --kill-on-exit -- python3 -m http.server
  crinc run --job sim --fresh -- ./simulate --steps 1000000    (ignore sim's checkpoints)
  crinc run --store s3://checkpoints/sim --job sim -- ./simulate    (store in S3: see AWS_* variables)
  crinc run --job sim --interval 1m --keep-last 10 --keep-hourly 24 -- ./simulate

When the job has a checkpoint, crinc run resumes it from the newest one instead of
starting CMD (same command required; --fresh starts anew). It says which on stdout.
The job's stdout and stderr go to <store>/jobs/<job>/{stdout,stderr}.log (an S3 store: <cache>/jobs/…).

Signals:
  SIGTERM, SIGUSR1  final checkpoint, then the job is killed; exit code ${EXIT_CHECKPOINTED}
                    (Slurm: --signal=B:USR1@N, preemption, scontrol requeue)
  SIGINT (Ctrl-C)   stop checkpointing, leave the job running (see --kill-on-exit); exit 0

Exit codes:
  ${EXIT_CHECKPOINTED}         checkpointed and stopped: run the same command again to resume
  job's own  the job ended by itself: its exit code, or 128+N when signal N killed it
  0          stopped by Ctrl-C
  1          crinc failed (the message says why; e.g. resume or final checkpoint failed)

When a daemon serves the store (crinc daemon) and --foreground is not given, the daemon
starts or resumes the job (with this command's environment and working directory) and
checkpoints it; crinc run prints the job's pid and returns.
${RETENTION_HELP}`)
    .action(async (cmd: string[], o: RetentionFlags & { job?: string; interval: number | string; killOnExit?: boolean; fresh?: boolean; foreground?: boolean; tracking: boolean; store?: string; cache?: string }) => {
      // Installed first, so that no early signal is lost.
      const stop = stopOnSignals({ SIGINT: 'leave-running', SIGTERM: 'checkpoint-and-stop', SIGUSR1: 'checkpoint-and-stop' });
      const repo = await openStore(o, 'create');
      criuVersion();
      const job = o.job ?? jobNameFor(cmd);
      const retention = retentionFromOptions(o);
      if (retention) repo.setJobRetention(job, retention);
      const intervalMs = typeof o.interval === 'string' ? parseDuration(o.interval) : o.interval;
      const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));
      const registered = o.foreground
        ? undefined
        : ((await askDaemon(repo.dir, { op: 'run', job, command: cmd, cwd: process.cwd(), env, intervalMs, tracking: o.tracking, fresh: Boolean(o.fresh) })) as Registered | undefined);
      if (registered) {
        if (o.killOnExit) console.error('crinc: --kill-on-exit has no effect on a job the daemon manages');
        printRegistered(registered);
      } else {
        const outcome = await runJob(repo, await openCodecs(repo), {
          ...foregroundOptions(job, intervalMs, o.tracking, Boolean(o.killOnExit), stop.signal),
          command: cmd,
          cwd: process.cwd(),
          fresh: Boolean(o.fresh),
          onStart: (start) => printStart(job, start),
        });
        printOutcome(job, outcome);
      }
      repo.close();
    });

  addRetentionOptions(program
    .command('attach'))
    .description('checkpoint an already running process tree (not started by crinc) every interval, as a job')
    .argument('<pid>', 'the PID of the tree\'s root: a session leader without a controlling terminal', intArg)
    .addOption(new Option('--job <name>', 'job name (default: the program\'s base name)'))
    .addOption(new Option('--interval <duration>', `time between checkpoints, e.g. 30s, 5m, 1h (at least ${MIN_INTERVAL_MS} ms)`).default(DEFAULT_INTERVAL).argParser(intervalArg))
    .option('--no-tracking', 'no dirty tracking: every checkpoint reads and hashes all pages while the job is frozen (no pre-copy either)')
    .addOption(storeOption())
    .addHelpText('after', `
Examples:
  setsid ./simulate </dev/null >sim.log 2>&1 &
  crinc attach $! --job sim --interval 10m

CRIU restores every process with its old PID and its session: the root must lead its
own session (setsid) and have no controlling terminal, and a restore needs its PIDs free
(the old process ended and was reaped by its parent).
With a daemon (crinc daemon) the job is handed to it and crinc attach returns; otherwise
it stays in the foreground until Ctrl-C (the process goes on) or the process ends.
${RETENTION_HELP}`)
    .action(async (pid: number, o: RetentionFlags & { job?: string; interval: number | string; tracking: boolean; store?: string }) => {
      // Installed first, so that no early signal is lost: the attached process goes on.
      const stop = stopOnSignals({ SIGINT: 'leave-running', SIGTERM: 'leave-running' });
      const repo = await openStore(o, 'create');
      criuVersion();
      const intervalMs = typeof o.interval === 'string' ? parseDuration(o.interval) : o.interval;
      const target = attachTarget(pid);
      const job = o.job ?? jobNameFor(target.command);
      const retention = retentionFromOptions(o);
      if (retention) repo.setJobRetention(job, retention);
      const registered = (await askDaemon(repo.dir, { op: 'attach', job, pid, intervalMs, tracking: o.tracking })) as Registered | undefined;
      if (registered) {
        printRegistered(registered);
      } else {
        const jobDir = registerAttached(repo, job, pid, target);
        console.log(`attached to pid ${pid} as job ${job}; a checkpoint every ${formatDuration(intervalMs)}`);
        const outcome = await controlJob(repo, await openCodecs(repo), foregroundOptions(job, intervalMs, o.tracking, false, stop.signal), attachedJob(pid, jobDir));
        printOutcome(job, outcome);
      }
      repo.close();
    });

  addRetentionOptions(program
    .command('checkpoint')
    .description('take one checkpoint of a job now; the job keeps running')
    .argument('<job>', 'job name')
    .option('--json', 'print the checkpoint as JSON'))
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', `\nExamples:\n  crinc checkpoint sim\n  crinc checkpoint sim --keep-last 5     (and from now on after each checkpoint of sim)\n${RETENTION_HELP}`)
    .action(async (job: string, o: RetentionFlags & { json?: boolean; store?: string; cache?: string }) => {
      const repo = await openStore(o, 'write');
      criuVersion();
      repo.requireJob(job);
      const retention = retentionFromOptions(o);
      if (retention) repo.setJobRetention(job, retention);
      const keepImagesDir = process.env[KEEP_IMAGES_ENV] ? resolve(process.env[KEEP_IMAGES_ENV]) : undefined;
      // Ctrl-C: a controller's checkpoint cannot be called back, so crinc waits and says what became of it;
      // a standalone one is cancelled at the freeze (CRIU fails the dump and thaws the job), never left running.
      const cancel = new AbortController();
      let viaController = true;
      process.on('SIGINT', () => {
        if (cancel.signal.aborted) return;
        cancel.abort(new CheckpointCancelledError(job));
        console.error(viaController
          ? "crinc: Ctrl-C: the checkpoint goes on in the job's controller and cannot be called back from here; waiting for it"
          : 'crinc: Ctrl-C: cancelling the checkpoint; waiting for CRIU to thaw the job');
      });
      // The daemon or a running controller takes it, so that its dirty tracking stays continuous.
      let cp =
        ((await askDaemon(repo.dir, { op: 'checkpoint', job, keepImagesDir })) as CheckpointRecord | undefined) ??
        ((await askController(controlSocketPath(repo.jobDir(job)), { op: 'checkpoint', keepImagesDir })) as CheckpointRecord | undefined);
      if (cp && cancel.signal.aborted) console.error(`crinc: interrupted; the checkpoint went on in the controller and was committed as ${cp.id}`);
      if (!cp && !cancel.signal.aborted) {
        viaController = false;
        try {
          cp = await withProgress(`checkpoint of ${job}`, async (onProgress) => takeCheckpoint(repo, await openCodecs(repo), job, { keepImagesDir, onProgress, signal: cancel.signal }));
        } catch (e) {
          if (e !== cancel.signal.reason) throw e;
          console.error('crinc: cancelled; the job was thawed and goes on, and no checkpoint was taken');
        }
        if (cp && cancel.signal.aborted) console.error(`crinc: Ctrl-C came after the job was thawed; the checkpoint was committed as ${cp.id}`);
      }
      if (cp) console.log(o.json ? JSON.stringify(checkpointJson(cp)) : `checkpoint ${cp.id} of ${cp.job}: ${formatCheckpoint(cp)}`);
      if (cancel.signal.aborted) process.exitCode = INTERRUPTED_EXIT;
      repo.close();
    });

  program
    .command('stop')
    .description("stop a job's process for good: SIGTERM, then SIGKILL after the grace time (a job is its PID namespace's init, which a plain kill does not end); with --checkpoint, a final checkpoint first")
    .argument('<job>', 'job name')
    .option('--checkpoint', 'take a final checkpoint first, then end the job at once (it resumes from there: crinc run, crinc restore)')
    .addOption(new Option('--grace <duration>', 'how long the job may take to end on SIGTERM before SIGKILL ("0": SIGKILL at once)').default('10s').argParser(durationOrZeroArg))
    .option('--json', 'print {"job", "pid", "how", "checkpoint"} as JSON')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', `
Examples:
  crinc stop sim
  crinc stop sim --checkpoint       (then crinc run of the same command resumes it)
  crinc stop sim --grace 0          (SIGKILL at once)

The job's controller (crinc run, crinc attach, the daemon) stops it when one runs: a
crinc run in the foreground then ends as after SIGTERM (with --checkpoint: exit code ${EXIT_CHECKPOINTED}).`)
    .action(async (job: string, o: { checkpoint?: boolean; grace: number | string; json?: boolean; store?: string; cache?: string }) => {
      const interrupted = finishOnInterrupt('stopping the job goes on');
      const repo = await openStore(o, 'write');
      repo.requireJob(job);
      const req = { checkpoint: Boolean(o.checkpoint), graceMs: typeof o.grace === 'string' ? parseDuration(o.grace) : o.grace };
      if (req.checkpoint) criuVersion();
      const r =
        ((await askDaemon(repo.dir, { op: 'stop', job, ...req })) as StopResult | undefined) ??
        ((await askController(controlSocketPath(repo.jobDir(job)), { op: 'stop', ...req })) as StopResult | undefined) ??
        (await stopJobStandalone(repo, await openCodecs(repo), job, req));
      if (o.json) {
        console.log(JSON.stringify({ ...r, checkpoint: r.checkpoint ? checkpointJson(r.checkpoint) : null }));
      } else {
        if (r.checkpoint) console.log(`checkpoint ${r.checkpoint.id} of ${job}: ${formatCheckpoint(r.checkpoint)}`);
        if (r.how === 'exited') console.log(`job ${job} was not running (its process ${r.pid || '-'} had ended); nothing to stop`);
        else console.log(`stopped job ${job} (pid ${r.pid}): ${r.how === 'terminated' ? 'it ended on SIGTERM' : 'killed (SIGKILL)'}` + (r.checkpoint ? `; resume it from checkpoint ${r.checkpoint.id} with crinc run or crinc restore ${job}` : ''));
      }
      if (interrupted()) {
        console.error(`crinc: interrupted; job ${job} was stopped all the same`);
        process.exitCode = INTERRUPTED_EXIT;
      }
      repo.close();
    });

  program
    .command('list')
    .description('list checkpoints (and pre-restore file snapshots), oldest first')
    .argument('[job]', 'only this job')
    .option('--json', 'print a JSON array')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', '\nExamples:\n  crinc list\n  crinc list sim --json')
    .action(async (job: string | undefined, o: { json?: boolean; store?: string; cache?: string }) => {
      const repo = await openStore(o, 'read');
      if (job) repo.requireJob(job);
      const cps = repo.listCheckpoints(job);
      const damaged = repo.damagedCheckpoints();
      if (o.json) {
        console.log(JSON.stringify(cps.map((c) => ({ ...checkpointJson(c), damaged: damaged.get(c.id) ?? null }))));
      } else if (cps.length === 0) {
        console.log(job ? `job ${job} has no checkpoints yet` : 'no checkpoints yet');
      } else {
        printTable(
          ['ID', 'JOB', 'TAKEN AT', 'KIND', 'MODE', 'IMAGE', 'NEW', 'DEDUP', 'DURATION', 'FROZEN'],
          cps.map((c) => [
            damaged.has(c.id) ? `${c.id} DAMAGED` : String(c.id), c.job, new Date(c.takenAt).toISOString(), c.kind, c.mode,
            formatBytes(c.imageBytes), formatBytes(c.storedBytes),
            c.storedBytes > 0 ? `${(c.imageBytes / c.storedBytes).toFixed(1)}x` : '∞',
            `${Math.round(c.durationMs)} ms`, `${Math.round(c.freezeMs)} ms`,
          ]),
        );
      }
      repo.close();
    });

  program
    .command('restore')
    .description('restore a job as it was at a checkpoint; it runs detached, and its files are put back as they were (their newer content is kept in the store)')
    .argument('<job>', 'job name')
    .addOption(new Option('--at <time>', 'newest checkpoint taken at or before TIME: ISO 8601, "now", "90s ago", "10m ago"').conflicts('id'))
    .addOption(new Option('--id <id>', 'this checkpoint id (see crinc list)').argParser(intArg))
    .option('--json', 'print {"pid":…, "checkpoint":…} as JSON')
    .option(
      '--lazy',
      'return as soon as the job runs; its pages keep arriving, on demand and in the background, from a crinc process ' +
        'that stays behind until every page is in (pid in the output, log in the job\'s directory). If that process dies ' +
        'first, the job is killed (SIGBUS) at its next access to a page not yet in; the checkpoint stays intact: restore it again',
    )
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', `
Pages come from the store through CRIU's lazy-pages daemon; without --lazy the command
returns once every page is in.

Examples:
  crinc restore sim                      the newest checkpoint
  crinc restore sim --lazy               running at once, pages follow
  crinc restore sim --at "10m ago"
  crinc restore sim --at 2026-11-28T14:00:00Z
  crinc restore sim --id 42
  crinc restore sim --store s3://checkpoints/sim    on any node that reaches the bucket

A job the daemon manages is restored by the daemon, which then checkpoints it again on
its schedule.`)
    .action(async (job: string, o: { at?: string; id?: number; json?: boolean; lazy?: boolean; store?: string; cache?: string }) => {
      if (o.lazy && process.env[LAZY_SERVER_ENV] === undefined) {
        await detachLazyRestore(o.json === true);
        return;
      }
      const interrupted = finishOnInterrupt('the restore goes on: stopped halfway, it would leave the job\'s files put back without the job');
      const repo = await openStore(o, 'read');
      let target: RestoreTarget;
      if (o.id !== undefined) target = { id: o.id };
      else target = { at: parseTimeSpec(o.at ?? 'now') };
      criuVersion();
      // A job the daemon manages comes back under it: its schedule goes on, and the daemon reaps the process.
      const viaDaemon = repo.findManagedJob(job) ? ((await askDaemon(repo.dir, { op: 'restore', job, target })) as RestoreResult | undefined) : undefined;
      const r = viaDaemon ?? (await withProgress(`restore of ${job}`, async (onProgress) => restoreJob(repo, await openCodecs(repo), job, target, { onProgress, lazy: o.lazy })));
      if (process.env[LAZY_SERVER_ENV] !== undefined) {
        await serveLazyRestore(repo, job, r);
        return;
      }
      if (o.json) {
        console.log(JSON.stringify({ pid: r.pid, checkpoint: r.checkpoint.id, takenAt: new Date(r.checkpoint.takenAt).toISOString(), rolledBack: r.rolledBack, preRestore: r.preRestore?.id ?? null }));
      } else {
        console.log(`restored ${job} from checkpoint ${r.checkpoint.id} (taken ${new Date(r.checkpoint.takenAt).toISOString()}): pid ${r.pid}`);
        for (const f of r.rolledBack) console.log(`  rolled back ${f}`);
        if (r.preRestore) console.log(`  their newer content is kept as snapshot ${r.preRestore.id} (crinc list ${job})`);
        if (repo.readOnly) console.log('  the store is read-only: the restored process is not recorded in it (crinc jobs does not show it)');
      }
      if (interrupted()) {
        console.error(`crinc: interrupted; the restore completed: job ${job} runs as pid ${r.pid}`);
        process.exitCode = INTERRUPTED_EXIT;
      }
      repo.close();
    });

  program
    .command('status')
    .description("a job's process, last checkpoint, and what dirty tracking saw since then: tracking mode per process, pages written, fault rate, fd changes, modified files")
    .argument('<job>', 'job name')
    .option('--json', 'print JSON')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', '\nExample:\n  crinc status sim --json')
    .action(async (job: string, o: { json?: boolean; store?: string; cache?: string }) => {
      const repo = await openStore(o, 'read');
      repo.requireJob(job);
      const status =
        ((await askDaemon(repo.dir, { op: 'status', job })) as JobStatus | undefined) ??
        ((await askController(controlSocketPath(repo.jobDir(job)), { op: 'status' })) as JobStatus | undefined) ??
        jobStatus(repo, job, false, null);
      if (o.json) console.log(JSON.stringify(status));
      else printStatus(status);
      repo.close();
    });

  program
    .command('jobs')
    .description('list known jobs: process, state, whether the daemon manages them and how often, last checkpoint')
    .option('--json', 'print a JSON array')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', `
States: running, stopped (its process is gone; no daemon manages it), exited (a managed
job's process ended; the daemon saw how), dead (a managed job's process is gone without
the daemon seeing it end, e.g. killed while the daemon was down).

Example:
  crinc jobs --json`)
    .action(async (o: { json?: boolean; store?: string; cache?: string }) => {
      const repo = await openStore(o, 'read');
      const rows = ((await askDaemon(repo.dir, { op: 'jobs' })) as JobRow[] | undefined) ?? jobRows(repo);
      if (o.json) console.log(JSON.stringify(rows));
      else if (rows.length === 0) console.log('no jobs yet (start one with crinc run)');
      else
        printTable(
          ['JOB', 'PID', 'STATE', 'MANAGED', 'LAST CHECKPOINT', 'COMMAND'],
          rows.map((r) => [
            r.job, String(r.pid ?? '-'), r.state + (r.managed?.ended && r.state !== 'running' ? ` (${r.managed.ended})` : ''),
            r.managed ? `every ${formatDuration(r.managed.intervalMs)}` : '-',
            r.lastCheckpoint ? `${r.lastCheckpoint.id} at ${r.lastCheckpoint.takenAt}` : '-', r.command.join(' '),
          ]),
        );
      repo.close();
    });

  program
    .command('export')
    .description("write a checkpoint out as stored, every chunk verified: CRIU's image directory byte for byte, and the job's files under files/<their absolute path>")
    .argument('<job>', 'job name')
    .addOption(new Option('--at <time>', 'newest checkpoint at or before TIME').conflicts('id'))
    .addOption(new Option('--id <id>', 'checkpoint id, also of a pre-restore snapshot (see crinc list)').argParser(intArg))
    .requiredOption('--to <dir>', 'directory to write into (created; must be empty)')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', '\nExamples:\n  crinc export sim --id 42 --to /tmp/sim-42 && criu restore -D /tmp/sim-42 -d\n  crinc export sim --id 43 --to /tmp/before-restore    (a pre-restore snapshot: files only)')
    .action(async (job: string, o: { at?: string; id?: number; to: string; store?: string; cache?: string }) => {
      cancelOnInterrupt(`export stopped; ${o.to} holds a partial export: remove it`);
      const repo = await openStore(o, 'read');
      const cp = o.id !== undefined ? repo.getCheckpoint(o.id) : resolveCheckpoint(repo, job, { at: parseTimeSpec(o.at ?? 'now') });
      if (cp.job !== job) throw new NoCheckpointError(`checkpoint ${cp.id} belongs to job "${cp.job}", not "${job}"`);
      const codecs = await openCodecs(repo);
      const written = await exportCheckpoint(repo, codecs, cp, o.to);
      console.log(`checkpoint ${cp.id}: ${written.images} image files and ${written.files} job files written to ${o.to}`);
      repo.close();
    });

  addRetentionOptions(program
    .command('prune')
    .description("forget checkpoints by retention policy: the one given, else each job's stored policy (jobs without one keep everything)")
    .argument('[job]', 'only this job')
    .option('--dry-run', 'only say what would be forgotten')
    .option('--json', 'print a JSON array, one entry per job'))
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', `
Examples:
  crinc prune                                 every job, by its stored policy
  crinc prune sim --keep-daily 7 --dry-run    what this policy would forget of sim
  crinc prune sim --keep-last 3 && crinc gc   forget, then free the space
${RETENTION_HELP}`)
    .action(async (job: string | undefined, o: RetentionFlags & { dryRun?: boolean; json?: boolean; store?: string; cache?: string }) => {
      cancelOnInterrupt('prune stopped: what it had committed is forgotten, the rest is kept (crinc list shows which)');
      const repo = await openStore(o, 'write');
      const given = retentionFromOptions(o);
      const jobs = job ? [repo.requireJob(job).name] : repo.listJobs().map((j) => j.name);
      const out = [];
      for (const name of jobs) {
        const policy = given ?? repo.jobRetention(name);
        if (!policy) {
          if (!o.json) console.log(`job ${name}: no retention policy, every checkpoint is kept`);
          continue;
        }
        const d = await pruneJob(repo, name, policy, { dryRun: Boolean(o.dryRun) });
        out.push({
          job: name,
          policy,
          dryRun: Boolean(o.dryRun),
          keep: d.keep.map((k) => ({ id: k.checkpoint.id, takenAt: new Date(k.checkpoint.takenAt).toISOString(), reasons: k.reasons })),
          forget: d.forget.map((c) => ({ id: c.id, takenAt: new Date(c.takenAt).toISOString() })),
        });
        if (o.json) continue;
        console.log(`job ${name}: keep ${d.keep.length}, ${o.dryRun ? 'would forget' : 'forgot'} ${d.forget.length}`);
        for (const k of d.keep) console.log(`  keep    ${k.checkpoint.id}  ${new Date(k.checkpoint.takenAt).toISOString()}  (${k.reasons.join(', ')})`);
        for (const c of d.forget) console.log(`  forget  ${c.id}  ${new Date(c.takenAt).toISOString()}`);
      }
      if (o.json) console.log(JSON.stringify(out));
      else if (!o.dryRun && out.some((r) => r.forget.length > 0)) console.log('run crinc gc to free the space of forgotten checkpoints');
      repo.close();
    });

  program
    .command('gc')
    .description('free the space of forgotten checkpoints: delete chunks no checkpoint names, repack packs that are mostly dead, remove leftovers of interrupted work; safe while checkpoints run')
    .option('--dry-run', 'only say what would be freed')
    .option('--json', 'print the figures as JSON')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', '\nExamples:\n  crinc gc\n  crinc gc --dry-run --json')
    .action(async (o: { dryRun?: boolean; json?: boolean; store?: string; cache?: string }) => {
      cancelOnInterrupt('gc stopped where it was, as a crash would stop it: every checkpoint is intact, and the next crinc command removes what it left; run crinc gc again to free the rest');
      const repo = await openStore(o, 'write');
      const codecs = await openCodecs(repo);
      const r = await withProgress('gc', (onProgress) => collectGarbage(repo, codecs.chunks, { dryRun: Boolean(o.dryRun), onProgress }));
      if (o.json) {
        console.log(JSON.stringify(r));
      } else {
        console.log(
          `${r.dryRun ? 'would free' : 'freed'} ${formatBytes(r.bytesFreed)} (${formatBytes(r.bytesBefore)} → ${formatBytes(r.bytesAfter)} of packs): ` +
            `${r.liveChunks} chunks live, ${r.deadChunks} dead; ${r.deadPacks} packs deleted, ${r.repackedPacks} repacked into ${r.newPacks}, ${r.orphanFiles} leftover files removed`,
        );
      }
      await codecs.pool.close();
      repo.close();
    });

  program
    .command('verify')
    .description("check the store: every pack the index names exists whole, every checkpoint's chunks are indexed; with --read-data every chunk is read, decompressed and checked against its id. Exits 1 naming the damaged checkpoints")
    .option('--read-data', 'read and check every chunk (reads the whole store)')
    .option('--json', 'print the report as JSON')
    .addOption(storeOption())
    .addOption(cacheOption())
    .addHelpText('after', '\nExamples:\n  crinc verify\n  crinc verify --read-data --json')
    .action(async (o: { readData?: boolean; json?: boolean; store?: string; cache?: string }) => {
      cancelOnInterrupt('verify stopped; it changes nothing in the store');
      const repo = await openStore(o, 'read');
      const codecs = await openCodecs(repo);
      const r = await withProgress('verify', (onProgress) => verifyStore(repo, codecs, { readData: Boolean(o.readData), onProgress }));
      if (o.json) {
        console.log(JSON.stringify({ ...r, damaged: r.damaged.map((d) => ({ ...d, takenAt: new Date(d.takenAt).toISOString() })) }));
      } else {
        console.log(
          `${r.checkpoints} checkpoints, ${r.packs} packs, ${r.chunks} chunks` + (r.readData ? `, ${formatBytes(r.bytesRead)} read and checked` : '') + `: ${r.ok ? 'ok' : 'DAMAGED'}`,
        );
        for (const p of r.packProblems) console.log(`pack ${p.pack}: ${p.problem}`);
        for (const c of r.badChunks) console.log(`chunk ${c.chunk} in pack ${c.pack}: ${c.problem}`);
        for (const d of r.damaged) {
          console.log(`checkpoint ${d.id} of ${d.job} (${d.kind}, taken ${new Date(d.takenAt).toISOString()}) is damaged:`);
          for (const p of d.problems) console.log(`  ${p}`);
        }
      }
      if (!r.ok) process.exitCode = 1;
      await codecs.pool.close();
      repo.close();
    });

  program
    .command('repair')
    .description('rebuild the index of a store directory from its packs and checkpoint objects (after index.sqlite was lost or damaged), then check every checkpoint; damaged ones are marked (crinc list) and named')
    .option('--read-data', 'also read and check every chunk')
    .option('--forget-damaged', 'forget the checkpoints found damaged (their intact chunks stay for the others)')
    .option('--json', 'print the report as JSON')
    .addOption(new Option('--store <dir>', `store directory (default: $CRINC_STORE or ${DEFAULT_STORE}); an s3:// store's index is rebuilt by deleting its --cache`))
    .addHelpText('after', '\nExamples:\n  crinc repair\n  crinc repair --read-data --forget-damaged')
    .action(async (o: { readData?: boolean; forgetDamaged?: boolean; json?: boolean; store?: string }) => {
      requireRoot();
      const spec = o.store ?? process.env.CRINC_STORE ?? DEFAULT_STORE;
      if (isS3Url(spec)) throw new InvalidArgumentError(`the index of an s3:// store is a cache: delete its --cache directory and the next command rebuilds it from ${spec}`);
      const r = await withProgress('repair', (onProgress) =>
        repairStore(resolve(spec), { readData: Boolean(o.readData), forgetDamaged: Boolean(o.forgetDamaged), onProgress: (d, t, phase) => phase === 'verify' && onProgress?.(d, t) }));
      if (o.json) {
        console.log(JSON.stringify({ ...r, verify: { ...r.verify, damaged: r.verify.damaged.map((d) => ({ ...d, takenAt: new Date(d.takenAt).toISOString() })) } }));
      } else {
        const b = r.rebuild;
        console.log(`index rebuilt from ${b.packs} packs (${b.chunks} chunks) and ${b.checkpoints} checkpoint objects`);
        for (const p of b.unreadablePacks) console.log(`pack ${p.pack} cannot be read: ${p.problem}`);
        for (const c of b.unreadableCheckpoints) console.log(`checkpoint object ${c.id} cannot be read: ${c.problem}`);
        for (const d of r.verify.damaged) {
          console.log(`checkpoint ${d.id} of ${d.job} (${d.kind}, taken ${new Date(d.takenAt).toISOString()}) is damaged${r.forgotten.length > 0 ? ': forgotten' : ''}:`);
          for (const p of d.problems) console.log(`  ${p}`);
        }
        if (r.verify.ok) console.log('every checkpoint is whole');
        else if (r.forgotten.length === 0 && r.verify.damaged.length > 0) console.log('run crinc repair --forget-damaged to forget the damaged checkpoints (crinc list marks them)');
      }
      const unreadable = r.rebuild.unreadablePacks.length + r.rebuild.unreadableCheckpoints.length;
      if (unreadable > 0 || (!r.verify.ok && r.forgotten.length < r.verify.damaged.length)) process.exitCode = 1;
    });

  return program;
}

/**
 * Turns signals into a stop request of a foreground controller (the reason of the
 * returned signal). The first request wins; later signals (a scheduler repeats SIGTERM)
 * are ignored.
 */
function stopOnSignals(requests: Partial<Record<NodeJS.Signals, StopRequest>>): AbortController {
  const abort = new AbortController();
  for (const [signal, request] of Object.entries(requests)) {
    process.on(signal, () => {
      if (!abort.signal.aborted) abort.abort(request);
    });
  }
  return abort;
}

/** Options of a controller in the foreground (run, attach without a daemon). */
function foregroundOptions(job: string, intervalMs: number, tracking: boolean, killOnExit: boolean, signal: AbortSignal): ControlOptions {
  return {
    job,
    intervalMs,
    killOnExit,
    tracking,
    verifyTracking: process.env[VERIFY_TRACKING_ENV] === '1',
    signal,
    onCheckpoint: (cp) => console.log(`checkpoint ${cp.id} of ${cp.job}: ${formatCheckpoint(cp)}`),
    onSkip: (why) => console.log(`skipped a checkpoint: ${why}`),
    onError: (e) => console.error(`crinc: checkpoint failed: ${e.message}`),
    onNotice: (m) => console.log(m),
  };
}

function printStart(job: string, start: JobStart): void {
  if (start.how === 'started') {
    console.log(`started job ${job} as pid ${start.pid}` + (start.freshRequested ? ' (--fresh: its checkpoints are ignored)' : ' (no checkpoint to resume from)'));
    return;
  }
  const { checkpoint, rolledBack } = start.restore;
  console.log(`resumed job ${job} from checkpoint ${checkpoint.id} (taken ${new Date(checkpoint.takenAt).toISOString()}) as pid ${start.pid}`);
  for (const f of rolledBack) console.log(`  rolled back ${f}`);
}

/** Says how a foreground controller ended, and sets crinc's exit code (README, "Resume, final checkpoint, exit codes"). */
function printOutcome(job: string, outcome: RunOutcome): void {
  if (outcome.reason === 'job-exited') {
    const how = outcome.exitSignal ? ` on ${outcome.exitSignal}` : outcome.exitCode !== null ? ` with code ${outcome.exitCode}` : '';
    console.log(`job ${job} (pid ${outcome.pid}) exited${how}`);
    // Unknown (an attached process is not our child): 0.
    if (outcome.exitSignal) process.exitCode = SIGNALED_EXIT_BASE + osConstants.signals[outcome.exitSignal];
    else if (outcome.exitCode !== null) process.exitCode = outcome.exitCode;
  } else if (outcome.reason === 'checkpointed') {
    console.log(`checkpointed and stopped: job ${job} saved as checkpoint ${outcome.finalCheckpoint!.id}; run the same command again to resume it (exit code ${EXIT_CHECKPOINTED})`);
    process.exitCode = EXIT_CHECKPOINTED;
  } else if (outcome.jobStopped) {
    console.log(`stopped; job ${job} ${outcome.jobStopped === 'terminated' ? 'ended on SIGTERM' : 'killed'}`);
  } else {
    console.log(`stopped checkpointing; job ${job} goes on as pid ${outcome.pid}`);
  }
}

function printRegistered(r: Registered): void {
  if (r.resumedFrom !== undefined) console.log(`resumed job ${r.job} from checkpoint ${r.resumedFrom} as pid ${r.pid}`);
  console.log(`job ${r.job} runs as pid ${r.pid}; the daemon (pid ${r.daemonPid}) checkpoints it every ${formatDuration(r.intervalMs)} (crinc jobs, crinc status ${r.job})`);
}

function checkpointJson(c: CheckpointRecord) {
  return {
    id: c.id,
    job: c.job,
    kind: c.kind,
    takenAt: new Date(c.takenAt).toISOString(),
    imageBytes: c.imageBytes,
    storedBytes: c.storedBytes,
    pagesTotal: c.pagesTotal,
    pagesHashed: c.pagesHashed,
    pagesClean: c.pagesClean,
    durationMs: Math.round(c.durationMs * 10) / 10,
    freezeMs: Math.round(c.freezeMs * 10) / 10,
    mode: c.mode,
    note: c.note,
  };
}

/**
 * Says why a command failed, exit code 1: an operating error (a CrincError, or a system
 * error that asOperatingError translates) by its message; anything else is a bug, with
 * its stack.
 */
export function reportFailure(e: unknown, store: string | undefined): void {
  const operating = e instanceof CommanderError ? e : asOperatingError(e, store);
  if (operating) console.error(`crinc: ${operating.message}`);
  else console.error(`crinc: unexpected error (a bug; please report it): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exitCode = 1;
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (e) {
    openedRepo?.noteReadFailure(e as Error);
    reportFailure(e, openedStore);
  }
}

await main();
