// Ingest: turns a CRIU image directory and the job's captured files into chunk ids and
// new chunks. pages-*.img is read in large sequential runs, one 4 KiB chunk per page;
// a page proven clean since the previous checkpoint reuses that checkpoint's chunk id
// and is not read at all. Memory stays bounded by INGEST_BATCH_BYTES whatever the size.
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ChunkBatch } from '../codec/chunk-batch.js';
import { type PageCodec, PageFlag } from '../codec/page-codec.js';
import { PE_PRESENT, readPagemap, type Pagemap } from '../criu/images.js';
import { CHUNK_ID_BYTES, type Compression, FILE_BLOCK_BYTES, PAGE_BYTES, ZERO_CHUNK_ID } from '../store/format.js';
import type { ChunkWriter, FileManifest, Repository } from '../store/repository.js';
import type { Range } from '../tracking/page-ranges.js';
import { faultPoint } from '../sys/fault.js';
import type { Codecs } from './codecs.js';

/** Pages read, hashed and stored per step: bounds the ingest's memory. */
export const INGEST_BATCH_BYTES = 4 * 1024 * 1024;
const PAGES_PER_BATCH = INGEST_BATCH_BYTES / PAGE_BYTES;
const PAGEMAP_FILE = /^pagemap-(\d+)\.img$/;
const PAGES_FILE = /^pages-(\d+)\.img$/;

/**
 * What dirty tracking proved, per process (by its PID inside the image): the address
 * ranges whose pages have not changed since the previous checkpoint, and that
 * checkpoint's pages. Without tracking it is empty.
 */
/** Progress of a long pipeline (ingest, restore, gc, verify) in bytes, for a progress line. */
export type ProgressCallback = (doneBytes: number, totalBytes: number) => void;

export interface CleanPages {
  forProcess(pid: number): { clean: readonly Range[]; baseline: ProcessPages } | undefined;
}

export const NO_CLEAN_PAGES: CleanPages = { forProcess: () => undefined };

/** The page ids of one process at a checkpoint, by address: the next checkpoint's baseline. */
export interface ProcessPages {
  /** Ascending page addresses (user addresses fit a double exactly). */
  vaddrs: Float64Array;
  /** The chunk id of each, CHUNK_ID_BYTES apiece. */
  ids: Uint8Array;
}

/** Per process (PID inside the image), its pages at a checkpoint. */
export type PageIndex = Map<number, ProcessPages>;

/**
 * For each page (ascending vaddrs), the index of its baseline page when it is proven
 * clean, else -1: one merge walk over three sorted sequences.
 */
export function cleanBaselineIndex(vaddrs: Float64Array, clean: readonly Range[], baseline: ProcessPages): Int32Array {
  const out = new Int32Array(vaddrs.length).fill(-1);
  let r = 0;
  let b = 0;
  for (let i = 0; i < vaddrs.length; i++) {
    const v = vaddrs[i]!;
    while (r < clean.length && clean[r]!.end <= v) r++;
    if (r === clean.length) break;
    if (v < clean[r]!.start) continue;
    while (b < baseline.vaddrs.length && baseline.vaddrs[b]! < v) b++;
    if (b < baseline.vaddrs.length && baseline.vaddrs[b] === v) out[i] = b;
  }
  return out;
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
}

export class Ingest {
  readonly stats: IngestStats = { imageBytes: 0, pagesTotal: 0, pagesHashed: 0, pagesClean: 0, pagesZero: 0 };
  /** Every process's pages of this image, for the next checkpoint's clean-page reuse. */
  readonly pageIndex: PageIndex = new Map();
  /** Verification mode: clean pages hashed anyway; these changed. */
  readonly misses: TrackingMiss[] = [];
  private readonly batch = Buffer.allocUnsafe(INGEST_BATCH_BYTES);
  private readonly batchIds = new Uint8Array(PAGES_PER_BATCH * CHUNK_ID_BYTES);
  private readonly batchFlags = new Uint8Array(PAGES_PER_BATCH);

  /**
   * @param verifyClean hash pages called clean too, and record each one whose content
   *   changed (CRINC_VERIFY_TRACKING): slower, and proves the tracking.
   */
  /** Pool batches of new pages being compressed, oldest first. */
  private readonly inFlight: Promise<ChunkBatch>[] = [];
  private filling: ChunkBatch | undefined;

  /** Bytes of the image directory ingested so far, of progressTotal, reported to onProgress. */
  onProgress: ProgressCallback | undefined;
  private progressDone = 0;
  private progressTotal = 0;

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

