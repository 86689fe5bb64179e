// `crinc stop JOB [--checkpoint]` with real processes and CRIU: a job is its PID
// namespace's init, which a plain SIGTERM from outside does not end; crinc stop ends it
// through whichever controller runs it (crinc run, the daemon) or standalone, and the
// job's record says it stopped. Also: messages that do not send the user in a circle.
import { spawn } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, type CheckpointJson, CLI, COUNTER, exitOf, type JobInfo, lastTick, Sandbox, waitFor } from './helpers.js';

interface StopJson {
  job: string;
  pid: number;
  how: string;
  checkpoint: CheckpointJson | null;
}

interface JobRow extends JobInfo {
  managed: { ended: string | null } | null;
}

describe('crinc stop', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('ends a job that ignores SIGTERM (a namespace init), through its crinc run, which ends too', async () => {
    const { controller, pid, output } = await sb.run('plain', [COUNTER, '--region-mib', '1'], ['--interval', '1h']);
    // What the issue saw: kill PID does not end the job.
    process.kill(pid, 'SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    expect(alive(pid)).toBe(true);
    const r = sb.json<StopJson>(['stop', 'plain', '--grace', '1s']);
    expect(r).toMatchObject({ job: 'plain', pid, how: 'killed', checkpoint: null });
    expect(alive(pid)).toBe(false);
    expect(await exitOf(controller)).toBe(0);
    expect(output()).toContain('stopped; job plain killed');
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'plain')!.state).toBe('stopped');
    // Stopping it again says there is nothing to stop.
    expect(sb.ok(['stop', 'plain'])).toContain('job plain was not running');
  });

  it('lets a job that handles SIGTERM end by itself within the grace time', async () => {
    const { controller, pid } = await sb.run('polite', ['sh', '-c', 'trap "echo bye; exit 0" TERM; while :; do sleep 0.1; done'], ['--interval', '1h']);
    const r = sb.json<StopJson>(['stop', 'polite']);
    expect(r).toMatchObject({ pid, how: 'terminated' });
    await exitOf(controller);
    expect(sb.jobLog('polite')).toContain('bye');
  });

  it('--checkpoint through crinc run: final checkpoint, exit 75, and the next crinc run resumes from it', async () => {
    const { controller, pid, output } = await sb.run('final', [COUNTER, '--region-mib', '4'], ['--interval', '1h']);
    await waitFor(() => lastTick(sb.jobLog('final')) >= 2, 'two ticks');
    const r = sb.json<StopJson>(['stop', 'final', '--checkpoint']);
    expect(r.how).toBe('killed');
    expect(r.checkpoint?.job).toBe('final');
    expect(alive(pid)).toBe(false);
    expect(await exitOf(controller)).toBe(75);
    expect(output()).toContain(`saved as checkpoint ${r.checkpoint!.id}`);
    const saved = lastTick(sb.jobLog('final'));
    const again = await sb.run('final', [COUNTER, '--region-mib', '4'], ['--interval', '1h', '--kill-on-exit']);
    await waitFor(() => again.output().includes(`resumed job final from checkpoint ${r.checkpoint!.id}`), `the resume to be reported\n${again.output()}`);
    await waitFor(() => lastTick(sb.jobLog('final')) > saved, 'the resumed job to tick on');
    again.controller.kill('SIGINT');
    await exitOf(again.controller);
  });

  it('standalone (no controller): --checkpoint, then the job stopped and marked so', async () => {
    const { controller, pid } = await sb.run('alone', [COUNTER, '--region-mib', '2'], ['--interval', '1h']);
    controller.kill('SIGINT'); // leaves the job running without a controller
    await exitOf(controller);
    expect(alive(pid)).toBe(true);
    const r = sb.json<StopJson>(['stop', 'alone', '--checkpoint']);
    expect(r).toMatchObject({ pid, how: 'killed' });
    expect(sb.json<CheckpointJson[]>(['list', 'alone']).map((c) => c.id)).toEqual([r.checkpoint!.id]);
    expect(alive(pid)).toBe(false);
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'alone')!.state).toBe('stopped');
    // And it restores from there.
    const restored = sb.json<{ pid: number; checkpoint: number }>(['restore', 'alone']);
    sb.track(restored.pid);
    expect(restored.checkpoint).toBe(r.checkpoint!.id);
  });

  it('a restore over a running job names crinc stop', () => {
    const r = sb.cli(['restore', 'alone']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('Stop it first: `crinc stop alone`');
  });

  it('through the daemon: the managed job ends, and crinc jobs says it was stopped', async () => {
    const daemon = spawn(process.execPath, [CLI, 'daemon'], { env: { ...process.env, CRINC_STORE: sb.store }, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    daemon.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    try {
      await waitFor(() => log.includes('daemon started'), `the daemon to start\n${log}`, 60_000);
      const pid = Number(/runs as pid (\d+)/.exec(sb.ok(['run', '--job', 'managed', '--interval', '1h', '--', COUNTER, '--region-mib', '1']))![1]);
      sb.track(pid);
      const r = sb.json<StopJson>(['stop', 'managed', '--checkpoint']);
      expect(r).toMatchObject({ pid, how: 'killed' });
      expect(alive(pid)).toBe(false);
      const row = sb.json<JobRow[]>(['jobs']).find((j) => j.job === 'managed')!;
      expect(row.state).toBe('exited');
      expect(row.managed?.ended).toBe(`stopped by crinc stop after checkpoint ${r.checkpoint!.id}`);
    } finally {
      daemon.kill('SIGTERM');
      await exitOf(daemon);
    }
  });
});

describe('messages that do not go in circles', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('checkpoint and restore of an ended job without checkpoints both point at crinc run', () => {
    expect(sb.cli(['run', '--job', 'gone', '--', '/bin/true']).code).toBe(0);
    const cp = sb.cli(['checkpoint', 'gone']);
    expect(cp.code).toBe(1);
    expect(cp.stderr).toContain('crinc run --job gone');
    const restore = sb.cli(['restore', 'gone']);
    expect(restore.code).toBe(1);
    expect(restore.stderr).toContain('has no checkpoint and is not running');
    expect(restore.stderr).toContain('crinc run --job gone');
    expect(restore.stderr).not.toContain('crinc checkpoint');
  });

  it('an interval below the minimum is refused, naming the minimum', () => {
    for (const interval of ['0', '0s', '1ms', '499ms']) {
      const r = sb.cli(['run', '--job', 'fast', '--interval', interval, '--', '/bin/true']);
      expect(r.code, interval).not.toBe(0);
      expect(r.stderr, interval).toMatch(/at least 500 ms/);
    }
  });
});

