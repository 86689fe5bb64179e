// End to end, with real CRIU and real processes: a job under `crinc run`, checkpoints
// taken beside it, killed, restored at a time between two checkpoints.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CheckpointAround, type CheckpointJson, checkpointsAround, COUNTER, killAndWait, lastTick, resumedLog, Sandbox, sha256Dir, waitFor } from './helpers.js';

describe('checkpoint a running job, kill it, restore it --at a time', () => {
  const sb = new Sandbox();
  const kept = join(sb.dir, 'kept-images');
  afterAll(() => sb.cleanup());

  // The counter's value around each checkpoint: read from its log just before and after.
  const around: CheckpointAround[] = [];
  let jobPid = 0;

  beforeAll(async () => {
    mkdirSync(kept);
    const { pid } = await sb.run('counter', [COUNTER, '--region-mib', '24', '--window-pages', '96', '--tick-ms', '50']);
    jobPid = pid;
    await waitFor(() => lastTick(sb.jobLog('counter')) >= 5, 'the job to tick');
    around.push(...(await checkpointsAround(sb, 'counter', 3, { CRINC_KEEP_IMAGES: kept })));
  });

  it('takes checkpoints beside a running `crinc run`, and lists them', () => {
    const list = sb.json<CheckpointJson[]>(['list', 'counter']);
    expect(list.map((c) => c.id)).toEqual(around.map((a) => a.cp.id));
    for (const c of list) {
      expect(c.job).toBe('counter');
      // The first has no baseline; later ones are incremental unless tracking disarmed.
      expect(c.mode).toBe(c.id === list[0]!.id ? 'full' : c.mode === 'full' ? 'full' : 'incremental');
      expect(c.pagesTotal).toBeGreaterThanOrEqual((24 * 1024 * 1024) / 4096);
      expect(c.pagesHashed + c.pagesClean).toBe(c.pagesTotal);
      expect(c.imageBytes).toBeGreaterThan(24 * 1024 * 1024);
      expect(Date.parse(c.takenAt)).toBeGreaterThan(0);
      expect(c.freezeMs).toBeGreaterThan(0);
    }
    // Checkpoints at different moments: the counter moved between them.
    expect(around[1]!.before).toBeGreaterThan(around[0]!.after);
    expect(around[2]!.before).toBeGreaterThan(around[1]!.after);
  });

  it('materializes every checkpoint byte for byte as CRIU wrote it', () => {
    for (const { cp } of around) {
      const out = join(sb.dir, `export-${cp.id}`);
      sb.ok(['export', 'counter', '--id', String(cp.id), '--to', out]);
      const original = sha256Dir(join(kept, String(cp.id)));
      expect(Object.keys(original).length).toBeGreaterThan(5);
      expect(Object.keys(original).some((n) => /^pages-\d+\.img$/.test(n))).toBe(true);
      expect(sha256Dir(out)).toEqual(original);
    }
  });

  it('restores the 2nd checkpoint: the job goes on from its counter, memory intact', async () => {
    await killAndWait(jobPid);
    const second = around[1]!;
    const third = around[2]!;
    const at = new Date((Date.parse(second.cp.takenAt) + Date.parse(third.cp.takenAt)) / 2).toISOString();
    const killedAt = Date.now();
    const r = sb.json<{ pid: number; checkpoint: number }>(['restore', 'counter', '--at', at]);
    sb.track(r.pid);
    expect(r.checkpoint).toBe(second.cp.id);
    expect(r.pid).not.toBe(jobPid);

    // The restored log ends where the 2nd checkpoint was; new ticks follow it.
    const { log, resumedAt, lastSaved } = await resumedLog(sb, 'counter', killedAt);
    expect(lastSaved).toBeGreaterThanOrEqual(second.before);
    expect(lastSaved).toBeLessThanOrEqual(second.after);
    expect(lastSaved).toBeLessThan(third.before);
    expect(log[resumedAt]!.tick).toBe(lastSaved + 1);
    // No gap and no repeat anywhere: the log file and the process agree.
    log.forEach((t, i) => {
      expect(t.tick).toBe(i + 1);
    });

    // It keeps running, and its 24 MiB region checks out against its counter.
    const n = lastTick(sb.jobLog('counter'));
    await waitFor(() => lastTick(sb.jobLog('counter')) > n + 3, 'the restored job to keep ticking');
    process.kill(r.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog('counter'))?.[0], 'the job to verify its memory');
    expect(verdict).toMatch(/^verify ok tick \d+$/);
  });

  it('checkpoints the restored job again', () => {
    const cp = sb.json<CheckpointJson>(['checkpoint', 'counter']);
    expect(cp.id).toBeGreaterThan(around[2]!.cp.id);
  });
});
