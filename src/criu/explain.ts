// CRIU's common failures, translated from the lines of its log into what happened and
// what to do: the raw lines ("(35.6) Error (criu/parasite-syscall.c:92): 28769 was killed
// by 9 unexpectedly") tell a person nothing they can act on.
import { execFileSync } from 'node:child_process';

/** How long crinc looks into the kernel log for an OOM kill (dmesg is quick; a hang must not be). */
const DMESG_TIMEOUT_MS = 2000;

/** What CRIU was doing: its failures read differently for each. */
export type CriuAction = 'dump' | 'restore' | 'lazy-pages';

interface Explanation {
  /** Finds the failure in CRIU's log lines; its match is passed to `say`. */
  pattern: RegExp;
  say: (m: RegExpExecArray, action: CriuAction) => string;
}

/** Whether the kernel log says the OOM killer killed pid (best effort: no evidence is not proof). */
function oomKilled(pid: string): boolean {
  let log: string;
  try {
    log = execFileSync('dmesg', [], { encoding: 'utf8', timeout: DMESG_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 * 1024 * 1024 });
  } catch {
    return false;
  }
  return new RegExp(`(Killed process ${pid}\\b|oom-kill:.*\\bpid=${pid}\\b)`).test(log);
}

const EXPLANATIONS: Explanation[] = [
  {
    pattern: /\b(\d+) was (?:killed|stopped) by (\d+) unexpectedly/,
    say: (m, action) => {
      const [, pid, signal] = m;
      const oom = signal === '9' && oomKilled(pid!);
      return (
        `the job's process ${pid} was killed (signal ${signal}) while CRIU worked on it` +
        (oom
          ? ': the kernel log says the OOM killer killed it (dmesg). Give the job more memory headroom (a lower memory use, or a higher cgroup limit); '
          : signal === '9'
            ? ': something sent it SIGKILL — often the OOM killer (look for "Killed process" in dmesg) or a scheduler ending the job. '
            : '. ') +
        (action === 'dump' ? 'No checkpoint was taken; the earlier checkpoints are intact.' : 'The restored process is gone; try the restore again.')
      );
    },
  },
  {
    pattern: /(?:Unable to interrupt task|[Cc]an't interrupt task|Unable to seize|[Cc]an't seize)[^\n]*/,
    say: () =>
      "CRIU could not stop the job's threads with ptrace: another tracer holds them — a debugger or strace, " +
      'or a CRIU still running from an interrupted checkpoint (ps -C criu; it ends once its dump fails). ' +
      'Detach the tracer or wait for that CRIU to end, then try again.',
  },
  {
    pattern: /File (\S+) has bad (size|mode)[^\n]*/,
    // CRIU names the file without its leading slash.
    say: (m) =>
      `the job's file /${m[1]!.replace(/^\//, '')} changed since the checkpoint (its ${m[2]} differs from the one CRIU saved), so CRIU refuses to put the job back onto it. ` +
      'crinc stores and puts back the files a job has open for writing; a file the job only reads, or one changed by something else, must be as it was: ' +
      'restore its old content, or restore a newer checkpoint.',
  },
  {
    pattern: /Can't fork for (\d+): File exists/,
    say: (m) =>
      `PID ${m[1]}, which the job had, is taken by another process, and CRIU restores every process with its own PID. ` +
      'Stop the process that holds it (a job still running? `crinc stop JOB`), or wait until it ends, then restore again. ' +
      '(Jobs started by crinc run live in their own PID namespace and do not meet this.)',
  },
  {
    pattern: /Can't dump file \d+ of that type \[\w+\] \((.+)\)/,
    say: (m, action) =>
      `the job holds a file CRIU cannot ${action}: ${m[1]}. Close it before checkpoints are taken (or keep it out of the job), or run the job without checkpoints.`,
  },
  {
    // Error lines only: CRIU warns of features it goes without in words like these.
    pattern: /^[^\n]*Error[^\n]*(?:[Uu]nsupported|not supported|[Cc]an't dump (?:half of stream unix connection|nested|ghost)|Unknown [\w ]+ type|isn't supported)[^\n]*/m,
    say: (m, action) =>
      `the job uses something CRIU cannot ${action}: "${stripLogPrefix(m[0])}". ` +
      'Change the job so that it does not hold it at checkpoint time (e.g. close the device or socket), or run it without checkpoints.',
  },
];

/** "(35.649678) Error (criu/parasite-syscall.c:92): text", "(0.1) 1: Error (…): text" → "text". */
function stripLogPrefix(line: string): string {
  return line.replace(/^\s*\([\d.]+\)\s*(?:\d+:\s*)?/, '').replace(/^(?:Error|Warn)\s+\([^)]*\):\s*/, '').trim();
}

/** CRIU's errors and warnings that every run logs here and that fail nothing (docs: DESIGN, "Environment facts"). */
const NOISE = [/rlimit: Can't setup RLIMIT_NOFILE/, /criu\/kerndat\.c/];

/** The lines that can say why CRIU failed: its errors and warnings (not its feature probes), and what it wrote to stderr. */
function failureLines(log: string): string {
  return log
    .split('\n')
    .filter((l) => (/^\s*\([\d.]+\)\s*(?:\d+:\s*)?(?:Error|Warn)\b/.test(l) || !/^\s*\(/.test(l)) && !NOISE.some((n) => n.test(l)))
    .join('\n');
}

/** What CRIU's failure means and what to do, from its log (and stderr); undefined when crinc does not know it. */
export function explainCriuFailure(log: string, action: CriuAction): string | undefined {
  const logLines = failureLines(log);
  for (const e of EXPLANATIONS) {
    const m = e.pattern.exec(logLines);
    if (!m) continue;
    // CRIU's own line, for a search or a report upstream.
    const start = logLines.lastIndexOf('\n', m.index) + 1;
    const end = logLines.indexOf('\n', m.index);
    return `${e.say(m, action)}\n(CRIU said: ${stripLogPrefix(logLines.slice(start, end < 0 ? undefined : end))})`;
  }
  return undefined;
}
