/**
 * JS side of the WASM page codec (wasm/codec.ts): keyed XXH3-128 chunk ids
 * for 4 KiB pages and for arbitrary chunks, with zero-page and in-call
 * duplicate detection, and LZ4 compression in the stored chunk format
 * (docs/FORMAT.md, "Compression"), one chunk at a time or by batches.
 *
 * A chunk id is XXH3-128 ("withSecret" variant, seed 0) of the chunk's bytes
 * under the store's 192-byte secret, in the canonical XXH128 byte order (high
 * 64 bits big-endian, then low 64 bits big-endian). Without a secret the id is
 * the standard unkeyed XXH3_128bits() result.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { packageRoot } from '../sys/package-root.js';

import { BatchPhase, ChunkCompression, type ChunkBatch } from './chunk-batch.js';
import { CodecInputError, CodecLoadError, CorruptChunkError, InvalidSecretError } from './errors.js';
import { CHUNK_ID_BYTES, MAX_BATCH_CHUNKS, MAX_CHUNK_BYTES, PAGE_SIZE, SECRET_BYTES } from './limits.js';

export { CHUNK_ID_BYTES, MAX_CHUNK_BYTES, PAGE_SIZE, SECRET_BYTES } from './limits.js';

/** Bytes of the stored LZ4 form's little-endian raw-length prefix. */
export const LENGTH_PREFIX_BYTES = 4;

/**
 * Pages copied into WASM memory per internal hashing step (hashPages, and
 * hashAndCompress's groups of chunks). 256 KiB keeps the copied batch in L2
 * while it is hashed and compressed; measured faster than 1–4 MiB batches
 * (which spill to L3 between the copy and the hash): ~10% for
 * hashAndCompress.
 */
export const HASH_BATCH_BYTES = 256 * 1024;
export const HASH_BATCH_PAGES = HASH_BATCH_BYTES / PAGE_SIZE;

/** The wasm build output, relative to the package root. */
const CODEC_WASM_PATH = join('build', 'wasm', 'codec.wasm');

/** Per-chunk flag written by PageCodec.hashPages() and hashAndCompress(). */
export const PageFlag = {
  /** Ordinary chunk. */
  Normal: 0,
  /** Every byte is zero. Its id is still the chunk's true hash. */
  Zero: 1,
  /**
   * Same id as an earlier nonzero page of the same hashPages() call or
   * batch. A hint: always right when set, but the codec remembers only the
   * first DEDUP_MAX_ENTRIES (wasm/codec.ts: 32768) distinct ids of a call,
   * and copies of ids first seen after that are reported as Normal.
   */
  Duplicate: 2,
} as const;
export type PageFlag = (typeof PageFlag)[keyof typeof PageFlag];

/** Why decodeChunks() rejected a chunk (wasm/codec.ts STATUS_*), as error text. */
const DECODE_FAILURES: Readonly<Record<number, string>> = {
  1: 'its LZ4 block ends inside a sequence (truncated or damaged)',
  2: 'an LZ4 match refers to bytes before the start of the chunk',
  3: 'it decodes to more bytes than its raw length',
  4: 'it decodes to fewer bytes than its raw length',
  5: 'its length header differs from its raw length',
  6: 'its content does not hash to its id',
  7: 'its compression kind is unknown',
  8: 'it is stored uncompressed, but its stored length differs from its raw length',
};

/** The exports of build/wasm/codec.wasm (AssemblyScript bools are i32 0/1). */
interface CodecExports {
  memory: WebAssembly.Memory;
  inputAreaPtr(): number;
  inputAreaBytes(): number;
  outputAreaPtr(): number;
  outputAreaBytes(): number;
  idsAreaPtr(): number;
  flagsAreaPtr(): number;
  formsAreaPtr(): number;
  chunkTablePtr(): number;
  maxChunksPerBatch(): number;
  secretAreaPtr(): number;
  setSecret(secretLength: number): number;
  hashPages(pageCount: number, continueScope: number): number;
  hashBytes(length: number): number;
  hashAndCompressChunks(chunkCount: number, continueScope: number): number;
  compressChunks(chunkCount: number): number;
  decodeChunks(chunkCount: number, verifyIds: number): number;
}

