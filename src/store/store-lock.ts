// The store-wide lock (docs/FORMAT.md, "Locks"): whoever writes packs or reads chunks
// holds it shared; GC holds it exclusive while it deletes or moves chunks. A gate lock
// in front gives GC priority: once GC waits, new shared holders queue behind it, so a
// stream of overlapping checkpoints cannot starve it.
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { lockAsync, tryLockExclusive } from '../sys/libc.js';
import { LOCKS_DIR } from './format.js';

/** Names a job cannot have (job names start with a letter or digit). */
export const STORE_LOCK_FILE = '_store.lock';
export const STORE_GATE_FILE = '_store-gate.lock';

export type StoreLockMode = 'shared' | 'exclusive';

/** A hold on the store lock; released by release() or by the kernel when the process dies. */
export class StoreLock {
  /** Holds released with this one, first (an S3 store's bucket lock). */
  private readonly also: { release(): void }[] = [];

  constructor(
    readonly mode: StoreLockMode,
    private fds: number[],
  ) {}

  /** Releases the hold with this lock. */
  add(hold: { release(): void }): void {
    this.also.push(hold);
  }

  release(): void {
    for (const hold of this.also.splice(0)) hold.release();
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

/** The lock file's fd; undefined on a read-only file system, where nothing can change and no lock is needed. */
function openLockFile(storeDir: string, name: string): number | undefined {
  try {
    return openSync(join(storeDir, LOCKS_DIR, name), 'a+', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EROFS') return undefined;
    throw e;
  }
}

/**
 * Waits for the store lock. Shared: pass the gate (wait while GC holds or waits for
 * the lock), take the lock shared, leave the gate. Exclusive: hold the gate, then wait
 * for the shared holders to finish. A process must not ask for exclusive while it
 * holds shared (flock would wait for itself).
 */
export async function lockStore(storeDir: string, mode: StoreLockMode): Promise<StoreLock> {
  const gate = openLockFile(storeDir, STORE_GATE_FILE);
  if (gate === undefined) return new StoreLock(mode, []);
  let lock = -1;
  try {
    await lockAsync(gate, 'exclusive');
    lock = openLockFile(storeDir, STORE_LOCK_FILE)!;
    await lockAsync(lock, mode);
  } catch (e) {
    if (lock >= 0) closeSync(lock);
    closeSync(gate);
    throw e;
  }
  if (mode === 'shared') {
    closeSync(gate);
    return new StoreLock(mode, [lock]);
  }
  return new StoreLock(mode, [lock, gate]);
}

/** The lock exclusive only if nobody holds it now (crash recovery: never waits). */
export function tryLockStoreExclusive(storeDir: string): StoreLock | undefined {
  const lock = openLockFile(storeDir, STORE_LOCK_FILE);
  if (lock === undefined) return new StoreLock('exclusive', []);
  if (tryLockExclusive(lock)) return new StoreLock('exclusive', [lock]);
  closeSync(lock);
  return undefined;
}
