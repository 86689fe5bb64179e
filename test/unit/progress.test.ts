// The progress line: drawn only on a terminal, only for work that lasts, cleared at the end.
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { PROGRESS_DELAY_MS, terminalProgress } from '../../src/cli/progress.js';

/** A stand-in for process.stdout that records what is written (a real terminal cannot be read back). */
function stream(isTTY: boolean): { out: NodeJS.WriteStream; written: string[] } {
  const written: string[] = [];
  return { out: { isTTY, write: (s: string) => written.push(s) } as unknown as NodeJS.WriteStream, written };
}

describe('terminalProgress', () => {
  it('is nothing when stdout is not a terminal', () => {
    expect(terminalProgress('checkpoint', stream(false).out)).toBeUndefined();
  });

  it('shows bytes, percentage, rate and time left once the work has lasted, and clears the line at the end', async () => {
    const { out, written } = stream(true);
    const p = terminalProgress('restore of sim', out)!;
    p.update(1024, 4096);
    expect(written).toEqual([]); // too early: short work shows nothing
    await sleep(PROGRESS_DELAY_MS + 50);
    p.update(2 * 1024 * 1024, 8 * 1024 * 1024);
    expect(written).toHaveLength(1);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the line starts with the terminal's erase-line sequence.
    expect(written[0]).toMatch(/^\r\x1b\[Krestore of sim: 2\.0 MiB of 8\.0 MiB \(25%\), \d+(\.\d)? (B|KiB|MiB)\/s, \d+ s left$/);
    p.update(3 * 1024 * 1024, 8 * 1024 * 1024);
    expect(written).toHaveLength(1); // redraws are spaced
    p.end();
    expect(written[1]).toBe('\r\x1b[K');
  });

  it('leaves the terminal untouched at the end when it drew nothing', () => {
    const { out, written } = stream(true);
    const p = terminalProgress('gc', out)!;
    p.update(1, 2);
    p.end();
    expect(written).toEqual([]);
  });
});
