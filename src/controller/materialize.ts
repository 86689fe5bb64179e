// Materialize: a stored file written back out byte for byte, every chunk read from its
// pack and checked against its id on the way (a mismatch throws; nothing is guessed).
// Chunks are located in batched queries, read in coalesced spans of their packs,
// decompressed and verified on the codec pool, and written in large writes.
import { closeSync, existsSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ChunkBatch, ChunkCompression } from '../codec/chunk-batch.js';
import { CorruptChunkError } from '../codec/errors.js';
import { ChunkCorruptError } from '../store/errors.js';
import { CHUNK_ID_BYTES } from '../store/format.js';
import { type CheckpointRecord, type ChunkLocations, type FileManifest, idHex, isZeroId, type Repository } from '../store/repository.js';
import type { Codecs } from './codecs.js';
import type { ProgressCallback } from './ingest.js';
import { CrincError } from '../errors.js';

/** Largest single read of a pack: neighbouring chunks are read together up to this. */
const PACK_SPAN_BYTES = 4 * 1024 * 1024;
/** Two chunks are read in one span when the bytes between them are at most this. */
const PACK_SPAN_GAP_BYTES = 64 * 1024;
/** Spans read ahead of the one being decoded (ranged GETs in flight on an S3 store). */
const PACK_SPANS_AHEAD = 4;
/** Output is gathered into writes of this size. */
const WRITE_BUFFER_BYTES = 4 * 1024 * 1024;

/** Gathers blocks at increasing file positions into large writes. */
class CoalescingWriter {
  private readonly buffer = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  private used = 0;
  private start = 0;

  constructor(private readonly fd: number) {}

  write(position: number, data: Uint8Array): void {
    if (this.used > 0 && (position !== this.start + this.used || this.used + data.length > this.buffer.length)) this.flush();
    if (data.length > this.buffer.length) {
      writeAll(this.fd, data, position);
      return;
    }
    if (this.used === 0) this.start = position;
    this.buffer.set(data, this.used);
    this.used += data.length;
  }

  flush(): void {
    if (this.used > 0) writeAll(this.fd, this.buffer.subarray(0, this.used), this.start);
    this.used = 0;
  }
}

function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
}

/** Which chunks of a batch are where: their index in the list read, for positions and error messages. */
interface Submitted {
  batch: ChunkBatch;
  decoded: Promise<ChunkBatch>;
  blocks: number[];
}

/**
 * `advance`: told the bytes of the file written so far, batch by batch (holes included at
 * the end). `only`: write just these blocks (the others stay holes), for a partial file.
 */
