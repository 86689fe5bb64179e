// What /proc says about any process: whether it has exited, its parent, its children. One
// place for the parsing (the state follows the last ')' of /proc/PID/stat, since the
// command name may hold spaces and parentheses).
import { readdirSync, readFileSync } from 'node:fs';

/** ENOENT and ESRCH: the process or fd went away while we looked. */
export function isGone(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ESRCH';
}

/** The fields of /proc/PID/stat after the command name: state, ppid, pgrp, … */
function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // pid (comm) state …: comm may hold spaces and parentheses; the state follows the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** Whether the process has exited and waits to be reaped (or is gone). */
export function hasExited(pid: number): boolean {
  try {
    const state = statFields(pid)[0];
    return state === 'Z' || state === 'X';
  } catch (error) {
    if (isGone(error)) return true;
    throw error;
  }
}

/** The PID of the process's parent (throws when the process is gone). */
export function parentOf(pid: number): number {
  return Number(statFields(pid)[1]);
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

