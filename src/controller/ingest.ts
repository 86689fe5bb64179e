// Ingest: turns the pages CRIU streams (one 4 KiB chunk per page), its small image files
// and the job's captured files into chunk ids and new chunks. A page proven clean since
// the previous checkpoint reuses that checkpoint's chunk id and is passed over unhashed.
// Pages are read straight into the page codec's memory, HASH_BATCH_PAGES at a time, and
// hashed and stored from there while they are in the CPU's cache. Memory stays bounded
// whatever the job's size (the codec pool's batches aside); only the ids (16 bytes a
// page) grow with it.
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ChunkBatch } from '../codec/chunk-batch.js';
import { POOL_BATCH_CHUNKS } from '../codec/pool.js';
import { HASH_BATCH_PAGES, type PageCodec, PageFlag } from '../codec/page-codec.js';
import type { PageSource } from '../criu/page-server.js';
import { CHUNK_ID_BYTES, Compression, FILE_BLOCK_BYTES, PAGE_BYTES, ZERO_CHUNK_ID } from '../store/format.js';
import type { ChunkWriter, FileManifest, Repository } from '../store/repository.js';
import type { Range } from '../tracking/page-ranges.js';
import { faultPoint } from '../sys/fault.js';
import type { Codecs } from './codecs.js';
import { type PageRunCursor, PageRuns } from './page-runs.js';

const PAGES_FILE = /^pages-(\d+)\.img$/;
/** A pagemap's ids start with room for this many pages (1 MiB) when there is no baseline to size them by. */
const STREAM_INITIAL_PAGES = 64 * 1024;
/** Room beyond the baseline's page count, for a process that grew a little. */
const STREAM_SLACK_PAGES = 4096;
/** Pages a process's ids have room for at first, given its baseline's page count. */
const baselineRoom = (baselinePages: number): number => baselinePages + STREAM_SLACK_PAGES;
/**
 * Ids double when they grow: the room not yet used is never written, so it costs address
 * space, not memory, while each growth copies and faults in every id so far (fresh
 * memory costs a page fault per 4 KiB, 15-30 µs here).
 */
const STREAM_GROWTH = 2;
/**
 * Compression that saves less than this share of the bytes (recent pool batches, on
 * average) does not pay for itself while the job is frozen: its CPU is taken from CRIU
 * and from hashing. Such pages are stored as they are, but for one pool batch in
 * COMPRESSION_PROBE_EVERY, which keeps watching whether the content became compressible.
 */
export const MIN_COMPRESSION_SAVINGS = 0.1;
const COMPRESSION_PROBE_EVERY = 8;
/** Weight of the newest batch in the running average of the savings. */
const SAVINGS_AVERAGE_WEIGHT = 0.25;

/** Progress of a long pipeline (ingest, restore, gc, verify) in bytes, for a progress line. */
export type ProgressCallback = (doneBytes: number, totalBytes: number) => void;

/**
 * What dirty tracking proved, per process (by its PID inside the image): the address
 * ranges whose pages have not changed since the previous checkpoint, and that
 * checkpoint's pages. Without tracking it is empty.
 */
export interface CleanPages {
  forProcess(pid: number): { clean: readonly Range[]; baseline: ProcessPages } | undefined;
}

export const NO_CLEAN_PAGES: CleanPages = { forProcess: () => undefined };

/** The page ids of one process at a checkpoint, by address: the next checkpoint's baseline. */
export interface ProcessPages {
  /** Ascending page addresses. */
  addresses: PageRuns;
  /** The chunk id of each, CHUNK_ID_BYTES apiece. */
  ids: Uint8Array;
}

/** Per process (PID inside the image), its pages at a checkpoint. */
export type PageIndex = Map<number, ProcessPages>;

/**
 * Which pages of one process are proven clean, asked run after run at ascending
 * addresses: one merge walk over three sorted sequences (the pages, the clean ranges,
 * the baseline's pages) across the whole pagemap.
 */
export class CleanCursor {
  private range = 0;
  private readonly page: PageRunCursor;

  constructor(
    private readonly clean: readonly Range[],
    readonly baseline: ProcessPages,
  ) {
    this.page = baseline.addresses.cursor();
  }

