// `crinc repair` (docs/FORMAT.md, "Repair"): rebuilds the index of a store directory from
// its packs and checkpoint objects, then verifies every checkpoint against it (with
// readData, every chunk is read and checked). Damaged checkpoints are marked (crinc list
// shows them) and their chunks quarantined; with forgetDamaged exactly those are
// forgotten. Running it again does the same work and comes to the same index.
import { rebuildIndex, type RebuildReport } from '../store/rebuild.js';
import { Repository } from '../store/repository.js';
import { openCodecs } from './codecs.js';
import { recoverStore } from './recovery.js';
import { type DamagedCheckpoint, verifyStore, type VerifyReport } from './verify.js';

export type RepairPhase = 'rebuild' | 'verify';

export interface RepairOptions {
  readData: boolean;
  forgetDamaged: boolean;
  onProgress?: (done: number, total: number, phase: RepairPhase) => void;
}

export interface RepairReport {
  rebuild: RebuildReport;
  verify: VerifyReport;
  /** The damaged checkpoints forgotten (forgetDamaged). */
  forgotten: DamagedCheckpoint[];
}

export async function repairStore(dir: string, options: RepairOptions): Promise<RepairReport> {
  const rebuild = await rebuildIndex(dir, (p) => options.onProgress?.(p.done, p.total, 'rebuild'));
  const repo = Repository.open(dir, { create: false });
  try {
    recoverStore(repo);
    // The rebuilt index lists a run per pack: one run makes lookups cheap again.
    repo.compactChunkIndex({ all: true });
    const codecs = await openCodecs(repo);
    try {
      const verify = await verifyStore(repo, codecs, { readData: options.readData, onProgress: (d, t) => options.onProgress?.(d, t, 'verify') });
      const forgotten = options.forgetDamaged ? verify.damaged : [];
      if (forgotten.length > 0) await repo.forgetCheckpoints(forgotten.map((d) => d.id));
      return { rebuild, verify, forgotten };
    } finally {
      await codecs.pool.close();
    }
  } finally {
    repo.close();
  }
}
