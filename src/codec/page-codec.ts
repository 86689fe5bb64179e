/**
 * JS side of the WASM page codec (wasm/codec.ts): keyed XXH3-128 chunk ids
 * for 4 KiB pages and for arbitrary chunks, with zero-page and in-call
 * duplicate detection.
 *
 * A chunk id is XXH3-128 ("withSecret" variant, seed 0) of the chunk's bytes
 * under the store's 192-byte secret, in the canonical XXH128 byte order (high
 * 64 bits big-endian, then low 64 bits big-endian). Without a secret the id is
 * the standard unkeyed XXH3_128bits() result.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { CodecInputError, CodecLoadError, InvalidSecretError } from './errors.js';

export const PAGE_SIZE = 4096;
export const CHUNK_ID_BYTES = 16;
export const SECRET_BYTES = 192;

/** Largest input chunkId() accepts: the size of the WASM input area. */
export const MAX_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * Pages copied into WASM memory per internal hashing step. 256 KiB keeps the
 * copied batch in L2 while it is hashed; measured faster than 1–4 MiB batches
 * (which spill to L3 between the copy and the hash).
 */
export const HASH_BATCH_BYTES = 256 * 1024;
const PAGES_PER_BATCH = HASH_BATCH_BYTES / PAGE_SIZE;

/** The wasm build output, relative to the package root. */
const CODEC_WASM_PATH = join('build', 'wasm', 'codec.wasm');

/** Per-page flag written by PageCodec.hashPages(). */
export const PageFlag = {
  /** Ordinary page. */
  Normal: 0,
  /** Every byte is zero. Its id is still the page's true hash. */
  Zero: 1,
  /**
   * Same id as an earlier nonzero page of the same hashPages() call. A hint:
   * always right when set, but the codec remembers only the first
   * DEDUP_MAX_ENTRIES (wasm/codec.ts: 32768) distinct ids of a call, and
   * copies of ids first seen after that are reported as Normal.
   */
  Duplicate: 2,
} as const;
export type PageFlag = (typeof PageFlag)[keyof typeof PageFlag];

/** The exports of build/wasm/codec.wasm (AssemblyScript bools are i32 0/1). */
interface CodecExports {
  memory: WebAssembly.Memory;
  inputAreaPtr(): number;
  inputAreaBytes(): number;
  idsAreaPtr(): number;
  flagsAreaPtr(): number;
  secretAreaPtr(): number;
  setSecret(secretLength: number): number;
  hashPages(pageCount: number, continueScope: number): number;
  hashBytes(length: number): number;
}

const REQUIRED_FUNCTIONS = [
  'inputAreaPtr', 'inputAreaBytes', 'idsAreaPtr', 'flagsAreaPtr', 'secretAreaPtr',
  'setSecret', 'hashPages', 'hashBytes',
] as const;

/** A fresh random secret for a new store. */
export function generateSecret(): Uint8Array {
  return new Uint8Array(randomBytes(SECRET_BYTES));
}

/** Nearest folder at or above this module that holds a package.json. */
function findPackageRoot(): string {
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) {
      throw new CodecLoadError(`Cannot find the crinc package root: no package.json in ${start} or any folder above it.`);
    }
  }
}

/** Compiled once per process; every PageCodec gets its own instance (and memory). */
let compiledCodec: Promise<WebAssembly.Module> | undefined;

async function compileCodec(): Promise<WebAssembly.Module> {
  const wasmPath = join(findPackageRoot(), CODEC_WASM_PATH);
  const bytes = await readFile(wasmPath).catch((error: unknown) => {
    throw new CodecLoadError(
      `Cannot read the page codec at ${wasmPath}; build it with "npm run build:wasm".`,
      { cause: error },
    );
  });
  try {
    return await WebAssembly.compile(bytes);
  } catch (error) {
    throw new CodecLoadError(
      `The page codec at ${wasmPath} is not a valid WebAssembly module (it needs SIMD support); rebuild it with "npm run build:wasm".`,
      { cause: error },
    );
  }
}

function loadCodecModule(): Promise<WebAssembly.Module> {
  compiledCodec ??= compileCodec().catch((error: unknown) => {
    // Forget the failure so a later call can succeed once the wasm is built.
    compiledCodec = undefined;
    throw error;
  });
  return compiledCodec;
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
  private readonly idsArea: number;
  private readonly flagsArea: number;

  private constructor(codec: CodecExports) {
    this.codec = codec;
    this.memory = new Uint8Array(codec.memory.buffer);
    this.inputArea = codec.inputAreaPtr();
    this.idsArea = codec.idsAreaPtr();
    this.flagsArea = codec.flagsAreaPtr();
    assert(this.inputArea + codec.inputAreaBytes() <= this.memory.length, 'the codec input area lies outside its memory');
  }

  /**
   * A codec hashing with `secret` (exactly SECRET_BYTES random bytes, e.g.
   * from generateSecret()), or unkeyed XXH3-128 when `secret` is undefined.
   */
  static async create(secret?: Uint8Array): Promise<PageCodec> {
    if (secret !== undefined && (!(secret instanceof Uint8Array) || secret.length !== SECRET_BYTES)) {
      const got = secret instanceof Uint8Array ? `${secret.length} bytes` : typeof secret;
      throw new InvalidSecretError(`A chunk-id secret must be exactly ${SECRET_BYTES} bytes; got ${got}.`);
    }
    const instance = await WebAssembly.instantiate(await loadCodecModule(), {});
    const codec = checkExports(instance.exports);
    const inputBytes = codec.inputAreaBytes();
    const neededBytes = Math.max(MAX_CHUNK_BYTES, HASH_BATCH_BYTES);
    if (inputBytes < neededBytes) {
      throw new CodecLoadError(
        `The page codec build has a ${inputBytes}-byte input area, smaller than this code needs (${neededBytes}); rebuild it with "npm run build:wasm".`,
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
    for (let first = 0; first < pageCount; first += PAGES_PER_BATCH) {
      const count = Math.min(PAGES_PER_BATCH, pageCount - first);
      this.memory.set(pages.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE), this.inputArea);
      const continueScope = first === 0 ? 0 : 1;
      assert.equal(this.codec.hashPages(count, continueScope), 1, 'a hashing batch exceeded the codec input area');
      ids.set(this.memory.subarray(this.idsArea, this.idsArea + count * CHUNK_ID_BYTES), first * CHUNK_ID_BYTES);
      flags.set(this.memory.subarray(this.flagsArea, this.flagsArea + count), first);
    }
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
