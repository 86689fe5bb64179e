// `crinc daemon --metrics`: the Prometheus endpoint scraped while the daemon runs two
// jobs (real CRIU, real eBPF tracking), its figures checked against `crinc list --json`
// and the store's own index and packs; a failed checkpoint counted by cause.
import Database from 'better-sqlite3';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CheckpointJson, CLI, COUNTER, exitOf, indexedChunks, Sandbox, waitFor } from './helpers.js';

const DEFAULT_ENDPOINT = 'http://127.0.0.1:9464/metrics';

/** Prometheus text → "name{labels}" → value. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+?(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

async function scrape(): Promise<Map<string, number>> {
  const res = await fetch(DEFAULT_ENDPOINT);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toContain('text/plain');
  return parse(await res.text());
}

function packBytesOnDisk(store: string): number {
  let total = 0;
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.name.endsWith('.pack')) total += statSync(join(dir, e.name)).size;
    }
  };
  walk(join(store, 'packs'));
  return total;
}

describe('crinc daemon --metrics', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('serves per-job and per-store figures that match crinc list and the store; failures by cause', async () => {
    const daemon = spawn(process.execPath, [CLI, 'daemon', '--metrics'], { env: { ...process.env, CRINC_STORE: sb.store }, stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    daemon.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    try {
      await waitFor(() => log.includes('daemon started'), `the daemon to start\n${log}`, 60_000);
      // Bound to this machine only by default.
      const listening = spawnSync('ss', ['-Hltn', 'sport = :9464'], { encoding: 'utf8' }).stdout.trim();
      expect(listening).toMatch(/127\.0\.0\.1:9464/);
      expect(listening).not.toMatch(/(0\.0\.0\.0|\*|\[::\]):9464/);

      const jobs = ['alpha', 'beta'];
      const pids: Record<string, number> = {};
      for (const [i, job] of jobs.entries()) {
        const out = sb.ok(['run', '--job', job, '--interval', '1h', '--', COUNTER, '--region-mib', String(4 + 4 * i), '--window-pages', '16', '--tick-ms', '50']);
        pids[job] = Number(/runs as pid (\d+)/.exec(out)![1]);
        sb.track(pids[job]!);
      }
      // Checkpoints through the daemon: two of alpha, three of beta.
      for (const job of ['alpha', 'beta', 'alpha', 'beta', 'beta']) {
        sb.ok(['checkpoint', job]);
        await new Promise((r) => setTimeout(r, 200));
      }
      const m = await scrape();
      for (const job of jobs) {
        const cps = sb.json<CheckpointJson[]>(['list', job]);
        const sum = (f: (c: CheckpointJson) => number) => cps.reduce((a, c) => a + f(c), 0);
        const l = `{job="${job}"}`;
        expect(m.get(`crinc_checkpoint_duration_seconds_count${l}`), job).toBe(cps.length);
        expect(m.get(`crinc_checkpoint_frozen_seconds_count${l}`)).toBe(cps.length);
        // crinc list rounds milliseconds to a tenth.
        expect(m.get(`crinc_checkpoint_duration_seconds_sum${l}`)).toBeCloseTo(sum((c) => c.durationMs) / 1000, 3);
        expect(m.get(`crinc_checkpoint_frozen_seconds_sum${l}`)).toBeCloseTo(sum((c) => c.freezeMs) / 1000, 3);
        expect(m.get(`crinc_checkpoint_image_bytes_total${l}`)).toBe(sum((c) => c.imageBytes));
        expect(m.get(`crinc_checkpoint_new_bytes_total${l}`)).toBe(sum((c) => c.storedBytes));
        expect(m.get(`crinc_checkpoint_pages_hashed_total${l}`)).toBe(sum((c) => c.pagesHashed));
        expect(m.get(`crinc_checkpoint_pages_clean_total${l}`)).toBe(sum((c) => c.pagesClean));
        expect(m.get(`crinc_last_checkpoint_success_timestamp_seconds${l}`)).toBe(Date.parse(cps.at(-1)!.takenAt) / 1000);
        // The mode the daemon reports for the job (armed, or disarmed when most pages are written every interval).
        const status = sb.json<{ tracking: { mode: string } }>(['status', job]);
        expect(['armed', 'disarmed']).toContain(status.tracking.mode);
        for (const mode of ['armed', 'disarmed', 'off']) expect(m.get(`crinc_tracking_mode{job="${job}",mode="${mode}"}`), mode).toBe(mode === status.tracking.mode ? 1 : 0);
        expect(m.get(`crinc_write_faults_per_second${l}`)).toBeGreaterThanOrEqual(0);
      }
      const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
      // Entries of the chunk index's runs: each chunk at least once (twice while a copy awaits a merge).
      const entries = db.prepare('SELECT coalesce(sum(entries), 0) FROM index_runs').pluck().get() as number;
      db.close();
      expect(m.get('crinc_store_chunks')).toBe(entries);
      expect(entries).toBeGreaterThanOrEqual(indexedChunks(sb.store).size);
      expect(m.get('crinc_store_size_bytes')).toBe(packBytesOnDisk(sb.store));
      expect(m.get('crinc_store_packs')).toBeGreaterThan(0);

      // A failed checkpoint: another tracer holds alpha.
      const strace = spawn('strace', ['-p', String(pids.alpha), '-o', '/dev/null'], { stdio: 'ignore' });
      try {
        await waitFor(() => /TracerPid:\s*[1-9]/.test(spawnSync('cat', [`/proc/${pids.alpha}/status`], { encoding: 'utf8' }).stdout), 'strace to attach');
        expect(sb.cli(['checkpoint', 'alpha']).code).toBe(1);
      } finally {
        strace.kill('SIGKILL');
        await exitOf(strace);
      }
      const after = await scrape();
      expect(after.get('crinc_checkpoint_failures_total{job="alpha",cause="CriuFailedError"}')).toBe(1);
      expect(after.get('crinc_checkpoint_duration_seconds_count{job="alpha"}')).toBe(2);
      expect([...after.keys()].some((k) => k.startsWith('crinc_checkpoint_failures_total{job="beta"'))).toBe(false);
    } finally {
      daemon.kill('SIGTERM');
      await exitOf(daemon);
    }
  });
});
