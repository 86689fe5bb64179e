// Running CRIU: version check, dump streaming its pages to crinc with a hook that runs
// while the tree is frozen, and lazy restore fed by crinc's page server.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { makeFifo, setReceiveTimeout, streamSocketPair } from '../sys/libc.js';
import { type DumpStreamSink, PAGE_STREAM_SILENCE_MS, PageServerProtocolError, type RestorePages, receiveDump, serveLazyPages } from './page-server.js';
import { CrincError } from '../errors.js';
import { type CriuAction, explainCriuFailure } from './explain.js';

/** The fd CRIU gets its end of the page stream on (--ps-socket). */
const CRIU_PS_FD = 3;
/** The fd `criu lazy-pages` reports readiness on (--status-fd). */
const CRIU_STATUS_FD = 4;

/** The oldest CRIU known to dump and restore on the kernels crinc targets (see README). */
export const CRIU_MIN_VERSION = [4, 2] as const;
/** Longest time crinc may keep the job frozen for its own work (file capture, dirty scan). */
export const FROZEN_WORK_TIMEOUT_MS = 120_000;
/** How long a failed restore's stderr is waited for once it exited. */
const RESTORE_STDERR_WAIT_MS = 1000;
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
    readonly action: CriuAction,
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
  /** Takes every page as CRIU streams it (the tree is frozen from the first open on). */
  pages: DumpStreamSink;
  /** Runs while the whole tree is frozen, after CRIU has sent the pages and written the images. */
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
  makeFifo(notify, 0o600);
  makeFifo(ack, 0o600);
  const logPath = join(req.workDir, 'dump.log');

  // The page stream: crinc keeps one end, CRIU inherits the other; nothing listens.
  const [ours, theirs] = streamSocketPair();
  let criu: ChildProcess;
  try {
    setReceiveTimeout(ours, PAGE_STREAM_SILENCE_MS);
    criu = spawn(
      'criu',
      ['dump', '-t', String(req.pid), '-D', req.imagesDir, '-W', req.workDir, '-o', 'dump.log', '-v4',
        '--leave-running', '--page-server', '--ps-socket', String(CRIU_PS_FD), '--action-script', hook, ...COMMON_OPTIONS],
      // Its own process group: a Ctrl-C at crinc's terminal must not kill CRIU mid-dump (the
      // job would be left with CRIU's parasite in it); crinc cancels at the freeze instead.
      { stdio: ['ignore', 'ignore', 'pipe', theirs], detached: true, env: { ...process.env, CRINC_HOOK_NOTIFY: notify, CRINC_HOOK_ACK: ack, CRINC_HOOK_PID: String(process.pid) } },
    );
  } catch (e) {
    closeSync(ours);
    throw e;
  } finally {
    // CRIU holds its own copy now: when CRIU ends, the stream ends.
    closeSync(theirs);
  }
  let stderr = '';
  criu.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
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

  // Pages are read on this thread with blocking reads until CRIU closes the transfer; a
  // failure closes crinc's end, so CRIU's next send fails, its dump fails and it thaws the job.
  let streamError: unknown;
  try {
    await receiveDump(ours, req.pages);
  } catch (e) {
    streamError = e;
  } finally {
    closeSync(ours);
  }

  const code = await exited;
  // If CRIU never ran the hook, release our reader: a read-write open of a FIFO never
  // blocks, and closing it gives the waiting reader an empty message.
  const unblock = await open(notify, 'r+');
  await unblock.close();
  await hookServed;
  // A stream cut short by CRIU is CRIU's failure; crinc's own failure (the store) comes first.
  if (streamError && !(streamError instanceof PageServerProtocolError && code !== 0)) throw streamError;
  if (frozenError) throw frozenError;
  if (code !== 0) throw new CriuFailedError('dump', logPath, logTail(logPath) + (stderr ? `\n${stderr.trim()}` : ''));
  return { logPath, frozenWorkMs };
}

