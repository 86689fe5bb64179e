// Pre-copy: a job's first checkpoint reads and stores its memory while the job still
// runs, so that the freeze reads only what changed since. Without it, every page of a
// first checkpoint crosses the page stream, is hashed and is written into a pack while
// the job is frozen (~3× a bare `criu dump` per GiB here). Sound by the tracking rule:
// each process is scanned, running, just before its pages are read (which only forgets
// what was written so far), and a page the freeze's scan reports clean was not written
// since, so what was read is what the page holds at the freeze. CRIU's pre-dump does the
// same with soft-dirty bits.
import type { PageSource } from '../criu/page-server.js';
import { PAGE_BYTES } from '../store/format.js';
import type { ChunkWriter, Repository } from '../store/repository.js';
import { isGone } from '../sys/proc.js';
import { pageCount } from '../tracking/page-ranges.js';
import { WriteTrackingError } from '../tracking/write-protect.js';
import type { Codecs } from './codecs.js';
import { Ingest, NO_CLEAN_PAGES, type PageIndex, type ProgressCallback } from './ingest.js';
import type { PrecopyTarget, TrackingSession } from './tracking-session.js';

export interface Precopied {
  pages: PageIndex;
  /** Pages read, and the processes whose reading failed (their pages are read at the freeze). */
  pageCount: number;
  skipped: number[];
  ms: number;
}

/**
 * Reads the memory of the job's armed processes into the store through `writer` (the
 * checkpoint's: the chunks are committed with it, or abandoned with it) and hands the
 * pages read to the tracking for the freeze. Undefined when there is nothing to pre-copy
 * (tracking has a baseline, is disarmed, or arms no process).
 */
export async function precopy(
  tracking: TrackingSession,
  codecs: Codecs,
  repo: Repository,
  writer: ChunkWriter,
  signal?: AbortSignal,
  onProgress?: ProgressCallback,
): Promise<Precopied | undefined> {
  const targets = tracking.precopyTargets();
  if (targets.length === 0) return undefined;
  const started = performance.now();
  const ingest = new Ingest(codecs, repo, writer);
  ingest.onProgress = onProgress;
  ingest.progressTotal = targets.reduce((n, t) => n + pageCount(t.ranges) * PAGE_BYTES, 0);
  const scansBefore = new Map<number, number>();
  const skipped: number[] = [];
  try {
    for (const target of targets) {
      signal?.throwIfAborted();
      const stream = ingest.beginPages(`precopy-${target.nsPid}`, target.nsPid, NO_CLEAN_PAGES);
      try {
        for (const r of target.ranges) {
          signal?.throwIfAborted();
          await ingest.addPages(stream, r.start, (r.end - r.start) / PAGE_BYTES, memorySource(target, r.start));
        }
      } catch (e) {
        // Unmapped under the read, or the process ended: its pages are read at the freeze.
        if (!(e instanceof WriteTrackingError) && !isGone(e)) throw e;
        skipped.push(target.hostPid);
        continue;
      }
      ingest.endPages(stream);
      scansBefore.set(target.nsPid, target.scansBefore);
    }
    await ingest.finishPages();
  } catch (e) {
    await ingest.abandon();
    throw e;
  }
  tracking.usePrecopy(ingest.pageIndex, scansBefore);
  return { pages: ingest.pageIndex, pageCount: ingest.stats.pagesTotal, skipped, ms: performance.now() - started };
}

/** The pages of one range of a process, read in order from vaddr on. */
function memorySource(target: PrecopyTarget, vaddr: number): PageSource {
  let at = vaddr;
  return {
    read(into) {
      target.read(at, into);
      at += into.length;
    },
    skip(bytes) {
      at += bytes;
    },
  };
}
