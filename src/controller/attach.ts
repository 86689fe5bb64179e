// `crinc attach PID`: make a process tree that crinc did not start a job, so that it is
// checkpointed like one. CRIU dumps the tree below PID; it restores every process with
// its old PID (so a restore needs those PIDs free: the old process ended and was reaped)
// and its session as it was. That works without `--shell-job` only when the tree's root
// leads its own session and has no controlling terminal, which attach checks first.
import { mkdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Repository, validateJobName } from '../store/repository.js';
import { procStat } from '../sys/proc.js';
import { ControllerError, JobExistsError } from './errors.js';
import { isRunning } from './procfs.js';
import type { RunningJob } from './run.js';

/** How often an attached process, which is not crinc's child, is looked at to see whether it ended. */
export const ATTACHED_POLL_MS = 500;

export class AttachError extends ControllerError {
  override name = 'AttachError';
}

/** What crinc records about the process: its command line and working directory. */
export interface AttachTarget {
  command: string[];
  cwd: string;
}

/** Checks that CRIU can dump (and later restore) the tree rooted at pid, or says why not. */
export function attachTarget(pid: number): AttachTarget {
  if (!Number.isInteger(pid) || pid < 2) throw new AttachError(`"${pid}" is not a process crinc can attach to: give the PID of the process tree's root (2 or above)`);
  const stat = procStat(pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X') {
    throw new AttachError(`there is no running process ${pid} (it does not exist or has exited); check the PID, e.g. with ps -p ${pid}`);
  }
  if (pid === process.pid || isAncestorOfSelf(pid)) throw new AttachError(`process ${pid} is crinc itself or one of its parents: crinc cannot checkpoint the process that runs it`);
  const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
  if (command.length === 0) throw new AttachError(`process ${pid} is a kernel thread: there is nothing of it to checkpoint`);
  const nsPids = /^NSpid:\s*(.+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]?.trim().split(/\s+/) ?? [String(pid)];
  if (nsPids.length > 1 && nsPids[nsPids.length - 1] !== '1') {
    throw new AttachError(
      `process ${pid} runs inside a PID namespace whose init is another process: CRIU dumps such a tree only from the namespace's init. ` +
        `Attach to the init instead (the process whose NSpid in /proc/PID/status ends in 1).`,
    );
  }
  if (stat.session !== pid) {
    throw new AttachError(
      `process ${pid} is not a session leader (it belongs to session ${stat.session}): CRIU dumps a tree whose session leader is outside it only as a shell job, ` +
        `and a restore would then move it into another session. Start the program with setsid (setsid CMD </dev/null >LOG 2>&1 &) and attach to that.`,
    );
  }
  if (stat.ttyNr !== 0) {
    throw new AttachError(
      `process ${pid} has a controlling terminal: a restore cannot give it that terminal back (CRIU would need --shell-job and the same terminal). ` +
        `Start the program detached from the terminal, e.g. setsid CMD </dev/null >LOG 2>&1 &, and attach to that.`,
    );
  }
  return { command, cwd: readlinkSync(`/proc/${pid}/cwd`) };
}

function isAncestorOfSelf(pid: number): boolean {
  for (let p = process.ppid; p > 1; p = procStat(p)?.ppid ?? 0) if (p === pid) return true;
  return false;
}

/** Records the process as the job; refuses a name whose job still runs, and a process that is some job's already. */
export function registerAttached(repo: Repository, job: string, pid: number, target: AttachTarget): string {
  validateJobName(job);
  const existing = repo.findJob(job);
  // The job's own process (a restored job taken up again) may be attached to it.
  if (existing?.pid && existing.pid !== pid && isRunning(existing.pid)) throw new JobExistsError(job, existing.pid);
  const owner = repo.listJobs().find((j) => j.pid === pid && j.name !== job && isRunning(pid));
  if (owner) throw new AttachError(`process ${pid} is job "${owner.name}" already; checkpoint it with crinc checkpoint ${owner.name}`);
  const jobDir = repo.jobDir(job);
  mkdirSync(jobDir, { recursive: true, mode: 0o700 });
  const now = Date.now();
  repo.saveJob({
    name: job,
    createdAt: existing?.createdAt ?? now,
    command: target.command,
    cwd: target.cwd,
    pid,
    controllerPid: process.pid,
    state: 'running',
    updatedAt: now,
  });
  return jobDir;
}

/** An attached process as a running job: not our child, so its end is seen by looking. */
export function attachedJob(pid: number, jobDir: string): RunningJob {
  const exited = (async () => {
    // Unreferenced: the watch alone does not keep crinc running once it stops controlling the job.
    while (isRunning(pid)) await sleep(ATTACHED_POLL_MS, undefined, { ref: false });
    return { code: null, signal: null };
  })();
  return { pid, exited, jobDir, release: () => undefined };
}

/** The default job name for a command: its program's base name, made a valid job name. */
export function jobNameFor(command: string[]): string {
  return command[0]!.split('/').pop()!.replace(/[^A-Za-z0-9._-]/g, '_');
}
