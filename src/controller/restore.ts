// The restore pipeline: pick the checkpoint, write CRIU's small images to tmpfs (the job's
// pages stay in the store), keep the job's current files in the store, put the
// checkpoint's files back, run `criu restore --lazy-pages` with crinc serving the pages.
// The job's files are touched only once every chunk of them has been verified; every
// page is checked against its id as it is served.
import { copyFileSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type LazyRestoreStart, startLazyRestore } from '../criu/criu.js';
import type { CheckpointRecord, FileManifest, Repository } from '../store/repository.js';
import type { StoreLock } from '../store/store-lock.js';
import { makeStaging } from './checkpoint.js';
import type { Codecs } from './codecs.js';
import { JobStillRunningError, NoCheckpointError, noCheckpointYet, ReadOnlyRestoreError } from './errors.js';
import { Ingest, type ProgressCallback } from './ingest.js';
import { type FileFacts, fileFacts, fileMatches, installFile } from './job-files.js';
import { stageLazyRestore } from './lazy-pages.js';
import { materializeFile } from './materialize.js';
import { exitedWithin, isRunning } from './procfs.js';
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
  /**
   * Settles when every page is in. Already settled unless `lazy`; with `lazy`, this
   * process must stay alive until then: the job faults on a page not yet in and the
   * page server must answer (if it dies first, the job is killed by SIGBUS at that page).
   */
  allPagesIn: Promise<void>;
}

export interface RestoreOptions {
  /** Bytes of the job's pages put in, for a progress line. */
  onProgress?: ProgressCallback;
  /** Return as soon as the job runs; pages go on arriving on demand and in the background. */
  lazy?: boolean;
}

/** Longest wait for a killed job to be gone before its files are put back. */
const KILLED_JOB_GONE_MS = 30_000;

async function waitUntilGone(pid: number): Promise<void> {
  if (!(await exitedWithin(pid, KILLED_JOB_GONE_MS))) {
    throw new Error(`the restored job (pid ${pid}) was killed but is still there after ${KILLED_JOB_GONE_MS / 1000} s`);
  }
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

export async function restoreJob(repo: Repository, codecs: Codecs, jobName: string, target: RestoreTarget, options: RestoreOptions = {}): Promise<RestoreResult> {
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
  // Held until every page is in: GC must not remove a chunk still to be served.
  const release = () => {
    rmSync(staging, { recursive: true, force: true });
    storeLock?.release();
    lock?.release();
  };
  let serving: Promise<void> | undefined;
  let criu: LazyRestoreStart | undefined;
  try {
    // Chunks are read and a pre-restore snapshot may be committed: GC waits meanwhile.
    storeLock = await repo.lockShared(`restore of job ${jobName}`);
    repo.getCheckpoint(checkpoint.id); // not forgotten by retention meanwhile
    const imagesDir = join(staging, 'images');
    const workDir = join(staging, 'work');
    const wantedDir = join(staging, 'wanted');
    const currentDir = join(staging, 'current');
    for (const d of [workDir, wantedDir, currentDir]) mkdirSync(d, { mode: 0o700 });

    // 1. CRIU's small images, the pages it restores itself, and the files that differ from the checkpoint.
    // CRIU starts up meanwhile (~0.1-0.2 s), and waits for the images.
    criu = startLazyRestore({ imagesDir, workDir });
    faultPoint('restore-staging');
    const files = await repo.checkpointFiles(checkpoint.id, codecs.chunks);
    // The lazy-pages daemon reads the image files as it starts up, while the pages'
    // bookkeeping is built and the job's files are compared.
    const pages = await stageLazyRestore(repo, files.filter((f) => f.role === 'image'), codecs, imagesDir, options.onProgress, () => criu!.imagesWritten());
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
    // The job did not come back: its files get their newer content again.
    const putBack = () => {
      for (const c of changed) {
        if (c.current) installFile(c.current, { ...c.manifest, ...c.facts!, size: statSync(c.current).size });
        else rmSync(c.manifest.path, { force: true });
      }
    };
    let pid: number;
    let allPagesIn: Promise<void>;
    markRestoring(repo, jobName);
    try {
      const starting = criu;
      criu = undefined; // the restore owns it now, failed or not
      ({ pid, allPagesIn } = await starting.restore(pages));
    } catch (e) {
      markRestoreFailed(repo, jobName);
      putBack();
      throw e;
    }
    if (!options.lazy) {
      try {
        await allPagesIn;
      } catch (e) {
        // A page could not be put in (a damaged chunk, say): the job has been killed,
        // never to run on without it. Once it is gone, its files are as they were.
        await waitUntilGone(pid);
        putBack();
        markRestoreFailed(repo, jobName);
        throw e;
      }
    }
    // The job runs on its own now (every page in, or --lazy's server feeding it): a crinc
    // killed here leaves the record at `restoring`, and a retry finds the job instead of
    // restoring a second copy. Killed earlier, its watchdog kills the job with it.
    faultPoint('restore-after-criu');
    if (!repo.readOnly) repo.saveJob({ ...job, pid, state: 'running', updatedAt: Date.now() });
    serving = allPagesIn.finally(release);
    serving.catch(() => undefined); // the caller observes allPagesIn
    return { pid, checkpoint, rolledBack: changed.map((c) => c.manifest.path), preRestore, allPagesIn };
  } finally {
    // Staging failed before the restore began: CRIU's processes go.
    await criu?.abandon();
    if (!serving) release();
  }
}
