// A crinc store: the SQLite index, the packs (through a StoreBackend: files in the
// store's directory, or objects in S3), the per-job locks. Everything a checkpoint adds
// becomes visible in one SQLite transaction, after its packs are durable and, for a
// remote store, after its commit object is written (docs/FORMAT.md, "Commit").
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { tryLockExclusive } from '../sys/libc.js';
import {
  CHECKPOINTS_DIR,
  CHUNK_ID_BYTES,
  Compression,
  INDEX_FILE,
  JOBS_DIR,
  LOCKS_DIR,
  MANIFEST_INLINE_IDS,
  PACKS_DIR,
  STORE_FORMAT_VERSION,
} from './format.js';
import {
  CheckpointNotFoundError,
  ChunkCorruptError,
  ChunkMissingError,
  InvalidJobNameError,
  JobBusyError,
  PackMissingError,
  StoreFormatError,
  StoreIndexMissingError,
  StoreNotFoundError,
  StorePermissionError,
  UnknownJobError,
} from './errors.js';
import { SECRET_BYTES } from '../codec/limits.js';
import { IdSet } from './id-set.js';
import { type CommitRecord, LocalBackend, type StoreBackend } from './backend.js';
import { createFileDurable, removeFilesDurable, writeFileDurable } from './durable.js';
import { WriterJournal } from './journal.js';
import { decodePackIndex, decodeStoreObject, encodePackIndex, encodeStoreObject, STORE_OBJECT, type StoreIdentity } from './objects.js';
import { ChunkIndex, type ChunkLocation, type PlacedChunks, RunSegments } from './chunk-index.js';
import { type PackedChunks, PackWriter, packTablePath } from './pack.js';
import { readPackTable } from './pack-table.js';
import type { RetentionPolicy } from './retention-policy.js';
import { SCHEMA_MIGRATIONS, SCHEMA_V1 } from './schema.js';
import { lockStore, type StoreLock } from './store-lock.js';

/** The store format from which packs and checkpoint objects are the truth (docs/FORMAT.md). */
const OBJECTS_FORMAT_VERSION = 4;
/** The store format from which the chunk index is runs beside SQLite, not a table in it. */
const CHUNK_RUNS_FORMAT_VERSION = 5;
/** The id under which a checkpoint's damage that no single chunk explains is recorded (table damaged). */
const NO_CHUNK = Buffer.alloc(0);
/** Parts of an indirect manifest read at once (ranged GETs in flight on an S3 store). */
const MANIFEST_PART_READS_IN_FLIGHT = 8;

/** Where each of a list of chunks is: packs[packIndex[k]], at offset[k], and so on (every chunk found). */
export type ChunkLocations = PlacedChunks;
const JOB_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What the store needs from the codec: it never hashes or compresses on its own. */
export interface ChunkCodec {
  chunkId(data: Uint8Array): Uint8Array;
  compress(raw: Uint8Array): Uint8Array;
  /** Throws on corrupt input; never returns bytes of another length. */
  decompress(stored: Uint8Array, rawLength: number): Uint8Array;
}

export type JobState = 'running' | 'stopped' | 'restoring';

export interface JobRecord {
  name: string;
  createdAt: number;
  command: string[];
  cwd: string;
  pid: number | null;
  controllerPid: number | null;
  state: JobState;
  updatedAt: number;
}

/** A job the daemon manages: its schedule, and how it ended when it did. */
export interface ManagedJobRecord {
  job: string;
  /** Started by the daemon (`crinc run`) or an existing process (`crinc attach`). */
  origin: 'run' | 'attach';
  intervalMs: number;
  tracking: boolean;
  /** `exited`: the daemon saw the process end; `dead`: it was found gone (e.g. while the daemon was down). */
  state: 'active' | 'exited' | 'dead';
  /** How it ended, for a person: "exit code 3", "signal SIGKILL", "gone while the daemon was down". */
  ended: string | null;
  registeredAt: number;
  updatedAt: number;
}

export type CheckpointKind = 'checkpoint' | 'pre-restore';
export type CheckpointMode = 'full' | 'incremental' | 'files';

export interface CheckpointRecord {
  id: number;
  job: string;
  kind: CheckpointKind;
  takenAt: number;
  mode: CheckpointMode;
  rootPid: number | null;
  imageBytes: number;
  storedBytes: number;
  pagesTotal: number;
  pagesHashed: number;
  pagesClean: number;
  durationMs: number;
  freezeMs: number;
  note: string | null;
}

export type FileRole = 'image' | 'job-file';

/** A file of a checkpoint: its metadata and the ids of its blocks, in order. */
export interface FileManifest {
  role: FileRole;
  /** Image files: the name inside the image directory; job files: the absolute path. */
  path: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  blockBytes: number;
  /** Concatenated 16-byte chunk ids, one per block; ZERO_CHUNK_ID for an all-zero block. */
  ids: Uint8Array;
  /** For job files: what identified this content (inode, size, mtime, ctime), to skip unchanged files. */
  identity: string | null;
}

export function idHex(id: Uint8Array): string {
  return Buffer.from(id.buffer, id.byteOffset, id.byteLength).toString('hex');
}

export function isZeroId(ids: Uint8Array, index: number): boolean {
  const o = index * CHUNK_ID_BYTES;
  for (let i = 0; i < CHUNK_ID_BYTES; i++) if (ids[o + i] !== 0) return false;
  return true;
}

export function validateJobName(name: string): void {
  if (!JOB_NAME.test(name)) throw new InvalidJobNameError(name);
}

