// `crinc status`: the job's process, its last checkpoint, and what dirty tracking has
// seen since then (from the job's controller; without one, only what the store knows).
import type { Repository } from '../store/repository.js';
import { isRunning } from './procfs.js';
import type { FdChange, ProcessTrackingMode, TrackingSession } from './tracking-session.js';

export interface JobStatus {
  job: string;
  pid: number | null;
  running: boolean;
  controller: boolean;
  lastCheckpoint: { id: number; takenAt: string; mode: string } | null;
  tracking: {
    mode: 'armed' | 'disarmed' | 'off';
    processes: { pid: number; nsPid: number; mode: ProcessTrackingMode; problem: string | null }[];
    sinceCheckpoint: {
      seconds: number;
      writeFaults: number;
      faultRatePerSecond: number;
      pagesWritten: number;
      fdChanges: FdChange[];
      fdsChanged: Record<string, number[]>;
      modifiedFiles: { path: string; writes: number; bytesWritten: number }[];
      complete: boolean;
      incompleteBecause: string[];
    } | null;
  };
}

/** `controller`: whether a controller answers for the job (it passes its tracking, if any). */
export function jobStatus(repo: Repository, jobName: string, controller: boolean, tracking: TrackingSession | null): JobStatus {
  const job = repo.requireJob(jobName);
  const last = repo.latestCheckpoint(jobName);
  const base = {
    job: jobName,
    pid: job.pid,
    running: job.pid !== null && isRunning(job.pid),
    controller,
    lastCheckpoint: last ? { id: last.id, takenAt: new Date(last.takenAt).toISOString(), mode: last.mode } : null,
  };
  if (!tracking) return { ...base, tracking: { mode: 'off', processes: [], sinceCheckpoint: null } };
  const a = tracking.peek();
  const seconds = Math.max((Date.now() - a.startedAt) / 1000, 1e-3);
  return {
    ...base,
    tracking: {
      mode: tracking.mode,
      processes: tracking.processModes(),
      sinceCheckpoint: {
        seconds,
        writeFaults: a.writeFaults,
        faultRatePerSecond: a.writeFaults / seconds,
        pagesWritten: a.writtenPages,
        fdChanges: a.fdChanges,
        fdsChanged: Object.fromEntries([...a.fdsChanged].map(([pid, fds]) => [String(pid), [...fds].sort((x, y) => x - y)])),
        modifiedFiles: [...a.modifiedFiles].map(([path, m]) => ({ path, ...m })),
        complete: a.complete,
        incompleteBecause: a.incompleteBecause,
      },
    },
  };
}
