// The codec table: throughput on one core of the page codec's hash + zero pass and of
// the alternatives, and of the compressors with their compression ratios, on the corpus.
import * as crypto from 'node:crypto';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { createBLAKE3, createXXHash128, type IHasher } from 'hash-wasm';
import { compress as lz4Compress, decompress as lz4Decompress } from 'lz4-wasm-nodejs';
import { compressChunk, decompressChunk } from '../src/codec/lz4.js';
import { CHUNK_ID_BYTES, PAGE_SIZE, PageCodec, PageFlag, generateSecret } from '../src/codec/page-codec.js';
import { type Corpus, nonZeroSample } from './corpus.js';
import { optionalCodecRows } from './optional-codec.js';
import { gbps, measure, MIB, mib, printTable, type Rate, verdict } from './util.js';

export const TARGETS = { hashGBps: 8, lz4CompressGBps: 1.0, lz4DecompressGBps: 2.5 };
/** Bytes of nonzero pages the compressors are timed on. */
const COMPRESS_SAMPLE_BYTES = 32 * MIB;
/** Bytes per call for the lz4-wasm-nodejs "batch" rows (not the store's format). */
const BIG_CALL_BYTES = 256 * 1024;
/**
 * Bytes per hashPages call, its copy into WASM memory included (what a caller holding the
 * pages elsewhere pays; Ingest reads pages into the codec's memory and hashes them there).
 */
const HASH_CALL_BYTES = 4 * MIB;

interface Row {
  op: string;
  what: string;
  rate?: Rate;
  ratio?: number;
  target?: number;
  note?: string;
}

type PageFn = (page: Uint8Array) => void;

function perPage(data: Uint8Array, fn: PageFn): void {
  for (let at = 0; at < data.length; at += PAGE_SIZE) fn(data.subarray(at, at + PAGE_SIZE));
}

function hasherRow(h: IHasher): PageFn {
  return (page) => {
    h.init();
    h.update(page);
    h.digest('binary');
  };
}

/** Compresses every page; returns the outputs and the as-stored ratio (raw kept when not smaller). */
function compressAll(data: Uint8Array, fn: (page: Uint8Array) => Uint8Array): { out: Uint8Array[]; ratio: number } {
  const out: Uint8Array[] = [];
  let stored = 0;
  perPage(data, (p) => {
    const c = fn(p);
    out.push(c);
    stored += Math.min(c.length, PAGE_SIZE);
  });
  return { out, ratio: stored / data.length };
}

function timeCompress(data: Uint8Array, fn: (page: Uint8Array) => Uint8Array, opts?: { minSeconds?: number }): { rate: Rate; out: Uint8Array[]; ratio: number } {
  let last = { out: [] as Uint8Array[], ratio: 0 };
  const rate = measure(data.length, () => (last = compressAll(data, fn)), opts);
  return { rate, ...last };
}

function timeDecompress(bytes: number, chunks: Uint8Array[], fn: (c: Uint8Array) => Uint8Array, opts?: { minSeconds?: number }): Rate {
  return measure(bytes, () => {
    for (const c of chunks) fn(c);
  }, opts);
}

export interface CodecResults {
  hashRate: number;
  lz4Compress: number;
  lz4Decompress: number;
  /** The batch and pool rows that have a target, when src/codec has them. */
  extraTargets: { label: string; rate: number; target: number }[];
}