  /**
   * For each of nrPages pages from vaddr on (ascending, after every page asked before:
   * PageStream.append, called first, checks that), its baseline page's index when it is
   * proven clean, else -1.
   */
  indexOf(vaddr: number, nrPages: number): Int32Array {
    const out = new Int32Array(nrPages).fill(-1);
    const { clean } = this;
    for (let i = 0; i < nrPages; i++) {
      const v = vaddr + i * PAGE_BYTES;
      while (this.range < clean.length && clean[this.range]!.end <= v) this.range++;
      if (this.range === clean.length) break;
      if (v < clean[this.range]!.start) continue;
      this.page.skipBelow(v);
      if (!this.page.done && this.page.vaddr === v) out[i] = this.page.index;
    }
    return out;
  }
}

export class PageStreamOrderError extends Error {
  override name = 'PageStreamOrderError';
  constructor(vaddr: number, last: number) {
    super(`CRIU sent page 0x${vaddr.toString(16)} after 0x${last.toString(16)}: a pagemap's pages must come at ascending addresses`);
  }
}

/** A pages-N.img that streamed in: its name and the id of each page, in file order. */
export interface StreamedPagesFile {
  name: string;
  ids: Uint8Array;
}

/** Pages of one pagemap as they arrive: ids and addresses, grown as needed. */
export class PageStream {
  ids: Uint8Array;
  private readonly addresses = new PageRuns();

  /** @param prepared room for the ids allocated before the freeze (Ingest.prepareIds), sized as below from the same pages. */
  constructor(
    readonly name: string,
    readonly pid: number | null,
    readonly cursor: CleanCursor | undefined,
    prepared?: Uint8Array,
  ) {
    // As many pages as the baseline had: an incremental checkpoint's ids need not grow.
    const expected = cursor ? baselineRoom(cursor.baseline.addresses.length) : STREAM_INITIAL_PAGES;
    this.ids = prepared ?? new Uint8Array(expected * CHUNK_ID_BYTES);
  }

  /** Appends a run of pages; returns the index of its first page (its ids are filled in later). */
  append(vaddr: number, nrPages: number): number {
    if (vaddr < this.addresses.end) throw new PageStreamOrderError(vaddr, this.addresses.end - PAGE_BYTES);
    const first = this.addresses.length;
    const need = first + nrPages;
    if (need * CHUNK_ID_BYTES > this.ids.length) {
      const capacity = Math.max(need, Math.ceil((this.ids.length / CHUNK_ID_BYTES) * STREAM_GROWTH));
      const grown = new Uint8Array(capacity * CHUNK_ID_BYTES);
      grown.set(this.ids.subarray(0, first * CHUNK_ID_BYTES));
      this.ids = grown;
    }
    this.addresses.append(vaddr, nrPages);
    return first;
  }

  /** The ids as a view, not a copy: a copy of a large job's ids would briefly double them. */
  finish(): ProcessPages {
    return { addresses: this.addresses, ids: this.ids.subarray(0, this.addresses.length * CHUNK_ID_BYTES) };
  }
}

/** A page that tracking called clean although its content changed (verification mode). */
export interface TrackingMiss {
  pid: number;
  vaddr: number;
}

export class TrackingMissError extends Error {
  override name = 'TrackingMissError';
  constructor(readonly misses: TrackingMiss[]) {
    const shown = misses.slice(0, 20).map((m) => `pid ${m.pid} 0x${m.vaddr.toString(16)}`);
    super(
      `dirty tracking called ${misses.length} page(s) clean that changed (verification mode): ${shown.join(', ')}` +
        (misses.length > shown.length ? `, … ${misses.length - shown.length} more` : '') +
        '; the checkpoint was not committed',
    );
  }
}

export interface IngestStats {
  imageBytes: number;
  pagesTotal: number;
  pagesHashed: number;
  pagesClean: number;
  pagesZero: number;
  /** New pages stored uncompressed because the pool was busy while the job was frozen. */
  pagesStoredRaw: number;
  /** New pages stored uncompressed because compression did not pay (MIN_COMPRESSION_SAVINGS). */
  pagesIncompressible: number;
}

