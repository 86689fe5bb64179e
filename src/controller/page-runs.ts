// The addresses of a process's pages at a checkpoint, as runs of consecutive pages: a
// few numbers per run instead of 8 bytes a page (a 16 GiB job's pages are 4 Mi
// addresses, mostly in a handful of runs). Read in ascending order through a cursor.
import { strict as assert } from 'node:assert';
import { PAGE_BYTES } from '../store/format.js';

const INITIAL_RUNS = 64;

export class PageRuns {
  private starts = new Float64Array(INITIAL_RUNS);
  private counts = new Float64Array(INITIAL_RUNS);
  private runs = 0;
  /** Pages in all runs. */
  length = 0;

  /** The address past the last page (0 when there is none). */
  get end(): number {
    const last = this.runs - 1;
    return last < 0 ? 0 : this.starts[last]! + this.counts[last]! * PAGE_BYTES;
  }

  /** Appends nrPages pages from vaddr on; vaddr must be at or above end (the caller checks). */
  append(vaddr: number, nrPages: number): void {
    if (nrPages === 0) return;
    const last = this.runs - 1;
    if (last >= 0) {
      const end = this.end;
      assert(vaddr >= end, 'page runs appended out of order');
      if (vaddr === end) {
        this.counts[last]! += nrPages;
        this.length += nrPages;
        return;
      }
    }
    if (this.runs === this.starts.length) {
      const starts = new Float64Array(this.runs * 2);
      starts.set(this.starts);
      this.starts = starts;
      const counts = new Float64Array(this.runs * 2);
      counts.set(this.counts);
      this.counts = counts;
    }
    this.starts[this.runs] = vaddr;
    this.counts[this.runs] = nrPages;
    this.runs++;
    this.length += nrPages;
  }

  cursor(): PageRunCursor {
    return new PageRunCursor(this.starts, this.counts, this.runs);
  }
}

/** A position among the pages of PageRuns, moved forward only. */
export class PageRunCursor {
  /** The current page's index among all pages (== length when done). */
  index = 0;
  private run = 0;
  private offset = 0;

  constructor(
    private readonly starts: Float64Array,
    private readonly counts: Float64Array,
    private readonly runs: number,
  ) {}

  get done(): boolean {
    return this.run >= this.runs;
  }

  /** The current page's address (valid unless done). */
  get vaddr(): number {
    return this.starts[this.run]! + this.offset * PAGE_BYTES;
  }

  /** Moves to the next page. */
  next(): void {
    this.index++;
    if (++this.offset === this.counts[this.run]) {
      this.run++;
      this.offset = 0;
    }
  }

  /** Moves forward to the first page at or above vaddr. */
  skipBelow(vaddr: number): void {
    while (this.run < this.runs) {
      const start = this.starts[this.run]!;
      const count = this.counts[this.run]!;
      if (vaddr <= start + this.offset * PAGE_BYTES) return;
      const want = Math.ceil((vaddr - start) / PAGE_BYTES);
      if (want < count) {
        this.index += want - this.offset;
        this.offset = want;
        return;
      }
      this.index += count - this.offset;
      this.run++;
      this.offset = 0;
    }
  }
}
