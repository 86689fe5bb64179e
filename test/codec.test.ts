// Page codec: chunk ids against two independent XXH3 implementations
// (hash-wasm for unkeyed ids, the C libxxhash for keyed ids), zero and
// duplicate flags, and LZ4 chunk round trips and corruption handling.
//
// Needs build/wasm/codec.wasm (npm run build:wasm), gcc and libxxhash-dev.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { xxhash128 } from 'hash-wasm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CodecInputError, CorruptChunkError, InvalidSecretError } from '../src/codec/errors.js';
import { compressChunk, decompressChunk } from '../src/codec/lz4.js';
import {
  CHUNK_ID_BYTES,
  HASH_BATCH_BYTES,
  MAX_CHUNK_BYTES,
  PAGE_SIZE,
  PageCodec,
  PageFlag,
  SECRET_BYTES,
  generateSecret,
} from '../src/codec/page-codec.js';

/** Lengths that hit every XXH3 length class and the edges between them. */
const CHUNK_LENGTHS = [
  0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 97, 127, 128, 129, 159, 160, 239, 240, 241,
  255, 256, 1000, 1023, 1024, 1025, 2047, 2048, 4095, 4096, 4097, 65535, 65536, MAX_CHUNK_BYTES,
];

/** Pages per hashPages() call that spans several internal batches, with a partial last one. */
const MULTI_BATCH_PAGES = (HASH_BATCH_BYTES / PAGE_SIZE) * 2 + 7;

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

function idAt(ids: Uint8Array, page: number): string {
  return hex(ids.subarray(page * CHUNK_ID_BYTES, (page + 1) * CHUNK_ID_BYTES));
}

function page(fill: number): Uint8Array {
  return new Uint8Array(PAGE_SIZE).fill(fill);
}

function pageWithByte(offset: number, value: number): Uint8Array {
  const bytes = new Uint8Array(PAGE_SIZE);
  bytes[offset] = value;
  return bytes;
}

function concat(parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

function hashAll(codec: PageCodec, pages: Uint8Array): { ids: Uint8Array; flags: Uint8Array } {
  const pageCount = pages.length / PAGE_SIZE;
  const ids = new Uint8Array(pageCount * CHUNK_ID_BYTES);
  const flags = new Uint8Array(pageCount);
  codec.hashPages(pages, ids, flags);
  return { ids, flags };
}

/** Pages of the kinds a process image holds: random, zero, 0xff, sparse, text, repeating. */
function mixedPages(): Uint8Array[] {
  const text = Buffer.from('crinc keeps checkpoints of long jobs; '.repeat(120)).subarray(0, PAGE_SIZE);
  const counter = new Uint8Array(PAGE_SIZE).map((_, i) => i & 0xff);
  const sparse = new Uint8Array(PAGE_SIZE);
  for (let i = 0; i < PAGE_SIZE; i += 97) sparse[i] = (i * 31) & 0xff;
  return [
    new Uint8Array(randomBytes(PAGE_SIZE)),
    page(0),
    page(0xff),
    pageWithByte(0, 1),
    pageWithByte(PAGE_SIZE - 1, 0x80),
    new Uint8Array(text),
    counter,
    sparse,
  ];
}

// ---------------------------------------------------------------- keyed reference

/** Hashes records read from stdin (u32 LE length + bytes) after a 192-byte secret. */
const REFERENCE_SOURCE = String.raw`
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

int main(void) {
  unsigned char secret[${SECRET_BYTES}];
  if (fread(secret, 1, sizeof secret, stdin) != sizeof secret) return 2;
  unsigned char *buffer = malloc(${MAX_CHUNK_BYTES});
  unsigned char header[4];
  while (fread(header, 1, sizeof header, stdin) == sizeof header) {
    size_t length = header[0] | header[1] << 8 | header[2] << 16 | (size_t)header[3] << 24;
    if (length > ${MAX_CHUNK_BYTES} || fread(buffer, 1, length, stdin) != length) return 3;
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits_withSecret(buffer, length, secret, sizeof secret));
    for (int i = 0; i < 16; i++) printf("%02x", canonical.digest[i]);
    putchar('\n');
  }
  free(buffer);
  return 0;
}
`;

let referenceDir = '';
let referenceBinary = '';

function libxxhashIds(secret: Uint8Array, inputs: Uint8Array[]): string[] {
  const records = inputs.flatMap((input) => {
    const header = Buffer.alloc(4);
    header.writeUInt32LE(input.length);
    return [header, input];
  });
  const output = execFileSync(referenceBinary, {
    input: Buffer.concat([secret, ...records]),
    maxBuffer: 64 << 20,
  });
  return output.toString('ascii').trim().split('\n');
}

beforeAll(() => {
  referenceDir = mkdtempSync(join(tmpdir(), 'crinc-xxh3-ref-'));
  writeFileSync(join(referenceDir, 'ref.c'), REFERENCE_SOURCE);
  referenceBinary = join(referenceDir, 'ref');
  try {
    execFileSync('gcc', ['-O2', '-o', referenceBinary, join(referenceDir, 'ref.c'), '-lxxhash'], { stdio: 'pipe' });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`Cannot build the libxxhash reference (needs gcc and libxxhash-dev): ${stderr}`);
  }
});