/** A pool batch being compressed; done once its promise settled (checked without waiting). */
interface InFlight {
  promise: Promise<ChunkBatch>;
  done: boolean;
  batch: ChunkBatch | undefined;
  error: unknown;
}

export class Ingest {
  readonly stats: IngestStats = { imageBytes: 0, pagesTotal: 0, pagesHashed: 0, pagesClean: 0, pagesZero: 0, pagesStoredRaw: 0, pagesIncompressible: 0 };
  /** Every process's pages of this image, for the next checkpoint's clean-page reuse. */
  readonly pageIndex: PageIndex = new Map();
  /** Verification mode: clean pages hashed anyway; these changed. */
  readonly misses: TrackingMiss[] = [];
  /** A file block read at a time (blocks()). */
  private readonly blockScratch = Buffer.allocUnsafe(FILE_BLOCK_BYTES);
  private readonly batchIds = new Uint8Array(HASH_BATCH_PAGES * CHUNK_ID_BYTES);
  private readonly batchFlags = new Uint8Array(HASH_BATCH_PAGES);

  /** Pool batches of new pages being compressed, oldest first. */
  private readonly inFlight: InFlight[] = [];
  /** Id arrays allocated before the freeze, by PID inside the image (prepareIds). */
  private readonly preparedIds = new Map<number, Uint8Array>();
  private filling: ChunkBatch | undefined;
  /** Running average of the share of bytes compression saved, over the pool batches back so far (optimistic at first). */
  private compressionSavings = 1;
  /** New pages still to store uncompressed before the pool is tried again, while compression does not pay. */
  private uncompressedLeft = 0;
  private skippedBatches = 0;

  /** Bytes of pages ingested so far, of progressTotal (an estimate), reported to onProgress. */
  onProgress: ProgressCallback | undefined;
  progressTotal = 0;
  private progressDone = 0;

  /**
   * @param verifyClean hash pages called clean too, and record each one whose content
   *   changed (CRINC_VERIFY_TRACKING): slower, and proves the tracking.
   */
  constructor(
    private readonly codecs: Codecs,
    private readonly repo: Repository,
    private readonly writer: ChunkWriter,
    private readonly verifyClean = false,
  ) {}

  private advance(bytes: number): void {
    this.progressDone += bytes;
    this.onProgress?.(this.progressDone, this.progressTotal);
  }

