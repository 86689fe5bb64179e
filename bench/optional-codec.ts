// The codec's batch calls and worker pool, timed when src/codec has them and skipped
// (with a note) when it does not: everything here is found at run time, nothing is
// imported statically, so the bench builds and runs whatever state src/codec is in.
//
// What it looks for (the API being built in src/codec):
//   - chunk-batch.js: ChunkBatch.create(chunks?, bytes?), batch.addPages(n) → view to fill,
//     clear(), count, dataUsed, flag(i), id(i), stored(i), compression(i), rawLength(i),
//     addStoredCopy(id, stored, rawLength, compression), lend()/giveBack(buffer);
//   - PageCodec: hashAndCompress(batch) (Raw → Hashed: ids, flags, stored forms) and
//     decodeAndVerify(batch) (Stored → Decoded, every chunk checked against its id);
//   - pool.js: a CodecPool class with create(secret) (the same secret as `codec`) (or a no-argument constructor) that
//     lends its own batches (acquire()/release(batch)), the same two steps returning
//     promises of the batch, workerCount, and close().
// If an API differs, the row says what failed: adjust the adapter here.
import { PAGE_SIZE } from '../src/codec/page-codec.js';
import type { Corpus } from './corpus.js';
import { measure, measureAsync, type Rate } from './util.js';

export interface OptionalRow {
  op: string;
  what: string;
  rate?: Rate;
  ratio?: number;
  /** Which target row of the codec table this is a candidate for. */
  target?: 'compress' | 'decompress';
  note?: string;
}

interface Batch {
  readonly chunkCapacity: number;
  readonly dataCapacity: number;
  readonly count: number;
  readonly dataUsed: number;
  clear(): void;
  addPages(pageCount: number): Uint8Array;
  flag(i: number): number;
  id(i: number): Uint8Array;
  stored(i: number): Uint8Array;
  compression(i: number): number;
  rawLength(i: number): number;
  addStoredCopy(id: Uint8Array, stored: Uint8Array, rawLength: number, compression: number): void;
  lend(): ArrayBuffer;
  giveBack(buffer: ArrayBuffer): void;
}

interface BatchClass {
  create(chunkCapacity?: number, dataCapacity?: number): Batch;
}

type Step = 'hashAndCompress' | 'decodeAndVerify';
type SyncCodec = Record<Step, (b: Batch) => void>;

const PAGES_PER_BATCH = 1024;
const CALL_TIMEOUT_MS = 30_000;

async function tryImport(spec: string): Promise<Record<string, unknown> | undefined> {
  try {
    return (await import(spec)) as Record<string, unknown>;
  } catch (e) {
    if ((e as { code?: string }).code === 'ERR_MODULE_NOT_FOUND') return undefined;
    throw e;
  }
}