afterAll(() => {
  if (referenceDir) rmSync(referenceDir, { recursive: true, force: true });
});

// ---------------------------------------------------------------- ids

describe('unkeyed chunk ids', () => {
  let codec: PageCodec;
  beforeAll(async () => {
    codec = await PageCodec.create();
  });

  it('equal hash-wasm xxhash128 for random pages across several batches', async () => {
    const pages = new Uint8Array(randomBytes(MULTI_BATCH_PAGES * PAGE_SIZE));
    const { ids, flags } = hashAll(codec, pages);
    for (let i = 0; i < MULTI_BATCH_PAGES; i++) {
      expect(idAt(ids, i)).toBe(await xxhash128(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)));
    }
    expect([...flags].every((flag) => flag === PageFlag.Normal)).toBe(true);
  });

  it('equal hash-wasm xxhash128 for edge-case pages', async () => {
    const kinds = mixedPages();
    const { ids } = hashAll(codec, concat(kinds));
    for (const [i, kind] of kinds.entries()) {
      expect(idAt(ids, i), `page kind ${i}`).toBe(await xxhash128(kind));
    }
  });

  it('equal hash-wasm xxhash128 for chunks of every length class', async () => {
    for (const length of CHUNK_LENGTHS) {
      const data = new Uint8Array(randomBytes(length));
      expect(hex(codec.chunkId(data)), `length ${length}`).toBe(await xxhash128(data));
    }
  });

  it('give a page the same id through hashPages and chunkId', () => {
    const pages = concat(mixedPages());
    const { ids } = hashAll(codec, pages);
    for (let i = 0; i < pages.length / PAGE_SIZE; i++) {
      expect(idAt(ids, i)).toBe(hex(codec.chunkId(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE))));
    }
  });
});

describe('keyed chunk ids', () => {
  it('equal libxxhash XXH3_128bits_withSecret for pages and chunks of every length class', async () => {
    const secret = generateSecret();
    const codec = await PageCodec.create(secret);

    const pageList = [...mixedPages(), ...Array.from({ length: MULTI_BATCH_PAGES }, () => new Uint8Array(randomBytes(PAGE_SIZE)))];
    const { ids } = hashAll(codec, concat(pageList));
    expect(pageList.map((_, i) => idAt(ids, i))).toEqual(libxxhashIds(secret, pageList));

    const chunks = CHUNK_LENGTHS.map((length) => new Uint8Array(randomBytes(length)));
    expect(chunks.map((chunk) => hex(codec.chunkId(chunk)))).toEqual(libxxhashIds(secret, chunks));
  });

  it('differ between two secrets and from the unkeyed id', async () => {
    const [first, second, unkeyed] = await Promise.all([
      PageCodec.create(generateSecret()),
      PageCodec.create(generateSecret()),
      PageCodec.create(),
    ]);
    for (const data of [...mixedPages(), new Uint8Array(0), new Uint8Array([7]), new Uint8Array(randomBytes(200))]) {
      const ids = [first, second, unkeyed].map((codec) => hex(codec.chunkId(data)));
      expect(new Set(ids).size).toBe(3);
    }
  });

  it('refuse a secret that is not exactly 192 bytes', async () => {
    for (const length of [0, 136, SECRET_BYTES - 1, SECRET_BYTES + 1]) {
      await expect(PageCodec.create(new Uint8Array(length))).rejects.toThrow(InvalidSecretError);
    }
  });
});

