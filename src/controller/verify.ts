// `crinc verify`: the index and the packs agree (every pack the index names exists with
// its size, header and trailer; every chunk lies inside its pack; every manifest's
// chunks are indexed), and with readData every indexed chunk is read, decompressed and
// checked against its id on the codec pool. Damage is reported per checkpoint.
import type { ChunkBatch, ChunkCompression } from '../codec/chunk-batch.js';
import { CorruptChunkError } from '../codec/errors.js';
import {
  BLOB_HEADER_BYTES,
  CHUNK_ID_BYTES,
  Compression,
  PACK_HEADER_BYTES,
  PACK_TRAILER_BYTES,
} from '../store/format.js';
import { IdSet } from '../store/id-set.js';
import { packFrameProblem } from '../store/pack-table.js';
import { type ChunkTable, listPacks, loadChunkTable, maxCheckpointId, type PackRow, walkManifests } from '../store/inventory.js';
import { PackMissingError } from '../store/errors.js';
import { idHex, isZeroId, type Repository } from '../store/repository.js';
import type { Codecs } from './codecs.js';

/** Neighbouring blobs are read together up to this many bytes. */
const VERIFY_SPAN_BYTES = 4 * 1024 * 1024;
/** Per damaged checkpoint, at most this many chunk ids are named. */
const MAX_NAMED_CHUNKS = 5;
/** A scrub (crinc daemon --scrub-every) reads at most about this many bytes of packs per run. */
export const SCRUB_SLICE_BYTES = 1024 * 1024 * 1024;
/** The meta row where the scrub remembers the pack id it goes on from. */
const SCRUB_CURSOR_KEY = 'scrub_cursor';