const REQUIRED_FUNCTIONS = [
  'inputAreaPtr', 'inputAreaBytes', 'outputAreaPtr', 'outputAreaBytes', 'idsAreaPtr', 'flagsAreaPtr',
  'formsAreaPtr', 'chunkTablePtr', 'maxChunksPerBatch', 'secretAreaPtr', 'setSecret', 'hashPages', 'hashBytes',
  'hashAndCompressChunks', 'compressChunks', 'decodeChunks',
] as const;

/** The chunk table of the batch calls: four u32 per chunk (wasm/codec.ts). */
const TABLE_ENTRY_WORDS = 4;
const ENTRY_INPUT_OFFSET = 0;
const ENTRY_INPUT_LENGTH = 1;
const ENTRY_OUTPUT_OFFSET = 2;
const ENTRY_OUTPUT_LENGTH = 3;

/** A fresh random secret for a new store. */
export function generateSecret(): Uint8Array {
  return new Uint8Array(randomBytes(SECRET_BYTES));
}


/** Compiled once per process; every PageCodec gets its own instance (and memory). */
let compiledCodec: WebAssembly.Module | undefined;
let compilingCodec: Promise<WebAssembly.Module> | undefined;

function codecWasmPath(): string {
  return join(packageRoot(), CODEC_WASM_PATH);
}

function readError(wasmPath: string, error: unknown): CodecLoadError {
  return new CodecLoadError(`Cannot read the page codec at ${wasmPath}; build it with "npm run build:wasm".`, { cause: error });
}

function compileError(wasmPath: string, error: unknown): CodecLoadError {
  return new CodecLoadError(
    `The page codec at ${wasmPath} is not a valid WebAssembly module (it needs SIMD support); rebuild it with "npm run build:wasm".`,
    { cause: error },
  );
}

async function compileCodec(): Promise<WebAssembly.Module> {
  const wasmPath = codecWasmPath();
  const bytes = await readFile(wasmPath).catch((error: unknown) => {
    throw readError(wasmPath, error);
  });
  try {
    return await WebAssembly.compile(bytes);
  } catch (error) {
    throw compileError(wasmPath, error);
  }
}

function loadCodecModule(): Promise<WebAssembly.Module> {
  if (compiledCodec) return Promise.resolve(compiledCodec);
  compilingCodec ??= compileCodec().then(
    (module) => {
      compiledCodec = module;
      return module;
    },
    (error: unknown) => {
      // Forget the failure so a later call can succeed once the wasm is built.
      compilingCodec = undefined;
      throw error;
    },
  );
  return compilingCodec;
}

/** The same module, compiled synchronously (for callers that cannot await). */
function loadCodecModuleSync(): WebAssembly.Module {
  if (compiledCodec) return compiledCodec;
  const wasmPath = codecWasmPath();
  const bytes = (() => {
    try {
      return readFileSync(wasmPath);
    } catch (error) {
      throw readError(wasmPath, error);
    }
  })();
  try {
    compiledCodec = new WebAssembly.Module(bytes);
  } catch (error) {
    throw compileError(wasmPath, error);
  }
  return compiledCodec;
}

/** LZ4's worst case for `length` bytes (wasm/lz4.ts compressBound). */
function lz4CompressBound(length: number): number {
  return length + Math.floor(length / 255) + 16;
}

/** Throws InvalidSecretError unless `secret` is undefined or exactly SECRET_BYTES bytes. */
export function checkSecret(secret: Uint8Array | undefined): void {
  if (secret !== undefined && (!(secret instanceof Uint8Array) || secret.length !== SECRET_BYTES)) {
    const got = secret instanceof Uint8Array ? `${secret.length} bytes` : typeof secret;
    throw new InvalidSecretError(`A chunk-id secret must be exactly ${SECRET_BYTES} bytes; got ${got}.`);
  }
}

