/**
 * A pool of codec workers: batch steps (PageCodec.hashAndCompress and
 * decodeAndVerify) on worker threads, one WASM instance per worker, so the
 * ingest and the restore use every core.
 *
 * Memory is bounded: the pool owns a fixed set of batches
 * (POOL_BATCHES_PER_WORKER per worker, each of POOL_BATCH_BYTES data) and
 * lends them out with acquire(); acquire() waits while all are out. A
 * batch's buffer moves to its worker and back by transfer, never copied;
 * the worker copies the data into its WASM memory once.
 *
 *   const batch = await pool.acquire();
 *   readInto(batch.addPages(n));
 *   const pending = pool.hashAndCompress(batch);   // keep several in flight
 *   ...
 *   const done = await pending;                    // settles in submission order
 *   use(done.id(i), done.flag(i), done.stored(i));
 *   pool.release(done);
 *
 * Calls settle in the order they were made, whichever worker finishes
 * first. A corrupt chunk rejects only its own call (CorruptChunkError). A
 * worker that fails (throws outside a step, exits) breaks the pool: every
 * pending and later call is rejected with CodecWorkerError.
 */
import { strict as assert } from 'node:assert';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

import { ChunkBatch } from './chunk-batch.js';
import { CodecWorkerError } from './errors.js';
import { PAGE_SIZE } from './limits.js';
import { checkSecret } from './page-codec.js';
import { codecWorkerUrl } from './worker-entry.js';
import { type BatchStep, type CodecWorkerData, type StepRequest, type WorkerReply, deserializeError } from './worker-protocol.js';

/**
 * Batches per worker: one being worked on, one queued behind it, one being
 * filled or consumed by the caller, so workers need not wait for the caller.
 */
export const POOL_BATCHES_PER_WORKER = 3;
/** Data bytes per pool batch: 256 pages. Small enough to spread work evenly, big enough that a message per batch costs nothing. */
export const POOL_BATCH_BYTES = 1024 * 1024;
export const POOL_BATCH_CHUNKS = POOL_BATCH_BYTES / PAGE_SIZE;

export interface CodecPoolOptions {
  /** Number of worker threads; default os.availableParallelism(). */
  workers?: number;
}

interface Job {
  id: number;
  step: BatchStep;
  batch: ChunkBatch;
  resolve(batch: ChunkBatch): void;
  reject(error: Error): void;
  /** Set once its worker answered; the job settles when all earlier jobs have. */
  outcome?: { error: Error | undefined };
}

interface Waiter {
  resolve(batch: ChunkBatch): void;
  reject(error: Error): void;
}

/** Starts one worker and waits until its codec is loaded. */
function startWorker(data: CodecWorkerData): Promise<Worker> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(codecWorkerUrl(import.meta.url), { workerData: data });
    // Only these listeners may be removed: Worker keeps its own on itself.
    const stopListening = (): void => {
      worker.off('error', onError);
      worker.off('exit', onExit);
      worker.off('message', onMessage);
    };
    const onError = (error: Error): void => {
      stopListening();
      reject(new CodecWorkerError(`A codec worker failed to start: ${error.message}`, { cause: error }));
    };
    const onExit = (code: number): void => {
      stopListening();
      reject(new CodecWorkerError(`A codec worker exited (code ${code}) before it was ready.`));
    };
    const onMessage = (reply: WorkerReply): void => {
      stopListening();
      if (reply.kind === 'ready') {
        resolve(worker);
      } else {
        void worker.terminate();
        reject(reply.kind === 'startFailed'
          ? deserializeError(reply.error)
          : new CodecWorkerError(`A codec worker sent ${reply.kind} before it was ready.`));
      }
    };
    worker.on('error', onError);
    worker.on('exit', onExit);
    worker.on('message', onMessage);
  });
}

export class CodecPool {
  private readonly workers: Worker[];
  private readonly idle: Worker[];
  private readonly running = new Map<Worker, Job>();
  /** Submitted jobs no worker has taken yet. */
  private readonly queued: Job[] = [];
  /** Every job not yet settled, in submission order. */
  private readonly unsettled: Job[] = [];
  private readonly batches = new Set<ChunkBatch>();
  private readonly free: ChunkBatch[];
  private readonly waiters: Waiter[] = [];
  private failure: CodecWorkerError | undefined;
  private nextJobId = 0;

  private constructor(workers: Worker[]) {
    this.workers = workers;
    this.idle = [...workers];
    for (const worker of workers) {
      worker.on('message', (reply: WorkerReply) => this.onReply(worker, reply));
      worker.on('error', (error: Error) => {
        void this.fail(new CodecWorkerError(`A codec worker failed: ${error.message}`, { cause: error }));
      });
      worker.on('exit', (code: number) => {
        void this.fail(new CodecWorkerError(`A codec worker exited unexpectedly (code ${code}).`));
      });
      // An idle pool does not keep the process alive; a busy one does.
      worker.unref();
    }
    this.free = Array.from({ length: workers.length * POOL_BATCHES_PER_WORKER }, () =>
      ChunkBatch.create(POOL_BATCH_CHUNKS, POOL_BATCH_BYTES));
    for (const batch of this.free) this.batches.add(batch);
  }

