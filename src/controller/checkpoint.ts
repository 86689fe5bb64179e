// The checkpoint pipeline: CRIU dump, its pages streamed straight into the ingest (the
// job's files captured while frozen) → one commit. A failure at any step leaves the
// store as it was; staging (CRIU's small images only) is removed.
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CriuError, dump } from '../criu/criu.js';
import { type DumpStats, readDumpStats } from '../criu/images.js';
import type { CheckpointRecord, ChunkWriter, FileManifest, Repository } from '../store/repository.js';
import { PAGE_BYTES } from '../store/format.js';
import type { StoreLock } from '../store/store-lock.js';
import { faultPoint } from '../sys/fault.js';
import { isGone } from '../sys/proc.js';
import type { Codecs } from './codecs.js';
import { JobNotRunningError } from './errors.js';
import { DumpStream } from './dump-stream.js';
import { type CleanPages, Ingest, MIN_COMPRESSION_SAVINGS, NO_CLEAN_PAGES, type PageIndex, type ProgressCallback, TrackingMissError } from './ingest.js';
import type { FrozenTracking, TrackingSession } from './tracking-session.js';
import { type CapturedFile, captureJobFiles, jobFileManifests } from './job-files.js';
import { type Precopied, precopy } from './precopy.js';
import { isRunning, processTree } from './procfs.js';
import { applyStoredRetention } from './retention.js';

/** Staging lives on tmpfs: it holds CRIU's small images (KiB), never the job's pages. */
export const STAGING_ROOT = '/dev/shm';

/** crinc-<kind>-<pid of its owner>-<random>: a staging dir whose owner is dead is garbage. */
const STAGING_NAME = /^crinc-[a-z]+-(\d+)-[A-Za-z0-9]{6}$/;

export function makeStaging(kind: string): string {
  const dir = mkdtempSync(join(STAGING_ROOT, `crinc-${kind}-${process.pid}-`));
  return dir; // mkdtemp creates it 0700
}

/**
 * Removes the staging dirs of crinc processes that died (killed mid-checkpoint or
 * mid-restore), unless a process still works in one: the CRIU a killed crinc started
 * runs on until its dump fails and it thaws the job.
 */
