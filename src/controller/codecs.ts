// The codec as the store sees it: keyed ids from the WASM module, LZ4 for bodies.
import { compressChunk, decompressChunk } from '../codec/lz4.js';
import { PageCodec } from '../codec/page-codec.js';
import { CodecPool } from '../codec/pool.js';
import type { ChunkCodec, Repository } from '../store/repository.js';

export interface Codecs {
  pages: PageCodec;
  chunks: ChunkCodec;
  /** Workers for compression and decompression with id checks, one per core. */
  pool: CodecPool;
}

export async function openCodecs(repo: Repository): Promise<Codecs> {
  const pages = await PageCodec.create(repo.secret);
  return {
    pages,
    pool: await CodecPool.create(repo.secret),
    chunks: {
      chunkId: (data) => pages.chunkId(data),
      compress: compressChunk,
      decompress: decompressChunk,
    },
  };
}
