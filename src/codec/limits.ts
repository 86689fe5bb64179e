/**
 * Sizes shared by the codec's modules. The WASM module (wasm/codec.ts) has
 * the same limits; PageCodec checks at load time that its build agrees.
 */

export const PAGE_SIZE = 4096;
export const CHUNK_ID_BYTES = 16;
export const SECRET_BYTES = 192;

/** Largest chunk the codec hashes or compresses: the WASM raw batch size. */
export const MAX_CHUNK_BYTES = 4 * 1024 * 1024;

/** Most chunks in one batch call (wasm/codec.ts MAX_CHUNKS_PER_BATCH). */
export const MAX_BATCH_CHUNKS = 1024;
/** Most data bytes in one batch call (wasm/codec.ts MAX_RAW_BYTES). */
export const MAX_BATCH_BYTES = MAX_CHUNK_BYTES;
