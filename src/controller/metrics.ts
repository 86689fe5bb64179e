// The daemon's metrics for an operator, in Prometheus' text format (prom-client) on
// `crinc daemon --metrics HOST:PORT`: per job, checkpoint durations and frozen times,
// bytes and pages, failures by cause, the last successful checkpoint, tracking mode and
// write-fault rate; per store, its size and chunk count. Names: README, "Metrics".
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { asOperatingError, CrincError } from '../errors.js';
import type { CheckpointRecord } from '../store/repository.js';
import type { TrackingSession } from './tracking-session.js';

/** Where the endpoint listens unless told: this machine only (the figures name jobs and their commands' activity). */
export const DEFAULT_METRICS_HOST = '127.0.0.1';
export const DEFAULT_METRICS_PORT = 9464;
export const METRICS_PATH = '/metrics';
/** Checkpoint durations, seconds: a small job takes ~0.1 s, a 10 GiB one tens of seconds. */
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** Frozen times, seconds: what the job feels; CRIU's own freeze of a small job is tens of ms. */
const FROZEN_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class MetricsAddressError extends CrincError {
  override name = 'MetricsAddressError';
}

/** "HOST:PORT", "PORT", or "[v6]:PORT" → where to listen. */
export function parseMetricsAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]:|([^:]+):)?(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) throw new MetricsAddressError(`cannot read "${text}" as HOST:PORT (e.g. ${DEFAULT_METRICS_HOST}:${DEFAULT_METRICS_PORT}, or a port alone for ${DEFAULT_METRICS_HOST})`);
  return { host: m[1] ?? m[2] ?? DEFAULT_METRICS_HOST, port };
}

/** What the daemon knows at scrape time. */
export interface MetricsSource {
  /** The managed jobs with their tracking sessions (none: tracking off). */
  jobs(): { job: string; tracking: TrackingSession | undefined; lastSuccess: CheckpointRecord | undefined }[];
  store(): { packBytes: number; packs: number; chunks: number };
}

/** The cause of a failure as a label: the error's class, and its errno for a system error. */
function failureCause(e: unknown): string {
  const operating = asOperatingError(e);
  if (!operating) return 'bug';
  const code = (operating as { code?: unknown }).code;
  return typeof code === 'string' ? `${operating.name}:${code}` : operating.name;
}

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly duration: Histogram<'job'>;
  private readonly frozen: Histogram<'job'>;
  private readonly imageBytes: Counter<'job'>;
  private readonly newBytes: Counter<'job'>;
  private readonly pagesHashed: Counter<'job'>;
  private readonly pagesClean: Counter<'job'>;
  private readonly failures: Counter<'job' | 'cause'>;
  private server: Server | undefined;

  constructor(source: MetricsSource) {
    const registers = [this.registry];
    this.duration = new Histogram({ name: 'crinc_checkpoint_duration_seconds', help: 'Time of a checkpoint, from the dump to the commit', labelNames: ['job'], buckets: DURATION_BUCKETS, registers });
    this.frozen = new Histogram({ name: 'crinc_checkpoint_frozen_seconds', help: 'Time the job was frozen for a checkpoint', labelNames: ['job'], buckets: FROZEN_BUCKETS, registers });
    this.imageBytes = new Counter({ name: 'crinc_checkpoint_image_bytes_total', help: "Bytes of CRIU's images of the checkpoints taken", labelNames: ['job'], registers });
    this.newBytes = new Counter({ name: 'crinc_checkpoint_new_bytes_total', help: 'Bytes the checkpoints added to the store (new chunks, compressed)', labelNames: ['job'], registers });
    this.pagesHashed = new Counter({ name: 'crinc_checkpoint_pages_hashed_total', help: 'Pages read and hashed by checkpoints', labelNames: ['job'], registers });
    this.pagesClean = new Counter({ name: 'crinc_checkpoint_pages_clean_total', help: 'Pages reused unread, proven clean by dirty tracking', labelNames: ['job'], registers });
    this.failures = new Counter({ name: 'crinc_checkpoint_failures_total', help: 'Failed checkpoints, by cause (error class, and errno for a system error)', labelNames: ['job', 'cause'], registers });
    new Gauge({
      name: 'crinc_last_checkpoint_success_timestamp_seconds',
      help: 'When the newest committed checkpoint of a managed job was taken (Unix time)',
      labelNames: ['job'],
      registers,
      collect() {
        this.reset();
        for (const j of source.jobs()) if (j.lastSuccess) this.set({ job: j.job }, j.lastSuccess.takenAt / 1000);
      },
    });
    new Gauge({
      name: 'crinc_tracking_mode',
      help: "A managed job's dirty tracking: 1 for its mode (armed, disarmed: every page hashed because most are written, off)",
      labelNames: ['job', 'mode'],
      registers,
      collect() {
        this.reset();
        for (const j of source.jobs()) {
          const mode = j.tracking?.mode ?? 'off';
          for (const m of ['armed', 'disarmed', 'off']) this.set({ job: j.job, mode: m }, m === mode ? 1 : 0);
        }
      },
    });
    new Gauge({
      name: 'crinc_write_faults_per_second',
      help: "A managed job's write faults per second since its last checkpoint (eBPF; tracking on only)",
      labelNames: ['job'],
      registers,
      collect() {
        this.reset();
        for (const j of source.jobs()) {
          if (!j.tracking) continue;
          const a = j.tracking.peek();
          this.set({ job: j.job }, a.writeFaults / Math.max((Date.now() - a.startedAt) / 1000, 1e-3));
        }
      },
    });
    // One read of the index per scrape for the three store figures.
    let figures: ReturnType<MetricsSource['store']> | undefined;
    new Gauge({
      name: 'crinc_store_size_bytes',
      help: 'Bytes of the packs in the store',
      registers,
      collect() {
        figures = source.store();
        this.set(figures.packBytes);
      },
    });
    new Gauge({ name: 'crinc_store_packs', help: 'Pack files in the store', registers, collect() { this.set((figures ?? source.store()).packs); } });
    new Gauge({ name: 'crinc_store_chunks', help: 'Entries of the chunk index: each stored chunk, a chunk stored again twice until the next merge', registers, collect() { this.set((figures ?? source.store()).chunks); } });
  }

  checkpointTaken(cp: CheckpointRecord): void {
    const job = { job: cp.job };
    this.duration.observe(job, cp.durationMs / 1000);
    this.frozen.observe(job, cp.freezeMs / 1000);
    this.imageBytes.inc(job, cp.imageBytes);
    this.newBytes.inc(job, cp.storedBytes);
    this.pagesHashed.inc(job, cp.pagesHashed);
    this.pagesClean.inc(job, cp.pagesClean);
  }

  checkpointFailed(job: string, e: unknown): void {
    this.failures.inc({ job, cause: failureCause(e) });
  }

  /** Serves GET /metrics; resolves once it listens. */
  async listen(host: string, port: number): Promise<void> {
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || req.url?.split('?')[0] !== METRICS_PATH) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end(`crinc serves its metrics at ${METRICS_PATH}\n`);
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(e.code === 'EADDRINUSE' ? new MetricsAddressError(`cannot serve metrics on ${host}:${port}: the address is in use; pick another --metrics HOST:PORT`) : e),
      );
      server.listen(port, host, () => resolve());
    });
    this.server = server;
  }

  close(): void {
    this.server?.close();
  }
}