  /**
   * The small files of a CRIU image directory and the pages that streamed in (one
   * manifest per pages-N.img, as if CRIU had written it there), as manifests.
   */
  imageDirectory(dir: string, streamed: readonly StreamedPagesFile[]): FileManifest[] {
    const names = readdirSync(dir).sort();
    const manifests: FileManifest[] = [];
    for (const name of names) {
      const path = join(dir, name);
      const st = statSync(path);
      if (!st.isFile()) throw new Error(`unexpected non-file ${path} in a CRIU image directory`);
      if (PAGES_FILE.test(name)) throw new Error(`${path}: CRIU wrote pages into the image directory although they stream to crinc`);
      this.stats.imageBytes += st.size;
      manifests.push({
        role: 'image',
        path: name,
        size: st.size,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        blockBytes: FILE_BLOCK_BYTES,
        ids: this.blocks(path, FILE_BLOCK_BYTES),
        identity: null,
      });
    }
    for (const pages of streamed) {
      const size = (pages.ids.length / CHUNK_ID_BYTES) * PAGE_BYTES;
      this.stats.imageBytes += size;
      // As CRIU creates image files: 0600, owned by the user it runs as.
      manifests.push({ role: 'image', path: pages.name, size, mode: 0o600, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, blockBytes: PAGE_BYTES, ids: pages.ids, identity: null });
    }
    return manifests.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** A regular file cut into fixed blocks (the job's files, CRIU's small images). */
  blocks(path: string, blockBytes: number): Uint8Array {
    if (blockBytes > this.blockScratch.length) throw new Error(`block size ${blockBytes} exceeds the ingest's ${this.blockScratch.length}`);
    return blockIds(path, blockBytes, this.codecs.pages, this.blockScratch, (id, block) => this.writer.put(id, block));
  }

  /**
   * Allocates, and writes to, the ids' room of each process of the pages clean pages will
   * be reused from (the baseline or a pre-copy, by PID inside the image), before the
   * freeze: fresh memory costs a page fault per 4 KiB (15-30 µs here), ~15 ms per GiB of
   * job that would otherwise fall inside it.
   */
  prepareIds(reference: PageIndex): void {
    for (const [pid, pages] of reference) this.preparedIds.set(pid, new Uint8Array(baselineRoom(pages.addresses.length) * CHUNK_ID_BYTES).fill(0));
  }

  /**
   * Starts the pages of one pagemap as they stream in. pid: the process (its PID inside
   * the image) whose pagemap it is, for clean-page reuse and the next baseline; null for
   * shared memory, whose pages are always hashed.
   */
  beginPages(name: string, pid: number | null, clean: CleanPages): PageStream {
    const proof = pid !== null ? clean.forProcess(pid) : undefined;
    const prepared = pid !== null ? this.preparedIds.get(pid) : undefined;
    if (pid !== null) this.preparedIds.delete(pid);
    return new PageStream(name, pid, proof ? new CleanCursor(proof.clean, proof.baseline) : undefined, prepared);
  }

  /**
   * The next nrPages present pages of a pagemap, at ascending addresses from vaddr, read
   * from source: clean pages are skipped unread (unless verifying), the others hashed
   * here and the new ones queued for compression. Memory: HASH_BATCH_PAGES pages, whatever nrPages.
   */
  async addPages(stream: PageStream, vaddr: number, nrPages: number, source: PageSource): Promise<void> {
    const first = stream.append(vaddr, nrPages);
    const cursor = stream.cursor;
    const reuse = cursor ? cursor.indexOf(vaddr, nrPages) : undefined;
    if (reuse) this.dropQuarantined(reuse, cursor!.baseline);
    const ids = stream.ids;
    let page = 0;
    while (page < nrPages) {
      // A clean page reuses its previous id and is not hashed.
      if (reuse && reuse[page]! >= 0 && !this.verifyClean) {
        // A run of clean pages whose baseline pages are consecutive too: one copy.
        const b = reuse[page]!;
        let run = 1;
        while (page + run < nrPages && reuse[page + run] === b + run) run++;
        ids.set(cursor!.baseline.ids.subarray(b * CHUNK_ID_BYTES, (b + run) * CHUNK_ID_BYTES), (first + page) * CHUNK_ID_BYTES);
        source.skip(run * PAGE_BYTES);
        this.stats.pagesClean += run;
        page += run;
        this.advance(run * PAGE_BYTES);
        continue;
      }
      // A run of pages to hash: up to a batch, stopping before the next clean page.
      let end = page + 1;
      while (end < nrPages && end - page < HASH_BATCH_PAGES && !(reuse && reuse[end]! >= 0 && !this.verifyClean)) end++;
      // Read into the codec's memory, hashed and stored from there before anything else
      // uses the codec (nothing awaits in between).
      const data = this.codecs.pages.inputPages(end - page);
      source.read(data);
      this.hashPages(data, ids, first + page);
      if (this.verifyClean && reuse) this.checkClean(stream.pid!, vaddr, page, end, ids, first, reuse, cursor!.baseline);
      this.advance((end - page) * PAGE_BYTES);
      page = end;
      await this.yieldToPool();
    }
  }

  /** The pagemap's pages are all in: its pages file, and the process's pages for the next baseline. */
  endPages(stream: PageStream): StreamedPagesFile {
    const pages = stream.finish();
    if (stream.pid !== null) this.pageIndex.set(stream.pid, pages);
    this.stats.pagesTotal += pages.addresses.length;
    return { name: stream.name, ids: pages.ids };
  }

  /** Every new page queued for compression is compressed and handed to the writer. */
  async finishPages(): Promise<void> {
    await this.drainNewPages();
  }

  /** A clean page whose previous chunk was found damaged (quarantined) is read and stored again. */
  private dropQuarantined(reuse: Int32Array, baseline: ProcessPages): void {
    if (!this.repo.hasQuarantine()) return;
    for (let i = 0; i < reuse.length; i++) {
      const b = reuse[i]!;
      if (b >= 0 && this.repo.isQuarantined(baseline.ids, b * CHUNK_ID_BYTES)) reuse[i] = -1;
    }
  }

  /** Verification mode: every page called clean must hash to its previous id. */
  private checkClean(pid: number, vaddr: number, from: number, end: number, ids: Uint8Array, first: number, reuse: Int32Array, baseline: ProcessPages): void {
    for (let p = from; p < end; p++) {
      const b = reuse[p]!;
      if (b < 0) continue;
      // Counted as without verification: reused, not needing a hash.
      this.stats.pagesClean++;
      this.stats.pagesHashed--;
      const prev = baseline.ids.subarray(b * CHUNK_ID_BYTES, (b + 1) * CHUNK_ID_BYTES);
      if (Buffer.compare(prev, ids.subarray((first + p) * CHUNK_ID_BYTES, (first + p + 1) * CHUNK_ID_BYTES)) !== 0) {
        this.misses.push({ pid, vaddr: vaddr + p * PAGE_BYTES });
      }
    }
  }

  /**
   * Hashes pages (at most HASH_BATCH_PAGES, filled into the codec's inputPages()) here
   * (fast), their ids going to ids from page first on, and stores the pages the store
   * does not have (or sends them to the pool for compression).
   */
  private hashPages(data: Uint8Array, ids: Uint8Array, first: number): void {
    const n = data.length / PAGE_BYTES;
    const batchIds = this.batchIds;
    this.codecs.pages.hashInput(n, batchIds, this.batchFlags);
    ids.set(batchIds.subarray(0, n * CHUNK_ID_BYTES), first * CHUNK_ID_BYTES);
    const candidates: number[] = [];
    for (let i = 0; i < n; i++) {
      const flag = this.batchFlags[i];
      if (flag === PageFlag.Zero) {
        ids.set(ZERO_CHUNK_ID, (first + i) * CHUNK_ID_BYTES);
        this.stats.pagesZero++;
        continue;
      }
      // A duplicate of an earlier page of this batch is stored with that one.
      if (flag !== PageFlag.Duplicate && !this.writer.hasPending(batchIds, i * CHUNK_ID_BYTES)) candidates.push(i);
    }
    for (const i of this.repo.unknownChunks(batchIds, candidates)) this.storeNewPage(data, batchIds, i);
    this.stats.pagesHashed += n;
  }

  /**
   * Queues new page i of data (id i of ids) for compression on the pool; completed
   * batches go to the writer. The job is frozen while pages stream in, so nothing waits
   * for the pool: when none of its batches is free, or while compression does not pay
   * (MIN_COMPRESSION_SAVINGS), the page is stored as it is (uncompressed) instead. CRIU's
   * pages then flow at the speed of hashing, not of compression.
   */
  private storeNewPage(data: Uint8Array, ids: Uint8Array, i: number): void {
    this.storeSettled();
    if (!this.filling) {
      if (this.uncompressedLeft === 0 && this.compressionSavings < MIN_COMPRESSION_SAVINGS && this.skippedBatches++ % COMPRESSION_PROBE_EVERY !== 0) {
        this.uncompressedLeft = POOL_BATCH_CHUNKS;
      }
      // Keep one batch free for filling: the others carry our results back.
      if (this.uncompressedLeft === 0 && this.inFlight.length < this.codecs.pool.batchCount - 1) this.filling = this.codecs.pool.tryAcquire();
    }
    if (!this.filling) {
      if (this.uncompressedLeft > 0) {
        this.uncompressedLeft--;
        this.stats.pagesIncompressible++;
      } else {
        this.stats.pagesStoredRaw++;
      }
      this.writer.putStored(ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), data.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES), PAGE_BYTES, Compression.None);
      return;
    }
    this.filling.addPages(1).set(data.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES));
    if (this.filling.freeChunks === 0 || this.filling.freeBytes < PAGE_BYTES) {
      this.submit(this.filling);
      this.filling = undefined;
    }
  }

  private submit(batch: ChunkBatch): void {
    const entry: InFlight = { done: false, batch: undefined, error: undefined, promise: this.codecs.pool.hashAndCompress(batch) };
    entry.promise.then(
      (b) => Object.assign(entry, { done: true, batch: b }),
      (e: unknown) => Object.assign(entry, { done: true, error: e }),
    );
    this.inFlight.push(entry);
  }

  /** Stores the compressed batches that are back, oldest first, without waiting. */
  private storeSettled(): void {
    while (this.inFlight[0]?.done) {
      const entry = this.inFlight.shift()!;
      if (entry.error !== undefined) throw entry.error;
      this.storeCompressed(entry.batch!);
    }
  }

  /** Lets the pool's finished batches come back (their messages need a turn of the event loop). */
  private async yieldToPool(): Promise<void> {
    if (this.inFlight.length > 0) await new Promise((resolve) => setImmediate(resolve));
  }

  private async drainNewPages(): Promise<void> {
    if (this.filling && this.filling.count > 0) {
      this.submit(this.filling);
      this.filling = undefined;
    }
    while (this.inFlight.length > 0) {
      const entry = this.inFlight.shift()!;
      this.storeCompressed(await entry.promise);
    }
  }

  private storeCompressed(batch: ChunkBatch): void {
    let rawBytes = 0;
    let storedBytes = 0;
    for (let i = 0; i < batch.count; i++) {
      // Only duplicates within the batch are flagged; they are stored with their first copy.
      if (batch.flag(i) !== PageFlag.Normal) continue;
      // putStored copies the id and the bytes: views of the batch suffice (no object per page).
      const stored = batch.stored(i);
      this.writer.putStored(batch.id(i), stored, PAGE_BYTES, batch.compression(i) as number as Compression);
      rawBytes += PAGE_BYTES;
      storedBytes += stored.length;
    }
    if (rawBytes > 0) {
      const savings = 1 - storedBytes / rawBytes;
      this.compressionSavings += SAVINGS_AVERAGE_WEIGHT * (savings - this.compressionSavings);
    }
    this.codecs.pool.release(batch);
    faultPoint('checkpoint-mid-pack');
  }

  /** Returns pool batches on failure, so the pool stays usable. */
  async abandon(): Promise<void> {
    const pending = this.inFlight.splice(0);
    for (const p of pending) {
      try {
        this.codecs.pool.release(await p.promise);
      } catch {
        // a failed batch went back to the pool with its error
      }
    }
    if (this.filling) this.codecs.pool.release(this.filling);
    this.filling = undefined;
  }
}

