// Batch calls of the page codec: ChunkBatch phases, PageCodec.hashAndCompress
// (ids, flags, stored forms, the raw fallback) and decodeAndVerify (raw bytes
// back, ids checked).
//
// Needs build/wasm/codec.wasm (npm run build:wasm).
import { randomBytes } from 'node:crypto';

import { beforeAll, describe, expect, it } from 'vitest';

import { BatchPhase, ChunkBatch, ChunkCompression } from '../../src/codec/chunk-batch.js';
import { CodecInputError, CorruptChunkError } from '../../src/codec/errors.js';
import { decompressChunk } from '../../src/codec/lz4.js';
import { MAX_BATCH_BYTES, MAX_BATCH_CHUNKS } from '../../src/codec/limits.js';
import { CHUNK_ID_BYTES, PAGE_SIZE, PageCodec, PageFlag, generateSecret } from '../../src/codec/page-codec.js';
import { samplePages } from '../../src/codec/sample-pages.js';

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

let codec: PageCodec;
beforeAll(async () => {
  codec = await PageCodec.create(generateSecret());
});

/** A Raw batch holding `pages` (whole pages, one chunk each). */
function pageBatch(pages: Uint8Array): ChunkBatch {
  const batch = ChunkBatch.create();
  batch.addPages(pages.length / PAGE_SIZE).set(pages);
  return batch;
}

/** A Stored batch made from a Hashed one: its stored chunks, as a store would hand them back. */
function storedBatchFrom(hashed: ChunkBatch): ChunkBatch {
  const stored = ChunkBatch.create();
  for (let i = 0; i < hashed.count; i++) {
    if (hashed.flag(i) !== PageFlag.Normal) continue;
    stored.addStoredCopy(hashed.id(i), hashed.stored(i), hashed.rawLength(i), hashed.compression(i));
  }
  return stored;
}

