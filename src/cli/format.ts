// Human-readable output for the terminal.
import type { JobStatus } from '../controller/status.js';
import type { CheckpointRecord } from '../store/repository.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${UNITS[u]}`;
}

export function formatCheckpoint(c: CheckpointRecord): string {
  return (
    `${formatBytes(c.imageBytes)} image, ${formatBytes(c.storedBytes)} new, ` +
    `${c.pagesHashed} of ${c.pagesTotal} pages hashed, ${Math.round(c.durationMs)} ms, frozen ${Math.round(c.freezeMs)} ms (${c.mode})`
  );
}

export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}

export function printStatus(s: JobStatus): void {
  console.log(`job ${s.job}: pid ${s.pid ?? '-'} ${s.running ? 'running' : 'not running'}, ${s.controller ? 'controller running' : 'no controller'}`);
  console.log(s.lastCheckpoint ? `last checkpoint: ${s.lastCheckpoint.id} at ${s.lastCheckpoint.takenAt} (${s.lastCheckpoint.mode})` : 'no checkpoint yet');
  console.log(`dirty tracking: ${s.tracking.mode}`);
  for (const p of s.tracking.processes) console.log(`  pid ${p.pid} (${p.nsPid} in the job): ${p.mode}${p.problem ? ` (${p.problem})` : ''}`);
  const a = s.tracking.sinceCheckpoint;
  if (!a) return;
  console.log(`since the last checkpoint (${a.seconds.toFixed(0)} s): ${a.pagesWritten} pages written, ${a.writeFaults} write faults (${a.faultRatePerSecond.toFixed(1)}/s)`);
  console.log(`  fd changes: ${a.fdChanges.length}${a.fdChanges.length ? ': ' + a.fdChanges.slice(0, 10).map((c) => `${c.pid}:${c.syscall} fd ${c.fd}`).join(', ') : ''}`);
  for (const f of a.modifiedFiles) console.log(`  modified ${f.path}: ${f.writes} writes, ${formatBytes(f.bytesWritten)}`);
  if (!a.complete) console.log(`  incomplete: ${a.incompleteBecause.join('; ')}`);
}

/** A duration as the shortest of 250ms, 90s, 5m, 2h (what --interval accepts back). */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
