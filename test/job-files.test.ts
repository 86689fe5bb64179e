// The job's files: a restore to an older checkpoint puts the job's log and output file
// back as they were then (CRIU alone refuses: "bad size"), and keeps their newer content.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CheckpointJson, COUNTER, killAndWait, lastTick, Sandbox, waitFor } from './helpers.js';

describe('restore of a job whose log and output file changed after the checkpoint', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('puts the files back, keeps their newer content, and the job goes on', async () => {
    const out = join(sb.dir, 'output.txt');
    const log = join(sb.store, 'jobs', 'files', 'stdout.log');
    // Ticks only on SIGUSR2: the files change exactly when the test says so.
    const { pid } = await sb.run('files', [COUNTER, '--region-mib', '4', '--tick-ms', '0', '--out', out]);
    // Its handlers are set once it says so; a SIGUSR2 before that would end it.
    await waitFor(() => sb.jobLog('files').startsWith('start'), 'the workload to start');
    const tick = async (n: number) => {
      const target = lastTick(sb.jobLog('files')) + n;
      for (let i = 0; i < n; i++) {
        process.kill(pid, 'SIGUSR2');
        await waitFor(() => lastTick(sb.jobLog('files')) >= target - n + i + 1, 'a tick');
      }
    };
    await tick(3);
    const atFirst = { out: readFileSync(out, 'utf8'), log: readFileSync(log, 'utf8') };
    const first = sb.json<CheckpointJson>(['checkpoint', 'files']);
    await tick(4); // appends to both files and rewrites the output's header in place
    sb.json<CheckpointJson>(['checkpoint', 'files']);
    await tick(2);
    const latest = { out: readFileSync(out, 'utf8'), log: readFileSync(log, 'utf8') };
    expect(latest.out.length).toBeGreaterThan(atFirst.out.length);
    expect(latest.out.slice(0, 32)).not.toBe(atFirst.out.slice(0, 32));
    await killAndWait(pid);

    const r = sb.json<{ pid: number; checkpoint: number; rolledBack: string[]; preRestore: number }>([
      'restore', 'files', '--id', String(first.id),
    ]);
    sb.track(r.pid);
    expect(r.checkpoint).toBe(first.id);
    expect(r.rolledBack.sort()).toEqual([log, out].sort());

    // The files hold their content of that checkpoint.
    expect(readFileSync(out, 'utf8')).toBe(atFirst.out);
    expect(readFileSync(log, 'utf8')).toBe(atFirst.log);

    // Their newer content is kept in the store, as a pre-restore snapshot.
    const list = sb.json<CheckpointJson[]>(['list', 'files']);
    const snap = list.find((c) => c.id === r.preRestore)!;
    expect(snap.kind).toBe('pre-restore');
    const exported = join(sb.dir, 'pre-restore');
    sb.ok(['export', 'files', '--id', String(snap.id), '--to', exported]);
    expect(readFileSync(join(exported, 'files', out), 'utf8')).toBe(latest.out);
    expect(readFileSync(join(exported, 'files', log), 'utf8')).toBe(latest.log);

    // The restored job goes on from tick 3 and writes on where the file ended then.
    process.kill(r.pid, 'SIGUSR2');
    await waitFor(() => lastTick(sb.jobLog('files')) === 4, 'tick 4 after the restore');
    expect(readFileSync(out, 'utf8')).toBe(
      `${'count=4'.padEnd(31)}\n` + 'tick 1\ntick 2\ntick 3\ntick 4\n',
    );
  });
});
