// The dirty-tracking benchmark's job: test/workloads/dirtier.c, started like the other
// benchmark jobs (own PID namespace, killed by pid, reaped). Each tick() makes it rewrite
// exactly N whole pages and returns how long its write loop took, measured by the job.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { JobTracker } from '../src/tracking/bpf/job-tracker.js';
import { type Job, ROOT, startJob } from './workload.js';
import type { Scratch } from './util.js';

export const DIRTIER = join(ROOT, 'build', 'workloads', 'dirtier');
const TICK_TIMEOUT_MS = 120_000;
const POLL_MS = 2;

export interface Tick {
  pages: number;
  /** The job's own time for its write loop, ms. */
  ms: number;
}

export class Dirtier {
  private ticks = 0;

  private constructor(
    readonly job: Job,
    readonly pages: number,
    private readonly ctl: string,
  ) {}

  static async start(scratch: Scratch, regionMib: number): Promise<Dirtier> {
    const ctl = scratch.dir('dirtier.ctl');
    writeFileSync(ctl, '0\n', { mode: 0o600 });
    const job = await startJob(scratch, 'dirtier', [DIRTIER, '--region-mib', String(regionMib), '--ctl', ctl], /^ready pid/m, 180_000);
    const m = /^ready pid \d+ pages (\d+)$/m.exec(readFileSync(job.log, 'utf8'));
    if (!m) throw new Error(`dirtier: no page count in ${job.log}`);
    return new Dirtier(job, Number(m[1]), ctl);
  }

  get pid(): number {
    return this.job.pid;
  }

  /** One tick: the job rewrites `pages` pages (the next ones after the previous tick's). */
  async tick(pages: number): Promise<Tick> {
    writeFileSync(this.ctl, `${pages}\n`);
    const n = ++this.ticks;
    const line = new RegExp(`^tick ${n} pages (\\d+) ns (\\d+)$`, 'm');
    process.kill(this.job.pid, 'SIGUSR2');
    const deadline = Date.now() + TICK_TIMEOUT_MS;
    for (;;) {
      const log = readFileSync(this.job.log, 'utf8');
      const m = line.exec(log);
      if (m) {
        if (Number(m[1]) !== pages) throw new Error(`dirtier: tick ${n} wrote ${m[1]} pages, asked ${pages}`);
        return { pages, ms: Number(m[2]) / 1e6 };
      }
      if (/^tick error/m.test(log)) throw new Error(`dirtier: ${log.slice(-300)}`);
      if (Date.now() > deadline) throw new Error(`dirtier: no tick ${n} after ${TICK_TIMEOUT_MS / 1000} s: ${log.slice(-300)}`);
      await sleep(POLL_MS);
    }
  }

  kill(): Promise<void> {
    return this.job.kill();
  }
}

/** The eBPF job tracker, or undefined (said under the section's title) when it does not load here. */
export async function openTracker(title: string): Promise<JobTracker | undefined> {
  try {
    const { JobTracker } = await import('../src/tracking/bpf/job-tracker.js');
    return JobTracker.open();
  } catch (e) {
    console.log(`\n${title}: skipped, the eBPF tracker does not load: ${(e as Error).message}`);
    return undefined;
  }
}
