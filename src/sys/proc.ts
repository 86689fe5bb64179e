// What /proc says about any process: whether it has exited, and its children. One
// place for the parsing (the state follows the last ')' of /proc/PID/stat, since the
// command name may hold spaces and parentheses).
import { readdirSync, readFileSync } from 'node:fs';

/** ENOENT and ESRCH: the process or fd went away while we looked. */
export function isGone(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ESRCH';
}

/** The fields of /proc/PID/stat crinc reads (proc(5) numbering in the comments). */
export interface ProcStat {
  /** (3) R, S, D, Z, X, … */
  state: string;
  /** (4) */
  ppid: number;
  /** (6) the session id: the pid of the session leader. */
  session: number;
  /** (7) the controlling terminal's device number; 0 for none. */
  ttyNr: number;
  /** (22) when the process started, in clock ticks (USER_HZ) since boot: with the pid, names one process for good. */
  startTicks: number;
}

/** /proc/PID/stat, or undefined when the process is gone. */
export function procStat(pid: number): ProcStat | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (error) {
    if (isGone(error)) return undefined;
    throw error;
  }
  // pid (comm) state …: comm may hold spaces and parentheses; the state follows the last ')'.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: f[0]!, ppid: Number(f[1]), session: Number(f[3]), ttyNr: Number(f[4]), startTicks: Number(f[19]) };
}

/** Whether the process has exited and waits to be reaped (or is gone). */
export function hasExited(pid: number): boolean {
  const state = procStat(pid)?.state;
  return state === undefined || state === 'Z' || state === 'X';
}

/** The children of every thread of a process (empty when it is gone). */
export function childrenOf(tgid: number): number[] {
  const children: number[] = [];
  let threads: string[];
  try {
    threads = readdirSync(`/proc/${tgid}/task`);
  } catch (error) {
    if (isGone(error)) return children;
    throw error;
  }
  for (const tid of threads) {
    try {
      for (const child of readFileSync(`/proc/${tgid}/task/${tid}/children`, 'utf8').split(' ')) {
        if (child.trim() !== '') children.push(Number(child));
      }
    } catch (error) {
      if (!isGone(error)) throw error;
    }
  }
  return children;
}

