/**
 * Errors raised by the page codec (chunk ids, zero pages, LZ4 chunks).
 * Every error here is a CodecError, so callers can tell codec failures
 * from I/O or store failures with one instanceof check.
 */
export class CodecError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The WASM codec could not be found, compiled or instantiated. */
export class CodecLoadError extends CodecError {}

/** A hashing secret was given that is not exactly SECRET_BYTES bytes. */
export class InvalidSecretError extends CodecError {}

/** A buffer passed to the codec has the wrong size or exceeds a codec limit. */
export class CodecInputError extends CodecError {}

/**
 * A compressed chunk cannot be decoded into exactly the expected bytes:
 * the stored data is damaged, truncated, or belongs to another chunk. From a
 * batch call, chunkIndex says which chunk of the batch (the first bad one).
 */
export class CorruptChunkError extends CodecError {
  readonly chunkIndex: number | undefined;

  constructor(message: string, options?: ErrorOptions & { chunkIndex?: number }) {
    super(message, options);
    this.chunkIndex = options?.chunkIndex;
  }
}

/**
 * A codec worker failed (it threw outside a batch, exited, or could not
 * start), or the pool was closed: every call still pending on the pool is
 * rejected with this error, and so is every later call.
 */
export class CodecWorkerError extends CodecError {}
