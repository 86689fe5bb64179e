// Quick throughput check of the page codec on one core:
//   node dist/bench/codec-quick.js [MiB]
// Prints GB/s for page hashing (zero check + keyed XXH3-128, including the
// copy into WASM memory), for chunk ids of 64 KiB chunks, and for LZ4 per
// page. Timings only; nothing is asserted.
import { randomBytes } from 'node:crypto';

import { compressChunk, decompressChunk } from '../src/codec/lz4.js';
import { CHUNK_ID_BYTES, PAGE_SIZE, PageCodec, generateSecret } from '../src/codec/page-codec.js';

const DEFAULT_MIB = 256;
const REPEATS = 5;
const FILE_CHUNK_BYTES = 64 * 1024;
/** LZ4 is far slower than hashing: time it on a slice of the data. */
const LZ4_SAMPLE_BYTES = 32 << 20;

const totalBytes = Number(process.argv[2] ?? DEFAULT_MIB) << 20;

/** Best and median of REPEATS runs, in GB/s. */
function measure(bytes: number, run: () => void): string {
  const rates: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const start = process.hrtime.bigint();
    run();
    rates.push(bytes / Number(process.hrtime.bigint() - start));
  }
  rates.sort((a, b) => a - b);
  return `best ${rates[REPEATS - 1]!.toFixed(2)} GB/s, median ${rates[REPEATS >> 1]!.toFixed(2)} GB/s`;
}

function fillRandom(target: Uint8Array): void {
  const piece = 1 << 16;
  for (let at = 0; at < target.length; at += piece) target.set(randomBytes(Math.min(piece, target.length - at)), at);
}

/** Like a typical image: one page in four zero, some text-like, the rest random. */
function mixedImage(bytes: number): Uint8Array {
  const image = new Uint8Array(bytes);
  fillRandom(image);
  const text = Buffer.from('0123456789 state of a long job, iteration counters and buffers; '.repeat(64));
  for (let page = 0; page < bytes / PAGE_SIZE; page++) {
    const at = page * PAGE_SIZE;
    if (page % 4 === 0) image.fill(0, at, at + PAGE_SIZE);
    else if (page % 4 === 1) image.set(text.subarray(0, PAGE_SIZE), at);
  }
  return image;
}

const codec = await PageCodec.create(generateSecret());
const pageCount = totalBytes / PAGE_SIZE;
const ids = new Uint8Array(pageCount * CHUNK_ID_BYTES);
const flags = new Uint8Array(pageCount);

const randomImage = new Uint8Array(totalBytes);
fillRandom(randomImage);
const image = mixedImage(totalBytes);

console.log(`page codec, ${totalBytes >> 20} MiB, one core`);
console.log(`  hashPages, random pages:       ${measure(totalBytes, () => codec.hashPages(randomImage, ids, flags))}`);
console.log(`  hashPages, mixed (25% zero):   ${measure(totalBytes, () => codec.hashPages(image, ids, flags))}`);
console.log(`  chunkId, 64 KiB chunks:        ${measure(totalBytes, () => {
  for (let at = 0; at < totalBytes; at += FILE_CHUNK_BYTES) codec.chunkId(randomImage.subarray(at, at + FILE_CHUNK_BYTES));
})}`);

const sample = image.subarray(0, Math.min(LZ4_SAMPLE_BYTES, totalBytes));
const compressed: Uint8Array[] = [];
console.log(`  lz4 compress, mixed pages:     ${measure(sample.length, () => {
  compressed.length = 0;
  for (let at = 0; at < sample.length; at += PAGE_SIZE) compressed.push(compressChunk(sample.subarray(at, at + PAGE_SIZE)));
})}`);
const storedBytes = compressed.reduce((sum, chunk) => sum + chunk.length, 0);
console.log(`  lz4 decompress, mixed pages:   ${measure(sample.length, () => {
  for (const chunk of compressed) decompressChunk(chunk, PAGE_SIZE);
})}`);
console.log(`  lz4 ratio, mixed pages:        ${(storedBytes / sample.length).toFixed(3)}`);
