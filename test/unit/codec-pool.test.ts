// CodecPool: batch steps on worker threads give exactly what one thread gives,
// settle in submission order, keep memory bounded, report corrupt chunks per
// call and a failed worker to every pending call. Speed is npm run bench's.
//
// Runs the workers from the TypeScript sources (src/codec/worker-entry.ts);
// needs build/wasm/codec.wasm (npm run build:wasm).
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BatchPhase, ChunkBatch } from '../../src/codec/chunk-batch.js';
import { CodecWorkerError, CorruptChunkError } from '../../src/codec/errors.js';
import { PAGE_SIZE, PageCodec, PageFlag, generateSecret } from '../../src/codec/page-codec.js';
import { CodecPool, POOL_BATCHES_PER_WORKER, POOL_BATCH_CHUNKS } from '../../src/codec/pool.js';
import { samplePages } from '../../src/codec/sample-pages.js';

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

/** Everything a Hashed batch says about its chunks, comparable with toEqual. */
function hashedSummary(batch: ChunkBatch): string[] {
  return Array.from({ length: batch.count }, (_, i) =>
    `${hex(batch.id(i))} ${batch.flag(i)} ${batch.compression(i)} ${hex(batch.stored(i))}`);
}

const secret = generateSecret();
let pool: CodecPool;
let codec: PageCodec;

beforeAll(async () => {
  [pool, codec] = await Promise.all([CodecPool.create(secret), PageCodec.create(secret)]);
});

afterAll(async () => {
  await pool?.close();
});

describe('CodecPool', () => {
  it('has one worker per core and a fixed number of batches', () => {
    expect(pool.workerCount).toBe(availableParallelism());
    expect(pool.batchCount).toBe(pool.workerCount * POOL_BATCHES_PER_WORKER);
  });

  it('gives the same ids, flags and stored bytes as one thread, in submission order', async () => {
    const BATCHES = 12;
    const pages = samplePages(BATCHES * POOL_BATCH_CHUNKS, 11);
    const expected: string[][] = [];
    for (let b = 0; b < BATCHES; b++) {
      const batch = ChunkBatch.create(POOL_BATCH_CHUNKS, POOL_BATCH_CHUNKS * PAGE_SIZE);
      batch.addPages(POOL_BATCH_CHUNKS).set(pages.subarray(b * POOL_BATCH_CHUNKS * PAGE_SIZE, (b + 1) * POOL_BATCH_CHUNKS * PAGE_SIZE));
      codec.hashAndCompress(batch);
      expected.push(hashedSummary(batch));
    }

    const settledOrder: number[] = [];
    const pending: Array<Promise<ChunkBatch>> = [];
    const got: string[][] = [];
    for (let b = 0; b < BATCHES; b++) {
      // All batches out: take the oldest result back before asking for another.
      if (pending.length === pool.batchCount) {
        const done = await pending.shift()!;
        got.push(hashedSummary(done));
        pool.release(done);
      }
      const batch = await pool.acquire();
      batch.addPages(POOL_BATCH_CHUNKS).set(pages.subarray(b * POOL_BATCH_CHUNKS * PAGE_SIZE, (b + 1) * POOL_BATCH_CHUNKS * PAGE_SIZE));
      pending.push(pool.hashAndCompress(batch).then((done) => {
        settledOrder.push(b);
        return done;
      }));
    }
    for (const result of pending) {
      const done = await result;
      got.push(hashedSummary(done));
      pool.release(done);
    }
    expect(got).toEqual(expected);
    expect(settledOrder).toEqual([...Array(BATCHES).keys()]);
  });

  it('decodes and verifies stored chunks, and rejects only the call with a corrupt chunk', async () => {
    const pages = samplePages(POOL_BATCH_CHUNKS, 12);
    const hashed = await pool.acquire();
    hashed.addPages(POOL_BATCH_CHUNKS).set(pages);
    await pool.hashAndCompress(hashed);

    const fill = async (damageChunk?: number): Promise<ChunkBatch> => {
      const batch = await pool.acquire();
      for (let i = 0; i < hashed.count; i++) {
        if (hashed.flag(i) !== PageFlag.Normal) continue;
        const stored = batch.addStored(hashed.id(i), hashed.stored(i).length, PAGE_SIZE, hashed.compression(i));
        stored.set(hashed.stored(i));
        if (batch.count - 1 === damageChunk) stored[stored.length - 1]! ^= 1;
      }
      return batch;
    };
    const [good, bad, alsoGood] = await Promise.all([fill(), fill(3), fill()]);
    const results = await Promise.allSettled([
      pool.decodeAndVerify(good),
      pool.decodeAndVerify(bad),
      pool.decodeAndVerify(alsoGood),
    ]);
    expect(results.map((result) => result.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    const error = (results[1] as PromiseRejectedResult).reason;
    expect(error).toBeInstanceOf(CorruptChunkError);
    expect((error as CorruptChunkError).chunkIndex).toBe(3);
    expect(bad.phase).toBe(BatchPhase.Stored);

    let decoded = 0;
    for (let i = 0; i < hashed.count; i++) {
      if (hashed.flag(i) !== PageFlag.Normal) continue;
      expect(hex(good.raw(decoded)), `page ${i}`).toBe(hex(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)));
      decoded++;
    }
    for (const batch of [hashed, good, alsoGood]) pool.release(batch);
    // The failed batch is back from its worker: releaseFailed gives it to the pool (once;
    // the next test takes every batch, so a lost one would show there).
    expect(bad.isLent).toBe(false);
    pool.releaseFailed(bad);
    pool.releaseFailed(bad);
  });

  it('lends out a bounded number of batches', async () => {
    const all = await Promise.all(Array.from({ length: pool.batchCount }, () => pool.acquire()));
    let extra: ChunkBatch | undefined;
    const waiting = pool.acquire().then((batch) => {
      extra = batch;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(extra).toBeUndefined();
    pool.release(all.pop()!);
    await waiting;
    expect(extra).toBeDefined();
    for (const batch of [...all, extra!]) pool.release(batch);
  });
});

describe('CodecPool failures', () => {
  it('rejects pending and later calls with CodecWorkerError when a worker dies, and after close', async () => {
    const doomed = await CodecPool.create(secret, { workers: 2 });
    const batches = await Promise.all([doomed.acquire(), doomed.acquire(), doomed.acquire()]);
    for (const batch of batches) batch.addPages(POOL_BATCH_CHUNKS).set(samplePages(POOL_BATCH_CHUNKS, 13));
    const pending = batches.map((batch) => doomed.hashAndCompress(batch));
    // Kill a worker from outside, as a crash would.
    const workers = (doomed as unknown as { workers: Worker[] }).workers;
    await workers[0]!.terminate();
    // Awaited one by one, as an ingest would: the calls rejected while an
    // earlier one is awaited must not count as unhandled rejections.
    let rejected = 0;
    for (const result of pending) {
      await result.then(
        () => {},
        (error: unknown) => {
          expect(error).toBeInstanceOf(CodecWorkerError);
          rejected++;
        },
      );
    }
    expect(rejected).toBeGreaterThan(0);
    await expect(doomed.acquire()).rejects.toThrow(CodecWorkerError);
    await doomed.close();

    const closed = await CodecPool.create(secret, { workers: 1 });
    const batch = await closed.acquire();
    batch.addPages(1);
    await closed.close();
    await expect(closed.hashAndCompress(batch)).rejects.toThrow(CodecWorkerError);
  });
});
