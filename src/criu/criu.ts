// Running CRIU: version check, dump with a hook that runs while the tree is frozen,
// and detached restore.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CrincError } from '../errors.js';
import { explainCriuFailure } from './explain.js';

const execFileAsync = promisify(execFile);

/** The oldest CRIU known to dump and restore on the kernels crinc targets (see README). */
export const CRIU_MIN_VERSION = [4, 2] as const;
/** Longest time crinc may keep the job frozen for its own work (file capture, dirty scan). */
export const FROZEN_WORK_TIMEOUT_MS = 120_000;
/** Lines of CRIU's log quoted in an error. */
const LOG_TAIL_LINES = 8;

/** Options for every dump and restore: the job's unix sockets to outside peers, file locks. */
const COMMON_OPTIONS = ['--ext-unix-sk', '--file-locks', '--tcp-established'];

export class CriuError extends CrincError {
  override name = 'CriuError';
}

export class CriuMissingError extends CriuError {
  override name = 'CriuMissingError';
  constructor(found?: string) {
    const want = CRIU_MIN_VERSION.join('.');
    super(
      (found ? `CRIU ${found} is too old` : 'CRIU is not installed (no `criu` on PATH)') +
        `: crinc needs CRIU ${want} or newer (Debian's 3.17 fails on this kernel's vDSO and 4.1 hangs curing its parasite). ` +
        `Install it with \`npm run setup\` (it takes criu ${want}.x from Debian unstable, pinned so nothing else comes from there).`,
    );
  }
}

export class CriuFailedError extends CriuError {
  override name = 'CriuFailedError';
  constructor(
    readonly action: 'dump' | 'restore',
    readonly logPath: string,
    logTail: string,
  ) {
    // The whole log: the line that says why may be far from its end.
    const explained = explainCriuFailure((existsSync(logPath) ? readFileSync(logPath, 'utf8') : '') + '\n' + logTail, action);
    super(explained ? `criu ${action} failed: ${explained}` : `criu ${action} failed; the end of its log (${logPath}):\n${logTail}`);
  }
}

