// Errors of the store, each written for the person who reads it.
import { CrincError } from '../errors.js';

export class StoreError extends CrincError {
  override name = 'StoreError';
}

export class StoreNotFoundError extends StoreError {
  override name = 'StoreNotFoundError';
  constructor(readonly dir: string) {
    super(`no crinc store at ${dir}: it is created by the first \`crinc run\` or \`crinc checkpoint\`; check --store or CRINC_STORE`);
  }
}

export class StorePermissionError extends StoreError {
  override name = 'StorePermissionError';
}

export class StoreFormatError extends StoreError {
  override name = 'StoreFormatError';
}

/** A chunk whose bytes do not match its id, or that cannot be read back: never restored. */
export class ChunkCorruptError extends StoreError {
  override name = 'ChunkCorruptError';
  constructor(
    readonly chunkId: string,
    readonly pack: string,
    readonly detail: string,
  ) {
    super(
      `chunk ${chunkId} in pack ${pack} is damaged (${detail}); nothing was restored. Other checkpoints that share this chunk are damaged too; older or newer checkpoints may not share it. ` +
        'The chunk is quarantined: the next checkpoint of a running job stores its content again. `crinc verify` names the damaged checkpoints',
    );
  }
}

export class ChunkMissingError extends StoreError {
  override name = 'ChunkMissingError';
  constructor(readonly chunkId: string) {
    super(`chunk ${chunkId} is referenced by a checkpoint but is not in the store: the store is damaged; \`crinc verify\` names the damaged checkpoints, \`crinc repair\` rebuilds the index from the packs`);
  }
}

export class UnknownJobError extends StoreError {
  override name = 'UnknownJobError';
  constructor(readonly job: string, known: string[]) {
    super(`unknown job "${job}"` + (known.length ? `; known jobs: ${known.join(', ')}` : '; this store has no jobs yet (start one with `crinc run`)'));
  }
}

export class CheckpointNotFoundError extends StoreError {
  override name = 'CheckpointNotFoundError';
}

export class JobBusyError extends StoreError {
  override name = 'JobBusyError';
  constructor(readonly job: string, holder: string) {
    super(`a checkpoint or restore of job "${job}" is already in progress (${holder}); wait for it to finish and try again`);
  }
}

export class InvalidJobNameError extends StoreError {
  override name = 'InvalidJobNameError';
  constructor(readonly job: string) {
    super(`invalid job name "${job}": use 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
}

/** A remote (S3) store could not be used: unreachable, no bucket, a damaged object. */
export class S3StoreError extends StoreError {
  override name = 'S3StoreError';
}

/** The S3 service refused the credentials, or none were found. */
export class S3AccessError extends S3StoreError {
  override name = 'S3AccessError';
}

/** The bucket lock is held by others in a way that excludes this work. */
export class BucketLockedError extends S3StoreError {
  override name = 'BucketLockedError';
  constructor(location: string, purpose: string, holders: string[], advice: string) {
    super(`${location} is locked, so ${purpose} cannot start: ${holders.join('; ')}. ${advice}`);
  }
}

/** This process's bucket lock may have been taken for stale by another node: nothing more is written. */
export class BucketLockLostError extends S3StoreError {
  override name = 'BucketLockLostError';
  constructor(location: string, key: string, ageMs: number) {
    super(
      `the lock ${key} of this crinc in ${location} was last written ${Math.round(ageMs / 1000)} s ago or is gone: another node may have taken it for stale ` +
        'and collected garbage meanwhile, so this work stopped before writing anything that could name deleted chunks. Nothing committed is harmed; run it again',
    );
  }
}

/** The index is gone but the store holds checkpoints: nothing may touch the packs until it is rebuilt. */
export class StoreIndexMissingError extends StoreError {
  override name = 'StoreIndexMissingError';
  constructor(readonly dir: string) {
    super(
      `${dir} holds packs or checkpoints but its index (index.sqlite) is missing; nothing was changed. ` +
        `Rebuild the index from the packs and checkpoint objects with: crinc repair --store ${dir}`,
    );
  }
}

/** A pack the index names is not there (deleted, or lost with its disk). */
export class PackMissingError extends StoreError {
  override name = 'PackMissingError';
  constructor(readonly pack: string, where: string) {
    super(
      `pack ${pack} is missing from ${where}: the checkpoints whose chunks it held cannot be restored. ` +
        'Its chunks are now quarantined (the next checkpoint of a running job stores them again); ' +
        '`crinc verify` names the damaged checkpoints, `crinc repair --forget-damaged` forgets them',
    );
  }
}
