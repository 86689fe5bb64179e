// The codec's own LZ4 (wasm/lz4.ts): exact round trips on a corpus of pages
// and blocks, interoperability both ways with lz4-wasm-nodejs (the format's
// origin) and with the reference `lz4` command-line tool, the format's
// end-of-block rules, corrupt input (always CorruptChunkError, never garbage,
// never a write outside the chunk's slot). Throughput is npm run bench's.
//
// Needs build/wasm/codec.wasm (npm run build:wasm) and the `lz4` tool
// (Debian package lz4).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { xxhash32 } from 'hash-wasm';
import { compress as referenceCompress, decompress as referenceDecompress } from 'lz4-wasm-nodejs';
import { describe, expect, it } from 'vitest';

import { CorruptChunkError } from '../src/codec/errors.js';
import { compressChunk, decompressChunk } from '../src/codec/lz4.js';
import { LENGTH_PREFIX_BYTES, PAGE_SIZE } from '../src/codec/page-codec.js';
import { samplePage, samplePages } from '../src/codec/sample-pages.js';

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
const FILE_BLOCK_BYTES = 64 * 1024;
const CORPUS_PAGES = 500;

function pagesOf(buffer: Uint8Array): Uint8Array[] {
  return Array.from({ length: buffer.length / PAGE_SIZE }, (_, i) => buffer.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
}

/** Pages of every kind, 64 KiB blocks, and short chunks around the format's length limits. */
function corpus(): Uint8Array[] {
  const pages = pagesOf(samplePages(CORPUS_PAGES));
  const blocks = [
    samplePages(16, 2),
    new Uint8Array(randomBytes(FILE_BLOCK_BYTES)),
    new Uint8Array(FILE_BLOCK_BYTES),
    new Uint8Array(FILE_BLOCK_BYTES).map((_, i) => (i >> 9) & 0xff),
    new Uint8Array(Buffer.from('0123456789abcdef'.repeat(FILE_BLOCK_BYTES / 16))),
  ];
  const text = samplePage('text', 9);
  const short = Array.from({ length: 40 }, (_, length) => text.subarray(0, length));
  const repeats = [12, 13, 14, 17, 20, 31, 32, 33, 270, 271, 4096 + 255].map((length) => new Uint8Array(length).fill(7));
  return [...pages, ...blocks, ...short, ...repeats];
}

// ---------------------------------------------------------------- block checks

/** The LZ4 block inside a stored chunk (past its 4-byte length prefix). */
const blockOf = (stored: Uint8Array): Uint8Array => stored.subarray(LENGTH_PREFIX_BYTES);

/** A stored chunk around a raw LZ4 block. */
function storedForm(block: Uint8Array, rawLength: number): Uint8Array {
  const stored = new Uint8Array(LENGTH_PREFIX_BYTES + block.length);
  new DataView(stored.buffer).setUint32(0, rawLength, true);
  stored.set(block, LENGTH_PREFIX_BYTES);
  return stored;
}

/**
 * Walks a block's sequences (an independent, plain reading of the format)
 * and checks the end-of-block rules a compressor must keep: the last 5
 * bytes are literals and no match starts within 12 bytes of the end.
 */
function checkEndOfBlockRules(block: Uint8Array, rawLength: number): void {
  let ip = 0;
  let op = 0;
  const readLength = (nibble: number): number => {
    let length = nibble;
    if (nibble === 15) {
      let byte: number;
      do {
        byte = block[ip++]!;
        length += byte;
      } while (byte === 255);
    }
    return length;
  };
  for (;;) {
    const token = block[ip++]!;
    const literals = readLength(token >> 4);
    ip += literals;
    op += literals;
    if (ip === block.length) break;
    ip += 2;
    const matchLength = readLength(token & 15) + 4;
    if (op > rawLength - 12) throw new Error(`a match starts at ${op}, within 12 bytes of the end (${rawLength})`);
    op += matchLength;
    if (op > rawLength - 5) throw new Error(`a match ends at ${op}, within the last 5 bytes (${rawLength})`);
  }
  expect(op).toBe(rawLength);
}

// ---------------------------------------------------------------- lz4 frames

const FRAME_MAGIC = 0x184d2204;
const FLG_VERSION_01 = 0x40;
const FLG_BLOCK_INDEPENDENCE = 0x20;
const FLG_BLOCK_CHECKSUM = 0x10;
const FLG_CONTENT_SIZE = 0x08;
const FLG_CONTENT_CHECKSUM = 0x04;
const FLG_DICTIONARY_ID = 0x01;
/** BD byte for 4 MiB blocks: any chunk's block fits. */
const BD_MAX_4MIB = 7 << 4;
const BLOCK_UNCOMPRESSED_BIT = 0x80000000;
const BLOCK_MAX_BYTES: Record<number, number> = { 4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20 };

/** A minimal LZ4 frame (independent blocks, no checksums) around raw LZ4 blocks. */
async function lz4Frame(blocks: Uint8Array[]): Promise<Buffer> {
  const descriptor = Buffer.from([FLG_VERSION_01 | FLG_BLOCK_INDEPENDENCE, BD_MAX_4MIB]);
  const headerChecksum = (parseInt(await xxhash32(descriptor, 0), 16) >>> 8) & 0xff;
  const parts: Buffer[] = [Buffer.alloc(4), descriptor, Buffer.from([headerChecksum])];
  parts[0]!.writeUInt32LE(FRAME_MAGIC);
  for (const block of blocks) {
    const size = Buffer.alloc(4);
    size.writeUInt32LE(block.length);
    parts.push(size, Buffer.from(block));
  }
  parts.push(Buffer.alloc(4)); // EndMark
  return Buffer.concat(parts);
}

interface FrameBlock {
  data: Uint8Array;
  compressed: boolean;
}

/** The data blocks of one LZ4 frame, and its maximum block size. */
function frameBlocks(frame: Buffer): { blocks: FrameBlock[]; blockMaxBytes: number } {
  expect(frame.readUInt32LE(0)).toBe(FRAME_MAGIC);
  const flags = frame[4]!;
  expect(flags & FLG_BLOCK_INDEPENDENCE, 'independent blocks').toBe(FLG_BLOCK_INDEPENDENCE);
  const blockMaxBytes = BLOCK_MAX_BYTES[(frame[5]! >> 4) & 7]!;
  let at = 6 + (flags & FLG_CONTENT_SIZE ? 8 : 0) + (flags & FLG_DICTIONARY_ID ? 4 : 0) + 1;
  const blocks: FrameBlock[] = [];
  for (;;) {
    const size = frame.readUInt32LE(at);
    at += 4;
    if (size === 0) break;
    const length = size & ~BLOCK_UNCOMPRESSED_BIT;
    blocks.push({ data: frame.subarray(at, at + length), compressed: (size & BLOCK_UNCOMPRESSED_BIT) === 0 });
    at += length + (flags & FLG_BLOCK_CHECKSUM ? 4 : 0);
  }
  at += flags & FLG_CONTENT_CHECKSUM ? 4 : 0;
  expect(at, 'one frame, nothing after it').toBe(frame.length);
  return { blocks, blockMaxBytes };
}

function lz4Tool(args: string[], input: Uint8Array): Buffer {
  return execFileSync('lz4', args, { input, maxBuffer: 256 << 20, stdio: ['pipe', 'pipe', 'pipe'] });
}

// ---------------------------------------------------------------- tests

describe('LZ4 round trips', () => {
  it('give back every corpus chunk exactly, and keep the format rules', () => {
    for (const [i, raw] of corpus().entries()) {
      const stored = compressChunk(raw);
      expect(new DataView(stored.buffer, stored.byteOffset).getUint32(0, true), `chunk ${i}`).toBe(raw.length);
      checkEndOfBlockRules(blockOf(stored), raw.length);
      expect(hex(decompressChunk(stored, raw.length)), `chunk ${i}`).toBe(hex(raw));
    }
  });

  it('compress the corpus no worse than lz4-wasm-nodejs', () => {
    let mine = 0;
    let reference = 0;
    for (const raw of corpus()) {
      mine += compressChunk(raw).length;
      reference += referenceCompress(raw).length;
    }
    console.log(`LZ4 stored bytes on the corpus: crinc ${mine}, lz4-wasm-nodejs ${reference}`);
    expect(mine).toBeLessThanOrEqual(reference);
  });
});

describe('LZ4 on random inputs', () => {
  it('round-trips and interoperates on inputs made of repeated random pieces', () => {
    // Pieces of random length and period, some repeated from earlier: many
    // overlapping matches, long and short, near the ends and far back.
    for (let round = 0; round < 200; round++) {
      const length = round < 100 ? round * 7 : Math.floor(Math.random() * 70_000);
      const raw = new Uint8Array(length);
      let at = 0;
      while (at < length) {
        const piece = 1 + Math.floor(Math.random() * 300);
        const from = at > 0 && Math.random() < 0.6 ? Math.floor(Math.random() * at) : -1;
        const period = 1 + Math.floor(Math.random() * 20);
        for (let i = 0; i < piece && at < length; i++, at++) {
          raw[at] = from >= 0 ? raw[from + i]! : Math.random() < 0.5 ? raw[Math.max(0, at - period)]! : Math.floor(Math.random() * 256);
        }
      }
      const stored = compressChunk(raw);
      checkEndOfBlockRules(blockOf(stored), raw.length);
      expect(hex(decompressChunk(stored, raw.length)), `round ${round}`).toBe(hex(raw));
      expect(hex(referenceDecompress(stored)), `round ${round}`).toBe(hex(raw));
      expect(hex(decompressChunk(referenceCompress(raw), raw.length)), `round ${round}`).toBe(hex(raw));
    }
  });

  it('never crash or return another length on random blocks', () => {
    for (let round = 0; round < 5000; round++) {
      const block = new Uint8Array(randomBytes(1 + (round % 200)));
      const rawLength = round % 3 === 0 ? PAGE_SIZE : Math.floor(Math.random() * 2000);
      let decoded: Uint8Array | undefined;
      try {
        decoded = decompressChunk(storedForm(block, rawLength), rawLength);
      } catch (error) {
        expect(error, `round ${round}`).toBeInstanceOf(CorruptChunkError);
      }
      if (decoded) expect(decoded.length, `round ${round}`).toBe(rawLength);
    }
  });
});

describe('LZ4 interoperability', () => {
  it('lz4-wasm-nodejs reads what the codec writes, and the codec reads what it writes', () => {
    for (const [i, raw] of corpus().entries()) {
      expect(hex(referenceDecompress(compressChunk(raw))), `chunk ${i}`).toBe(hex(raw));
      expect(hex(decompressChunk(referenceCompress(raw), raw.length)), `chunk ${i}`).toBe(hex(raw));
    }
  });

  it('the lz4 tool decodes the codec\'s blocks in a frame', async () => {
    const chunks = corpus();
    const frame = await lz4Frame(chunks.map((raw) => blockOf(compressChunk(raw))));
    expect(hex(lz4Tool(['-d', '-c'], frame))).toBe(hex(Buffer.concat(chunks)));
  });

  it('the codec decodes the blocks of frames made by the lz4 tool', () => {
    const input = Buffer.concat([samplePages(CORPUS_PAGES, 5), ...corpus().slice(CORPUS_PAGES)]);
    // -B4: 64 KiB independent blocks, as the store's file blocks; -1 fast, -9 and -12 high compression.
    for (const level of ['-1', '-9', '-12']) {
      const { blocks, blockMaxBytes } = frameBlocks(lz4Tool([level, '-B4', '-BI', '--no-frame-crc', '-c'], input));
      expect(blockMaxBytes).toBe(FILE_BLOCK_BYTES);
      let at = 0;
      let compressedBlocks = 0;
      for (const block of blocks) {
        const rawLength = Math.min(blockMaxBytes, input.length - at);
        const raw = block.compressed ? decompressChunk(storedForm(block.data, rawLength), rawLength) : block.data;
        expect(hex(raw), `${level}: block at ${at}`).toBe(hex(input.subarray(at, at + rawLength)));
        compressedBlocks += block.compressed ? 1 : 0;
        at += rawLength;
      }
      expect(at).toBe(input.length);
      expect(compressedBlocks).toBeGreaterThan(blocks.length / 2);
    }
  });
});

describe('LZ4 corrupt chunks', () => {
  const raw = samplePages(5, 6).subarray(PAGE_SIZE, 4 * PAGE_SIZE); // struct, text, pattern
  const stored = compressChunk(raw);

  function expectCorruptOrExact(damaged: Uint8Array, rawLength: number, what: string): void {
    let decoded: Uint8Array | undefined;
    try {
      decoded = decompressChunk(damaged, rawLength);
    } catch (error) {
      if (!(error instanceof CorruptChunkError)) throw new Error(`${what}: ${String(error)}`);
    }
    // A block has no checksum: damage may decode to other bytes of the right
    // length (the chunk id catches those), never to another length.
    if (decoded) expect(decoded.length, what).toBe(rawLength);
  }

  it('are CorruptChunkError when truncated anywhere or given the wrong length', () => {
    for (let length = 0; length < stored.length; length++) {
      expect(() => decompressChunk(stored.subarray(0, length), raw.length), `truncated to ${length}`).toThrow(CorruptChunkError);
    }
    for (const rawLength of [0, 1, raw.length - 1, raw.length + 1]) {
      expect(() => decompressChunk(stored, rawLength), `raw length ${rawLength}`).toThrow(CorruptChunkError);
      // The same with a length header that agrees: the block itself decodes to another length.
      const lying = stored.slice();
      new DataView(lying.buffer).setUint32(0, rawLength, true);
      expect(() => decompressChunk(lying, rawLength), `header and raw length ${rawLength}`).toThrow(CorruptChunkError);
    }
  });

  it('are CorruptChunkError or exact-length for every flipped bit of tokens, offsets and lengths', () => {
    for (let offset = LENGTH_PREFIX_BYTES; offset < stored.length; offset++) {
      for (let bit = 0; bit < 8; bit++) {
        const damaged = stored.slice();
        damaged[offset]! ^= 1 << bit;
        expectCorruptOrExact(damaged, raw.length, `byte ${offset} bit ${bit}`);
      }
    }
  });

  it('are CorruptChunkError for hand-made malformed blocks', () => {
    const malformed: Array<[string, number[], number]> = [
      ['empty block', [], 0],
      ['offset 0', [0x10, 0x61, 0x00, 0x00, 0x00], 5],
      ['offset before the start', [0x10, 0x61, 0x02, 0x00, 0x00], 5],
      ['match longer than the output', [0x1f, 0x61, 0x01, 0x00, 0xff, 0x10, 0x00], 6],
      ['literal length past the input', [0xf0, 0xff, 0xff], 600],
      ['length extension never ends', [0xf0, 0xff], 300],
      ['offset cut short', [0x10, 0x61, 0x01], 5],
    ];
    for (const [name, block, rawLength] of malformed) {
      expect(() => decompressChunk(storedForm(new Uint8Array(block), rawLength), rawLength), name).toThrow(CorruptChunkError);
    }
  });

  it('never make the decoder write outside the chunk\'s slot', () => {
    // White-box: the raw decoder export, with a sentinel after the output slot.
    const wasm = readFileSync(new URL('../build/wasm/codec.wasm', import.meta.url));
    const exports = new WebAssembly.Instance(new WebAssembly.Module(wasm), {}).exports as Record<string, CallableFunction> & {
      memory: WebAssembly.Memory;
    };
    const memory = new Uint8Array(exports.memory.buffer);
    const table = new Uint32Array(exports.memory.buffer, exports.chunkTablePtr!() as number, 4);
    const inputArea = exports.inputAreaPtr!() as number;
    const outputArea = exports.outputAreaPtr!() as number;
    const SENTINEL = 0xa5;
    const SLACK = 64;
    let checked = 0;
    for (let offset = LENGTH_PREFIX_BYTES; offset < stored.length; offset += 3) {
      for (const rawLength of [raw.length, raw.length - 40]) {
        const damaged = stored.slice();
        damaged[offset]! ^= 0x5a;
        new DataView(damaged.buffer).setUint32(0, rawLength, true);
        memory.set(damaged, inputArea);
        memory.fill(SENTINEL, outputArea + rawLength, outputArea + rawLength + SLACK);
        table.set([0, damaged.length, 0, rawLength]);
        memory[exports.formsAreaPtr!() as number] = 1;
        exports.decodeChunks!(1, 0);
        const after = memory.subarray(outputArea + rawLength, outputArea + rawLength + SLACK);
        if (!after.every((byte) => byte === SENTINEL)) expect.fail(`byte ${offset}, raw length ${rawLength}: wrote past the slot`);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(100);
  });
});

// ---------------------------------------------------------------- throughput
