// A set of 16-byte chunk ids in typed arrays (open addressing, linear probing): ~24
// bytes per id and no object per id, where a Set of hex strings costs ~100 and a string
// allocation per lookup. Ids are uniformly random (keyed XXH3), so their first four
// bytes are the hash.
import { CHUNK_ID_BYTES, copyId } from './format.js';

const INITIAL_SLOTS = 1 << 12;
/**
 * The ids' storage doubles: the room not yet used is never written, so it costs address
 * space, not memory, while each growth copies and faults in everything added so far
 * (at 1.25×, 262,144 adds copied ~5× their bytes into fresh memory: ~0.1 s here).
 */
const IDS_GROWTH = 2;
/** Grow when more than this fraction of slots is used: keeps probe runs short. */
const MAX_LOAD = 0.5;

export class IdSet {
  private slots: Int32Array; // index into ids + 1; 0 = empty
  private ids: Uint8Array;
  private count = 0;

  constructor(expected = 0) {
    let slots = INITIAL_SLOTS;
    while (slots * MAX_LOAD < expected) slots *= 2;
    this.slots = new Int32Array(slots);
    this.ids = new Uint8Array(Math.max(expected, 16) * CHUNK_ID_BYTES);
  }

  get size(): number {
    return this.count;
  }

  has(id: Uint8Array, offset = 0): boolean {
    return this.find(id, offset) >= 0;
  }

  /** The id's position in insertion order, or -1. */
  indexOf(id: Uint8Array, offset = 0): number {
    return this.find(id, offset);
  }

  /** The id added index-th. */
  idAt(index: number): Uint8Array {
    return this.ids.subarray(index * CHUNK_ID_BYTES, (index + 1) * CHUNK_ID_BYTES);
  }

  /** Adds the id at id[offset..offset+16); false when it was there already. */
  add(id: Uint8Array, offset = 0): boolean {
    if ((this.count + 1) > this.slots.length * MAX_LOAD) this.grow();
    // One probe finds the id or the empty slot it goes to.
    const mask = this.slots.length - 1;
    let s = this.hashOf(id, offset) & mask;
    for (; this.slots[s] !== 0; s = (s + 1) & mask) if (this.equalAt(this.slots[s]! - 1, id, offset)) return false;
    if ((this.count + 1) * CHUNK_ID_BYTES > this.ids.length) {
      const bigger = new Uint8Array(Math.ceil((this.ids.length * IDS_GROWTH) / CHUNK_ID_BYTES) * CHUNK_ID_BYTES);
      bigger.set(this.ids);
      this.ids = bigger;
    }
    // A byte loop: a subarray per id would cost an allocation (a full checkpoint adds 262,144 per GiB).
    copyId(id, offset, this.ids, this.count * CHUNK_ID_BYTES);
    this.slots[s] = ++this.count;
    return true;
  }

  private hashOf(bytes: Uint8Array, offset: number): number {
    return (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>> 0;
  }

  private equalAt(index: number, id: Uint8Array, offset: number): boolean {
    const at = index * CHUNK_ID_BYTES;
    for (let i = 0; i < CHUNK_ID_BYTES; i++) if (this.ids[at + i] !== id[offset + i]) return false;
    return true;
  }

  private find(id: Uint8Array, offset: number): number {
    const mask = this.slots.length - 1;
    for (let s = this.hashOf(id, offset) & mask; ; s = (s + 1) & mask) {
      const entry = this.slots[s]!;
      if (entry === 0) return -1;
      if (this.equalAt(entry - 1, id, offset)) return entry - 1;
    }
  }

  private insertSlot(index: number): void {
    const mask = this.slots.length - 1;
    let s = this.hashOf(this.ids, index * CHUNK_ID_BYTES) & mask;
    while (this.slots[s] !== 0) s = (s + 1) & mask;
    this.slots[s] = index + 1;
  }

  private grow(): void {
    this.slots = new Int32Array(this.slots.length * 2);
    for (let i = 0; i < this.count; i++) this.insertSlot(i);
  }
}
