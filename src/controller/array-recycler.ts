// Large per-checkpoint arrays (a process's page ids and addresses, the clean-page
// index), handed back once nothing refers to them and reused by the next checkpoint.
// A fresh array costs a page fault per 4 KiB on first touch (12–60 µs in a VM): for a
// 1 GiB job that is ~1,800 faults, a third of a tracked checkpoint's ingest at 1% dirty.
import { strict as assert } from 'node:assert';

/** Buffers kept for reuse at most: a job's processes times the arrays each holds. */
const RECYCLER_MAX_BUFFERS = 64;
/** A kept buffer serves a request of at least this fraction of its size, so little is wasted. */
const RECYCLER_MIN_FILL = 0.5;

export class ArrayRecycler {
  private readonly free: ArrayBuffer[] = [];
  /** Buffers this recycler made: only those come back (a Buffer may share its memory). */
  private readonly made = new WeakSet<ArrayBuffer>();

  /** An array of `length` elements; its content is whatever was there: the caller writes every element. */
  float64(length: number): Float64Array {
    return new Float64Array(this.take(length * Float64Array.BYTES_PER_ELEMENT), 0, length);
  }

  int32(length: number): Int32Array {
    return new Int32Array(this.take(length * Int32Array.BYTES_PER_ELEMENT), 0, length);
  }

  uint8(length: number): Uint8Array {
    return new Uint8Array(this.take(length), 0, length);
  }

  /** Gives arrays back; none of them may be used afterwards. */
  give(...arrays: ArrayBufferView[]): void {
    for (const a of arrays) {
      assert(a.buffer instanceof ArrayBuffer && this.made.has(a.buffer), 'only arrays this recycler made come back');
      if (this.free.includes(a.buffer)) continue;
      if (this.free.length === RECYCLER_MAX_BUFFERS) this.free.shift();
      this.free.push(a.buffer);
    }
  }

  private take(bytes: number): ArrayBuffer {
    // The smallest kept buffer that fits and is not much too big.
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = this.free[i]!.byteLength;
      if (size >= bytes && size * RECYCLER_MIN_FILL <= bytes && (best < 0 || size < this.free[best]!.byteLength)) best = i;
    }
    if (best >= 0) return this.free.splice(best, 1)[0]!;
    const buffer = new ArrayBuffer(bytes);
    this.made.add(buffer);
    return buffer;
  }
}
