// Garbage collection (docs/FORMAT.md, "Garbage collection"): mark every chunk that a
// checkpoint's manifest names, sweep the index rows of the others, delete packs left
// without live chunks, and repack packs whose live share fell below
// REPACK_BELOW_LIVE_RATIO. Packs about to be written or deleted are noted first in a
// writer journal, and files are deleted only after the index stops naming them, so a
// crash at any point leaves at worst packs that the next GC or open removes.
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { tryLockExclusive } from '../sys/libc.js';
import { isGone } from '../sys/proc.js';
import { BLOB_HEADER_BYTES, CHUNK_ID_BYTES, type Compression, LOCKS_DIR, PACK_HEADER_BYTES, PACK_TRAILER_BYTES } from './format.js';
import { IdSet } from './id-set.js';
import { type ChunkTable, listPacks, loadChunkTable, manifestBytes, maxCheckpointId, walkManifests } from './inventory.js';
import { deadWriterJournals, WriterJournal } from './journal.js';
import { PACK_INDEX_SUFFIX, packKey } from './objects.js';
import { PARTIAL_SUFFIX, packPath } from './pack.js';
import { removeFilesDurable } from './durable.js';
import { type ChunkCodec, isZeroId, type Repository } from './repository.js';
import { RemoteStoreUnsupportedError, StoreError } from './errors.js';
import { lockStore } from './store-lock.js';

/** A pack whose live blobs fill less than this share of it is rewritten without the dead ones. */
export const REPACK_BELOW_LIVE_RATIO = 0.5;
/** One GC per store at a time (a job name cannot start with '_'). */
const GC_LOCK_FILE = '_gc.lock';

export class GcBusyError extends StoreError {
  override name = 'GcBusyError';
  constructor(dir: string) {
    super(`another crinc gc is running on ${dir}; wait for it to finish`);
  }
}

export type GcPhase = 'mark' | 'repack';

export interface GcOptions {
  dryRun: boolean;
  /** Bytes of manifests walked (mark), then bytes of live blobs copied (repack). */
  onProgress?: (doneBytes: number, totalBytes: number, phase: GcPhase) => void;
}

export interface GcResult {
  dryRun: boolean;
  checkpoints: number;
  liveChunks: number;
  deadChunks: number;
  /** Packs deleted because none of their chunks is live. */
  deadPacks: number;
  repackedPacks: number;
  newPacks: number;
  /** Packs left by interrupted commits or GCs (named in the journal of a writer that died). */
  orphanFiles: number;
  /** Bytes of pack files before and after (on disk, orphans included). */
  bytesBefore: number;
  bytesAfter: number;
  bytesFreed: number;
}

interface PackPlan {
  id: number;
  name: string;
  bytes: number;
  live: number[]; // chunk table indexes, by offset
  liveBlobBytes: number;
}

export async function collectGarbage(repo: Repository, codec: ChunkCodec, options: GcOptions): Promise<GcResult> {
  if (repo.remote) {
    throw new RemoteStoreUnsupportedError(
      repo.location,
      'gc',
      "each checkpoint object names the packs it wrote, and a repack would leave it naming deleted ones. Forgetting checkpoints (crinc prune, --keep-*) works; their packs' space stays used",
    );
  }
  const gcFd = openSync(join(repo.dir, LOCKS_DIR, GC_LOCK_FILE), 'a+', 0o600);
  try {
    if (!tryLockExclusive(gcFd)) throw new GcBusyError(repo.dir);
    // Mark without the store lock (checkpoints go on), then, under it, the checkpoints
    // committed meanwhile: forgetting only removes references, so the set stays a superset.
    const live = new IdSet();
    const markedUpTo = maxCheckpointId(repo);
    const totalManifest = manifestBytes(repo);
    let walked = 0;
    const mark = (upTo: number, after: number) =>
      walkManifests(repo, codec, { after, upTo }, (f) => {
        if (f.error) throw f.error; // an unreadable manifest: which chunks it needs is unknown
        if (f.parts) addIds(live, f.parts);
        addIds(live, f.ids!);
        walked += (f.parts ?? f.ids!).length;
        options.onProgress?.(Math.min(walked, totalManifest), totalManifest, 'mark');
      });
    await mark(markedUpTo, 0);
    const lock = await lockStore(repo.dir, 'exclusive');
    try {
      await mark(Number.MAX_SAFE_INTEGER, markedUpTo);
      return await sweepAndRepack(repo, codec, live, options);
    } finally {
      lock.release();
    }
  } finally {
    closeSync(gcFd);
  }
}

