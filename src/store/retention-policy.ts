// Which checkpoints a retention policy keeps: restic's `forget` rules. Each rule keeps
// some checkpoints; a checkpoint is kept when any rule keeps it, and the newest is
// always kept. A policy without rules keeps everything.

export interface RetentionPolicy {
  /** The newest N. */
  keepLast?: number;
  /** Those taken less than this many ms before the newest one (not before now: a job that stopped keeps its history). */
  keepWithinMs?: number;
  /** The newest of each of the last N hours, days, ISO weeks that have one (local time). */
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
}

export interface Dated {
  id: number;
  takenAt: number;
}

export type KeepReason = 'newest' | 'last' | 'within' | 'hourly' | 'daily' | 'weekly' | 'oldest hourly' | 'oldest daily' | 'oldest weekly';

export interface RetentionDecision<T extends Dated> {
  /** Newest first, with the rules that keep each. */
  keep: { checkpoint: T; reasons: KeepReason[] }[];
  /** Newest first. */
  forget: T[];
}

const BUCKET_RULES = [
  { reason: 'hourly', count: (p: RetentionPolicy) => p.keepHourly, key: hourKey },
  { reason: 'daily', count: (p: RetentionPolicy) => p.keepDaily, key: dayKey },
  { reason: 'weekly', count: (p: RetentionPolicy) => p.keepWeekly, key: isoWeekKey },
] as const;

export function hasRules(policy: RetentionPolicy): boolean {
  return (
    (policy.keepLast ?? 0) > 0 ||
    (policy.keepWithinMs ?? 0) > 0 ||
    (policy.keepHourly ?? 0) > 0 ||
    (policy.keepDaily ?? 0) > 0 ||
    (policy.keepWeekly ?? 0) > 0
  );
}

/**
 * Applies the policy to one job's checkpoints. Bucket rules walk from the newest and
 * keep the first checkpoint of each bucket until their count is used up; when a rule
 * runs out of checkpoints with count left, the oldest checkpoint is kept as well (as
 * restic does since 0.16), so a young job keeps its first state.
 */
export function selectKept<T extends Dated>(checkpoints: readonly T[], policy: RetentionPolicy): RetentionDecision<T> {
  const list = [...checkpoints].sort((a, b) => b.takenAt - a.takenAt || b.id - a.id);
  if (!hasRules(policy)) return { keep: list.map((checkpoint) => ({ checkpoint, reasons: [] })), forget: [] };
  const reasons = list.map((): KeepReason[] => []);
  const newest = list[0]?.takenAt ?? 0;
  const buckets = BUCKET_RULES.map((r) => ({ ...r, left: r.count(policy) ?? 0, last: undefined as number | undefined }));
  list.forEach((cp, nr) => {
    if (nr === 0) reasons[nr]!.push('newest');
    if (nr < (policy.keepLast ?? 0)) reasons[nr]!.push('last');
    if ((policy.keepWithinMs ?? 0) > 0 && cp.takenAt > newest - policy.keepWithinMs!) reasons[nr]!.push('within');
    for (const b of buckets) {
      if (b.left <= 0) continue;
      const key = b.key(new Date(cp.takenAt));
      if (key === b.last) continue;
      b.last = key;
      b.left--;
      reasons[nr]!.push(b.reason);
    }
  });
  if (list.length > 0) {
    for (const b of buckets) if (b.left > 0) reasons[list.length - 1]!.push(`oldest ${b.reason}`);
  }
  const decision: RetentionDecision<T> = { keep: [], forget: [] };
  list.forEach((checkpoint, i) => {
    if (reasons[i]!.length > 0) decision.keep.push({ checkpoint, reasons: reasons[i]! });
    else decision.forget.push(checkpoint);
  });
  return decision;
}

function hourKey(t: Date): number {
  return dayKey(t) * 100 + t.getHours();
}

function dayKey(t: Date): number {
  return t.getFullYear() * 10_000 + (t.getMonth() + 1) * 100 + t.getDate();
}

/** ISO 8601 week-numbering year and week (weeks start on Monday; week 1 holds the year's first Thursday). */
function isoWeekKey(t: Date): number {
  // The Thursday of t's week decides the year; computed on the local calendar date.
  const day = (t.getDay() + 6) % 7; // Monday 0 … Sunday 6
  const thursday = new Date(Date.UTC(t.getFullYear(), t.getMonth(), t.getDate() - day + 3));
  const yearStart = Date.UTC(thursday.getUTCFullYear(), 0, 1);
  const week = 1 + Math.floor((thursday.getTime() - yearStart) / (7 * 86_400_000));
  return thursday.getUTCFullYear() * 100 + week;
}