export async function codecTable(corpus: Corpus): Promise<CodecResults> {
  const secret = generateSecret();
  const codec = await PageCodec.create(secret);
  const maxPages = corpus.data.length / PAGE_SIZE;
  const ids = new Uint8Array(maxPages * CHUNK_ID_BYTES);
  const flags = new Uint8Array(maxPages);
  const hashAll = (d: Uint8Array): void => codec.hashPages(d, ids, flags);
  const xx = await createXXHash128();
  const b3 = await createBLAKE3();

  // Hashers: every page of the corpus, zero pages included (ingest hashes them all).
  const rows: Row[] = [];
  const perBatch = (d: Uint8Array): void => {
    for (let at = 0; at < d.length; at += HASH_CALL_BYTES) hashAll(d.subarray(at, Math.min(d.length, at + HASH_CALL_BYTES)));
  };
  const codecRate = measure(corpus.data.length, () => perBatch(corpus.data), { minRuns: 5 });
  rows.push({ op: 'PageCodec.hashPages', what: `hash + zero check, keyed XXH3-128, incl. copy into WASM; ${HASH_CALL_BYTES / MIB} MiB per call`, rate: codecRate, target: TARGETS.hashGBps });
  rows.push({ op: 'PageCodec.hashPages', what: 'the same, whole corpus in one call', rate: measure(corpus.data.length, () => hashAll(corpus.data), { minRuns: 5 }) });
  // crypto.hash() (one-shot, Node >= 20.12) where there is one; createHash() before that.
  const oneShot = typeof crypto.hash === 'function';
  const sha256: PageFn = oneShot ? (p) => crypto.hash('sha256', p, 'buffer') : (p) => crypto.createHash('sha256').update(p).digest();
  rows.push({
    op: 'node:crypto sha256',
    what: `per page (${oneShot ? 'crypto.hash' : 'createHash'})`,
    rate: measure(corpus.data.length, () => perPage(corpus.data, sha256), { minRuns: 2, minSeconds: 0.3 }),
  });
  rows.push({
    op: 'hash-wasm xxhash128',
    what: 'per page (init/update/digest)',
    rate: measure(corpus.data.length, () => perPage(corpus.data, hasherRow(xx)), { minRuns: 2, minSeconds: 0.3 }),
  });
  rows.push({
    op: 'hash-wasm blake3',
    what: 'per page (init/update/digest)',
    rate: measure(corpus.data.length, () => perPage(corpus.data, hasherRow(b3)), { minRuns: 2, minSeconds: 0.3 }),
  });

  // Compressors: nonzero pages only (zero pages become holes and are never compressed).
  const sample = nonZeroSample(corpus, COMPRESS_SAMPLE_BYTES);
  const s = sample.data;
  const lz4c = timeCompress(s, compressChunk);
  const lz4d = timeDecompress(s.length, lz4c.out, (c) => decompressChunk(c, PAGE_SIZE));
  rows.push({ op: 'LZ4 compressChunk', what: 'src/codec/lz4.ts, per page', rate: lz4c.rate, ratio: lz4c.ratio, target: TARGETS.lz4CompressGBps });
  rows.push({ op: 'LZ4 decompressChunk', what: 'src/codec/lz4.ts, per page', rate: lz4d, target: TARGETS.lz4DecompressGBps });
  const direct = timeCompress(s, lz4Compress);
  rows.push({ op: 'lz4-wasm-nodejs compress', what: 'direct, per page', rate: direct.rate, ratio: direct.ratio });
  rows.push({ op: 'lz4-wasm-nodejs decompress', what: 'direct, per page', rate: timeDecompress(s.length, direct.out, lz4Decompress) });
  const bigCalls: Uint8Array[] = [];
  for (let at = 0; at < s.length; at += BIG_CALL_BYTES) bigCalls.push(s.subarray(at, Math.min(s.length, at + BIG_CALL_BYTES)));
  let bigOut: Uint8Array[] = [];
  const bigRate = measure(s.length, () => (bigOut = bigCalls.map((b) => lz4Compress(b))));
  rows.push({
    op: 'lz4-wasm-nodejs compress',
    what: `direct, ${BIG_CALL_BYTES >> 10} KiB per call (call overhead bound)`,
    rate: bigRate,
    ratio: bigOut.reduce((n, c) => n + c.length, 0) / s.length,
  });
  rows.push({ op: 'lz4-wasm-nodejs decompress', what: `direct, ${BIG_CALL_BYTES >> 10} KiB per call`, rate: timeDecompress(s.length, bigOut, lz4Decompress) });
  const deflate = timeCompress(s, (p) => deflateRawSync(p, { level: 1 }), { minSeconds: 0.2 });
  rows.push({ op: 'zlib deflateRawSync level 1', what: 'per page', rate: deflate.rate, ratio: deflate.ratio });
  rows.push({ op: 'zlib inflateRawSync', what: 'per page', rate: timeDecompress(s.length, deflate.out, (c) => inflateRawSync(c), { minSeconds: 0.2 }) });

  const optional = await optionalCodecRows(codec, secret, corpus, s);
  const extraTargets: CodecResults['extraTargets'] = [];
  for (const r of optional.rows) {
    const target = r.target === 'compress' ? TARGETS.lz4CompressGBps : r.target === 'decompress' ? TARGETS.lz4DecompressGBps : undefined;
    rows.push({ op: r.op, what: r.what, ...(r.rate ? { rate: r.rate } : {}), ...(r.ratio !== undefined ? { ratio: r.ratio } : {}), ...(target !== undefined ? { target } : {}), ...(r.note ? { note: r.note } : {}) });
    if (target !== undefined && r.rate) extraTargets.push({ label: `${r.target === 'compress' ? 'LZ4 compress' : 'LZ4 decompress'}: ${r.op}, GB/s`, rate: r.rate.median, target });
  }

  const codecMedian = codecRate.median;
  printTable(
    `Codec table: one core, GB/s (median of runs; best in brackets). Hashers on all ${mib(corpus.data.length)} MiB of the corpus; compressors on ${mib(s.length)} MiB of its nonzero pages, sampled from every class`,
    ['operation', 'what', 'GB/s', '(best)', '× codec', 'stored/raw', 'target', 'result'],
    rows.map((r) => [
      r.op,
      r.what,
      r.rate ? gbps(r.rate.median) : '-',
      r.rate ? `(${gbps(r.rate.best)})` : '',
      r.rate ? `${(r.rate.median / codecMedian).toFixed(2)}×` : '-',
      r.ratio !== undefined ? r.ratio.toFixed(3) : '-',
      r.target !== undefined ? `≥ ${r.target.toFixed(1)}` : '',
      r.target !== undefined && r.rate ? verdict(r.rate.median / 1e9, r.target) : r.note ? 'n/a' : '',
    ]),
    [
      '× codec: throughput relative to PageCodec.hashPages. stored/raw: compressed bytes as the store keeps them (raw when not smaller; zero and duplicate pages store nothing in the batch rows), over raw bytes.',
      ...rows.filter((r) => r.note).map((r) => `${r.op}: ${r.note}`),
      ...optional.notes,
      ...corpus.notes,
    ],
  );

  // Per class: where hashing and compression do well or badly.
  const perClass: string[][] = [];
  for (const [i, seg] of corpus.segments.entries()) {
    const pages = seg.data.length / PAGE_SIZE;
    codec.hashPages(seg.data, ids, flags);
    let zero = 0;
    for (let p = 0; p < pages; p++) if (flags[p] === PageFlag.Zero) zero++;
    const h = measure(seg.data.length, () => perBatch(seg.data), { minSeconds: 0.15 });
    const ss = sample.segments[i]!.data;
    let cells = ['-', '-', '-', '-'];
    if (ss.length > 0) {
      const c = timeCompress(ss, compressChunk, { minSeconds: 0.1 });
      const d = timeDecompress(ss.length, c.out, (x) => decompressChunk(x, PAGE_SIZE), { minSeconds: 0.1 });
      cells = [gbps(c.rate.median), gbps(d.median), c.ratio.toFixed(3), compressAll(ss, (p) => deflateRawSync(p, { level: 1 })).ratio.toFixed(3)];
    }
    perClass.push([seg.name, mib(seg.data.length), `${((100 * zero) / pages).toFixed(1)}%`, gbps(h.median), ...cells]);
  }
  printTable(
    'Corpus by class: hash + zero GB/s on the whole class (4 MiB per call); LZ4 (src/codec/lz4.ts, per page) and deflate-1 stored/raw on its nonzero sample',
    ['class', 'MiB', 'zero pages', 'hash GB/s', 'LZ4 c GB/s', 'LZ4 d GB/s', 'LZ4 stored/raw', 'deflate-1 stored/raw'],
    perClass,
  );

  return { hashRate: codecMedian, lz4Compress: lz4c.rate.median, lz4Decompress: lz4d.median, extraTargets };
}
