// Running CRIU: version check, dump streaming its pages to crinc, and lazy restore fed by
// crinc's page server.
import { strict as assert } from 'node:assert';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { makeFifo, setReceiveTimeout, setSendBuffer, streamSocketPair, unreadBytes } from '../sys/libc.js';
import { type DumpStreamSink, PAGE_STREAM_SEND_BUFFER_BYTES, PAGE_STREAM_SILENCE_MS, PageServerProtocolError, type RestorePages, receiveDump, serveLazyPages } from './page-server.js';
import { CrincError } from '../errors.js';
import { type CriuAction, explainCriuFailure } from './explain.js';

/** The fd CRIU gets its end of the page stream on (--ps-socket). */
const CRIU_PS_FD = 3;
/** The fd `criu lazy-pages` reports readiness on (--status-fd). */
const CRIU_STATUS_FD = 4;
/** The fd the lazy-restore shell closes once `criu restore` exited. */
const RESTORE_DONE_FD = 6;

/** The oldest CRIU known to dump and restore on the kernels crinc targets (see README). */
export const CRIU_MIN_VERSION = [4, 2] as const;
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

/** What of a CRIU log a failure shows: its error lines when it has any, else its last lines. */
export function logTail(path: string): string {
  if (!existsSync(path)) return '(no log written)';
  const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
  // With -v4 each line starts with its time: "(00.197583) Error (criu/cr-dump.c:1975): ...".
  const errors = lines.filter((l) => /^(\(\s*[\d.]+\)\s*)?Error/.test(l));
  return (errors.length ? errors : lines).slice(-LOG_TAIL_LINES).join('\n');
}

export interface DumpRequest {
  pid: number;
  imagesDir: string;
  workDir: string;
  /**
   * Takes every page as CRIU streams it. The tree is frozen from the first open on, and
   * CRIU waits for each answer: crinc's work inside the freeze happens there.
   */
  pages: DumpStreamSink;
}

export interface DumpResult {
  logPath: string;
}

/**
 * `criu dump --leave-running`, its pages streamed to crinc. No action script: CRIU forks
 * one for every stage (~15-40 ms of the freeze here at post-dump), and crinc has its
 * moment inside the freeze at the stream's first open.
 */
