// Garbage collection (docs/FORMAT.md, "Garbage collection"): mark every chunk that a
// checkpoint's manifest names, sweep the index rows of the others, delete packs left
// without live chunks, and repack packs whose live share fell below
// REPACK_BELOW_LIVE_RATIO. Packs about to be written or deleted are noted first in a
// writer journal, and files are deleted only after the index stops naming them, so a
// crash at any point leaves at worst packs that the next GC or open removes. On an S3
// store the bucket lock keeps other nodes away, and the checkpoint objects that name a
// pack about to go are rewritten before it goes ("Garbage collection on S3").
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { tryLockExclusive } from '../sys/libc.js';
import { isGone } from '../sys/proc.js';
import { BLOB_HEADER_BYTES, CHUNK_ID_BYTES, type Compression, LOCKS_DIR, PACK_HEADER_BYTES, PACK_TRAILER_BYTES } from './format.js';
import { lockMerges } from './chunk-index.js';
import { IdSet } from './id-set.js';
import { type ChunkTable, checkpointIds, listPacks, loadChunkTable, manifestBytes, maxCheckpointId, walkManifests } from './inventory.js';
import { deadWriterJournals, WriterJournal } from './journal.js';
import { PARTIAL_SUFFIX, type PackWriter, packPath, packTablePath } from './pack.js';
import { removeFilesDurable } from './durable.js';
import type { CommitRecord } from './backend.js';
import { type ChunkCodec, type ChunkWriter, isZeroId, type Repository } from './repository.js';
import { StoreError } from './errors.js';
import { S3Backend } from './s3.js';
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
  const gcFd = openSync(join(repo.dir, LOCKS_DIR, GC_LOCK_FILE), 'a+', 0o600);
  try {
    if (!tryLockExclusive(gcFd)) throw new GcBusyError(repo.dir);
    const backend = repo.storeBackend;
    return backend instanceof S3Backend ? await collectRemote(repo, backend, codec, options) : await collectLocal(repo, codec, options);
  } finally {
    closeSync(gcFd);
  }
}

/** The mark: every chunk a checkpoint's manifests name (indirect parts too) is live. */
class Mark {
  readonly live = new IdSet();
  /** The checkpoints of the index walked so far. */
  readonly checkpoints = new Set<number>();
  private walked = 0;
  private readonly total: number;

  constructor(
    private readonly repo: Repository,
    private readonly codec: ChunkCodec,
    private readonly options: GcOptions,
  ) {
    this.total = manifestBytes(repo);
  }

  /** The checkpoints of the index in the range, or listed. */
  async indexed(range: { after: number; upTo: number } | { ids: number[] }): Promise<void> {
    await walkManifests(this.repo, this.codec, range, (f) => {
      this.checkpoints.add(f.checkpoint);
      if (f.error) throw f.error; // an unreadable manifest: which chunks it needs is unknown
      this.add(f.parts, f.ids!);
    });
  }

  /** A checkpoint known only by its object (one that catch-up left out). */
  async object(record: CommitRecord): Promise<void> {
    for (const f of record.files) this.add(f.indirect ? f.manifest : null, await this.repo.manifestIds(f.manifest, f.indirect, this.codec));
  }

  private add(parts: Uint8Array | null, ids: Uint8Array): void {
    if (parts) addIds(this.live, parts);
    addIds(this.live, ids);
    this.walked += (parts ?? ids).length;
    this.options.onProgress?.(Math.min(this.walked, this.total), this.total, 'mark');
  }
}

async function collectLocal(repo: Repository, codec: ChunkCodec, options: GcOptions): Promise<GcResult> {
  // Mark without the store lock (checkpoints go on), then, under it, the checkpoints
  // committed meanwhile: forgetting only removes references, so the set stays a superset.
  const mark = new Mark(repo, codec, options);
  const markedUpTo = maxCheckpointId(repo);
  await mark.indexed({ after: 0, upTo: markedUpTo });
  const lock = await lockStore(repo.dir, 'exclusive');
  try {
    const merges = await lockMerges(repo.dir);
    try {
      await mark.indexed({ after: markedUpTo, upTo: Number.MAX_SAFE_INTEGER });
      return await sweepAndRepack(repo, codec, mark.live, options);
    } finally {
      merges.release();
    }
  } finally {
    lock.release();
  }
}

