// The store's index costs (issue 11, "constant cost at scale"), on synthetic chunk ids
// in a store on tmpfs: the commit of a 1 GiB all-new checkpoint (262,144 page chunks),
// restore's lookup of their locations, the index's bytes per chunk, and a 1%-dirty
// checkpoint (lookup of its dirty ids, then its commit) in an empty store and in one
// pre-filled with synthetic chunk entries. Chunk data is 64 bytes per chunk: what is
// measured is the index, not pack I/O (the e2e section measures ingest against cp).
import { randomBytes } from 'node:crypto';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CHUNK_ID_BYTES, Compression, PAGE_BYTES } from '../src/store/format.js';
import { openCodecs } from '../src/controller/codecs.js';
import { type ChunkCodec, Repository } from '../src/store/repository.js';
import { GIB, printTable, type Scratch, verdict } from './util.js';

export const STORE_TARGETS = { commitMs: 50, locateMsPerGiB: 50, indexBytesPerChunk: 24, prefilledRatio: 1.2 };
/** Synthetic chunk entries of the pre-filled store (the issue asks for 50 M; SQLite takes minutes per 10 M). */
const PREFILL_ENTRIES = 5_000_000;
const PAGES_PER_GIB = GIB / PAGE_BYTES;
const DIRTY_SHARE = 0.01;
const STORED = randomBytes(64);

export interface StoreResults {
  commitMs: number;
  locateMsPerGiB: number;
  indexBytesPerChunk: number;
  dirtyEmptyMs: number;
  dirtyPrefilledMs: number;
  prefilled: number;
}

function openStore(dir: string): Repository {
  mkdirSync(dir, { mode: 0o700 });
  const repo = Repository.open(dir, { create: true });
  const now = Date.now();
  repo.saveJob({ name: 'bench', createdAt: now, command: ['bench'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: now });
  return repo;
}

/** Commits `count` new chunks as one checkpoint; returns the milliseconds of commitCheckpoint. */
async function commitNew(repo: Repository, codec: ChunkCodec, ids: Uint8Array): Promise<number> {
  const writer = repo.newChunkWriter(codec);
  const n = ids.length / CHUNK_ID_BYTES;
  for (let i = 0; i < n; i++) writer.putStored(ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), STORED, PAGE_BYTES, Compression.Lz4);
  const t = performance.now();
  await repo.commitCheckpoint(
    { job: 'bench', kind: 'checkpoint', takenAt: Date.now(), mode: 'full', rootPid: null, imageBytes: n * PAGE_BYTES, pagesTotal: n, pagesHashed: n, pagesClean: 0, durationMs: 0, freezeMs: 0, note: null },
    [{ role: 'image', path: 'pages-1.img', size: n * PAGE_BYTES, mode: 0o600, uid: 0, gid: 0, blockBytes: PAGE_BYTES, ids, identity: null }],
    writer,
  );
  return performance.now() - t;
}

/** A 1%-dirty checkpoint of a 1 GiB job: the lookup of its dirty ids (all new), then their commit. */
async function dirtyCheckpoint(repo: Repository, codec: ChunkCodec): Promise<number> {
  const dirty = Math.round(PAGES_PER_GIB * DIRTY_SHARE);
  const ids = new Uint8Array(randomBytes(dirty * CHUNK_ID_BYTES));
  const t = performance.now();
  const unknown = repo.unknownChunks(ids, Array.from({ length: dirty }, (_, i) => i));
  if (unknown.length !== dirty) throw new Error('random ids found in the store');
  await commitNew(repo, codec, ids);
  return performance.now() - t;
}

/** Synthetic entries straight into the index: a pack row and `count` chunk rows in it. */
function prefill(repo: Repository, count: number): void {
  const pack = repo.db.prepare('INSERT INTO packs (name, bytes, created_at) VALUES (?, ?, ?)').run(randomBytes(16).toString('hex'), 1, Date.now()).lastInsertRowid;
  const ins = repo.db.prepare('INSERT INTO chunks (id, pack, offset, stored_length, raw_length, compression) VALUES (?, ?, ?, 64, 4096, 1)');
  const batch = 1_000_000;
  for (let done = 0; done < count; done += batch) {
    const ids = randomBytes(batch * CHUNK_ID_BYTES);
    repo.db.transaction(() => {
      for (let i = 0; i < batch && done + i < count; i++) ins.run(ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), pack, 16 + (done + i) * 92);
    })();
  }
}

export async function storeCosts(scratch: Scratch): Promise<StoreResults> {
  const empty = openStore(scratch.dir('store-empty'));
  // The manifest of 262,144 pages is indirect: its parts are hashed and compressed as in a real commit.
  const codecs = await openCodecs(empty);
  const codec = codecs.chunks;
  const all = new Uint8Array(randomBytes(PAGES_PER_GIB * CHUNK_ID_BYTES));
  const commitMs = await commitNew(empty, codec, all);
  let t = performance.now();
  empty.locateChunks(all);
  const locateMsPerGiB = performance.now() - t;
  empty.db.pragma('wal_checkpoint(TRUNCATE)');
  const indexBytesPerChunk = statSync(join(empty.dir, 'index.sqlite')).size / PAGES_PER_GIB;
  // The same store, A B A B against a pre-filled one.
  const full = openStore(scratch.dir('store-full'));
  t = performance.now();
  prefill(full, PREFILL_ENTRIES);
  console.log(`\nstore: ${PREFILL_ENTRIES} synthetic entries in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  const a: number[] = [];
  const b: number[] = [];
  for (let round = 0; round < 3; round++) {
    a.push(await dirtyCheckpoint(empty, codec));
    b.push(await dirtyCheckpoint(full, codec));
  }
  await codecs.pool.close();
  empty.close();
  full.close();
  const median = (v: number[]) => v.sort((x, y) => x - y)[v.length >> 1]!;
  const results = { commitMs, locateMsPerGiB, indexBytesPerChunk, dirtyEmptyMs: median(a), dirtyPrefilledMs: median(b), prefilled: PREFILL_ENTRIES };
  printTable('Store index (synthetic ids; 64-byte chunk data)', ['measure', 'result', 'wanted', 'PASS/MISS'], storeRows(results));
  return results;
}

export function storeRows(r: StoreResults): string[][] {
  const ratio = r.dirtyPrefilledMs / r.dirtyEmptyMs;
  return [
    ['commit of a 1 GiB all-new checkpoint, ms', r.commitMs.toFixed(0), `≤ ${STORE_TARGETS.commitMs}`, verdict(r.commitMs, STORE_TARGETS.commitMs, true)],
    ["restore's chunk lookup, ms per GiB", r.locateMsPerGiB.toFixed(0), `≤ ${STORE_TARGETS.locateMsPerGiB}`, verdict(r.locateMsPerGiB, STORE_TARGETS.locateMsPerGiB, true)],
    ['index on disk, bytes per unique chunk', r.indexBytesPerChunk.toFixed(0), `≤ ${STORE_TARGETS.indexBytesPerChunk}`, verdict(r.indexBytesPerChunk, STORE_TARGETS.indexBytesPerChunk, true)],
    [`1%-dirty checkpoint, ${(r.prefilled / 1e6).toFixed(0)} M entries vs empty (${r.dirtyPrefilledMs.toFixed(0)} / ${r.dirtyEmptyMs.toFixed(0)} ms)`, `${ratio.toFixed(2)}×`, `≤ ${STORE_TARGETS.prefilledRatio}× at 50 M`, verdict(ratio, STORE_TARGETS.prefilledRatio, true)],
  ];
}