// ---------------------------------------------------------------- flags

describe('page flags', () => {
  it('call a page zero only when every byte is zero', async () => {
    const codec = await PageCodec.create(generateSecret());
    // One page per offset, each with a single nonzero byte there, between two zero pages.
    const pages = new Uint8Array((PAGE_SIZE + 2) * PAGE_SIZE);
    for (let offset = 0; offset < PAGE_SIZE; offset++) {
      pages[(offset + 1) * PAGE_SIZE + offset] = (offset % 255) + 1;
    }
    const { ids, flags } = hashAll(codec, pages);
    const lastPage = PAGE_SIZE + 1;
    expect(flags[0]).toBe(PageFlag.Zero);
    expect(flags[lastPage]).toBe(PageFlag.Zero);
    for (let i = 1; i < lastPage; i++) {
      if (flags[i] !== PageFlag.Normal) expect.fail(`page with byte ${i - 1} set has flag ${flags[i]}`);
    }
    // A zero page still gets its true id.
    expect(idAt(ids, 0)).toBe(hex(codec.chunkId(page(0))));
    expect(idAt(ids, lastPage)).toBe(idAt(ids, 0));
  });

  it('mark repeats of a nonzero page within one call, across batches, and only within it', async () => {
    const codec = await PageCodec.create();
    const [a, b, c] = [1, 2, 3].map(() => new Uint8Array(randomBytes(PAGE_SIZE)));
    const filler = Array.from({ length: MULTI_BATCH_PAGES }, () => new Uint8Array(randomBytes(PAGE_SIZE)));
    const pageList = [a!, b!, a!, page(0), page(0), b!, c!, ...filler, a!, c!];
    const { ids, flags } = hashAll(codec, concat(pageList));
    const expected = [
      PageFlag.Normal, PageFlag.Normal, PageFlag.Duplicate, PageFlag.Zero, PageFlag.Zero, PageFlag.Duplicate,
      PageFlag.Normal, ...filler.map(() => PageFlag.Normal), PageFlag.Duplicate, PageFlag.Duplicate,
    ];
    expect([...flags]).toEqual(expected);
    expect(idAt(ids, 2)).toBe(idAt(ids, 0));

    // A new call starts a new scope.
    expect([...hashAll(codec, concat([c!, a!])).flags]).toEqual([PageFlag.Normal, PageFlag.Normal]);
  });

  it('hash pages read into the codec (inputPages, hashInput) as hashPages does, each call a new scope', async () => {
    const codec = await PageCodec.create(generateSecret());
    const a = new Uint8Array(randomBytes(PAGE_SIZE));
    const pageList = [a, page(0), a, new Uint8Array(randomBytes(PAGE_SIZE))];
    const whole = hashAll(codec, concat(pageList));
    const ids = new Uint8Array((pageList.length + 1) * CHUNK_ID_BYTES);
    const flags = new Uint8Array(pageList.length + 1);
    codec.inputPages(pageList.length).set(concat(pageList));
    codec.hashInput(pageList.length, ids, flags, 1);
    expect(hex(ids.subarray(CHUNK_ID_BYTES))).toBe(hex(whole.ids));
    expect([...flags.subarray(1)]).toEqual([...whole.flags]);
    // The next call without continueScope does not call a repeat of `a` a duplicate.
    codec.inputPages(1).set(a);
    codec.hashInput(1, ids, flags);
    expect(flags[0]).toBe(PageFlag.Normal);
    expect(() => codec.inputPages(HASH_BATCH_BYTES / PAGE_SIZE + 1)).toThrow();
  });

  it('leave ids and flags past the last page alone', async () => {
    const codec = await PageCodec.create();
    const ids = new Uint8Array(4 * CHUNK_ID_BYTES).fill(0xee);
    const flags = new Uint8Array(4).fill(0xee);
    codec.hashPages(concat([page(0), page(1)]), ids, flags);
    expect([...flags]).toEqual([PageFlag.Zero, PageFlag.Normal, 0xee, 0xee]);
    expect([...ids.subarray(2 * CHUNK_ID_BYTES)].every((byte) => byte === 0xee)).toBe(true);
  });

  it('reject buffers of the wrong size', async () => {
    const codec = await PageCodec.create();
    const twoPages = new Uint8Array(2 * PAGE_SIZE);
    expect(() => codec.hashPages(twoPages.subarray(1), new Uint8Array(32), new Uint8Array(2))).toThrow(CodecInputError);
    expect(() => codec.hashPages(twoPages, new Uint8Array(31), new Uint8Array(2))).toThrow(CodecInputError);
    expect(() => codec.hashPages(twoPages, new Uint8Array(32), new Uint8Array(1))).toThrow(CodecInputError);
    expect(() => codec.chunkId(new Uint8Array(MAX_CHUNK_BYTES + 1))).toThrow(CodecInputError);
  });
});

