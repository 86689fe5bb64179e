// Helpers for tests that drive the real `crinc` command line (built into dist/ by
// `npm test`'s set-up), real CRIU and real processes.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { packPath } from '../src/store/pack.js';
import { Repository } from '../src/store/repository.js';

export const ROOT = resolve(import.meta.dirname, '..');
export const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
export const COUNTER = join(ROOT, 'build', 'workloads', 'counter');

export interface CliResult {
  code: number;
  /** The signal that ended it (SIGKILL for a fault point), or null. */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function crinc(store: string, args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, CRINC_STORE: store, ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { code: r.status ?? -1, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** `crinc ARGS` in the background, for commands that must overlap; `kill` ends it early. */
export function crincAsync(store: string, args: string[], env: NodeJS.ProcessEnv = {}): { done: Promise<CliResult>; kill: () => void } {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CRINC_STORE: store, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<CliResult>((resolve) => child.once('close', (code, signal) => resolve({ code: code ?? -1, signal, stdout, stderr })));
  return { done, kill: () => child.pid && killQuietly(child.pid) };
}

/** sha256 of each regular file directly in dir. */
export function sha256Dir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isFile()) out[e.name] = createHash('sha256').update(readFileSync(join(dir, e.name))).digest('hex');
  }
  return out;
}

