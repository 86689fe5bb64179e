// The service's log lines: JSON objects when stderr is not a terminal, readable lines on one.
import { describe, expect, it } from 'vitest';
import { Logger } from '../../src/controller/log.js';

describe('Logger', () => {
  it('writes one JSON object per event: time, level, job, msg, fields', () => {
    const lines: string[] = [];
    new Logger((l) => lines.push(l), false).warn('job is dead', 'sim', { pid: 42, how: 'ended while no daemon watched' });
    expect(lines).toHaveLength(1);
    expect(lines[0]!.endsWith('\n')).toBe(true);
    const event = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(event).toEqual({ time: expect.any(String), level: 'warn', job: 'sim', msg: 'job is dead', fields: { pid: 42, how: 'ended while no daemon watched' } });
    expect(Math.abs(Date.parse(event.time as string) - Date.now())).toBeLessThan(5000);
  });

  it('writes a readable line on a terminal', () => {
    const lines: string[] = [];
    new Logger((l) => lines.push(l), true).info('checkpoint', 'sim', { id: 7, mode: 'incremental', note: 'two words' });
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}\[sim\] checkpoint {2}id=7 mode=incremental note="two words"\n$/);
  });
});
