// Half-open ranges [start, end) of addresses or file bytes: the type is page-ranges.ts's.
import { PAGE_SIZE } from '../../codec/limits.js';
import type { Range } from '../page-ranges.js';

export type { Range };

export function pageAlignedRange(start: number, length: number): Range {
  return { start: Math.floor(start / PAGE_SIZE) * PAGE_SIZE, end: Math.ceil((start + length) / PAGE_SIZE) * PAGE_SIZE };
}

/**
 * A set of disjoint ranges kept sorted and merged (touching ranges join), so its size
 * is the number of separate runs, not the number of inserts.
 */
export class RangeSet {
  private readonly ranges: Range[] = [];

  get size(): number {
    return this.ranges.length;
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    // First range that ends at or after start: it and the following ones that begin at
    // or before end merge with [start, end).
    let low = 0;
    let high = this.ranges.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.ranges[middle]!.end < start) low = middle + 1;
      else high = middle;
    }
    let last = low;
    let mergedStart = start;
    let mergedEnd = end;
    while (last < this.ranges.length && this.ranges[last]!.start <= end) {
      mergedStart = Math.min(mergedStart, this.ranges[last]!.start);
      mergedEnd = Math.max(mergedEnd, this.ranges[last]!.end);
      last++;
    }
    this.ranges.splice(low, last - low, { start: mergedStart, end: mergedEnd });
  }

  addAll(ranges: Iterable<Range>): void {
    for (const range of ranges) this.add(range.start, range.end);
  }

  toArray(): Range[] {
    return this.ranges.map((range) => ({ ...range }));
  }
}