export function crincOk(store: string, args: string[], env: NodeJS.ProcessEnv = {}): string {
  const r = crinc(store, args, env);
  if (r.code !== 0) throw new Error(`crinc ${args.join(' ')} failed (${r.code}):\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

export function crincJson<T>(store: string, args: string[], env: NodeJS.ProcessEnv = {}): T {
  return JSON.parse(crincOk(store, [...args, '--json'], env)) as T;
}

export interface JobInfo {
  job: string;
  pid: number;
  state: string;
}

/** What `crinc gc --json` prints (the fields tests read). */
export interface GcJson {
  deadChunks: number;
  deadPacks: number;
  bytesFreed: number;
  repackedPacks: number;
  newPacks: number;
  orphanFiles: number;
}

export interface CheckpointJson {
  id: number;
  job: string;
  kind: string;
  takenAt: string;
  imageBytes: number;
  storedBytes: number;
  pagesTotal: number;
  pagesHashed: number;
  pagesClean: number;
  durationMs: number;
  freezeMs: number;
  mode: string;
  note: string | null;
}

/**
 * A temporary store (root-only, like a real one) and the processes a test started in it:
 * a directory, or, given an s3:// URL, that store with its local cache in the sandbox.
 */
export class Sandbox {
  readonly dir = mkdtempSync('/tmp/crinc-test-');
  /** What CRINC_STORE names. */
  readonly store: string;
  /** Where the index, the job logs and the locks are: the store directory, or the S3 store's cache (CRINC_CACHE). */
  readonly local: string;
  /** What every crinc of this sandbox gets in its environment besides CRINC_STORE. */
  readonly env: NodeJS.ProcessEnv;
  private readonly children: ChildProcess[] = [];
  private readonly pids = new Set<number>();

  constructor(s3Url?: string) {
    this.store = s3Url ?? join(this.dir, 'store');
    this.local = s3Url ? join(this.dir, 'cache') : this.store;
    this.env = s3Url ? { CRINC_CACHE: this.local } : {};
  }

  cli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
    return crinc(this.store, args, { ...this.env, ...env });
  }

  ok(args: string[], env: NodeJS.ProcessEnv = {}): string {
    return crincOk(this.store, args, { ...this.env, ...env });
  }

  json<T>(args: string[], env: NodeJS.ProcessEnv = {}): T {
    return crincJson<T>(this.store, args, { ...this.env, ...env });
  }

  /** `crinc run` in the background; resolves once the job is registered. */
  async run(
    job: string,
    cmd: string[],
    extra: string[] = ['--interval', '1h'],
    waitRunning = true,
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ controller: ChildProcess; pid: number; output: () => string }> {
    let output = '';
    const controller = spawn(process.execPath, [CLI, 'run', '--job', job, ...extra, '--', ...cmd], {
      env: { ...process.env, CRINC_STORE: this.store, ...this.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    controller.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    controller.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    this.children.push(controller);
    if (!waitRunning) return { controller, pid: 0, output: () => output };
    const pid = await waitFor(() => {
      if (!existsSync(join(this.local, 'index.sqlite'))) return undefined;
      const r = this.cli(['jobs', '--json']);
      if (r.code !== 0) return undefined;
      const j = (JSON.parse(r.stdout) as JobInfo[]).find((x) => x.job === job && x.state === 'running');
      return j?.pid;
    }, `job ${job} to start\n${output}`);
    this.track(pid);
    // Its controller answers once tracking is armed: the test starts from a tracked job.
    await waitFor(() => {
      const r = this.cli(['status', job, '--json']);
      return r.code === 0 && (JSON.parse(r.stdout) as { controller: boolean }).controller;
    }, `the controller of ${job} to answer\n${output}`);
    return { controller, pid, output: () => output };
  }

  /**
   * A fast-writing counter job whose controller is stopped: checkpoints and GCs are then
   * taken by the CLI itself, so CRINC_FAULT reaches them. Returns the job's pid.
   */
  async runForFaults(job: string): Promise<number> {
    const run = await this.run(job, [COUNTER, '--region-mib', '4', '--window-pages', '256', '--tick-ms', '0'], ['--interval', '1h', '--no-tracking']);
    run.controller.kill('SIGINT');
    await waitFor(() => run.controller.exitCode !== null, 'the controller to stop');
    return run.pid;
  }

  track(pid: number): void {
    // kill(0) or kill(-1) at cleanup would hit the test runner itself.
    if (!Number.isInteger(pid) || pid <= 1) throw new Error(`not a process to track: ${pid}`);
    this.pids.add(pid);
  }

  /** For a process the test ended itself: once reaped, its PID may belong to another process by cleanup. */
  untrack(pid: number): void {
    this.pids.delete(pid);
  }

  jobLog(job: string, stream: 'stdout' | 'stderr' = 'stdout'): string {
    return readFileSync(join(this.local, 'jobs', job, `${stream}.log`), 'utf8');
  }

  jobPid(job: string): number {
    return this.json<JobInfo[]>(['jobs']).find((j) => j.job === job)!.pid;
  }

  cleanup(): void {
    for (const pid of this.pids) killQuietly(pid);
    for (const c of this.children) if (c.exitCode === null && c.pid) killQuietly(c.pid);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export function killQuietly(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

export async function waitFor<T>(probe: () => T | undefined | null | false, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** True while pid exists and is not a zombie. */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The exit code of a child process, once it has exited (null when a signal ended it). */
export function exitOf(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

export async function killAndWait(pid: number): Promise<void> {
  killQuietly(pid);
  await waitFor(() => !alive(pid), `pid ${pid} to die`);
}

/** The counters of the "tick N at MS" lines of the counter workload's log. */
export function ticks(log: string): { tick: number; at: number }[] {
  return [...log.matchAll(/^tick (\d+) at (\d+)$/gm)].map((m) => ({ tick: Number(m[1]), at: Number(m[2]) }));
}

export function lastTick(log: string): number {
  const t = ticks(log);
  return t.length ? t[t.length - 1]!.tick : 0;
}

export interface IndexedChunk {
  pack: string;
  offset: number;
  storedLength: number;
  rawLength: number;
  compression: number;
}

/** Every chunk the store's index places, by hex id: read through the chunk index, as crinc reads it. */
export function indexedChunks(store: string): Map<string, IndexedChunk> {
  const repo = Repository.open(store, { create: false });
  try {
    const out = new Map<string, IndexedChunk>();
    repo.chunkIndex.forEach((id, at, place) => {
      out.set(id.toString('hex', at, at + 16), { pack: place.pack, ...repo.chunkIndex.location(place, id, at) });
    });
    return out;
  } finally {
    repo.close();
  }
}

/**
 * Flips one byte inside a stored, uncompressed page chunk of the store (the first the
 * index lists, of those `among` accepts by hex id). Returns the chunk and pack it
 * damaged, and a repair that flips it back.
 */
export function damageStoredPage(store: string, among: (id: string) => boolean = () => true): { id: string; pack: string; repair: () => void } {
  const found = [...indexedChunks(store)].find(([id, c]) => c.rawLength === 4096 && c.compression === 0 && among(id));
  const row = found && { id: found[0], pack: found[1].pack, offset: found[1].offset };
  if (!row) throw new Error(`no uncompressed page chunk in ${store} to damage`);
  const flip = () => {
    const fd = openSync(packPath(store, row.pack), 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, row.offset + 100);
    b[0] = b[0]! ^ 0x40;
    writeSync(fd, b, 0, 1, row.offset + 100);
    closeSync(fd);
  };
  flip();
  return { id: row.id.toLowerCase(), pack: row.pack, repair: flip };
}

/**
 * Asserts that the counter's log (run with --ticks total) is one process history, however
 * often the job was stopped and resumed: one start, every tick from 1 to total once and
 * in order, the region verified at the end. Returns the longest pause between two ticks
 * (a resume shows as one) and the tick it followed.
 */
export function expectOneHistory(log: string, total: number): { after: number; ms: number } {
  expect(log.match(/^start /gm)).toHaveLength(1);
  const t = ticks(log);
  expect(t.map((x) => x.tick)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
  expect(log).toMatch(new RegExp(`verify ok tick ${total}\\ndone tick ${total}\\n$`));
  let pause = { after: 0, ms: 0 };
  for (let i = 1; i < t.length; i++) if (t[i]!.at - t[i - 1]!.at > pause.ms) pause = { after: t[i - 1]!.tick, ms: t[i]!.at - t[i - 1]!.at };
  return pause;
}

/** A checkpoint and the counter job's tick just before and just after it. */
export interface CheckpointAround {
  before: number;
  after: number;
  cp: CheckpointJson;
}

/** n checkpoints of a ticking counter job, gapMs apart, each with the ticks around it. */
export async function checkpointsAround(sb: Sandbox, job: string, n: number, env: NodeJS.ProcessEnv = {}, gapMs = 1200): Promise<CheckpointAround[]> {
  const around: CheckpointAround[] = [];
  for (let i = 0; i < n; i++) {
    const before = lastTick(sb.jobLog(job));
    const cp = sb.json<CheckpointJson>(['checkpoint', job], env);
    const after = lastTick(sb.jobLog(job));
    around.push({ before, after, cp });
    await sleep(gapMs);
  }
  return around;
}

/**
 * Waits for a restored counter job to tick after `since`; returns its log and where the
 * restored process took over: the last tick saved by the checkpoint, then the new ones.
 */
export async function resumedLog(sb: Sandbox, job: string, since: number): Promise<{ log: { tick: number; at: number }[]; resumedAt: number; lastSaved: number }> {
  await waitFor(() => ticks(sb.jobLog(job)).some((t) => t.at > since), 'the restored job to tick');
  const log = ticks(sb.jobLog(job));
  const resumedAt = log.findIndex((t) => t.at > since);
  return { log, resumedAt, lastSaved: log[resumedAt - 1]!.tick };
}
