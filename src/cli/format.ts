// Human-readable output for the terminal.
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
