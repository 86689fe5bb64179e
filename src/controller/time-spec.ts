// Times and durations as people write them on a command line.
import { CrincError } from '../errors.js';

export class TimeSpecError extends CrincError {
  override name = 'TimeSpecError';
}

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000, sec: 1000, secs: 1000, second: 1000, seconds: 1000,
  m: 60_000, min: 60_000, mins: 60_000, minute: 60_000, minutes: 60_000,
  h: 3_600_000, hr: 3_600_000, hrs: 3_600_000, hour: 3_600_000, hours: 3_600_000,
  d: 86_400_000, day: 86_400_000, days: 86_400_000,
  w: 604_800_000, week: 604_800_000, weeks: 604_800_000,
};

/** "90s", "10m", "1h30m", "500ms", "2 days" → milliseconds. */
export function parseDuration(text: string): number {
  const s = text.trim().toLowerCase();
  if (!/^(\d+(\.\d+)?\s*[a-z]+\s*)+$/.test(s)) {
    throw new TimeSpecError(`cannot read "${text}" as a duration: write it like 30s, 10m, 1h30m or 2d`);
  }
  let total = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)\s*([a-z]+)/g)) {
    const unit = UNIT_MS[m[2]!];
    if (unit === undefined) throw new TimeSpecError(`unknown unit "${m[2]}" in "${text}": use ms, s, m, h, d or w`);
    total += Number(m[1]) * unit;
  }
  return total;
}

/**
 * "now", "90s ago", "10m ago", an ISO 8601 time ("2026-11-28T15:04:05Z", a date, or a
 * local time without zone) → milliseconds since the epoch.
 */
export function parseTimeSpec(text: string, now = Date.now()): number {
  const s = text.trim();
  if (s.toLowerCase() === 'now') return now;
  const ago = /^(.*\S)\s+ago$/i.exec(s);
  if (ago) return now - parseDuration(ago[1]!);
  if (/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$/.test(s)) {
    const t = Date.parse(s.replace(' ', 'T'));
    if (!Number.isNaN(t)) return t;
  }
  throw new TimeSpecError(`cannot read "${text}" as a time: use an ISO 8601 time (2026-11-28T15:04:05Z), "now", or "10m ago"`);
}
