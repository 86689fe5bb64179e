// Sets of page-aligned address ranges, kept as sorted, disjoint, non-adjacent lists.
// Addresses are JS numbers: x86-64 user addresses (below 2^47, or 2^56 with 5-level
// paging) are exact up to 2^53, which every constructor here asserts.
import { PAGE_SIZE } from './uffd-abi.js';

/** [start, end) in bytes, both multiples of PAGE_SIZE, start < end. */
export interface Range {
  start: number;
  end: number;
}

export function assertPageRange(r: Range, what: string): void {
  if (
    !Number.isSafeInteger(r.start) ||
    !Number.isSafeInteger(r.end) ||
    r.start % PAGE_SIZE !== 0 ||
    r.end % PAGE_SIZE !== 0 ||
    r.start >= r.end
  ) {
    throw new Error(`${what}: not a page range: 0x${r.start.toString(16)}-0x${r.end.toString(16)}`);
  }
}

/** Sorted, merged copy of any list of ranges. */
export function normalize(ranges: readonly Range[]): Range[] {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) {
      if (r.end > last.end) last.end = r.end;
    } else {
      out.push({ start: r.start, end: r.end });
    }
  }
  return out;
}

export function union(a: readonly Range[], b: readonly Range[]): Range[] {
  return normalize([...a, ...b]);
}

/** a ∩ b; both normalized. */
export function intersect(a: readonly Range[], b: readonly Range[]): Range[] {
  const out: Range[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    const start = Math.max(x.start, y.start);
    const end = Math.min(x.end, y.end);
    if (start < end) out.push({ start, end });
    if (x.end < y.end) i++;
    else j++;
  }
  return out;
}

/** a − b; both normalized. */
export function subtract(a: readonly Range[], b: readonly Range[]): Range[] {
  const out: Range[] = [];
  let j = 0;
  for (const x of a) {
    let cursor = x.start;
    while (j < b.length && b[j]!.end <= cursor) j++;
    let k = j;
    while (k < b.length && b[k]!.start < x.end) {
      const y = b[k]!;
      if (y.start > cursor) out.push({ start: cursor, end: y.start });
      cursor = Math.max(cursor, y.end);
      if (cursor >= x.end) break;
      k++;
    }
    if (cursor < x.end) out.push({ start: cursor, end: x.end });
  }
  return out;
}

export function pageCount(ranges: readonly Range[]): number {
  let pages = 0;
  for (const r of ranges) pages += (r.end - r.start) / PAGE_SIZE;
  return pages;
}

/** Whether address lies in the normalized list (binary search). */
export function containsAddress(ranges: readonly Range[], address: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid]!;
    if (address < r.start) hi = mid - 1;
    else if (address >= r.end) lo = mid + 1;
    else return true;
  }
  return false;
}

export function formatRange(r: Range): string {
  return `0x${r.start.toString(16)}-0x${r.end.toString(16)}`;
}
