/**
 * A batch of chunks in one ArrayBuffer, the unit of work of the batch calls
 * (PageCodec.hashAndCompress / decodeAndVerify, and CodecPool, which moves
 * the whole buffer to a worker and back without copying it).
 *
 * A batch goes through phases:
 *
 *   Raw ──hashAndCompress──▶ Hashed        (ingest)
 *   Stored ──decodeAndVerify──▶ Decoded    (restore)
 *
 * - Raw: filled with addPages() / addRaw(): raw chunks back to back.
 * - Hashed: per chunk an id, a PageFlag and, for Normal chunks, the stored
 *   form (stored(i), compression(i)); zero and duplicate chunks store
 *   nothing.
 * - Stored: filled with addStored(): the stored forms of chunks read from a
 *   store, with their ids and raw lengths.
 * - Decoded: per chunk the raw bytes (raw(i)), checked against its id.
 *
 * The data area is rewritten in place by each step (results never take
 * more room than the batch's data capacity), so a batch costs one buffer
 * whatever it carries. Views returned by the accessors are valid until the
 * batch changes phase or is cleared.
 */
import { strict as assert } from 'node:assert';

import { CodecInputError } from './errors.js';
import { CHUNK_ID_BYTES as ID_BYTES, MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, PAGE_SIZE as PAGE_BYTES } from './limits.js';

/** How a chunk's stored bytes are encoded. Same values as the store's `compression` column. */
export const ChunkCompression = {
  /** The raw bytes themselves. */
  None: 0,
  /** The stored LZ4 form: u32 LE raw length, then one LZ4 block (docs/FORMAT.md). */
  Lz4: 1,
} as const;
export type ChunkCompression = (typeof ChunkCompression)[keyof typeof ChunkCompression];

export const BatchPhase = { Raw: 0, Hashed: 1, Stored: 2, Decoded: 3 } as const;
export type BatchPhase = (typeof BatchPhase)[keyof typeof BatchPhase];
const PHASE_NAMES = ['raw', 'hashed', 'stored', 'decoded'] as const;

/** Sets of phases, as bit masks, in which an accessor is valid. */
const WITH_IDS = (1 << BatchPhase.Hashed) | (1 << BatchPhase.Stored) | (1 << BatchPhase.Decoded);
const WITH_FLAGS = 1 << BatchPhase.Hashed;
const WITH_STORED = (1 << BatchPhase.Hashed) | (1 << BatchPhase.Stored);
const WITH_RAW = (1 << BatchPhase.Raw) | (1 << BatchPhase.Decoded);
const ANY_PHASE = WITH_IDS | WITH_RAW;

// Buffer layout: a header of u32 words, the per-chunk u32 arrays, then the
// byte arrays and the data area.
const HEADER_WORDS = 6;
const HEADER_CHUNK_CAPACITY = 0;
const HEADER_DATA_CAPACITY = 1;
const HEADER_COUNT = 2;
/** Bytes of data in use: raw bytes in phases Raw and Decoded, stored forms otherwise. */
const HEADER_DATA_USED = 3;
/** Sum of the chunks' raw lengths (what decoding will need). */
const HEADER_RAW_TOTAL = 4;
const HEADER_PHASE = 5;
const U32_ARRAYS = 3;
const BYTES_PER_CHUNK = U32_ARRAYS * 4 + ID_BYTES + 2;

function layoutBytes(chunkCapacity: number, dataCapacity: number): number {
  return HEADER_WORDS * 4 + chunkCapacity * BYTES_PER_CHUNK + dataCapacity;
}

export class ChunkBatch {
  readonly chunkCapacity: number;
  readonly dataCapacity: number;
  private buffer!: ArrayBuffer;
  private header!: Uint32Array;
  /** Per chunk: where its bytes are in `data`, in the phase's form. */
  private offsets!: Uint32Array;
  private lengths!: Uint32Array;
  private rawLengthArray!: Uint32Array;
  private idArray!: Uint8Array;
  private flagArray!: Uint8Array;
  private compressionArray!: Uint8Array;
  private dataArea!: Uint8Array;
  /** Set while the buffer is lent out (to a worker): every use throws then. */
  private lent = false;