/**
 * The ids of a file's fixed-size blocks (ZERO_CHUNK_ID for all-zero ones), read through
 * scratch; onBlock sees each nonzero block with its id (to store it).
 */
export function blockIds(
  path: string,
  blockBytes: number,
  codec: PageCodec,
  scratch: Uint8Array,
  onBlock?: (id: Uint8Array, block: Uint8Array) => void,
): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const count = Math.ceil(size / blockBytes);
    const ids = new Uint8Array(count * CHUNK_ID_BYTES);
    for (let i = 0; i < count; i++) {
      const block = scratch.subarray(0, Math.min(blockBytes, size - i * blockBytes));
      readFully(fd, block, i * blockBytes, path);
      if (isAllZero(block)) {
        ids.set(ZERO_CHUNK_ID, i * CHUNK_ID_BYTES);
        continue;
      }
      const id = codec.chunkId(block);
      onBlock?.(id, block);
      ids.set(id, i * CHUNK_ID_BYTES);
    }
    return ids;
  } finally {
    closeSync(fd);
  }
}

function readFully(fd: number, into: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw new Error(`${path}: unexpected end of file at ${position + done}`);
    done += n;
  }
}

const ZERO_BLOCK = Buffer.alloc(FILE_BLOCK_BYTES);

/** memcmp against zeros: far faster in Node than a JS loop. */
function isAllZero(block: Uint8Array): boolean {
  for (let o = 0; o < block.length; o += ZERO_BLOCK.length) {
    const part = block.subarray(o, Math.min(o + ZERO_BLOCK.length, block.length));
    if (Buffer.compare(part, ZERO_BLOCK.subarray(0, part.length)) !== 0) return false;
  }
  return true;
}