function checkExports(exports: WebAssembly.Exports): CodecExports {
  const missing = REQUIRED_FUNCTIONS.filter((name) => typeof exports[name] !== 'function');
  if (missing.length > 0 || !(exports.memory instanceof WebAssembly.Memory)) {
    throw new CodecLoadError(
      `The page codec build is out of date (missing ${missing.join(', ') || 'memory'}); rebuild it with "npm run build:wasm".`,
    );
  }
  return exports as unknown as CodecExports;
}

export class PageCodec {
  private readonly codec: CodecExports;
  /**
   * View of the whole WASM memory. The module sizes its memory once at
   * instantiation and never grows it, so this view never goes stale.
   */
  private readonly memory: Uint8Array;
  private readonly inputArea: number;
  private readonly outputArea: number;
  private readonly idsArea: number;
  private readonly flagsArea: number;
  private readonly formsArea: number;
  /** The batch calls' chunk table, TABLE_ENTRY_WORDS u32 per chunk. */
  private readonly chunkTable: Uint32Array;

  private constructor(codec: CodecExports) {
    this.codec = codec;
    this.memory = new Uint8Array(codec.memory.buffer);
    this.inputArea = codec.inputAreaPtr();
    this.outputArea = codec.outputAreaPtr();
    this.idsArea = codec.idsAreaPtr();
    this.flagsArea = codec.flagsAreaPtr();
    this.formsArea = codec.formsAreaPtr();
    this.chunkTable = new Uint32Array(codec.memory.buffer, codec.chunkTablePtr(), MAX_BATCH_CHUNKS * TABLE_ENTRY_WORDS);
    assert(this.inputArea + codec.inputAreaBytes() <= this.memory.length, 'the codec input area lies outside its memory');
    assert(this.outputArea + codec.outputAreaBytes() <= this.memory.length, 'the codec output area lies outside its memory');
  }

  /**
   * A codec hashing with `secret` (exactly SECRET_BYTES random bytes, e.g.
   * from generateSecret()), or unkeyed XXH3-128 when `secret` is undefined.
   */
  static async create(secret?: Uint8Array): Promise<PageCodec> {
    checkSecret(secret);
    const instance = await WebAssembly.instantiate(await loadCodecModule(), {});
    return PageCodec.fromInstance(instance, secret);
  }

  /** As create(), synchronously (reads and compiles the module on first use). */
  static createSync(secret?: Uint8Array): PageCodec {
    checkSecret(secret);
    return PageCodec.fromInstance(new WebAssembly.Instance(loadCodecModuleSync(), {}), secret);
  }

  private static fromInstance(instance: WebAssembly.Instance, secret: Uint8Array | undefined): PageCodec {
    const codec = checkExports(instance.exports);
    // Both data areas must hold the stored LZ4 form of the largest chunk.
    const areaBytes = LENGTH_PREFIX_BYTES + lz4CompressBound(MAX_CHUNK_BYTES);
    if (codec.inputAreaBytes() < areaBytes || codec.outputAreaBytes() < areaBytes ||
        codec.maxChunksPerBatch() < MAX_BATCH_CHUNKS) {
      throw new CodecLoadError(
        `The page codec build is smaller than this code needs (input area ${codec.inputAreaBytes()}, output area ${codec.outputAreaBytes()}, both at least ${areaBytes}; ${codec.maxChunksPerBatch()} chunks per batch, at least ${MAX_BATCH_CHUNKS}); rebuild it with "npm run build:wasm".`,
      );
    }
    const pageCodec = new PageCodec(codec);
    if (secret !== undefined) pageCodec.useSecret(secret);
    return pageCodec;
  }

  private useSecret(secret: Uint8Array): void {
    this.memory.set(secret, this.codec.secretAreaPtr());
    assert.equal(this.codec.setSecret(SECRET_BYTES), 1, 'the codec refused a secret of the size it declares');
  }

  // ------------------------------------------------------------ batches