  /** Every file of a CRIU image directory, as manifests. */
  async imageDirectory(dir: string, clean: CleanPages): Promise<FileManifest[]> {
    const names = readdirSync(dir).sort();
    const pagesOwner = new Map<string, { pid: number | null; pagemap: Pagemap }>();
    for (const name of names) {
      if (!name.startsWith('pagemap')) continue;
      const pagemap = readPagemap(join(dir, name));
      const pid = PAGEMAP_FILE.exec(name);
      pagesOwner.set(`pages-${pagemap.pagesId}.img`, { pid: pid ? Number(pid[1]) : null, pagemap });
    }
    const manifests: FileManifest[] = [];
    for (const name of names) this.progressTotal += statSync(join(dir, name)).size;
    for (const name of names) {
      const path = join(dir, name);
      const st = statSync(path);
      if (!st.isFile()) throw new Error(`unexpected non-file ${path} in a CRIU image directory`);
      this.stats.imageBytes += st.size;
      const owner = pagesOwner.get(name);
      let ids: Uint8Array;
      if (owner) {
        ids = await this.pagesFile(path, owner.pagemap, owner.pid, clean);
      } else if (PAGES_FILE.test(name)) {
        ids = await this.pagesFile(path, undefined, null, clean);
      } else {
        ids = this.blocks(path, FILE_BLOCK_BYTES);
        this.advance(st.size);
      }
      manifests.push({
        role: 'image',
        path: name,
        size: st.size,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        blockBytes: owner || PAGES_FILE.test(name) ? PAGE_BYTES : FILE_BLOCK_BYTES,
        ids,
        identity: null,
      });
    }
    return manifests;
  }

  /** A regular file cut into fixed blocks (the job's files, CRIU's small images). */
  blocks(path: string, blockBytes: number): Uint8Array {
    if (blockBytes > INGEST_BATCH_BYTES) throw new Error(`block size ${blockBytes} exceeds the ingest batch`);
    return blockIds(path, blockBytes, this.codecs.pages, this.batch, (id, block) => this.writer.put(id, block));
  }