/** docs/FORMAT.md, "Garbage collection on S3". */
async function collectRemote(repo: Repository, backend: S3Backend, codec: ChunkCodec, options: GcOptions): Promise<GcResult> {
  const mark = new Mark(repo, codec, options);
  // Under the bucket lock shared: no other node's GC deletes a manifest part meanwhile
  // (one that runs already makes this one fail at once, as it would later).
  const shared = await repo.lockShared('gc', { waitForGc: false });
  try {
    await mark.indexed({ after: 0, upTo: Number.MAX_SAFE_INTEGER });
  } finally {
    shared.release();
  }
  const lock = await lockStore(repo.dir, 'exclusive');
  try {
    const { hold, leftOut } = await backend.holdExclusive(repo, 'gc');
    try {
      const merges = await lockMerges(repo.dir);
      try {
        repo.refreshAfterCollection();
        // Checkpoint ids do not come in order across nodes: everything not walked yet.
        await mark.indexed({ ids: checkpointIds(repo).filter((id) => !mark.checkpoints.has(id)) });
        for (const c of leftOut) await mark.object(c.record);
        return await sweepAndRepackRemote(repo, backend, codec, mark.live, options);
      } finally {
        merges.release();
      }
    } finally {
      hold.release();
    }
  } finally {
    lock.release();
  }
}

function addIds(set: IdSet, ids: Uint8Array): void {
  for (let o = 0; o < ids.length; o += CHUNK_ID_BYTES) if (!isZeroId(ids, o / CHUNK_ID_BYTES)) set.add(ids, o);
}

/** What the live set means for each pack: dead packs (no live chunk), packs to repack, and the figures. */
interface Collection {
  table: ChunkTable;
  plans: PackPlan[];
  deadPacks: PackPlan[];
  repack: PackPlan[];
  result: GcResult;
}

function planCollection(repo: Repository, live: IdSet, dryRun: boolean): Collection {
  const table = loadChunkTable(repo);
  const packs = listPacks(repo);
  const plans = new Map<number, PackPlan>(packs.map((p) => [p.id, { ...p, live: [], liveBlobBytes: 0 }]));
  let deadChunks = 0;
  for (let i = 0; i < table.ids.size; i++) {
    if (!live.has(table.ids.idAt(i))) {
      deadChunks++;
      continue;
    }
    const plan = plans.get(table.pack[i]!);
    if (!plan) throw new Error(`chunk row names pack ${table.pack[i]}, which has no row`);
    plan.live.push(i);
    plan.liveBlobBytes += BLOB_HEADER_BYTES + table.storedLength[i]!;
  }
  const deadPacks = [...plans.values()].filter((p) => p.live.length === 0);
  const repack = [...plans.values()].filter((p) => p.live.length > 0 && p.liveBlobBytes / (p.bytes - PACK_HEADER_BYTES - PACK_TRAILER_BYTES) < REPACK_BELOW_LIVE_RATIO);
  const result: GcResult = {
    dryRun,
    checkpoints: repo.db.prepare('SELECT count(*) FROM checkpoints').pluck().get() as number,
    liveChunks: table.ids.size - deadChunks,
    deadChunks,
    deadPacks: deadPacks.length,
    repackedPacks: repack.length,
    newPacks: 0,
    orphanFiles: 0,
    bytesBefore: packs.reduce((n, p) => n + p.bytes, 0),
    bytesAfter: 0,
    bytesFreed: 0,
  };
  return { table, plans: [...plans.values()], deadPacks, repack, result };
}

/** The figures of a dry run: the repack would write the live blobs between a header and a trailer per pack. */
function dryRunResult(c: Collection, orphanBytes: number): GcResult {
  const copied = c.repack.reduce((n, p) => n + p.liveBlobBytes + PACK_HEADER_BYTES + PACK_TRAILER_BYTES, 0);
  const removed = orphanBytes + [...c.deadPacks, ...c.repack].reduce((n, p) => n + p.bytes, 0);
  const result = { ...c.result };
  result.bytesAfter = result.bytesBefore - removed + copied;
  result.bytesFreed = result.bytesBefore - result.bytesAfter;
  return result;
}

/** Copies the live blobs of the packs to repack, in offset order, into a new writer's packs (finished, not yet stored). */
async function copyLiveBlobs(repo: Repository, codec: ChunkCodec, c: Collection, options: GcOptions): Promise<{ writer: ChunkWriter; written: PackWriter[] }> {
  const total = c.repack.reduce((n, p) => n + p.liveBlobBytes, 0);
  let copied = 0;
  const writer = repo.newChunkWriter(codec);
  try {
    for (const p of c.repack) {
      p.live.sort((a, b) => c.table.offset[a]! - c.table.offset[b]!);
      for (const i of p.live) {
        writer.putStored(c.table.ids.idAt(i).slice(), await readBlob(repo, p.name, c.table, i), c.table.rawLength[i]!, c.table.compression[i]! as Compression);
        copied += BLOB_HEADER_BYTES + c.table.storedLength[i]!;
        options.onProgress?.(copied, total, 'repack');
      }
    }
    return { writer, written: writer.finish() };
  } catch (e) {
    writer.abandon();
    throw e;
  }
}

