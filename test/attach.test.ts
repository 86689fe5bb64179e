// `crinc attach`: a process that crinc did not start (a session leader, started here
// with setsid), checkpointed, killed, restored: it goes on from the saved counter. And
// the processes attach refuses, with the reason.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, type CheckpointJson, CLI, COUNTER, lastTick, Sandbox, ticks, waitFor } from './helpers.js';

/** The counter as a session leader (detached: setsid), stdout and stderr on files, reaped by this process. */
function startCounter(sb: Sandbox, name: string, detached = true): { child: ChildProcess; log: string } {
  const log = join(sb.dir, `${name}.log`);
  const out = openSync(log, 'a', 0o600);
  const child = spawn(COUNTER, ['--region-mib', '8', '--tick-ms', '50'], { detached, stdio: ['ignore', out, out] });
  closeSync(out);
  sb.track(child.pid!);
  return { child, log };
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((resolve) => child.once('exit', () => resolve()));
}

describe('crinc attach', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('checkpoints a setsid process; after a kill, the restore goes on from the saved counter', async () => {
    const { child, log } = startCounter(sb, 'attached');
    const pid = child.pid!;
    await waitFor(() => lastTick(readFileSync(log, 'utf8')) >= 3, 'the counter to tick');

    // Without a daemon, attach stays in the foreground as the job's controller.
    let output = '';
    const controller = spawn(process.execPath, [CLI, 'attach', String(pid), '--job', 'att', '--interval', '1h'], {
      env: { ...process.env, CRINC_STORE: sb.store, CRINC_VERIFY_TRACKING: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    controller.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    controller.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await waitFor(() => output.includes(`attached to pid ${pid} as job att`), `crinc attach to start\n${output}`);
    await waitFor(() => {
      const r = sb.cli(['status', 'att', '--json']);
      return r.code === 0 && (JSON.parse(r.stdout) as { controller: boolean }).controller;
    }, `the controller of att to answer\n${output}`);
    expect(sb.json<{ job: string; pid: number; state: string; command: string[] }[]>(['jobs'])).toEqual([
      expect.objectContaining({ job: 'att', pid, state: 'running', command: [COUNTER, '--region-mib', '8', '--tick-ms', '50'] }),
    ]);

    const before = lastTick(readFileSync(log, 'utf8'));
    const cp = sb.json<CheckpointJson>(['checkpoint', 'att']);
    const after = lastTick(readFileSync(log, 'utf8'));
    expect(cp).toMatchObject({ job: 'att', kind: 'checkpoint' });
    await waitFor(() => lastTick(readFileSync(log, 'utf8')) > after + 5, 'the counter to go on past the checkpoint');

    // Killed and reaped (this process is its parent), so its PID is free for the restore.
    child.kill('SIGKILL');
    await exited(child);
    sb.untrack(pid);
    await waitFor(() => /job att \(pid \d+\) exited/.test(output), `crinc attach to see the process end\n${output}`);
    const killedAt = Date.now();
    const r = sb.json<{ pid: number; checkpoint: number; rolledBack: string[] }>(['restore', 'att']);
    sb.track(r.pid);
    expect(r.checkpoint).toBe(cp.id);
    expect(r.pid).toBe(pid); // CRIU gives it its PID back
    expect(r.rolledBack).toEqual([log]);

    await waitFor(() => ticks(readFileSync(log, 'utf8')).some((t) => t.at > killedAt), 'the restored counter to tick');
    const all = ticks(readFileSync(log, 'utf8'));
    const resumedAt = all.findIndex((t) => t.at > killedAt);
    const lastSaved = all[resumedAt - 1]!.tick;
    expect(lastSaved).toBeGreaterThanOrEqual(before);
    expect(lastSaved).toBeLessThanOrEqual(after);
    expect(all[resumedAt]!.tick).toBe(lastSaved + 1);
    all.forEach((t, i) => {
      expect(t.tick).toBe(i + 1);
    });
    // Its memory came back intact.
    process.kill(r.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(readFileSync(log, 'utf8'))?.[0], 'the counter to verify its memory');
    expect(verdict).toMatch(/^verify ok tick \d+$/);
  });

  it('refuses a PID that does not exist, a process that is not a session leader, and one on a terminal, saying why', async () => {
    const gone = startCounter(sb, 'gone');
    gone.child.kill('SIGKILL');
    await exited(gone.child);
    sb.untrack(gone.child.pid!);
    const missing = sb.cli(['attach', String(gone.child.pid)]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`crinc: there is no running process ${gone.child.pid} (it does not exist or has exited)`);

    const member = startCounter(sb, 'member', false);
    const notLeader = sb.cli(['attach', String(member.child.pid)]);
    expect(notLeader.code).toBe(1);
    expect(notLeader.stderr).toMatch(new RegExp(`crinc: process ${member.child.pid} is not a session leader .*Start the program with setsid`));
    member.child.kill('SIGKILL');
    await exited(member.child);
    sb.untrack(member.child.pid!);

    // A session leader on a terminal: script(1) runs its command on a new pty.
    const onTerminal = spawn('script', ['-qc', 'exec sleep 60', '/dev/null'], { stdio: 'ignore', detached: true });
    sb.track(onTerminal.pid!);
    // (waitFor takes an empty string for an answer: no child yet must be undefined.)
    const leader = await waitFor(() => readFileSync(`/proc/${onTerminal.pid}/task/${onTerminal.pid}/children`, 'utf8').trim().split(' ')[0] || undefined, 'script to start its command');
    expect(Number(leader)).toBeGreaterThan(1);
    sb.track(Number(leader));
    await waitFor(() => readFileSync(`/proc/${leader}/cmdline`, 'utf8').startsWith('sleep'), 'the command to run');
    const withTty = sb.cli(['attach', leader]);
    expect(withTty.code).toBe(1);
    expect(withTty.stderr).toContain(`crinc: process ${leader} has a controlling terminal: a restore cannot give it that terminal back`);
    // The command first, while script (its parent, ours) still reaps it; then script.
    process.kill(Number(leader), 'SIGKILL');
    await waitFor(() => !alive(Number(leader)), 'the command on the terminal to end');
    onTerminal.kill('SIGKILL');
    await exited(onTerminal);
    sb.untrack(Number(leader));
    sb.untrack(onTerminal.pid!);

    const bad = sb.cli(['attach', 'abc']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('"abc" is not a whole number');
    expect(sb.json<unknown[]>(['jobs']).length).toBe(1); // nothing registered by the refusals
  });
});