/** An exclusive hold on one job's checkpoint/restore; released by release() or by process death. */
export class JobLock {
  constructor(private fd: number) {}
  release(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

export interface OpenOptions {
  create: boolean;
  /** A store on a read-only file system (a snapshot): its index is opened immutable, and nothing is written. */
  readOnly?: boolean;
  /** Where packs and commits live; default: files in the store directory. */
  backend?: StoreBackend;
  /** A cache of a remote store: its identity, taken at creation and checked on every open. */
  identity?: StoreIdentity;
}

export type { StoreIdentity };

/** A pack to index: its chunks, unless its writer wrote its .idx into the store directory already. */
export interface IndexedPack {
  name: string;
  bytes: number;
  chunks?: PackedChunks;
}

/** A pack of a remote store and its chunks, for the local index. */
export interface RemotePack {
  name: string;
  bytes: number;
  chunks: PackedChunks;
}

/** A commit of a remote store, for the local index. */
export interface RemoteCheckpoint {
  id: number;
  record: CommitRecord;
}

// SQLite URI file names, for the immutable open of a read-only store. better-sqlite3 reads
// this when its native addon loads, at the first Database; store paths are absolute, so
// none reads as a URI by accident.
process.env.SQLITE_USE_URI = '1';

export class Repository {
  readonly secret: Uint8Array;
  /** The index: for the store's own modules (gc.ts, inventory.ts); everything else goes through methods. */
  get db(): Database.Database {
    return this.index;
  }
  private index: Database.Database;
  /** dev:ino of the index file this process opened: `crinc repair` renames a rebuilt one over it. */
  private indexFile: string | undefined;
  private readonly backend: StoreBackend;
  /** Where each chunk is (runs in chunk-index/, listed by the index). */
  readonly chunkIndex: ChunkIndex;
  /** The GC generation the open packs and runs are valid for. */
  private knownGeneration: number;
  private readonly statements = new Map<string, Database.Statement>();
  /** Chunks found damaged or missing (table quarantine), as of open or the last refresh. */
  private quarantined = new IdSet();
  /** A commit healed quarantined chunks: reload the set once it is durable. */
  private quarantineStale = false;
  /** Opened with OpenOptions.readOnly: write methods fail (SQLite refuses). */
  readonly readOnly: boolean;

  private constructor(
    readonly dir: string,
    isNew: boolean,
    options: OpenOptions,
  ) {
    this.readOnly = Boolean(options.readOnly);
    this.indexFile = indexFileIdentity(dir);
    this.index = openIndex(dir, this.readOnly);
    this.backend = options.backend ?? new LocalBackend(dir);
    this.chunkIndex = new ChunkIndex(dir, () => this.index, !this.backend.remote);
    this.ensureSchema(isNew, options.identity);
    const secret = this.db.prepare(`SELECT value FROM meta WHERE key = 'secret'`).pluck().get() as Buffer | undefined;
    if (!secret || secret.length !== SECRET_BYTES) throw new StoreFormatError(`${dir}: the store's secret is missing or damaged`);
    this.secret = new Uint8Array(secret);
    this.knownGeneration = this.gcGeneration();
    this.loadQuarantine();
    this.chunkIndex.refresh();
  }

  /**
   * A long-lived process (crinc run, attach, daemon) whose index was replaced by `crinc
   * repair` opens the new one; with the index gone it stops (StoreIndexMissingError)
   * rather than commit into a deleted file. Repair swaps the index under the exclusive
   * store lock, so this is called with the lock held shared.
   */
  private followIndexFile(): void {
    const now = indexFileIdentity(this.dir);
    if (now === this.indexFile) return;
    if (now === undefined) throw new StoreIndexMissingError(this.dir);
    this.index.close();
    this.statements.clear();
    this.index = openIndex(this.dir, this.readOnly);
    this.indexFile = now;
    this.chunkIndex.close();
    this.knownGeneration = this.gcGeneration();
    this.backend.closePacks();
  }

  static open(dir: string, options: OpenOptions): Repository {
    const index = join(dir, INDEX_FILE);
    const isNew = !existsSync(index);
    const local = options.backend === undefined;
    // Without its index a store's checkpoints are found again only by crinc repair: no
    // command may act on the packs meanwhile (crash recovery would take them for leftovers).
    if (isNew && local && storeHoldsData(dir)) throw new StoreIndexMissingError(dir);
    if (options.readOnly) {
      if (isNew) throw new StoreNotFoundError(dir);
      // Commits still in the write-ahead log would be missed by an immutable open.
      const wal = `${index}-wal`;
      if (existsSync(wal) && statSync(wal).size > 0) {
        throw new StoreFormatError(`${dir} is read-only and its index has commits still in ${wal}, which a read-only open cannot apply: open a writable copy of the store (cp -a) instead`);
      }
      checkStoreDirectory(dir);
      return new Repository(dir, false, { ...options, identity: local ? readLocalIdentity(dir) : options.identity });
    }
    if (isNew) {
      if (!options.create) throw new StoreNotFoundError(dir);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    }
    checkStoreDirectory(dir);
    let identity = options.identity;
    if (local) {
      identity = readLocalIdentity(dir);
      if (!identity && isNew) {
        // Two processes creating the store at once: one store.json wins, both use it.
        const made = { storeId: randomBytes(16).toString('hex'), secret: new Uint8Array(randomBytes(SECRET_BYTES)), createdAt: new Date().toISOString() };
        identity = createFileDurable(join(dir, STORE_OBJECT), encodeStoreObject(made)) ? made : readLocalIdentity(dir);
      }
    }
    // Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
    if (isNew) closeSync(openSync(index, 'a', 0o600));
    const repo = new Repository(dir, isNew, { ...options, identity });
    for (const sub of [PACKS_DIR, JOBS_DIR, LOCKS_DIR, CHECKPOINTS_DIR]) mkdirSync(join(dir, sub), { recursive: true, mode: 0o700 });
    return repo;
  }

  /** Where the store is, for messages: its directory, or s3://bucket/prefix. */
  get location(): string {
    return this.backend.location;
  }

  /** Whether packs live elsewhere than the store directory (an S3 store). */
  get remote(): boolean {
    return this.backend.remote;
  }

  close(): void {
    this.backend.close();
    this.chunkIndex.close();
    this.db.close();
  }

  /** False once close() ran. */
  get isOpen(): boolean {
    return this.db.open;
  }

  private ensureSchema(isNew: boolean, identity: StoreIdentity | undefined): void {
    const hasMeta = this.db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'`).get();
    if (!hasMeta && !isNew) throw new StoreFormatError(`${this.dir}/${INDEX_FILE} is not a crinc index (no meta table)`);
    if (!hasMeta) {
      this.db.transaction(() => {
        this.db.exec(SCHEMA_V1);
        for (const m of SCHEMA_MIGRATIONS) this.db.exec(m.sql);
        const ins = this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
        ins.run('format_version', String(STORE_FORMAT_VERSION));
        ins.run('secret', identity?.secret ?? randomBytes(SECRET_BYTES));
        ins.run('store_id', identity?.storeId ?? randomBytes(16).toString('hex'));
        ins.run('created_at', identity?.createdAt ?? new Date().toISOString());
      })();
      return;
    }
    const versionStmt = this.db.prepare(`SELECT value FROM meta WHERE key = 'format_version'`).pluck();
    const version = Number(versionStmt.get());
    if (version > STORE_FORMAT_VERSION || !(version >= 1)) {
      throw new StoreFormatError(
        `${this.dir} has store format ${version}; this crinc reads formats 1 to ${STORE_FORMAT_VERSION}. Use the crinc release that wrote it.`,
      );
    }
    const storeId = this.db.prepare(`SELECT value FROM meta WHERE key = 'store_id'`).pluck().get() as string;
    if (identity && storeId !== identity.storeId && !this.backend.remote) {
      throw new StoreFormatError(
        `${this.dir}/${STORE_OBJECT} names store ${identity.storeId}, but its index is of store ${storeId}: the index belongs to another store. ` +
          `Move ${INDEX_FILE} away and rebuild it with: crinc repair --store ${this.dir}`,
      );
    }
    if (identity && storeId !== identity.storeId) {
      throw new StoreFormatError(
        `${this.dir} caches store ${storeId}, but ${this.backend.location} is store ${identity.storeId} (recreated?). ` +
          `The cache holds nothing that is not in the bucket: delete ${this.dir}, or choose another --cache.`,
      );
    }
    if (version === STORE_FORMAT_VERSION) return;
    if (this.readOnly) throw new StoreFormatError(`${this.dir} has store format ${version} and is read-only: this crinc reads it once it is upgraded, by any command on a writable copy`);
    // An older store is upgraded in place; IMMEDIATE so that two openers cannot both migrate.
    this.db.transaction(() => {
      const current = Number(versionStmt.get());
      for (const m of SCHEMA_MIGRATIONS) {
        if (m.version <= current) continue;
        if (m.version === OBJECTS_FORMAT_VERSION && this.backend instanceof LocalBackend) this.writeObjectsFromIndex(this.backend);
        const runs = m.version === CHUNK_RUNS_FORMAT_VERSION ? this.chunkRowsToRuns() : [];
        this.db.exec(m.sql);
        this.chunkIndex.register(runs);
        this.db.prepare(`UPDATE meta SET value = ? WHERE key = 'format_version'`).run(String(m.version));
      }
    }).immediate();
  }

  // ---- garbage collection and retention (src/store/gc.ts, src/controller/retention.ts)

  /** Bumped by every GC that deleted chunks or packs (meta gc_generation). */
  gcGeneration(): number {
    return Number(this.db.prepare(`SELECT value FROM meta WHERE key = 'gc_generation'`).pluck().get());
  }

  /**
   * After a GC or a commit of another process: reopens the chunk index's runs as the
   * index lists them now; after a GC, closes open packs, which may be deleted files.
   * Call with the store lock held shared, before ingest.
   */
  refreshAfterCollection(): void {
    if (this.backend instanceof LocalBackend) this.followIndexFile();
    this.loadQuarantine();
    this.chunkIndex.refresh();
    const generation = this.gcGeneration();
    if (generation === this.knownGeneration) return;
    this.knownGeneration = generation;
    this.backend.closePacks();
  }

  jobRetention(job: string): RetentionPolicy | undefined {
    const text = this.db.prepare('SELECT policy FROM retention WHERE job = ?').pluck().get(job) as string | undefined;
    return text === undefined ? undefined : (JSON.parse(text) as RetentionPolicy);
  }

  /** Stores the job's policy, applied after each of its checkpoints (the job may not exist yet). */
  setJobRetention(job: string, policy: RetentionPolicy): void {
    validateJobName(job);
    this.db
      .prepare('INSERT INTO retention (job, policy) VALUES (?, ?) ON CONFLICT (job) DO UPDATE SET policy = excluded.policy')
      .run(job, JSON.stringify(policy));
  }

  /**
   * Forgets checkpoints: their rows go in one transaction that remembers their ids (table
   * forgotten), then their objects are deleted, then the ids. A crash in between leaves
   * objects that catch-up deletes instead of taking them back in. Chunks stay for GC.
   */
  async forgetCheckpoints(ids: number[]): Promise<void> {
    const delFiles = this.db.prepare('DELETE FROM files WHERE checkpoint = ?');
    const delCheckpoint = this.db.prepare('DELETE FROM checkpoints WHERE id = ?');
    const delDamaged = this.db.prepare('DELETE FROM damaged WHERE checkpoint = ?');
    const remember = this.db.prepare('INSERT OR IGNORE INTO forgotten (id) VALUES (?)');
    this.db.transaction(() => {
      for (const id of ids) {
        delFiles.run(id);
        delCheckpoint.run(id);
        delDamaged.run(id);
        remember.run(id);
      }
      faultPoint('retention-in-transaction');
    })();
    faultPoint('retention-before-objects');
    await this.backend.forgetCheckpoints(ids);
    this.clearForgotten(ids);
  }

  /** The objects of these forgotten checkpoints are deleted: their ids need not be remembered. */
  clearForgotten(ids: number[]): void {
    const done = this.db.prepare('DELETE FROM forgotten WHERE id = ?');
    this.db.transaction(() => {
      for (const id of ids) done.run(id);
    })();
  }

  /** Checkpoints forgotten whose objects may still exist (a forget was interrupted). */
  forgottenCheckpoints(): Set<number> {
    return new Set(this.db.prepare('SELECT id FROM forgotten').pluck().all() as number[]);
  }

  /** Deletes a pack (and its chunk table) that the index no longer names, or is about to stop naming (GC). */
  async removePack(name: string): Promise<void> {
    await this.backend.deletePack(name);
    // A remote store's cache keeps a copy of the chunk table.
    if (this.backend.remote) this.removeCachedTables([name]);
  }

  private removeCachedTables(names: string[]): void {
    removeFilesDurable(names.map((name) => packTablePath(this.dir, name)));
  }

  /**
   * The store lock shared, then (an S3 store) the bucket lock shared with the index caught
   * up under it, then the index's changes since the last call taken in: before writing
   * packs or reading chunks. No GC deletes or moves a chunk until release. Without
   * waitForGc, a GC holding an S3 store's bucket lock is an error instead of a wait.
   */
  async lockShared(purpose: string, options: { waitForGc: boolean } = { waitForGc: true }): Promise<StoreLock> {
    const lock = await lockStore(this.dir, 'shared');
    try {
      const hold = await this.backend.holdShared(this, purpose, options.waitForGc);
      if (hold) lock.add(hold);
      this.refreshAfterCollection();
    } catch (e) {
      lock.release();
      throw e;
    }
    return lock;
  }

  /** Where packs and commits live: for the store's own modules (gc.ts); everything else goes through methods. */
  get storeBackend(): StoreBackend {
    return this.backend;
  }

  /** Closes open pack files: some are about to be deleted. */
  closePacks(): void {
    this.backend.closePacks();
  }

  /** Makes finished packs durable where readers look for them, with their chunk tables (GC's repack). */
  storePacks(packs: PackWriter[]): Promise<void> {
    return this.backend.storePacks(packs);
  }

  // ---- jobs -------------------------------------------------------------------------

  jobDir(name: string): string {
    return join(this.dir, JOBS_DIR, name);
  }

  findJob(name: string): JobRecord | undefined {
    const row = this.db.prepare('SELECT * FROM jobs WHERE name = ?').get(name) as Record<string, unknown> | undefined;
    return row ? jobFromRow(row) : undefined;
  }

  requireJob(name: string): JobRecord {
    const job = this.findJob(name);
    if (!job) throw new UnknownJobError(name, this.listJobs().map((j) => j.name));
    return job;
  }

  listJobs(): JobRecord[] {
    return (this.db.prepare('SELECT * FROM jobs ORDER BY name').all() as Record<string, unknown>[]).map(jobFromRow);
  }

  saveJob(job: JobRecord): void {
    this.db
      .prepare(
        `INSERT INTO jobs (name, created_at, command, cwd, pid, controller_pid, state, updated_at)
         VALUES (@name, @createdAt, @command, @cwd, @pid, @controllerPid, @state, @updatedAt)
         ON CONFLICT (name) DO UPDATE SET command = excluded.command, cwd = excluded.cwd, pid = excluded.pid,
           controller_pid = excluded.controller_pid, state = excluded.state, updated_at = excluded.updated_at`,
      )
      .run({ ...job, command: JSON.stringify(job.command) });
  }

  listManagedJobs(): ManagedJobRecord[] {
    return (this.db.prepare('SELECT * FROM managed_jobs ORDER BY job').all() as Record<string, unknown>[]).map(managedFromRow);
  }

  findManagedJob(job: string): ManagedJobRecord | undefined {
    const row = this.db.prepare('SELECT * FROM managed_jobs WHERE job = ?').get(job) as Record<string, unknown> | undefined;
    return row ? managedFromRow(row) : undefined;
  }

  saveManagedJob(m: ManagedJobRecord): void {
    this.db
      .prepare(
        `INSERT INTO managed_jobs (job, origin, interval_ms, tracking, state, ended, registered_at, updated_at)
         VALUES (@job, @origin, @intervalMs, @tracking, @state, @ended, @registeredAt, @updatedAt)
         ON CONFLICT (job) DO UPDATE SET origin = excluded.origin, interval_ms = excluded.interval_ms, tracking = excluded.tracking,
           state = excluded.state, ended = excluded.ended, registered_at = excluded.registered_at, updated_at = excluded.updated_at`,
      )
      .run({ ...m, tracking: m.tracking ? 1 : 0 });
  }

  removeManagedJob(job: string): void {
    this.db.prepare('DELETE FROM managed_jobs WHERE job = ?').run(job);
  }

  /** Takes the job's lock, or says who holds it. */
  lockJob(name: string, purpose: string): JobLock {
    const path = join(this.dir, LOCKS_DIR, `${name}.lock`);
    const fd = openSync(path, 'a+', 0o600);
    if (!tryLockExclusive(fd)) {
      closeSync(fd);
      let holder = 'another crinc process';
      try {
        const text = readFileSync(path, 'utf8').trim();
        if (text) holder = text;
      } catch {
        // The holder's description is a courtesy; the lock itself is what matters.
      }
      throw new JobBusyError(name, holder);
    }
    ftruncateSync(fd);
    writeFileSync(fd, `${purpose} by crinc pid ${process.pid} since ${new Date().toISOString()}`);
    return new JobLock(fd);
  }

  // ---- chunks -----------------------------------------------------------------------

  hasChunk(id: Uint8Array): boolean {
    if (this.quarantined.size > 0 && this.quarantined.has(id)) return false;
    return this.chunkIndex.has(id);
  }

  /**
   * Tells the chunk index of ids it places (the previous checkpoint's manifests, say), so
   * that finding them again needs no read; valid until the index's listing changes.
   */
  rememberKnown(ids: Uint8Array): void {
    this.chunkIndex.refresh();
    for (let o = 0; o < ids.length; o += CHUNK_ID_BYTES) {
      if (!isZeroId(ids, o / CHUNK_ID_BYTES)) this.chunkIndex.remember(ids, o);
    }
  }

  /** Whether any chunk is quarantined (found damaged or missing): then clean-page reuse must ask isQuarantined. */
  hasQuarantine(): boolean {
    return this.quarantined.size > 0;
  }

  /** Whether the chunk id at ids[offset] was found damaged or missing: it must be stored again, never referenced. */
  isQuarantined(ids: Uint8Array, offset = 0): boolean {
    return this.quarantined.size > 0 && this.quarantined.has(ids, offset);
  }

  /** Whether a manifest names a quarantined chunk: then it is not reused as it is (an unchanged job file is read again). */
  namesQuarantined(ids: Uint8Array): boolean {
    if (this.quarantined.size === 0) return false;
    for (let o = 0; o < ids.length; o += CHUNK_ID_BYTES) if (this.quarantined.has(ids, o)) return true;
    return false;
  }

  private loadQuarantine(): void {
    const set = new IdSet();
    for (const id of this.db.prepare('SELECT id FROM quarantine').pluck().iterate() as IterableIterator<Buffer>) set.add(id);
    this.quarantined = set;
  }

  /**
   * Quarantines a chunk found damaged or missing: no new checkpoint references it (the
   * next one that holds its content stores it again, which heals it), and every
   * checkpoint found to need it is marked damaged (`damaged`).
   */
  quarantineChunk(id: Uint8Array, problem: string, checkpoints: number[] = []): void {
    this.quarantined.add(id);
    // A read-only store (a snapshot) is only reported on: nothing checkpoints into it.
    if (this.readOnly) return;
    const now = Date.now();
    this.db.transaction(() => {
      this.statement('INSERT OR IGNORE INTO quarantine (id, found_at, problem) VALUES (?, ?, ?)').run(id, now, problem);
      for (const c of checkpoints) this.markDamaged(c, id, problem);
    })();
  }

  /** Quarantines every chunk the index places in a pack that is missing. */
  quarantinePack(pack: string, problem: string): void {
    const ids: Buffer[] = [];
    this.chunkIndex.forEach((id, at, place) => {
      if (place.pack === pack) ids.push(Buffer.from(id.subarray(at, at + CHUNK_ID_BYTES)));
    });
    for (const id of ids) this.quarantineChunk(id, problem);
  }

  /** Marks a checkpoint damaged: it needs the chunk (or, with none given, something else that is broken). */
  markDamaged(checkpoint: number, chunk: Uint8Array | null, problem: string): void {
    if (this.readOnly) return;
    this.statement('INSERT OR REPLACE INTO damaged (checkpoint, chunk, problem, found_at) VALUES (?, ?, ?, ?)').run(checkpoint, chunk ?? NO_CHUNK, problem, Date.now());
  }

  /** Damaged checkpoints and their recorded problems (verify, repair, scrub). */
  damagedCheckpoints(): Map<number, string[]> {
    const out = new Map<number, string[]>();
    for (const r of this.db.prepare('SELECT checkpoint, chunk, problem FROM damaged ORDER BY checkpoint').all() as { checkpoint: number; chunk: Buffer; problem: string }[]) {
      let list = out.get(r.checkpoint);
      if (!list) out.set(r.checkpoint, (list = []));
      list.push(r.chunk.length > 0 ? `chunk ${idHex(r.chunk)}: ${r.problem}` : r.problem);
    }
    return out;
  }

  /** Clears the damage recorded for checkpoints (verify records it afresh). */
  clearDamage(checkpoints: number[]): void {
    if (this.readOnly) return;
    const del = this.db.prepare('DELETE FROM damaged WHERE checkpoint = ?');
    this.db.transaction(() => {
      for (const c of checkpoints) del.run(c);
    })();
  }

  /**
   * A read failed: a damaged or missing chunk is quarantined, a missing pack's chunks
   * too. For the place where such an error is caught with the store still open.
   */
  noteReadFailure(e: unknown): void {
    if (!this.isOpen) return;
    if (e instanceof ChunkCorruptError || e instanceof ChunkMissingError) {
      this.quarantineChunk(Buffer.from(e.chunkId, 'hex'), e.message);
    } else if (e instanceof PackMissingError) {
      this.quarantinePack(e.pack, 'its pack is missing');
    }
  }

  /** Of ids[i] for i in candidates, those the store does not have (a quarantined chunk counts as missing). */
  unknownChunks(ids: Uint8Array, candidates: number[]): number[] {
    const unknown: number[] = [];
    for (const i of candidates) {
      const o = i * CHUNK_ID_BYTES;
      if ((this.quarantined.size > 0 && this.quarantined.has(ids, o)) || !this.chunkIndex.has(ids, o)) unknown.push(i);
    }
    return unknown;
  }

  /** Where each chunk is: pack name, data offset, lengths, compression. */
  locateChunks(ids: Uint8Array): ChunkLocations {
    this.chunkIndex.refresh();
    const n = ids.length / CHUNK_ID_BYTES;
    const where = this.chunkIndex.locateMany(ids, n);
    const missing = where.packIndex.indexOf(-1);
    if (missing >= 0) throw new ChunkMissingError(idHex(ids.subarray(missing * CHUNK_ID_BYTES, (missing + 1) * CHUNK_ID_BYTES)));
    return where;
  }

  /** Reads pack bytes; a pack found missing has its chunks quarantined (PackMissingError). */
  async readPackInto(pack: string, offset: number, target: Uint8Array): Promise<number> {
    try {
      return await this.backend.readPackInto(pack, offset, target);
    } catch (e) {
      this.noteReadFailure(e);
      throw e;
    }
  }

  private statement(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) this.statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }

  /** Reads a chunk, decompresses it and checks it against its id. */
  async readChunk(id: Uint8Array, codec: ChunkCodec): Promise<Uint8Array> {
    try {
      return await this.readChunkChecked(id, codec);
    } catch (e) {
      this.noteReadFailure(e);
      throw e;
    }
  }

  private async readChunkChecked(id: Uint8Array, codec: ChunkCodec): Promise<Uint8Array> {
    this.chunkIndex.refresh();
    const place = this.chunkIndex.find(id);
    if (!place) throw new ChunkMissingError(idHex(id));
    return this.readLocated(id, place.pack, this.chunkIndex.location(place, id), codec);
  }

  /**
   * The chunk id at `at` in its pack, decompressed and checked against id. With `into`
   * (its raw length), the chunk lands there: read straight into it when stored as it is.
   */
  private async readLocated(id: Uint8Array, pack: string, at: ChunkLocation, codec: ChunkCodec, into?: Uint8Array): Promise<Uint8Array> {
    if (into && into.length !== at.rawLength) throw new ChunkCorruptError(idHex(id), pack, `the index gives ${at.rawLength} raw bytes, ${into.length} expected`);
    const direct = into !== undefined && at.compression === Compression.None && at.storedLength === at.rawLength;
    const stored = direct ? into : Buffer.allocUnsafe(at.storedLength);
    const got = await this.readPackInto(pack, at.offset, stored);
    if (got !== at.storedLength) {
      throw new ChunkCorruptError(idHex(id), pack, `pack is ${at.storedLength - got} bytes short`);
    }
    let raw: Uint8Array;
    if (at.compression === Compression.Lz4) {
      try {
        raw = codec.decompress(stored, at.rawLength);
      } catch (e) {
        throw new ChunkCorruptError(idHex(id), pack, `does not decompress: ${(e as Error).message}`);
      }
    } else {
      raw = stored;
    }
    const actual = codec.chunkId(raw);
    if (Buffer.compare(actual, id) !== 0) {
      throw new ChunkCorruptError(idHex(id), pack, `its content hashes to ${idHex(actual)}`);
    }
    if (!into) return raw;
    if (!direct) into.set(raw);
    return into;
  }

  /** @param expectedChunks new chunks the writer will likely get: its set of them is sized for that at once. */
  newChunkWriter(codec: ChunkCodec, expectedChunks = 0): ChunkWriter {
    return new ChunkWriter(this, codec, expectedChunks);
  }

  // ---- checkpoints ------------------------------------------------------------------

  /**
   * Makes a checkpoint visible: the writer's packs are finished (fsynced) and stored
   * first, then a remote store writes its commit object, then its chunks, the checkpoint
   * and its file manifests go into the index as one transaction.
   */
  async commitCheckpoint(
    meta: Omit<CheckpointRecord, 'id' | 'storedBytes'>,
    files: FileManifest[],
    writer: ChunkWriter,
  ): Promise<CheckpointRecord> {
    let stored: { f: FileManifest; manifest: { data: Buffer; indirect: boolean } }[];
    let packs: PackWriter[];
    let objectId: number;
    try {
      stored = files.map((f) => ({ f, manifest: writer.storeManifest(f.ids) }));
      packs = writer.finish();
      await this.backend.storePacks(packs);
      faultPoint('commit-packs-written');
      const { job: jobName, ...checkpoint } = meta;
      const job = this.requireJob(jobName);
      objectId = await this.backend.commit(
        {
          job: { name: job.name, command: job.command, cwd: job.cwd, createdAt: job.createdAt },
          checkpoint: { ...checkpoint, storedBytes: writer.storedBytes },
          packs: packs.map((p) => p.name),
          files: stored.map(({ f, manifest }) => ({
            role: f.role, path: f.path, size: f.size, mode: f.mode, uid: f.uid, gid: f.gid, blockBytes: f.blockBytes,
            manifest: manifest.data, indirect: manifest.indirect, identity: f.identity,
          })),
        },
        this.firstFreeCheckpointId(),
      );
    } catch (e) {
      writer.abandon();
      throw e;
    }
    const insCheckpoint = this.insertCheckpointStmt();
    const insFile = this.insertFileStmt();
    const now = Date.now();
    const commit = this.db.transaction(() => {
      this.indexPacks(packs.map((p) => ({ name: p.name, bytes: p.bytes })), writer.runs, now);
      // A catch-up (another crinc process) may have brought it in already.
      if (this.hasCheckpoint(objectId)) return objectId;
      const checkpointId = Number(insCheckpoint.run({ ...meta, id: objectId, storedBytes: writer.storedBytes }).lastInsertRowid);
      for (const { f, manifest } of stored) {
        insFile.run(checkpointId, f.role, f.path, f.size, f.mode, f.uid, f.gid, f.blockBytes, manifest.data, manifest.indirect ? 1 : 0, f.identity);
      }
      faultPoint('commit-in-transaction');
      return checkpointId;
    });
    // After the commit point the checkpoint exists: if the index transaction fails, the
    // next open's catch-up brings it in (its packs stay; the writer's journal too).
    faultPoint('commit-object-written');
    let id: number;
    try {
      id = commit();
    } finally {
      if (this.quarantineStale) this.loadQuarantine();
      this.quarantineStale = false;
    }
    this.backend.committed(packs);
    writer.committed();
    this.chunkIndex.refresh();
    return this.getCheckpoint(id);
  }

  /**
   * Indexes packs in the caller's transaction: their rows, and their runs in the chunk
   * index (the runs their writer wrote, else one per pack written now). A pack indexed
   * already (by a catch-up) is left as it is. A quarantined chunk in a new pack is
   * healed: the newest run places it there, and checkpoints that needed it are no longer damaged.
   */
  indexPacks(packs: IndexedPack[], writerRuns?: { name: string; entries: number }[], now = Date.now()): void {
    const insPack = this.statement('INSERT OR IGNORE INTO packs (name, bytes, created_at) VALUES (?, ?, ?)');
    const runs: { name: string; entries: number }[] = [];
    for (const pack of packs) {
      if (insPack.run(pack.name, pack.bytes, now).changes === 0) continue;
      // A remote store's chunk tables live in the bucket; locating chunks reads a local copy.
      if (pack.chunks && this.backend.remote) writeFileDurable(packTablePath(this.dir, pack.name), encodePackIndex(pack.chunks, pack.bytes));
      // Its table (read from its .idx once) is needed for a run of its own, or for healing.
      if (writerRuns && this.quarantined.size === 0) continue;
      const chunks = pack.chunks ?? this.packChunks(pack.name);
      if (!writerRuns) runs.push(this.chunkIndex.writePackRun(pack.name, chunks));
      if (this.quarantined.size === 0) continue;
      for (let i = 0; i < chunks.count; i++) {
        if (!this.quarantined.has(chunks.ids, i * CHUNK_ID_BYTES)) continue;
        this.statement('DELETE FROM quarantine WHERE id = ?').run(chunks.id(i));
        this.statement('DELETE FROM damaged WHERE chunk = ?').run(chunks.id(i));
        // Reloaded after the transaction commits (a rollback would leave the set too small otherwise).
        this.quarantineStale = true;
      }
    }
    this.chunkIndex.register(writerRuns ?? runs);
  }

  /** A pack's chunk table from its .idx in the store directory (written by its writer). */
  packChunks(name: string): PackedChunks {
    const path = packTablePath(this.dir, name);
    return decodePackIndex(readFileSync(path), path).chunks;
  }

  /** Merges the chunk index's newest runs (after a commit, off the job's freeze); see ChunkIndex.compact. */
  compactChunkIndex(options: { all?: boolean } = {}): void {
    this.chunkIndex.compact(options);
  }

  private insertCheckpointStmt(): Database.Statement {
    // A null id lets SQLite number the checkpoint (AUTOINCREMENT); a remote store gives its own.
    return this.statement(
      `INSERT INTO checkpoints (id, job, kind, taken_at, mode, root_pid, image_bytes, stored_bytes, pages_total, pages_hashed,
         pages_clean, duration_ms, freeze_ms, note)
       VALUES (@id, @job, @kind, @takenAt, @mode, @rootPid, @imageBytes, @storedBytes, @pagesTotal, @pagesHashed,
         @pagesClean, @durationMs, @freezeMs, @note)`,
    );
  }

  private insertFileStmt(): Database.Statement {
    return this.statement(
      `INSERT INTO files (checkpoint, role, path, size, mode, uid, gid, block_bytes, manifest, manifest_indirect, identity)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
  }

  /** Above every checkpoint id this index has used (AUTOINCREMENT's rule: ids are never reused). */
  private firstFreeCheckpointId(): number {
    const seq = this.db.prepare(`SELECT seq FROM sqlite_sequence WHERE name = 'checkpoints'`).pluck().get() as number | undefined;
    return (seq ?? 0) + 1;
  }

  /** Whether the index has the checkpoint (not forgotten). */
  hasCheckpoint(id: number): boolean {
    return this.statement('SELECT 1 FROM checkpoints WHERE id = ?').get(id) !== undefined;
  }

  getCheckpoint(id: number): CheckpointRecord {
    const row = this.db.prepare('SELECT * FROM checkpoints WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    if (!row) throw new CheckpointNotFoundError(`no checkpoint with id ${id}`);
    return checkpointFromRow(row);
  }

  /** The store's size as the index knows it: packs, their bytes, chunks (crinc daemon --metrics). */
  figures(): { packs: number; packBytes: number; chunks: number } {
    const packs = this.db.prepare('SELECT count(*) AS n, coalesce(sum(bytes), 0) AS bytes FROM packs').get() as { n: number; bytes: number };
    // Entries of the chunk index's runs: a chunk stored again counts twice until a merge.
    const entries = this.db.prepare('SELECT coalesce(sum(entries), 0) FROM index_runs').pluck().get() as number;
    return { packs: packs.n, packBytes: packs.bytes, chunks: entries };
  }

  listCheckpoints(job?: string): CheckpointRecord[] {
    const rows = job
      ? this.db.prepare('SELECT * FROM checkpoints WHERE job = ? ORDER BY taken_at, id').all(job)
      : this.db.prepare('SELECT * FROM checkpoints ORDER BY taken_at, id').all();
    return (rows as Record<string, unknown>[]).map(checkpointFromRow);
  }

  latestCheckpoint(job: string, kind: CheckpointKind = 'checkpoint'): CheckpointRecord | undefined {
    const row = this.db
      .prepare('SELECT * FROM checkpoints WHERE job = ? AND kind = ? ORDER BY taken_at DESC, id DESC LIMIT 1')
      .get(job, kind) as Record<string, unknown> | undefined;
    return row ? checkpointFromRow(row) : undefined;
  }

  /** The newest restorable checkpoint of the job taken at or before `at` (ms since the epoch). */
  checkpointAtOrBefore(job: string, at: number): CheckpointRecord | undefined {
    const row = this.db
      .prepare(`SELECT * FROM checkpoints WHERE job = ? AND kind = 'checkpoint' AND taken_at <= ? ORDER BY taken_at DESC, id DESC LIMIT 1`)
      .get(job, at) as Record<string, unknown> | undefined;
    return row ? checkpointFromRow(row) : undefined;
  }

  async checkpointFiles(checkpointId: number, codec: ChunkCodec, role?: FileRole): Promise<FileManifest[]> {
    const rows = (
      role
        ? this.db.prepare('SELECT * FROM files WHERE checkpoint = ? AND role = ? ORDER BY path').all(checkpointId, role)
        : this.db.prepare('SELECT * FROM files WHERE checkpoint = ? ORDER BY role, path').all(checkpointId)
    ) as Record<string, unknown>[];
    // Files' indirect manifests load side by side: on an S3 store each part is a GET.
    return Promise.all(rows.map(async (r) => ({
      role: r.role as FileRole,
      path: r.path as string,
      size: r.size as number,
      mode: r.mode as number,
      uid: r.uid as number,
      gid: r.gid as number,
      blockBytes: r.block_bytes as number,
      ids: await this.manifestIds(r.manifest as Buffer, (r.manifest_indirect as number) === 1, codec),
      identity: (r.identity as string | null) ?? null,
    })));
  }

  /**
   * A manifest's block ids: as stored, or, for an indirect one, read from its parts. The
   * parts are located at once and each is read straight into its place in the result (a
   * 1 GiB job's 64 parts, one by one, took ~60 ms of a restore's start here).
   */
  async manifestIds(data: Uint8Array, indirect: boolean, codec: ChunkCodec): Promise<Uint8Array> {
    if (!indirect) return new Uint8Array(data);
    try {
      const where = this.locateChunks(data);
      const ids = new Uint8Array(where.rawLength.reduce((sum, n) => sum + n, 0));
      const reads: Promise<Uint8Array>[] = [];
      let at = 0;
      for (let k = 0; k < where.rawLength.length; k++) {
        const into = ids.subarray(at, at + where.rawLength[k]!);
        at += into.length;
        const place = { offset: where.offset[k]!, storedLength: where.storedLength[k]!, rawLength: where.rawLength[k]!, compression: where.compression[k]! };
        reads.push(this.readLocated(data.subarray(k * CHUNK_ID_BYTES, (k + 1) * CHUNK_ID_BYTES), where.packs[where.packIndex[k]!]!, place, codec, into));
        // Reads go out a few at a time: on an S3 store each is a ranged GET.
        if (reads.length === MANIFEST_PART_READS_IN_FLIGHT) await Promise.all(reads.splice(0));
      }
      await Promise.all(reads);
      return ids;
    } catch (e) {
      this.noteReadFailure(e);
      throw e;
    }
  }

  // ---- the index as a cache of the objects ----------------------------------------------

  /** A checkpoint as its object records it, from the index (for an index older than the objects). */
  private commitRecordFromIndex(id: number): CommitRecord {
    const cp = this.getCheckpoint(id);
    const job = this.requireJob(cp.job);
    const { id: _id, job: _job, ...checkpoint } = cp;
    const rows = this.db.prepare('SELECT * FROM files WHERE checkpoint = ? ORDER BY role, path').all(id) as Record<string, unknown>[];
    return {
      job: { name: job.name, command: job.command, cwd: job.cwd, createdAt: job.createdAt },
      checkpoint,
      packs: [],
      files: rows.map((r) => ({
        role: r.role as FileRole, path: r.path as string, size: r.size as number, mode: r.mode as number, uid: r.uid as number,
        gid: r.gid as number, blockBytes: r.block_bytes as number, manifest: r.manifest as Buffer,
        indirect: (r.manifest_indirect as number) === 1, identity: (r.identity as string | null) ?? null,
      })),
    };
  }

  /**
   * Upgrade to format 5: the chunks table becomes runs of the chunk index. A local store
   * gets a run per pack from its chunk table (.idx, written first where a pack older than
   * format 4 has none), oldest pack first so that a chunk stored twice is placed at its
   * newest copy; a remote store's cache forgets its packs, and the catch-up that follows
   * every open brings them back with their chunk tables from the bucket.
   */
  private chunkRowsToRuns(): { name: string; entries: number }[] {
    const runs: { name: string; entries: number }[] = [];
    if (this.backend.remote) {
      this.db.exec('DELETE FROM packs');
    } else {
      for (const name of this.db.prepare('SELECT name FROM packs ORDER BY id').pluck().all() as string[]) {
        const table = readPackTable(this.dir, name);
        // An unreadable pack's chunks are missing from the index, as verify and repair report.
        if (!table.ok) continue;
        const idx = packTablePath(this.dir, name);
        if (!existsSync(idx)) writeFileDurable(idx, encodePackIndex(table.chunks, table.bytes));
        runs.push(this.chunkIndex.writePackRun(name, table.chunks));
      }
    }
    return runs;
  }

  /** Upgrade to format 4: store.json and one object per checkpoint, from the index (idempotent). */
  private writeObjectsFromIndex(backend: LocalBackend): void {
    const meta = (key: string) => this.db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get(key) as Buffer | string;
    if (!readLocalIdentity(this.dir)) {
      createFileDurable(join(this.dir, STORE_OBJECT), encodeStoreObject({
        storeId: String(meta('store_id')), createdAt: String(meta('created_at')), secret: new Uint8Array(meta('secret') as Buffer),
      }));
    }
    const existing = new Set(backend.checkpointObjectIds());
    for (const id of this.db.prepare('SELECT id FROM checkpoints ORDER BY id').pluck().all() as number[]) {
      if (!existing.has(id)) backend.writeCheckpointObject(id, this.commitRecordFromIndex(id));
    }
  }

  /**
   * Brings the index of a store directory in line with its checkpoint objects: an object
   * the index lacks (its commit was interrupted after the commit point) comes in with the
   * packs it names; an object of a forgotten checkpoint is deleted. Call with the store
   * lock held exclusive (no commit between its object and its index transaction).
   * Returns the checkpoints taken in.
   */
  catchUpWithObjects(): number[] {
    if (!(this.backend instanceof LocalBackend)) return [];
    const backend = this.backend;
    const { packs, checkpoints } = this.cachedState();
    const forgotten = this.forgottenCheckpoints();
    // An interrupted forget: its rows are gone, its objects go now.
    backend.removeCheckpointObjects([...forgotten]);
    this.clearForgotten([...forgotten]);
    const newCheckpoints: RemoteCheckpoint[] = [];
    const newPacks: RemotePack[] = [];
    for (const id of backend.checkpointObjectIds()) {
      if (checkpoints.has(id) || forgotten.has(id)) continue;
      const record = backend.readCheckpointObject(id);
      for (const name of record.packs) {
        if (packs.has(name)) continue;
        const table = readPackTable(this.dir, name);
        // A pack it names that cannot be read: its chunks turn up missing (verify, repair).
        if (table.ok) newPacks.push({ name, bytes: table.bytes, chunks: table.chunks });
        packs.add(name);
      }
      newCheckpoints.push({ id, record });
    }
    if (newCheckpoints.length > 0) this.applyRemote({ goneCheckpoints: [], gonePacks: [], newPacks, newCheckpoints });
    return newCheckpoints.map((c) => c.id);
  }

  // ---- the index as a cache of a remote store -----------------------------------------

  /** The packs and checkpoints the index holds, to compare with the remote store's. */
  cachedState(): { packs: Set<string>; checkpoints: Set<number> } {
    return {
      packs: new Set(this.db.prepare('SELECT name FROM packs').pluck().all() as string[]),
      checkpoints: new Set(this.db.prepare('SELECT id FROM checkpoints').pluck().all() as number[]),
    };
  }

  /**
   * Brings the index in line with the remote store, in one transaction: packs and
   * checkpoints gone from it (deleted elsewhere) leave the index, new ones come in. A
   * checkpoint's job gets a row (stopped, no process) if this index has none.
   */
  applyRemote(change: { goneCheckpoints: number[]; gonePacks: string[]; newPacks: RemotePack[]; newCheckpoints: RemoteCheckpoint[] }): void {
    const now = Date.now();
    const insJob = this.db.prepare(
      `INSERT OR IGNORE INTO jobs (name, created_at, command, cwd, pid, controller_pid, state, updated_at) VALUES (?, ?, ?, ?, NULL, NULL, 'stopped', ?)`,
    );
    this.db.transaction(() => {
      for (const id of change.goneCheckpoints) {
        this.db.prepare('DELETE FROM files WHERE checkpoint = ?').run(id);
        this.db.prepare('DELETE FROM checkpoints WHERE id = ?').run(id);
      }
      // Their entries in the chunk index are dead from now on (a merge drops them).
      for (const name of change.gonePacks) this.db.prepare('DELETE FROM packs WHERE name = ?').run(name);
      this.indexPacks(change.newPacks, undefined, now);
      const forgotten = this.forgottenCheckpoints();
      for (const { id, record } of change.newCheckpoints) {
        // Committed meanwhile by this node's own writer: already indexed; or forgotten here.
        if (forgotten.has(id) || this.hasCheckpoint(id)) continue;
        const { job, checkpoint } = record;
        insJob.run(job.name, job.createdAt, JSON.stringify(job.command), job.cwd, now);
        this.insertCheckpointStmt().run({ ...checkpoint, id, job: job.name });
        for (const f of record.files) {
          this.insertFileStmt().run(id, f.role, f.path, f.size, f.mode, f.uid, f.gid, f.blockBytes, f.manifest, f.indirect ? 1 : 0, f.identity);
        }
      }
    })();
    this.chunkIndex.refresh();
    if (this.backend.remote) this.removeCachedTables(change.gonePacks);
  }
}


/** Collects the new chunks of one checkpoint into packs; nothing is visible before commit. */
export class ChunkWriter {
  storedBytes = 0;
  newChunks = 0;
  private readonly finished: PackWriter[] = [];
  private current: PackWriter | undefined;
  /** Ids written by this writer, so a chunk seen twice in one checkpoint is stored once. */
  private readonly pending: IdSet;
  /** Names this writer's packs before they exist, so crash recovery can remove them if it dies uncommitted. */
  private readonly journal: WriterJournal;
  /** The chunk index entries of the new chunks, written as runs while the writer fills. */
  private readonly segments: RunSegments;

  /**
   * @param expectedChunks sizes the set of ids written: growing it rehashes every id so far
   *   into fresh memory (~70 ms of a 1 GiB all-new checkpoint here, inside the freeze).
   */
  constructor(
    private readonly repo: Repository,
    private readonly codec: ChunkCodec,
    expectedChunks = 0,
  ) {
    // With a sixteenth more room: the manifests' parts come at the commit, where a growth
    // (a rehash of every id so far) would be timed too.
    this.pending = new IdSet(expectedChunks + (expectedChunks >>> 4));
    this.journal = new WriterJournal(repo.dir);
    this.segments = new RunSegments(repo.chunkIndex);
  }

  /** The chunk index runs of this writer's chunks (complete after finish()), for the commit to list. */
  get runs(): { name: string; entries: number }[] {
    return this.segments.runs;
  }

  /** True when this writer or the store has the chunk already. */
  has(id: Uint8Array, offset = 0): boolean {
    return this.pending.has(id, offset) || this.repo.hasChunk(id.subarray(offset, offset + CHUNK_ID_BYTES));
  }

  /** True when this writer has written the chunk (the caller checked the store itself). */
  hasPending(id: Uint8Array, offset = 0): boolean {
    return this.pending.has(id, offset);
  }

  /** Stores `raw` under `id` unless the store or this writer has it already. Returns true when new. */
  put(id: Uint8Array, raw: Uint8Array): boolean {
    if (this.has(id)) return false;
    const compressed = this.codec.compress(raw);
    const useCompressed = compressed.length < raw.length;
    this.putStored(id, useCompressed ? compressed : raw, raw.length, useCompressed ? Compression.Lz4 : Compression.None);
    return true;
  }

  /**
   * Stores a chunk already in its stored form. The caller has checked that the store
   * does not have it (Repository.unknownChunks); a second put of one id is ignored.
   */
  putStored(id: Uint8Array, stored: Uint8Array, rawLength: number, compression: Compression): void {
    if (!this.pending.add(id)) return;
    const pack = this.pack();
    pack.add(id, stored, rawLength, compression);
    this.segments.add(id, 0, pack.name, pack.count - 1);
    this.storedBytes += stored.length;
    this.newChunks++;
  }

  /** A manifest small enough stays inline; a longer one becomes chunks of ids itself. */
  storeManifest(ids: Uint8Array): { data: Buffer; indirect: boolean } {
    const partBytes = MANIFEST_INLINE_IDS * CHUNK_ID_BYTES;
    if (ids.length <= partBytes) return { data: Buffer.from(ids), indirect: false };
    const refs: Uint8Array[] = [];
    for (let o = 0; o < ids.length; o += partBytes) {
      const part = ids.subarray(o, Math.min(o + partBytes, ids.length));
      const id = this.codec.chunkId(part);
      this.put(id, part);
      refs.push(id);
    }
    return { data: Buffer.concat(refs), indirect: true };
  }

  /** Removes every pack this writer made, and their runs: for a checkpoint that will not be committed. */
  abandon(): void {
    this.current?.abandon();
    this.current = undefined;
    for (const p of this.finished.splice(0)) p.abandon();
    this.segments.abandon();
    this.journal.close();
  }

  /** The index names this writer's packs now: nothing of it is left for crash recovery. */
  committed(): void {
    this.journal.close();
  }

  finish(): PackWriter[] {
    if (this.current) this.finishPack();
    this.segments.flush();
    return this.finished;
  }

  /** Finishes the open pack (and its chunk table, written beside it as blobs came). */
  private finishPack(): void {
    const pack = this.current!;
    this.current = undefined;
    pack.finish();
    this.finished.push(pack);
  }

  private pack(): PackWriter {
    if (this.current?.full) this.finishPack();
    this.current ??= new PackWriter(this.repo.dir, this.journal);
    return this.current;
  }
}

function openIndex(dir: string, readOnly: boolean): Database.Database {
  // immutable: SQLite neither locks nor looks for -shm/-wal, which it could not create on a read-only store.
  const db = readOnly
    ? new Database(`file:${encodeURI(join(dir, INDEX_FILE))}?immutable=1`, { readonly: true })
    : new Database(join(dir, INDEX_FILE));
  if (!readOnly) db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 30000');
  return db;
}

function indexFileIdentity(dir: string): string | undefined {
  const st = statSync(join(dir, INDEX_FILE), { throwIfNoEntry: false });
  return st ? `${st.dev}:${st.ino}` : undefined;
}

/** Whether a store directory holds packs or checkpoint objects (what only its index could lose track of). */
function storeHoldsData(dir: string): boolean {
  const nonEmpty = (sub: string) => {
    try {
      return readdirSync(join(dir, sub)).length > 0;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  };
  if (nonEmpty(CHECKPOINTS_DIR)) return true;
  let prefixes: string[] = [];
  try {
    prefixes = readdirSync(join(dir, PACKS_DIR));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  return prefixes.some((p) => nonEmpty(join(PACKS_DIR, p)));
}

/** The identity in a store directory's store.json, if it has one (format 4 on). */
function readLocalIdentity(dir: string): StoreIdentity | undefined {
  let body: Buffer;
  try {
    body = readFileSync(join(dir, STORE_OBJECT));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  return decodeStoreObject(body, join(dir, STORE_OBJECT));
}

/** Refuses a store that someone other than root could read or change. */
function checkStoreDirectory(dir: string): void {
  const st = statSync(dir);
  if (!st.isDirectory()) throw new StorePermissionError(`${dir} is not a directory`);
  if (st.uid !== 0 && process.getuid?.() === 0) {
    throw new StorePermissionError(`${dir} is owned by uid ${st.uid}, not root: memory images hold secrets, so a store must be root's. Fix: chown root ${dir}`);
  }
  if ((st.mode & 0o077) !== 0) {
    throw new StorePermissionError(
      `${dir} has mode ${(st.mode & 0o777).toString(8)}: others could read or change checkpoints, which hold the job's memory. Fix: chmod 700 ${dir}`,
    );
  }
}

function jobFromRow(r: Record<string, unknown>): JobRecord {
  return {
    name: r.name as string,
    createdAt: r.created_at as number,
    command: JSON.parse(r.command as string) as string[],
    cwd: r.cwd as string,
    pid: (r.pid as number | null) ?? null,
    controllerPid: (r.controller_pid as number | null) ?? null,
    state: r.state as JobState,
    updatedAt: r.updated_at as number,
  };
}

function managedFromRow(r: Record<string, unknown>): ManagedJobRecord {
  return {
    job: r.job as string,
    origin: r.origin as ManagedJobRecord['origin'],
    intervalMs: r.interval_ms as number,
    tracking: (r.tracking as number) === 1,
    state: r.state as ManagedJobRecord['state'],
    ended: (r.ended as string | null) ?? null,
    registeredAt: r.registered_at as number,
    updatedAt: r.updated_at as number,
  };
}

function checkpointFromRow(r: Record<string, unknown>): CheckpointRecord {
  return {
    id: r.id as number,
    job: r.job as string,
    kind: r.kind as CheckpointKind,
    takenAt: r.taken_at as number,
    mode: r.mode as CheckpointMode,
    rootPid: (r.root_pid as number | null) ?? null,
    imageBytes: r.image_bytes as number,
    storedBytes: r.stored_bytes as number,
    pagesTotal: r.pages_total as number,
    pagesHashed: r.pages_hashed as number,
    pagesClean: r.pages_clean as number,
    durationMs: r.duration_ms as number,
    freezeMs: r.freeze_ms as number,
    note: (r.note as string | null) ?? null,
  };
}

