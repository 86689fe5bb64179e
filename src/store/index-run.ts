// Runs of the chunk index (docs/FORMAT.md, "The chunk index"): immutable files of chunk
// ids sorted by id, each with where the chunk is (a pack of the run's pack list and the
// chunk's ordinal in that pack's chunk table), a fence per block and a Bloom filter. Ids
// are uniformly random (keyed XXH3), so their bytes serve as the filter's hashes and a
// block of a sorted run covers an even share of the id space.
import { strict as assert } from 'node:assert';
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { fsyncDir } from './durable.js';
import { StoreError } from './errors.js';
import { CHUNK_ID_BYTES } from './format.js';

const RUN_MAGIC = Buffer.from('CRINCRN1', 'ascii');
const RUN_FORMAT = 1;
export const RUN_HEADER_BYTES = 64; // magic(8) + format u32 + pack count u32 + entries u64 + bloom bytes u32 + bloom hashes u32 + block entries u32 + reserved(28)
export const RUN_PACK_NAME_BYTES = 16;
/** id(16) + pack (index into the run's pack list) u24 + ordinal in the pack's chunk table u24. */
export const RUN_ENTRY_BYTES = CHUNK_ID_BYTES + 3 + 3;
/** Entries per block: one block (4092 bytes) is one read of a lookup. */
export const RUN_BLOCK_ENTRIES = 186;
/** Bloom filter bits per entry: ~3.5% false positives with 5 hashes; with the entry, under 23 bytes per chunk on disk. */
const BLOOM_BITS_PER_ENTRY = 7;
const BLOOM_HASHES = 5;
/** A chunk's ordinal in its pack fits 24 bits: a pack holds at most PACK_TARGET_BYTES / 29 chunks. */
export const MAX_ORDINAL = 0xffffff;
/** A run lists at most this many packs (24 bits: 2^24 packs of 64 MiB). */
export const MAX_RUN_PACKS = 0x1000000;

/** The pack (index into the run's pack list) of the entry at b[at..]. */
export function entryPack(b: Uint8Array, at: number): number {
  return b[at + 16]! | (b[at + 17]! << 8) | (b[at + 18]! << 16);
}

/** The chunk's ordinal in its pack's chunk table, of the entry at b[at..]. */
export function entryOrdinal(b: Uint8Array, at: number): number {
  return b[at + 19]! | (b[at + 20]! << 8) | (b[at + 21]! << 16);
}
/** Radix digits of sortedOrder: 2048 buckets. */
const SORT_DIGIT_BITS = 11;
const SORT_BUCKETS = 1 << SORT_DIGIT_BITS;
/** Entries are written and read in spans of this size. */
const RUN_IO_BYTES = 1024 * 1024;
/**
 * Blocks that find() read stay in memory, over all open runs, up to this many bytes
 * (1.5 M entries): lookups of ids stored earlier then cost no read once their blocks
 * are in. Runs never change, so a cached block is never stale.
 */
const RUN_BLOCK_CACHE_BYTES = 32 * 1024 * 1024;
/** The smallest page size: touchPages reads one byte per page. */
const PAGE_TOUCH_STRIDE_BYTES = 4096;
let runBlockCacheBytes = 0;
export const RUN_SUFFIX = '.run';
const PARTIAL = '.partial';

export class IndexRunDamagedError extends StoreError {
  constructor(path: string, why: string) {
    super(`the chunk index run ${path} is damaged (${why}); the index is a cache of the packs: rebuild it with crinc repair`);
    this.name = 'IndexRunDamagedError';
  }
}

/** The id's first four bytes as a number, in the ids' byte order. */
export function idPrefix(ids: Uint8Array, o: number): number {
  return ((ids[o]! << 24) | (ids[o + 1]! << 16) | (ids[o + 2]! << 8) | ids[o + 3]!) >>> 0;
}