export interface LazyRestore {
  /** The restored root's PID as the host sees it. */
  pid: number;
  logPath: string;
  /** Settles when the daemon has put every page in; on failure the job has been killed. */
  allPagesIn: Promise<void>;
}

// A job whose pages are not all in must never run on without them: once the lazy-pages
// daemon's userfaultfd closes, the kernel fills a missing page with zeros. The daemon
// keeps it open while its page-server socket is open, so a watchdog holds a copy of
// crinc's end: if crinc dies first, the daemon's requests go unanswered (the job waits
// at its fault) until the watchdog has killed the job; only then does the socket close.
// Without a pidfile (crinc died before the restore ran), it ends the daemon, which would
// wait for that restore for ever (checked to be this restore's daemon: its command line
// names the work directory).
// One shell runs both, so that crinc forks once (a fork of crinc costs 25-110 ms here,
// by its size): it starts the daemon (fds 3, the daemon's end of the page stream, and 4,
// its status pipe) and the watchdog (fd 5, crinc's end), waits for the daemon and exits
// with its status. TERM stops the watchdog (crinc does once every page is in, or once it
// killed the job); the shell still waits for the daemon. Killing the shell's process
// group ends them all.
const LAZY_PAGES_SCRIPT = `
criu lazy-pages "$@" 5>&- &
d=$!
exec 3>&- 4>&-
( tail --pid="$CRINC_PID" -s 0.1 -f /dev/null & t=$!
  trap 'kill $t 2>/dev/null; wait $t; exit 0' TERM
  wait $t
  i=0; while [ ! -s "$PIDFILE" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  if [ -s "$PIDFILE" ]; then kill -9 "$(cat "$PIDFILE")"
  elif tr '\\0' '\\n' < "/proc/$d/cmdline" | grep -qxF -- "$WORKDIR"; then kill -9 "$d"
  fi ) 2>/dev/null &
w=$!
exec 5>&-
trap 'kill -TERM $w 2>/dev/null' TERM
# A wait cut short by TERM returns >128 with the daemon still there: wait again.
while :; do
  wait $d; code=$?
  kill -0 $d 2>/dev/null || break
done
kill -TERM $w 2>/dev/null; wait $w
exit $code
`;

/** `criu lazy-pages`, started ahead of the restore it serves. */
export interface LazyPagesDaemon {
  /**
   * Restores detached with \`--lazy-pages\` once the daemon is ready: it takes the pages
   * from `pages` over a socket pair and puts them in on demand and in the background.
   * Resolves as soon as the job runs. Called at most once.
   */
  restore(pages: RestorePages): Promise<LazyRestore>;
  /** Ends the daemon when no restore will run (preparing it failed). */
  abandon(): Promise<void>;
}

/**
 * Starts \`criu lazy-pages\` for a restore from imagesDir, once CRIU's image files are
 * there (it reads the inventory and process tree as it starts up, ~0.1 s here, while
 * crinc builds the pages' bookkeeping).
 */