/** Under the exclusive store lock. */
async function sweepAndRepack(repo: Repository, codec: ChunkCodec, live: IdSet, options: GcOptions): Promise<GcResult> {
  const c = planCollection(repo, live, options.dryRun);
  const { deadPacks, repack, result } = c;
  const orphans = abandoned(repo).files;
  const orphanBytes = orphans.reduce((n, f) => n + fileSize(f), 0);
  result.orphanFiles = orphans.length;
  result.bytesBefore += orphanBytes;
  if (options.dryRun) return dryRunResult(c, orphanBytes);

  // 1. Sweep: the index forgets empty packs (their chunk index entries are dead from
  // then on), then their files go.
  const journal = new WriterJournal(repo.dir);
  const bumpGeneration = repo.db.prepare(`UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'gc_generation'`);
  const delPack = repo.db.prepare('DELETE FROM packs WHERE id = ?');
  for (const p of [...deadPacks, ...repack]) journal.note(p.name);
  repo.db.transaction(() => {
    for (const p of deadPacks) delPack.run(p.id);
    bumpGeneration.run();
  })();
  removeAbandonedPacks(repo);
  for (const [k, p] of deadPacks.entries()) {
    if (k === Math.floor(deadPacks.length / 2)) faultPoint('gc-mid-sweep');
    await repo.removePack(p.name);
  }
  if (deadPacks.length === 0) faultPoint('gc-mid-sweep');

  // 2. Repack: copy the live blobs into new packs, point the index at the copies, then
  // delete the old packs.
  if (repack.length > 0) {
    const { writer, written } = await copyLiveBlobs(repo, codec, c, options);
    try {
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
    for (const p of repack) await repo.removePack(p.name);
  }
  journal.close();
  faultPoint('gc-after-delete');
  // One run of the live chunks: entries of deleted packs and of dead chunks go.
  repo.chunkIndex.collect(live);
  const kept = c.plans.filter((p) => p.live.length > 0 && !repack.includes(p));
  result.bytesAfter += kept.reduce((n, p) => n + p.bytes, 0);
  result.bytesFreed = result.bytesBefore - result.bytesAfter;
  return result;
}

/**
 * Under the exclusive store and bucket locks: repack, rewrite the checkpoint objects that
 * name a pack about to go, delete, then the cache's transaction (docs/FORMAT.md,
 * "Garbage collection on S3"). A checkpoint object never names a deleted pack.
 */
async function sweepAndRepackRemote(repo: Repository, backend: S3Backend, codec: ChunkCodec, live: IdSet, options: GcOptions): Promise<GcResult> {
  const c = planCollection(repo, live, options.dryRun);
  const { repack, result } = c;
  const doomed = [...c.deadPacks, ...repack];
  const doomedNames = new Set(doomed.map((p) => p.name));
  const objects = await backend.readCheckpointObjects();
  // Leftovers: a .pack without its .idx (an upload or a deletion killed) that no object names.
  const listing = await backend.listPackObjects();
  const named = new Set(objects.flatMap((o) => o.record.packs));
  const indexed = new Set(c.plans.map((p) => p.name));
  const leftovers = [...listing.packBytes.keys()].filter((n) => !listing.tables.has(n) && !named.has(n) && !indexed.has(n));
  const uploads = await backend.incompleteUploads();
  const orphanBytes = leftovers.reduce((n, name) => n + listing.packBytes.get(name)!, 0);
  result.orphanFiles = leftovers.length + uploads.length;
  result.bytesBefore += orphanBytes;
  if (options.dryRun) return dryRunResult(c, orphanBytes);

  // 1. Repack: the copies are uploaded with their chunk tables; nothing names them yet.
  let copy: { writer: ChunkWriter; written: PackWriter[] } | undefined;
  if (repack.length > 0) {
    await backend.locks.assertFresh();
    copy = await copyLiveBlobs(repo, codec, c, options);
  }
  const written = copy?.written ?? [];
  try {
    await repo.storePacks(written);
    if (copy) faultPoint('gc-repack-written');

    // 2. Rewrite: each object naming a doomed pack names, instead, the packs that hold the
    // chunks of its manifests that were in it, once GC is done.
    const after = new PlacementAfter(repo, c, written);
    await backend.locks.assertFresh();
    for (const { id, record } of objects) {
      const gone = record.packs.filter((n) => doomedNames.has(n));
      if (gone.length === 0) continue;
      const packs = record.packs.filter((n) => !doomedNames.has(n));
      const lost = new IdSet();
      for (const name of gone) {
        const chunks = repo.packChunks(name);
        for (let i = 0; i < chunks.count; i++) lost.add(chunks.ids, i * CHUNK_ID_BYTES);
      }
      for (const f of record.files) {
        const ids = await repo.manifestIds(f.manifest, f.indirect, codec);
        for (const list of f.indirect ? [f.manifest, ids] : [ids]) {
          for (let o = 0; o < list.length; o += CHUNK_ID_BYTES) {
            if (!lost.has(list, o)) continue;
            const pack = after.pack(list, o);
            if (pack !== undefined && !packs.includes(pack)) packs.push(pack);
          }
        }
      }
      await backend.rewriteCheckpoint(id, { ...record, packs });
      faultPoint('gc-mid-rewrite');
    }
    faultPoint('gc-before-delete');

    // 3. Delete: no object names these packs any more.
    await backend.locks.assertFresh();
    for (const [k, p] of doomed.entries()) {
      if (k === Math.floor(doomed.length / 2)) faultPoint('gc-mid-sweep');
      await repo.removePack(p.name);
    }
    for (const name of leftovers) await repo.removePack(name);
    for (const u of uploads) await backend.abortUpload(u);
    faultPoint('gc-after-delete');

    // 4. The cache: the copies' runs are the newest (they place the moved chunks), the doomed packs leave.
    const delPack = repo.db.prepare('DELETE FROM packs WHERE id = ?');
    repo.db.transaction(() => {
      repo.indexPacks(written.map((w) => ({ name: w.name, bytes: w.bytes })), copy?.writer.runs ?? []);
      for (const p of doomed) delPack.run(p.id);
      repo.db.prepare(`UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'gc_generation'`).run();
    })();
  } catch (e) {
    copy?.writer.abandon();
    throw e;
  }
  copy?.writer.committed();
  backend.committed(written);
  repo.chunkIndex.collect(live);
  result.newPacks = written.length;
  const kept = c.plans.filter((p) => p.live.length > 0 && !repack.includes(p));
  result.bytesAfter = written.reduce((n, w) => n + w.bytes, 0) + kept.reduce((n, p) => n + p.bytes, 0);
  result.bytesFreed = result.bytesBefore - result.bytesAfter;
  return result;
}

/** Where a live chunk is once GC is done: in the pack the index places it in, or in the repack's copy of that pack. */
class PlacementAfter {
  private readonly names = new Map<number, string>();
  private readonly repacked = new Set<number>();
  private readonly moved = new IdSet();
  private readonly movedTo: string[] = [];

  constructor(
    repo: Repository,
    private readonly c: Collection,
    written: PackWriter[],
  ) {
    for (const p of c.plans) this.names.set(p.id, p.name);
    for (const p of c.repack) this.repacked.add(p.id);
    for (const w of written) {
      // The writer's table is on disk by now (ChunkWriter wrote each .idx as it finished the pack).
      const chunks = repo.packChunks(w.name);
      for (let i = 0; i < chunks.count; i++) if (this.moved.add(chunks.ids, i * CHUNK_ID_BYTES)) this.movedTo.push(w.name);
    }
  }

  /** undefined: the index does not place the chunk (a damaged store; verify names it). */
  pack(ids: Uint8Array, o: number): string | undefined {
    const i = this.c.table.ids.indexOf(ids, o);
    if (i < 0) return undefined;
    const pack = this.c.table.pack[i]!;
    return this.repacked.has(pack) ? this.movedTo[this.moved.indexOf(ids, o)] : this.names.get(pack);
  }
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
  const noted = journals.flatMap((j) => j.packs);
  const packs = noted.filter((name) => !indexed.has(name));
  const files = packs.flatMap((name) => {
    const pack = packPath(repo.dir, name);
    const table = packTablePath(repo.dir, name);
    return [pack, pack + PARTIAL_SUFFIX, table, table + PARTIAL_SUFFIX];
  });
  // An S3 store's cache keeps no pack once it is in the bucket: the local copy of one the
  // catch-up took in (a killed GC's repack) goes too; its chunk table copy stays.
  if (repo.remote) files.push(...noted.filter((name) => indexed.has(name)).flatMap((name) => [packPath(repo.dir, name), packPath(repo.dir, name) + PARTIAL_SUFFIX]));
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
