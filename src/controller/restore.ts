// The restore pipeline: pick the checkpoint, materialize and verify everything on tmpfs,
// keep the job's current files in the store, put the checkpoint's files back, run
// `criu restore`. Nothing on disk is touched until every chunk has been verified.
import { copyFileSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { restoreDetached } from '../criu/criu.js';
import { type CheckpointRecord, type FileManifest, type Repository } from '../store/repository.js';
import { lockStore, type StoreLock } from '../store/store-lock.js';
import { makeStaging } from './checkpoint.js';
import type { Codecs } from './codecs.js';
import { JobStillRunningError, NoCheckpointError, noCheckpointYet, ReadOnlyRestoreError } from './errors.js';
import { Ingest, type ProgressCallback } from './ingest.js';
import { type FileFacts, fileFacts, fileMatches, installFile } from './job-files.js';
import { materializeFile, materializeImages } from './materialize.js';
import { isRunning } from './procfs.js';
import { markRestoreFailed, markRestoring, settleInterruptedRestore } from './jobs.js';
import { faultPoint } from '../sys/fault.js';
import { FILE_BLOCK_BYTES } from '../store/format.js';

export type RestoreTarget = { at: number } | { id: number };

export interface RestoreResult {
  pid: number;
  checkpoint: CheckpointRecord;
  /** Files put back to their content at the checkpoint. */
  rolledBack: string[];
  /** The snapshot that keeps what those files held just before (absent when none changed). */
  preRestore: CheckpointRecord | null;
}

export function resolveCheckpoint(repo: Repository, jobName: string, target: RestoreTarget): CheckpointRecord {
  const job = repo.requireJob(jobName);
  if ('id' in target) {
    const cp = repo.getCheckpoint(target.id);
    if (cp.job !== jobName) throw new NoCheckpointError(`checkpoint ${target.id} belongs to job "${cp.job}", not "${jobName}"`);
    if (cp.kind !== 'checkpoint') throw new NoCheckpointError(`checkpoint ${target.id} is a pre-restore snapshot of files, not a process checkpoint`);
    return cp;
  }
  const cp = repo.checkpointAtOrBefore(jobName, target.at);
  if (cp) return cp;
  const all = repo.listCheckpoints(jobName).filter((c) => c.kind === 'checkpoint');
  if (all.length === 0) throw noCheckpointYet(jobName, job.pid !== null && isRunning(job.pid));
  throw new NoCheckpointError(
    `job "${jobName}" has no checkpoint at or before ${new Date(target.at).toISOString()}; ` +
      `the earliest is checkpoint ${all[0]!.id} taken at ${new Date(all[0]!.takenAt).toISOString()}`,
  );
}

/** `onProgress`: bytes of the checkpoint's images materialized, for a progress line. */
export async function restoreJob(repo: Repository, codecs: Codecs, jobName: string, target: RestoreTarget, onProgress?: ProgressCallback): Promise<RestoreResult> {
  settleInterruptedRestore(repo, jobName);
  const job = repo.requireJob(jobName);
  if (job.pid !== null && isRunning(job.pid)) throw new JobStillRunningError(jobName, job.pid);
  const checkpoint = resolveCheckpoint(repo, jobName, target);
  // A read-only store (a snapshot) cannot change under us: no lock, and no record written.
  const lock = repo.readOnly ? undefined : repo.lockJob(jobName, `restore of checkpoint ${checkpoint.id}`);
  let storeLock: StoreLock | undefined;
  const staging = makeStaging('restore');
  // The job's logs live there; a fresh cache of an S3 store does not have it yet.
  mkdirSync(repo.jobDir(jobName), { recursive: true, mode: 0o700 });
  try {
    // Chunks are read and a pre-restore snapshot may be committed: GC waits meanwhile.
    storeLock = await lockStore(repo.dir, 'shared');
    repo.refreshAfterCollection();
    repo.getCheckpoint(checkpoint.id); // not forgotten by retention meanwhile
    const imagesDir = join(staging, 'images');
    const workDir = join(staging, 'work');
    const wantedDir = join(staging, 'wanted');
    const currentDir = join(staging, 'current');
    for (const d of [workDir, wantedDir, currentDir]) mkdirSync(d, { mode: 0o700 });

    // 1. Materialize and verify: images, then the files that differ from the checkpoint.
    const files = await repo.checkpointFiles(checkpoint.id, codecs.chunks);
    await materializeImages(repo, files.filter((f) => f.role === 'image'), codecs, imagesDir, onProgress);
    const changed: { manifest: FileManifest; wanted: string; current: string | null; facts: FileFacts | null }[] = [];
    for (const [i, m] of files.filter((f) => f.role === 'job-file').entries()) {
      if (fileMatches(m, codecs.pages)) continue;
      const wanted = join(wantedDir, String(i));
      await materializeFile(repo, m, codecs, wanted);
      let current: string | null = null;
      let facts: FileFacts | null = null;
      if (existsSync(m.path)) {
        current = join(currentDir, String(i));
        facts = fileFacts(m.path);
        copyFileSync(m.path, current);
      }
      changed.push({ manifest: m, wanted, current, facts });
    }

    // 2. Keep what the files hold now, before anything is overwritten.
    let preRestore: CheckpointRecord | null = null;
    const kept = changed.filter((c) => c.current !== null);
    if (kept.length > 0 && repo.readOnly) throw new ReadOnlyRestoreError(jobName, kept.map((c) => c.manifest.path));
    if (kept.length > 0) {
      const writer = repo.newChunkWriter(codecs.chunks);
      const ingest = new Ingest(codecs, repo, writer);
      const manifests: FileManifest[] = kept.map(({ manifest, current, facts }) => ({
        role: 'job-file',
        path: manifest.path,
        size: statSync(current!).size,
        blockBytes: FILE_BLOCK_BYTES,
        ids: ingest.blocks(current!, FILE_BLOCK_BYTES),
        ...facts!,
      }));
      preRestore = await repo.commitCheckpoint(
        {
          job: jobName,
          kind: 'pre-restore',
          takenAt: Date.now(),
          mode: 'files',
          rootPid: null,
          imageBytes: 0,
          pagesTotal: 0,
          pagesHashed: 0,
          pagesClean: 0,
          durationMs: 0,
          freezeMs: 0,
          note: `files as they were before restoring checkpoint ${checkpoint.id}`,
        },
        manifests,
        writer,
      );
    }

    // 3. Put the checkpoint's files back, then let CRIU restore the processes.
    for (const c of changed) installFile(c.wanted, c.manifest);
    let pid: number;
    markRestoring(repo, jobName);
    try {
      ({ pid } = await restoreDetached({ imagesDir, workDir }));
      faultPoint('restore-after-criu');
    } catch (e) {
      markRestoreFailed(repo, jobName);
      // The job did not come back: give its files their newer content again.
      for (const c of changed) {
        if (c.current) installFile(c.current, { ...c.manifest, ...c.facts!, size: statSync(c.current).size });
        else rmSync(c.manifest.path, { force: true });
      }
      throw e;
    }
    if (!repo.readOnly) repo.saveJob({ ...job, pid, state: 'running', updatedAt: Date.now() });
    return { pid, checkpoint, rolledBack: changed.map((c) => c.manifest.path), preRestore };
  } finally {
    rmSync(staging, { recursive: true, force: true });
    storeLock?.release();
    lock?.release();
  }
}