function hasMethods(o: unknown, names: string[]): boolean {
  return typeof o === 'object' && o !== null && names.every((n) => typeof (o as Record<string, unknown>)[n] === 'function');
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${CALL_TIMEOUT_MS} ms`)), CALL_TIMEOUT_MS);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** The corpus's pages in batch-sized pieces. */
function pieces(data: Uint8Array, pagesPerBatch = PAGES_PER_BATCH): Uint8Array[] {
  const out: Uint8Array[] = [];
  const step = pagesPerBatch * PAGE_SIZE;
  for (let at = 0; at < data.length; at += step) out.push(data.subarray(at, Math.min(data.length, at + step)));
  return out;
}

function fillRaw(batch: Batch, piece: Uint8Array): void {
  batch.clear();
  batch.addPages(piece.length / PAGE_SIZE).set(piece);
}

/** Copies a pristine Stored batch image back into `batch` (as pack reads would fill it). */
function fillStored(batch: Batch, pristine: Uint8Array): void {
  const buffer = batch.lend();
  new Uint8Array(buffer).set(pristine);
  batch.giveBack(buffer);
}

/** Stored batches (as a restore would fill them) from hashing + compressing `data`; their buffers, pristine. */
function storedImages(Chunk: BatchClass, codec: SyncCodec, data: Uint8Array, chunkCapacity?: number, dataCapacity?: number): Uint8Array[] {
  const hashed = Chunk.create(chunkCapacity, dataCapacity);
  const images: Uint8Array[] = [];
  for (const piece of pieces(data, Math.min(hashed.chunkCapacity, Math.floor(hashed.dataCapacity / PAGE_SIZE)))) {
    fillRaw(hashed, piece);
    codec.hashAndCompress(hashed);
    const stored = Chunk.create(chunkCapacity, dataCapacity);
    for (let i = 0; i < hashed.count; i++) {
      if (hashed.flag(i) !== 0) continue; // zero and duplicate chunks store nothing
      stored.addStoredCopy(hashed.id(i), hashed.stored(i), hashed.rawLength(i), hashed.compression(i));
    }
    const buffer = stored.lend();
    images.push(new Uint8Array(buffer).slice());
    stored.giveBack(buffer);
  }
  return images;
}

function rawBytesOf(images: Uint8Array[], Chunk: BatchClass, chunkCapacity?: number, dataCapacity?: number): number {
  // Every stored chunk here is a whole page.
  let chunks = 0;
  const b = Chunk.create(chunkCapacity, dataCapacity);
  for (const img of images) {
    fillStored(b, img);
    chunks += b.count;
  }
  return chunks * PAGE_SIZE;
}

interface Pool {
  readonly workerCount?: number;
  acquire(): Promise<Batch>;
  release(batch: Batch): void;
  hashAndCompress(batch: Batch): Promise<Batch>;
  decodeAndVerify(batch: Batch): Promise<Batch>;
}

async function poolRows(pool: Pool, Chunk: BatchClass, sync: SyncCodec, corpus: Corpus, sample: Uint8Array): Promise<OptionalRow[]> {
  // The pool lends its own batches (acquire/release); find their size.
  const probe = await pool.acquire();
  const { chunkCapacity, dataCapacity } = probe as unknown as { chunkCapacity: number; dataCapacity: number };
  pool.release(probe);
  const pages = Math.min(chunkCapacity, Math.floor(dataCapacity / PAGE_SIZE));
  const images = storedImages(Chunk, sync, sample, chunkCapacity, dataCapacity);
  const decodedBytes = rawBytesOf(images, Chunk, chunkCapacity, dataCapacity);
  const run = async <T>(items: T[], fill: (b: Batch, item: T) => void, step: Step): Promise<void> => {
    const pending: Promise<void>[] = [];
    let failure: unknown;
    for (const item of items) {
      if (failure !== undefined) break;
      const b = await withTimeout(pool.acquire(), 'pool.acquire');
      fill(b, item);
      // Handled at once: a rejection must not go unhandled while the loop waits in acquire().
      pending.push(withTimeout(pool[step](b), `pool.${step}`).then((done) => pool.release(done), (e: unknown) => void (failure ??= e)));
    }
    await Promise.all(pending);
    if (failure !== undefined) throw failure;
  };
  const workers = `${pool.workerCount ?? '?'} workers`;
  return [
    {
      op: 'CodecPool.hashAndCompress',
      what: `hash + zero + LZ4, ${pages}-page batches, ${workers} (all cores), whole corpus`,
      rate: await measureAsync(corpus.data.length, () => run(pieces(corpus.data, pages), fillRaw, 'hashAndCompress')),
    },
    {
      op: 'CodecPool.hashAndCompress',
      what: 'the same, nonzero sample',
      rate: await measureAsync(sample.length, () => run(pieces(sample, pages), fillRaw, 'hashAndCompress')),
      target: 'compress',
    },
    {
      op: 'CodecPool.decodeAndVerify',
      what: `LZ4 decode + id check, ${pages}-chunk batches, ${workers}`,
      rate: await measureAsync(decodedBytes, () => run(images, fillStored, 'decodeAndVerify')),
      target: 'decompress',
    },
  ];
}

async function openPool(mod: Record<string, unknown>, secret: Uint8Array | undefined): Promise<{ pool?: Pool; close?: () => Promise<void>; note?: string }> {
  const Pool = (mod.CodecPool ?? Object.values(mod).find((v) => typeof v === 'function' && /pool/i.test((v as { name: string }).name))) as
    | ({ create?: (secret?: Uint8Array) => unknown; name: string } & (new () => unknown))
    | undefined;
  if (!Pool) return { note: `src/codec/pool.js exports ${Object.keys(mod).join(', ') || 'nothing'}: no pool class found` };
  let pool: unknown;
  try {
    pool = await withTimeout(Promise.resolve(typeof Pool.create === 'function' ? Pool.create(secret) : new Pool()), `${Pool.name}.create`);
  } catch (e) {
    return { note: `src/codec/pool.js: ${Pool.name} could not be started by the bench (${(e as Error).message})` };
  }
  const closer = ['close', 'terminate', 'destroy', 'shutdown', 'dispose'].find((m) => typeof (pool as Record<string, unknown>)[m] === 'function');
  const close = async (): Promise<void> => {
    if (closer) await Promise.resolve(((pool as Record<string, unknown>)[closer] as () => unknown).call(pool)).catch(() => undefined);
  };
  if (!hasMethods(pool, ['acquire', 'release', 'hashAndCompress', 'decodeAndVerify'])) {
    await close();
    return { note: `src/codec/pool.js: ${Pool.name} lacks acquire/release/hashAndCompress/decodeAndVerify; adapt bench/optional-codec.ts` };
  }
  return { pool: pool as Pool, close };
}

/** Rows for the batch calls and the pool, where src/codec has them. */
export async function optionalCodecRows(codec: object, secret: Uint8Array | undefined, corpus: Corpus, sample: Uint8Array): Promise<{ rows: OptionalRow[]; notes: string[] }> {
  const rows: OptionalRow[] = [];
  const notes: string[] = [];
  const batchModule = await tryImport('../src/codec/chunk-batch.js');
  const Chunk = batchModule?.ChunkBatch as BatchClass | undefined;
  if (!Chunk || typeof Chunk.create !== 'function' || !hasMethods(codec, ['hashAndCompress', 'decodeAndVerify'])) {
    notes.push('src/codec: no batch calls yet (ChunkBatch + PageCodec.hashAndCompress/decodeAndVerify): per-chunk rows only');
    return { rows, notes };
  }
  const sync = codec as SyncCodec;
  const batch = Chunk.create();
  const runSync = (data: Uint8Array): { stored: number } => {
    let stored = 0;
    for (const piece of pieces(data)) {
      fillRaw(batch, piece);
      sync.hashAndCompress(batch);
      stored += batch.dataUsed;
    }
    return { stored };
  };
  let stored = 0;
  const wholeRate = measure(corpus.data.length, () => (stored = runSync(corpus.data).stored));
  rows.push({
    op: 'PageCodec.hashAndCompress',
    what: `hash + zero + LZ4 in one WASM pass, ${PAGES_PER_BATCH}-page batches, one core, whole corpus`,
    rate: wholeRate,
    ratio: stored / corpus.data.length,
  });
  const sampleRate = measure(sample.length, () => (stored = runSync(sample).stored));
  rows.push({
    op: 'PageCodec.hashAndCompress',
    what: 'the same, nonzero sample (compare with the compressors)',
    rate: sampleRate,
    ratio: stored / sample.length,
    target: 'compress',
  });
  const images = storedImages(Chunk, sync, sample);
  const decodedBytes = rawBytesOf(images, Chunk);
  rows.push({
    op: 'PageCodec.decodeAndVerify',
    what: `LZ4 decode + id check, ${PAGES_PER_BATCH}-chunk batches, one core`,
    rate: measure(decodedBytes, () => {
      for (const img of images) {
        fillStored(batch, img);
        sync.decodeAndVerify(batch);
      }
    }),
    target: 'decompress',
  });

  const poolModule = await tryImport('../src/codec/pool.js');
  if (!poolModule) {
    notes.push('src/codec/pool.ts: not present yet; no pool rows');
    return { rows, notes };
  }
  const { pool, close, note } = await openPool(poolModule, secret);
  if (note) notes.push(note);
  if (pool) {
    try {
      rows.push(...(await poolRows(pool, Chunk, sync, corpus, sample)));
    } catch (e) {
      notes.push(`src/codec/pool.js: the pool failed under the bench: ${(e as Error).message}`);
    } finally {
      await close?.();
    }
  }
  return { rows, notes };
}
