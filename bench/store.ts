// The store's index costs (issue 11, "constant cost at scale"), on synthetic chunk ids
// in a store on tmpfs: the commit of a 1 GiB all-new checkpoint (262,144 page chunks),
// the merge of the chunk index's runs that follows it, restore's lookup of their
// locations, the index's bytes per chunk, and a 1%-dirty checkpoint (merge of the runs
// earlier commits left, lookup of its dirty ids, its commit) in an empty store and in
// one pre-filled with 50 M synthetic chunk entries (one run, as a merge leaves it).
// Chunk data is 64 bytes per chunk: what is measured is the index, not pack I/O (the
// e2e section measures ingest against cp). The code is warmed up on a small store first,
// as in a long-running crinc; the first lookup of the process is printed beside.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CHUNK_ID_BYTES, Compression, PAGE_BYTES } from '../src/store/format.js';
import { openCodecs } from '../src/controller/codecs.js';
import { type ChunkCodec, Repository } from '../src/store/repository.js';
import { CHUNK_INDEX_DIR } from '../src/store/chunk-index.js';
import { RunWriter } from '../src/store/index-run.js';
import { GIB, printTable, type Scratch, verdict } from './util.js';

export const STORE_TARGETS = { commitMs: 50, locateMsPerGiB: 50, indexBytesPerChunk: 24, prefilledRatio: 1.2 };
/** Synthetic chunk entries of the pre-filled store. */
const PREFILL_ENTRIES = 50_000_000;
/** Synthetic chunk ordinals wrap at this (a pack's chunk table size); never read, the ids being absent. */
const PREFILL_PACK_CHUNKS = 1 << 20;
const PAGES_PER_GIB = GIB / PAGE_BYTES;
const DIRTY_SHARE = 0.01;
const STORED = randomBytes(64);
/** Chunks of the warm-up store, and its lookups after the first. */
const WARM_UP_CHUNKS = 32 * 1024;
const WARM_UP_ROUNDS = 3;

export interface StoreResults {
  commitMs: number;
  mergeMs: number;
  locateMsPerGiB: number;
  /** The first lookup of the process (32 Ki chunks of the warm-up store), compilation included. */
  firstLocateMs: number;
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
  const n = ids.length / CHUNK_ID_BYTES;
  // Sized for its chunks, as takeCheckpoint sizes a writer from the job's memory when no
  // clean pages can be reused (src/controller/checkpoint.ts).
  const writer = repo.newChunkWriter(codec, n);
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
  repo.refreshAfterCollection();
  repo.compactChunkIndex();
  const unknown = repo.unknownChunks(ids, Array.from({ length: dirty }, (_, i) => i));
  if (unknown.length !== dirty) throw new Error('random ids found in the store');
  await commitNew(repo, codec, ids);
  return performance.now() - t;
}

/**
 * Synthetic entries straight into the chunk index: one run of `count` ids in one pack,
 * ascending by construction (the first four bytes count up, the rest is random).
 */
function prefill(repo: Repository, count: number): void {
  const pack = randomBytes(16).toString('hex');
  const dir = join(repo.dir, CHUNK_INDEX_DIR);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const name = `${pack}.run`;
  const writer = new RunWriter(join(dir, name), [pack], count);
  const batch = 1 << 20;
  const ids = new Uint8Array(batch * CHUNK_ID_BYTES);
  for (let done = 0; done < count; done += batch) {
    ids.set(randomBytes(ids.length));
    for (let i = 0; i < batch && done + i < count; i++) {
      const prefix = Math.floor(((done + i) * 2 ** 32) / count);
      const o = i * CHUNK_ID_BYTES;
      ids[o] = prefix >>> 24;
      ids[o + 1] = (prefix >>> 16) & 0xff;
      ids[o + 2] = (prefix >>> 8) & 0xff;
      ids[o + 3] = prefix & 0xff;
      writer.add(ids, o, 0, (done + i) % PREFILL_PACK_CHUNKS);
    }
  }
  const entries = writer.finish();
  repo.db.transaction(() => {
    repo.db.prepare('INSERT INTO packs (name, bytes, created_at) VALUES (?, ?, ?)').run(pack, 1, Date.now());
    repo.db.prepare('INSERT INTO index_runs (name, entries, created_at) VALUES (?, ?, ?)').run(name, entries, Date.now());
  })();
  repo.refreshAfterCollection();
}

