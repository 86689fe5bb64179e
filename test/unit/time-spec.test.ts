import { describe, expect, it } from 'vitest';
import { parseDuration, parseTimeSpec, TimeSpecError } from '../../src/controller/time-spec.js';

describe('times and durations on the command line', () => {
  const now = Date.parse('2026-11-28T12:00:00Z');

  it('reads durations', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('10m')).toBe(600_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('2 days')).toBe(172_800_000);
    for (const bad of ['', 'often', '10', '5 parsecs', '1h and 3m']) expect(() => parseDuration(bad)).toThrow(TimeSpecError);
  });

  it('reads times', () => {
    expect(parseTimeSpec('now', now)).toBe(now);
    expect(parseTimeSpec('90s ago', now)).toBe(now - 90_000);
    expect(parseTimeSpec('10m ago', now)).toBe(now - 600_000);
    expect(parseTimeSpec('2026-11-28T11:00:00Z', now)).toBe(Date.parse('2026-11-28T11:00:00Z'));
    expect(parseTimeSpec('2026-11-28T11:00:00.250+01:00', now)).toBe(Date.parse('2026-11-28T10:00:00.250Z'));
    for (const bad of ['yesterday', '10m', 'ago', '2026-13-45T00:00:00Z', '28/11/2026']) expect(() => parseTimeSpec(bad, now)).toThrow(TimeSpecError);
  });
});