export interface VerifyOptions {
  readData: boolean;
  /** Bytes of pack data read and checked so far (readData only). */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export interface DamagedCheckpoint {
  id: number;
  job: string;
  kind: string;
  takenAt: number;
  problems: string[];
}

export interface VerifyReport {
  ok: boolean;
  readData: boolean;
  checkpoints: number;
  packs: number;
  chunks: number;
  bytesRead: number;
  /** Packs the index names that are missing or malformed. */
  packProblems: { pack: string; problem: string }[];
  /** Indexed chunks whose bytes are bad (readData), referenced or not. */
  badChunks: { chunk: string; pack: string; problem: string }[];
  damaged: DamagedCheckpoint[];
}

/**
 * Runs fn with the store lock shared (checkpoints may commit meanwhile, GC waits) on the
 * checkpoints and chunk table as of now. Checkpoints committed after the chunk table was
 * read are not checked (their chunks might be missing from it).
 */
async function withSnapshot<T>(repo: Repository, fn: (upTo: number, table: ChunkTable) => Promise<T>): Promise<T> {
  const lock = await repo.lockShared('verify');
  try {
    const upTo = maxCheckpointId(repo);
    return await fn(upTo, loadChunkTable(repo));
  } finally {
    lock.release();
  }
}

export async function verifyStore(repo: Repository, codecs: Codecs, options: VerifyOptions): Promise<VerifyReport> {
  return withSnapshot(repo, async (upTo, table) => {
    const packs = listPacks(repo);
    const report: VerifyReport = {
      ok: true, readData: options.readData, checkpoints: 0, packs: packs.length, chunks: table.ids.size,
      bytesRead: 0, packProblems: [], badChunks: [], damaged: [],
    };
    const byPack = chunksByPack(table);
    const badPacks = new Map<number, string>();
    for (const p of packs) {
      const problem = await checkPack(repo, p, table, byPack.get(p.id) ?? []);
      if (problem) {
        badPacks.set(p.id, problem);
        report.packProblems.push({ pack: p.name, problem });
      }
    }
    const badChunks = new Map<number, string>(); // chunk table index → problem
    if (options.readData) {
      const total = packs.filter((p) => !badPacks.has(p.id)).reduce((n, p) => n + p.bytes, 0);
      for (const p of packs) {
        if (badPacks.has(p.id)) continue;
        await readPackData(repo, codecs, p, table, byPack.get(p.id) ?? [], badChunks);
        report.bytesRead += p.bytes;
        options.onProgress?.(report.bytesRead, total);
      }
      const packName = new Map(packs.map((p) => [p.id, p.name]));
      for (const [i, problem] of badChunks) {
        report.badChunks.push({ chunk: idHex(table.ids.idAt(i)), pack: packName.get(table.pack[i]!)!, problem });
        // Referenced or not: a new checkpoint must not deduplicate against it.
        repo.quarantineChunk(table.ids.idAt(i).slice(), problem);
      }
    }
    await checkManifests(repo, codecs, table, upTo, badPacks, badChunks, report);
    report.ok = report.packProblems.length === 0 && report.badChunks.length === 0 && report.damaged.length === 0;
    return report;
  });
}

export interface ScrubReport {
  packs: number;
  bytesRead: number;
  /** Chunks found damaged or missing (now quarantined). */
  badChunks: number;
  /** Checkpoints marked damaged (only looked for when something was found). */
  damaged: DamagedCheckpoint[];
  /** Whether this slice reached the last pack (the next one starts from the first). */
  wrapped: boolean;
}

/**
 * One bounded slice of a scrub: the packs from where the last slice stopped are checked
 * as verify --read-data does, up to about SCRUB_SLICE_BYTES; damaged or missing chunks
 * are quarantined, and when there were any, every checkpoint's manifests are checked so
 * that the damaged ones are marked. Over runs the scrub goes round the whole store.
 */
export async function scrubSlice(repo: Repository, codecs: Codecs, maxBytes = SCRUB_SLICE_BYTES): Promise<ScrubReport> {
  return withSnapshot(repo, async (upTo, table) => {
    const byPack = chunksByPack(table);
    const from = Number(repo.db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get(SCRUB_CURSOR_KEY) ?? 0);
    const packs = listPacks(repo).filter((p) => p.id >= from);
    const report: ScrubReport = { packs: 0, bytesRead: 0, badChunks: 0, damaged: [], wrapped: true };
    const badPacks = new Map<number, string>();
    const badChunks = new Map<number, string>();
    let next = 0;
    for (const p of packs) {
      if (report.bytesRead >= maxBytes) {
        next = p.id;
        report.wrapped = false;
        break;
      }
      const problem = await checkPack(repo, p, table, byPack.get(p.id) ?? []);
      if (problem) badPacks.set(p.id, problem);
      else await readPackData(repo, codecs, p, table, byPack.get(p.id) ?? [], badChunks);
      report.packs++;
      report.bytesRead += p.bytes;
    }
    repo.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run(SCRUB_CURSOR_KEY, String(next));
    for (const [i, problem] of badChunks) repo.quarantineChunk(table.ids.idAt(i).slice(), problem);
    for (const [packId, problem] of badPacks) {
      for (const i of byPack.get(packId) ?? []) repo.quarantineChunk(table.ids.idAt(i).slice(), `its pack is damaged (${problem})`);
    }
    report.badChunks = badChunks.size + [...badPacks.keys()].reduce((n, id) => n + (byPack.get(id)?.length ?? 0), 0);
    if (report.badChunks > 0) {
      const found: VerifyReport = { ok: false, readData: true, checkpoints: 0, packs: 0, chunks: 0, bytesRead: 0, packProblems: [], badChunks: [], damaged: [] };
      await checkManifests(repo, codecs, table, upTo, badPacks, badChunks, found);
      report.damaged = found.damaged;
    }
    return report;
  });
}

function chunksByPack(table: ChunkTable): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (let i = 0; i < table.ids.size; i++) {
    let list = out.get(table.pack[i]!);
    if (!list) out.set(table.pack[i]!, (list = []));
    list.push(i);
  }
  for (const list of out.values()) list.sort((a, b) => table.offset[a]! - table.offset[b]!);
  return out;
}

/**
 * The pack against its row and its chunks' rows: exists, size, header, trailer, bounds.
 * Read through the backend (a file, or ranged GETs of an S3 object).
 */
async function checkPack(repo: Repository, pack: PackRow, table: ChunkTable, chunks: number[]): Promise<string | undefined> {
  const size = pack.bytes;
  if (size < PACK_HEADER_BYTES + PACK_TRAILER_BYTES) return 'the index gives it fewer bytes than a pack has';
  const header = Buffer.alloc(PACK_HEADER_BYTES);
  const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
  const beyond = Buffer.alloc(1);
  try {
    await repo.readPackInto(pack.name, 0, header);
    if ((await repo.readPackInto(pack.name, size - PACK_TRAILER_BYTES, trailer)) < PACK_TRAILER_BYTES) return `the pack is shorter than the ${size} bytes the index says`;
    if ((await repo.readPackInto(pack.name, size, beyond)) > 0) return `the pack is longer than the ${size} bytes the index says`;
  } catch (e) {
    if (e instanceof PackMissingError) return 'the pack file is missing';
    throw e;
  }
  const frame = packFrameProblem(header, trailer);
  if (frame) return frame;
  const blobs = trailer.readUInt32LE(0);
  if (blobs < chunks.length) return `the trailer counts ${blobs} blobs, the index places ${chunks.length} chunks in it`;
  for (const i of chunks) {
    const start = table.offset[i]! - BLOB_HEADER_BYTES;
    if (start < PACK_HEADER_BYTES || table.offset[i]! + table.storedLength[i]! > size - PACK_TRAILER_BYTES) {
      return `chunk ${idHex(table.ids.idAt(i))} lies outside the pack's blobs (offset ${table.offset[i]})`;
    }
  }
  return undefined;
}

