// The chunk index (docs/FORMAT.md, "The chunk index"): where each chunk id is stored, as
// a stack of immutable sorted runs in <store>/chunk-index/ that SQLite lists (table
// index_runs, newest first wins). A pack's run is written when the pack is finished and
// listed by the commit that indexes the pack, so a commit costs one row per pack, not
// one per chunk; runs are merged afterwards (compact), a newest suffix at a time, so a
// lookup reads a handful of runs whatever the store's size. An entry names a pack and
// the chunk's ordinal in that pack's chunk table (.idx), which gives its offset and
// lengths; an entry whose pack the index no longer lists is dead (GC deleted it).
import type Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { lockAsync, tryLockExclusive } from '../sys/libc.js';
import { writeFileDurable } from './durable.js';
import { PackMissingError, StoreError } from './errors.js';
import { CHUNK_ID_BYTES, copyId, LOCKS_DIR, PACK_INDEX_ENTRY_BYTES, PACK_INDEX_HEADER_BYTES } from './format.js';
import { IdSet } from './id-set.js';
import {
  compareIds,
  entryOrdinal,
  entryPack,
  idPrefix,
  IndexRunDamagedError,
  MAX_ORDINAL,
  newRunSpan,
  RUN_BLOCK_ENTRIES,
  RUN_ENTRY_BYTES,
  RUN_SUFFIX,
  RunCursor,
  RunReader,
  RunWriter,
  sortedOrder,
  sortIds,
  WordScratch,
} from './index-run.js';
import { encodePackIndex } from './objects.js';
import { type PackedChunks, packTablePath } from './pack.js';
import { readPackTable } from './pack-table.js';

export const CHUNK_INDEX_DIR = 'chunk-index';
export const COMPACT_LOCK_FILE = 'chunk-index.lock';
/** A newest suffix of runs is merged once the run below it holds at most this many times its entries. */
const RUN_GROWTH = 4;
/** Chunk tables (.idx) kept in memory for locating chunks, in bytes. */
const PACK_TABLE_CACHE_BYTES = 64 * 1024 * 1024;
/**
 * Locating: a run is walked in order (read in 1 MiB spans) when the ids wanted number at
 * least this share of its blocks, else each is looked up alone (one block read each).
 */
const WALK_SHARE = 0.1;
/** Entries a walk steps over one by one before it lets the cursor jump (by the run's fences). */
const WALK_STEPS_BEFORE_SEEK = 32;
/** A writer's chunk index entries are written in runs of at most this many (a commit sorts at most these). */
const SEGMENT_ENTRIES = 32 * 1024;
/** Ids known to be placed, kept to answer has() without a read: at most this many (~24 bytes each). */
const KNOWN_CACHE_MAX_IDS = 1024 * 1024;
/** Opening runs retries this often when a concurrent merge removed one between the listing and the open. */
const OPEN_ATTEMPTS = 8;
const MERGED_RUN = /^m-[0-9a-f]{16}\.run(\.partial)?$/;

interface OpenRun {
  id: number;
  name: string;
  reader: RunReader;
  /** Per pack of the run's list: whether the index still lists it. */
  alive: Uint8Array;
}

export interface ChunkPlace {
  pack: string;
  ordinal: number;
}

/** Places and locations of distinct ids: packIndex[k] indexes packs, -1 when ids[k] has none. */
export interface PlacedChunks {
  packs: string[];
  packIndex: Int32Array;
  /** u32, as in the pack's chunk table. */
  offset: Uint32Array;
  storedLength: Uint32Array;
  rawLength: Uint32Array;
  compression: Uint8Array;
}

export interface ChunkLocation {
  offset: number;
  storedLength: number;
  rawLength: number;
  compression: number;
}

export class ChunkIndex {
  private runs: OpenRun[] = []; // newest first
  private signature = '';
  private readonly tables = new Map<string, Buffer>();
  private tableBytes = 0;
  /** The table used last: the newest in `tables`. */
  private lastTable: string | undefined;
  /** Ids has() found, or that remember() was told of; emptied when the listing changes or it is full. */
  private known = new IdSet();
  /** findMany's walks read spans into this one buffer (it runs to the end synchronously). */
  private readonly walkSpan = newRunSpan();
  /** findMany's sort, its lists of ids not yet found and their tails, kept between calls (WordScratch). */
  private readonly sortScratch = new WordScratch();
  private readonly leftScratch = new WordScratch();
  private readonly tailScratch = new WordScratch();
  private readonly ordinalScratch = new WordScratch();
  /** writeRun's sort and write buffer, kept between runs (a checkpoint writes one per SEGMENT_ENTRIES new chunks). */
  private readonly writeSortScratch = new WordScratch();
  private writeSpan: Buffer | undefined;
  readonly runsDir: string;

