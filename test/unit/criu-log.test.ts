// What a CRIU failure shows of CRIU's log (src/criu/criu.ts, logTail): the cause, which
// comes early, not only the clean-up lines that end every failed run.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { logTail } from '../../src/criu/criu.js';

describe('logTail', () => {
  const dir = mkdtempSync(join(tmpdir(), 'crinc-criu-log-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const log = (name: string, lines: string[]): string => {
    const path = join(dir, name);
    writeFileSync(path, `${lines.join('\n')}\n`);
    return path;
  };

  it('shows the error lines of a -v4 log (each line timed), the early cause included', () => {
    const filler = Array.from({ length: 40 }, (_, i) => `(00.${String(100 + i).padStart(6, '0')}) 4242 was stopped`);
    const path = log('dump.log', [
      '(00.000100) Version: 4.2.1',
      '(00.090000) Error (criu/files.c:123): Can not dump file 7 of that type',
      ...filler,
      '(00.197505) Unfreezing tasks into 1',
      '(00.197583) Error (criu/cr-dump.c:1975): Dumping FAILED.',
    ]);
    expect(logTail(path)).toBe('(00.090000) Error (criu/files.c:123): Can not dump file 7 of that type\n(00.197583) Error (criu/cr-dump.c:1975): Dumping FAILED.');
  });

  it('shows the last lines of a log without errors, and says when there is none', () => {
    const path = log('quiet.log', Array.from({ length: 20 }, (_, i) => `(00.0000${10 + i}) line ${i}`));
    const tail = logTail(path).split('\n');
    expect(tail.at(-1)).toBe('(00.000029) line 19');
    expect(tail.length).toBeLessThan(20);
    expect(logTail(join(dir, 'absent.log'))).toBe('(no log written)');
  });
});
