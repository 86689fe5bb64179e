// `crinc daemon` with real CRIU and real processes: two jobs on their own schedules, the
// other commands through its socket, restarts after SIGTERM and SIGKILL (schedules go on,
// a job killed meanwhile is reported dead), a job that exits, a second daemon refused.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childrenOf, procStat } from '../src/sys/proc.js';
import { alive, type CheckpointJson, CLI, COUNTER, killAndWait, Sandbox, ticks, waitFor } from './helpers.js';

interface JobRow {
  job: string;
  pid: number;
  state: string;
  managed: { origin: string; intervalMs: number; ended: string | null; nextCheckpointAt?: string | null } | null;
  lastCheckpoint: { id: number } | null;
}

interface LogEvent {
  time: string;
  level: string;
  job: string | null;
  msg: string;
  fields: Record<string, unknown>;
}

/** A `crinc daemon` on the sandbox's store; its stderr (JSON lines, not a terminal) kept. */
class DaemonProcess {
  readonly child: ChildProcess;
  private stderr = '';
  constructor(sb: Sandbox) {
    this.child = spawn(process.execPath, [CLI, 'daemon'], {
      env: { ...process.env, CRINC_STORE: sb.store, CRINC_VERIFY_TRACKING: '1' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
  }

  events(): LogEvent[] {
    return this.stderr.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as LogEvent);
  }

  async ready(): Promise<void> {
    await waitFor(() => this.events().some((e) => e.msg === 'daemon started'), `the daemon to start\n${this.stderr}`, 60_000);
  }

  async exit(): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    return new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
  }
}

function checkpointsOf(sb: Sandbox, job: string): CheckpointJson[] {
  return sb.json<CheckpointJson[]>(['list', job]);
}

function row(sb: Sandbox, job: string): JobRow {
  return sb.json<JobRow[]>(['jobs']).find((r) => r.job === job)!;
}

describe('crinc daemon', () => {
  const sb = new Sandbox();
  let daemon: DaemonProcess;
  const pids: Record<string, number> = {};

  beforeAll(async () => {
    daemon = new DaemonProcess(sb);
    await daemon.ready();
  });
  afterAll(async () => {
    if (daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
    sb.cleanup();
  });

  it('listens on a root-only socket in the store, and refuses a second daemon on the same store', () => {
    const socket = join(sb.store, 'daemon.sock');
    expect(statSync(socket).isSocket()).toBe(true);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    expect(statSync(sb.store).mode & 0o777).toBe(0o700);
    const second = sb.cli(['daemon']);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`a crinc daemon already serves the store ${sb.store} (crinc daemon pid ${daemon.child.pid} since`);
  });

  it('manages two jobs with different intervals; crinc run hands them over and returns', async () => {
    for (const [job, interval] of [['fast', '1s'], ['slow', '3s']] as const) {
      const out = sb.ok(['run', '--job', job, '--interval', interval, '--', COUNTER, '--region-mib', '4', '--tick-ms', '50']);
      const m = /^job (\S+) runs as pid (\d+); the daemon \(pid (\d+)\) checkpoints it every (\S+) /.exec(out);
      expect(m?.slice(1)).toEqual([job, expect.any(String), String(daemon.child.pid), interval]);
      pids[job] = Number(m![2]);
      sb.track(pids[job]!);
    }
    await waitFor(() => checkpointsOf(sb, 'slow').length >= 4, 'four checkpoints of the slow job', 90_000);
    const fast = checkpointsOf(sb, 'fast').map((c) => Date.parse(c.takenAt));
    const slow = checkpointsOf(sb, 'slow').map((c) => Date.parse(c.takenAt));
    const gaps = (t: number[]) => t.slice(1).map((x, i) => x - t[i]!);
    // Each job on its own schedule: a checkpoint at least one interval after the previous
    // one's moment, and the fast job checkpointed more often than the slow one.
    expect(Math.min(...gaps(fast))).toBeGreaterThanOrEqual(1000);
    expect(Math.min(...gaps(slow))).toBeGreaterThanOrEqual(3000);
    expect(fast.filter((t) => t > slow[0]! && t <= slow[3]!).length).toBeGreaterThanOrEqual(4);
    for (const job of ['fast', 'slow']) {
      expect(row(sb, job)).toMatchObject({ job, pid: pids[job], state: 'running', managed: { origin: 'run', intervalMs: job === 'fast' ? 1000 : 3000, ended: null } });
    }
  });

  it('answers crinc jobs, status and checkpoint', async () => {
    // Only the daemon knows when it checkpoints next.
    expect(Date.parse(row(sb, 'slow').managed!.nextCheckpointAt!)).toBeGreaterThan(0);
    const status = sb.json<{ job: string; running: boolean; controller: boolean; tracking: { mode: string } }>(['status', 'slow']);
    expect(status).toMatchObject({ job: 'slow', running: true, controller: true });
    expect(['armed', 'disarmed']).toContain(status.tracking.mode);
    const cp = sb.json<CheckpointJson>(['checkpoint', 'slow']);
    expect(cp.job).toBe('slow');
    // The daemon took it: its log says so (read once the test's event loop has run again).
    await waitFor(() => daemon.events().some((e) => e.msg === 'checkpoint' && e.job === 'slow' && e.fields.id === cp.id), 'the daemon to log the checkpoint');
  });

  it('leaves no zombie behind: what its checkpoints start is reaped', async () => {
    // The daemon is a child subreaper: an orphan of CRIU's action script would be its
    // child and stay a zombie. One seen twice, seconds apart, is a leak, not a moment.
    const zombies = () => childrenOf(daemon.child.pid!).filter((pid) => procStat(pid)?.state === 'Z');
    const first = zombies();
    await waitFor(() => checkpointsOf(sb, 'fast').length >= 3, 'more checkpoints of the fast job');
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect(zombies().filter((pid) => first.includes(pid))).toEqual([]);
    expect(zombies().length).toBeLessThanOrEqual(1);
  });

  it('reports a job whose process ended, with how', async () => {
    sb.ok(['run', '--job', 'short', '--interval', '1h', '--', 'sh', '-c', 'sleep 0.5; exit 3']);
    await waitFor(() => row(sb, 'short').state === 'exited', 'the short job to exit');
    expect(row(sb, 'short').managed!.ended).toBe('exit code 3');
    await waitFor(() => daemon.events().some((e) => e.msg === 'job exited' && e.job === 'short' && e.fields.how === 'exit code 3'), 'the daemon to log the exit');
  });

  it('takes over a process with crinc attach, and sees it end', async () => {
    const attached = spawn(COUNTER, ['--region-mib', '2', '--tick-ms', '50'], { detached: true, stdio: 'ignore' });
    sb.track(attached.pid!);
    const out = sb.ok(['attach', String(attached.pid), '--job', 'att', '--interval', '1s']);
    expect(out).toContain(`job att runs as pid ${attached.pid}; the daemon (pid ${daemon.child.pid}) checkpoints it every 1s`);
    await waitFor(() => checkpointsOf(sb, 'att').length >= 2, 'two checkpoints of the attached process', 30_000);
    expect(row(sb, 'att')).toMatchObject({ pid: attached.pid, state: 'running', managed: { origin: 'attach', intervalMs: 1000 } });
    attached.kill('SIGKILL');
    await waitFor(() => row(sb, 'att').state === 'exited', 'the daemon to see the attached process end');
    sb.untrack(attached.pid!);
    // Not the daemon's child: its parent (this test) got the exit status.
    expect(row(sb, 'att').managed!.ended).toBe('ended; its exit status went to its parent');
  });

  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    it(`after ${signal} and a restart, schedules go on and a job killed meanwhile is reported dead`, async () => {
      // A job of its own, to kill while the daemon is down.
      const victim = `victim-${signal.toLowerCase()}`;
      const out = sb.ok(['run', '--job', victim, '--interval', '1h', '--', COUNTER, '--region-mib', '1']);
      const victimPid = Number(/runs as pid (\d+)/.exec(out)![1]);
      sb.track(victimPid);

      daemon.child.kill(signal);
      const code = await daemon.exit();
      if (signal === 'SIGTERM') {
        expect(code).toBe(0);
        expect(existsSync(join(sb.store, 'daemon.sock'))).toBe(false);
      }
      // Without a daemon the commands work standalone; the jobs go on.
      expect(alive(pids.fast!) && alive(pids.slow!)).toBe(true);
      expect(row(sb, 'fast').managed!.nextCheckpointAt).toBeUndefined();
      await killAndWait(victimPid);
      sb.untrack(victimPid);
      const lastBefore = Math.max(...checkpointsOf(sb, 'fast').map((c) => c.id));

      daemon = new DaemonProcess(sb);
      await daemon.ready();
      await waitFor(() => checkpointsOf(sb, 'fast').some((c) => c.id > lastBefore), 'a checkpoint of the fast job after the restart', 30_000);
      await waitFor(() => checkpointsOf(sb, 'slow').some((c) => Date.parse(c.takenAt) > Date.parse(daemon.events()[0]!.time)), 'the slow job too', 30_000);
      const events = daemon.events();
      expect(events.filter((e) => e.msg === 'resumed the schedule of a managed job').map((e) => e.job).sort()).toEqual(['fast', 'slow']);
      expect(events.find((e) => e.msg === 'job is dead')).toMatchObject({ level: 'warn', job: victim, fields: { pid: victimPid } });
      expect(row(sb, victim)).toMatchObject({ state: 'dead', managed: { ended: 'its process ended while no daemon watched' } });
      // Jobs that had ended before stay as they were, not dropped.
      expect(row(sb, 'short')).toMatchObject({ state: 'exited', managed: { ended: 'exit code 3' } });
    });
  }

  it('restores a managed job under the daemon: its schedule goes on, and the daemon reaps it', async () => {
    await killAndWait(pids.slow!);
    sb.untrack(pids.slow!);
    await waitFor(() => row(sb, 'slow').state === 'exited', 'the daemon to see the slow job end');
    // Started by the daemon before its restart: its parent is still the first daemon's launcher (unshare).
    expect(row(sb, 'slow').managed!.ended).toBe('ended; its exit status went to its parent');
    const restoredAt = Date.now();
    const r = sb.json<{ pid: number; checkpoint: number }>(['restore', 'slow']);
    sb.track(r.pid);
    await waitFor(() => daemon.events().some((e) => e.msg === 'restored a managed job; its schedule goes on' && e.job === 'slow' && e.fields.pid === r.pid), 'the daemon to restore it');
    expect(row(sb, 'slow')).toMatchObject({ pid: r.pid, state: 'running', managed: { intervalMs: 3000, ended: null } });
    await waitFor(() => checkpointsOf(sb, 'slow').some((c) => Date.parse(c.takenAt) > restoredAt), 'a checkpoint of the restored job', 30_000);
    // It goes on from the checkpoint: its log was rolled back to it, and the ticks follow on without a gap.
    await waitFor(() => ticks(sb.jobLog('slow')).some((t) => t.at > restoredAt), 'the restored job to tick');
    ticks(sb.jobLog('slow')).forEach((t, i) => {
      expect(t.tick).toBe(i + 1);
    });
    // The restored process is the daemon's child now: the daemon reaps it and knows how it ended.
    process.kill(r.pid, 'SIGKILL');
    await waitFor(() => row(sb, 'slow').state === 'exited', 'the daemon to reap the restored job');
    sb.untrack(r.pid);
    expect(row(sb, 'slow').managed!.ended).toBe('signal SIGKILL');
    expect(alive(r.pid)).toBe(false);
  });

  it('crinc run of a job with checkpoints: the daemon resumes it from the newest one', async () => {
    const newest = Math.max(...checkpointsOf(sb, 'slow').filter((c) => c.kind === 'checkpoint').map((c) => c.id));
    const resumedAt = Date.now();
    const out = sb.ok(['run', '--job', 'slow', '--interval', '3s', '--', COUNTER, '--region-mib', '4', '--tick-ms', '50']);
    const m = new RegExp(`^resumed job slow from checkpoint ${newest} as pid (\\d+)$`, 'm').exec(out);
    expect(m, out).not.toBeNull();
    const pid = Number(m![1]);
    sb.track(pid);
    expect(row(sb, 'slow')).toMatchObject({ pid, state: 'running', managed: { origin: 'run', intervalMs: 3000, ended: null } });
    // One history: the log rolled back to the checkpoint, new ticks follow without a gap.
    await waitFor(() => ticks(sb.jobLog('slow')).some((t) => t.at > resumedAt), 'the resumed job to tick');
    ticks(sb.jobLog('slow')).forEach((t, i) => {
      expect(t.tick).toBe(i + 1);
    });
    await waitFor(() => checkpointsOf(sb, 'slow').some((c) => Date.parse(c.takenAt) > resumedAt), 'a checkpoint of the resumed job', 30_000);
    process.kill(pid, 'SIGKILL');
    await waitFor(() => row(sb, 'slow').state === 'exited', 'the daemon to reap the resumed job');
    sb.untrack(pid);
  });
});
