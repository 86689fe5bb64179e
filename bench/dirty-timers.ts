// Stage timers for the dirty-tracking benchmark, without touching src/: the checkpoint
// pipeline's stages are methods of exported classes, wrapped on their prototypes with
// inclusive timers for the length of the benchmark and put back afterwards. A method the
// other side renamed is simply not timed (its stage then reads n/a).
import { Ingest } from '../src/controller/ingest.js';
import { type FrozenTracking, TrackingSession } from '../src/controller/tracking-session.js';
import { Repository } from '../src/store/repository.js';

export interface StageTimes {
  /**
   * Ingest.addPages + finishPages + imageDirectory: the streamed pages read off CRIU's
   * socket (waits for CRIU included), hashed, stored; the small image files (ms). A
   * pre-copy's reads are in it too (precopyMs).
   */
  ingestMs: number;
  /** A first checkpoint's pre-copy while the job runs, from TrackingSession.precopyTargets to usePrecopy (ms; 0: none). */
  precopyMs: number;
  /** Repository.commitCheckpoint: manifests, pack finish + fsync, the SQLite transaction (ms). */
  commitMs: number;
  /** TrackingSession.whileFrozen: eBPF drain + PAGEMAP_SCAN, inside the freeze (ms). */
  scanMs: number;
  /** TrackingSession.committed: new baseline, adaptive arming (ms). */
  committedMs: number;
  /** What whileFrozen measured: written / tracked pages (null: nothing to compare with). */
  dirtyFraction: number | null;
  notes: string[];
  /** Which stages could be timed (false: the method is gone, the value is 0). */
  timed: { ingest: boolean; precopy: boolean; commit: boolean; scan: boolean; committed: boolean };
}

type AnyFn = (...args: unknown[]) => unknown;

export class StageTimers {
  private times = StageTimers.empty();
  /** Called with whileFrozen's result before the checkpoint uses it (the profile wraps its lookups). */
  onFrozen: ((frozen: FrozenTracking) => void) | undefined;
  private readonly restore: (() => void)[] = [];

  private static empty(): StageTimes {
    return {
      ingestMs: 0,
      precopyMs: 0,
      commitMs: 0,
      scanMs: 0,
      committedMs: 0,
      dirtyFraction: null,
      notes: [],
      timed: { ingest: false, precopy: false, commit: false, scan: false, committed: false },
    };
  }

  install(): void {
    const t = (): StageTimes => this.times;
    for (const method of ['addPages', 'finishPages', 'imageDirectory']) this.wrap(Ingest.prototype, method, 'ingest', (ms) => (t().ingestMs += ms));
    this.wrap(Repository.prototype, 'commitCheckpoint', 'commit', (ms) => (t().commitMs += ms));
    this.wrap(TrackingSession.prototype, 'whileFrozen', 'scan', (ms, result) => {
      t().scanMs += ms;
      const frozen = result as FrozenTracking | undefined;
      t().dirtyFraction = frozen?.dirtyFraction ?? null;
      t().notes = [...(frozen?.notes ?? [])];
      if (frozen) this.onFrozen?.(frozen);
    });
    this.wrap(TrackingSession.prototype, 'committed', 'committed', (ms) => (t().committedMs += ms));
    let precopyStarted = 0;
    this.wrap(TrackingSession.prototype, 'precopyTargets', 'precopy', () => (precopyStarted = performance.now()));
    this.wrap(TrackingSession.prototype, 'usePrecopy', 'precopy', () => (t().precopyMs += performance.now() - precopyStarted));
  }

  /** Starts a new measurement; returns the previous one. */
  take(): StageTimes {
    const done = this.times;
    const timed = { ...done.timed };
    this.times = StageTimers.empty();
    this.times.timed = timed;
    return done;
  }

  uninstall(): void {
    for (const undo of this.restore.splice(0).reverse()) undo();
  }

  private wrap(proto: object, method: string, stage: keyof StageTimes['timed'], done: (ms: number, result: unknown) => void): void {
    const target = proto as Record<string, unknown>;
    const original = target[method];
    if (typeof original !== 'function') return;
    const fn = original as AnyFn;
    this.times.timed[stage] = true;
    // Sync or async (a method that returns a promise is timed until it settles).
    target[method] = function (this: unknown, ...args: unknown[]): unknown {
      const t = performance.now();
      let result: unknown;
      try {
        result = fn.apply(this, args);
      } catch (e) {
        done(performance.now() - t, undefined);
        throw e;
      }
      if (result instanceof Promise) {
        return result.then(
          (value: unknown) => {
            done(performance.now() - t, value);
            return value;
          },
          (e: unknown) => {
            done(performance.now() - t, undefined);
            throw e;
          },
        );
      }
      done(performance.now() - t, result);
      return result;
    };
    this.restore.push(() => {
      target[method] = original;
    });
  }
}
