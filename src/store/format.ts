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

export const enum Compression {
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

/** Writes the .idx entry of a blob at `at` of `out` (the id from ids[idAt..]). */
export function writePackIndexEntry(out: Buffer, at: number, ids: Uint8Array, idAt: number, offset: number, storedLength: number, rawLength: number, compression: number): void {
  out.set(ids.subarray(idAt, idAt + CHUNK_ID_BYTES), at);
  out.writeUInt32LE(offset, at + 16);
  out.writeUInt32LE(storedLength, at + 20);
  out.writeUInt32LE(rawLength, at + 24);
  out.writeUInt32LE(compression, at + 28); // compression u8 + 3 reserved zero bytes
}