  constructor(
    private readonly storeDir: string,
    private readonly db: () => Database.Database,
    private readonly localTables: boolean,
  ) {
    this.runsDir = join(storeDir, CHUNK_INDEX_DIR);
  }

  close(): void {
    for (const r of this.runs) r.reader.close();
    this.runs = [];
    this.signature = '';
    this.known = new IdSet();
    this.tables.clear();
    this.tableBytes = 0;
    this.lastTable = undefined;
  }

  /** Opens the runs the index lists now, and which packs it lists (cheap when nothing changed). */
  refresh(): void {
    for (let attempt = 1; ; attempt++) {
      const db = this.db();
      // Every run by id and name: a GC's merge of a single run keeps its id and count but
      // not its name (and leaves out the dead ids). Packs by count and newest id: a pack is
      // only added with a run of its own.
      const sig = db
        .prepare(`SELECT (SELECT coalesce(group_concat(id || ' ' || name, ','), '') FROM index_runs) || '/' || (SELECT coalesce(max(id), 0) || ':' || count(*) FROM packs)`)
        .pluck()
        .get() as string;
      if (sig === this.signature) return;
      this.known = new IdSet();
      try {
        this.open(db);
        this.signature = sig;
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= OPEN_ATTEMPTS) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new IndexRunDamagedError((e as NodeJS.ErrnoException).path ?? this.runsDir, 'missing');
          throw e;
        }
      }
    }
  }

  private open(db: Database.Database): void {
    const rows = db.prepare('SELECT id, name FROM index_runs ORDER BY id DESC').all() as { id: number; name: string }[];
    const packs = new Set(db.prepare('SELECT name FROM packs').pluck().all() as string[]);
    const byName = new Map(this.runs.map((r) => [r.name, r]));
    const next: OpenRun[] = [];
    try {
      for (const { id, name } of rows) {
        const reader = byName.get(name)?.reader ?? RunReader.open(join(this.runsDir, name));
        byName.delete(name);
        const alive = new Uint8Array(reader.packNames.length);
        reader.packNames.forEach((p, i) => {
          alive[i] = packs.has(p) ? 1 : 0;
        });
        next.push({ id, name, reader, alive });
      }
    } catch (e) {
      for (const r of next) if (!this.runs.some((o) => o.reader === r.reader)) r.reader.close();
      throw e;
    }
    for (const r of byName.values()) r.reader.close();
    this.runs = next;
    // Packs GC removed may come back under no name; tables of packs no longer listed go.
    for (const name of [...this.tables.keys()]) if (!packs.has(name)) this.dropTable(name);
  }

  /** Entries in all runs (duplicates and dead ones included until a merge drops them). */
  entryCount(): number {
    return this.runs.reduce((n, r) => n + r.reader.entries, 0);
  }

  /** Runs, and their filters' and fences' bytes in memory. */
  shape(): { runs: number; entries: number; memoryBytes: number } {
    return { runs: this.runs.length, entries: this.entryCount(), memoryBytes: this.runs.reduce((n, r) => n + r.reader.memoryBytes, 0) };
  }

  /** Where the chunk is: the newest entry whose pack is listed and whose table confirms the id. */
  find(id: Uint8Array, o = 0): ChunkPlace | undefined {
    for (const run of this.runs) {
      if (run.reader.find(id, o) < 0) continue;
      if (run.alive[run.reader.lastPack] !== 1) continue;
      const place = { pack: run.reader.packNames[run.reader.lastPack]!, ordinal: run.reader.lastOrdinal };
      this.confirm(place, id, o);
      return place;
    }
    return undefined;
  }

  has(id: Uint8Array, o = 0): boolean {
    if (this.known.has(id, o)) return true;
    if (this.find(id, o) === undefined) return false;
    this.remember(id, o);
    return true;
  }

  /** Notes an id the index places (a previous checkpoint's, say), until the listing changes. */
  remember(id: Uint8Array, o = 0): void {
    if (this.known.size >= KNOWN_CACHE_MAX_IDS) this.known = new IdSet();
    this.known.add(id, o);
  }

  /**
   * Places of `count` ids (repeats allowed); packIndex[k] indexes `packs`, -1 when the
   * index has no place for ids[k]. Runs where many ids are wanted are walked in id order.
   * ordinal[k] is set where packIndex[k] is not -1 (and left as it was elsewhere).
   */
  findMany(ids: Uint8Array, count: number, ordinal: Int32Array = new Int32Array(count)): { packs: string[]; packIndex: Int32Array; ordinal: Int32Array } {
    const packIndex = new Int32Array(count).fill(-1);
    const packs: string[] = [];
    const packNumbers = new Map<string, number>();
    const sorted = sortIds(ids, count, CHUNK_ID_BYTES, this.sortScratch);
    let wanted = sorted.order;
    // Two pairs of lists (ids left, their prefixes), one per run in turn: a run's left
    // ones are the next run's wanted.
    const lists = this.leftScratch.take(count, 4);
    let turn = 0;
    // wantedPrefixes[j] is idPrefix of wanted[j]: most comparisons end at these four bytes.
    let wantedPrefixes = sorted.prefixes;
    let idWords: Uint32Array | undefined;
    for (const run of this.runs) {
      if (wanted.length === 0) break;
      /** The run's pack numbers in `packs`, -1 until first placed. */
      const numberOf = new Int32Array(run.reader.packNames.length).fill(-1);
      const place = (k: number, pack: number, ord: number): void => {
        if (numberOf[pack]! < 0) {
          const name = run.reader.packNames[pack]!;
          let n = packNumbers.get(name);
          if (n === undefined) packNumbers.set(name, (n = packs.push(name) - 1));
          numberOf[pack] = n;
        }
        packIndex[k] = numberOf[pack]!;
        ordinal[k] = ord;
      };
      const left = lists[2 * turn]!;
      const leftPrefixes = lists[2 * turn + 1]!;
      turn ^= 1;
      let leftCount = 0;
      const blocks = Math.ceil(run.reader.entries / RUN_BLOCK_ENTRIES);
      if (wanted.length >= blocks * WALK_SHARE) {
        idWords ??= wordsOf(ids);
        const tailWords = this.tailScratch.take(wanted.length * 3, 1)[0]!;
        const tails = new Int32Array(tailWords.buffer, tailWords.byteOffset, tailWords.length);
        leftCount = walkRun(run, this.walkSpan, ids, idWords, wanted, wantedPrefixes, tails, left, leftPrefixes, place);
      } else {
        for (let x = 0; x < wanted.length; x++) {
          const k = wanted[x]!;
          if (run.reader.find(ids, k * CHUNK_ID_BYTES) >= 0 && run.alive[run.reader.lastPack] === 1) {
            place(k, run.reader.lastPack, run.reader.lastOrdinal);
          } else {
            left[leftCount] = k;
            leftPrefixes[leftCount++] = wantedPrefixes[x]!;
          }
        }
      }
      wanted = left.subarray(0, leftCount);
      wantedPrefixes = leftPrefixes.subarray(0, leftCount);
    }
    return { packs, packIndex, ordinal };
  }

  /** The chunk's offset, lengths and compression, from its pack's chunk table. */
  location(place: ChunkPlace, id: Uint8Array, o = 0): ChunkLocation {
    const table = this.table(place.pack);
    const at = this.entryAt(table, place.pack, place.ordinal, id, o);
    return { offset: table.readUInt32LE(at + 16), storedLength: table.readUInt32LE(at + 20), rawLength: table.readUInt32LE(at + 24), compression: table[at + 28]! };
  }

  /** findMany, with each found chunk's offset, lengths and compression from its pack's chunk table. */
  locateMany(ids: Uint8Array, count: number): PlacedChunks {
    // The ordinals are needed only here: into kept memory (fresh memory faults per 4 KiB).
    const ordinalWords = this.ordinalScratch.take(count, 1)[0]!;
    const found = this.findMany(ids, count, new Int32Array(ordinalWords.buffer, ordinalWords.byteOffset, count));
    const out: PlacedChunks = {
      packs: found.packs,
      packIndex: found.packIndex,
      offset: new Uint32Array(count),
      storedLength: new Uint32Array(count),
      rawLength: new Uint32Array(count),
      compression: new Uint8Array(count),
    };
    const tables = found.packs.map((p) => this.table(p));
    // Ids and the tables' fields through aligned u32 views (an .idx entry is 32 bytes from
    // byte 24): the id check is four word compares.
    const words = tables.map(wordsOf);
    const idWords = wordsOf(ids);
    for (let k = 0; k < count; k++) {
      const p = found.packIndex[k]!;
      if (p < 0) continue;
      const table = tables[p]!;
      const w = words[p]!;
      const at = PACK_INDEX_HEADER_BYTES + found.ordinal[k]! * PACK_INDEX_ENTRY_BYTES;
      const a = at >>> 2;
      const i = (k * CHUNK_ID_BYTES) >>> 2;
      const same = at + PACK_INDEX_ENTRY_BYTES <= table.length && w[a] === idWords[i] && w[a + 1] === idWords[i + 1] && w[a + 2] === idWords[i + 2] && w[a + 3] === idWords[i + 3];
      // Not the chunk's entry: the run is damaged (entryAt says how).
      if (!same) this.entryAt(table, found.packs[p]!, found.ordinal[k]!, ids, k * CHUNK_ID_BYTES);
      out.offset[k] = w[a + 4]!;
      out.storedLength[k] = w[a + 5]!;
      out.rawLength[k] = w[a + 6]!;
      out.compression[k] = table[at + 28]!;
    }
    return out;
  }

  /** The chunk table of a pack (.idx), cached. */
  table(pack: string): Buffer {
    let t = this.tables.get(pack);
    if (t) {
      // Most recently used last: the oldest go first when the cache is full. Lookups come
      // in runs on one pack: the last one used is moved no further.
      if (pack !== this.lastTable) {
        this.tables.delete(pack);
        this.tables.set(pack, t);
        this.lastTable = pack;
      }
      return t;
    }
    t = this.readTable(pack);
    this.tables.set(pack, t);
    this.lastTable = pack;
    this.tableBytes += t.length;
    for (const [name] of this.tables) {
      if (this.tableBytes <= PACK_TABLE_CACHE_BYTES || name === pack) break;
      this.dropTable(name);
    }
    return t;
  }

  private dropTable(name: string): void {
    const t = this.tables.get(name);
    if (!t) return;
    this.tableBytes -= t.length;
    this.tables.delete(name);
    if (name === this.lastTable) this.lastTable = undefined;
  }

  private readTable(pack: string): Buffer {
    const path = packTablePath(this.storeDir, pack);
    try {
      return readFileSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !this.localTables) throw e;
    }
    // A pack of a store older than format 4 has no .idx: its blob headers give the same, once.
    const scanned = readPackTable(this.storeDir, pack);
    if (!scanned.ok && scanned.missing) throw new PackMissingError(pack, this.storeDir);
    if (!scanned.ok) throw new StoreError(`pack ${pack}: ${scanned.problem}; run crinc verify`);
    const body = encodePackIndex(scanned.chunks, scanned.bytes);
    writeFileDurable(path, body);
    return body;
  }

  /** The byte offset of a chunk's entry in its pack's table, after checking that it is the chunk's. */
  private entryAt(table: Buffer, pack: string, ordinal: number, id: Uint8Array, o: number): number {
    const at = PACK_INDEX_HEADER_BYTES + ordinal * PACK_INDEX_ENTRY_BYTES;
    if (at + PACK_INDEX_ENTRY_BYTES > table.length || compareIds(table, at, id, o) !== 0) {
      throw new IndexRunDamagedError(this.runsDir, `its entry for chunk ${Buffer.from(id.subarray(o, o + CHUNK_ID_BYTES)).toString('hex')} names chunk ${ordinal} of pack ${pack}, which holds another`);
    }
    return at;
  }

  private confirm(place: ChunkPlace, id: Uint8Array, o: number): void {
    this.entryAt(this.table(place.pack), place.pack, place.ordinal, id, o);
  }

  // ---- writing ----------------------------------------------------------------------

  /** Writes a pack's run (its chunks sorted by id), durable, before any commit lists it. */
  writePackRun(pack: string, chunks: PackedChunks): { name: string; entries: number } {
    if (chunks.count > MAX_ORDINAL + 1) throw new StoreError(`pack ${pack} holds ${chunks.count} chunks, more than a chunk index entry can place`);
    const ordinals = new Uint32Array(chunks.count);
    for (let i = 0; i < chunks.count; i++) ordinals[i] = i;
    return this.writeRun(`${pack}${RUN_SUFFIX}`, [pack], chunks.ids, new Uint32Array(chunks.count), ordinals, chunks.count);
  }

  /**
   * Writes a run of `count` entries (ids[i], packs[packOf[i]], ordinals[i]), sorted here;
   * a repeated id keeps its first entry. Durable before it returns.
   */
  writeRun(name: string, packs: string[], ids: Uint8Array, packOf: Uint32Array, ordinals: Uint32Array, count: number): { name: string; entries: number } {
    mkdirSync(this.runsDir, { recursive: true, mode: 0o700 });
    const order = sortedOrder(ids, count, CHUNK_ID_BYTES, this.writeSortScratch);
    this.writeSpan ??= newRunSpan();
    const writer = new RunWriter(join(this.runsDir, name), packs, count, this.writeSpan);
    try {
      let previous = -1;
      for (const i of order) {
        if (previous >= 0 && compareIds(ids, previous * CHUNK_ID_BYTES, ids, i * CHUNK_ID_BYTES) === 0) continue;
        writer.add(ids, i * CHUNK_ID_BYTES, packOf[i]!, ordinals[i]!);
        previous = i;
      }
      return { name, entries: writer.finish() };
    } catch (e) {
      writer.abandon();
      throw e;
    }
  }

  /** The files in chunk-index/ (none before the first run). */
  private runFiles(): string[] {
    try {
      return readdirSync(this.runsDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  /** Removes the run files a writer wrote for a pack that no commit listed (an abandoned checkpoint, a dead writer's). */
  removeUnlistedRuns(pack: string): void {
    for (const f of this.runFiles()) if (f.startsWith(pack) && (f === `${pack}${RUN_SUFFIX}` || f.startsWith(`${pack}-`))) rmSync(join(this.runsDir, f), { force: true });
  }

  /** Lists runs in the index; call inside the transaction that lists their packs. */
  register(runs: { name: string; entries: number }[]): void {
    const ins = this.db().prepare('INSERT OR IGNORE INTO index_runs (name, entries, created_at) VALUES (?, ?, ?)');
    const now = Date.now();
    for (const r of runs) ins.run(r.name, r.entries, now);
  }

  /**
   * Merges runs: by default the newest suffix whose entries have grown to a share of the
   * run below it (repeated while that holds); with `all`, every run into one. Entries of
   * packs the index no longer lists and older duplicates are dropped. Skipped when
   * another process is merging.
   */
  compact(options: { all?: boolean } = {}): { merged: number; entries: number } {
    const lockFd = openSync(join(this.storeDir, LOCKS_DIR, COMPACT_LOCK_FILE), 'a+', 0o600);
    try {
      if (!tryLockExclusive(lockFd)) return { merged: 0, entries: 0 };
      return this.compactLocked(options);
    } finally {
      closeSync(lockFd);
    }
  }

  /** GC's merge, with lockMerges() held: every run into one that keeps only the ids in `live`. */
  collect(live: IdSet): { merged: number; entries: number } {
    return this.compactLocked({ all: true, live });
  }

  private compactLocked(options: { all?: boolean; live?: IdSet }): { merged: number; entries: number } {
    this.removeOrphanRuns();
    let merged = 0;
    let entries = 0;
    for (;;) {
      this.refresh();
      const chosen = options.all ? (this.runs.length > 1 || (options.live && this.runs.length === 1) ? this.runs.length : 0) : this.suffixToMerge();
      if (chosen === 0) break;
      const inputs = this.runs.slice(0, chosen);
      entries += this.merge(inputs, options.live);
      merged += inputs.length;
      if (options.all) break;
    }
    this.refresh();
    return { merged, entries };
  }

  /** How many newest runs to merge: the longest newest suffix whose total reaches 1/RUN_GROWTH of the run below it. */
  private suffixToMerge(): number {
    let sum = 0;
    let chosen = 0;
    for (let i = 0; i < this.runs.length; i++) {
      sum += this.runs[i]!.reader.entries;
      const below = this.runs[i + 1];
      if (below && below.reader.entries <= RUN_GROWTH * sum) chosen = i + 2;
    }
    return chosen;
  }

  /** Merges runs (newest first, a newest suffix of the stack) into one that takes the newest one's place. */
  private merge(inputs: OpenRun[], live: IdSet | undefined): number {
    const packs: string[] = [];
    const packNumber = new Map<string, number>();
    const remap = inputs.map((run) =>
      Int32Array.from(run.reader.packNames, (name, i) => {
        if (run.alive[i] !== 1) return -1;
        let n = packNumber.get(name);
        if (n === undefined) packNumber.set(name, (n = packs.push(name) - 1));
        return n;
      }),
    );
    const name = `m-${randomBytes(8).toString('hex')}${RUN_SUFFIX}`;
    const writer = new RunWriter(join(this.runsDir, name), packs, inputs.reduce((n, r) => n + r.reader.entries, 0));
    let entries: number;
    try {
      walkNewestAlive(inputs, (k, b, at) => {
        const pack = remap[k]![entryPack(b, at)]!;
        if (!live || live.has(b, at)) writer.add(b, at, pack, entryOrdinal(b, at));
      });
      entries = writer.finish();
    } catch (e) {
      writer.abandon();
      throw e;
    }
    const db = this.db();
    try {
      db.transaction(() => {
        const del = db.prepare('DELETE FROM index_runs WHERE id = ?');
        for (const r of inputs) if (del.run(r.id).changes !== 1) throw new RunsChangedError();
        db.prepare('INSERT INTO index_runs (id, name, entries, created_at) VALUES (?, ?, ?, ?)').run(inputs[0]!.id, name, entries, Date.now());
      })();
    } catch (e) {
      rmSync(join(this.runsDir, name), { force: true });
      if (e instanceof RunsChangedError) return 0;
      throw e;
    }
    for (const r of inputs) rmSync(join(this.runsDir, r.name), { force: true });
    return entries;
  }

  /**
   * Run files no listing names that no writer can still list: merged runs (only merges
   * write them, under the lock) and runs of packs the index lists already (a pack and
   * its writer's runs are listed in one transaction; these are left by a catch-up that
   * indexed the pack anew after its commit was interrupted).
   */
  private removeOrphanRuns(): void {
    const files = this.runFiles();
    const db = this.db();
    const listed = new Set(db.prepare('SELECT name FROM index_runs').pluck().all() as string[]);
    const packs = new Set(db.prepare('SELECT name FROM packs').pluck().all() as string[]);
    for (const f of files) {
      if (listed.has(f)) continue;
      if (MERGED_RUN.test(f) || packs.has(f.slice(0, 32))) rmSync(join(this.runsDir, f), { force: true });
    }
  }

  /**
   * Every chunk the index places, once each (its newest entry in a listed pack), in id
   * order: for GC, verify and repair.
   */
  forEach(visit: (id: Buffer, at: number, place: ChunkPlace) => void): void {
    this.refresh();
    walkNewestAlive(this.runs, (k, b, at) => {
      visit(b, at, { pack: this.runs[k]!.reader.packNames[entryPack(b, at)]!, ordinal: entryOrdinal(b, at) });
    });
  }
}

/**
 * Holds the merge lock until release, after a merge under way ends. GC and repair hold it
 * while they write and list runs: a controller merges right after each checkpoint without
 * the store lock, and its merge would take their runs, not listed yet, for leftovers (or
 * act on an index repair replaces); it is skipped meanwhile instead. GC's own merge
 * (collect) then runs, never skipped: skipped, the dead ids would stay placed.
 */
export async function lockMerges(storeDir: string): Promise<{ release(): void }> {
  const fd = openSync(join(storeDir, LOCKS_DIR, COMPACT_LOCK_FILE), 'a+', 0o600);
  try {
    await lockAsync(fd, 'exclusive');
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  return { release: () => closeSync(fd) };
}

/** The first position from j on whose id (ids[wanted[x]]) is at or above the entry at span[at..]. */
/** The first position from j on whose wanted id is not below the entry at span[at..] (its prefix entryPrefix). */
function gallopTo(ids: Uint8Array, wanted: Uint32Array, prefixes: Uint32Array, j: number, span: Buffer, at: number, entryPrefix: number): number {
  const below = (x: number) => prefixes[x]! < entryPrefix || (prefixes[x] === entryPrefix && compareIds(ids, wanted[x]! * CHUNK_ID_BYTES, span, at) < 0);
  let lo = j;
  let step = 1;
  let hi = j + 1;
  while (hi < wanted.length && below(hi)) {
    lo = hi;
    step *= 2;
    hi = Math.min(wanted.length, lo + step);
  }
  // wanted[lo] is below the entry; the answer lies in (lo, hi].
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (below(mid)) lo = mid;
    else hi = mid;
  }
  return hi;
}

/**
 * Walks runs (newest first) in id order, visiting each id once: its entry in the newest
 * run that places it in a listed pack. visit gets the run's position in `runs` and the
 * entry (valid during the call).
 */
function walkNewestAlive(runs: OpenRun[], visit: (k: number, entry: Buffer, at: number) => void): void {
  const cursors = runs.map((r) => new RunCursor(r.reader));
  const last = new Uint8Array(CHUNK_ID_BYTES);
  let any = false;
  for (;;) {
    // The smallest id among the cursors; on a tie the newest run's entry (lowest k) comes first.
    let best = -1;
    let bestBuf: Buffer | undefined;
    let bestAt = 0;
    for (let k = 0; k < cursors.length; k++) {
      const c = cursors[k]!;
      if (!c.load()) continue;
      if (best < 0 || compareIds(c.span, c.at, bestBuf!, bestAt) < 0) {
        best = k;
        bestBuf = c.span;
        bestAt = c.at;
      }
    }
    if (best < 0) return;
    const b = bestBuf!;
    if (runs[best]!.alive[entryPack(b, bestAt)] === 1 && !(any && compareIds(last, 0, b, bestAt) === 0)) {
      last.set(b.subarray(bestAt, bestAt + CHUNK_ID_BYTES));
      any = true;
      visit(best, b, bestAt);
    }
    cursors[best]!.position++;
  }
}

/**
 * The chunk index entries of one writer's new chunks, cut into runs of at most
 * SEGMENT_ENTRIES as they come: a commit sorts and writes only the last, short one. A
 * segment is named after the first pack it places chunks in (<pack>-<n>.run), so crash
 * recovery finds it from the writer's journal, which names that pack.
 */
export class RunSegments {
  private ids = new Uint8Array(SEGMENT_ENTRIES * CHUNK_ID_BYTES);
  private packOf = new Uint32Array(SEGMENT_ENTRIES);
  private ordinals = new Uint32Array(SEGMENT_ENTRIES);
  private packs: string[] = [];
  private count = 0;
  /** The runs written so far, for the commit to list. */
  readonly runs: { name: string; entries: number }[] = [];

  constructor(private readonly index: ChunkIndex) {}

  add(id: Uint8Array, o: number, pack: string, ordinal: number): void {
    if (ordinal > MAX_ORDINAL) throw new StoreError(`pack ${pack} holds more chunks than a chunk index entry can place`);
    if (this.packs[this.packs.length - 1] !== pack) this.packs.push(pack);
    copyId(id, o, this.ids, this.count * CHUNK_ID_BYTES);
    this.packOf[this.count] = this.packs.length - 1;
    this.ordinals[this.count] = ordinal;
    if (++this.count === SEGMENT_ENTRIES) this.flush();
  }

  /** Writes the entries added since the last run. */
  flush(): void {
    if (this.count === 0) return;
    this.runs.push(this.index.writeRun(`${this.packs[0]}-${this.runs.length}${RUN_SUFFIX}`, this.packs, this.ids, this.packOf, this.ordinals, this.count));
    this.packs = this.packs.slice(-1);
    this.count = 0;
  }

  /** Removes the runs written: the checkpoint will not be committed. */
  abandon(): void {
    for (const r of this.runs.splice(0)) rmSync(join(this.index.runsDir, r.name), { force: true });
    this.count = 0;
  }
}

/**
 * The merge join of one run with the wanted ids (sorted; their prefixes, and their tails
 * filled here in walk order), a tight step through each loaded span and a gallop on
 * whichever side lags further: each id found in a listed pack goes to place(), the others
 * to left and leftPrefixes, for the next run. Returns how many were left. A function of
 * its own: V8 compiles a function anew each time its feedback changes, which took
 * findMany's whole body 50-85 ms here, while the walk ran unoptimized.
 */
function walkRun(
  run: OpenRun,
  walkSpan: Buffer,
  ids: Uint8Array,
  idWords: Uint32Array,
  wanted: Uint32Array,
  wantedPrefixes: Uint32Array,
  tails: Int32Array,
  left: Uint32Array,
  leftPrefixes: Uint32Array,
  place: (k: number, pack: number, ord: number) => void,
): number {
  let leftCount = 0;
  const cursor = new RunCursor(run.reader, 0, walkSpan);
  const n = wanted.length;
  // The wanted ids' last twelve bytes in walk order: read in step with the walk, where
  // reading them by index would miss the cache at every id.
  for (let x = 0; x < n; x++) {
    const w = wanted[x]! * 4;
    tails[x * 3] = idWords[w + 1]! | 0;
    tails[x * 3 + 1] = idWords[w + 2]! | 0;
    tails[x * 3 + 2] = idWords[w + 3]! | 0;
  }
  let j = 0;
  while (j < n && cursor.load()) {
    const span = cursor.span;
    let at = cursor.at;
    const end = at + cursor.loadedAhead * RUN_ENTRY_BYTES;
    let skipped = 0;
    let seek = false;
    while (at < end && j < n) {
      const k = wanted[j]!;
      const prefix = wantedPrefixes[j]!;
      const entryPrefix = idPrefix(span, at);
      let c = entryPrefix - prefix;
      // Equal prefixes: the rest as three words (the id found, nearly always), in byte order only when they differ.
      if (c === 0 && !(i32At(span, at + 4) === tails[j * 3] && i32At(span, at + 8) === tails[j * 3 + 1] && i32At(span, at + 12) === tails[j * 3 + 2])) {
        c = compareIds(span, at, ids, k * CHUNK_ID_BYTES);
      }
      if (c < 0) {
        // An entry not wanted: step over a few, then let the cursor jump.
        at += RUN_ENTRY_BYTES;
        if (++skipped > WALK_STEPS_BEFORE_SEEK) {
          seek = true;
          break;
        }
      } else if (c > 0) {
        const from = j;
        j = gallopTo(ids, wanted, wantedPrefixes, j, span, at, entryPrefix);
        for (let x = from; x < j; x++) {
          left[leftCount] = wanted[x]!;
          leftPrefixes[leftCount++] = wantedPrefixes[x]!;
        }
      } else {
        skipped = 0;
        const pack = entryPack(span, at);
        const ord = entryOrdinal(span, at);
        const alive = run.alive[pack] === 1;
        // Every repeat of the id among the wanted.
        do {
          if (alive) {
            place(wanted[j]!, pack, ord);
          } else {
            left[leftCount] = wanted[j]!;
            leftPrefixes[leftCount++] = prefix;
          }
          j++;
        } while (j < n && wantedPrefixes[j] === prefix && compareIds(ids, wanted[j]! * CHUNK_ID_BYTES, ids, k * CHUNK_ID_BYTES) === 0);
        at += RUN_ENTRY_BYTES;
      }
    }
    if (at < end) cursor.moveToLoaded(at);
    else cursor.position += cursor.loadedAhead; // past the span: load() reads the next
    if (seek && j < n) cursor.seek(ids, wanted[j]! * CHUNK_ID_BYTES);
  }
  for (; j < n; j++) {
    left[leftCount] = wanted[j]!;
    leftPrefixes[leftCount++] = wantedPrefixes[j]!;
  }
  return leftCount;
}

/** A concurrent merge took some of the runs this one read: its result is dropped. */
class RunsChangedError extends Error {}

/**
 * The little-endian word at b[at..] as an int32 (a run entry's words are not aligned):
 * inlined where Buffer.readUInt32LE is a call, and a small integer to V8 where a u32 of
 * 2^31 or more is a heap number (a deoptimization on first sight).
 */
function i32At(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24);
}

/** The bytes as u32 words (a copy when they do not start on a 4-byte boundary). */
function wordsOf(b: Uint8Array): Uint32Array {
  return b.byteOffset % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2) : new Uint32Array(new Uint8Array(b).buffer);
}