  /**
   * The ingest step for a Raw batch (pages or blocks): gives every chunk its
   * id and PageFlag, and every Normal chunk its stored form: LZ4 when that
   * is strictly shorter than the chunk, else the raw bytes
   * (compression(i) says which). Zero and Duplicate chunks are not
   * compressed and store nothing. Duplicate detection spans the batch.
   * The batch becomes Hashed; its data now holds the stored forms.
   */
  hashAndCompress(batch: ChunkBatch): void {
    batch.expectPhase(BatchPhase.Raw, 'hashAndCompress');
    const count = batch.count;
    const { offsets, lengths, ids, flags, compression, data } = batch.internals();
    const table = this.chunkTable;
    // Groups of chunks of up to HASH_BATCH_BYTES (at least one chunk each)
    // go through WASM memory one after the other. Stored forms are written
    // back over the raw data in place: a group's stored bytes never exceed
    // its raw bytes, so they never reach the raw data of a later group.
    let storedEnd = 0;
    let groupStart = 0;
    for (let first = 0; first < count;) {
      assert.equal(offsets[first], groupStart, 'raw chunks lie back to back');
      let end = first + 1;
      while (end < count && offsets[end]! + lengths[end]! - groupStart <= HASH_BATCH_BYTES) end++;
      const groupCount = end - first;
      const groupEnd = offsets[end - 1]! + lengths[end - 1]!;
      this.memory.set(data.subarray(groupStart, groupEnd), this.inputArea);
      for (let i = 0; i < groupCount; i++) {
        table[i * TABLE_ENTRY_WORDS + ENTRY_INPUT_OFFSET] = offsets[first + i]! - groupStart;
        table[i * TABLE_ENTRY_WORDS + ENTRY_INPUT_LENGTH] = lengths[first + i]!;
      }
      const outputUsed = this.codec.hashAndCompressChunks(groupCount, first === 0 ? 0 : 1);
      assert(outputUsed >= 0 && outputUsed <= groupEnd - groupStart, `the codec refused a batch it should take (${outputUsed})`);
      for (let i = 0; i < groupCount; i++) {
        offsets[first + i] = storedEnd + table[i * TABLE_ENTRY_WORDS + ENTRY_OUTPUT_OFFSET]!;
        lengths[first + i] = table[i * TABLE_ENTRY_WORDS + ENTRY_OUTPUT_LENGTH]!;
      }
      ids.set(this.memory.subarray(this.idsArea, this.idsArea + groupCount * CHUNK_ID_BYTES), first * CHUNK_ID_BYTES);
      flags.set(this.memory.subarray(this.flagsArea, this.flagsArea + groupCount), first);
      compression.set(this.memory.subarray(this.formsArea, this.formsArea + groupCount), first);
      data.set(this.memory.subarray(this.outputArea, this.outputArea + outputUsed), storedEnd);
      storedEnd += outputUsed;
      groupStart = groupEnd;
      first = end;
    }
    batch.finishStep(BatchPhase.Hashed, storedEnd);
  }

