// Exact incremental checkpoints: for each way a process can change its memory, many
// checkpoints under `crinc run` with verification mode on (every page is hashed anyway,
// and a page tracking called clean that changed fails the checkpoint), then the last
// checkpoint restored and the restored memory's hash compared with the saved one.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CheckpointJson, COUNTER, killAndWait, lastTick, ROOT, Sandbox, waitFor } from './helpers.js';

const SCENARIO = join(ROOT, 'build', 'workloads', 'scenario');
const VERIFY = { CRINC_VERIFY_TRACKING: '1' };
const CHECKPOINTS = 6;

function countLines(log: string, re: RegExp): number {
  return log.split('\n').filter((l) => re.test(l)).length;
}

function lastMatch(log: string, re: RegExp): string | undefined {
  const all = [...log.matchAll(re)];
  return all.length ? all[all.length - 1]![1] : undefined;
}

const SCENARIOS = [
  'writer',
  'threads',
  'fork-child',
  'mmap-new',
  'remap-same',
  'mremap',
  'dontneed',
  'brk',
  'read-then-write',
  'pipe-read',
  'vm-writev',
];

describe('no missed writes, checkpoint after checkpoint', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  for (const scenario of SCENARIOS) {
    it(scenario, async () => {
      const job = `track-${scenario}`;
      const { controller, pid } = await runVerified(sb, job, [SCENARIO, scenario]);
      const log = () => sb.jobLog(job);
      await waitFor(() => log().includes('ready'), 'the workload to start');
      const hasChild = scenario === 'fork-child';
      const cps: CheckpointJson[] = [];
      for (let i = 1; i <= CHECKPOINTS; i++) {
        const steps = countLines(log(), /^step \d+$/);
        process.kill(pid, 'SIGUSR2');
        await waitFor(() => countLines(log(), /^step \d+$/) > steps, `step ${i}`);
        if (hasChild && i > 1) await waitFor(() => countLines(log(), /^child-step \d+$/) >= i, `child step ${i}`);
        const r = sb.cli(['checkpoint', job, '--json']);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
        cps.push(JSON.parse(r.stdout) as CheckpointJson);
      }
      // Tracking did its job: later checkpoints reused most pages without reading them.
      // (Not every one: moving a VMA next to a registered one merges them, and the move
      // drops the registration of both — the kernel's rule — so that interval is hashed.)
      const last = cps[cps.length - 1]!;
      const detail = JSON.stringify(cps.map((c) => [c.pagesClean, c.pagesTotal, c.note]));
      expect(last.mode, detail).toBe('incremental');
      expect(Math.max(...cps.slice(2).map((c) => c.pagesClean / c.pagesTotal)), detail).toBeGreaterThan(0.5);
      for (const c of cps.slice(2)) expect(c.pagesClean + c.pagesHashed).toBe(c.pagesTotal);

      // The memory as of the last checkpoint (nothing ran since), then a restore of it.
      const hashesBefore = countLines(log(), /^(child-)?hash /);
      process.kill(pid, 'SIGUSR1');
      await waitFor(() => countLines(log(), /^(child-)?hash /) >= hashesBefore + (hasChild ? 2 : 1), 'the memory hash');
      const saved = lastMatch(log(), /^hash ([0-9a-f]+) step/gm)!;
      const savedChild = hasChild ? lastMatch(log(), /^child-hash ([0-9a-f]+) step/gm) : undefined;
      await killAndWait(pid);
      controller.kill('SIGTERM');

      const restored = sb.json<{ pid: number }>(['restore', job, '--id', String(last.id)]);
      sb.track(restored.pid);
      // The restore put the log back as it was at the checkpoint, before the hash lines.
      const lines = countLines(log(), /^(child-)?hash /);
      process.kill(restored.pid, 'SIGUSR1');
      await waitFor(() => countLines(log(), /^(child-)?hash /) >= lines + (hasChild ? 2 : 1), 'the restored memory hash');
      expect(lastMatch(log(), /^hash ([0-9a-f]+) step/gm)).toBe(saved);
      if (hasChild) expect(lastMatch(log(), /^child-hash ([0-9a-f]+) step/gm)).toBe(savedChild);
      await killAndWait(restored.pid);
    });
  }

  it('a job writing all the time, checkpointed while it writes', async () => {
    const job = 'track-continuous';
    const { pid } = await runVerified(sb, job, [COUNTER, '--region-mib', '32', '--window-pages', '8', '--tick-ms', '10']);
    const cps: CheckpointJson[] = [];
    for (let i = 0; i < CHECKPOINTS; i++) {
      cps.push(sb.json<CheckpointJson>(['checkpoint', job]));
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(cps.slice(2).every((c) => c.mode === 'incremental' && c.pagesClean > 0)).toBe(true);
    // The first checkpoint read the memory while the job ran (a pre-copy) and, frozen, only
    // the pages written since: verification hashed the others too and found them unchanged.
    const first = cps[0]!;
    expect(first.mode, JSON.stringify(first)).toBe('full');
    expect(first.note).toMatch(/pages pre-copied in [\d.]+ s while the job ran/);
    expect(first.pagesClean, JSON.stringify(first)).toBeGreaterThan(first.pagesTotal / 2);
    await killAndWait(pid);
    const restored = sb.json<{ pid: number }>(['restore', job]);
    sb.track(restored.pid);
    const before = lastTick(sb.jobLog(job));
    process.kill(restored.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog(job))?.[0], 'the job to verify its memory');
    expect(verdict).toMatch(/^verify ok/);
    expect(lastTick(sb.jobLog(job))).toBeGreaterThanOrEqual(before);
  });
});

function runVerified(sb: Sandbox, job: string, cmd: string[]) {
  return sb.run(job, cmd, ['--interval', '1h'], true, VERIFY);
}
