// `crinc jobs`: every job of the store, its process, whether the daemon manages it, its
// last checkpoint. The same rows come from the daemon (which adds when it checkpoints
// next) and, without one, from the store and /proc.
import type { ManagedJobRecord, Repository } from '../store/repository.js';
import { isRunning } from './procfs.js';

/**
 * `running`/`stopped`: the process runs or not (a job nobody manages);
 * `exited`: a managed job's process ended and the daemon saw it end;
 * `dead`: a managed job's process is gone without the daemon seeing it end
 * (killed while the daemon was down, or found gone at the daemon's start).
 */
export type JobRowState = 'running' | 'stopped' | 'exited' | 'dead';

export interface JobRow {
  job: string;
  pid: number | null;
  state: JobRowState;
  command: string[];
  lastCheckpoint: { id: number; takenAt: string } | null;
  managed: {
    origin: ManagedJobRecord['origin'];
    intervalMs: number;
    /** How the process ended, for exited and dead jobs. */
    ended: string | null;
    /** Only in the daemon's answer: when it takes the next checkpoint. */
    nextCheckpointAt?: string | null;
  } | null;
}

export function jobRows(repo: Repository): JobRow[] {
  const managed = new Map(repo.listManagedJobs().map((m) => [m.job, m]));
  return repo.listJobs().map((j) => {
    const last = repo.latestCheckpoint(j.name);
    const m = managed.get(j.name);
    const running = j.pid !== null && isRunning(j.pid);
    let state: JobRowState = running ? 'running' : 'stopped';
    // A managed job still marked active whose process is gone died while no daemon watched.
    if (m && !running) state = m.state === 'exited' ? 'exited' : 'dead';
    return {
      job: j.name,
      pid: j.pid,
      state,
      command: j.command,
      lastCheckpoint: last ? { id: last.id, takenAt: new Date(last.takenAt).toISOString() } : null,
      managed: m ? { origin: m.origin, intervalMs: m.intervalMs, ended: m.ended } : null,
    };
  });
}