  /** An empty batch for up to chunkCapacity chunks and dataCapacity bytes. */
  static create(chunkCapacity = MAX_BATCH_CHUNKS, dataCapacity = MAX_BATCH_BYTES): ChunkBatch {
    if (!Number.isInteger(chunkCapacity) || chunkCapacity < 1 || chunkCapacity > MAX_BATCH_CHUNKS) {
      throw new CodecInputError(`A batch holds 1 to ${MAX_BATCH_CHUNKS} chunks; asked for ${chunkCapacity}.`);
    }
    if (!Number.isInteger(dataCapacity) || dataCapacity < 1 || dataCapacity > MAX_BATCH_BYTES) {
      throw new CodecInputError(`A batch holds 1 to ${MAX_BATCH_BYTES} data bytes; asked for ${dataCapacity}.`);
    }
    const buffer = new ArrayBuffer(layoutBytes(chunkCapacity, dataCapacity));
    const header = new Uint32Array(buffer, 0, HEADER_WORDS);
    header[HEADER_CHUNK_CAPACITY] = chunkCapacity;
    header[HEADER_DATA_CAPACITY] = dataCapacity;
    return new ChunkBatch(buffer);
  }

  /** A batch over a buffer made by create() (and moved between threads). */
  static over(buffer: ArrayBuffer): ChunkBatch {
    return new ChunkBatch(buffer);
  }

  private constructor(buffer: ArrayBuffer) {
    const header = new Uint32Array(buffer, 0, HEADER_WORDS);
    this.chunkCapacity = header[HEADER_CHUNK_CAPACITY]!;
    this.dataCapacity = header[HEADER_DATA_CAPACITY]!;
    this.bind(buffer);
  }

  private bind(buffer: ArrayBuffer): void {
    assert.equal(buffer.byteLength, layoutBytes(this.chunkCapacity, this.dataCapacity), 'a batch buffer has the wrong size');
    const chunks = this.chunkCapacity;
    let at = 0;
    const words = (count: number): Uint32Array => {
      const view = new Uint32Array(buffer, at, count);
      at += count * 4;
      return view;
    };
    const bytes = (count: number): Uint8Array => {
      const view = new Uint8Array(buffer, at, count);
      at += count;
      return view;
    };
    this.buffer = buffer;
    this.header = words(HEADER_WORDS);
    this.offsets = words(chunks);
    this.lengths = words(chunks);
    this.rawLengthArray = words(chunks);
    this.idArray = bytes(chunks * ID_BYTES);
    this.flagArray = bytes(chunks);
    this.compressionArray = bytes(chunks);
    this.dataArea = bytes(this.dataCapacity);
    assert.equal(at, buffer.byteLength);
    this.lent = false;
  }

  /**
   * Hands the buffer out (to be transferred to a worker); the batch is
   * unusable until giveBack() returns it. For CodecPool.
   */
  lend(): ArrayBuffer {
    this.checkNotLent();
    this.lent = true;
    return this.buffer;
  }

  /** Takes the buffer back after lend(), as the worker left it. For CodecPool. */
  giveBack(buffer: ArrayBuffer): void {
    assert(this.lent, 'giveBack() without lend()');
    this.bind(buffer);
  }

  get isLent(): boolean {
    return this.lent;
  }

  get count(): number {
    this.checkNotLent();
    return this.header[HEADER_COUNT]!;
  }

  get phase(): BatchPhase {
    this.checkNotLent();
    return this.header[HEADER_PHASE]! as BatchPhase;
  }

  /** Data bytes in use (raw bytes in phases Raw and Decoded, stored forms otherwise). */
  get dataUsed(): number {
    this.checkNotLent();
    return this.header[HEADER_DATA_USED]!;
  }

  /** Sum of the chunks' raw lengths. */
  get rawTotal(): number {
    this.checkNotLent();
    return this.header[HEADER_RAW_TOTAL]!;
  }

  get freeChunks(): number {
    return this.chunkCapacity - this.count;
  }