describe('hashAndCompress', () => {
  it('gives every page the id hashPages gives it, and its stored form', () => {
    const pages = samplePages(300);
    const batch = pageBatch(pages);
    codec.hashAndCompress(batch);
    expect(batch.phase).toBe(BatchPhase.Hashed);

    const ids = new Uint8Array(300 * CHUNK_ID_BYTES);
    const flags = new Uint8Array(300);
    codec.hashPages(pages, ids, flags);
    let storedTotal = 0;
    for (let i = 0; i < 300; i++) {
      const raw = pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
      expect(hex(batch.id(i)), `page ${i}`).toBe(hex(ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES)));
      expect(batch.flag(i), `page ${i}`).toBe(flags[i]);
      const stored = batch.stored(i);
      storedTotal += stored.length;
      if (batch.compression(i) === ChunkCompression.Lz4) {
        expect(stored.length, `page ${i}`).toBeLessThan(PAGE_SIZE);
        expect(hex(decompressChunk(stored, PAGE_SIZE)), `page ${i}`).toBe(hex(raw));
      } else {
        expect(hex(stored), `page ${i}`).toBe(hex(raw));
      }
    }
    expect(batch.dataUsed).toBe(storedTotal);
  });

  it('stores a page raw when LZ4 does not make it strictly shorter', () => {
    const random = new Uint8Array(randomBytes(PAGE_SIZE));
    const text = new Uint8Array(Buffer.from('a checkpoint of a long job, '.repeat(200)).subarray(0, PAGE_SIZE));
    const batch = pageBatch(Buffer.concat([random, text]));
    codec.hashAndCompress(batch);
    expect(batch.compression(0)).toBe(ChunkCompression.None);
    expect(hex(batch.stored(0))).toBe(hex(random));
    expect(batch.compression(1)).toBe(ChunkCompression.Lz4);
    expect(batch.stored(1).length).toBeLessThan(PAGE_SIZE / 4);
  });

  it('calls a page zero exactly when every byte is zero, and stores nothing for it', () => {
    // Page k (k < 1024) has one nonzero byte at offset 4*k + 3; then one all-zero page.
    const pageCount = MAX_BATCH_CHUNKS;
    const pages = new Uint8Array(MAX_BATCH_BYTES);
    for (let k = 0; k < pageCount - 1; k++) pages[k * PAGE_SIZE + ((4 * k + 3) % PAGE_SIZE)] = (k % 255) + 1;
    const batch = pageBatch(pages);
    codec.hashAndCompress(batch);
    for (let k = 0; k < pageCount - 1; k++) {
      if (batch.flag(k) === PageFlag.Zero) expect.fail(`page ${k} has a nonzero byte but was called zero`);
    }
    expect(batch.flag(pageCount - 1)).toBe(PageFlag.Zero);
    expect(batch.stored(pageCount - 1).length).toBe(0);
    expect(hex(batch.id(pageCount - 1))).toBe(hex(codec.chunkId(new Uint8Array(PAGE_SIZE))));
  });

  it('marks repeats within the batch as duplicates and stores them once', () => {
    const [a, b] = [1, 2].map((seed) => samplePages(1, seed));
    const batch = pageBatch(Buffer.concat([a!, b!, a!, a!]));
    codec.hashAndCompress(batch);
    expect([0, 1, 2, 3].map((i) => batch.flag(i))).toEqual([PageFlag.Normal, PageFlag.Normal, PageFlag.Duplicate, PageFlag.Duplicate]);
    expect(batch.stored(2).length).toBe(0);
    expect(hex(batch.id(2))).toBe(hex(batch.id(0)));
  });

  it('hashes and compresses chunks of any length like single calls', () => {
    const lengths = [0, 1, 12, 13, 100, 4095, 4097, 65536, 65536, 1000];
    const batch = ChunkBatch.create();
    const chunks = lengths.map((length, i) => {
      const chunk = i % 2 === 0 ? samplePages(17, i).subarray(0, length) : new Uint8Array(randomBytes(length));
      batch.addRaw(length).set(chunk);
      return chunk;
    });
    codec.hashAndCompress(batch);
    chunks.forEach((chunk, i) => {
      expect(hex(batch.id(i)), `chunk ${i}`).toBe(hex(codec.chunkId(chunk)));
      if (batch.flag(i) !== PageFlag.Normal) return;
      const stored = batch.stored(i);
      const raw = batch.compression(i) === ChunkCompression.Lz4 ? decompressChunk(stored, chunk.length) : stored;
      expect(hex(raw), `chunk ${i}`).toBe(hex(chunk));
    });
    // The empty chunk is all zero; so is nothing else here.
    expect(batch.flag(0)).toBe(PageFlag.Zero);
  });

  it('works in place on a full batch of incompressible pages', () => {
    const pages = new Uint8Array(randomBytes(MAX_BATCH_BYTES));
    const batch = pageBatch(pages);
    codec.hashAndCompress(batch);
    expect(batch.dataUsed).toBe(MAX_BATCH_BYTES);
    for (let i = 0; i < batch.count; i++) expect(batch.compression(i)).toBe(ChunkCompression.None);
    expect(hex(batch.stored(MAX_BATCH_CHUNKS - 1))).toBe(hex(pages.subarray(MAX_BATCH_BYTES - PAGE_SIZE)));
  });
});

