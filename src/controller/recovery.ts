// Crash recovery on opening a store: what a killed checkpoint, restore or GC left
// behind. With the store lock free (no writer is between its first pack and its commit):
// checkpoint objects the index lacks are taken in (their commit was interrupted after
// its commit point), then the packs that dead writers noted in their journals and the
// index does not name are removed. Staging dirs go when the process that made them is gone.
import { removeAbandonedPacks } from '../store/gc.js';
import type { Repository } from '../store/repository.js';
import { tryLockStoreExclusive } from '../store/store-lock.js';
import { removeStaleStaging } from './checkpoint.js';

export interface Recovered {
  packFiles: string[];
  stagingDirs: string[];
  /** Checkpoints committed by a process killed before its index transaction, now indexed. */
  checkpoints: number[];
}

export function recoverStore(repo: Repository): Recovered {
  const recovered: Recovered = { packFiles: [], stagingDirs: removeStaleStaging(), checkpoints: [] };
  const lock = tryLockStoreExclusive(repo.dir);
  if (!lock) return recovered; // someone works on the store: the next open or GC cleans up
  try {
    recovered.checkpoints = repo.catchUpWithObjects();
    recovered.packFiles = removeAbandonedPacks(repo);
  } finally {
    lock.release();
  }
  return recovered;
}
