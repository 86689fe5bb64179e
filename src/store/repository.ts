// A crinc store on a local filesystem: the SQLite index, the pack files, the per-job
// locks. Everything a checkpoint adds becomes visible in one SQLite transaction, after
// its packs are on disk (docs/FORMAT.md, "Commit").
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { faultPoint } from '../sys/fault.js';
import { tryLockExclusive } from '../sys/libc.js';
import {
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
  StoreFormatError,
  StoreNotFoundError,
  StorePermissionError,
  UnknownJobError,
} from './errors.js';
import { SECRET_BYTES } from '../codec/limits.js';
import { IdSet } from './id-set.js';
import { PackReader, PackWriter, PARTIAL_SUFFIX, packPath } from './pack.js';
import type { RetentionPolicy } from './retention-policy.js';
import { SCHEMA_MANAGED_JOBS, SCHEMA_MIGRATIONS, SCHEMA_V1 } from './schema.js';

/** Ids per lookup query: below SQLite's default limit of 32766 bound parameters, large enough to amortize a query. */
const LOOKUP_BATCH = 500;
/** Up to this many chunk ids (~24 bytes each in memory) a controller keeps all of them in memory. */
const KNOWN_PRELOAD_MAX_IDS = 8 * 1024 * 1024;
/** Locating chunks scans the whole table when it holds at most this many times the ids wanted. */
const LOCATE_SCAN_FACTOR = 4;

export interface ChunkLocations {
  pack: string[];
  offset: Float64Array;
  storedLength: Uint32Array;
  rawLength: Uint32Array;
  compression: Uint8Array;
}
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

interface ChunkRow {
  pack: string;
  offset: number;
  stored_length: number;
  raw_length: number;
  compression: number;
}

export interface OpenOptions {
  create: boolean;
}

export class Repository {
  readonly secret: Uint8Array;
  /** The index: for the store's own modules (gc.ts, inventory.ts); everything else goes through methods. */
  readonly db: Database.Database;
  private readonly packReader: PackReader;
  private readonly hasChunkStmt: Database.Statement;
  /** Ids known to be in the index: lookups of them need no query. */
  private known = new IdSet();
  /** The GC generation the cache is valid for (meta gc_generation, read before any id went in). */
  private knownGeneration: number;
  /** The cache holds every id of the index (as of preloadKnown, plus our own commits). */
  private knownComplete = false;
  private readonly statements = new Map<string, Database.Statement>();
  private readonly chunkStmt: Database.Statement;

  private constructor(
    readonly dir: string,
    isNew: boolean,
  ) {
    this.db = new Database(join(dir, INDEX_FILE));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 30000');
    this.packReader = new PackReader(dir);
    this.ensureSchema(isNew);
    const secret = this.db.prepare(`SELECT value FROM meta WHERE key = 'secret'`).pluck().get() as Buffer | undefined;
    if (!secret || secret.length !== SECRET_BYTES) throw new StoreFormatError(`${dir}: the store's secret is missing or damaged`);
    this.secret = new Uint8Array(secret);
    this.knownGeneration = this.gcGeneration();
    this.hasChunkStmt = this.db.prepare('SELECT 1 FROM chunks WHERE id = ?').pluck();
    this.chunkStmt = this.db.prepare(
      'SELECT p.name AS pack, c.offset, c.stored_length, c.raw_length, c.compression FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id = ?',
    );
  }

  static open(dir: string, options: OpenOptions): Repository {
    const index = join(dir, INDEX_FILE);
    const isNew = !existsSync(index);
    if (isNew) {
      if (!options.create) throw new StoreNotFoundError(dir);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    }
    checkStoreDirectory(dir);
    // Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
    if (isNew) closeSync(openSync(index, 'a', 0o600));
    const repo = new Repository(dir, isNew);
    for (const sub of [PACKS_DIR, JOBS_DIR, LOCKS_DIR]) mkdirSync(join(dir, sub), { recursive: true, mode: 0o700 });
    return repo;
  }

  close(): void {
    this.packReader.close();
    this.db.close();
  }

