/**
 * A CodecPool worker: one PageCodec (its own WASM instance, keyed with the
 * store's secret) that runs batch steps on the batches the pool transfers
 * to it, one at a time, and transfers each batch back. A step that fails on
 * the batch's content (a corrupt chunk) is answered with the error; the
 * worker goes on.
 */
import { strict as assert } from 'node:assert';
import { parentPort, workerData } from 'node:worker_threads';

import { ChunkBatch } from './chunk-batch.js';
import { PageCodec } from './page-codec.js';
import { type CodecWorkerData, type StepRequest, type WorkerReply, serializeError } from './worker-protocol.js';

const port = parentPort;
assert(port, 'codec-worker.js runs only as a worker thread');

function reply(message: WorkerReply, transfer: ArrayBuffer[] = []): void {
  port!.postMessage(message, transfer);
}

let codec: PageCodec | undefined;
try {
  codec = await PageCodec.create((workerData as CodecWorkerData).secret);
} catch (error) {
  reply({ kind: 'startFailed', error: serializeError(error) });
}

if (codec) {
  const ready = codec;
  port.on('message', ({ step, job, buffer }: StepRequest) => {
    try {
      const batch = ChunkBatch.over(buffer);
      if (step === 'hashAndCompress') ready.hashAndCompress(batch);
      else ready.decodeAndVerify(batch);
      reply({ kind: 'done', job, buffer }, [buffer]);
    } catch (error) {
      reply({ kind: 'failed', job, buffer, error: serializeError(error) }, [buffer]);
    }
  });
  reply({ kind: 'ready' });
}
