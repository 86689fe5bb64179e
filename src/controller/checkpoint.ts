// The checkpoint pipeline: CRIU dump (job's files captured while frozen) → ingest →
// one commit. A failure at any step leaves the store as it was; staging is removed.
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { dump } from '../criu/criu.js';
import { readDumpStats } from '../criu/images.js';
import type { CheckpointRecord, FileManifest, Repository } from '../store/repository.js';
import type { Codecs } from './codecs.js';
import { JobNotRunningError } from './errors.js';
import { Ingest, NO_CLEAN_PAGES } from './ingest.js';
import { type CapturedFile, captureJobFiles, jobFileManifests } from './job-files.js';
import { isRunning } from './procfs.js';

/** Staging lives on tmpfs: CRIU writes the images at memory speed, and nothing of it persists. */
export const STAGING_ROOT = '/dev/shm';

export function makeStaging(kind: string): string {
  const dir = mkdtempSync(join(STAGING_ROOT, `crinc-${kind}-`));
  return dir; // mkdtemp creates it 0700
}

export interface CheckpointOptions {
  /** Debug aid: also keep CRIU's images, as CRIU wrote them, in <dir>/<checkpoint id>/. */
  keepImagesDir?: string;
}

export async function takeCheckpoint(repo: Repository, codecs: Codecs, jobName: string, options: CheckpointOptions = {}): Promise<CheckpointRecord> {
  const job = repo.requireJob(jobName);
  if (job.pid === null || !isRunning(job.pid)) throw new JobNotRunningError(jobName, job.pid);
  const pid = job.pid;
  const lock = repo.lockJob(jobName, 'checkpoint');
  const staging = makeStaging('checkpoint');
  try {
    const imagesDir = join(staging, 'images');
    const workDir = join(staging, 'work');
    const filesDir = join(staging, 'files');
    mkdirSync(imagesDir, { mode: 0o700 });
    mkdirSync(workDir, { mode: 0o700 });

    const previous = repo.latestCheckpoint(jobName);
    const previousFiles = new Map<string, FileManifest>(
      previous ? repo.checkpointFiles(previous.id, codecs.chunks, 'job-file').map((f) => [f.path, f]) : [],
    );

    const started = performance.now();
    let takenAt = 0;
    let captured: CapturedFile[] = [];
    const { frozenWorkMs } = await dump({
      pid,
      imagesDir,
      workDir,
      whileFrozen: async () => {
        takenAt = Date.now();
        captured = captureJobFiles(pid, filesDir, previousFiles);
      },
    });
    const stats = readDumpStats(workDir);

    const writer = repo.newChunkWriter(codecs.chunks);
    const ingest = new Ingest(codecs.pages, writer);
    let images: FileManifest[];
    let jobFiles: FileManifest[];
    try {
      images = ingest.imageDirectory(imagesDir, NO_CLEAN_PAGES);
      jobFiles = jobFileManifests(captured, ingest);
    } catch (e) {
      writer.abandon();
      throw e;
    }
    const record = repo.commitCheckpoint(
      {
        job: jobName,
        kind: 'checkpoint',
        takenAt,
        mode: 'full',
        rootPid: pid,
        imageBytes: ingest.stats.imageBytes,
        pagesTotal: ingest.stats.pagesTotal,
        pagesHashed: ingest.stats.pagesHashed,
        pagesClean: ingest.stats.pagesClean,
        durationMs: performance.now() - started,
        // CRIU's frozen time ends before its post-dump action; crinc's own frozen work follows it.
        freezeMs: (stats.freezingTimeUs + stats.frozenTimeUs) / 1000 + frozenWorkMs,
        note: null,
      },
      [...images, ...jobFiles],
      writer,
    );
    if (options.keepImagesDir) cpSync(imagesDir, join(options.keepImagesDir, String(record.id)), { recursive: true });
    return record;
  } finally {
    rmSync(staging, { recursive: true, force: true });
    lock.release();
  }
}