/** Compares the ids at a[ao..] and b[bo..] in byte order (random ids: the first byte decides 255 times in 256). */
export function compareIds(a: Uint8Array, ao: number, b: Uint8Array, bo: number): number {
  for (let i = 0; i < CHUNK_ID_BYTES; i++) {
    const d = a[ao + i]! - b[bo + i]!;
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * The order that sorts `count` ids packed at `stride`-byte steps of `bytes`: a radix sort
 * on their first four bytes (three 11-bit passes: the counts stay in cache), then the
 * rare ties sorted in full.
 */
export function sortedOrder(bytes: Uint8Array, count: number, stride = CHUNK_ID_BYTES, scratch = new WordScratch()): Uint32Array {
  return sortIds(bytes, count, stride, scratch).order;
}

/** A WordScratch keeps at most this many words (16 MiB): a rare huge lookup does not pin its memory. */
const WORD_SCRATCH_KEPT_WORDS = 4 * 1024 * 1024;

/**
 * Room for word arrays kept between calls of a lookup: in this VM fresh memory costs a
 * page fault per 4 KiB (15-30 µs), ~30 ms for the arrays of a 1 GiB job's 262,144 ids,
 * more than the sort and walk that use them. Kept at the largest request up to
 * WORD_SCRATCH_KEPT_WORDS; the arrays are valid until the next take().
 */
export class WordScratch {
  private words = new Uint32Array(0);

  /** `parts` arrays of `count` words each, apart. */
  take(count: number, parts: number): Uint32Array[] {
    let words = this.words;
    if (words.length < parts * count) {
      words = new Uint32Array(parts * count);
      if (words.length <= WORD_SCRATCH_KEPT_WORDS) this.words = words;
    }
    return Array.from({ length: parts }, (_, i) => words.subarray(i * count, (i + 1) * count));
  }
}

/** sortedOrder, with each sorted id's first four bytes (idPrefix): a walk compares them before whole ids. */
export function sortIds(bytes: Uint8Array, count: number, stride = CHUNK_ID_BYTES, scratch = new WordScratch()): { order: Uint32Array; prefixes: Uint32Array } {
  // Keys travel with their indexes: each pass reads both in order (no random access).
  let [keys, order, nextKeys, nextOrder] = scratch.take(count, 4) as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  for (let i = 0; i < count; i++) {
    keys[i] = idPrefix(bytes, i * stride);
    order[i] = i;
  }
  const counts = new Uint32Array(SORT_BUCKETS + 1);
  for (let shift = 0; shift < 32; shift += SORT_DIGIT_BITS) {
    counts.fill(0);
    for (let i = 0; i < count; i++) counts[((keys[i]! >>> shift) & (SORT_BUCKETS - 1)) + 1]!++;
    for (let d = 1; d <= SORT_BUCKETS; d++) counts[d]! += counts[d - 1]!;
    for (let i = 0; i < count; i++) {
      const at = counts[(keys[i]! >>> shift) & (SORT_BUCKETS - 1)]!++;
      nextKeys[at] = keys[i]!;
      nextOrder[at] = order[i]!;
    }
    const k = keys;
    keys = nextKeys;
    nextKeys = k;
    const r = order;
    order = nextOrder;
    nextOrder = r;
  }
  for (let i = 1; i < count; i++) {
    if (keys[i] !== keys[i - 1]) continue;
    // Insertion sort of a run of equal prefixes (one in 2^32 pairs): byte order in full.
    for (let j = i; j > 0 && keys[j] === keys[j - 1] && compareIds(bytes, order[j]! * stride, bytes, order[j - 1]! * stride) < 0; j--) {
      const t = order[j]!;
      order[j] = order[j - 1]!;
      order[j - 1] = t;
    }
  }
  return { order, prefixes: keys };
}

function bloomBytesFor(entries: number): number {
  return Math.max(8, Math.ceil((entries * BLOOM_BITS_PER_ENTRY) / 8));
}

/** Whether the filter has all of the id's bits; with `set`, sets them first (adds the id). */
function bloomProbe(bloom: Uint8Array, id: Uint8Array, o: number, set: boolean): boolean {
  const bits = bloom.length * 8;
  const h1 = (id[o + 4]! | (id[o + 5]! << 8) | (id[o + 6]! << 16) | (id[o + 7]! << 24)) >>> 0;
  const h2 = ((id[o + 8]! | (id[o + 9]! << 8) | (id[o + 10]! << 16) | (id[o + 11]! << 24)) | 1) >>> 0;
  for (let i = 0; i < BLOOM_HASHES; i++) {
    const bit = (h1 + i * h2) % bits;
    if (set) bloom[bit >>> 3]! |= 1 << (bit & 7);
    else if ((bloom[bit >>> 3]! & (1 << (bit & 7))) === 0) return false;
  }
  return true;
}

export function packNameBytes(name: string): Buffer {
  const b = Buffer.from(name, 'hex');
  if (b.length !== RUN_PACK_NAME_BYTES) throw new StoreError(`not a pack name: ${name}`);
  return b;
}

/**
 * Writes a run, entries in ascending id order (asserted), under a .partial name; finish()
 * fsyncs it and renames it into place. `maxEntries` sizes the Bloom filter: the entries
 * added may be fewer (duplicates dropped by a merge).
 */
export class RunWriter {
  private readonly fd: number;
  private buffered = 0;
  private entries = 0;
  private readonly fences: number[] = [];
  private readonly bloom: Uint8Array;
  private readonly last = new Uint8Array(CHUNK_ID_BYTES);
  private position: number;

  /** @param buffer where entries gather before they are written (newRunSpan(); a caller may keep one for its runs, one at a time). */
  constructor(
    private readonly path: string,
    private readonly packNames: string[],
    maxEntries: number,
    private readonly buffer = newRunSpan(),
  ) {
    this.fd = openSync(path + PARTIAL, 'w', 0o600);
    if (packNames.length > MAX_RUN_PACKS) throw new Error(`a chunk index run cannot list ${packNames.length} packs`);
    const names = Buffer.alloc(packNames.length * RUN_PACK_NAME_BYTES);
    packNames.forEach((n, i) => {
      packNameBytes(n).copy(names, i * RUN_PACK_NAME_BYTES);
    });
    writeAll(this.fd, names, RUN_HEADER_BYTES);
    this.position = RUN_HEADER_BYTES + names.length;
    this.bloom = new Uint8Array(bloomBytesFor(maxEntries));
  }

  add(id: Uint8Array, o: number, pack: number, ordinal: number): void {
    if (this.entries > 0 && compareIds(this.last, 0, id, o) >= 0) throw new Error('chunk index run entries out of order');
    if (pack >= this.packNames.length || ordinal > MAX_ORDINAL) throw new Error(`chunk index entry out of range (pack ${pack}, ordinal ${ordinal})`);
    if (this.entries % RUN_BLOCK_ENTRIES === 0) this.fences.push(idPrefix(id, o));
    const b = this.buffer;
    const at = this.buffered;
    for (let i = 0; i < CHUNK_ID_BYTES; i++) {
      b[at + i] = id[o + i]!;
      this.last[i] = id[o + i]!;
    }
    b[at + 16] = pack & 0xff;
    b[at + 17] = (pack >>> 8) & 0xff;
    b[at + 18] = pack >>> 16;
    b[at + 19] = ordinal & 0xff;
    b[at + 20] = (ordinal >>> 8) & 0xff;
    b[at + 21] = ordinal >>> 16;
    bloomProbe(this.bloom, id, o, true);
    this.buffered += RUN_ENTRY_BYTES;
    this.entries++;
    if (this.buffered === this.buffer.length) this.flush();
  }

  get count(): number {
    return this.entries;
  }

  /** Makes the run durable under its final name; returns its entry count. */
  finish(): number {
    this.flush();
    const fences = Buffer.alloc(this.fences.length * 4);
    this.fences.forEach((f, i) => {
      fences.writeUInt32LE(f, i * 4);
    });
    writeAll(this.fd, fences, this.position);
    this.position += fences.length;
    writeAll(this.fd, this.bloom, this.position);
    const header = Buffer.alloc(RUN_HEADER_BYTES);
    RUN_MAGIC.copy(header, 0);
    header.writeUInt32LE(RUN_FORMAT, 8);
    header.writeUInt32LE(this.packNames.length, 12);
    header.writeBigUInt64LE(BigInt(this.entries), 16);
    header.writeUInt32LE(this.bloom.length, 24);
    header.writeUInt32LE(BLOOM_HASHES, 28);
    header.writeUInt32LE(RUN_BLOCK_ENTRIES, 32);
    writeAll(this.fd, header, 0);
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.path + PARTIAL, this.path);
    fsyncDir(dirname(this.path));
    return this.entries;
  }

  /** Closes and removes the partial file (a merge that lost a race, an error). */
  abandon(): void {
    closeSync(this.fd);
    rmSync(this.path + PARTIAL, { force: true });
  }

  private flush(): void {
    if (this.buffered === 0) return;
    writeAll(this.fd, this.buffer.subarray(0, this.buffered), this.position);
    this.position += this.buffered;
    this.buffered = 0;
  }
}

/**
 * Reads one byte of each page of bytes. Lookups probe a run's filter at random: in this
 * VM (shadow page tables) a page that read() filled still costs ~6 µs at its first access
 * from JavaScript. 2621 lookups in a 50 M-entry run (a 44 MB filter) took 10-20 ms, call
 * after call, until every page had been touched once; 2 ms after. Touching them in order
 * here costs that once, when the run is opened rather than while a job is frozen (~60
 * ms for 44 MB here, about a millisecond on bare metal).
 */
function touchPages(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += PAGE_TOUCH_STRIDE_BYTES) sum += bytes[i]!;
  return sum;
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
}

