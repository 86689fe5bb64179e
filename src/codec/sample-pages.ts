/**
 * A synthetic, deterministic corpus of 4 KiB pages of the kinds a process
 * image holds, for the codec's tests and throughput figures: nearly empty
 * pages, arrays of structs, text, repeating patterns and random bytes.
 * Deterministic (seeded) so that compression ratios can be compared run to
 * run and between compressors.
 */
import { PAGE_SIZE } from './page-codec.js';

export const SAMPLE_PAGE_KINDS = ['sparse', 'struct', 'text', 'pattern', 'random'] as const;
export type SamplePageKind = (typeof SAMPLE_PAGE_KINDS)[number];

/** xorshift32: small, fast, and the same sequence on every run for a seed. */
class SeededRandom {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0 || 1;
  }

  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  /** An integer in [0, bound). */
  below(bound: number): number {
    return this.next() % bound;
  }
}

const WORDS = [
  'the', 'checkpoint', 'of', 'job', 'state', 'iteration', 'buffer', 'error', 'value', 'node', 'rank', 'step',
  'memory', 'page', 'written', 'restore', 'time', 'ok', 'warning', 'counter', 'matrix', 'solver', 'residual',
  'converged', 'after', 'seconds', 'bytes', 'in', 'and', 'to', 'from', 'with',
];

function sparsePage(random: SeededRandom): Uint8Array {
  // Mostly zero: a few scattered words, like a freshly touched heap page.
  const page = new Uint8Array(PAGE_SIZE);
  const writes = 1 + random.below(24);
  for (let i = 0; i < writes; i++) {
    const at = random.below(PAGE_SIZE / 8) * 8;
    for (let b = 0; b < 1 + random.below(8); b++) page[at + b] = random.below(256);
  }
  return page;
}

function structPage(random: SeededRandom): Uint8Array {
  // An array of 48-byte records: id, small counters, a pointer, a double, padding.
  const page = new Uint8Array(PAGE_SIZE);
  const view = new DataView(page.buffer);
  const RECORD_BYTES = 48;
  const heapBase = 0x5500_0000 + random.below(0x10000) * 0x1000;
  let id = random.below(1 << 20);
  for (let at = 0; at + RECORD_BYTES <= PAGE_SIZE; at += RECORD_BYTES) {
    view.setUint32(at, id++, true);
    view.setUint16(at + 4, random.below(16), true);
    view.setUint16(at + 6, random.below(1024), true);
    view.setUint32(at + 8, heapBase + random.below(4096) * 16, true);
    view.setUint32(at + 12, 0x7f, true);
    view.setFloat64(at + 16, random.below(1000) / 8, true);
    view.setUint32(at + 24, random.below(3) === 0 ? random.next() : 0, true);
    // 28..47 stay zero: padding and unused fields.
  }
  return page;
}

function textPage(random: SeededRandom): Uint8Array {
  // Log lines: timestamps, words and numbers.
  const lines: string[] = [];
  let length = 0;
  while (length < PAGE_SIZE) {
    const words = Array.from({ length: 4 + random.below(10) }, () => WORDS[random.below(WORDS.length)]!);
    const line = `2024-05-${10 + random.below(20)}T12:${10 + random.below(50)}:${10 + random.below(50)} ` +
      `[${random.below(64)}] ${words.join(' ')} ${random.below(100000)}\n`;
    lines.push(line);
    length += line.length;
  }
  return new Uint8Array(Buffer.from(lines.join('')).subarray(0, PAGE_SIZE));
}

function patternPage(random: SeededRandom): Uint8Array {
  // A short period repeated over the page, like a filled buffer or a table.
  const period = 1 + random.below(64);
  const unit = Array.from({ length: period }, () => random.below(256));
  return new Uint8Array(PAGE_SIZE).map((_, i) => unit[i % period]!);
}

function randomPage(random: SeededRandom): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  const words = new Uint32Array(page.buffer);
  for (let i = 0; i < words.length; i++) words[i] = random.next();
  return page;
}

const MAKERS: Record<SamplePageKind, (random: SeededRandom) => Uint8Array> = {
  sparse: sparsePage,
  struct: structPage,
  text: textPage,
  pattern: patternPage,
  random: randomPage,
};

/** One page of a kind; the same seed gives the same page. */
export function samplePage(kind: SamplePageKind, seed: number): Uint8Array {
  return MAKERS[kind](new SeededRandom(seed));
}

/**
 * `pageCount` pages, the kinds in turn (sparse, struct, text, pattern,
 * random, sparse, ...), back to back in one buffer.
 */
export function samplePages(pageCount: number, seed = 1): Uint8Array {
  const pages = new Uint8Array(pageCount * PAGE_SIZE);
  for (let i = 0; i < pageCount; i++) {
    const kind = SAMPLE_PAGE_KINDS[i % SAMPLE_PAGE_KINDS.length]!;
    pages.set(samplePage(kind, seed * 1_000_003 + i), i * PAGE_SIZE);
  }
  return pages;
}