// ---------------------------------------------------------------- lz4

describe('lz4 chunks', () => {
  const lz4Inputs = (): Uint8Array[] => [
    ...mixedPages(),
    new Uint8Array(0),
    new Uint8Array([42]),
    new Uint8Array(randomBytes(65536)),
    new Uint8Array(65536).map((_, i) => (i >> 9) & 0xff),
  ];

  it('round-trip pages and chunks of many kinds', () => {
    for (const [i, raw] of lz4Inputs().entries()) {
      const compressed = compressChunk(raw);
      expect(hex(decompressChunk(compressed, raw.length)), `input ${i}`).toBe(hex(raw));
    }
  });

  it('store a 4-byte little-endian raw length and then an LZ4 block', () => {
    const compressed = compressChunk(page(0));
    expect(Buffer.from(compressed).readUInt32LE(0)).toBe(PAGE_SIZE);
    expect(compressed.length).toBeLessThan(64);
  });

  it('throw CorruptChunkError for damaged or mismatched chunks', () => {
    const raw = new Uint8Array(Buffer.from('crinc '.repeat(700)));
    const compressed = compressChunk(raw);
    const damaged: Array<[string, Uint8Array, number]> = [
      ['empty', new Uint8Array(0), raw.length],
      ['header only', compressed.subarray(0, 4), raw.length],
      ['truncated', compressed.subarray(0, compressed.length - 3), raw.length],
      ['wrong raw length', compressed, raw.length - 1],
      ['garbage', new Uint8Array(randomBytes(100)), raw.length],
      ['match before start', new Uint8Array([8, 0, 0, 0, 0x04, 0xff, 0xff, 0x00]), 8],
    ];
    for (const [name, bytes, rawLength] of damaged) {
      expect(() => decompressChunk(bytes, rawLength), name).toThrow(CorruptChunkError);
    }
  });

  it('never return bytes of another length for any single-byte corruption', () => {
    // LZ4 blocks carry no checksum: a changed literal decodes to wrong bytes of the
    // right length, which only the chunk id check catches. Everything else must throw.
    const raw = concat(mixedPages().slice(3));
    const compressed = compressChunk(raw);
    for (let offset = 0; offset < compressed.length; offset++) {
      const damaged = compressed.slice();
      damaged[offset]! ^= 1 << (offset % 8);
      let decoded: Uint8Array | undefined;
      try {
        decoded = decompressChunk(damaged, raw.length);
      } catch (error) {
        expect(error, `offset ${offset}`).toBeInstanceOf(CorruptChunkError);
      }
      if (decoded) expect(decoded.length, `offset ${offset}`).toBe(raw.length);
    }
  });
});