describe('decodeAndVerify', () => {
  it('gives back every stored chunk exactly', () => {
    const pages = samplePages(500, 3);
    const hashed = pageBatch(pages);
    codec.hashAndCompress(hashed);
    const stored = storedBatchFrom(hashed);
    codec.decodeAndVerify(stored);
    expect(stored.phase).toBe(BatchPhase.Decoded);
    let decoded = 0;
    for (let i = 0; i < hashed.count; i++) {
      if (hashed.flag(i) !== PageFlag.Normal) continue;
      expect(hex(stored.raw(decoded)), `page ${i}`).toBe(hex(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)));
      expect(hex(stored.id(decoded))).toBe(hex(hashed.id(i)));
      decoded++;
    }
    expect(decoded).toBe(stored.count);
  });

  it('names the first bad chunk, and leaves the batch as it was', () => {
    const hashed = pageBatch(samplePages(10, 4));
    codec.hashAndCompress(hashed);
    const cases: Array<[string, (stored: Uint8Array) => void, RegExp]> = [
      ['a changed literal', (stored) => { stored[stored.length - 1]! ^= 0x40; }, /does not hash to its id/],
      ['a wrong length header', (stored) => { stored[0]! ^= 1; }, /length header/],
      ['a damaged first token', (stored) => { stored[4] = 0xff; }, /corrupt/],
    ];
    for (const [name, damage, message] of cases) {
      const batch = storedBatchFrom(hashed);
      // Damage an LZ4 chunk that is not the first, so the index means something.
      const target = [...Array(batch.count).keys()].find((i) => i > 0 && batch.compression(i) === ChunkCompression.Lz4)!;
      damage(batch.stored(target));
      const before = hex(batch.internals().data.subarray(0, batch.dataUsed));
      let caught: unknown;
      try {
        codec.decodeAndVerify(batch);
      } catch (error) {
        caught = error;
      }
      expect(caught, name).toBeInstanceOf(CorruptChunkError);
      expect((caught as CorruptChunkError).chunkIndex, name).toBe(target);
      expect((caught as Error).message, name).toMatch(message);
      expect(batch.phase, name).toBe(BatchPhase.Stored);
      expect(hex(batch.internals().data.subarray(0, batch.dataUsed)), name).toBe(before);
    }
  });

  it('checks raw chunks against their ids too', () => {
    const raw = new Uint8Array(randomBytes(PAGE_SIZE));
    const batch = ChunkBatch.create();
    batch.addStoredCopy(codec.chunkId(raw), raw, PAGE_SIZE, ChunkCompression.None);
    const damaged = raw.slice();
    damaged[7]! ^= 1;
    batch.addStoredCopy(codec.chunkId(raw), damaged, PAGE_SIZE, ChunkCompression.None);
    expect(() => codec.decodeAndVerify(batch)).toThrow(CorruptChunkError);
  });
});

describe('ChunkBatch', () => {
  it('refuses what does not fit and accessors of the wrong phase', () => {
    const batch = ChunkBatch.create(4, 3 * PAGE_SIZE);
    batch.addPages(2);
    expect(() => batch.addPages(2)).toThrow(CodecInputError);
    expect(() => batch.addStored(new Uint8Array(CHUNK_ID_BYTES), 10, 10, ChunkCompression.Lz4)).toThrow(CodecInputError);
    expect(() => batch.id(0)).toThrow(CodecInputError);
    expect(() => batch.raw(2)).toThrow(CodecInputError);
    expect(() => codec.decodeAndVerify(batch)).toThrow(CodecInputError);
    batch.addRaw(PAGE_SIZE);
    expect(() => batch.addRaw(0)).not.toThrow();
    expect(() => batch.addRaw(0)).toThrow(CodecInputError);
    batch.clear();
    expect(batch.count).toBe(0);
    expect(() => ChunkBatch.create(MAX_BATCH_CHUNKS + 1)).toThrow(CodecInputError);
    expect(() => ChunkBatch.create(1, MAX_BATCH_BYTES + 1)).toThrow(CodecInputError);
  });

  it('survives a trip through its buffer alone', () => {
    const batch = pageBatch(samplePages(3));
    const copy = ChunkBatch.over(batch.lend().slice(0));
    expect(copy.count).toBe(3);
    expect(() => batch.count).toThrow(CodecInputError);
    codec.hashAndCompress(copy);
    expect(copy.phase).toBe(BatchPhase.Hashed);
  });
});
