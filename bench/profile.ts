// Where the time of an ingest or a restore goes, without touching src/: wraps methods
// (on instances or prototypes) and node:fs calls with timers. Times are exclusive: a
// wrapped call inside another wrapped call is charged to the inner one only. Used by
// e2e-child.ts in a separate, profiled run (the timers cost ~0.1 µs per call).
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

interface Slot {
  calls: number;
  inclusive: number;
  children: number;
}

export interface ProfileRow {
  label: string;
  calls: number;
  /** Exclusive milliseconds. */
  ms: number;
}

type AnyFn = (...args: unknown[]) => unknown;

export class Profiler {
  private readonly slots = new Map<string, Slot>();
  private readonly stack: Slot[] = [];

  private slot(label: string): Slot {
    let s = this.slots.get(label);
    if (!s) this.slots.set(label, (s = { calls: 0, inclusive: 0, children: 0 }));
    return s;
  }

  /** Replaces obj[method] with a timed version charged to `label`. */
  wrap(obj: object, method: string, label: string): void {
    const target = obj as Record<string, unknown>;
    const original = target[method];
    if (typeof original !== 'function') throw new Error(`profile: ${method} is not a function`);
    const slot = this.slot(label);
    const stack = this.stack;
    const fn = original as AnyFn;
    // A method that returns a promise is timed until it settles, and stays the parent of
    // what runs meanwhile (the benchmarks call these one at a time).
    target[method] = function (this: unknown, ...args: unknown[]): unknown {
      const parent = stack[stack.length - 1];
      stack.push(slot);
      const t = performance.now();
      const settle = () => {
        const elapsed = performance.now() - t;
        stack.splice(stack.lastIndexOf(slot), 1);
        slot.calls++;
        slot.inclusive += elapsed;
        if (parent) parent.children += elapsed;
      };
      let result: unknown;
      try {
        result = fn.apply(this, args);
      } catch (e) {
        settle();
        throw e;
      }
      if (!(result instanceof Promise)) {
        settle();
        return result;
      }
      return result.finally(settle);
    };
  }

  /** Wraps node:fs functions; ES module importers see the wrapped ones too. */
  wrapFs(methods: Record<string, string>): void {
    for (const [method, label] of Object.entries(methods)) this.wrap(fs, method, label);
    syncBuiltinESMExports();
  }

  /** Forgets what was counted so far (wrappers stay). */
  reset(): void {
    for (const s of this.slots.values()) Object.assign(s, { calls: 0, inclusive: 0, children: 0 });
  }

  /** Rows by exclusive time; `totalMs` minus everything wrapped becomes `restLabel`. */
  rows(totalMs: number, restLabel: string): ProfileRow[] {
    const rows = [...this.slots.entries()]
      .filter(([, s]) => s.calls > 0)
      .map(([label, s]) => ({ label, calls: s.calls, ms: s.inclusive - s.children }));
    const topLevel = rows.reduce((sum, r) => sum + r.ms, 0);
    rows.push({ label: restLabel, calls: 0, ms: Math.max(0, totalMs - topLevel) });
    return rows.sort((a, b) => b.ms - a.ms);
  }
}
