// The chunk index on its own (src/store/chunk-index.ts, index-run.ts): runs written per
// pack, listed in a real SQLite index, merged; every lookup checked against a model of
// what was indexed. Pack chunk tables are real .idx files; no pack data is needed.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ChunkIndex, CHUNK_INDEX_DIR, COMPACT_LOCK_FILE, lockMerges } from '../src/store/chunk-index.js';
import { writeFileDurable } from '../src/store/durable.js';
import { tryLockExclusive } from '../src/sys/libc.js';
import { CHUNK_ID_BYTES, LOCKS_DIR } from '../src/store/format.js';
import { IdSet } from '../src/store/id-set.js';
import { sortedOrder } from '../src/store/index-run.js';
import { encodePackIndex, PACK_INDEX_SUFFIX, packKey } from '../src/store/objects.js';
import { PackedChunks } from '../src/store/pack.js';
import { SCHEMA_MIGRATIONS, SCHEMA_V1 } from '../src/store/schema.js';

const hex = (b: Uint8Array, o = 0) => Buffer.from(b.subarray(o, o + CHUNK_ID_BYTES)).toString('hex');

describe('the chunk index', () => {
  const dir = mkdtempSync('/tmp/crinc-chunk-index-');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, LOCKS_DIR), { mode: 0o700 });
  const db = new Database(join(dir, 'index.sqlite'));
  db.exec(SCHEMA_V1);
  for (const m of SCHEMA_MIGRATIONS) db.exec(m.sql);
  const index = new ChunkIndex(dir, () => db, true);
  /** What the index must answer: id → pack and ordinal of its newest copy in a listed pack. */
  const model = new Map<string, { pack: string; ordinal: number; offset: number }>();

  /** A pack of `ids` (plus `count` fresh ones): its .idx, its run, listed in one transaction. */
  function addPack(count: number, reuse: Uint8Array[] = []): { name: string; ids: Uint8Array[] } {
    const name = randomBytes(16).toString('hex');
    const chunks = new PackedChunks();
    const ids = [...reuse, ...Array.from({ length: count }, () => new Uint8Array(randomBytes(CHUNK_ID_BYTES)))];
    ids.forEach((id, i) => {
      chunks.push(id, 16 + i * 100, 64, 4096, 1);
    });
    writeFileDurable(join(dir, packKey(name, PACK_INDEX_SUFFIX)), encodePackIndex(chunks, 16 + ids.length * 100 + 16));
    const run = index.writePackRun(name, chunks);
    db.transaction(() => {
      db.prepare('INSERT INTO packs (name, bytes, created_at) VALUES (?, 1, 0)').run(name);
      index.register([run]);
    })();
    ids.forEach((id, i) => {
      model.set(hex(id), { pack: name, ordinal: i, offset: 16 + i * 100 });
    });
    return { name, ids };
  }

  function checkAgainstModel(): void {
    index.refresh();
    const all = [...model.keys()];
    const ids = new Uint8Array(Buffer.concat(all.map((h) => Buffer.from(h, 'hex'))));
    const absent = new Uint8Array(randomBytes(1000 * CHUNK_ID_BYTES));
    // One at a time, in a batch (walked or looked up per id), and the whole view.
    for (const [h, want] of model) {
      const got = index.find(Buffer.from(h, 'hex'));
      expect(got).toEqual({ pack: want.pack, ordinal: want.ordinal });
    }
    for (let k = 0; k < 1000; k++) expect(index.has(absent, k * CHUNK_ID_BYTES)).toBe(false);
    for (const sample of [ids, ids.subarray(0, 3 * CHUNK_ID_BYTES)]) {
      const n = sample.length / CHUNK_ID_BYTES;
      const placed = index.locateMany(sample, n);
      for (let k = 0; k < n; k++) {
        const want = model.get(hex(sample, k * CHUNK_ID_BYTES))!;
        expect(placed.packs[placed.packIndex[k]!]).toBe(want.pack);
        expect(placed.offset[k]).toBe(want.offset);
        expect(placed.storedLength[k]).toBe(64);
      }
    }
    const missing = index.findMany(absent, 1000);
    expect(missing.packIndex.every((p) => p === -1)).toBe(true);
    const seen = new Map<string, string>();
    index.forEach((id, at, place) => {
      expect(seen.has(hex(id, at))).toBe(false);
      seen.set(hex(id, at), place.pack);
    });
    expect(seen.size).toBe(model.size);
    for (const [h, want] of model) expect(seen.get(h)).toBe(want.pack);
  }

  it('sorts ids by their bytes, ties on the first four bytes included', () => {
    const ids = new Uint8Array(randomBytes(5000 * CHUNK_ID_BYTES));
    // Force equal prefixes in a few.
    for (let k = 1; k < 50; k++) ids.copyWithin(k * 100 * CHUNK_ID_BYTES, 0, 4);
    const order = sortedOrder(ids, 5000);
    const sorted = [...order].map((i) => hex(ids, i * CHUNK_ID_BYTES));
    expect(sorted).toEqual([...sorted].sort());
    expect(new Set(order).size).toBe(5000);
  });

  it('finds every chunk of many packs, and none it never had, before and after merges', () => {
    for (let p = 0; p < 12; p++) addPack(500 + p * 300);
    index.refresh();
    expect(index.shape().runs).toBe(12);
    checkAgainstModel();
    index.compact();
    expect(index.shape().runs).toBeLessThan(12);
    checkAgainstModel();
    index.compact({ all: true });
    expect(index.shape().runs).toBe(1);
    checkAgainstModel();
    // Merged runs replaced the pack runs: only listed runs are left on disk.
    const listed = new Set(db.prepare('SELECT name FROM index_runs').pluck().all() as string[]);
    expect(readdirSync(join(dir, CHUNK_INDEX_DIR)).filter((f) => !listed.has(f))).toEqual([]);
  });

  it('walks a batch of present, absent, repeated and prefix-sharing ids, dense and sparse', () => {
    const { ids: stored } = addPack(40_000);
    index.compact({ all: true });
    index.refresh();
    /** Ids of the query and the pack each must be found in (undefined: absent). */
    const query: Uint8Array[] = [];
    for (let i = 0; i < stored.length; i += 2) query.push(stored[i]!);
    for (let i = 0; i < 300; i++) query.push(stored[i * 7]!, stored[i * 7]!); // repeats
    for (let i = 0; i < 500; i++) query.push(new Uint8Array(randomBytes(CHUNK_ID_BYTES)));
    for (let i = 0; i < 500; i++) {
      // Absent, but with a stored id's first 15 bytes (its prefix too).
      const near = new Uint8Array(stored[i * 13 + 1]!);
      near[15]! ^= 0x5a;
      query.push(near);
    }
    // Sparse: one wanted id per ~400 entries, walked (more than WALK_SHARE of the blocks), with seeks.
    const sparse = Array.from({ length: 100 }, (_, i) => stored[i * 400 + 3]!);
    for (const batch of [query, sparse]) {
      const shuffled = batch.map((id) => ({ id, r: Math.random() })).sort((a, b) => a.r - b.r).map((x) => x.id);
      const ids = new Uint8Array(Buffer.concat(shuffled));
      const found = index.findMany(ids, shuffled.length);
      for (let k = 0; k < shuffled.length; k++) {
        const want = model.get(hex(shuffled[k]!));
        if (!want) {
          expect(found.packIndex[k]).toBe(-1);
          continue;
        }
        expect(found.packs[found.packIndex[k]!]).toBe(want.pack);
        expect(found.ordinal[k]).toBe(want.ordinal);
      }
    }
  });

  it('places a chunk stored again at its newest copy, also across merges', () => {
    const older = [...model.keys()].slice(0, 40).map((h) => new Uint8Array(Buffer.from(h, 'hex')));
    addPack(100, older);
    checkAgainstModel();
    index.compact({ all: true });
    checkAgainstModel();
  });

  it('drops entries of packs the index no longer lists, and with a live set the dead ids', async () => {
    const gone = addPack(700);
    addPack(300);
    db.prepare('DELETE FROM packs WHERE name = ?').run(gone.name);
    for (const id of gone.ids) model.delete(hex(id));
    checkAgainstModel();
    const live = new IdSet();
    const keep = [...model.keys()].filter((_, i) => i % 3 !== 0);
    for (const h of keep) live.add(Buffer.from(h, 'hex'));
    for (const h of [...model.keys()]) if (!keep.includes(h)) model.delete(h);
    const merges = await lockMerges(dir);
    index.collect(live);
    merges.release();
    expect(index.entryCount()).toBe(model.size);
    checkAgainstModel();
  });

  it("another process's view drops the ids a GC merge of a single run left out", async () => {
    index.compact({ all: true });
    const other = new ChunkIndex(dir, () => db, true); // a long-lived controller's
    other.refresh();
    const all = [...model.keys()];
    for (const h of all) expect(other.has(Buffer.from(h, 'hex'))).toBe(true); // now known: answered without a read
    // GC: one run in, one run out, no pack deleted; only the dead ids are gone.
    const dead = all.filter((_, i) => i % 2 === 0);
    const live = new IdSet();
    for (const h of all.filter((_, i) => i % 2 === 1)) live.add(Buffer.from(h, 'hex'));
    for (const h of dead) model.delete(h);
    // A merge under way in another process (its lock held): GC waits for it, and while GC
    // holds the lock, a merge of another process is skipped.
    const merging = openSync(join(dir, LOCKS_DIR, COMPACT_LOCK_FILE), 'a+');
    expect(tryLockExclusive(merging)).toBe(true);
    let locked = false;
    const locking = lockMerges(dir).then((hold) => {
      locked = true;
      return hold;
    });
    await sleep(300);
    expect(locked).toBe(false);
    closeSync(merging);
    const merges = await locking;
    expect(other.compact({ all: true })).toEqual({ merged: 0, entries: 0 });
    index.collect(live);
    merges.release();
    other.refresh();
    for (const h of dead) expect(other.has(Buffer.from(h, 'hex'))).toBe(false);
    for (const h of model.keys()) expect(other.has(Buffer.from(h, 'hex'))).toBe(true);
    other.close();
  });

  it('refuses a run whose entry names another chunk than its pack table holds', () => {
    const { name, ids } = addPack(10);
    // The pack's table rewritten in another order: the index's ordinals no longer match.
    const chunks = new PackedChunks();
    [...ids].reverse().forEach((id, i) => {
      chunks.push(id, 16 + i * 100, 64, 4096, 1);
    });
    writeFileDurable(join(dir, packKey(name, PACK_INDEX_SUFFIX)), encodePackIndex(chunks, 16 + ids.length * 100 + 16));
    index.close();
    index.refresh();
    expect(() => index.find(ids[0]!)).toThrow(/crinc repair/);
  });
});
