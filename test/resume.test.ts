// Batch-job semantics of `crinc run`, without a scheduler: SIGUSR1 and SIGTERM take a
// final checkpoint, stop the job and exit 75; the same command again resumes the job
// from that checkpoint and its counter goes on to the end; --fresh starts anew; a
// resume that cannot work says why and changes nothing. (The same under a real Slurm:
// test/slurm.test.ts.)
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { childrenOf } from '../src/sys/proc.js';
import { alive, type CheckpointJson, COUNTER, damageStoredPage, exitOf, expectOneHistory, type JobInfo, killAndWait, killQuietly, lastTick, Sandbox, ticks, waitFor } from './helpers.js';

/** `crinc run`'s documented exit code for "checkpointed and stopped: run me again" (README, --help). */
const EXIT_CHECKPOINTED = 75;
/** The job stays down at least this long between its two runs: the gap shows in its log. */
const DOWNTIME_MS = 2000;

/** The counter that ends after `total` ticks; 16 pages of 4096 written per tick, so tracking stays armed. */
function counter(total: number): string[] {
  return [COUNTER, '--region-mib', '16', '--window-pages', '16', '--tick-ms', '50', '--ticks', String(total)];
}

describe('crinc run: final checkpoint on SIGUSR1/SIGTERM, resume from it', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  /** Stops a running job with `signal`; returns the final checkpoint's id. */
  async function checkpointAndStop(controller: import('node:child_process').ChildProcess, output: () => string, pid: number, signal: NodeJS.Signals): Promise<number> {
    controller.kill(signal);
    expect(await exitOf(controller)).toBe(EXIT_CHECKPOINTED);
    const m = /checkpointed and stopped: job \S+ saved as checkpoint (\d+)/.exec(output());
    expect(m, output()).not.toBeNull();
    expect(alive(pid)).toBe(false);
    return Number(m![1]);
  }

  it('SIGUSR1: final checkpoint, exit 75; the same command resumes and the counter goes on to the end', async () => {
    const total = 300;
    const first = await sb.run('usr1', counter(total), ['--interval', '1h']);
    await waitFor(() => lastTick(sb.jobLog('usr1')) >= 20, 'the job to tick 20 times');
    const finalId = await checkpointAndStop(first.controller, first.output, first.pid, 'SIGUSR1');
    const final = sb.json<CheckpointJson[]>(['list', 'usr1']).find((c) => c.id === finalId)!;
    expect(final.kind).toBe('checkpoint');
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'usr1')!.state).toBe('stopped');
    await sleep(DOWNTIME_MS);

    const second = await sb.run('usr1', counter(total), ['--interval', '1s'], true, { CRINC_VERIFY_TRACKING: '1' });
    expect(second.pid).not.toBe(first.pid);
    expect(await exitOf(second.controller)).toBe(0);
    expect(second.output()).toContain(`resumed job usr1 from checkpoint ${finalId} (taken ${final.takenAt})`);
    expect(second.output()).not.toContain('crinc: checkpoint failed');

    // One process history; the one long pause is the time it was stopped, after tick 20.
    const pause = expectOneHistory(sb.jobLog('usr1'), total);
    expect(pause.ms).toBeGreaterThanOrEqual(DOWNTIME_MS);
    expect(pause.after).toBeGreaterThanOrEqual(20);

    // The resumed job was checkpointed on: first in full, then with tracking re-armed.
    const after = sb.json<CheckpointJson[]>(['list', 'usr1']).filter((c) => c.kind === 'checkpoint' && c.id > finalId);
    expect(after.length).toBeGreaterThanOrEqual(2);
    expect(after[0]!.mode).toBe('full');
    expect(after.some((c) => c.mode === 'incremental' && c.pagesClean > 0)).toBe(true);
  });

  it('SIGTERM does the same; --fresh starts the command anew', async () => {
    const cmd = counter(1_000_000);
    const first = await sb.run('term', cmd, ['--interval', '1h']);
    await waitFor(() => lastTick(sb.jobLog('term')) >= 10, 'the job to tick 10 times');
    await checkpointAndStop(first.controller, first.output, first.pid, 'SIGTERM');
    const ticked = lastTick(sb.jobLog('term'));

    const fresh = await sb.run('term', cmd, ['--interval', '1h', '--fresh', '--kill-on-exit']);
    await waitFor(() => /started job term as pid \d+ \(--fresh: its checkpoints are ignored\)/.test(fresh.output()), `the fresh start\n${fresh.output()}`);
    await waitFor(() => ticks(sb.jobLog('term')).length > ticked, 'the fresh job to tick');
    const log = sb.jobLog('term');
    expect(log.match(/^start /gm)).toHaveLength(2);
    expect(ticks(log)[ticked]!.tick).toBe(1);
    fresh.controller.kill('SIGINT');
    expect(await exitOf(fresh.controller)).toBe(0);
  });

  it('refuses to resume a job that still runs, or checkpoints of another command', async () => {
    const cmd = counter(1_000_000);
    const { controller, pid } = await sb.run('busy', cmd, ['--interval', '1h']);
    sb.json<CheckpointJson>(['checkpoint', 'busy']);
    controller.kill('SIGINT'); // Ctrl-C: the job goes on without its controller
    expect(await exitOf(controller)).toBe(0);
    expect(alive(pid)).toBe(true);

    const again = sb.cli(['run', '--job', 'busy', '--', ...cmd]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`job "busy" already runs as pid ${pid}`);

    await killAndWait(pid);
    const other = sb.cli(['run', '--job', 'busy', '--', 'sleep', '100']);
    expect(other.code).toBe(1);
    expect(other.stderr).toContain('job "busy" has checkpoints of another command');
    expect(other.stderr).toContain('--fresh');
  });

  it('a resume that fails says why, exits 1 and loses nothing; repaired, it resumes', async () => {
    // A store of its own: every chunk in it is this job's, so the damaged one is too.
    const sb = new Sandbox();
    onTestFinished(() => sb.cleanup());
    const cmd = counter(1_000_000);
    const first = await sb.run('broken', cmd, ['--interval', '1h']);
    await waitFor(() => lastTick(sb.jobLog('broken')) >= 10, 'the job to tick 10 times');
    const finalId = await checkpointAndStop(first.controller, first.output, first.pid, 'SIGUSR1');
    const damaged = damageStoredPage(sb.store);
    const logBefore = sb.jobLog('broken');
    const listBefore = sb.json<CheckpointJson[]>(['list', 'broken']);

    const r = sb.cli(['run', '--job', 'broken', '--', ...cmd]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot resume job "broken" from its checkpoint ${finalId}`);
    expect(r.stderr).toContain(`chunk ${damaged.id} in pack ${damaged.pack} is damaged`);
    expect(sb.jobLog('broken')).toBe(logBefore);
    // The checkpoints are untouched; pages are served as the job runs, so the damage
    // shows after the job's files were put back (and their newer content kept in a
    // pre-restore snapshot): they get that content again.
    const listAfter = sb.json<CheckpointJson[]>(['list', 'broken']);
    expect(listAfter.filter((c) => c.kind === 'checkpoint')).toEqual(listBefore);
    expect(listAfter.filter((c) => c.kind !== 'checkpoint').map((c) => c.kind)).toEqual(listAfter.length > listBefore.length ? ['pre-restore'] : []);
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'broken')!.state).toBe('stopped');

    damaged.repair();
    const resumed = await sb.run('broken', cmd, ['--interval', '1h', '--kill-on-exit']);
    await waitFor(() => resumed.output().includes(`resumed job broken from checkpoint ${finalId}`), `the resume\n${resumed.output()}`);
    await waitFor(() => lastTick(sb.jobLog('broken')) > lastTick(logBefore), 'the resumed job to tick on');
    resumed.controller.kill('SIGINT');
    expect(await exitOf(resumed.controller)).toBe(0);
  });

  it('a final checkpoint that fails: exit 1, the job stopped, the earlier checkpoint named and resumable', async () => {
    const cmd = counter(1_000_000);
    const { controller, output, pid } = await sb.run('crash', cmd, ['--interval', '1h']);
    await waitFor(() => lastTick(sb.jobLog('crash')) >= 10, 'the job to tick 10 times');
    const earlier = sb.json<CheckpointJson>(['checkpoint', 'crash']);
    // CRIU dies during the final dump: the controller's `criu` child is killed on sight.
    let criuKilled = false;
    const watcher = setInterval(() => {
      for (const child of childrenOf(controller.pid!)) {
        try {
          if (readFileSync(`/proc/${child}/comm`, 'utf8').trim() === 'criu') {
            killQuietly(child);
            criuKilled = true;
          }
        } catch {
          // gone meanwhile
        }
      }
    }, 5);
    try {
      controller.kill('SIGUSR1');
      expect(await exitOf(controller)).toBe(1);
    } finally {
      clearInterval(watcher);
    }
    expect(criuKilled).toBe(true);
    expect(output()).toContain('job "crash": the final checkpoint failed');
    expect(output()).toContain(`resumes from checkpoint ${earlier.id} (taken ${earlier.takenAt}), losing the work since then`);
    expect(alive(pid)).toBe(false);
    // Nothing of the failed checkpoint was committed.
    expect(sb.json<CheckpointJson[]>(['list', 'crash']).map((c) => c.id)).toEqual([earlier.id]);

    const resumed = await sb.run('crash', cmd, ['--interval', '1h', '--kill-on-exit']);
    await waitFor(() => resumed.output().includes(`resumed job crash from checkpoint ${earlier.id}`), `the resume\n${resumed.output()}`);
    resumed.controller.kill('SIGINT');
    expect(await exitOf(resumed.controller)).toBe(0);
  });
});