export async function materializeFile(
  repo: Repository,
  manifest: FileManifest,
  codecs: Codecs,
  dest: string,
  advance?: (bytes: number) => void,
  only?: (block: number) => boolean,
): Promise<void> {
  const count = manifest.ids.length / CHUNK_ID_BYTES;
  if (count !== Math.ceil(manifest.size / manifest.blockBytes)) {
    throw new Error(`manifest of ${manifest.path} has ${count} blocks for ${manifest.size} bytes`);
  }
  // Zero blocks stay holes: ftruncate gives them their zeros.
  const blocks: number[] = [];
  for (let i = 0; i < count; i++) if (!isZeroId(manifest.ids, i) && (!only || only(i))) blocks.push(i);
  const ids = new Uint8Array(blocks.length * CHUNK_ID_BYTES);
  blocks.forEach((b, k) => {
    ids.set(manifest.ids.subarray(b * CHUNK_ID_BYTES, (b + 1) * CHUNK_ID_BYTES), k * CHUNK_ID_BYTES);
  });

  const fd = openSync(dest, 'w', 0o600);
  const out = new CoalescingWriter(fd);
  let written = 0;
  let reported = 0;
  try {
    await readChunks(repo, ids, codecs, (k, raw) => {
      const b = blocks[k]!;
      const expected = Math.min(manifest.blockBytes, manifest.size - b * manifest.blockBytes);
      if (raw.length !== expected) throw new Error(`block ${b} of ${manifest.path} holds ${raw.length} bytes, ${expected} expected`);
      out.write(b * manifest.blockBytes, raw);
      written += raw.length;
    }, () => {
      advance?.(written - reported);
      reported = written;
    });
    out.flush();
    ftruncateSync(fd, manifest.size);
    advance?.(manifest.size - reported); // the zero blocks, left as holes
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads the chunks ids (none of them the zero id) from the store and hands each, in
 * order, to onChunk(k, raw) after checking it against its id. Chunks are located in one
 * batched query (unless the caller located them: `located`), read in coalesced spans of
 * their packs (read ahead), decompressed and verified on the codec pool. afterBatch runs
 * after each batch of chunks went out.
 */
export async function readChunks(
  repo: Repository,
  ids: Uint8Array,
  codecs: Codecs,
  onChunk: (k: number, raw: Uint8Array) => void,
  afterBatch?: () => void,
  located?: ChunkLocations,
): Promise<void> {
  const where = located ?? repo.locateChunks(ids);
  const pool = codecs.pool;
  const inFlight: Submitted[] = [];
  try {
    const finish = async (s: Submitted) => {
      let batch: ChunkBatch;
      try {
        batch = await s.decoded;
      } catch (e) {
        pool.releaseFailed(s.batch);
        if (e instanceof CorruptChunkError && e.chunkIndex !== undefined) {
          const k = s.blocks[e.chunkIndex]!;
          throw new ChunkCorruptError(idHex(ids.subarray(k * CHUNK_ID_BYTES, (k + 1) * CHUNK_ID_BYTES)), where.packs[where.packIndex[k]!]!, e.message);
        }
        throw e;
      }
      try {
        for (let j = 0; j < batch.count; j++) onChunk(s.blocks[j]!, batch.raw(j));
      } finally {
        pool.release(batch);
      }
      afterBatch?.();
    };
    // Spans are read ahead of decoding: on an S3 store each is a ranged GET, and several
    // in flight hide the round trips. Each span's chunks are copied into batches in order.
    const spans = planSpans(where);
    const reads = new Map<number, Promise<number>>();
    if (spanBuffersInUse) throw new Error('readChunks runs one read at a time: its span buffers are shared');
    spanBuffersInUse = true;
    const startRead = (s: number) => {
      const span = spans[s];
      if (span) reads.set(s, repo.readPackInto(span.pack, span.start, spanBuffer(s, span.bytes)));
    };
    let batch: ChunkBatch | undefined;
    let taken: number[] = [];
    const submit = async () => {
      if (!batch) return;
      inFlight.push({ batch, decoded: pool.decodeAndVerify(batch), blocks: taken });
      batch = undefined;
      taken = [];
      // Keep one batch free for filling, or acquire() would wait on our own results.
      while (inFlight.length >= pool.batchCount - 1) await finish(inFlight.shift()!);
    };
    try {
      for (let s = 0; s < PACK_SPANS_AHEAD; s++) startRead(s);
      for (let s = 0; s < spans.length; s++) {
        const span = spans[s]!;
        const got = await reads.get(s)!;
        reads.delete(s);
        const data = spanBuffer(s, span.bytes);
        for (let i = span.first; i < span.end; i++) {
          const id = ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
          const from = where.offset[i]! - span.start;
          const len = where.storedLength[i]!;
          if (from + len > got) throw new ChunkCorruptError(idHex(id), span.pack, `pack is ${from + len - got} bytes short`);
          if (batch && (batch.freeChunks === 0 || batch.freeBytes < len)) await submit();
          if (!batch) {
            batch = await pool.acquire();
            if (batch.freeBytes < len) throw new Error(`chunk of ${len} bytes does not fit a codec batch`);
          }
          batch.addStoredCopy(id, data.subarray(from, from + len), where.rawLength[i]!, where.compression[i] as ChunkCompression);
          taken.push(i);
        }
        // Its chunks are copied out: the buffer takes the span PACK_SPANS_AHEAD further on.
        startRead(s + PACK_SPANS_AHEAD);
      }
      await submit();
    } finally {
      if (batch) pool.release(batch);
      // No read may still write into the shared buffers once this read is done or failed.
      for (const r of reads.values()) await r.catch(() => undefined);
      spanBuffersInUse = false;
    }
    while (inFlight.length > 0) await finish(inFlight.shift()!);
  } finally {
    // Let batches still out come back to the pool before the error goes up.
    for (const s of inFlight.splice(0)) await s.decoded.then((b) => pool.release(b), () => pool.releaseFailed(s.batch));
  }
}

/** Neighbouring chunks of one pack, read together. */
interface Span {
  pack: string;
  start: number;
  bytes: number;
  /** The chunks [first, end) of the located list. */
  first: number;
  end: number;
}

/** Cuts the located chunks, in file order, into spans of their packs: close together, at most PACK_SPAN_BYTES. */
function planSpans(where: ChunkLocations): Span[] {
  const spans: Span[] = [];
  const n = where.offset.length;
  for (let k = 0; k < n; ) {
    const packIndex = where.packIndex[k]!;
    const pack = where.packs[packIndex]!;
    const start = where.offset[k]!;
    let end = k + 1;
    while (end < n && where.packIndex[end] === packIndex) {
      const gap = where.offset[end]! - (where.offset[end - 1]! + where.storedLength[end - 1]!);
      if (gap < 0 || gap > PACK_SPAN_GAP_BYTES || where.offset[end]! + where.storedLength[end]! - start > PACK_SPAN_BYTES) break;
      end++;
    }
    spans.push({ pack, start, bytes: where.offset[end - 1]! + where.storedLength[end - 1]! - start, first: k, end });
    k = end;
  }
  return spans;
}

const spanBuffers: Buffer[] = [];
let spanBuffersInUse = false;

/**
 * The read buffer of span s: PACK_SPANS_AHEAD of them, kept for the process, since a
 * fresh one per read costs a page fault per 4 KiB (12–60 µs in a VM) before any byte is
 * read. Span s + PACK_SPANS_AHEAD reuses span s's, once its chunks are copied out.
 */
function spanBuffer(s: number, bytes: number): Buffer {
  const slot = s % PACK_SPANS_AHEAD;
  const buf = spanBuffers[slot];
  if (!buf || buf.length < bytes) spanBuffers[slot] = Buffer.allocUnsafe(Math.max(bytes, PACK_SPAN_BYTES));
  return spanBuffers[slot]!.subarray(0, bytes);
}

/** A checkpoint's CRIU image directory, as CRIU wrote it. */
export async function materializeImages(repo: Repository, images: FileManifest[], codecs: Codecs, dir: string, onProgress?: ProgressCallback): Promise<void> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const total = images.reduce((sum, m) => sum + m.size, 0);
  let done = 0;
  const advance = onProgress && ((bytes: number) => onProgress((done += bytes), total));
  for (const m of images) {
    if (m.role !== 'image') throw new Error(`${m.path} is not an image file`);
    if (m.path.includes('/')) throw new Error(`image file name ${m.path} has a slash`);
    await materializeFile(repo, m, codecs, join(dir, m.path), advance);
  }
}

export class ExportTargetError extends CrincError {
  override name = 'ExportTargetError';
}

/** Writes a checkpoint out: images into dir, the job's files under dir/files/<absolute path>. */
export async function exportCheckpoint(repo: Repository, codecs: Codecs, cp: CheckpointRecord, dir: string): Promise<{ images: number; files: number }> {
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new ExportTargetError(`${dir} is not empty: export into a new or empty directory`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // GC waits while chunks are read.
  const storeLock = await repo.lockShared(`export of checkpoint ${cp.id}`);
  try {
    repo.getCheckpoint(cp.id); // not forgotten by retention meanwhile (GC may have run)
    const all = await repo.checkpointFiles(cp.id, codecs.chunks);
    const images = all.filter((f) => f.role === 'image');
    await materializeImages(repo, images, codecs, dir);
    const jobFiles = all.filter((f) => f.role === 'job-file');
    for (const f of jobFiles) {
      const dest = join(dir, 'files', f.path);
      mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
      await materializeFile(repo, f, codecs, dest);
    }
    return { images: images.length, files: jobFiles.length };
  } finally {
    storeLock.release();
  }
}