  /** Data bytes still free (for addStored(): the smaller of stored and raw room). */
  get freeBytes(): number {
    return this.dataCapacity - Math.max(this.dataUsed, this.rawTotal);
  }

  /** Empties the batch for reuse (phase Raw). */
  clear(): void {
    this.checkNotLent();
    this.header[HEADER_COUNT] = 0;
    this.header[HEADER_DATA_USED] = 0;
    this.header[HEADER_RAW_TOTAL] = 0;
    this.header[HEADER_PHASE] = BatchPhase.Raw;
  }

  /**
   * Adds pageCount 4 KiB pages, one chunk each, and returns the view to
   * fill with their bytes (e.g. by reading a run of pages into it).
   */
  addPages(pageCount: number): Uint8Array {
    this.startAdding(BatchPhase.Raw);
    if (!Number.isInteger(pageCount) || pageCount < 1 || pageCount > this.freeChunks || pageCount * PAGE_BYTES > this.freeBytes) {
      throw new CodecInputError(
        `Cannot add ${pageCount} pages to a batch with room for ${this.freeChunks} chunks and ${this.freeBytes} bytes.`,
      );
    }
    const first = this.count;
    const start = this.dataUsed;
    for (let i = 0; i < pageCount; i++) {
      this.offsets[first + i] = start + i * PAGE_BYTES;
      this.lengths[first + i] = PAGE_BYTES;
      this.rawLengthArray[first + i] = PAGE_BYTES;
    }
    this.grow(pageCount, pageCount * PAGE_BYTES, pageCount * PAGE_BYTES);
    return this.dataArea.subarray(start, start + pageCount * PAGE_BYTES);
  }

  /** Adds one raw chunk of `length` bytes and returns the view to fill with them. */
  addRaw(length: number): Uint8Array {
    this.startAdding(BatchPhase.Raw);
    if (!Number.isInteger(length) || length < 0 || this.freeChunks < 1 || length > this.freeBytes) {
      throw new CodecInputError(
        `Cannot add a ${length}-byte chunk to a batch with room for ${this.freeChunks} chunks and ${this.freeBytes} bytes.`,
      );
    }
    const index = this.count;
    const start = this.dataUsed;
    this.offsets[index] = start;
    this.lengths[index] = length;
    this.rawLengthArray[index] = length;
    this.grow(1, length, length);
    return this.dataArea.subarray(start, start + length);
  }

  /**
   * Adds one chunk in its stored form (as a store holds it) and returns the
   * view to fill with its storedLength bytes. decodeAndVerify() then turns
   * it into rawLength bytes and checks them against `id`.
   */
  addStored(id: Uint8Array, storedLength: number, rawLength: number, compression: ChunkCompression): Uint8Array {
    this.startAdding(BatchPhase.Stored);
    if (id.length !== ID_BYTES) throw new CodecInputError(`A chunk id is ${ID_BYTES} bytes; got ${id.length}.`);
    if (compression !== ChunkCompression.None && compression !== ChunkCompression.Lz4) {
      throw new CodecInputError(`Unknown chunk compression ${String(compression)}.`);
    }
    const valid = (n: number): boolean => Number.isInteger(n) && n >= 0;
    if (!valid(storedLength) || !valid(rawLength) || this.freeChunks < 1 ||
        this.dataUsed + storedLength > this.dataCapacity || this.rawTotal + rawLength > this.dataCapacity) {
      throw new CodecInputError(
        `Cannot add a chunk of ${storedLength} stored / ${rawLength} raw bytes to a batch with room for ${this.freeChunks} chunks and ${this.freeBytes} bytes.`,
      );
    }
    const index = this.count;
    const start = this.dataUsed;
    this.offsets[index] = start;
    this.lengths[index] = storedLength;
    this.rawLengthArray[index] = rawLength;
    this.compressionArray[index] = compression;
    this.idArray.set(id, index * ID_BYTES);
    this.grow(1, storedLength, rawLength);
    return this.dataArea.subarray(start, start + storedLength);
  }

  /** Copies `stored` in as by addStored(). */
  addStoredCopy(id: Uint8Array, stored: Uint8Array, rawLength: number, compression: ChunkCompression): void {
    this.addStored(id, stored.length, rawLength, compression).set(stored);
  }

