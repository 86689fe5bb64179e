/**
 * Messages between CodecPool (src/codec/pool.ts) and its workers
 * (src/codec/codec-worker.ts). A batch's ArrayBuffer is transferred, never
 * copied: to the worker with the request, back with the reply.
 */
import { type CodecError, CodecInputError, CodecLoadError, CodecWorkerError, CorruptChunkError, InvalidSecretError } from './errors.js';

export type BatchStep = 'hashAndCompress' | 'decodeAndVerify';

export interface CodecWorkerData {
  /** The store's secret, or undefined for unkeyed ids. */
  secret: Uint8Array | undefined;
}

export interface StepRequest {
  step: BatchStep;
  job: number;
  buffer: ArrayBuffer;
}

export type WorkerReply =
  | { kind: 'ready' }
  | { kind: 'startFailed'; error: SerializedError }
  | { kind: 'done'; job: number; buffer: ArrayBuffer }
  | { kind: 'failed'; job: number; buffer: ArrayBuffer; error: SerializedError };

/** An error as it crosses threads (structured clone keeps neither class nor fields). */
export interface SerializedError {
  name: string;
  message: string;
  chunkIndex?: number;
}

export function serializeError(error: unknown): SerializedError {
  if (error instanceof CorruptChunkError && error.chunkIndex !== undefined) {
    return { name: error.name, message: error.message, chunkIndex: error.chunkIndex };
  }
  if (error instanceof Error) return { name: error.name, message: error.message };
  return { name: 'Error', message: String(error) };
}

/** The typed codec error again; anything unexpected becomes a CodecWorkerError. */
export function deserializeError(error: SerializedError): CodecError {
  switch (error.name) {
    case CorruptChunkError.name:
      return new CorruptChunkError(error.message, error.chunkIndex === undefined ? {} : { chunkIndex: error.chunkIndex });
    case CodecInputError.name:
      return new CodecInputError(error.message);
    case CodecLoadError.name:
      return new CodecLoadError(error.message);
    case InvalidSecretError.name:
      return new InvalidSecretError(error.message);
    default:
      return new CodecWorkerError(`A codec worker failed: ${error.name}: ${error.message}`);
  }
}
