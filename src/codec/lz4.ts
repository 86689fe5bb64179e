/**
 * LZ4 compression of single chunks, in the stored format of docs/FORMAT.md:
 * a 4-byte little-endian uncompressed length, then one raw LZ4 *block* (not
 * an LZ4 frame: no magic number, no frame header, no checksum). This is
 * byte-compatible with what lz4-wasm-nodejs's compress() emits and reads,
 * so stores written with it stay readable; any LZ4 block decoder reads it
 * after skipping the 4-byte prefix. Integrity is not the format's job:
 * chunk ids are checked against the decompressed bytes.
 *
 * The work is done by the codec's own LZ4 (wasm/lz4.ts) in one WASM
 * instance shared by these functions. Each call allocates its result; for
 * many chunks use the batch calls of PageCodec (or CodecPool) instead.
 */
import { PageCodec } from './page-codec.js';

/** Created on first use: compression needs no secret, so one instance serves every store. */
let sharedCodec: PageCodec | undefined;

function codec(): PageCodec {
  sharedCodec ??= PageCodec.createSync();
  return sharedCodec;
}

/** Compresses one chunk (at most MAX_CHUNK_BYTES) into the stored format above. */
export function compressChunk(raw: Uint8Array): Uint8Array {
  return codec().compress(raw);
}

/**
 * Decompresses a chunk made by compressChunk() whose original length is
 * rawLength. Throws CorruptChunkError unless the result is exactly rawLength
 * bytes decoded from a well-formed block; never returns partial data.
 */
export function decompressChunk(compressed: Uint8Array, rawLength: number): Uint8Array {
  return codec().decompress(compressed, rawLength);
}