/** Bytes of the chunk index: its runs and the SQLite file (which lists runs and packs). */
function indexBytes(repo: Repository): number {
  repo.db.pragma('wal_checkpoint(TRUNCATE)');
  const dir = join(repo.dir, CHUNK_INDEX_DIR);
  return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0) + statSync(join(repo.dir, 'index.sqlite')).size;
}

export async function storeCosts(scratch: Scratch): Promise<StoreResults> {
  const empty = openStore(scratch.dir('store-empty'));
  // The manifest of 262,144 pages is indirect: its parts are hashed and compressed as in a real commit.
  const codecs = await openCodecs(empty);
  const codec = codecs.chunks;
  // A long-running crinc (the daemon, a `crinc run` controller) commits and looks up with
  // compiled code: a warm-up store of WARM_UP_CHUNKS runs both paths first, and the first
  // lookup of this process is reported beside the targets (JIT compilation, once per process).
  const warm = openStore(scratch.dir('store-warm-up'));
  const warmIds = new Uint8Array(randomBytes(WARM_UP_CHUNKS * CHUNK_ID_BYTES));
  await commitNew(warm, codec, warmIds);
  warm.compactChunkIndex();
  let t = performance.now();
  warm.locateChunks(warmIds);
  const firstLocateMs = performance.now() - t;
  for (let i = 0; i < WARM_UP_ROUNDS; i++) warm.locateChunks(warmIds);
  warm.close();
  const all = new Uint8Array(randomBytes(PAGES_PER_GIB * CHUNK_ID_BYTES));
  const commitMs = await commitNew(empty, codec, all);
  t = performance.now();
  empty.compactChunkIndex();
  const mergeMs = performance.now() - t;
  // The runs and the packs' tables are read from the files, as in a restore.
  t = performance.now();
  empty.locateChunks(all);
  const locateMsPerGiB = performance.now() - t;
  // Unique chunks: the pages' and the indirect manifest's parts.
  const indexBytesPerChunk = indexBytes(empty) / empty.chunkIndex.entryCount();
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
  const results = { commitMs, mergeMs, locateMsPerGiB, firstLocateMs, indexBytesPerChunk, dirtyEmptyMs: median(a), dirtyPrefilledMs: median(b), prefilled: PREFILL_ENTRIES };
  printTable('Store index (synthetic ids; 64-byte chunk data)', ['measure', 'result', 'wanted', 'PASS/MISS'], storeRows(results));
  return results;
}

export function storeRows(r: StoreResults): string[][] {
  const ratio = r.dirtyPrefilledMs / r.dirtyEmptyMs;
  return [
    ['commit of a 1 GiB all-new checkpoint, ms', r.commitMs.toFixed(0), `≤ ${STORE_TARGETS.commitMs}`, verdict(r.commitMs, STORE_TARGETS.commitMs, true)],
    ['merge of the chunk index after it (before the next checkpoint), ms', r.mergeMs.toFixed(0), '', ''],
    ["restore's chunk lookup, ms per GiB (code warmed up on another store)", r.locateMsPerGiB.toFixed(0), `≤ ${STORE_TARGETS.locateMsPerGiB}`, verdict(r.locateMsPerGiB, STORE_TARGETS.locateMsPerGiB, true)],
    [`(first lookup in the process, ${WARM_UP_CHUNKS / 1024} Ki chunks: compilation, once), ms`, r.firstLocateMs.toFixed(0), '', ''],
    ['index on disk, bytes per unique chunk', r.indexBytesPerChunk.toFixed(1), `≤ ${STORE_TARGETS.indexBytesPerChunk}`, verdict(r.indexBytesPerChunk, STORE_TARGETS.indexBytesPerChunk, true)],
    [`1%-dirty checkpoint, ${(r.prefilled / 1e6).toFixed(0)} M entries vs empty (${r.dirtyPrefilledMs.toFixed(0)} / ${r.dirtyEmptyMs.toFixed(0)} ms)`, `${ratio.toFixed(2)}×`, `≤ ${STORE_TARGETS.prefilledRatio}× at 50 M`, verdict(ratio, STORE_TARGETS.prefilledRatio, true)],
  ];
}
