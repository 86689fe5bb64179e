/**
 * LZ4 compression of chunks, through lz4-wasm-nodejs (lz4_flex compiled to
 * WASM).
 *
 * Stored format (what lz4-wasm-nodejs's compress() emits): a 4-byte
 * little-endian uncompressed length, then one raw LZ4 *block* (not an LZ4
 * frame: no magic number, no frame header, no checksum). Any LZ4 block
 * decoder reads it after skipping the 4-byte prefix. Integrity is not the
 * format's job: chunk ids are checked against the decompressed bytes.
 *
 * Each call allocates its result; lz4-wasm-nodejs offers no way to compress
 * into caller-provided memory.
 */
import { compress, decompress } from 'lz4-wasm-nodejs';

import { CodecInputError, CorruptChunkError } from './errors.js';
import { MAX_CHUNK_BYTES } from './page-codec.js';

/** Bytes of the little-endian uncompressed-length prefix. */
const LENGTH_PREFIX_BYTES = 4;

/** Compresses one chunk (at most MAX_CHUNK_BYTES) into the stored format above. */
export function compressChunk(raw: Uint8Array): Uint8Array {
  if (raw.length > MAX_CHUNK_BYTES) {
    throw new CodecInputError(`A chunk can be at most ${MAX_CHUNK_BYTES} bytes to be compressed; got ${raw.length}.`);
  }
  return compress(raw);
}

/**
 * Decompresses a chunk made by compressChunk() whose original length is
 * rawLength. Throws CorruptChunkError unless the result is exactly rawLength
 * bytes decoded from a well-formed block; never returns partial data.
 */
export function decompressChunk(compressed: Uint8Array, rawLength: number): Uint8Array {
  if (!Number.isSafeInteger(rawLength) || rawLength < 0 || rawLength > MAX_CHUNK_BYTES) {
    throw new CodecInputError(`A chunk's raw length must be an integer from 0 to ${MAX_CHUNK_BYTES}; got ${rawLength}.`);
  }
  if (compressed.length < LENGTH_PREFIX_BYTES) {
    throw new CorruptChunkError(
      `Compressed chunk is corrupt: ${compressed.length} bytes is shorter than its ${LENGTH_PREFIX_BYTES}-byte length header.`,
    );
  }
  // Check the declared length before decoding: the decoder allocates what the
  // header says, and a damaged header could ask for gigabytes.
  const declaredLength = new DataView(compressed.buffer, compressed.byteOffset, compressed.byteLength).getUint32(0, true);
  if (declaredLength !== rawLength) {
    throw new CorruptChunkError(
      `Compressed chunk is corrupt: its header says ${declaredLength} bytes, but the chunk is ${rawLength} bytes.`,
    );
  }
  let raw: Uint8Array;
  try {
    raw = decompress(compressed);
  } catch (error) {
    // lz4-wasm-nodejs throws plain strings for bad input; a WASM trap would be a RuntimeError.
    const reason = error instanceof Error ? error.message : String(error);
    throw new CorruptChunkError(`Compressed chunk is corrupt: LZ4 decoding failed (${reason}).`, { cause: error });
  }
  if (raw.length !== rawLength) {
    throw new CorruptChunkError(`Compressed chunk is corrupt: it decoded to ${raw.length} bytes instead of ${rawLength}.`);
  }
  return raw;
}
