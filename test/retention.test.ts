// Retention: with chosen timestamps, each policy keeps exactly the checkpoints restic's
// forget rules say (expectations worked out by hand below), in the policy function and
// through `crinc prune`. Buckets are by local time: the zone is fixed to one where the
// local day and the UTC day differ for some checkpoints, and case (e) would keep
// another set with UTC days.
process.env.TZ = 'Asia/Tokyo';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Repository } from '../src/store/repository.js';
import { type RetentionPolicy, selectKept } from '../src/store/retention-policy.js';
import { type CheckpointJson, Sandbox } from './helpers.js';

/** Local (Tokyo) time in November 2026; the 2nd is a Monday, so ISO week 45 is the 2nd–8th, 46 the 9th–15th. */
const local = (day: number, hour: number, minute = 0) => new Date(2026, 10, day, hour, minute).getTime();

const CHECKPOINTS = [
  { id: 1, takenAt: local(2, 9) },
  { id: 2, takenAt: local(2, 17) },
  { id: 3, takenAt: local(5, 10) },
  { id: 4, takenAt: local(9, 8) }, // 23:00 UTC on the 8th
  { id: 5, takenAt: local(9, 8, 30) }, // 23:30 UTC on the 8th
  { id: 6, takenAt: local(9, 10) },
  { id: 7, takenAt: local(10, 12) },
  { id: 8, takenAt: local(10, 12, 40) },
  { id: 9, takenAt: local(10, 13, 10) },
  { id: 10, takenAt: local(10, 13, 50) },
];

const HOUR = 3_600_000;
const CASES: { name: string; policy: RetentionPolicy; flags: string[]; kept: number[] }[] = [
  { name: '(a) no rule keeps everything', policy: {}, flags: [], kept: [10, 9, 8, 7, 6, 5, 4, 3, 2, 1] },
  { name: '(b) the last 3', policy: { keepLast: 3 }, flags: ['--keep-last', '3'], kept: [10, 9, 8] },
  // 13h of the 10th: 10 (9 same hour); 12h: 8 (7 same); 10h of the 9th: 6.
  { name: '(c) 3 hourly', policy: { keepHourly: 3 }, flags: ['--keep-hourly', '3'], kept: [10, 8, 6] },
  { name: '(d) 2 daily', policy: { keepDaily: 2 }, flags: ['--keep-daily', '2'], kept: [10, 6] },
  // Days 10, 9, 5, 2 fill 4 of 5: the oldest is kept too. (UTC days would put 5 on the 8th: 10, 6, 5, 3, 2.)
  { name: '(e) 5 daily, not enough days', policy: { keepDaily: 5 }, flags: ['--keep-daily', '5'], kept: [10, 6, 3, 2, 1] },
  { name: '(f) 2 weekly', policy: { keepWeekly: 2 }, flags: ['--keep-weekly', '2'], kept: [10, 3] },
  { name: '(g) 3 weekly, not enough weeks', policy: { keepWeekly: 3 }, flags: ['--keep-weekly', '3'], kept: [10, 3, 1] },
  // Within 1 h of the newest (13:50): strictly after 12:50.
  { name: '(h) within 1h of the newest', policy: { keepWithinMs: HOUR }, flags: ['--keep-within', '1h'], kept: [10, 9] },
  {
    name: '(i) union of last 1, 2 daily, within 2h',
    policy: { keepLast: 1, keepDaily: 2, keepWithinMs: 2 * HOUR },
    flags: ['--keep-last', '1', '--keep-daily', '2', '--keep-within', '2h'],
    kept: [10, 9, 8, 7, 6],
  },
  // The newest is kept whatever the rules: here it is the only one within 10 minutes.
  { name: '(j) the newest always', policy: { keepWithinMs: HOUR / 6 }, flags: ['--keep-within', '10m'], kept: [10] },
];

describe('retention policy function', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const d = selectKept(CHECKPOINTS, c.policy);
      expect(d.keep.map((k) => k.checkpoint.id)).toEqual(c.kept);
      expect(d.forget.map((f) => f.id).sort((a, b) => a - b)).toEqual(CHECKPOINTS.map((x) => x.id).filter((id) => !c.kept.includes(id)));
    });
  }

  it('says why each is kept', () => {
    const d = selectKept(CHECKPOINTS, { keepDaily: 5, keepLast: 1 });
    expect(d.keep.map((k) => [k.checkpoint.id, k.reasons])).toEqual([
      [10, ['newest', 'last', 'daily']],
      [6, ['daily']],
      [3, ['daily']],
      [2, ['daily']],
      [1, ['oldest daily']],
    ]);
  });

  it('keeps nothing extra for an empty list', () => {
    expect(selectKept([], { keepLast: 2 })).toEqual({ keep: [], forget: [] });
  });
});

describe('crinc prune with chosen timestamps', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  beforeAll(() => {
    // Test-only: checkpoint rows with chosen times are written straight into a new
    // store's index. They have no files (so no chunks); prune reads only these rows.
    const repo = Repository.open(sb.store, { create: true });
    const now = Date.now();
    repo.saveJob({ name: 'fab', createdAt: now, command: ['true'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: now });
    const ins = repo.db.prepare(
      `INSERT INTO checkpoints (id, job, kind, taken_at, mode, root_pid, image_bytes, stored_bytes, pages_total, pages_hashed, pages_clean, duration_ms, freeze_ms)
       VALUES (?, 'fab', ?, ?, ?, NULL, 0, 0, 0, 0, 0, 0, 0)`,
    );
    for (const c of CHECKPOINTS) ins.run(c.id, 'checkpoint', c.takenAt, 'full');
    // A pre-restore snapshot: never forgotten by a policy.
    ins.run(11, 'pre-restore', local(3, 12), 'files');
    repo.close();
  });

  for (const c of CASES.filter((x) => x.flags.length > 0)) {
    it(`--dry-run ${c.name}`, () => {
      const [r] = sb.json<{ job: string; dryRun: boolean; keep: { id: number }[]; forget: { id: number }[] }[]>(['prune', 'fab', ...c.flags, '--dry-run'], { TZ: 'Asia/Tokyo' });
      expect(r!.job).toBe('fab');
      expect(r!.dryRun).toBe(true);
      expect(r!.keep.map((k) => k.id)).toEqual(c.kept);
      expect(r!.forget.length).toBe(CHECKPOINTS.length - c.kept.length);
    });
  }

  it('forgets for real; restore --at then sees only kept checkpoints', () => {
    expect(sb.json<CheckpointJson[]>(['list', 'fab']).length).toBe(11); // dry runs changed nothing
    const union = CASES.find((c) => c.name.startsWith('(i)'))!;
    sb.ok(['prune', 'fab', ...union.flags], { TZ: 'Asia/Tokyo' });
    const left = sb.json<CheckpointJson[]>(['list', 'fab']);
    expect(left.filter((c) => c.kind === 'checkpoint').map((c) => c.id).sort((a, b) => a - b)).toEqual([...union.kept].sort((a, b) => a - b));
    expect(left.filter((c) => c.kind === 'pre-restore').map((c) => c.id)).toEqual([11]);
    // A time between forgotten checkpoint 5 and kept 6 names no kept checkpoint: 6 is the earliest.
    const r = sb.cli(['restore', 'fab', '--at', new Date(local(9, 9)).toISOString()]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`the earliest is checkpoint 6 taken at ${new Date(local(9, 10)).toISOString()}`);
  });

  it('refuses a count that is not a positive whole number', () => {
    const r = sb.cli(['prune', 'fab', '--keep-last', '0']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/"0" is not a count of 1 or more/);
  });
});
