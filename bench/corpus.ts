// A page corpus that looks like process memory: synthetic classes (zero pages, sparse
// pages, struct arrays, text, repeated patterns, random bytes) plus the pages of a real
// CRIU dump of a Node process with a service-like heap. Classes lie in contiguous
// segments of one buffer, as memory comes in regions. Generation is seeded: the same
// synthetic pages every run.
import { readFileSync, rmSync } from 'node:fs';
import { PAGE_SIZE } from '../src/codec/page-codec.js';
import { criuDump, NODE_HEAP, pagesFiles, startJob } from './workload.js';
import { MIB, type Scratch } from './util.js';

export interface Segment {
  name: string;
  /** Whole pages. */
  data: Uint8Array;
}

export interface Corpus {
  /** Every page, segment after segment. */
  data: Uint8Array;
  segments: Segment[];
  notes: string[];
}

/** Synthetic classes and their sizes in MiB (128 MiB in all). */
const SYNTHETIC: [string, number, (page: Uint8Array, index: number, rng: Rng) => void][] = [
  ['zero', 32, () => {}],
  ['sparse (1-8 nonzero words)', 16, sparsePage],
  ['struct arrays (ints, pointers)', 32, structPage],
  ['text (logs, identifiers)', 16, textPage],
  ['repeated patterns', 8, patternPage],
  ['random bytes', 24, (page, _i, rng) => rng.fill(page)],
];
/** At most this much of the real dump goes into the corpus. */
const REAL_MAX_BYTES = 160 * MIB;

/** mulberry32: small, fast, seeded. */
export class Rng {
  constructor(private state: number) {}
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  below(n: number): number {
    return this.next() % n;
  }
  fill(target: Uint8Array): void {
    const words = new Uint32Array(target.buffer, target.byteOffset, target.byteLength >> 2);
    for (let i = 0; i < words.length; i++) words[i] = this.next();
  }
}

function view(page: Uint8Array): DataView {
  return new DataView(page.buffer, page.byteOffset, page.byteLength);
}

/** A mostly-zero page: a few counters, flags or pointers (bss, freed heap, stacks). */
function sparsePage(page: Uint8Array, _i: number, rng: Rng): void {
  const v = view(page);
  const n = 1 + rng.below(8);
  for (let k = 0; k < n; k++) {
    const at = rng.below(PAGE_SIZE / 8) * 8;
    if (rng.below(2)) v.setBigUint64(at, 0x7f0000000000n + BigInt(rng.next()) * 16n, true);
    else v.setUint32(at, 1 + rng.below(1000), true);
  }
}

/** Arrays of 48-byte records: ids, small ints, flags, pointers into one heap, doubles. */
function structPage(page: Uint8Array, index: number, rng: Rng): void {
  const v = view(page);
  const heap = 0x55d0c0000000n + BigInt(index) * 4096n;
  for (let at = 0, rec = index * 85; at + 48 <= PAGE_SIZE; at += 48, rec++) {
    v.setUint32(at, rec, true); // id
    v.setUint16(at + 4, rng.below(16), true); // kind
    v.setUint16(at + 6, rng.below(4) === 0 ? 1 : 0, true); // flags
    v.setBigUint64(at + 8, heap + BigInt(rng.below(4096) & ~15), true); // pointer
    v.setBigUint64(at + 16, rng.below(3) === 0 ? 0n : heap + BigInt(at * 2), true); // next or null
    v.setFloat64(at + 24, rng.below(10000) / 4, true); // value
    v.setUint32(at + 32, rng.below(256), true); // length
    v.setUint32(at + 36, 0, true); // padding
    v.setBigUint64(at + 40, BigInt(rng.below(1 << 20)), true); // counter
  }
}

const WORDS = (
  'the of request worker handled queue batch user session token cache miss hit error info debug warn ' +
  'connection timeout retry socket buffer allocated freed checkpoint restore job step iteration value'
).split(' ');

/** Log lines and identifiers, as in string heaps and buffers. */
function textPage(page: Uint8Array, index: number, rng: Rng): void {
  let s = '';
  let line = index * 40;
  while (s.length < PAGE_SIZE) {
    const ts = new Date(1.7e12 + line * 137).toISOString();
    let words = '';
    for (let w = 3 + rng.below(8); w > 0; w--) words += `${WORDS[rng.below(WORDS.length)]} `;
    s += `${ts} worker-${rng.below(16)} ${words}id=${rng.below(1e6)} in ${rng.below(5000) / 10} ms\n`;
    line++;
  }
  page.set(Buffer.from(s.slice(0, PAGE_SIZE), 'latin1'));
}