  /** Chunk i's id (hashed, stored and decoded phases). */
  id(index: number): Uint8Array {
    this.checkIndex(index, WITH_IDS);
    return this.idArray.subarray(index * ID_BYTES, (index + 1) * ID_BYTES);
  }

  /** Chunk i's PageFlag (hashed phase). */
  flag(index: number): number {
    this.checkIndex(index, WITH_FLAGS);
    return this.flagArray[index]!;
  }

  /** How chunk i's stored form is encoded (hashed and stored phases; for a Normal chunk when hashed). */
  compression(index: number): ChunkCompression {
    this.checkIndex(index, WITH_STORED);
    return this.compressionArray[index]! as ChunkCompression;
  }

  /** Chunk i's stored form (hashed and stored phases); empty for zero and duplicate chunks. */
  stored(index: number): Uint8Array {
    this.checkIndex(index, WITH_STORED);
    return this.dataArea.subarray(this.offsets[index]!, this.offsets[index]! + this.lengths[index]!);
  }

  /** Chunk i's raw bytes (raw and decoded phases). */
  raw(index: number): Uint8Array {
    this.checkIndex(index, WITH_RAW);
    return this.dataArea.subarray(this.offsets[index]!, this.offsets[index]! + this.lengths[index]!);
  }

  rawLength(index: number): number {
    this.checkIndex(index, ANY_PHASE);
    return this.rawLengthArray[index]!;
  }

  /**
   * The batch's arrays, for PageCodec only: it reads and writes them
   * directly so that a batch call costs no per-chunk allocation.
   */
  internals(): BatchInternals {
    this.checkNotLent();
    return {
      offsets: this.offsets,
      lengths: this.lengths,
      rawLengths: this.rawLengthArray,
      ids: this.idArray,
      flags: this.flagArray,
      compression: this.compressionArray,
      data: this.dataArea,
    };
  }

  /** Records the outcome of a batch step. For PageCodec. */
  finishStep(phase: BatchPhase, dataUsed: number): void {
    this.checkNotLent();
    assert(dataUsed <= this.dataCapacity, 'a batch step overflowed the batch');
    this.header[HEADER_PHASE] = phase;
    this.header[HEADER_DATA_USED] = dataUsed;
  }

  /** Throws unless the batch is in `phase` (phase names in the message). */
  expectPhase(phase: BatchPhase, step: string): void {
    if (this.phase !== phase) {
      throw new CodecInputError(`${step} needs a ${PHASE_NAMES[phase]} batch; this one is ${PHASE_NAMES[this.phase]}.`);
    }
  }

  private startAdding(phase: BatchPhase): void {
    if (this.count === 0) this.header[HEADER_PHASE] = phase;
    else this.expectPhase(phase, 'Adding this kind of chunk');
  }

  private grow(chunks: number, dataBytes: number, rawBytes: number): void {
    this.header[HEADER_COUNT] = this.count + chunks;
    this.header[HEADER_DATA_USED] = this.dataUsed + dataBytes;
    this.header[HEADER_RAW_TOTAL] = this.rawTotal + rawBytes;
  }

  private checkIndex(index: number, phaseMask: number): void {
    const phase = this.phase;
    if (((1 << phase) & phaseMask) === 0) {
      const wanted = PHASE_NAMES.filter((_, p) => ((1 << p) & phaseMask) !== 0);
      throw new CodecInputError(`This batch is ${PHASE_NAMES[phase]}; that accessor needs a batch that is ${wanted.join(' or ')}.`);
    }
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new CodecInputError(`Chunk index ${index} is outside this batch of ${this.count} chunks.`);
    }
  }

  private checkNotLent(): void {
    if (this.lent) throw new CodecInputError('This batch is in use by a codec worker until its call settles.');
  }
}

/** What PageCodec reads and writes in a batch. */
export interface BatchInternals {
  offsets: Uint32Array;
  lengths: Uint32Array;
  rawLengths: Uint32Array;
  ids: Uint8Array;
  flags: Uint8Array;
  compression: Uint8Array;
  data: Uint8Array;
}