function addIds(set: IdSet, ids: Uint8Array): void {
  for (let o = 0; o < ids.length; o += CHUNK_ID_BYTES) if (!isZeroId(ids, o / CHUNK_ID_BYTES)) set.add(ids, o);
}

/** Under the exclusive store lock. */
async function sweepAndRepack(repo: Repository, codec: ChunkCodec, live: IdSet, options: GcOptions): Promise<GcResult> {
  const table = loadChunkTable(repo);
  const packs = listPacks(repo);
  const plans = new Map<number, PackPlan>(packs.map((p) => [p.id, { ...p, live: [], liveBlobBytes: 0 }]));
  const dead: number[] = [];
  for (let i = 0; i < table.ids.size; i++) {
    if (!live.has(table.ids.idAt(i))) {
      dead.push(i);
      continue;
    }
    const plan = plans.get(table.pack[i]!);
    if (!plan) throw new Error(`chunk row names pack ${table.pack[i]}, which has no row`);
    plan.live.push(i);
    plan.liveBlobBytes += BLOB_HEADER_BYTES + table.storedLength[i]!;
  }
  const orphans = abandoned(repo).files;
  const deadPacks = [...plans.values()].filter((p) => p.live.length === 0);
  const repack = [...plans.values()].filter((p) => p.live.length > 0 && p.liveBlobBytes / (p.bytes - PACK_HEADER_BYTES - PACK_TRAILER_BYTES) < REPACK_BELOW_LIVE_RATIO);
  const orphanBytes = orphans.reduce((n, f) => n + fileSize(f), 0);
  const journal = new WriterJournal(repo.dir);
  const bytesBefore = packs.reduce((n, p) => n + p.bytes, 0) + orphanBytes;
  const result: GcResult = {
    dryRun: options.dryRun,
    checkpoints: repo.db.prepare('SELECT count(*) FROM checkpoints').pluck().get() as number,
    liveChunks: table.ids.size - dead.length,
    deadChunks: dead.length,
    deadPacks: deadPacks.length,
    repackedPacks: repack.length,
    newPacks: 0,
    orphanFiles: orphans.length,
    bytesBefore,
    bytesAfter: 0,
    bytesFreed: 0,
  };
  if (options.dryRun) {
    // What a repack would write: the live blobs between a header and a trailer per pack.
    const copied = repack.reduce((n, p) => n + p.liveBlobBytes + PACK_HEADER_BYTES + PACK_TRAILER_BYTES, 0);
    const removed = orphanBytes + [...deadPacks, ...repack].reduce((n, p) => n + p.bytes, 0);
    result.bytesAfter = bytesBefore - removed + copied;
    result.bytesFreed = bytesBefore - result.bytesAfter;
    return result;
  }

  // 1. Sweep: the index forgets empty packs (their chunk index entries are dead from
  // then on), then their files go.
  const bumpGeneration = repo.db.prepare(`UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'gc_generation'`);
  const delPack = repo.db.prepare('DELETE FROM packs WHERE id = ?');
  for (const p of [...deadPacks, ...repack]) journal.note(p.name);
  repo.db.transaction(() => {
    for (const p of deadPacks) delPack.run(p.id);
    bumpGeneration.run();
  })();
  removeAbandonedPacks(repo);
  deadPacks.forEach((p, k) => {
    if (k === Math.floor(deadPacks.length / 2)) faultPoint('gc-mid-sweep');
    repo.removePackFile(p.name);
  });
  if (deadPacks.length === 0) faultPoint('gc-mid-sweep');

  // 2. Repack: copy the live blobs into new packs, point the index at the copies, then
  // delete the old packs.
  if (repack.length > 0) {
    const total = repack.reduce((n, p) => n + p.liveBlobBytes, 0);
    let copied = 0;
    const writer = repo.newChunkWriter(codec);
    try {
      for (const p of repack) {
        p.live.sort((a, b) => table.offset[a]! - table.offset[b]!);
        for (const i of p.live) {
          writer.putStored(table.ids.idAt(i).slice(), await readBlob(repo, p.name, table, i), table.rawLength[i]!, table.compression[i]! as Compression);
          copied += BLOB_HEADER_BYTES + table.storedLength[i]!;
          options.onProgress?.(copied, total, 'repack');
        }
      }
      const written = writer.finish();
      await repo.storePacks(written);
      faultPoint('gc-repack-written');
      repo.db.transaction(() => {
        // The copies' runs are the newest: they place the chunks from now on.
        repo.indexPacks(written.map((w) => ({ name: w.name, bytes: w.bytes })), writer.runs);
        for (const p of repack) delPack.run(p.id);
        bumpGeneration.run();
      })();
      result.newPacks = written.length;
      result.bytesAfter += written.reduce((n, w) => n + w.bytes, 0);
    } catch (e) {
      writer.abandon();
      throw e;
    }
    writer.committed();
    faultPoint('gc-before-delete');
    for (const p of repack) repo.removePackFile(p.name);
  }
  journal.close();
  faultPoint('gc-after-delete');
  // One run of the live chunks: entries of deleted packs and of dead chunks go.
  repo.compactChunkIndex({ all: true, live });
  const kept = [...plans.values()].filter((p) => p.live.length > 0 && !repack.includes(p));
  result.bytesAfter += kept.reduce((n, p) => n + p.bytes, 0);
  result.bytesFreed = bytesBefore - result.bytesAfter;
  return result;
}