/** Fill patterns (memset of a word, a repeated small block), period 4 to 256 bytes. */
function patternPage(page: Uint8Array, _i: number, rng: Rng): void {
  const period = 4 << rng.below(7);
  const unit = new Uint8Array(period);
  rng.fill(unit);
  for (let at = 0; at < PAGE_SIZE; at += period) page.set(unit, at);
}

/** The pages of a real CRIU dump of a Node process (bench/workloads/node-heap.ts). */
async function realPages(scratch: Scratch, notes: string[]): Promise<Uint8Array[]> {
  const job = await startJob(scratch, 'node-heap', [process.execPath, NODE_HEAP], /^ready \d+/m, 60_000);
  const dir = scratch.dir('node-heap-image');
  try {
    criuDump(job.pid, dir);
  } finally {
    await job.kill();
  }
  const out: Uint8Array[] = [];
  let total = 0;
  for (const f of pagesFiles(dir)) {
    const bytes = readFileSync(f);
    const take = Math.min(bytes.length, REAL_MAX_BYTES - total);
    out.push(bytes.subarray(0, take - (take % PAGE_SIZE)));
    total += take;
  }
  rmSync(dir, { recursive: true, force: true });
  rmSync(`${dir}.work`, { recursive: true, force: true });
  notes.push(`real pages: CRIU dump of a Node ${process.version} process with a service-like heap (${(total / MIB).toFixed(0)} MiB of pages-*.img)`);
  return out;
}

export async function buildCorpus(scratch: Scratch): Promise<Corpus> {
  const notes: string[] = [];
  const real = await realPages(scratch, notes);
  const realBytes = real.reduce((s, r) => s + r.length, 0);
  const syntheticBytes = SYNTHETIC.reduce((s, [, m]) => s + m * MIB, 0);
  const data = new Uint8Array(syntheticBytes + realBytes);
  const segments: Segment[] = [];
  const rng = new Rng(0x5eed);
  let at = 0;
  for (const [name, mib, fill] of SYNTHETIC) {
    const seg = data.subarray(at, at + mib * MIB);
    for (let p = 0; p < seg.length / PAGE_SIZE; p++) fill(seg.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), p, rng);
    segments.push({ name, data: seg });
    at += seg.length;
  }
  const realStart = at;
  for (const r of real) {
    data.set(r, at);
    at += r.length;
  }
  segments.push({ name: 'real: Node process (CRIU dump)', data: data.subarray(realStart, at) });
  return { data, segments, notes };
}

export function isZeroPage(page: Uint8Array): boolean {
  const w = new BigUint64Array(page.buffer, page.byteOffset, PAGE_SIZE / 8);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0n) return false;
  return true;
}

/**
 * About `bytes` of the corpus's nonzero pages (what ingest compresses: zero pages become
 * holes), taken from every segment in proportion to its size, in runs of 16 pages spread
 * evenly over the segment, copied into one buffer.
 */
export function nonZeroSample(corpus: Corpus, bytes: number): Corpus {
  const fraction = Math.min(1, bytes / corpus.data.length);
  const parts: { name: string; pages: Uint8Array[] }[] = [];
  for (const seg of corpus.segments) {
    const pageCount = seg.data.length / PAGE_SIZE;
    const want = Math.round(pageCount * fraction);
    const runs = Math.max(1, Math.round(want / 16));
    const stride = pageCount / runs;
    const pages: Uint8Array[] = [];
    for (let r = 0; r < runs && pages.length < want; r++) {
      for (let p = Math.floor(r * stride), end = Math.min(pageCount, p + 16); p < end && pages.length < want; p++) {
        const page = seg.data.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
        if (!isZeroPage(page)) pages.push(page);
      }
    }
    parts.push({ name: seg.name, pages });
  }
  const total = parts.reduce((s, p) => s + p.pages.length, 0) * PAGE_SIZE;
  const data = new Uint8Array(total);
  const segments: Segment[] = [];
  let at = 0;
  for (const { name, pages } of parts) {
    const start = at;
    for (const p of pages) {
      data.set(p, at);
      at += PAGE_SIZE;
    }
    segments.push({ name, data: data.subarray(start, at) });
  }
  return { data, segments, notes: [] };
}
