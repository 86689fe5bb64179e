// The page range algebra of dirty tracking (src/tracking/page-ranges.ts) against a page
// bitmap, on random sets.
import { describe, expect, it } from 'vitest';
import { containsAddress, intersect, normalize, subtract, union, type Range } from '../../src/tracking/page-ranges.js';
import { PAGE_SIZE } from '../../src/tracking/uffd-abi.js';
import { prng } from '../support/prng.js';

describe('page ranges', () => {
  it('union, intersect and subtract agree with a page bitmap', () => {
    const rand = prng(7);
    const PAGES = 64;
    const randomSet = (): Range[] => {
      const out: Range[] = [];
      for (let i = 0; i < 6; i++) {
        const s = Math.floor(rand() * PAGES);
        const e = Math.min(PAGES, s + 1 + Math.floor(rand() * 10));
        out.push({ start: s * PAGE_SIZE, end: e * PAGE_SIZE });
      }
      return normalize(out);
    };
    const bits = (rs: Range[]): boolean[] => Array.from({ length: PAGES }, (_, i) => containsAddress(rs, i * PAGE_SIZE));
    for (let round = 0; round < 500; round++) {
      const a = randomSet();
      const b = randomSet();
      const A = bits(a);
      const B = bits(b);
      expect(bits(union(a, b))).toEqual(A.map((x, i) => x || B[i]!));
      expect(bits(intersect(a, b))).toEqual(A.map((x, i) => x && B[i]!));
      expect(bits(subtract(a, b))).toEqual(A.map((x, i) => x && !B[i]!));
      for (const r of [union(a, b), intersect(a, b), subtract(a, b)]) {
        for (let i = 1; i < r.length; i++) expect(r[i]!.start).toBeGreaterThan(r[i - 1]!.end);
      }
    }
  });
});
