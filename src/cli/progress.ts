// Progress of long work (checkpoint, restore, gc, verify) on one terminal line: bytes
// done of the total, rate, time left. Only when stdout is a terminal: piped output and
// --json stay clean. Work that ends within PROGRESS_DELAY_MS shows nothing.
import { formatBytes } from './format.js';

/** Work shorter than this shows no progress line: it would only flicker. */
export const PROGRESS_DELAY_MS = 1000;
/** Least time between two redraws. */
const REDRAW_MS = 200;

export interface Progress {
  /** The pipelines' onProgress callback. */
  update(doneBytes: number, totalBytes: number): void;
  /** Clears the line; call when the work ends (also on failure). */
  end(): void;
}

/** A progress line labelled `label` on stdout, or undefined when stdout is not a terminal. */
export function terminalProgress(label: string, out: NodeJS.WriteStream = process.stdout): Progress | undefined {
  if (!out.isTTY) return undefined;
  const started = performance.now();
  let lastDraw = 0;
  let drawn = false;
  // The rate counts from the first report: what came before it (opening, locking, CRIU's dump) moved no bytes.
  let first: { at: number; done: number } | undefined;
  return {
    update(done, total) {
      const now = performance.now();
      first ??= { at: now, done };
      if (now - started < PROGRESS_DELAY_MS || now - lastDraw < REDRAW_MS || now === first.at) return;
      lastDraw = now;
      const rate = (done - first.done) / ((now - first.at) / 1000);
      const eta = rate > 0 && total > done ? `, ${formatSeconds((total - done) / rate)} left` : '';
      const percent = total > 0 ? ` (${Math.floor((100 * done) / total)}%)` : '';
      out.write(`\r\x1b[K${label}: ${formatBytes(done)} of ${formatBytes(total)}${percent}, ${formatBytes(rate)}/s${eta}`);
      drawn = true;
    },
    end() {
      if (drawn) out.write('\r\x1b[K');
      drawn = false;
    },
  };
}

function formatSeconds(s: number): string {
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Runs work with a progress line (when stdout is a terminal), cleared whatever the outcome. */
export async function withProgress<T>(label: string, work: (onProgress: ((doneBytes: number, totalBytes: number) => void) | undefined) => Promise<T>): Promise<T> {
  const progress = terminalProgress(label);
  try {
    return await work(progress ? (d, t) => progress.update(d, t) : undefined);
  } finally {
    progress?.end();
  }
}