describe('a restore killed after CRIU brought the job back, then retried', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  /** The processes whose stdout is the job's log: copies of the job that write it. */
  function writersOf(job: string): number[] {
    const log = `${sb.store}/jobs/${job}/stdout.log`;
    return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number).filter((pid) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/1`) === log && alive(pid);
      } catch {
        return false;
      }
    });
  }

  it('finds the restored process instead of starting a second copy', async () => {
    const { controller, pid } = await sb.run('twice', [COUNTER, '--region-mib', '2'], ['--interval', '1h']);
    const cp = sb.json<CheckpointJson>(['checkpoint', 'twice']);
    sb.json<StopJson>(['stop', 'twice', '--grace', '0']);
    await exitOf(controller);
    expect(alive(pid)).toBe(false);
    const killed = sb.cli(['restore', 'twice'], { CRINC_FAULT: 'restore-after-criu' });
    expect(killed.signal).toBe('SIGKILL');
    const [restored] = writersOf('twice');
    expect(restored).toBeDefined();
    sb.track(restored!);
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'twice')!.state).toBe('restoring');
    const retry = sb.cli(['restore', 'twice']);
    expect(retry.code).toBe(1);
    expect(retry.stderr).toContain(`it runs as pid ${restored}`);
    expect(retry.stderr).toContain('Nothing was restored again');
    expect(writersOf('twice')).toEqual([restored]);
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'twice')).toMatchObject({ pid: restored, state: 'running' });
    // And the adopted job is the job: it checkpoints, and stops.
    expect(sb.json<CheckpointJson>(['checkpoint', 'twice']).id).toBeGreaterThan(cp.id);
    expect(sb.json<StopJson>(['stop', 'twice', '--grace', '0']).pid).toBe(restored);
    expect(writersOf('twice')).toEqual([]);
  });
});
