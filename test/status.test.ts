// `crinc status`: what dirty tracking saw since the last checkpoint, from the controller.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, Sandbox, waitFor } from './helpers.js';

const SCENARIO = join(ROOT, 'build', 'workloads', 'scenario');

interface Status {
  job: string;
  running: boolean;
  controller: boolean;
  tracking: {
    mode: string;
    processes: { pid: number; mode: string }[];
    sinceCheckpoint: {
      pagesWritten: number;
      writeFaults: number;
      fdChanges: { pid: number; op: string; syscall: string; fd: number; otherFd: number; path: string | null }[];
      fdsChanged: Record<string, number[]>;
      modifiedFiles: { path: string }[];
    } | null;
  };
}

describe('crinc status', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('reports exactly the fd changes since the last checkpoint', async () => {
    const path = join(sb.dir, 'opened-by-job');
    const { pid } = await sb.run('fds', [SCENARIO, 'fds', path]);
    await waitFor(() => sb.jobLog('fds').includes('ready'), 'the workload');
    sb.ok(['checkpoint', 'fds']);
    const quiet = sb.json<Status>(['status', 'fds']);
    expect(quiet).toMatchObject({ job: 'fds', running: true, controller: true });
    expect(quiet.tracking.mode).toBe('armed');
    expect(quiet.tracking.processes).toEqual([expect.objectContaining({ pid, mode: 'armed' })]);
    expect(quiet.tracking.sinceCheckpoint!.fdChanges).toEqual([]);

    process.kill(pid, 'SIGUSR2');
    const line = await waitFor(() => /^fds (\d+) (\d+) (\d+) (\d+) (\d+)$/m.exec(sb.jobLog('fds')), 'the fd changes');
    const [opened, dup, sock, pipeR, pipeW] = line.slice(1).map(Number) as [number, number, number, number, number];
    const s = sb.json<Status>(['status', 'fds']).tracking.sinceCheckpoint!;
    expect(s.fdChanges.map((c) => ({ pid: c.pid, op: c.op, fd: c.fd, otherFd: c.otherFd }))).toEqual([
      { pid, op: 'opened', fd: opened, otherFd: expect.any(Number) },
      { pid, op: 'duplicated', fd: dup, otherFd: opened },
      { pid, op: 'closed', fd: opened, otherFd: -1 },
      { pid, op: 'opened', fd: sock, otherFd: -1 },
      { pid, op: 'opened-pair', fd: pipeR, otherFd: pipeW },
      { pid, op: 'closed', fd: pipeR, otherFd: -1 },
    ]);
    expect(s.fdChanges[0]!.path).toBe(path);
    expect(s.fdsChanged).toEqual({ [String(pid)]: [...new Set([opened, dup, sock, pipeR, pipeW])].sort((a, b) => a - b) });
    // The step's line went to the job's log: a modified file.
    expect(s.modifiedFiles.map((f) => f.path)).toContain(join(sb.store, 'jobs', 'fds', 'stdout.log'));

    // A checkpoint starts a new interval.
    sb.ok(['checkpoint', 'fds']);
    expect(sb.json<Status>(['status', 'fds']).tracking.sinceCheckpoint!.fdChanges).toEqual([]);
  });

  it('without a controller, says what the store knows', async () => {
    const { controller, pid } = await sb.run('plain', [SCENARIO, 'writer']);
    controller.kill('SIGINT');
    await waitFor(() => controller.exitCode !== null, 'the controller to stop');
    const s = sb.json<Status>(['status', 'plain']);
    expect(s).toMatchObject({ job: 'plain', running: true, controller: false, tracking: { mode: 'off', processes: [], sinceCheckpoint: null } });
    process.kill(pid, 'SIGKILL');
  });
});
