// PageRuns (src/controller/page-runs.ts): page addresses kept as runs, read through a
// cursor; checked against the plain list of addresses they stand for.
import { describe, expect, it } from 'vitest';
import { PageRuns } from '../../src/controller/page-runs.js';
import { PAGE_BYTES } from '../../src/store/format.js';

describe('page runs', () => {
  // Adjacent runs (merged), gaps, single pages, a high address.
  const appended: [number, number][] = [[0x10000, 3], [0x13000, 2], [0x20000, 1], [0x7ffd_0000_0000, 5], [0x7ffd_0000_5000 + PAGE_BYTES, 4]];
  const runs = new PageRuns();
  const all: number[] = [];
  for (const [vaddr, n] of appended) {
    runs.append(vaddr, n);
    for (let i = 0; i < n; i++) all.push(vaddr + i * PAGE_BYTES);
  }

  it('walks every page in order, with its index', () => {
    expect(runs.length).toBe(all.length);
    const seen: [number, number][] = [];
    for (const c = runs.cursor(); !c.done; c.next()) seen.push([c.index, c.vaddr]);
    expect(seen).toEqual(all.map((v, i) => [i, v]));
  });

  it('skips to the first page at or above an address, forward only', () => {
    const targets = [0, 0x10000, 0x10800, 0x14000, 0x15000, 0x1f000, 0x20000, 0x20001, 0x7ffd_0000_3000, 0x7ffd_0000_6000, 0x7ffd_0000_9000, 2 ** 48];
    const c = runs.cursor();
    for (const t of targets) {
      c.skipBelow(t);
      const want = all.findIndex((v) => v >= t);
      if (want < 0) {
        expect(c.done).toBe(true);
      } else {
        expect(c.index).toBe(want);
        expect(c.vaddr).toBe(all[want]);
      }
    }
  });

  it('refuses a page that does not lie above those appended before', () => {
    const r = new PageRuns();
    r.append(0x5000, 2);
    expect(() => r.append(0x5000 + PAGE_BYTES, 1)).toThrow(/out of order/);
  });
});