  /** A pool of workers whose codecs hash with `secret` (or unkeyed ids without one). */
  static async create(secret?: Uint8Array, options: CodecPoolOptions = {}): Promise<CodecPool> {
    checkSecret(secret);
    const count = options.workers ?? availableParallelism();
    if (!Number.isInteger(count) || count < 1) throw new CodecWorkerError(`A codec pool needs at least one worker; asked for ${count}.`);
    const data: CodecWorkerData = { secret };
    const started = await Promise.allSettled(Array.from({ length: count }, () => startWorker(data)));
    const workers = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
    const failed = started.find((result) => result.status === 'rejected');
    if (failed) {
      await Promise.all(workers.map((worker) => worker.terminate()));
      throw failed.reason;
    }
    return new CodecPool(workers);
  }

  get workerCount(): number {
    return this.workers.length;
  }

  /**
   * How many batches the pool owns. A caller that keeps results unreleased
   * must release one before it holds this many, or acquire() waits forever.
   */
  get batchCount(): number {
    return this.batches.size;
  }

  /** Lends out an empty batch of the pool (capacity POOL_BATCH_CHUNKS / POOL_BATCH_BYTES); waits while all are out. */
  acquire(): Promise<ChunkBatch> {
    if (this.failure) return Promise.reject(this.failure);
    const batch = this.free.pop();
    if (batch) return Promise.resolve(batch);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** An empty batch if one is free now, else undefined (for a caller that must not wait). */
  tryAcquire(): ChunkBatch | undefined {
    if (this.failure) throw this.failure;
    return this.free.pop();
  }

  /** Gives a batch back (emptied) for the next acquire(). */
  release(batch: ChunkBatch): void {
    assert(this.batches.has(batch), 'release() of a batch that is not from this pool');
    assert(!batch.isLent && !this.free.includes(batch), 'release() of a batch that is in use or already released');
    batch.clear();
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(batch);
    else this.free.push(batch);
  }

  /**
   * Gives back a batch whose step was rejected. After a corrupt chunk the batch came back
   * from its worker and is the caller's to release like any other (forgetting it would
   * shrink the pool for good); after a worker failure it may still be out, and the
   * broken pool lends nothing any more.
   */
  releaseFailed(batch: ChunkBatch): void {
    if (!batch.isLent && !this.free.includes(batch)) this.release(batch);
  }

  /** PageCodec.hashAndCompress on a worker; resolves with the same batch, now Hashed. */
  hashAndCompress(batch: ChunkBatch): Promise<ChunkBatch> {
    return this.submit('hashAndCompress', batch);
  }

  /** PageCodec.decodeAndVerify on a worker; resolves with the same batch, now Decoded. */
  decodeAndVerify(batch: ChunkBatch): Promise<ChunkBatch> {
    return this.submit('decodeAndVerify', batch);
  }

  /** Ends the workers; pending and later calls are rejected with CodecWorkerError. */
  async close(): Promise<void> {
    await this.fail(new CodecWorkerError('The codec pool is closed.'));
  }

  private submit(step: BatchStep, batch: ChunkBatch): Promise<ChunkBatch> {
    if (this.failure) return Promise.reject(this.failure);
    assert(this.batches.has(batch) && !this.free.includes(batch), 'a pool step on a batch that is not lent out by this pool');
    assert(!batch.isLent, 'a pool step on a batch that is already in a step');
    const result = new Promise<ChunkBatch>((resolve, reject) => {
      const job: Job = { id: this.nextJobId++, step, batch, resolve, reject };
      this.unsettled.push(job);
      const worker = this.idle.pop();
      if (worker) this.dispatch(worker, job);
      else this.queued.push(job);
    });
    // Callers keep several calls in flight and await them in order; when the
    // pool fails, the calls not awaited yet are rejected at once. Marking the
    // promise handled keeps Node from treating that as an unhandled rejection
    // (which ends the process); the caller still gets the error when it awaits.
    result.catch(() => {});
    return result;
  }

  private dispatch(worker: Worker, job: Job): void {
    this.running.set(worker, job);
    worker.ref();
    const buffer = job.batch.lend();
    const request: StepRequest = { step: job.step, job: job.id, buffer };
    worker.postMessage(request, [buffer]);
  }

  private onReply(worker: Worker, reply: WorkerReply): void {
    if (this.failure) return;
    const job = this.running.get(worker);
    if (!job || (reply.kind !== 'done' && reply.kind !== 'failed') || reply.job !== job.id) {
      void this.fail(new CodecWorkerError(`A codec worker sent an unexpected ${reply.kind} message.`));
      return;
    }
    this.running.delete(worker);
    job.batch.giveBack(reply.buffer);
    job.outcome = { error: reply.kind === 'failed' ? deserializeError(reply.error) : undefined };

    const next = this.queued.shift();
    if (next) {
      this.dispatch(worker, next);
    } else {
      this.idle.push(worker);
      worker.unref();
    }
    // Settle in submission order: a finished job waits for every earlier one.
    while (this.unsettled[0]?.outcome) {
      const settled = this.unsettled.shift()!;
      if (settled.outcome!.error) settled.reject(settled.outcome!.error);
      else settled.resolve(settled.batch);
    }
  }

  /** Breaks the pool: rejects everything pending, ends the workers. Only the first failure counts. */
  private async fail(error: CodecWorkerError): Promise<void> {
    if (this.failure) return;
    this.failure = error;
    for (const job of this.unsettled.splice(0)) job.reject(error);
    this.queued.length = 0;
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    // The workers' listeners stay: with the failure set they ignore what
    // the dying workers still report.
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }
}
