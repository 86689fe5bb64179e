// `crinc run` as a controller: periodic checkpoints, Ctrl-C, --kill-on-exit, a job that ends.
import { readdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, type CheckpointJson, COUNTER, type JobInfo, Sandbox, waitFor } from './helpers.js';

function exitOf(child: import('node:child_process').ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

describe('crinc run', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('checkpoints every interval; Ctrl-C stops checkpointing and leaves the job running', async () => {
    const { controller, pid } = await sb.run('periodic', [COUNTER, '--region-mib', '4'], ['--interval', '700ms']);
    await waitFor(() => sb.json<CheckpointJson[]>(['list', 'periodic']).length >= 2, 'two periodic checkpoints', 30_000);
    controller.kill('SIGINT');
    expect(await exitOf(controller)).toBe(0);
    expect(alive(pid)).toBe(true);
    const job = sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'periodic')!;
    expect(job).toMatchObject({ pid, state: 'running' });
    // Without its controller, a checkpoint still works standalone.
    expect(sb.json<CheckpointJson>(['checkpoint', 'periodic']).job).toBe('periodic');
  });

  it('--kill-on-exit ends the job too', async () => {
    const { controller, pid } = await sb.run('killed', [COUNTER, '--region-mib', '4'], ['--interval', '1h', '--kill-on-exit']);
    controller.kill('SIGTERM');
    expect(await exitOf(controller)).toBe(0);
    await waitFor(() => !alive(pid), 'the job to end');
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'killed')!.state).toBe('stopped');
  });

  it('ends when the job ends, and says so', async () => {
    const { controller, output } = await sb.run('short', ['sh', '-c', 'echo hello; sleep 0.3; exit 3'], ['--interval', '1h'], false);
    await exitOf(controller);
    expect(output()).toMatch(/job short \(pid \d+\) exited with code 3/);
    expect(sb.jobLog('short')).toBe('hello\n');
  });

  it('refuses a command that does not exist, and a second job of the same name', async () => {
    const r = sb.cli(['run', '--job', 'nope', '--', '/no/such/program']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/"\/no\/such\/program" is not an executable file/);
    const { pid } = await sb.run('twice', [COUNTER, '--region-mib', '1'], ['--interval', '1h', '--kill-on-exit']);
    const again = sb.cli(['run', '--job', 'twice', '--', COUNTER]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain(`job "twice" already runs as pid ${pid}`);
  });

  it('leaves no staging directory behind', () => {
    // Staging is named after its owner's pid; other crinc processes may stage right now,
    // but no staging may outlive the process that made it.
    const left = readdirSync('/dev/shm').filter((n) => {
      const owner = /^crinc-(?:checkpoint|restore)-(\d+)-/.exec(n);
      return owner && !alive(Number(owner[1]));
    });
    expect(left).toEqual([]);
  });
});