/** Reads every indexed blob of a pack; checks its header, then its bytes against its id on the pool. */
async function readPackData(repo: Repository, codecs: Codecs, pack: PackRow, table: ChunkTable, chunks: number[], bad: Map<number, string>): Promise<void> {
  const pool = codecs.pool;
  const inFlight: Decoding[] = [];
  const settle = async (s: Decoding) => {
    try {
      pool.release(await s.decoded);
    } catch (e) {
      pool.releaseFailed(s.batch);
      if (!(e instanceof CorruptChunkError)) throw e;
      // The batch names only its first bad chunk: check each of its chunks on its own.
      for (const i of s.chunks) {
        const problem = await checkChunkAlone(repo, codecs, pack.name, table, i);
        if (problem) bad.set(i, problem);
      }
    }
  };
  let k = 0;
  try {
    while (k < chunks.length) {
      const batch = await pool.acquire();
      const taken: number[] = [];
      // A chunk needs room for its stored bytes and, once decoded, its raw bytes: freeBytes bounds both.
      const room = (i: number) => Math.max(table.storedLength[i]!, table.rawLength[i]!);
      while (k < chunks.length && batch.freeChunks > 0 && batch.freeBytes >= room(chunks[k]!)) {
        // One span: blobs from chunks[k] on, while they fit the batch and the span.
        const first = table.offset[chunks[k]!]! - BLOB_HEADER_BYTES;
        let end = k;
        let storedBytes = 0;
        let rawBytes = 0;
        let chunkRoom = batch.freeChunks;
        while (
          end < chunks.length && chunkRoom > 0 &&
          storedBytes + table.storedLength[chunks[end]!]! <= batch.freeBytes && rawBytes + table.rawLength[chunks[end]!]! <= batch.freeBytes &&
          table.offset[chunks[end]!]! + table.storedLength[chunks[end]!]! - first <= VERIFY_SPAN_BYTES
        ) {
          storedBytes += table.storedLength[chunks[end]!]!;
          rawBytes += table.rawLength[chunks[end]!]!;
          chunkRoom--;
          end++;
        }
        if (end === k) end = k + 1; // a single blob larger than the span is read alone
        const last = chunks[end - 1]!;
        const span = new Uint8Array(table.offset[last]! + table.storedLength[last]! - first);
        const got = await repo.readPackInto(pack.name, first, span);
        for (; k < end; k++) {
          const i = chunks[k]!;
          const at = table.offset[i]! - first;
          const problem = got < at + table.storedLength[i]! ? 'the pack ends before it' : blobHeaderProblem(span.subarray(at - BLOB_HEADER_BYTES, at), table, i);
          if (problem) {
            bad.set(i, problem);
            continue;
          }
          batch.addStoredCopy(table.ids.idAt(i), span.subarray(at, at + table.storedLength[i]!), table.rawLength[i]!, table.compression[i]! as ChunkCompression);
          taken.push(i);
        }
      }
      if (taken.length === 0) {
        pool.release(batch);
        continue;
      }
      inFlight.push({ batch, decoded: pool.decodeAndVerify(batch), chunks: taken });
      while (inFlight.length >= pool.batchCount - 1) await settle(inFlight.shift()!);
    }
    while (inFlight.length > 0) await settle(inFlight.shift()!);
  } finally {
    for (const s of inFlight.splice(0)) await s.decoded.then((b) => pool.release(b), () => pool.releaseFailed(s.batch));
  }
}

/** A batch of a pack's chunks on the pool, and which of the table's chunks it holds. */
interface Decoding {
  batch: ChunkBatch;
  decoded: Promise<ChunkBatch>;
  chunks: number[];
}

function blobHeaderProblem(header: Uint8Array, table: ChunkTable, i: number): string | undefined {
  const h = Buffer.from(header.buffer, header.byteOffset, header.byteLength);
  if (Buffer.compare(h.subarray(0, CHUNK_ID_BYTES), table.ids.idAt(i)) !== 0) return 'the blob header names another chunk';
  if (h.readUInt32LE(16) !== table.rawLength[i] || h.readUInt32LE(20) !== table.storedLength[i] || h[24] !== table.compression[i]) {
    return 'the blob header disagrees with the index (lengths or compression)';
  }
  return undefined;
}