/** A live blob's stored bytes, after checking its header against the index. */
async function readBlob(repo: Repository, pack: string, table: ChunkTable, i: number): Promise<Uint8Array> {
  const stored = table.storedLength[i]!;
  const buf = new Uint8Array(BLOB_HEADER_BYTES + stored);
  const got = await repo.readPackInto(pack, table.offset[i]! - BLOB_HEADER_BYTES, buf);
  const header = Buffer.from(buf.buffer, 0, BLOB_HEADER_BYTES);
  if (
    got !== buf.length ||
    Buffer.compare(header.subarray(0, CHUNK_ID_BYTES), table.ids.idAt(i)) !== 0 ||
    header.readUInt32LE(16) !== table.rawLength[i] ||
    header.readUInt32LE(20) !== stored ||
    header[24] !== table.compression[i]
  ) {
    throw new StoreError(`pack ${pack} does not hold the chunk the index places at offset ${table.offset[i]}: the store is damaged; run crinc verify`);
  }
  return buf.subarray(BLOB_HEADER_BYTES);
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch (e) {
    if (isGone(e)) return 0; // an abandoned pack removed by its writer meanwhile
    throw e;
  }
}

/** The journals of dead writers, and the files of their packs that the index does not name (docs/FORMAT.md, "Writer journals"). */
function abandoned(repo: Repository): { journals: string[]; packs: string[]; files: string[] } {
  const indexed = new Set(listPacks(repo).map((p) => p.name));
  const journals = deadWriterJournals(repo.dir);
  const packs = journals.flatMap((j) => j.packs).filter((name) => !indexed.has(name));
  const files = packs.flatMap((name) => {
    const pack = packPath(repo.dir, name);
    return [pack, pack + PARTIAL_SUFFIX, join(repo.dir, packKey(name, PACK_INDEX_SUFFIX))];
  });
  return { journals: journals.map((j) => j.path), packs, files: files.filter((f) => existsSync(f)) };
}

/**
 * Crash recovery and GC, with the store lock held exclusive (nobody is between creating
 * a pack and committing it): deletes the packs that dead writers noted in their journals
 * and the index does not name, then the journals. Returns the files deleted. A pack no
 * journal names is never deleted here, whatever the index says.
 */
export function removeAbandonedPacks(repo: Repository): string[] {
  const { journals, packs, files } = abandoned(repo);
  repo.closePacks();
  removeFilesDurable(files);
  // Their chunk index runs, which no listing names either.
  for (const name of packs) repo.chunkIndex.removeUnlistedRuns(name);
  removeFilesDurable(journals);
  return files;
}