export async function dump(req: DumpRequest): Promise<DumpResult> {
  const logPath = join(req.workDir, 'dump.log');

  // The page stream: crinc keeps one end, CRIU inherits the other; nothing listens.
  const [ours, theirs] = streamSocketPair();
  let criu: ChildProcess;
  try {
    setReceiveTimeout(ours, PAGE_STREAM_SILENCE_MS);
    setSendBuffer(theirs, PAGE_STREAM_SEND_BUFFER_BYTES); // CRIU sends the pages
    criu = spawn(
      'criu',
      ['dump', '-t', String(req.pid), '-D', req.imagesDir, '-W', req.workDir, '-o', 'dump.log', '-v4',
        '--leave-running', '--page-server', '--ps-socket', String(CRIU_PS_FD), ...COMMON_OPTIONS],
      // Its own process group: a Ctrl-C at crinc's terminal must not kill CRIU mid-dump (the
      // job would be left with CRIU's parasite in it); crinc cancels at the stream instead.
      { stdio: ['ignore', 'ignore', 'pipe', theirs], detached: true },
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

  // Pages are read on this thread with blocking reads until CRIU closes the transfer; a
  // failure (crinc's, or crinc killed) closes crinc's end, so CRIU's next send fails, its
  // dump fails and it thaws the job.
  let streamError: unknown;
  try {
    await receiveDump(ours, req.pages);
  } catch (e) {
    streamError = e;
  } finally {
    closeSync(ours);
  }

  const code = await exited;
  // A stream cut short by CRIU is CRIU's failure; crinc's own failure (the store) comes first.
  if (streamError && !(streamError instanceof PageServerProtocolError && code !== 0)) throw streamError;
  if (code !== 0) throw new CriuFailedError('dump', logPath, logTail(logPath) + (stderr ? `\n${stderr.trim()}` : ''));
  return { logPath };
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
// A CRIU still waiting at its gate (see ImageGate) is let through with an empty inventory,
// so that it fails: the gate's path becomes an empty file for one that has not opened it
// yet, and one waiting in its open gets a writer that closes without writing. Then the
// watchdog waits for the pidfile until the restore has exited (60 s at most); without one
// (crinc died before the restore ran), it ends the daemon, which would wait for that
// restore for ever (checked to be this restore's daemon: its command line names the work
// directory).
// One shell runs them all, so that crinc forks once (a fork of crinc costs 25-110 ms here,
// by its size): the daemon (fds 3, the daemon's end of the page stream, and 4, its status
// pipe), `criu restore`, and the watchdog (fd 5, crinc's end). Once the restore exits the
// shell writes its status to a file and closes fd 6, then waits for the daemon and exits
// with its status. TERM stops the watchdog (crinc does once every page is in, or once it
// killed the job); the shell still waits for the daemon. Killing the shell's process
// group ends them all.
const LAZY_RESTORE_SCRIPT = `
criu lazy-pages -D "$DAEMON_IMAGES" -W "$WORKDIR" -o lazy-pages.log -v4 --page-server --ps-socket ${CRIU_PS_FD} --status-fd ${CRIU_STATUS_FD} 5>&- 6>&- &
d=$!
exec 3>&- 4>&-
criu restore -D "$RESTORE_IMAGES" -W "$WORKDIR" -o restore.log -v4 -d --lazy-pages --pidfile "$PIDFILE" "$@" </dev/null >/dev/null 2>"$WORKDIR/restore.stderr" 5>&- 6>&- &
r=$!
( tail --pid="$CRINC_PID" -s 0.1 -f /dev/null & t=$!
  trap 'kill $t 2>/dev/null; wait $t; exit 0' TERM
  wait $t
  for g in "$DAEMON_IMAGES/inventory.img" "$RESTORE_IMAGES/inventory.img"; do
    exec 7<>"$g"; : > "$g.closed"; mv -f "$g.closed" "$g"; exec 7>&-
  done
  i=0; while [ ! -s "$PIDFILE" ] && [ ! -e "$WORKDIR/restore.exit" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  if [ -s "$PIDFILE" ]; then kill -9 "$(cat "$PIDFILE")"
  elif tr '\\0' '\\n' < "/proc/$d/cmdline" | grep -qxF -- "$WORKDIR"; then kill -9 "$d"
  fi ) 2>/dev/null 6>&- &
w=$!
exec 5>&-
trap 'kill -TERM $w 2>/dev/null' TERM
# A wait cut short by TERM returns >128 with the process still there: wait again.
while :; do
  wait $r; rc=$?
  kill -0 $r 2>/dev/null || break
done
echo "$rc" > "$WORKDIR/restore.exit"
exec 6>&-
while :; do
  wait $d; code=$?
  kill -0 $d 2>/dev/null || break
done
kill -TERM $w 2>/dev/null; wait $w
exit $code
`;

/** `criu lazy-pages` and the `criu restore` it serves, both starting up. */
export interface LazyRestoreStart {
  /** Lets the daemon read the images in imagesDir: call once CRIU's image files are there. */
  imagesWritten(): void;
  /**
   * Lets the restore (detached, `--lazy-pages`) go on once the daemon is ready: the
   * daemon takes the pages from `pages` over a socket pair and puts them in on demand and
   * in the background. Resolves as soon as the job runs. Called at most once, once every
   * image file is in imagesDir and imagesWritten() was called.
   */
  restore(pages: RestorePages): Promise<LazyRestore>;
  /** Ends the daemon and the waiting restore when no restore will run (preparing it failed). */
  abandon(): Promise<void>;
}

/** Longest inventory image a gate takes in one write (a pipe's capacity; it is ~100 bytes). */
const GATE_MAX_BYTES = 64 * 1024;
/** How often crinc looks whether a CRIU has read its inventory from the gate. */
const GATE_POLL_MS = 1;
const INVENTORY_IMAGE = 'inventory.img';

/**
 * A directory of CRIU images for one CRIU process whose first image read, the inventory,
 * waits until crinc lets it: inventory.img is a FIFO crinc holds open. open() links the
 * other images in and writes the inventory into the FIFO. If crinc dies first, the lazy
 * restore's watchdog lets CRIU through with an empty inventory, and it fails.
 */
class ImageGate {
  private fd: number | undefined;

  constructor(readonly dir: string) {
    mkdirSync(dir, { mode: 0o700 });
    makeFifo(join(dir, INVENTORY_IMAGE), 0o600);
    // Read-write: the open does not wait for a reader, and CRIU's open does not wait for us.
    this.fd = openSync(join(dir, INVENTORY_IMAGE), 'r+');
  }

  /** Links the images of from that are not here yet (the inventory aside). */
  link(from: string): void {
    for (const name of readdirSync(from)) {
      if (name !== INVENTORY_IMAGE && !existsSync(join(this.dir, name))) linkSync(join(from, name), join(this.dir, name));
    }
  }

  /** Links the images in and fills the gate; resolves once CRIU has read it all (or `gone` settled). */
  async open(from: string, gone: Promise<unknown>): Promise<void> {
    assert(this.fd !== undefined, 'a gate opens once');
    const inventory = readFileSync(join(from, INVENTORY_IMAGE));
    if (inventory.length > GATE_MAX_BYTES) throw new CriuError(`the checkpoint's ${INVENTORY_IMAGE} holds ${inventory.length} bytes; a restore takes at most ${GATE_MAX_BYTES}`);
    this.link(from);
    writeSync(this.fd, inventory);
    // CRIU reads on to the end of the file: it comes when our end closes, which must wait
    // until the bytes are read (a FIFO nobody has open drops what it holds).
    let ended = false;
    void gone.finally(() => (ended = true)).catch(() => undefined);
    while (!ended && unreadBytes(this.fd) > 0) await new Promise((resolve) => setTimeout(resolve, GATE_POLL_MS));
    this.close();
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * Starts `criu lazy-pages` and `criu restore` for a restore from imagesDir, before the
 * images are there: each reads its images from a gated directory of its own (ImageGate),
 * so that their start-up (~0.1-0.2 s here: CRIU probes the kernel on every run where /run
 * is not tmpfs) overlaps crinc's staging. The daemon goes on once imagesWritten() is
 * called (it reads the inventory and process tree as it starts up); the restore once
 * restore() is, when the daemon listens.
 */
export function startLazyRestore(req: { imagesDir: string; workDir: string }): LazyRestoreStart {
  const pidFile = join(req.workDir, 'restored.pid');
  const logPath = join(req.workDir, 'restore.log');
  const daemonLog = join(req.workDir, 'lazy-pages.log');
  const gates: ImageGate[] = [];
  let ours: number;
  let theirs: number;
  try {
    gates.push(new ImageGate(join(req.workDir, 'daemon-images')), new ImageGate(join(req.workDir, 'restore-images')));
    [ours, theirs] = streamSocketPair();
  } catch (e) {
    for (const g of gates) g.close();
    throw e;
  }
  const [daemonGate, restoreGate] = gates as [ImageGate, ImageGate];
  const closeGates = () => {
    daemonGate.close();
    restoreGate.close();
  };
  let shell: ChildProcess;
  try {
    setSendBuffer(ours, PAGE_STREAM_SEND_BUFFER_BYTES); // crinc sends the pages
    shell = spawn('sh', ['-c', LAZY_RESTORE_SCRIPT, 'sh', ...COMMON_OPTIONS], {
      // Its own process group: a Ctrl-C at crinc's terminal must not kill the restore midway
      // (crinc finishes it).
      stdio: ['ignore', 'ignore', 'pipe', theirs, 'pipe', ours, 'pipe'],
      detached: true,
      env: { ...process.env, CRINC_PID: String(process.pid), DAEMON_IMAGES: daemonGate.dir, RESTORE_IMAGES: restoreGate.dir, PIDFILE: pidFile, WORKDIR: req.workDir },
    });
  } catch (e) {
    closeSync(ours);
    closeGates();
    throw e;
  } finally {
    closeSync(theirs);
  }
  const stopWatchdog = () => {
    shell.kill('SIGTERM');
  };
  const killAll = () => {
    if (shell.exitCode !== null || shell.signalCode !== null) return; // its group may be gone, its id reused
    try {
      process.kill(-shell.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  let shellStderr = '';
  shell.stderr!.on('data', (d: Buffer) => (shellStderr += d.toString()));
  const daemonExited = new Promise<number>((resolve, reject) => {
    shell.on('error', reject);
    shell.on('close', (code) => resolve(code ?? -1));
  });
  daemonExited.catch(() => undefined); // observed by restore() or abandon()
  const daemonFailed = () => new CriuFailedError('lazy-pages', daemonLog, logTail(daemonLog) + (shellStderr ? `\n${shellStderr.trim()}` : ''));
  // The daemon listens for the restore once it writes its status byte (or exits).
  const ready = new Promise<boolean>((resolve) => {
    shell.stdio[CRIU_STATUS_FD]!.once('data', () => resolve(true));
    shell.stdio[CRIU_STATUS_FD]!.once('end', () => resolve(false));
  });
  // The shell closes fd 6 once the restore exited, its status written to restore.exit.
  const restoreExited = new Promise<number>((resolve) => {
    const status = join(req.workDir, 'restore.exit');
    (shell.stdio as unknown as Readable[])[RESTORE_DONE_FD]!.on('data', () => undefined).once('close', () => {
      resolve(existsSync(status) ? Number(readFileSync(status, 'utf8').trim()) : -1);
    });
  });
  let daemonGateOpen: Promise<void> | undefined;
  let oursOpen = true;

  const imagesWritten = (): void => {
    assert(!daemonGateOpen, 'imagesWritten is called once');
    daemonGateOpen = daemonGate.open(req.imagesDir, daemonExited);
    daemonGateOpen.catch(() => undefined); // observed by restore() or abandon()
  };

  const restore = async (pages: RestorePages): Promise<LazyRestore> => {
    assert(daemonGateOpen, 'restore() comes after imagesWritten()');
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
    const fail = async (e: unknown): Promise<never> => {
      closeGates();
      killAll();
      await allPagesIn.catch(() => undefined);
      throw e;
    };

    try {
      await daemonGateOpen;
    } catch (e) {
      return fail(e);
    }
    if (!(await ready)) return fail(daemonFailed());
    faultPoint('restore-daemon-ready');
    try {
      daemonGate.link(req.imagesDir); // what staging wrote since, for a daemon that looks
      await restoreGate.open(req.imagesDir, restoreExited);
    } catch (e) {
      return fail(e);
    }
    const code = await restoreExited;
    if (code !== 0) {
      const stderrPath = join(req.workDir, 'restore.stderr');
      const stderr = existsSync(stderrPath) ? readFileSync(stderrPath, 'utf8').trim() : '';
      return fail(new CriuFailedError('restore', logPath, logTail(logPath) + (stderr ? `\n${stderr}` : '')));
    }
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 0) throw new CriuError(`criu restore wrote no valid pid to ${pidFile}`);
    jobPid = pid;
    if (pagesFailed) killQuietly(pid);
    return { pid, logPath, allPagesIn };
  };

  const abandon = async (): Promise<void> => {
    closeGates();
    killAll();
    if (oursOpen) closeSync(ours);
    oursOpen = false;
    await daemonExited.catch(() => undefined);
  };

  return { imagesWritten, restore, abandon };
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