  /**
   * The restore step for a Stored batch: turns every chunk back into its
   * raw bytes and checks them against its id. Throws CorruptChunkError
   * (with chunkIndex: the first bad chunk) when any chunk does not decode
   * into exactly its raw length or does not match its id; the batch is
   * then left as it was. Otherwise the batch becomes Decoded.
   */
  decodeAndVerify(batch: ChunkBatch): void {
    batch.expectPhase(BatchPhase.Stored, 'decodeAndVerify');
    const count = batch.count;
    const { offsets, lengths, rawLengths, ids, compression, data } = batch.internals();
    assert(batch.dataUsed <= this.codec.inputAreaBytes() && batch.rawTotal <= this.codec.outputAreaBytes(), 'a batch exceeds the codec areas');
    this.memory.set(data.subarray(0, batch.dataUsed), this.inputArea);
    const table = this.chunkTable;
    for (let i = 0; i < count; i++) {
      table[i * TABLE_ENTRY_WORDS + ENTRY_INPUT_OFFSET] = offsets[i]!;
      table[i * TABLE_ENTRY_WORDS + ENTRY_INPUT_LENGTH] = lengths[i]!;
      table[i * TABLE_ENTRY_WORDS + ENTRY_OUTPUT_LENGTH] = rawLengths[i]!;
    }
    this.memory.set(ids.subarray(0, count * CHUNK_ID_BYTES), this.idsArea);
    this.memory.set(compression.subarray(0, count), this.formsArea);
    const failures = this.codec.decodeChunks(count, 1);
    assert(failures >= 0, `the codec refused a batch it should take (${failures})`);
    if (failures > 0) {
      const statuses = this.memory.subarray(this.flagsArea, this.flagsArea + count);
      const index = statuses.findIndex((status) => status !== 0);
      throw new CorruptChunkError(
        `Chunk ${index} of the batch is corrupt: ${DECODE_FAILURES[statuses[index]!] ?? `decoder status ${statuses[index]}`}.`,
        { chunkIndex: index },
      );
    }
    for (let i = 0; i < count; i++) {
      offsets[i] = table[i * TABLE_ENTRY_WORDS + ENTRY_OUTPUT_OFFSET]!;
      lengths[i] = rawLengths[i]!;
    }
    data.set(this.memory.subarray(this.outputArea, this.outputArea + batch.rawTotal));
    batch.finishStep(BatchPhase.Decoded, batch.rawTotal);
  }

  // ------------------------------------------------------------ single chunks

  /**
   * The stored LZ4 form of one chunk (at most MAX_CHUNK_BYTES): the raw
   * length as u32 little-endian, then one LZ4 block, in a new array. Always
   * LZ4, even when that is not shorter than the chunk.
   */
  compress(raw: Uint8Array): Uint8Array {
    if (raw.length > MAX_CHUNK_BYTES) {
      throw new CodecInputError(`A chunk can be at most ${MAX_CHUNK_BYTES} bytes to be compressed; got ${raw.length}.`);
    }
    this.memory.set(raw, this.inputArea);
    this.chunkTable[ENTRY_INPUT_OFFSET] = 0;
    this.chunkTable[ENTRY_INPUT_LENGTH] = raw.length;
    const outputUsed = this.codec.compressChunks(1);
    assert(outputUsed > 0, `the codec refused a chunk it should take (${outputUsed})`);
    return this.memory.slice(this.outputArea, this.outputArea + outputUsed);
  }

  /**
   * Decodes the stored LZ4 form of a chunk whose raw length is rawLength
   * into a new array. Throws CorruptChunkError unless it decodes into
   * exactly rawLength bytes from a well-formed block; never returns partial
   * data. Does not check the id (see decodeAndVerify for that).
   */
  decompress(stored: Uint8Array, rawLength: number): Uint8Array {
    if (!Number.isSafeInteger(rawLength) || rawLength < 0 || rawLength > MAX_CHUNK_BYTES) {
      throw new CodecInputError(`A chunk's raw length must be an integer from 0 to ${MAX_CHUNK_BYTES}; got ${rawLength}.`);
    }
    if (stored.length > this.codec.inputAreaBytes()) {
      throw new CorruptChunkError(
        `Compressed chunk is corrupt: ${stored.length} bytes is more than any chunk of at most ${MAX_CHUNK_BYTES} bytes compresses to.`,
      );
    }
    this.memory.set(stored, this.inputArea);
    this.chunkTable[ENTRY_INPUT_OFFSET] = 0;
    this.chunkTable[ENTRY_INPUT_LENGTH] = stored.length;
    this.chunkTable[ENTRY_OUTPUT_LENGTH] = rawLength;
    this.memory[this.formsArea] = ChunkCompression.Lz4;
    const failures = this.codec.decodeChunks(1, 0);
    assert(failures === 0 || failures === 1, `the codec refused a chunk it should take (${failures})`);
    if (failures === 1) {
      const status = this.memory[this.flagsArea]!;
      throw new CorruptChunkError(`Compressed chunk is corrupt: ${DECODE_FAILURES[status] ?? `decoder status ${status}`}.`);
    }
    return this.memory.slice(this.outputArea, this.outputArea + rawLength);
  }

