// Crash recovery on opening a store: what a killed checkpoint, restore or GC left
// behind. Pack files are removed only while nobody holds the store lock (a live writer
// holds it shared from before its first pack until its commit); staging dirs only when
// the process that made them is gone.
import { removeOrphanPacks } from '../store/gc.js';
import type { Repository } from '../store/repository.js';
import { tryLockStoreExclusive } from '../store/store-lock.js';
import { removeStaleStaging } from './checkpoint.js';

export interface Recovered {
  packFiles: string[];
  stagingDirs: string[];
}

export function recoverStore(repo: Repository): Recovered {
  const recovered: Recovered = { packFiles: [], stagingDirs: removeStaleStaging() };
  const lock = tryLockStoreExclusive(repo.dir);
  if (!lock) return recovered; // someone works on the store: the next open or GC cleans up
  try {
    recovered.packFiles = removeOrphanPacks(repo).map((f) => f.name + (f.partial ? '.pack.partial' : '.pack'));
  } finally {
    lock.release();
  }
  return recovered;
}