  private async pagesFile(path: string, pagemap: Pagemap | undefined, pid: number | null, clean: CleanPages): Promise<Uint8Array> {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size % PAGE_BYTES !== 0) throw new Error(`${path}: size ${size} is not a whole number of pages`);
      const pageCount = size / PAGE_BYTES;
      const ids = new Uint8Array(pageCount * CHUNK_ID_BYTES);
      // The address of each page in file order, when a pagemap says so.
      const vaddrs = pagemap ? presentVaddrs(pagemap, pageCount, path) : undefined;
      const proof = vaddrs !== undefined && pid !== null ? clean.forProcess(pid) : undefined;
      const reuse = proof ? cleanBaselineIndex(vaddrs!, proof.clean, proof.baseline) : undefined;
      if (reuse) this.dropQuarantined(reuse, proof!.baseline);
      let page = 0;
      while (page < pageCount) {
        // A clean page reuses its previous id and is not read.
        if (reuse && reuse[page]! >= 0 && !this.verifyClean) {
          // A run of clean pages whose baseline pages are consecutive too: one copy.
          const b = reuse[page]!;
          let run = 1;
          while (page + run < pageCount && reuse[page + run] === b + run) run++;
          ids.set(proof!.baseline.ids.subarray(b * CHUNK_ID_BYTES, (b + run) * CHUNK_ID_BYTES), page * CHUNK_ID_BYTES);
          this.stats.pagesClean += run;
          page += run;
          this.advance(run * PAGE_BYTES);
          continue;
        }
        // A run of pages to read: up to a batch, stopping before the next clean page.
        let end = page + 1;
        while (end < pageCount && end - page < PAGES_PER_BATCH && !(reuse && reuse[end]! >= 0 && !this.verifyClean)) end++;
        await this.hashRun(fd, path, page, end, ids);
        if (this.verifyClean && reuse) this.checkClean(pid!, vaddrs!, page, end, ids, reuse, proof!.baseline);
        this.advance((end - page) * PAGE_BYTES);
        page = end;
      }
      await this.drainNewPages();
      if (vaddrs && pid !== null) this.pageIndex.set(pid, { vaddrs, ids });
      this.stats.pagesTotal += pageCount;
      return ids;
    } finally {
      closeSync(fd);
    }
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
  private checkClean(pid: number, vaddrs: Float64Array, first: number, end: number, ids: Uint8Array, reuse: Int32Array, baseline: ProcessPages): void {
    for (let p = first; p < end; p++) {
      const b = reuse[p]!;
      if (b < 0) continue;
      // Counted as without verification: reused, not needing a hash.
      this.stats.pagesClean++;
      this.stats.pagesHashed--;
      const prev = baseline.ids.subarray(b * CHUNK_ID_BYTES, (b + 1) * CHUNK_ID_BYTES);
      if (Buffer.compare(prev, ids.subarray(p * CHUNK_ID_BYTES, (p + 1) * CHUNK_ID_BYTES)) !== 0) {
        this.misses.push({ pid, vaddr: vaddrs[p]! });
      }
    }
  }

  /**
   * Reads pages [first, end) (at most a batch), hashes them here (fast), and sends only
   * the pages the store does not have to the pool for compression.
   */
  private async hashRun(fd: number, path: string, first: number, end: number, ids: Uint8Array): Promise<void> {
    const n = end - first;
    const data = this.batch.subarray(0, n * PAGE_BYTES);
    readFully(fd, data, first * PAGE_BYTES, path);
    this.codecs.pages.hashPages(data, this.batchIds, this.batchFlags);
    const candidates: number[] = [];
    for (let i = 0; i < n; i++) {
      const at = (first + i) * CHUNK_ID_BYTES;
      if (this.batchFlags[i] === PageFlag.Zero) {
        ids.set(ZERO_CHUNK_ID, at);
        this.stats.pagesZero++;
        continue;
      }
      ids.set(this.batchIds.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), at);
      // A duplicate of an earlier page of this batch is stored with that one.
      if (this.batchFlags[i] !== PageFlag.Duplicate && !this.writer.hasPending(this.batchIds, i * CHUNK_ID_BYTES)) candidates.push(i);
    }
    for (const i of this.repo.unknownChunks(this.batchIds, candidates)) {
      await this.compressNewPage(data.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES));
    }
    this.stats.pagesHashed += n;
  }

  /** Queues a new page for compression on the pool; completed batches go to the writer in order. */
  private async compressNewPage(page: Uint8Array): Promise<void> {
    const pool = this.codecs.pool;
    this.filling ??= await pool.acquire();
    this.filling.addPages(1).set(page);
    if (this.filling.freeChunks > 0 && this.filling.freeBytes >= PAGE_BYTES) return;
    this.inFlight.push(pool.hashAndCompress(this.filling));
    this.filling = undefined;
    // Keep one batch free for filling, or acquire() would wait on our own results.
    while (this.inFlight.length >= pool.batchCount - 1) this.storeCompressed(await this.inFlight.shift()!);
  }

  private async drainNewPages(): Promise<void> {
    if (this.filling && this.filling.count > 0) {
      this.inFlight.push(this.codecs.pool.hashAndCompress(this.filling));
      this.filling = undefined;
    }
    while (this.inFlight.length > 0) this.storeCompressed(await this.inFlight.shift()!);
  }

  private storeCompressed(batch: ChunkBatch): void {
    for (let i = 0; i < batch.count; i++) {
      // Only duplicates within the batch are flagged; they are stored with their first copy.
      if (batch.flag(i) !== PageFlag.Normal) continue;
      this.writer.putStored(batch.id(i).slice(), batch.stored(i), PAGE_BYTES, batch.compression(i) as number as Compression);
    }
    this.codecs.pool.release(batch);
    faultPoint('checkpoint-mid-pack');
  }

  /** Returns pool batches on failure, so the pool stays usable. */
  async abandon(): Promise<void> {
    const pending = this.inFlight.splice(0);
    for (const p of pending) {
      try {
        this.codecs.pool.release(await p);
      } catch {
        // a failed batch went back to the pool with its error
      }
    }
    if (this.filling) this.codecs.pool.release(this.filling);
    this.filling = undefined;
  }
}

function presentVaddrs(pagemap: Pagemap, pageCount: number, path: string): Float64Array {
  const out = new Float64Array(pageCount);
  let i = 0;
  for (const e of pagemap.entries) {
    if (!(e.flags & PE_PRESENT)) continue;
    const start = Number(e.vaddr);
    for (let p = 0; p < e.nrPages; p++) {
      if (i >= pageCount) throw new Error(`${path}: the pagemap lists more present pages than the file holds`);
      out[i++] = start + p * PAGE_BYTES;
    }
  }
  if (i !== pageCount) throw new Error(`${path}: the pagemap lists ${i} present pages, the file holds ${pageCount}`);
  for (let k = 1; k < out.length; k++) {
    if (out[k]! <= out[k - 1]!) throw new Error(`${path}: the pagemap's addresses are not ascending`);
  }
  return out;
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
