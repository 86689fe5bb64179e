// Rebuilding a store directory's index from what the store itself holds (docs/FORMAT.md,
// "Repair"): store.json (identity and secret), every finished pack's chunk table (its
// .idx, else its blob headers) and every checkpoint object. The new index is built
// beside the old one and renamed over it, so a kill at any point leaves the old index
// (or none) or the new one, never a mix.
import Database from 'better-sqlite3';
import { closeSync, existsSync, openSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { tryLockExclusive } from '../sys/libc.js';
import { LocalBackend } from './backend.js';
import { ChunkIndex, lockMerges } from './chunk-index.js';
import { fsyncDir, writeFileDurable } from './durable.js';
import { StoreError, StoreNotFoundError } from './errors.js';
import { INDEX_FILE, STORE_FORMAT_VERSION } from './format.js';
import { packFilesOnDisk } from './inventory.js';
import { decodeStoreObject, encodePackIndex, STORE_OBJECT } from './objects.js';
import { packTablePath } from './pack.js';
import { readPackTable } from './pack-table.js';
import { SCHEMA_MIGRATIONS, SCHEMA_V1 } from './schema.js';
import { lockStore } from './store-lock.js';

/** The index under construction; a leftover of a killed repair is removed by the next. */
const REBUILD_FILE = `${INDEX_FILE}.rebuild`;
/** Held by a running daemon (src/controller/daemon.ts): it keeps the index open, so it must not run during a rebuild. */
const DAEMON_LOCK_FILE = 'daemon.lock';
/** Tables of the old index kept across a rebuild: what no pack or object records. */
const KEPT_TABLES = ['retention', 'managed_jobs', 'forgotten'];

export interface RebuildProgress {
  done: number;
  total: number;
}

export interface RebuildReport {
  packs: number;
  chunks: number;
  checkpoints: number;
  /** Pack files that could not be read as packs: their chunks are missing from the index. */
  unreadablePacks: { pack: string; problem: string }[];
  /** Checkpoint objects that could not be read: those checkpoints are not in the index. */
  unreadableCheckpoints: { id: number; problem: string }[];
  /** Whether an old index was there (and replaced). */
  replaced: boolean;
}

export class RepairBusyError extends StoreError {
  override name = 'RepairBusyError';
}

/** Rebuilds <dir>/index.sqlite from store.json, the packs and the checkpoint objects. */
export async function rebuildIndex(dir: string, onProgress?: (p: RebuildProgress) => void): Promise<RebuildReport> {
  const storeObject = join(dir, STORE_OBJECT);
  if (!existsSync(storeObject)) {
    if (!existsSync(join(dir, INDEX_FILE))) throw new StoreNotFoundError(dir);
    throw new StoreError(`${dir} has no ${STORE_OBJECT} (a store of format 3 or older): open it once with this crinc (any command) to upgrade it, then repair`);
  }
  const identity = decodeStoreObject(readFileSync(storeObject), storeObject);
  const daemonFd = openSync(join(dir, DAEMON_LOCK_FILE), 'a+', 0o600);
  try {
    if (!tryLockExclusive(daemonFd)) {
      throw new RepairBusyError(`a crinc daemon runs on ${dir} and keeps its index open: stop it (crinc daemon is stopped by SIGTERM), then repair`);
    }
    // No checkpoint, restore or GC may run while the index is replaced.
    const lock = await lockStore(dir, 'exclusive');
    try {
      const merges = await lockMerges(dir);
      try {
        return build(dir, identity, onProgress);
      } finally {
        merges.release();
      }
    } finally {
      lock.release();
    }
  } finally {
    closeSync(daemonFd);
  }
}

function build(dir: string, identity: { storeId: string; secret: Uint8Array; createdAt: string }, onProgress?: (p: RebuildProgress) => void): RebuildReport {
  const target = join(dir, REBUILD_FILE);
  for (const f of [target, `${target}-journal`]) rmSync(f, { force: true });
  closeSync(openSync(target, 'w', 0o600));
  const db = new Database(target);
  const report: RebuildReport = { packs: 0, chunks: 0, checkpoints: 0, unreadablePacks: [], unreadableCheckpoints: [], replaced: false };
  try {
    db.pragma('journal_mode = DELETE');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.exec(SCHEMA_V1);
    for (const m of SCHEMA_MIGRATIONS) db.exec(m.sql);
    const meta = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
    meta.run('format_version', String(STORE_FORMAT_VERSION));
    meta.run('secret', Buffer.from(identity.secret));
    meta.run('store_id', identity.storeId);
    meta.run('created_at', identity.createdAt);
    const old = join(dir, INDEX_FILE);
    const forgotten = new Set<number>();
    if (existsSync(old)) {
      // What only the index records: policies, daemon schedules, jobs' processes.
      try {
        db.prepare('ATTACH DATABASE ? AS old').run(old);
        db.exec('INSERT OR IGNORE INTO main.jobs SELECT * FROM old.jobs');
        for (const t of KEPT_TABLES) {
          if (db.prepare(`SELECT 1 FROM old.sqlite_master WHERE type = 'table' AND name = ?`).get(t)) db.exec(`INSERT OR IGNORE INTO main.${t} SELECT * FROM old.${t}`);
        }
        for (const id of db.prepare('SELECT id FROM main.forgotten').pluck().all() as number[]) forgotten.add(id);
        db.exec('DETACH DATABASE old');
      } catch {
        // A damaged old index: what it alone held (policies, schedules) is lost; the checkpoints are not.
        if (db.prepare(`SELECT 1 FROM pragma_database_list WHERE name = 'old'`).get()) db.exec('DETACH DATABASE old');
      }
    }
    // Oldest first: a chunk stored twice is indexed at its newest copy, which exists because
    // the older one was quarantined (or two commits raced, and then both are good).
    const packFiles = packFilesOnDisk(dir).filter((f) => !f.partial).map((f) => ({ ...f, at: statSync(f.path).mtimeMs })).sort((a, b) => a.at - b.at);
    const backend = new LocalBackend(dir);
    const objectIds = backend.checkpointObjectIds().filter((id) => !forgotten.has(id));
    const total = packFiles.length + objectIds.length;
    const insPack = db.prepare('INSERT INTO packs (name, bytes, created_at) VALUES (?, ?, ?)');
    // Each pack's run written afresh (a run left by the old index is not trusted); the
    // newest pack's run is listed last, so it places a chunk stored twice.
    const chunkIndex = new ChunkIndex(dir, () => db, true);
    const now = Date.now();
    let done = 0;
    for (const f of packFiles) {
      const table = readPackTable(dir, f.name);
      if (!table.ok) {
        report.unreadablePacks.push({ pack: f.name, problem: table.problem });
      } else {
        const idx = packTablePath(dir, f.name);
        if (!existsSync(idx)) writeFileDurable(idx, encodePackIndex(table.chunks, table.bytes));
        const run = chunkIndex.writePackRun(f.name, table.chunks);
        db.transaction(() => {
          insPack.run(f.name, table.bytes, now);
          chunkIndex.register([run]);
        })();
        report.packs++;
        report.chunks += table.chunks.count;
      }
      onProgress?.({ done: ++done, total });
    }
    const insJob = db.prepare(`INSERT OR IGNORE INTO jobs (name, created_at, command, cwd, pid, controller_pid, state, updated_at) VALUES (?, ?, ?, ?, NULL, NULL, 'stopped', ?)`);
    const insCheckpoint = db.prepare(
      `INSERT INTO checkpoints (id, job, kind, taken_at, mode, root_pid, image_bytes, stored_bytes, pages_total, pages_hashed, pages_clean, duration_ms, freeze_ms, note)
       VALUES (@id, @job, @kind, @takenAt, @mode, @rootPid, @imageBytes, @storedBytes, @pagesTotal, @pagesHashed, @pagesClean, @durationMs, @freezeMs, @note)`,
    );
    const insFile = db.prepare(
      'INSERT INTO files (checkpoint, role, path, size, mode, uid, gid, block_bytes, manifest, manifest_indirect, identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    for (const id of objectIds.sort((a, b) => a - b)) {
      try {
        const record = backend.readCheckpointObject(id);
        db.transaction(() => {
          insJob.run(record.job.name, record.job.createdAt, JSON.stringify(record.job.command), record.job.cwd, now);
          insCheckpoint.run({ ...record.checkpoint, id, job: record.job.name });
          for (const f of record.files) insFile.run(id, f.role, f.path, f.size, f.mode, f.uid, f.gid, f.blockBytes, f.manifest, f.indirect ? 1 : 0, f.identity);
        })();
        report.checkpoints++;
      } catch (e) {
        report.unreadableCheckpoints.push({ id, problem: (e as Error).message });
      }
      onProgress?.({ done: ++done, total });
    }
    backend.close();
    // Checkpoint ids are never reused, also past ids the objects no longer show.
    const seq = Math.max(0, ...objectIds, ...forgotten);
    db.prepare(`DELETE FROM sqlite_sequence WHERE name = 'checkpoints'`).run();
    db.prepare(`INSERT INTO sqlite_sequence (name, seq) VALUES ('checkpoints', ?)`).run(seq);
    db.close();
  } catch (e) {
    if (db.open) db.close();
    rmSync(target, { force: true });
    throw e;
  }
  faultPoint('repair-before-swap');
  const old = join(dir, INDEX_FILE);
  if (existsSync(old)) {
    report.replaced = true;
    // Everything the old index's WAL holds goes into its file first, so removing the WAL loses nothing.
    try {
      const oldDb = new Database(old);
      oldDb.pragma('wal_checkpoint(TRUNCATE)');
      oldDb.close();
    } catch {
      // A damaged old index: it is replaced all the same.
    }
  }
  for (const f of [`${old}-wal`, `${old}-shm`]) rmSync(f, { force: true });
  // rename(2) is atomic: the index is the old file or the new one.
  renameSync(target, old);
  fsyncDir(dir);
  return report;
}

