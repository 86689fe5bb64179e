// Where a dirty-tracking checkpoint's ingest goes: one profiled checkpoint per side with
// timers around the stages (bench/profile.ts's Profiler: exclusive times, ~0.1 µs per
// call), everything put back afterwards. Methods this version of src/ does not have are
// skipped. The clean-page lookups are timed through the session's whileFrozen result
// (StageTimers.onFrozen).
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { NO_CLEAN_PAGES } from '../src/controller/ingest.js';
import type { Codecs } from '../src/controller/codecs.js';
import { TrackingSession } from '../src/controller/tracking-session.js';
import { PackWriter } from '../src/store/pack.js';
import { ChunkWriter, Repository } from '../src/store/repository.js';
import { Profiler, type ProfileRow } from './profile.js';
import type { StageTimers } from './dirty-timers.js';

export class StageProfile {
  readonly profiler = new Profiler();
  private readonly undo: (() => void)[] = [];

  /** Wraps the stages of both sides' codecs and the store/session prototypes. */
  install(timers: StageTimers, codecs: Codecs[]): void {
    this.fs({ readSync: 'read image pages (readSync)', writeSync: 'pack and file writes (writeSync)', fsyncSync: 'fsync' });
    for (const c of codecs) {
      this.wrap(c.pages, 'hashPages', 'hash + zero check (PageCodec.hashPages)');
      this.wrap(c.pages, 'chunkId', 'chunk ids of manifest parts and 64 KiB blocks (chunkId)');
    }
    this.wrap(Repository.prototype, 'unknownChunks', 'dedup: Repository.unknownChunks (id cache + SQLite)');
    this.wrap(Repository.prototype, 'hasChunk', 'dedup: Repository.hasChunk');
    this.wrap(ChunkWriter.prototype, 'storeManifest', 'manifests: ChunkWriter.storeManifest');
    this.wrap(ChunkWriter.prototype, 'putStored', 'ChunkWriter.putStored');
    this.wrap(ChunkWriter.prototype, 'finish', 'pack finish (ChunkWriter.finish)');
    this.wrap(PackWriter.prototype, 'add', 'pack add (PackWriter.add)');
    this.wrap(Repository.prototype, 'commitCheckpoint', 'commit: SQLite transaction and the rest of commitCheckpoint');
    this.wrap(TrackingSession.prototype, 'committed', 'TrackingSession.committed (baseline, adaptive arming)');
    const profiler = this.profiler;
    timers.onFrozen = (frozen) => {
      // A fresh object per checkpoint; never the shared NO_CLEAN_PAGES.
      if (frozen.clean !== NO_CLEAN_PAGES) profiler.wrap(frozen.clean, 'forProcess', 'clean ranges per process (CleanPages.forProcess)');
    };
    this.undo.push(() => {
      timers.onFrozen = undefined;
    });
    this.profiler.reset();
  }

  /** Rows since the last call; `totalMs` minus the wrapped stages is the rest. */
  rows(totalMs: number): ProfileRow[] {
    const rows = this.profiler.rows(totalMs, 'the rest: ingest loop (JS per page), pagemap → addresses, awaits on the codec pool');
    this.profiler.reset();
    return rows;
  }

  uninstall(): void {
    for (const fn of this.undo.splice(0).reverse()) fn();
  }

  private wrap(obj: object, method: string, label: string): void {
    const target = obj as Record<string, unknown>;
    const original = target[method];
    if (typeof original !== 'function') return;
    this.profiler.wrap(obj, method, label);
    this.undo.push(() => {
      target[method] = original;
    });
  }

  private fs(methods: Record<string, string>): void {
    const target = fs as unknown as Record<string, unknown>;
    const originals = Object.keys(methods).map((m) => [m, target[m]] as const);
    this.profiler.wrapFs(methods);
    this.undo.push(() => {
      for (const [m, fn] of originals) target[m] = fn;
      syncBuiltinESMExports();
    });
  }
}