export function criuVersion(): string {
  let out: string;
  try {
    out = execFileSync('criu', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    throw new CriuMissingError();
  }
  const m = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(out);
  if (!m) throw new CriuMissingError('of unknown version');
  const version = `${m[1]}.${m[2]}${m[3] ? `.${m[3]}` : ''}`;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  if (major < CRIU_MIN_VERSION[0] || (major === CRIU_MIN_VERSION[0] && minor < CRIU_MIN_VERSION[1])) {
    throw new CriuMissingError(version);
  }
  return version;
}

function logTail(path: string): string {
  if (!existsSync(path)) return '(no log written)';
  const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
  const errors = lines.filter((l) => l.startsWith('Error'));
  return (errors.length ? errors : lines).slice(-LOG_TAIL_LINES).join('\n');
}

// CRIU runs the action script for every stage; crinc acts on post-dump only, when the
// tree is still frozen. The script tells the controller through one FIFO and waits for
// its answer on another; a non-zero exit makes CRIU fail the dump (the job goes on).
// The controller may die meanwhile (SIGKILL): then a watcher stands in for it, reading
// the notice and answering "fail", so CRIU thaws the job instead of waiting forever.
// Every process the hook starts is waited for before it exits: an orphan would go to
// the nearest subreaper (the daemon, a resuming crinc run), which does not reap
// processes it did not start, and stay a zombie there. The watcher's wait is
// interrupted by the hook's TERM at once, so stopping it adds nothing to the freeze.
const HOOK_SCRIPT = `#!/bin/sh
[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0
( tail --pid="$CRINC_HOOK_PID" -s 0.05 -f /dev/null & t=$!
  trap 'kill $t 2>/dev/null; wait $t; exit 0' TERM
  wait $t
  exec 3<>"$CRINC_HOOK_NOTIFY" 4<>"$CRINC_HOOK_ACK"; echo fail >&4; sleep 1 ) &
watcher=$!
echo post-dump > "$CRINC_HOOK_NOTIFY" || exit 1
read -r reply < "$CRINC_HOOK_ACK"
kill "$watcher" 2>/dev/null
wait "$watcher"
[ "$reply" = ok ]
`;

export interface DumpRequest {
  pid: number;
  imagesDir: string;
  workDir: string;
  /** Runs while the whole tree is frozen, after CRIU has written the images. */
  whileFrozen: () => Promise<void>;
}

export interface DumpResult {
  logPath: string;
  /** Time spent in whileFrozen, in milliseconds. */
  frozenWorkMs: number;
}

export async function dump(req: DumpRequest): Promise<DumpResult> {
  const hook = join(req.workDir, 'action-hook.sh');
  const notify = join(req.workDir, 'hook-notify.fifo');
  const ack = join(req.workDir, 'hook-ack.fifo');
  writeFileSync(hook, HOOK_SCRIPT, { mode: 0o700 });
  chmodSync(hook, 0o700);
  execFileSync('mkfifo', ['-m', '600', notify, ack]);
  const logPath = join(req.workDir, 'dump.log');

  const criu = spawn(
    'criu',
    ['dump', '-t', String(req.pid), '-D', req.imagesDir, '-W', req.workDir, '-o', 'dump.log', '-v4',
      '--leave-running', '--action-script', hook, ...COMMON_OPTIONS],
    // Its own process group: a Ctrl-C at crinc's terminal must not kill CRIU mid-dump (the
    // job would be left with CRIU's parasite in it); crinc cancels at the freeze instead.
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: { ...process.env, CRINC_HOOK_NOTIFY: notify, CRINC_HOOK_ACK: ack, CRINC_HOOK_PID: String(process.pid) } },
  );
  let stderr = '';
  criu.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number>((resolve, reject) => {
    criu.on('error', reject);
    criu.on('close', (code) => resolve(code ?? -1));
  });

  let frozenWorkMs = 0;
  let frozenError: unknown;
  const hookServed = (async () => {
    // Opening a FIFO for reading waits for its writer: the hook, or us once CRIU exited.
    const reader = await open(notify, 'r');
    const message = (await reader.readFile('utf8')).trim();
    await reader.close();
    if (message !== 'post-dump') return;
    const started = performance.now();
    let reply = 'ok';
    try {
      await withTimeout(req.whileFrozen(), FROZEN_WORK_TIMEOUT_MS, 'work while the job is frozen');
    } catch (e) {
      frozenError = e;
      reply = 'fail';
    }
    frozenWorkMs = performance.now() - started;
    const writer = await open(ack, 'w');
    await writer.write(`${reply}\n`);
    await writer.close();
  })();

  const code = await exited;
  // If CRIU never ran the hook, release our reader: a read-write open of a FIFO never
  // blocks, and closing it gives the waiting reader an empty message.
  const unblock = await open(notify, 'r+');
  await unblock.close();
  await hookServed;
  if (frozenError) throw frozenError;
  if (code !== 0) throw new CriuFailedError('dump', logPath, logTail(logPath) + (stderr ? `\n${stderr.trim()}` : ''));
  return { logPath, frozenWorkMs };
}

export interface RestoreRequest {
  imagesDir: string;
  workDir: string;
}

/** Restores detached; returns the restored root's PID as the host sees it. */
export async function restoreDetached(req: RestoreRequest): Promise<{ pid: number; logPath: string }> {
  const pidFile = join(req.workDir, 'restored.pid');
  const logPath = join(req.workDir, 'restore.log');
  try {
    await execFileAsync(
      'criu',
      ['restore', '-D', req.imagesDir, '-W', req.workDir, '-o', 'restore.log', '-v4', '-d', '--pidfile', pidFile, ...COMMON_OPTIONS],
      { maxBuffer: 16 * 1024 * 1024 },
    );
  } catch (e) {
    const stderr = (e as { stderr?: string }).stderr ?? '';
    throw new CriuFailedError('restore', logPath, logTail(logPath) + (stderr ? `\n${stderr.trim()}` : ''));
  }
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new CriuError(`criu restore wrote no valid pid to ${pidFile}`);
  return { pid, logPath };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new CriuError(`${what} took longer than ${ms / 1000} s`)), ms);
    }),
  ]);
}