  // ------------------------------------------------------------ ids only

  /**
   * Hashes whole pages. For page i of `pages` (pages.length a multiple of
   * PAGE_SIZE, any count), writes its id to ids[16*i .. 16*i+16) and its
   * PageFlag to flags[i]. `ids` and `flags` must have room for every page
   * (16 bytes and 1 byte each); bytes past the last page are left alone, so
   * fixed-size buffers can serve shorter runs. Duplicate detection spans the
   * whole call.
   */
  hashPages(pages: Uint8Array, ids: Uint8Array, flags: Uint8Array): void {
    if (pages.length % PAGE_SIZE !== 0) {
      throw new CodecInputError(`Pages must come in whole ${PAGE_SIZE}-byte pages; got ${pages.length} bytes.`);
    }
    const pageCount = pages.length / PAGE_SIZE;
    if (ids.length < pageCount * CHUNK_ID_BYTES) {
      throw new CodecInputError(
        `The ids buffer must hold ${CHUNK_ID_BYTES} bytes per page (${pageCount * CHUNK_ID_BYTES} bytes for ${pageCount} pages); got ${ids.length}.`,
      );
    }
    if (flags.length < pageCount) {
      throw new CodecInputError(`The flags buffer must hold one byte per page (${pageCount}); got ${flags.length}.`);
    }
    for (let first = 0; first < pageCount; first += HASH_BATCH_PAGES) {
      const count = Math.min(HASH_BATCH_PAGES, pageCount - first);
      this.inputPages(count).set(pages.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE));
      this.hashInput(count, ids, flags, first, first > 0);
    }
  }

  /**
   * Room for pageCount pages (at most HASH_BATCH_PAGES) in the codec's own memory, to
   * fill (read into) and then hash there with hashInput(): no copy on the way in. Valid
   * until the codec's next call.
   */
  inputPages(pageCount: number): Uint8Array {
    assert(Number.isInteger(pageCount) && pageCount >= 1 && pageCount <= HASH_BATCH_PAGES, 'inputPages() takes 1 to HASH_BATCH_PAGES pages');
    return this.memory.subarray(this.inputArea, this.inputArea + pageCount * PAGE_SIZE);
  }

  /**
   * Hashes the pageCount pages filled into inputPages(pageCount): their ids go to ids and
   * their flags to flags, from page `at` on. continueScope: a page that repeats one of
   * the previous call's is flagged Duplicate too (the pages continue the same batch).
   */
  hashInput(pageCount: number, ids: Uint8Array, flags: Uint8Array, at = 0, continueScope = false): void {
    assert(pageCount >= 1 && pageCount <= HASH_BATCH_PAGES, 'hashInput() takes 1 to HASH_BATCH_PAGES pages');
    if (ids.length < (at + pageCount) * CHUNK_ID_BYTES || flags.length < at + pageCount) {
      throw new CodecInputError(`The ids and flags buffers must have room for pages ${at} to ${at + pageCount}; got ${ids.length} and ${flags.length} bytes.`);
    }
    assert.equal(this.codec.hashPages(pageCount, continueScope ? 1 : 0), 1, 'a hashing batch exceeded the codec input area');
    ids.set(this.memory.subarray(this.idsArea, this.idsArea + pageCount * CHUNK_ID_BYTES), at * CHUNK_ID_BYTES);
    flags.set(this.memory.subarray(this.flagsArea, this.flagsArea + pageCount), at);
  }

  /** The id of a chunk of any length up to MAX_CHUNK_BYTES (16 new bytes). */
  chunkId(data: Uint8Array): Uint8Array {
    if (data.length > MAX_CHUNK_BYTES) {
      throw new CodecInputError(`A chunk can be at most ${MAX_CHUNK_BYTES} bytes to be hashed; got ${data.length}.`);
    }
    this.memory.set(data, this.inputArea);
    assert.equal(this.codec.hashBytes(data.length), 1, 'a chunk exceeded the codec input area');
    return this.memory.slice(this.idsArea, this.idsArea + CHUNK_ID_BYTES);
  }
}
