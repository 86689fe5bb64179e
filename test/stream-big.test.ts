// A job as large as the machine allows (65% of MemTotal) under `crinc run`: checkpointed
// twice, killed, restored, and its whole memory checks out, while crinc stays within its
// memory bound and never has the job killed. Pages stream, so nothing holds the job's
// memory a second time. Allocates ~65% of RAM, and is skipped when that memory is not
// free. Every crinc process's peak RSS stays within 512 MiB (issue 10).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, type CheckpointJson, COUNTER, crincAsync, killAndWait, ROOT, Sandbox, waitFor } from './helpers.js';

const MIB = 1024 * 1024;
const MEM_FRACTION = 0.65;
const WINDOW_PAGES = 256;
/** crinc's own memory bound (issue 10): controller, CLI commands, restore. */
const MAX_CRINC_RSS_MIB = 512;

function meminfo(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

const total = meminfo('MemTotal');
const regionMib = Math.floor((total * MEM_FRACTION) / MIB);
const enough = meminfo('MemAvailable') > regionMib * MIB + 3 * 1024 * MIB;

function oomKills(): string[] {
  return execFileSync('dmesg', { encoding: 'utf8' }).split('\n').filter((l) => /Out of memory|oom-kill|Killed process/.test(l));
}

function vmHwmKib(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

describe(`a job using ${Math.round(MEM_FRACTION * 100)}% of the machine's memory`, () => {
  const sb = new Sandbox();
  const rssLog = join(sb.dir, 'max-rss.log');
  const env = { NODE_OPTIONS: `--import ${join(ROOT, 'test', 'max-rss.mjs')}`, CRINC_TEST_MAX_RSS: rssLog };
  afterAll(() => sb.cleanup());

  it.skipIf(!enough)(`checkpoints twice, is killed, restores, verifies (${regionMib} MiB)`, async () => {
    const oomBefore = oomKills().length;
    const { pid, controller } = await sb.run('huge', [COUNTER, '--region-mib', String(regionMib), '--window-pages', String(WINDOW_PAGES), '--tick-ms', '0'], ['--interval', '24h'], true, env);
    await waitFor(() => /^start pid/m.test(sb.jobLog('huge')), 'the job to fill its memory', 600_000);

    const checkpoint = async (): Promise<CheckpointJson> => {
      const r = await crincAsync(sb.store, ['checkpoint', 'huge', '--json'], env).done;
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as CheckpointJson;
    };
    const full = await checkpoint();
    expect(full.mode).toBe('full');
    expect(full.pagesTotal).toBeGreaterThanOrEqual((regionMib * MIB) / 4096);
    // Pre-copied while the job ran (it writes nothing until told): the freeze read next to nothing.
    expect(full.note).toMatch(/pages pre-copied in/);
    expect(full.pagesClean).toBeGreaterThan(full.pagesTotal * 0.9);
    expect(alive(pid)).toBe(true);
    process.kill(pid, 'SIGUSR2');
    await waitFor(() => /^tick 1 at/m.test(sb.jobLog('huge')), 'tick 1');
    const incremental = await checkpoint();
    expect(incremental.mode).toBe('incremental');
    expect(incremental.pagesClean).toBeGreaterThan(incremental.pagesTotal * 0.9);
    expect(alive(pid)).toBe(true);
    // The controller took both checkpoints: its own high-water mark.
    console.log(`peak RSS of crinc run after two checkpoints: ${(vmHwmKib(controller.pid!) / 1024).toFixed(0)} MiB`);
    console.log(`frozen: ${full.freezeMs.toFixed(0)} ms (full, pre-copied in its ${(full.durationMs / 1000).toFixed(1)} s), ${incremental.freezeMs.toFixed(0)} ms (incremental)`);

    await killAndWait(pid);
    await waitFor(() => controller.exitCode !== null || controller.signalCode !== null, 'crinc run to end with its job', 60_000);
    const restored = await crincAsync(sb.store, ['restore', 'huge', '--json'], env).done;
    expect(restored.code, restored.stderr).toBe(0);
    const r = JSON.parse(restored.stdout) as { pid: number; checkpoint: number };
    sb.track(r.pid);
    expect(r.checkpoint).toBe(incremental.id);
    process.kill(r.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog('huge'))?.[0], 'the job to verify its memory', 600_000);
    expect(verdict).toBe('verify ok tick 1');
    expect(oomKills().length).toBe(oomBefore);

    // Every crinc process of the test (controller, checkpoint and restore commands) stayed within the bound.
    expect(existsSync(rssLog)).toBe(true);
    const peaks = readFileSync(rssLog, 'utf8').trim().split('\n').map((l) => {
      const [p, kib, ...args] = l.split(' ');
      return { pid: Number(p), kib: Number(kib), args: args.join(' ') };
    });
    expect(peaks.some((p) => p.args.startsWith('run'))).toBe(true);
    expect(peaks.some((p) => p.args.startsWith('restore'))).toBe(true);
    console.log(`peak RSS (MiB): ${peaks.map((p) => `${p.args.split(' ')[0]} ${(p.kib / 1024).toFixed(0)}`).join(', ')}; job ${regionMib} MiB`);
    for (const p of peaks) expect(p.kib / 1024, `peak RSS of crinc ${p.args}, MiB`).toBeLessThanOrEqual(MAX_CRINC_RSS_MIB);
    await killAndWait(r.pid);
  }, 1_800_000);
});