export function removeStaleStaging(): string[] {
  const stale = readdirSync(STAGING_ROOT).filter((name) => {
    const owner = STAGING_NAME.exec(name);
    return owner !== null && !isRunning(Number(owner[1]));
  });
  if (stale.length === 0) return [];
  const inUse = commandLines();
  const removed: string[] = [];
  for (const name of stale) {
    const dir = join(STAGING_ROOT, name);
    if (inUse.some((cmd) => cmd.includes(dir))) continue;
    rmSync(dir, { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

/** Every process's command line (arguments joined by NUL). */
function commandLines(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      out.push(readFileSync(`/proc/${pid}/cmdline`, 'latin1'));
    } catch (e) {
      if (!isGone(e)) throw e;
    }
  }
  return out;
}

export interface CheckpointOptions {
  /** Debug aid: also keep CRIU's images, as CRIU sent them (pages included), in <dir>/<checkpoint id>/. */
  keepImagesDir?: string;
  /** The controller's dirty tracking: clean pages are reused without reading them. */
  tracking?: TrackingSession;
  /** Hash pages called clean anyway and fail on any that changed (CRINC_VERIFY_TRACKING=1). */
  verifyTracking?: boolean;
  /** Bytes of the job's pages ingested, for a progress line. */
  onProgress?: ProgressCallback;
  /** Cancels the checkpoint up to the freeze (Ctrl-C): CRIU fails the dump and thaws the job; throws the signal's reason. */
  signal?: AbortSignal;
}

export async function takeCheckpoint(repo: Repository, codecs: Codecs, jobName: string, options: CheckpointOptions = {}): Promise<CheckpointRecord> {
  const job = repo.requireJob(jobName);
  if (job.pid === null || !isRunning(job.pid)) throw new JobNotRunningError(jobName, job.pid);
  const pid = job.pid;
  const lock = repo.lockJob(jobName, 'checkpoint');
  let storeLock: StoreLock | undefined;
  const staging = makeStaging('checkpoint');
  try {
    // Held from before the dump until the commit: GC neither deletes a chunk this
    // checkpoint counts on nor removes its packs as orphans. Waiting for a GC happens
    // here, before the job is frozen.
    storeLock = await repo.lockShared(`checkpoint of job ${jobName}`);
    // Clean pages reuse the ids of the checkpoint tracking committed last. Forgotten since
    // (repair --forget-damaged), GC may have deleted chunks only it named. Checked under
    // the lock: no GC sweeps from here to the commit, and GC then keeps what it names.
    const { tracking } = options;
    const baselineCheckpoint = tracking?.baselineCheckpoint ?? null;
    if (tracking && baselineCheckpoint !== null && !repo.hasCheckpoint(baselineCheckpoint)) tracking.dropBaseline();
    // The runs earlier commits added are merged now, while the job runs: lookups during
    // the freeze read few runs.
    repo.compactChunkIndex();
    const imagesDir = join(staging, 'images');
    const workDir = join(staging, 'work');
    const filesDir = join(staging, 'files');
    mkdirSync(imagesDir, { mode: 0o700 });
    mkdirSync(workDir, { mode: 0o700 });

    const previous = repo.latestCheckpoint(jobName);
    // Without clean-page reuse, most pages hashed are the previous checkpoint's: their ids
    // are noted as known, and need no lookup. With it, the pages hashed are few and mostly
    // new: looking them up costs less than loading and noting a large job's every id
    // (~0.2 s per GiB), so only the job files' manifests are loaded.
    const reusesCleanPages = options.tracking?.hasBaseline ?? false;
    const previousManifests = previous ? await repo.checkpointFiles(previous.id, codecs.chunks, reusesCleanPages ? 'job-file' : undefined) : [];
    if (!reusesCleanPages) for (const f of previousManifests) repo.rememberKnown(f.ids);
    // A file whose manifest names a quarantined chunk is read again, not reused as unchanged.
    const previousFiles = new Map<string, FileManifest>(previousManifests.filter((f) => f.role === 'job-file' && !repo.namesQuarantined(f.ids)).map((f) => [f.path, f]));

    options.signal?.throwIfAborted();
    const started = performance.now();
    let takenAt = 0;
    let captured: CapturedFile[] = [];
    let frozen: FrozenTracking | undefined;
    const verify = Boolean(options.verifyTracking);
    const resident = residentBytes(pid);
    // A job's first checkpoint stores most of its pages anew: its writer's set of ids is
    // sized for them at once. Not otherwise: most pages are the store's already, and a set
    // sized for all of them would turn their lookups into cache misses.
    const writer = repo.newChunkWriter(codecs.chunks, previous ? 0 : Math.ceil(resident / PAGE_BYTES));
    // Verification needs tracking: whether it runs is known only once the tree is frozen.
    const ingest = new Ingest(codecs, repo, writer, verify && tracking !== undefined);
    ingest.onProgress = options.onProgress;
    ingest.progressTotal = resident;
    if (reusesCleanPages) ingest.prepareIds(options.tracking!.baselinePages());
    if (options.keepImagesDir) mkdirSync(options.keepImagesDir, { recursive: true, mode: 0o700 });
    const teeDir = options.keepImagesDir ? mkdtempSync(join(options.keepImagesDir, '.streaming-')) : undefined;
    // crinc's work inside the freeze, at CRIU's first open of a pagemap: CRIU waits for
    // the answer with the whole tree frozen. A failure there fails the dump (the job thaws).
    const stagingPath = realpathSync(staging); // as /proc's fd links name it
    let precopied: Precopied | undefined;
    const atFreeze = (): CleanPages => {
      faultPoint('checkpoint-while-frozen');
      takenAt = Date.now();
      frozen = tracking?.whileFrozen();
      if (frozen && precopied) frozen.notes.push(precopyNote(precopied));
      captured = captureJobFiles(pid, filesDir, previousFiles, stagingPath);
      return frozen?.clean ?? NO_CLEAN_PAGES;
    };
    const stream = new DumpStream(ingest, imagesDir, atFreeze, options.signal, teeDir);
    let committing = false;
    try {
      // A first checkpoint with tracking armed reads the job's memory while it runs: the freeze then reads only what changed.
      precopied = tracking ? await precopy(tracking, codecs, repo, writer, options.signal, options.onProgress) : undefined;
      if (precopied) ingest.prepareIds(precopied.pages);
      await dump({ pid, imagesDir, workDir, pages: stream });
      // CRIU opens every process's pagemap, empty or not (criu/mem.c): without one, crinc
      // never saw the tree frozen.
      if (!stream.opened) throw new CriuError('criu dump sent no pagemap: crinc never saw the tree frozen, so it cannot tell what the checkpoint holds');
      faultPoint('checkpoint-after-dump');
      committing = true;
      const record = await commitImages(repo, {
        jobName, pid, imagesDir, workDir, captured, frozen, takenAt, started, verify, ingest, writer, stream,
      });
      storeLock.release();
      tracking?.committed(record.checkpoint.id, record.pageIndex);
      if (teeDir) {
        cpSync(imagesDir, teeDir, { recursive: true });
        renameSync(teeDir, join(options.keepImagesDir!, String(record.checkpoint.id)));
      }
      faultPoint('checkpoint-after-commit');
      // Under the job lock: the newest checkpoint, which retention always keeps, is ours.
      await applyStoredRetention(repo, jobName);
      return record.checkpoint;
    } catch (e) {
      // commitImages cleans up after itself: once it ran, the packs may be committed.
      if (!committing) {
        await ingest.abandon();
        writer.abandon();
      }
      // The scan (if it ran) cleared the written bits: only a full checkpoint is sound next.
      // A pre-copy's chunks were abandoned with the writer: its ids must not be reused.
      if (frozen || precopied) tracking?.failed();
      throw e;
    } finally {
      if (teeDir) rmSync(teeDir, { recursive: true, force: true });
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
    storeLock?.release();
    lock.release();
  }
}

function precopyNote(p: Precopied): string {
  const skipped = p.skipped.length > 0 ? ` (not process${p.skipped.length > 1 ? 'es' : ''} ${p.skipped.join(', ')}, changed under the read)` : '';
  return `${p.pageCount} pages pre-copied in ${(p.ms / 1000).toFixed(1)} s while the job ran${skipped}`;
}

/** The job's resident memory, the size the page stream will have (for a progress line). */
function residentBytes(rootPid: number): number {
  let total = 0;
  for (const pid of processTree(rootPid)) {
    try {
      const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) total += Number(m[1]) * 1024;
    } catch (e) {
      if (!isGone(e)) throw e;
    }
  }
  return total;
}

interface CommitInput {
  jobName: string;
  pid: number;
  imagesDir: string;
  workDir: string;
  captured: CapturedFile[];
  frozen: FrozenTracking | undefined;
  takenAt: number;
  started: number;
  verify: boolean;
  ingest: Ingest;
  writer: ChunkWriter;
  stream: DumpStream;
}

/** The rest of the ingest (compression of new pages, small images, captured files), then the commit. */
async function commitImages(repo: Repository, input: CommitInput): Promise<{ checkpoint: CheckpointRecord; pageIndex: PageIndex }> {
  const { jobName, pid, imagesDir, workDir, captured, frozen, takenAt, started, ingest, writer, stream } = input;
  const verified = input.verify && frozen !== undefined;
  let images: FileManifest[];
  let jobFiles: FileManifest[];
  let stats: DumpStats;
  try {
    stats = readDumpStats(workDir);
    await ingest.finishPages();
    images = ingest.imageDirectory(imagesDir, stream.pagesFiles);
    jobFiles = jobFileManifests(captured, ingest);
    if (ingest.misses.length > 0) throw new TrackingMissError(ingest.misses);
  } catch (e) {
    await ingest.abandon();
    writer.abandon();
    throw e;
  }
  const clean = frozen?.clean ?? NO_CLEAN_PAGES;
  const notes = frozen?.notes ?? [];
  if (verified) notes.push('verified: every page hashed, clean pages checked');
  if (ingest.stats.pagesStoredRaw > 0) notes.push(`${ingest.stats.pagesStoredRaw} new pages stored uncompressed: compression could not keep up while the job was frozen`);
  if (ingest.stats.pagesIncompressible > 0) notes.push(`${ingest.stats.pagesIncompressible} new pages stored uncompressed: compression saved under ${MIN_COMPRESSION_SAVINGS * 100}% of such pages`);
  const checkpoint = await repo.commitCheckpoint(
    {
      job: jobName,
      kind: 'checkpoint',
      takenAt,
      // Pages reused from a pre-copy were read by this checkpoint too: it is a full one.
      mode: clean !== NO_CLEAN_PAGES && frozen?.reference === 'checkpoint' ? 'incremental' : 'full',
      rootPid: pid,
      imageBytes: ingest.stats.imageBytes,
      pagesTotal: ingest.stats.pagesTotal,
      pagesHashed: ingest.stats.pagesHashed,
      pagesClean: ingest.stats.pagesClean,
      durationMs: performance.now() - started,
      // CRIU's frozen time includes the page stream to crinc and crinc's work at the freeze.
      freezeMs: (stats.freezingTimeUs + stats.frozenTimeUs) / 1000,
      note: notes.length ? notes.join('; ') : null,
    },
    [...images, ...jobFiles],
    writer,
  );
  return { checkpoint, pageIndex: ingest.pageIndex };
}
