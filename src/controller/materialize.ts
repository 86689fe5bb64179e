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
import { lockStore } from '../store/store-lock.js';
import type { Codecs } from './codecs.js';
import type { ProgressCallback } from './ingest.js';

/** Largest single read of a pack: neighbouring chunks are read together up to this. */
const PACK_SPAN_BYTES = 4 * 1024 * 1024;
/** Two chunks are read in one span when the bytes between them are at most this. */
const PACK_SPAN_GAP_BYTES = 64 * 1024;
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

/** Which chunks of a batch are where: their manifest index, for positions and error messages. */
interface Submitted {
  batch: Promise<ChunkBatch>;
  blocks: number[];
}

/** `advance`: told the bytes of the file written so far, batch by batch (holes included at the end). */
export async function materializeFile(repo: Repository, manifest: FileManifest, codecs: Codecs, dest: string, advance?: (bytes: number) => void): Promise<void> {
  const count = manifest.ids.length / CHUNK_ID_BYTES;
  if (count !== Math.ceil(manifest.size / manifest.blockBytes)) {
    throw new Error(`manifest of ${manifest.path} has ${count} blocks for ${manifest.size} bytes`);
  }
  // Zero blocks stay holes: ftruncate gives them their zeros.
  const blocks: number[] = [];
  for (let i = 0; i < count; i++) if (!isZeroId(manifest.ids, i)) blocks.push(i);
  const ids = new Uint8Array(blocks.length * CHUNK_ID_BYTES);
  blocks.forEach((b, k) => ids.set(manifest.ids.subarray(b * CHUNK_ID_BYTES, (b + 1) * CHUNK_ID_BYTES), k * CHUNK_ID_BYTES));
  const where = repo.locateChunks(ids);

  const fd = openSync(dest, 'w', 0o600);
  const out = new CoalescingWriter(fd);
  const pool = codecs.pool;
  const inFlight: Submitted[] = [];
  let written = 0;
  let reported = 0;
  try {
    const finish = async (s: Submitted) => {
      let batch: ChunkBatch;
      try {
        batch = await s.batch;
      } catch (e) {
        if (e instanceof CorruptChunkError && e.chunkIndex !== undefined) {
          const k = s.blocks[e.chunkIndex]!;
          throw new ChunkCorruptError(idHex(ids.subarray(k * CHUNK_ID_BYTES, (k + 1) * CHUNK_ID_BYTES)), where.pack[k]!, e.message);
        }
        throw e;
      }
      for (let j = 0; j < batch.count; j++) {
        const b = blocks[s.blocks[j]!]!;
        const expected = Math.min(manifest.blockBytes, manifest.size - b * manifest.blockBytes);
        const raw = batch.raw(j);
        if (raw.length !== expected) throw new Error(`block ${b} of ${manifest.path} holds ${raw.length} bytes, ${expected} expected`);
        out.write(b * manifest.blockBytes, raw);
        written += raw.length;
      }
      pool.release(batch);
      advance?.(written - reported);
      reported = written;
    };
    let k = 0;
    while (k < blocks.length) {
      const batch = await pool.acquire();
      const taken: number[] = [];
      // Fill the batch with the next blocks in file order, reading neighbouring chunks together.
      while (k < blocks.length && batch.freeChunks > 0 && batch.freeBytes >= where.storedLength[k]!) {
        k = readSpan(repo, where, ids, k, batch, taken);
      }
      if (taken.length === 0) throw new Error(`chunk of ${where.storedLength[k]} bytes does not fit a codec batch`);
      inFlight.push({ batch: pool.decodeAndVerify(batch), blocks: taken });
      // Keep one batch free for filling, or acquire() would wait on our own results.
      while (inFlight.length >= pool.batchCount - 1) await finish(inFlight.shift()!);
    }
    while (inFlight.length > 0) await finish(inFlight.shift()!);
    out.flush();
    ftruncateSync(fd, manifest.size);
    advance?.(manifest.size - reported); // the zero blocks, left as holes
    fsyncSync(fd);
  } finally {
    // Let batches still out come back to the pool before the error goes up.
    for (const s of inFlight.splice(0)) await s.batch.then((b) => pool.release(b), () => undefined);
    closeSync(fd);
  }
}

/**
 * Reads chunk k and its successors in the same pack while they lie close together and
 * fit the batch; adds them to the batch. Returns the index after the last one taken.
 */
function readSpan(repo: Repository, where: ChunkLocations, ids: Uint8Array, k: number, batch: ChunkBatch, taken: number[]): number {
  const pack = where.pack[k]!;
  const start = where.offset[k]!;
  let end = k + 1;
  let spanBytes = where.storedLength[k]!;
  let room = batch.freeBytes - where.storedLength[k]!;
  let chunksRoom = batch.freeChunks - 1;
  while (end < where.offset.length && chunksRoom > 0 && where.pack[end] === pack) {
    const prevEnd = where.offset[end - 1]! + where.storedLength[end - 1]!;
    const gap = where.offset[end]! - prevEnd;
    const len = where.storedLength[end]!;
    if (gap < 0 || gap > PACK_SPAN_GAP_BYTES || len > room || where.offset[end]! + len - start > PACK_SPAN_BYTES) break;
    spanBytes = where.offset[end]! + len - start;
    room -= len;
    chunksRoom--;
    end++;
  }
  const span = spanBuffer(spanBytes);
  const got = repo.readPackInto(pack, start, span);
  for (let i = k; i < end; i++) {
    const id = ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES);
    const from = where.offset[i]! - start;
    const len = where.storedLength[i]!;
    if (from + len > got) {
      throw new ChunkCorruptError(idHex(id), pack, `pack is ${from + len - got} bytes short`);
    }
    batch.addStoredCopy(id, span.subarray(from, from + len), where.rawLength[i]!, where.compression[i] as ChunkCompression);
    taken.push(i);
  }
  return end;
}

let spanScratch: Buffer | undefined;

/**
 * One read buffer for all spans, kept: a fresh one per read costs a page fault per 4 KiB
 * (12–60 µs in a VM) before any byte is read. Spans are copied out before the next read.
 */
function spanBuffer(bytes: number): Buffer {
  if (!spanScratch || spanScratch.length < bytes) spanScratch = Buffer.allocUnsafe(Math.max(bytes, PACK_SPAN_BYTES));
  return spanScratch.subarray(0, bytes);
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

export class ExportTargetError extends Error {
  override name = 'ExportTargetError';
}

/** Writes a checkpoint out: images into dir, the job's files under dir/files/<absolute path>. */
export async function exportCheckpoint(repo: Repository, codecs: Codecs, cp: CheckpointRecord, dir: string): Promise<{ images: number; files: number }> {
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new ExportTargetError(`${dir} is not empty: export into a new or empty directory`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // GC waits while chunks are read.
  const storeLock = await lockStore(repo.dir, 'shared');
  try {
    repo.refreshAfterCollection();
    repo.getCheckpoint(cp.id); // not forgotten by retention meanwhile (GC may have run)
    const all = repo.checkpointFiles(cp.id, codecs.chunks);
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
