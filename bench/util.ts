// Small helpers shared by the benchmark modules: timing, tables, targets, scratch space.
// Benchmarks print; they never assert.
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';

export const GIB = 1024 ** 3;
export const MIB = 1024 ** 2;

/** Seconds since `start` (a performance.now() value). */
export function since(start: number): number {
  return (performance.now() - start) / 1000;
}

export interface Rate {
  /** Median of the runs, bytes per second. */
  median: number;
  best: number;
  runs: number;
}

/**
 * Runs `fn` (which processes `bytes` bytes) at least `minRuns` times and until
 * `minSeconds` have passed (at most `maxRuns`), after one untimed warm-up run.
 */
export function measure(bytes: number, fn: () => void, opts: { minRuns?: number; maxRuns?: number; minSeconds?: number; warmup?: boolean } = {}): Rate {
  const { minRuns = 3, maxRuns = 20, minSeconds = 0.4, warmup = true } = opts;
  if (warmup) fn();
  const rates: number[] = [];
  const started = performance.now();
  while (rates.length < minRuns || (rates.length < maxRuns && since(started) < minSeconds)) {
    const t = performance.now();
    fn();
    rates.push(bytes / since(t));
  }
  return rateOf(rates);
}

/** Same as measure() for async work (a worker pool). */
export async function measureAsync(bytes: number, fn: () => Promise<void>, opts: { minRuns?: number; maxRuns?: number; minSeconds?: number } = {}): Promise<Rate> {
  const { minRuns = 3, maxRuns = 20, minSeconds = 0.4 } = opts;
  await fn();
  const rates: number[] = [];
  const started = performance.now();
  while (rates.length < minRuns || (rates.length < maxRuns && since(started) < minSeconds)) {
    const t = performance.now();
    await fn();
    rates.push(bytes / since(t));
  }
  return rateOf(rates);
}

function rateOf(rates: number[]): Rate {
  rates.sort((a, b) => a - b);
  return { median: rates[rates.length >> 1]!, best: rates[rates.length - 1]!, runs: rates.length };
}

export function gbps(bytesPerSecond: number): string {
  return (bytesPerSecond / 1e9).toFixed(2);
}

export function mib(bytes: number): string {
  return (bytes / MIB).toFixed(bytes < 10 * MIB ? 1 : 0);
}

/** "PASS"/"MISS" for a measured value against a lower (or, with atMost, upper) bound. */
export function verdict(value: number, target: number, atMost = false): string {
  if (!Number.isFinite(value)) return 'n/a';
  return (atMost ? value <= target : value >= target) ? 'PASS' : 'MISS';
}

/** Prints an aligned text table; numbers and PASS/MISS are right-aligned. */
export function printTable(title: string, header: string[], rows: string[][], notes: string[] = []): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = (s: string): boolean => /^[-+]?[\d.,]+[×x%]?$|^(PASS|MISS|n\/a|-)$/.test(s);
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i > 0 && numeric(c) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
  for (const n of notes) console.log(`  ${n}`);
}

/** Scratch directories on tmpfs and processes, all removed/killed by cleanup(). */
export class Scratch {
  readonly root: string;
  private readonly pids = new Set<number>();
  private readonly closers: (() => void | Promise<void>)[] = [];

  constructor(base = '/dev/shm') {
    this.root = mkdtempSync(join(base, 'crinc-bench-'));
  }

  dir(name: string): string {
    return join(this.root, name);
  }

  trackPid(pid: number): void {
    this.pids.add(pid);
  }

  untrackPid(pid: number): void {
    this.pids.delete(pid);
  }

  onCleanup(fn: () => void | Promise<void>): void {
    this.closers.push(fn);
  }

  /** For a crash: kills tracked processes and removes the scratch root, synchronously. */
  cleanupSync(): void {
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.pids.clear();
    rmSync(this.root, { recursive: true, force: true });
  }

  /** Kills tracked processes (by pid, SIGKILL), runs closers, removes the scratch root. */
  async cleanup(): Promise<void> {
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    this.pids.clear();
    for (const fn of this.closers.splice(0).reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`cleanup: ${(e as Error).message}`);
      }
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** MemAvailable from /proc/meminfo, in bytes. */
export function memAvailable(meminfo: string): number {
  const m = /^MemAvailable:\s+(\d+) kB$/m.exec(meminfo);
  return m ? Number(m[1]) * 1024 : 0;
}