  private ensureSchema(isNew: boolean): void {
    const hasMeta = this.db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'`).get();
    if (!hasMeta && !isNew) throw new StoreFormatError(`${this.dir}/${INDEX_FILE} is not a crinc index (no meta table)`);
    if (!hasMeta) {
      this.db.transaction(() => {
        this.db.exec(SCHEMA_V1);
        for (const m of SCHEMA_MIGRATIONS) this.db.exec(m.sql);
        const ins = this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
        ins.run('format_version', String(STORE_FORMAT_VERSION));
        ins.run('secret', randomBytes(SECRET_BYTES));
        ins.run('store_id', randomBytes(16).toString('hex'));
        ins.run('created_at', new Date().toISOString());
        this.db.exec(SCHEMA_MANAGED_JOBS);
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
    this.db.exec(SCHEMA_MANAGED_JOBS);
    if (version === STORE_FORMAT_VERSION) return;
    // An older store is upgraded in place; IMMEDIATE so that two openers cannot both migrate.
    this.db.transaction(() => {
      const current = Number(versionStmt.get());
      for (const m of SCHEMA_MIGRATIONS) {
        if (m.version <= current) continue;
        this.db.exec(m.sql);
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
   * After a GC (another process's, possibly): drops the cache of known chunk ids, which
   * may name deleted chunks, and reloads it when it was complete; closes open packs,
   * which may be deleted files. Call with the store lock held shared, before ingest.
   */
  refreshAfterCollection(): void {
    const generation = this.gcGeneration();
    if (generation === this.knownGeneration) return;
    const wasComplete = this.knownComplete;
    this.known = new IdSet();
    this.knownComplete = false;
    this.knownGeneration = generation;
    this.packReader.close();
    if (wasComplete) this.preloadKnown();
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

  /** Deletes checkpoints and their manifests in one transaction; their chunks stay for GC. */
  forgetCheckpoints(ids: number[]): void {
    const delFiles = this.db.prepare('DELETE FROM files WHERE checkpoint = ?');
    const delCheckpoint = this.db.prepare('DELETE FROM checkpoints WHERE id = ?');
    this.db.transaction(() => {
      for (const id of ids) {
        delFiles.run(id);
        delCheckpoint.run(id);
      }
      faultPoint('retention-in-transaction');
    })();
  }

  /** Deletes a pack file the index does not name (GC, crash recovery); `partial`: its unfinished .partial file. */
  removePackFile(name: string, partial = false): void {
    // An open descriptor would keep the deleted file's space in use: reopen lazily instead.
    this.packReader.close();
    rmSync(packPath(this.dir, name) + (partial ? PARTIAL_SUFFIX : ''), { force: true });
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
    if (this.known.has(id)) return true;
    if (this.knownComplete) return false;
    const found = this.hasChunkStmt.get(id) !== undefined;
    if (found) this.known.add(id);
    return found;
  }

  /**
   * Tells the cache of ids known to be in the index about ids that are (the previous
   * checkpoint's manifests, say), so that lookups of them need no query. Valid until the
   * next GC: see refreshAfterCollection.
   */
  rememberKnown(ids: Uint8Array): void {
    for (let o = 0; o < ids.length; o += CHUNK_ID_BYTES) {
      if (!isZeroId(ids, o / CHUNK_ID_BYTES)) this.known.add(ids, o);
    }
  }

  /**
   * Loads every chunk id of a store of at most KNOWN_PRELOAD_MAX_IDS chunks into the
   * cache, for a long-lived controller: then an id missing from the cache is new without
   * a query. A chunk another process commits later is missed and stored again (a second
   * copy, never a wrong one). Returns whether the cache is complete.
   */
  preloadKnown(): boolean {
    if (this.knownComplete) return true;
    const n = this.db.prepare('SELECT count(*) FROM chunks').pluck().get() as number;
    if (n > KNOWN_PRELOAD_MAX_IDS) return false;
    for (const id of this.db.prepare('SELECT id FROM chunks').pluck().iterate() as IterableIterator<Buffer>) this.known.add(id);
    this.knownComplete = true;
    return true;
  }

  /** Of ids[i] for i in candidates, those the store does not have: cache first, then batched queries. */
  unknownChunks(ids: Uint8Array, candidates: number[]): number[] {
    const ask: number[] = [];
    for (const i of candidates) if (!this.known.has(ids, i * CHUNK_ID_BYTES)) ask.push(i);
    if (this.knownComplete) return ask;
    const unknown: number[] = [];
    for (let b = 0; b < ask.length; b += LOOKUP_BATCH) {
      const part = ask.slice(b, b + LOOKUP_BATCH);
      const params = part.map((i) => ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES));
      const found = new IdSet(part.length);
      for (const row of this.lookupStmt(part.length).all(...params) as { id: Buffer }[]) {
        found.add(row.id);
        this.known.add(row.id);
      }
      for (const i of part) if (!found.has(ids, i * CHUNK_ID_BYTES)) unknown.push(i);
    }
    return unknown;
  }

  /** Where each chunk is: pack name, data offset, lengths, compression; batched queries. */
  locateChunks(ids: Uint8Array): ChunkLocations {
    const n = ids.length / CHUNK_ID_BYTES;
    const unique = new IdSet(n);
    const slot = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      unique.add(ids, i * CHUNK_ID_BYTES);
      slot[i] = unique.indexOf(ids, i * CHUNK_ID_BYTES);
    }
    const u = unique.size;
    const found = { row: new Array<ChunkRow | undefined>(u) };
    const total = this.db.prepare('SELECT count(*) FROM chunks').pluck().get() as number;
    if (total <= LOCATE_SCAN_FACTOR * u) {
      // Most of the store is wanted: one pass over the table beats a lookup per id.
      const rows = this.db
        .prepare('SELECT c.id, p.name, c.offset, c.stored_length, c.raw_length, c.compression FROM chunks c JOIN packs p ON p.id = c.pack')
        .raw()
        .iterate() as IterableIterator<[Buffer, string, number, number, number, number]>;
      for (const [id, pack, offset, stored, raw, compression] of rows) {
        const k = unique.indexOf(id);
        if (k >= 0) found.row[k] = { pack, offset, stored_length: stored, raw_length: raw, compression };
      }
    } else {
      for (let b = 0; b < u; b += LOOKUP_BATCH) {
        const count = Math.min(LOOKUP_BATCH, u - b);
        const params = Array.from({ length: count }, (_, k) => unique.idAt(b + k));
        for (const row of this.locateStmt(count).all(...params) as (ChunkRow & { id: Buffer })[]) {
          found.row[unique.indexOf(row.id)] = row;
        }
      }
    }
    const out: ChunkLocations = {
      pack: new Array<string>(n),
      offset: new Float64Array(n),
      storedLength: new Uint32Array(n),
      rawLength: new Uint32Array(n),
      compression: new Uint8Array(n),
    };
    for (let i = 0; i < n; i++) {
      const row = found.row[slot[i]!];
      if (!row) throw new ChunkMissingError(idHex(ids.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES)));
      out.pack[i] = row.pack;
      out.offset[i] = row.offset;
      out.storedLength[i] = row.stored_length;
      out.rawLength[i] = row.raw_length;
      out.compression[i] = row.compression;
    }
    return out;
  }

  readPackInto(pack: string, offset: number, target: Uint8Array): number {
    return this.packReader.readInto(pack, offset, target);
  }

  private lookupStmt(n: number): Database.Statement {
    return this.statement(`SELECT id FROM chunks WHERE id IN (${'?,'.repeat(n - 1)}?)`);
  }

  private locateStmt(n: number): Database.Statement {
    return this.statement(
      `SELECT c.id, p.name AS pack, c.offset, c.stored_length, c.raw_length, c.compression FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id IN (${'?,'.repeat(n - 1)}?)`,
    );
  }

  private statement(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) this.statements.set(sql, (st = this.db.prepare(sql)));
    return st;
  }

  /** Reads a chunk, decompresses it and checks it against its id. */
  readChunk(id: Uint8Array, codec: ChunkCodec): Uint8Array {
    const row = this.chunkStmt.get(id) as ChunkRow | undefined;
    if (!row) throw new ChunkMissingError(idHex(id));
    const stored = this.packReader.read(row.pack, row.offset, row.stored_length);
    if (stored.length !== row.stored_length) {
      throw new ChunkCorruptError(idHex(id), row.pack, `pack is ${row.stored_length - stored.length} bytes short`);
    }
    let raw: Uint8Array;
    if (row.compression === Compression.Lz4) {
      try {
        raw = codec.decompress(stored, row.raw_length);
      } catch (e) {
        throw new ChunkCorruptError(idHex(id), row.pack, `does not decompress: ${(e as Error).message}`);
      }
    } else {
      raw = stored;
    }
    const actual = codec.chunkId(raw);
    if (Buffer.compare(actual, id) !== 0) {
      throw new ChunkCorruptError(idHex(id), row.pack, `its content hashes to ${idHex(actual)}`);
    }
    return raw;
  }

  newChunkWriter(codec: ChunkCodec): ChunkWriter {
    return new ChunkWriter(this, codec);
  }

  // ---- checkpoints ------------------------------------------------------------------

  /**
   * Makes a checkpoint visible: the writer's packs are finished (fsynced) first, then
   * its chunks, the checkpoint and its file manifests go in as one transaction.
   */
  commitCheckpoint(
    meta: Omit<CheckpointRecord, 'id' | 'storedBytes'>,
    files: FileManifest[],
    writer: ChunkWriter,
  ): CheckpointRecord {
    let stored: { f: FileManifest; manifest: { data: Buffer; indirect: boolean } }[];
    let packs: PackWriter[];
    try {
      stored = files.map((f) => ({ f, manifest: writer.storeManifest(f.ids) }));
      packs = writer.finish();
    } catch (e) {
      writer.abandon();
      throw e;
    }
    const insPack = this.db.prepare('INSERT INTO packs (name, bytes, created_at) VALUES (?, ?, ?)');
    const insChunk = this.db.prepare(
      'INSERT OR IGNORE INTO chunks (id, pack, offset, stored_length, raw_length, compression) VALUES (?, ?, ?, ?, ?, ?)',
    );
    const insCheckpoint = this.db.prepare(
      `INSERT INTO checkpoints (job, kind, taken_at, mode, root_pid, image_bytes, stored_bytes, pages_total, pages_hashed,
         pages_clean, duration_ms, freeze_ms, note)
       VALUES (@job, @kind, @takenAt, @mode, @rootPid, @imageBytes, @storedBytes, @pagesTotal, @pagesHashed,
         @pagesClean, @durationMs, @freezeMs, @note)`,
    );
    const insFile = this.db.prepare(
      `INSERT INTO files (checkpoint, role, path, size, mode, uid, gid, block_bytes, manifest, manifest_indirect, identity)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const now = Date.now();
    const commit = this.db.transaction(() => {
      for (const pack of packs) {
        const packId = insPack.run(pack.name, pack.bytes, now).lastInsertRowid;
        const c = pack.chunks;
        for (let i = 0; i < c.count; i++) {
          insChunk.run(c.id(i), packId, c.offsets[i], c.storedLengths[i], c.rawLengths[i], c.compressions[i]);
        }
      }
      const checkpointId = Number(insCheckpoint.run({ ...meta, storedBytes: writer.storedBytes }).lastInsertRowid);
      for (const { f, manifest } of stored) {
        insFile.run(checkpointId, f.role, f.path, f.size, f.mode, f.uid, f.gid, f.blockBytes, manifest.data, manifest.indirect ? 1 : 0, f.identity);
      }
      faultPoint('commit-in-transaction');
      return checkpointId;
    });
    let id: number;
    try {
      faultPoint('commit-packs-written');
      id = commit();
    } catch (e) {
      writer.abandon();
      throw e;
    }
    for (const pack of packs) for (let i = 0; i < pack.chunks.count; i++) this.known.add(pack.chunks.ids, i * CHUNK_ID_BYTES);
    return this.getCheckpoint(id);
  }

  getCheckpoint(id: number): CheckpointRecord {
    const row = this.db.prepare('SELECT * FROM checkpoints WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    if (!row) throw new CheckpointNotFoundError(`no checkpoint with id ${id}`);
    return checkpointFromRow(row);
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

  checkpointFiles(checkpointId: number, codec: ChunkCodec, role?: FileRole): FileManifest[] {
    const rows = (
      role
        ? this.db.prepare('SELECT * FROM files WHERE checkpoint = ? AND role = ? ORDER BY path').all(checkpointId, role)
        : this.db.prepare('SELECT * FROM files WHERE checkpoint = ? ORDER BY role, path').all(checkpointId)
    ) as Record<string, unknown>[];
    return rows.map((r) => ({
      role: r.role as FileRole,
      path: r.path as string,
      size: r.size as number,
      mode: r.mode as number,
      uid: r.uid as number,
      gid: r.gid as number,
      blockBytes: r.block_bytes as number,
      ids: this.loadManifest(r.manifest as Buffer, (r.manifest_indirect as number) === 1, codec),
      identity: (r.identity as string | null) ?? null,
    }));
  }

  private loadManifest(data: Buffer, indirect: boolean, codec: ChunkCodec): Uint8Array {
    if (!indirect) return new Uint8Array(data);
    const parts: Uint8Array[] = [];
    for (let i = 0; i < data.length / CHUNK_ID_BYTES; i++) {
      parts.push(this.readChunk(data.subarray(i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES), codec));
    }
    return new Uint8Array(Buffer.concat(parts));
  }
}


/** Collects the new chunks of one checkpoint into packs; nothing is visible before commit. */
export class ChunkWriter {
  storedBytes = 0;
  newChunks = 0;
  private readonly finished: PackWriter[] = [];
  private current: PackWriter | undefined;
  /** Ids written by this writer, so a chunk seen twice in one checkpoint is stored once. */
  private readonly pending = new IdSet();

  constructor(
    private readonly repo: Repository,
    private readonly codec: ChunkCodec,
  ) {}

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
    this.pack().add(id, stored, rawLength, compression);
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

  /** Removes every pack this writer made: for a checkpoint that will not be committed. */
  abandon(): void {
    this.current?.abandon();
    this.current = undefined;
    for (const p of this.finished.splice(0)) p.abandon();
  }

  finish(): PackWriter[] {
    if (this.current) {
      this.current.finish();
      this.finished.push(this.current);
      this.current = undefined;
    }
    return this.finished;
  }

  private pack(): PackWriter {
    if (this.current?.full) {
      this.current.finish();
      this.finished.push(this.current);
      this.current = undefined;
    }
    this.current ??= new PackWriter(this.repo.dir);
    return this.current;
  }
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