function readAll(fd: number, target: Uint8Array, position: number): number {
  let done = 0;
  while (done < target.length) {
    const n = readSync(fd, target, done, target.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** An open run: its pack list, fences and Bloom filter in memory, its entries read on demand. */
export class RunReader {
  readonly packNames: string[];
  readonly entries: number;
  private readonly fences: Uint32Array;
  private readonly bloom: Uint8Array;
  private readonly entriesAt: number;
  private readonly block = Buffer.alloc(RUN_BLOCK_ENTRIES * RUN_ENTRY_BYTES);
  /** Blocks kept by find(), by block number. */
  private cached: (Buffer | undefined)[] = [];
  private cachedBytes = 0;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    size: number,
  ) {
    const header = Buffer.alloc(RUN_HEADER_BYTES);
    if (readAll(fd, header, 0) !== RUN_HEADER_BYTES || !header.subarray(0, 8).equals(RUN_MAGIC)) throw new IndexRunDamagedError(path, 'no CRINCRN1 header');
    if (header.readUInt32LE(8) !== RUN_FORMAT) throw new IndexRunDamagedError(path, `format ${header.readUInt32LE(8)}, not ${RUN_FORMAT}`);
    const packs = header.readUInt32LE(12);
    this.entries = Number(header.readBigUInt64LE(16));
    const bloomBytes = header.readUInt32LE(24);
    if (header.readUInt32LE(28) !== BLOOM_HASHES || header.readUInt32LE(32) !== RUN_BLOCK_ENTRIES) throw new IndexRunDamagedError(path, 'unknown filter or block layout');
    const blocks = Math.ceil(this.entries / RUN_BLOCK_ENTRIES);
    this.entriesAt = RUN_HEADER_BYTES + packs * RUN_PACK_NAME_BYTES;
    const fencesAt = this.entriesAt + this.entries * RUN_ENTRY_BYTES;
    if (size !== fencesAt + blocks * 4 + bloomBytes) throw new IndexRunDamagedError(path, `${size} bytes where its header implies ${fencesAt + blocks * 4 + bloomBytes}`);
    const names = Buffer.alloc(packs * RUN_PACK_NAME_BYTES);
    readAll(fd, names, RUN_HEADER_BYTES);
    this.packNames = Array.from({ length: packs }, (_, i) => names.toString('hex', i * RUN_PACK_NAME_BYTES, (i + 1) * RUN_PACK_NAME_BYTES));
    const fences = Buffer.alloc(blocks * 4);
    readAll(fd, fences, fencesAt);
    this.fences = new Uint32Array(blocks);
    for (let b = 0; b < blocks; b++) this.fences[b] = fences.readUInt32LE(b * 4);
    this.bloom = new Uint8Array(bloomBytes);
    readAll(fd, this.bloom, fencesAt + blocks * 4);
    touchPages(this.bloom);
  }

  static open(path: string): RunReader {
    const fd = openSync(path, 'r');
    try {
      return new RunReader(path, fd, fstatSync(fd).size);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  close(): void {
    closeSync(this.fd);
    runBlockCacheBytes -= this.cachedBytes;
    this.cachedBytes = 0;
    this.cached = [];
  }

  /** Bytes held in memory for this run (filter, fences and cached blocks). */
  get memoryBytes(): number {
    return this.bloom.length + this.fences.byteLength + this.cachedBytes;
  }

  /** The entry of an id: its position in the run, or -1. */
  find(id: Uint8Array, o: number): number {
    if (this.entries === 0 || !bloomProbe(this.bloom, id, o, false)) return -1;
    const prefix = idPrefix(id, o);
    // The blocks whose range may hold the id: from the last whose fence is below its
    // prefix (the id may follow that block's first entries) to the last whose fence equals it.
    const lo = this.firstBlockAtOrAbove(prefix);
    for (let b = Math.max(0, lo - 1); b < this.fences.length && (b < lo || this.fences[b] === prefix); b++) {
      const first = b * RUN_BLOCK_ENTRIES;
      const n = Math.min(RUN_BLOCK_ENTRIES, this.entries - first);
      const block = this.blockAt(b, first, n);
      let l = 0;
      let h = n;
      while (l < h) {
        const m = (l + h) >>> 1;
        const c = compareIds(block, m * RUN_ENTRY_BYTES, id, o);
        if (c === 0) {
          this.lastPack = entryPack(block, m * RUN_ENTRY_BYTES);
          this.lastOrdinal = entryOrdinal(block, m * RUN_ENTRY_BYTES);
          return first + m;
        }
        if (c < 0) l = m + 1;
        else h = m;
      }
    }
    return -1;
  }

  /** Block b's n entries (from entry first): cached, read into the cache while it has room, else read into the scratch block. */
  private blockAt(b: number, first: number, n: number): Buffer {
    const kept = this.cached[b];
    if (kept) return kept;
    const bytes = n * RUN_ENTRY_BYTES;
    if (runBlockCacheBytes + bytes > RUN_BLOCK_CACHE_BYTES) {
      this.readEntries(first, n, this.block);
      return this.block;
    }
    const block = Buffer.allocUnsafe(bytes);
    this.readEntries(first, n, block);
    this.cached[b] = block;
    this.cachedBytes += bytes;
    runBlockCacheBytes += bytes;
    return block;
  }

  /** The first block whose fence is at or above prefix (fences.length when none). */
  private firstBlockAtOrAbove(prefix: number): number {
    let lo = 0;
    let hi = this.fences.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.fences[mid]! < prefix) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The pack index and ordinal of the entry find() returned last. */
  lastPack = 0;
  lastOrdinal = 0;

  /** Reads entries [first, first + count) into target (count * RUN_ENTRY_BYTES bytes). */
  readEntries(first: number, count: number, target: Buffer): void {
    const bytes = count * RUN_ENTRY_BYTES;
    if (readAll(this.fd, target.subarray(0, bytes), this.entriesAt + first * RUN_ENTRY_BYTES) !== bytes) {
      throw new IndexRunDamagedError(this.path, 'shorter than its header says');
    }
  }

  /** The first entry whose block may hold ids at or above prefix (for a merge walk). */
  firstEntryFor(prefix: number): number {
    return Math.max(0, this.firstBlockAtOrAbove(prefix) - 1) * RUN_BLOCK_ENTRIES;
  }
}

/** A buffer for a RunCursor's spans: whole entries, about RUN_IO_BYTES. */
export function newRunSpan(): Buffer {
  return Buffer.alloc(RUN_IO_BYTES - (RUN_IO_BYTES % RUN_ENTRY_BYTES));
}

/** Reads a run's entries in order, a span at a time; `span` and `at` hold the current entry after load(). */
export class RunCursor {
  private spanFirst = 0;
  private spanCount = 0;
  /** Byte offset of the current entry in span (valid after load() returned true). */
  at = 0;
  /** The entry the cursor is at (== run.entries when done). */
  position: number;

  /** span may be a buffer the caller reuses (newRunSpan): a fresh 1 MiB costs 256 page faults. */
  constructor(
    readonly run: RunReader,
    from = 0,
    readonly span: Buffer = newRunSpan(),
  ) {
    assert(span.length >= RUN_ENTRY_BYTES && span.length % RUN_ENTRY_BYTES === 0, 'a run span holds whole entries');
    this.position = from;
  }

  get done(): boolean {
    return this.position >= this.run.entries;
  }

  /** Entries loaded in span from the current one on (valid after load() returned true). */
  get loadedAhead(): number {
    return this.spanFirst + this.spanCount - this.position;
  }

  /** Moves to the entry at byte offset `at` of the loaded span. */
  moveToLoaded(at: number): void {
    this.position = this.spanFirst + at / RUN_ENTRY_BYTES;
    this.at = at;
  }

  /** Makes the current entry readable at span[at..]; false when the run is done. */
  load(): boolean {
    if (this.position >= this.run.entries) return false;
    if (this.position < this.spanFirst || this.position >= this.spanFirst + this.spanCount) {
      this.spanFirst = this.position;
      this.spanCount = Math.min(this.span.length / RUN_ENTRY_BYTES, this.run.entries - this.position);
      this.run.readEntries(this.spanFirst, this.spanCount, this.span);
    }
    this.at = (this.position - this.spanFirst) * RUN_ENTRY_BYTES;
    return true;
  }

  /**
   * Moves forward to the first entry at or above the id; true when it is that id. Within
   * the loaded span a galloping search; past it, a jump by the run's fences.
   */
  seek(id: Uint8Array, o: number): boolean {
    for (;;) {
      if (!this.load()) return false;
      const last = this.spanCount - 1;
      let lo = this.position - this.spanFirst;
      if (compareIds(this.span, lo * RUN_ENTRY_BYTES, id, o) >= 0) return compareIds(this.span, lo * RUN_ENTRY_BYTES, id, o) === 0;
      if (compareIds(this.span, last * RUN_ENTRY_BYTES, id, o) < 0) {
        // Past this span: the fences say where its block starts.
        this.position = Math.max(this.spanFirst + this.spanCount, this.run.firstEntryFor(idPrefix(id, o)));
        continue;
      }
      // entry lo < id <= entry last: gallop, then bisect.
      let step = 1;
      let hi = lo + 1;
      while (hi < last && compareIds(this.span, hi * RUN_ENTRY_BYTES, id, o) < 0) {
        lo = hi;
        step *= 2;
        hi = Math.min(last, lo + step);
      }
      while (hi - lo > 1) {
        const mid = (lo + hi) >>> 1;
        if (compareIds(this.span, mid * RUN_ENTRY_BYTES, id, o) < 0) lo = mid;
        else hi = mid;
      }
      this.position = this.spanFirst + hi;
      this.at = hi * RUN_ENTRY_BYTES;
      return compareIds(this.span, this.at, id, o) === 0;
    }
  }
}
