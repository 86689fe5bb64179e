// A pack's chunk table read back from the store directory: its .idx when present and
// sound, else from the pack's own blob headers (packs written before format 4 have no
// .idx). Used by catch-up and by `crinc repair` to index packs without the index.
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { BLOB_HEADER_BYTES, CHUNK_ID_BYTES, OLDEST_PACK_FORMAT_VERSION, PACK_MAGIC, PACK_HEADER_BYTES, PACK_TRAILER_BYTES, PACK_TRAILER_MAGIC, STORE_FORMAT_VERSION } from './format.js';
import { decodePackIndex } from './objects.js';
import { PackedChunks, packPath, packTablePath } from './pack.js';

/** Blob headers are read in spans of this size while a pack is scanned. */
const SCAN_SPAN_BYTES = 1024 * 1024;

export type PackTableResult = { ok: true; bytes: number; chunks: PackedChunks } | { ok: false; problem: string; missing: boolean };

export function readPackTable(storeDir: string, name: string): PackTableResult {
  let fd: number;
  try {
    fd = openSync(packPath(storeDir, name), 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { ok: false, problem: 'the pack file is missing', missing: true };
    throw e;
  }
  try {
    const size = fstatSync(fd).size;
    const fromIdx = readIdx(storeDir, name, size);
    return fromIdx ?? scanPack(fd, size);
  } finally {
    closeSync(fd);
  }
}

/** What is wrong with a pack's header and trailer (magics, version), if anything. */
export function packFrameProblem(header: Buffer, trailer: Buffer): string | undefined {
  if (!header.subarray(0, 8).equals(PACK_MAGIC)) return 'bad header magic';
  const version = header.readUInt32LE(8);
  if (version < OLDEST_PACK_FORMAT_VERSION || version > STORE_FORMAT_VERSION) return `unknown pack format version ${version}`;
  if (!trailer.subarray(8).equals(PACK_TRAILER_MAGIC)) return 'bad trailer magic';
  return undefined;
}

function readIdx(storeDir: string, name: string, size: number): PackTableResult | undefined {
  const path = packTablePath(storeDir, name);
  let body: Buffer;
  try {
    body = readFileSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const t = decodePackIndex(body, path);
    return t.packBytes === size ? { ok: true, bytes: size, chunks: t.chunks } : undefined;
  } catch {
    return undefined; // a damaged chunk table: the pack's own headers say the same
  }
}

/** Walks the blob headers from the pack header to the trailer; any inconsistency makes the pack unusable. */
function scanPack(fd: number, size: number): PackTableResult {
  if (size < PACK_HEADER_BYTES + PACK_TRAILER_BYTES) return { ok: false, problem: `the file is too short for a pack (${size} bytes)`, missing: false };
  const header = Buffer.alloc(PACK_HEADER_BYTES);
  const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
  readSync(fd, header, 0, header.length, 0);
  readSync(fd, trailer, 0, trailer.length, size - PACK_TRAILER_BYTES);
  const frame = packFrameProblem(header, trailer);
  if (frame) return { ok: false, problem: frame, missing: false };
  const end = size - PACK_TRAILER_BYTES;
  const chunks = new PackedChunks();
  const span = Buffer.alloc(SCAN_SPAN_BYTES);
  let spanStart = 0;
  let spanEnd = 0;
  for (let at = PACK_HEADER_BYTES; at < end; ) {
    if (at + BLOB_HEADER_BYTES > end) return { ok: false, problem: `a blob header at ${at} runs into the trailer`, missing: false };
    if (at < spanStart || at + BLOB_HEADER_BYTES > spanEnd) {
      spanStart = at;
      spanEnd = at + readSync(fd, span, 0, Math.min(span.length, end - at), at);
    }
    const h = span.subarray(at - spanStart, at - spanStart + BLOB_HEADER_BYTES);
    const raw = h.readUInt32LE(16);
    const stored = h.readUInt32LE(20);
    const compression = h[24]!;
    const data = at + BLOB_HEADER_BYTES;
    if (data + stored > end || compression > 1) return { ok: false, problem: `the blob header at ${at} is damaged`, missing: false };
    chunks.push(h.subarray(0, CHUNK_ID_BYTES), data, stored, raw, compression);
    at = data + stored;
  }
  if (trailer.readUInt32LE(0) !== chunks.count) return { ok: false, problem: `the trailer counts ${trailer.readUInt32LE(0)} blobs, the pack holds ${chunks.count}`, missing: false };
  return { ok: true, bytes: size, chunks };
}