/** One chunk, on this thread: for naming every bad chunk of a batch that failed. */
async function checkChunkAlone(repo: Repository, codecs: Codecs, pack: string, table: ChunkTable, i: number): Promise<string | undefined> {
  const stored = new Uint8Array(table.storedLength[i]!);
  if ((await repo.readPackInto(pack, table.offset[i]!, stored)) !== stored.length) return 'the pack ends before it';
  let raw: Uint8Array = stored;
  if (table.compression[i] === Compression.Lz4) {
    try {
      raw = codecs.chunks.decompress(stored, table.rawLength[i]!);
    } catch (e) {
      return `does not decompress: ${(e as Error).message}`;
    }
  }
  if (raw.length !== table.rawLength[i]) return `holds ${raw.length} bytes, the index says ${table.rawLength[i]}`;
  const actual = codecs.chunks.chunkId(raw);
  return Buffer.compare(actual, table.ids.idAt(i)) === 0 ? undefined : `its content hashes to ${idHex(actual)}`;
}

/** Every manifest of every checkpoint up to upTo: its chunks indexed, in sound packs, not bad. */
async function checkManifests(
  repo: Repository, codecs: Codecs, table: ChunkTable, upTo: number,
  badPacks: Map<number, string>, badChunks: Map<number, string>, report: VerifyReport,
): Promise<void> {
  const problems = new Map<number, string[]>();
  const note = (checkpoint: number, problem: string) => {
    let list = problems.get(checkpoint);
    if (!list) problems.set(checkpoint, (list = []));
    if (list.length < MAX_NAMED_CHUNKS * 3) list.push(problem);
  };
  const named = new Map<number, IdSet>(); // per checkpoint, chunks already reported
  const checkId = (checkpoint: number, path: string, ids: Uint8Array, o: number) => {
    const k = table.ids.indexOf(ids, o);
    let problem: string | undefined;
    if (k < 0) problem = 'is not in the index';
    else if (badPacks.has(table.pack[k]!)) problem = `is in a damaged pack (${badPacks.get(table.pack[k]!)})`;
    else if (badChunks.has(k)) problem = `is damaged (${badChunks.get(k)})`;
    else if (repo.isQuarantined(ids, o)) problem = 'is quarantined (found damaged or missing earlier)';
    if (!problem) return;
    let seen = named.get(checkpoint);
    if (!seen) named.set(checkpoint, (seen = new IdSet()));
    if (!seen.add(ids, o)) return;
    const id = ids.slice(o, o + CHUNK_ID_BYTES);
    note(checkpoint, `chunk ${idHex(id)} of ${path} ${problem}`);
    // Never built on again; the checkpoint is marked damaged until a new copy heals it.
    repo.quarantineChunk(id, problem, [checkpoint]);
  };
  const checked = repo.listCheckpoints().filter((c) => c.id <= upTo).map((c) => c.id);
  report.checkpoints = checked.length;
  // What this run finds replaces what earlier runs recorded (healed chunks, forgotten checkpoints).
  repo.clearDamage(checked);
  await walkManifests(repo, codecs.chunks, { after: 0, upTo }, (f) => {
    if (f.parts) for (let o = 0; o < f.parts.length; o += CHUNK_ID_BYTES) checkId(f.checkpoint, `${f.path} (manifest part)`, f.parts, o);
    if (f.error) {
      note(f.checkpoint, `the manifest of ${f.path} cannot be read: ${f.error.message}`);
      repo.markDamaged(f.checkpoint, null, `the manifest of ${f.path} cannot be read`);
      return;
    }
    const ids = f.ids!;
    const blocks = ids.length / CHUNK_ID_BYTES;
    if (!Number.isInteger(blocks) || blocks !== Math.ceil(f.size / f.blockBytes)) {
      note(f.checkpoint, `the manifest of ${f.path} lists ${blocks} blocks for ${f.size} bytes`);
      repo.markDamaged(f.checkpoint, null, `the manifest of ${f.path} lists ${blocks} blocks for ${f.size} bytes`);
      return;
    }
    for (let b = 0; b < blocks; b++) if (!isZeroId(ids, b)) checkId(f.checkpoint, f.path, ids, b * CHUNK_ID_BYTES);
  });
  for (const [id, list] of problems) {
    const cp = repo.getCheckpoint(id);
    report.damaged.push({ id, job: cp.job, kind: cp.kind, takenAt: cp.takenAt, problems: list });
  }
}
