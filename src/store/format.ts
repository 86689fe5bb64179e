// On-disk format constants of a crinc store. docs/FORMAT.md describes the layout; any
// change to it bumps STORE_FORMAT_VERSION.

export const STORE_FORMAT_VERSION = 5;
/** Pack headers carry the store format version they were written under: 1 to 5, same layout. */
export const OLDEST_PACK_FORMAT_VERSION = 1;

export const INDEX_FILE = 'index.sqlite';
export const PACKS_DIR = 'packs';
export const JOBS_DIR = 'jobs';
export const LOCKS_DIR = 'locks';
export const CHECKPOINTS_DIR = 'checkpoints';
/** Writer journals: packs a running process may leave behind (src/store/journal.ts). */
export const WRITERS_DIR = 'writers';

export const PACK_MAGIC = Buffer.from('CRINCPK1', 'ascii');
export const PACK_TRAILER_MAGIC = Buffer.from('CRINCEND', 'ascii');
export const PACK_HEADER_BYTES = 16; // magic(8) + format version u32 + reserved u32
export const BLOB_HEADER_BYTES = 28; // id(16) + raw length u32 + stored length u32 + compression u8 + reserved(3)
export const PACK_TRAILER_BYTES = 16; // blob count u32 + reserved u32 + trailer magic(8)
/** A pack is closed once it holds this many bytes: big enough for sequential I/O, small enough to repack. */
export const PACK_TARGET_BYTES = 64 * 1024 * 1024;
export const PACK_SUFFIX = '.pack';
export const PACK_INDEX_SUFFIX = '.idx';

import { CHUNK_ID_BYTES, PAGE_SIZE } from '../codec/limits.js';

/** The chunk id's size and the page size are the codec's: one definition. */
export { CHUNK_ID_BYTES };
/** The id that stands for an all-zero chunk (a hole): never stored, never read. */
export const ZERO_CHUNK_ID = new Uint8Array(CHUNK_ID_BYTES);
export const PAGE_BYTES = PAGE_SIZE;
/** Non-page files (CRIU's small images, the job's files) are cut into blocks of this size. */
export const FILE_BLOCK_BYTES = 64 * 1024;
/** A manifest longer than this many ids is stored as chunks of ids itself. */
export const MANIFEST_INLINE_IDS = 4096;

export enum Compression {
  None = 0,
  Lz4 = 1,
}

/** The format of store.json, the .idx chunk tables and the checkpoint objects (apart from the index's version). */
export const OBJECT_FORMAT = 1;
/** A pack's chunk table (.idx): a header, then one entry per blob in pack order. */
export const PACK_INDEX_MAGIC = Buffer.from('CRINCIX1', 'ascii');
export const PACK_INDEX_HEADER_BYTES = 24; // magic(8) + format version u32 + chunk count u32 + pack bytes u64
export const PACK_INDEX_ENTRY_BYTES = 32; // id(16) + data offset u32 + stored length u32 + raw length u32 + compression u8 + reserved(3)

export function writePackIndexHeader(out: Buffer, count: number, packBytes: number): void {
  PACK_INDEX_MAGIC.copy(out, 0);
  out.writeUInt32LE(OBJECT_FORMAT, 8);
  out.writeUInt32LE(count, 12);
  out.writeBigUInt64LE(BigInt(packBytes), 16);
}

/**
 * Writes the .idx entry of a blob at `at` of `out` (the id from ids[idAt..]). Byte by byte:
 * it runs once per chunk stored (262,144 times per GiB, inside the freeze), where a view
 * per id and Buffer's write calls cost more.
 */
export function writePackIndexEntry(out: Uint8Array, at: number, ids: Uint8Array, idAt: number, offset: number, storedLength: number, rawLength: number, compression: number): void {
  copyId(ids, idAt, out, at);
  putU32LE(out, at + 16, offset);
  putU32LE(out, at + 20, storedLength);
  putU32LE(out, at + 24, rawLength);
  putU32LE(out, at + 28, compression); // compression u8 + 3 reserved zero bytes
}

/** Copies the id at from[fromAt..] to to[toAt..]. */
export function copyId(from: Uint8Array, fromAt: number, to: Uint8Array, toAt: number): void {
  for (let i = 0; i < CHUNK_ID_BYTES; i++) to[toAt + i] = from[fromAt + i]!;
}

/** Stores the u32 `value` little-endian at out[at..]. */
export function putU32LE(out: Uint8Array, at: number, value: number): void {
  out[at] = value;
  out[at + 1] = value >>> 8;
  out[at + 2] = value >>> 16;
  out[at + 3] = value >>> 24;
}
