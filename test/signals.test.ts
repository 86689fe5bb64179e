// Ctrl-C on `crinc checkpoint` (SIGINT to its whole process group, as a terminal sends
// it), with real CRIU: standalone, the checkpoint is cancelled at the freeze, CRIU ends,
// the job runs on thawed and an immediate retry works; through a controller, crinc waits
// and says what the checkpoint became.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, type CheckpointJson, CLI, COUNTER, exitOf, lastTick, Sandbox, waitFor } from './helpers.js';

/** The pid of a `criu dump -t <pid>` running now, if any. */
function criuDumping(pid: number): number | undefined {
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const args = readFileSync(`/proc/${p}/cmdline`, 'latin1').split('\0');
      if (args[0]?.endsWith('criu') && args[1] === 'dump' && args[args.indexOf('-t') + 1] === String(pid)) return Number(p);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/** The state letter of /proc/PID/stat: R, S, t (ptrace stop), T… */
function procState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

/** The pid of a `criu restore` running now, if any. */
function criuRestoring(): number | undefined {
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const args = readFileSync(`/proc/${p}/cmdline`, 'latin1').split('\0');
      if (args[0]?.endsWith('criu') && args[1] === 'restore') return Number(p);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/** `crinc ARGS` in its own process group; once `started` finds CRIU at work, Ctrl-C sent to the group as a terminal does. */
async function withCtrlC(sb: Sandbox, args: string[], started: () => number | undefined) {
  let stdout = '';
  let stderr = '';
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CRINC_STORE: sb.store }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const criu = await waitFor(started, 'CRIU to start', 30_000);
  process.kill(-child.pid!, 'SIGINT');
  const code = await exitOf(child);
  return { code, stdout, stderr, criu };
}

function checkpointWithCtrlC(sb: Sandbox, job: string, pid: number) {
  return withCtrlC(sb, ['checkpoint', job], () => criuDumping(pid));
}

describe('Ctrl-C on crinc checkpoint', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('standalone: cancelled at the freeze, CRIU gone, the job thawed, a retry works', async () => {
    const { controller, pid } = await sb.run('cancel', [COUNTER, '--region-mib', '256'], ['--interval', '1h']);
    controller.kill('SIGINT'); // leaves the job running without a controller
    await exitOf(controller);
    const r = await checkpointWithCtrlC(sb, 'cancel', pid);
    expect(r.stderr).toContain('cancelled; the job was thawed');
    expect(r.code).toBe(130);
    expect(alive(r.criu)).toBe(false);
    expect(criuDumping(pid)).toBeUndefined();
    expect(sb.json<CheckpointJson[]>(['list', 'cancel'])).toEqual([]);
    // Thawed: neither frozen nor in a ptrace stop, and ticking on.
    expect(['R', 'S']).toContain(procState(pid));
    const tick = lastTick(sb.jobLog('cancel'));
    await waitFor(() => lastTick(sb.jobLog('cancel')) > tick, 'the job to tick on');
    // An immediate retry works.
    expect(sb.json<CheckpointJson>(['checkpoint', 'cancel']).job).toBe('cancel');
  });

  it("through the job's controller: crinc waits and says the checkpoint was committed", async () => {
    const { pid } = await sb.run('ask', [COUNTER, '--region-mib', '128'], ['--interval', '1h', '--kill-on-exit']);
    const r = await checkpointWithCtrlC(sb, 'ask', pid);
    expect(r.code).toBe(130);
    const id = Number(/the checkpoint went on in the controller and was committed as (\d+)/.exec(r.stderr)?.[1]);
    expect(sb.json<CheckpointJson[]>(['list', 'ask']).map((c) => c.id)).toEqual([id]);
    expect(alive(pid)).toBe(true);
  });
});

describe('Ctrl-C on crinc restore', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('cannot stop it halfway: the restore completes, and crinc says so', async () => {
    const { controller, pid } = await sb.run('back', [COUNTER, '--region-mib', '128'], ['--interval', '1h']);
    sb.ok(['stop', 'back', '--checkpoint']);
    await exitOf(controller);
    expect(alive(pid)).toBe(false);
    // To the whole group, as a terminal sends it: CRIU's restore processes have groups of their own.
    const r = await withCtrlC(sb, ['restore', 'back'], criuRestoring);
    expect(r.code).toBe(130);
    const restored = Number(/the restore completed: job back runs as pid (\d+)/.exec(r.stderr)?.[1]);
    sb.track(restored);
    expect(alive(restored)).toBe(true);
    expect(sb.json<{ job: string; pid: number; state: string }[]>(['jobs']).find((j) => j.job === 'back')).toMatchObject({ pid: restored, state: 'running' });
    const tick = lastTick(sb.jobLog('back'));
    await waitFor(() => lastTick(sb.jobLog('back')) > tick, 'the restored job to tick on');
  });
});
