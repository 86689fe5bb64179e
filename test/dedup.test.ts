// Dedup: a checkpoint stores only what changed since the previous one.
import { afterAll, describe, expect, it } from 'vitest';
import { type CheckpointJson, COUNTER, lastTick, Sandbox, waitFor } from './helpers.js';

describe('dedup between checkpoints', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('stores at most 10% of the first checkpoint after the process rewrote 5% of its pages', async () => {
    // 40 MiB = 10240 pages of incompressible data; one tick rewrites a window of 512 (5%).
    const { pid } = await sb.run('dedup', [COUNTER, '--region-mib', '40', '--window-pages', '512', '--tick-ms', '0']);
    const first = sb.json<CheckpointJson>(['checkpoint', 'dedup']);
    process.kill(pid, 'SIGUSR2');
    await waitFor(() => lastTick(sb.jobLog('dedup')) === 1, 'one tick');
    const second = sb.json<CheckpointJson>(['checkpoint', 'dedup']);

    expect(first.storedBytes).toBeGreaterThan(30 * 1024 * 1024);
    expect(Math.abs(second.imageBytes - first.imageBytes)).toBeLessThan(0.01 * first.imageBytes);
    expect(second.storedBytes).toBeLessThanOrEqual(0.1 * first.storedBytes);
    // ...and it still stored the rewritten pages: 512 new pages at least.
    expect(second.storedBytes).toBeGreaterThanOrEqual(512 * 4096 * 0.9);
  });
});
