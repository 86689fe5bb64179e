// The --keep-* options (restic's forget rules), for every command that sets or applies
// a retention policy: run, checkpoint, prune (and the daemon's commands).
import { type Command, InvalidArgumentError, Option } from 'commander';
import { parseDuration } from '../controller/time-spec.js';
import { hasRules, type RetentionPolicy } from '../store/retention-policy.js';

export interface RetentionFlags {
  keepLast?: number;
  keepWithin?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
}

function countArg(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new InvalidArgumentError(`"${v}" is not a count of 1 or more`);
  return Number(v);
}

function durationArg(v: string): number {
  try {
    const ms = parseDuration(v);
    if (ms <= 0) throw new InvalidArgumentError(`"${v}" is not a positive duration`);
    return ms;
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

export function addRetentionOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--keep-last <n>', 'keep the newest N checkpoints').argParser(countArg))
    .addOption(new Option('--keep-within <duration>', 'keep checkpoints taken within DURATION before the newest one, e.g. 2h, 7d').argParser(durationArg))
    .addOption(new Option('--keep-hourly <n>', 'keep the newest checkpoint of each of the last N hours that have one (local time)').argParser(countArg))
    .addOption(new Option('--keep-daily <n>', 'keep the newest checkpoint of each of the last N days that have one').argParser(countArg))
    .addOption(new Option('--keep-weekly <n>', 'keep the newest checkpoint of each of the last N ISO weeks that have one').argParser(countArg));
}

/** The policy the options give, or undefined when none was given. */
export function retentionFromOptions(o: RetentionFlags): RetentionPolicy | undefined {
  const policy: RetentionPolicy = {};
  if (o.keepLast !== undefined) policy.keepLast = o.keepLast;
  if (o.keepWithin !== undefined) policy.keepWithinMs = o.keepWithin;
  if (o.keepHourly !== undefined) policy.keepHourly = o.keepHourly;
  if (o.keepDaily !== undefined) policy.keepDaily = o.keepDaily;
  if (o.keepWeekly !== undefined) policy.keepWeekly = o.keepWeekly;
  return hasRules(policy) ? policy : undefined;
}

export const RETENTION_HELP = `
Retention (as restic's forget): a checkpoint is kept when any rule keeps it, and the
newest is always kept; the others are forgotten (their chunks are freed by crinc gc).
Given to run or checkpoint, the rules become the job's policy, applied after each of
its checkpoints. Pre-restore snapshots are never forgotten by a policy.`;
