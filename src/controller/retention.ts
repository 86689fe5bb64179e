// Retention: a job's policy applied to its checkpoints (src/store/retention-policy.ts).
// Forgetting deletes a checkpoint's index rows only; its chunks stay until `crinc gc`.
// Pre-restore snapshots are never forgotten by a policy: they hold what a restore
// overwrote, which exists nowhere else, and they are small and rare.
import type { CheckpointRecord, Repository } from '../store/repository.js';
import { hasRules, type RetentionDecision, type RetentionPolicy, selectKept } from '../store/retention-policy.js';

export interface PruneOptions {
  dryRun: boolean;
}

/** Applies the policy to the job's process checkpoints; with dryRun, only says what it would do. */
export function pruneJob(repo: Repository, job: string, policy: RetentionPolicy, options: PruneOptions): RetentionDecision<CheckpointRecord> {
  repo.requireJob(job);
  const checkpoints = repo.listCheckpoints(job).filter((c) => c.kind === 'checkpoint');
  const decision = selectKept(checkpoints, policy);
  if (!options.dryRun && decision.forget.length > 0) repo.forgetCheckpoints(decision.forget.map((c) => c.id));
  return decision;
}

/** After a checkpoint: the job's stored policy, if it has one with rules. */
export function applyStoredRetention(repo: Repository, job: string): RetentionDecision<CheckpointRecord> | undefined {
  const policy = repo.jobRetention(job);
  if (!policy || !hasRules(policy)) return undefined;
  return pruneJob(repo, job, policy, { dryRun: false });
}
