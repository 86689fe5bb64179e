// Whole-store views for GC and verify: every chunk row in typed arrays, every pack row,
// and a walk over every checkpoint's manifests (indirect parts read and expanded).
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { PACKS_DIR } from './format.js';
import { IdSet } from './id-set.js';
import { PARTIAL_SUFFIX } from './pack.js';
import type { ChunkCodec, FileRole, Repository } from './repository.js';

export interface PackRow {
  id: number;
  name: string;
  bytes: number;
}

/** Every indexed chunk; index i of each array is the i-th id added to `ids`. */
export interface ChunkTable {
  ids: IdSet;
  pack: Int32Array;
  offset: Float64Array;
  storedLength: Uint32Array;
  rawLength: Uint32Array;
  compression: Uint8Array;
}

export function listPacks(repo: Repository): PackRow[] {
  return repo.db.prepare('SELECT id, name, bytes FROM packs ORDER BY id').all() as PackRow[];
}

/** One consistent snapshot of the chunk index (in a read transaction), whatever commits meanwhile. */
export function loadChunkTable(repo: Repository): ChunkTable {
  return repo.db.transaction(() => readChunkTable(repo))();
}

function readChunkTable(repo: Repository): ChunkTable {
  const index = repo.chunkIndex;
  index.refresh();
  const n = index.entryCount();
  const packIds = new Map(listPacks(repo).map((p) => [p.name, p.id]));
  const t: ChunkTable = {
    ids: new IdSet(n),
    pack: new Int32Array(n),
    offset: new Float64Array(n),
    storedLength: new Uint32Array(n),
    rawLength: new Uint32Array(n),
    compression: new Uint8Array(n),
  };
  index.forEach((id, at, place) => {
    const i = t.ids.size;
    t.ids.add(id, at);
    const where = index.location(place, id, at);
    t.pack[i] = packIds.get(place.pack)!;
    t.offset[i] = where.offset;
    t.storedLength[i] = where.storedLength;
    t.rawLength[i] = where.rawLength;
    t.compression[i] = where.compression;
  });
  return t;
}

/** One file of one checkpoint, its manifest loaded; `error` when an indirect part could not be read. */
export interface WalkedFile {
  checkpoint: number;
  role: FileRole;
  path: string;
  size: number;
  blockBytes: number;
  /** Ids of the indirect manifest's parts (themselves chunks), or null for an inline manifest. */
  parts: Uint8Array | null;
  /** The block ids; null when `error`. */
  ids: Uint8Array | null;
  error: Error | null;
}

/** Total bytes of the manifests stored in the index (the measure of a walk's progress). */
export function manifestBytes(repo: Repository): number {
  return repo.db.prepare('SELECT coalesce(sum(length(manifest)), 0) FROM files').pluck().get() as number;
}

export function maxCheckpointId(repo: Repository): number {
  return repo.db.prepare('SELECT coalesce(max(id), 0) FROM checkpoints').pluck().get() as number;
}

/** The id of every checkpoint in the index. */
export function checkpointIds(repo: Repository): number[] {
  return repo.db.prepare('SELECT id FROM checkpoints ORDER BY id').pluck().all() as number[];
}

/** Every file of every checkpoint with after < id <= upTo (or of those listed), checkpoint by checkpoint. */
export async function walkManifests(
  repo: Repository,
  codec: ChunkCodec,
  range: { after: number; upTo: number } | { ids: number[] },
  visit: (f: WalkedFile) => void,
): Promise<void> {
  const checkpoints = 'ids' in range
    ? range.ids
    : (repo.db.prepare('SELECT id FROM checkpoints WHERE id > ? AND id <= ? ORDER BY id').pluck().all(range.after, range.upTo) as number[]);
  const filesStmt = repo.db.prepare('SELECT role, path, size, block_bytes, manifest, manifest_indirect FROM files WHERE checkpoint = ? ORDER BY role, path');
  for (const checkpoint of checkpoints) {
    const rows = filesStmt.all(checkpoint) as { role: FileRole; path: string; size: number; block_bytes: number; manifest: Buffer; manifest_indirect: number }[];
    for (const r of rows) {
      const file: WalkedFile = { checkpoint, role: r.role, path: r.path, size: r.size, blockBytes: r.block_bytes, parts: null, ids: null, error: null };
      if (r.manifest_indirect !== 1) {
        file.ids = new Uint8Array(r.manifest);
      } else {
        file.parts = new Uint8Array(r.manifest);
        try {
          file.ids = await repo.manifestIds(r.manifest, true, codec);
        } catch (e) {
          file.error = e as Error;
        }
      }
      visit(file);
    }
  }
}

/** A file under packs/ that the index does not name: a .partial, or a finished pack never committed or already dropped. */
export interface PackFileOnDisk {
  name: string;
  path: string;
  partial: boolean;
}

/** Pack files on disk (finished and .partial), from packs/<ab>/. */
export function packFilesOnDisk(storeDir: string): PackFileOnDisk[] {
  const out: PackFileOnDisk[] = [];
  const root = join(storeDir, PACKS_DIR);
  for (const prefix of readdirSync(root)) {
    if (!/^[0-9a-f]{2}$/.test(prefix)) continue;
    for (const file of readdirSync(join(root, prefix))) {
      const m = /^([0-9a-f]{32})\.pack(\.partial)?$/.exec(file);
      if (!m || !m[1]!.startsWith(prefix)) continue;
      out.push({ name: m[1]!, path: join(root, prefix, file), partial: m[2] === PARTIAL_SUFFIX });
    }
  }
  return out;
}