export function startLazyPagesDaemon(req: { imagesDir: string; workDir: string }): LazyPagesDaemon {
  const pidFile = join(req.workDir, 'restored.pid');
  const logPath = join(req.workDir, 'restore.log');
  const daemonLog = join(req.workDir, 'lazy-pages.log');
  const [ours, theirs] = streamSocketPair();
  let daemon: ChildProcess;
  try {
    daemon = spawn(
      'sh',
      ['-c', LAZY_PAGES_SCRIPT, 'sh', '-D', req.imagesDir, '-W', req.workDir, '-o', 'lazy-pages.log', '-v4', '--page-server', '--ps-socket', String(CRIU_PS_FD), '--status-fd', String(CRIU_STATUS_FD)],
      // Its own process group, like criu restore below: a Ctrl-C at crinc's terminal must
      // not kill them mid-restore (crinc finishes the restore).
      {
        stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe', ours],
        detached: true,
        env: { ...process.env, CRINC_PID: String(process.pid), PIDFILE: pidFile, WORKDIR: req.workDir },
      },
    );
  } catch (e) {
    closeSync(ours);
    throw e;
  } finally {
    closeSync(theirs);
  }
  const stopWatchdog = () => {
    daemon.kill('SIGTERM');
  };
  const killDaemon = () => {
    if (daemon.exitCode !== null || daemon.signalCode !== null) return; // its group may be gone, its id reused
    try {
      process.kill(-daemon.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  let daemonStderr = '';
  daemon.stderr!.on('data', (d: Buffer) => (daemonStderr += d.toString()));
  const daemonExited = new Promise<number>((resolve, reject) => {
    daemon.on('error', reject);
    daemon.on('close', (code) => resolve(code ?? -1));
  });
  daemonExited.catch(() => undefined); // observed by restore() or abandon()
  const daemonFailed = () => new CriuFailedError('lazy-pages', daemonLog, logTail(daemonLog) + (daemonStderr ? `\n${daemonStderr.trim()}` : ''));
  // The daemon listens for the restore once it writes its status byte (or exits).
  const ready = new Promise<boolean>((resolve) => {
    daemon.stdio[CRIU_STATUS_FD]!.once('data', () => resolve(true));
    daemon.stdio[CRIU_STATUS_FD]!.once('end', () => resolve(false));
  });
  let oursOpen = true;

  const restore = async (pages: RestorePages): Promise<LazyRestore> => {
    oursOpen = false; // the socket owns it now
    const served = serveLazyPages(new Socket({ fd: ours, readable: true, writable: true }), pages.lookup);
    served.catch(() => undefined); // observed below, with the daemon's exit
    let jobPid = 0;
    let pagesFailed = false;
    const allPagesIn = (async () => {
      try {
        // The server ends first when all went well (the daemon's FORCE_CLOSE answered), or
        // when a page could not be served: then the daemon would wait forever for it.
        await Promise.race([served, daemonExited]);
        const code = await daemonExited;
        if (code !== 0) throw daemonFailed();
        await served;
      } catch (e) {
        // Pages are missing: the job must not run on with zeros in their place. Once it is
        // killed, the watchdog lets the socket close and the daemon ends.
        pagesFailed = true;
        if (jobPid > 0) killQuietly(jobPid);
        stopWatchdog();
        await daemonExited;
        throw e;
      } finally {
        stopWatchdog(); // gone with the daemon when all went well
        await pages.idle(); // nothing reads the store for this restore any more
      }
    })();
    allPagesIn.catch(() => undefined); // the caller awaits it or not (--lazy)

    if (!(await ready)) {
      await allPagesIn.catch(() => undefined);
      throw daemonFailed();
    }
    faultPoint('restore-daemon-ready');

    const criu = spawn(
      'criu',
      ['restore', '-D', req.imagesDir, '-W', req.workDir, '-o', 'restore.log', '-v4', '-d', '--lazy-pages', '--pidfile', pidFile, ...COMMON_OPTIONS],
      { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
    );
    let stderr = '';
    criu.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // Its exit, not the end of its stderr: what it leaves running may hold that a while.
    const code = await new Promise<number>((resolve, reject) => {
      criu.on('error', reject);
      criu.on('exit', (c) => resolve(c ?? -1));
    });
    if (code !== 0) {
      // Its last words, if they come soon.
      await Promise.race([new Promise((resolve) => criu.once('close', resolve)), new Promise((resolve) => setTimeout(resolve, RESTORE_STDERR_WAIT_MS))]);
      killDaemon();
      await allPagesIn.catch(() => undefined);
      throw new CriuFailedError('restore', logPath, logTail(logPath) + (stderr ? `\n${stderr.trim()}` : ''));
    }
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new CriuError(`criu restore wrote no valid pid to ${pidFile}`);
    jobPid = pid;
    if (pagesFailed) killQuietly(pid);
    return { pid, logPath, allPagesIn };
  };

  const abandon = async (): Promise<void> => {
    killDaemon();
    if (oursOpen) closeSync(ours);
    oursOpen = false;
    await daemonExited.catch(() => undefined);
  };

  return { restore, abandon };
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
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
