// The service over a long run (issue 5's acceptance): a daemon on a temporary store
// manages one job checkpointed every second with --keep-last 5 and collects garbage on
// its own schedule; every SAMPLE_EVERY_S the store's size on disk and the daemon's RSS
// are sampled. Prints the samples, their min/max, and the growth from the first sample
// after warm-up to the last. It prints; it never asserts.
//
//   npm run longrun                  10 minutes
//   npm run longrun -- --minutes 3
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { lstatSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { packageRoot } from '../src/sys/package-root.js';
import { mib, printTable, Scratch } from './util.js';

const DEFAULT_MINUTES = 10;
const SAMPLE_EVERY_S = 30;
const INTERVAL = '1s';
const KEEP_LAST = 5;
/** The daemon's gc schedule for this run (its default is 1h: here a bounded store shows within minutes). */
const GC_EVERY = '30s';
/** The job: a counter whose 16 MiB region gets 64 pages rewritten every 50 ms, all incompressible. */
const JOB_ARGS = ['--region-mib', '16', '--window-pages', '64', '--tick-ms', '50'];
/** Between samples the store's size is polled this often, for its maximum (gc makes it a sawtooth). */
const STORE_POLL_MS = 2000;
/**
 * Samples taken before this are warm-up: the first checkpoints and gc runs, while V8's
 * heap, the codec's memory and malloc's arenas reach their working size (about 150 s
 * here); growth is measured after it.
 */
const WARMUP_S = 180;

const CLI = join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
const COUNTER = join(packageRoot(), 'build', 'workloads', 'counter');

interface Sample {
  atS: number;
  storeBytes: number;
  /** The largest store size polled since the previous sample. */
  storeMaxBytes: number;
  packBytes: number;
  checkpointsKept: number;
  checkpointsTaken: number;
  gcRuns: number;
  daemonRssBytes: number;
  /** The daemon's V8 heap in use, from its latest gc log line (a leak in JS would show here). */
  daemonHeapBytes: number | null;
  /** Its Buffers and ArrayBuffers (outside the V8 heap), from the same line. */
  daemonBuffersBytes: number | null;
}

function minutesArg(): number {
  const i = process.argv.indexOf('--minutes');
  if (i < 0) return DEFAULT_MINUTES;
  const n = Number(process.argv[i + 1]);
  if (!(n > 0)) throw new Error(`--minutes wants a positive number, got "${process.argv[i + 1]}"`);
  return n;
}

/** Bytes on disk (allocated blocks) under dir. */
function diskBytes(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) total += diskBytes(path);
    else total += lstatSync(path).blocks * 512;
  }
  return total;
}

function rssBytes(pid: number): number {
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!kib) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kib[1]) * 1024;
}

function crinc(store: string, args: string[]): string {
  return execFileSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, CRINC_STORE: store } });
}

function logEvents(path: string): { msg: string; fields: Record<string, unknown> }[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; fields: Record<string, unknown> });
}

async function main(): Promise<void> {
  const minutes = minutesArg();
  const scratch = new Scratch('/tmp');
  process.once('SIGINT', () => {
    scratch.cleanupSync();
    process.exit(130);
  });
  const store = scratch.dir('store');
  const daemonLog = scratch.dir('daemon.log');
  let daemon: ChildProcess | undefined;
  try {
    daemon = spawn(process.execPath, [CLI, 'daemon', '--store', store, '--gc-every', GC_EVERY], {
      stdio: ['ignore', 'ignore', openSync(daemonLog, 'a', 0o600)],
    });
    scratch.trackPid(daemon.pid!);
    const deadline = Date.now() + 60_000;
    while (!logEvents(daemonLog).some((e) => e.msg === 'daemon started')) {
      if (Date.now() > deadline || daemon.exitCode !== null) throw new Error(`the daemon did not start:\n${readFileSync(daemonLog, 'utf8')}`);
      await sleep(100);
    }
    const registered = crinc(store, ['run', '--job', 'longrun', '--interval', INTERVAL, '--keep-last', String(KEEP_LAST), '--', COUNTER, ...JOB_ARGS]);
    const jobPid = Number(/runs as pid (\d+)/.exec(registered)![1]);
    scratch.trackPid(jobPid);
    console.log(`long run: ${minutes} min; daemon pid ${daemon.pid} (gc every ${GC_EVERY}), job pid ${jobPid}: counter ${JOB_ARGS.join(' ')}, ` +
      `checkpoint every ${INTERVAL}, --keep-last ${KEEP_LAST}; a sample every ${SAMPLE_EVERY_S} s; store ${store}`);

    const samples: Sample[] = [];
    const started = Date.now();
    const end = started + minutes * 60_000;
    for (let next = started + SAMPLE_EVERY_S * 1000; next <= end; next += SAMPLE_EVERY_S * 1000) {
      let storeMaxBytes = 0;
      while (Date.now() < next) {
        storeMaxBytes = Math.max(storeMaxBytes, diskBytes(store));
        await sleep(Math.min(STORE_POLL_MS, Math.max(0, next - Date.now())));
      }
      if (daemon.exitCode !== null) throw new Error(`the daemon exited (${daemon.exitCode}):\n${readFileSync(daemonLog, 'utf8').slice(-2000)}`);
      const events = logEvents(daemonLog);
      const gcs = events.filter((e) => e.msg === 'gc');
      const storeBytes = diskBytes(store);
      const s: Sample = {
        atS: Math.round((Date.now() - started) / 1000),
        storeBytes,
        storeMaxBytes: Math.max(storeMaxBytes, storeBytes),
        packBytes: diskBytes(join(store, 'packs')),
        checkpointsKept: (JSON.parse(crinc(store, ['list', 'longrun', '--json'])) as unknown[]).length,
        checkpointsTaken: events.filter((e) => e.msg === 'checkpoint').length,
        gcRuns: gcs.length,
        daemonRssBytes: rssBytes(daemon.pid!),
        daemonHeapBytes: gcs.length > 0 ? (gcs[gcs.length - 1]!.fields.daemonHeapUsedBytes as number) : null,
        daemonBuffersBytes: gcs.length > 0 ? (gcs[gcs.length - 1]!.fields.daemonBuffersBytes as number) : null,
      };
      samples.push(s);
      console.log(`  ${s.atS} s: store ${mib(s.storeBytes)} MiB (max ${mib(s.storeMaxBytes)}), daemon RSS ${mib(s.daemonRssBytes)} MiB, ${s.checkpointsTaken} checkpoints taken, ${s.checkpointsKept} kept`);
    }
    report(samples, logEvents(daemonLog).filter((e) => /failed/.test(e.msg)).length);
    daemon.kill('SIGTERM');
    await new Promise((resolve) => daemon!.once('exit', resolve));
    scratch.untrackPid(daemon.pid!);
  } finally {
    await scratch.cleanup();
  }
}

function report(samples: Sample[], failures: number): void {
  printTable(
    'Long run: store size and daemon RSS',
    ['T (s)', 'STORE MiB', 'MAX SINCE LAST', 'PACKS MiB', 'KEPT', 'TAKEN', 'GC RUNS', 'DAEMON RSS MiB', 'HEAP MiB', 'BUFFERS MiB'],
    samples.map((s) => [
      String(s.atS), mib(s.storeBytes), mib(s.storeMaxBytes), mib(s.packBytes), String(s.checkpointsKept), String(s.checkpointsTaken), String(s.gcRuns),
      mib(s.daemonRssBytes), s.daemonHeapBytes === null ? '-' : mib(s.daemonHeapBytes), s.daemonBuffersBytes === null ? '-' : mib(s.daemonBuffersBytes),
    ]),
  );
  if (samples.length === 0) return;
  const range = (f: (s: Sample) => number) => [Math.min(...samples.map(f)), Math.max(...samples.map(f))] as const;
  const [storeMin] = range((s) => s.storeBytes);
  const [, storeMax] = range((s) => s.storeMaxBytes);
  const [rssMin, rssMax] = range((s) => s.daemonRssBytes);
  const steady = samples.filter((s) => s.atS >= WARMUP_S);
  const growth = (f: (s: Sample) => number) =>
    steady.length >= 2 ? `${mib(f(steady[0]!))} → ${mib(f(steady[steady.length - 1]!))} MiB` : 'n/a (run longer than the warm-up)';
  const last = samples[samples.length - 1]!;
  console.log(`\nstore size: min ${mib(storeMin)} MiB, max ${mib(storeMax)} MiB (polled every ${STORE_POLL_MS / 1000} s); after ${WARMUP_S} s warm-up ${growth((s) => s.storeBytes)}`);
  console.log(`daemon RSS: min ${mib(rssMin)} MiB, max ${mib(rssMax)} MiB; after ${WARMUP_S} s warm-up ${growth((s) => s.daemonRssBytes)}`);
  console.log(`${last.checkpointsTaken} checkpoints taken, ${last.checkpointsKept} kept at the end (--keep-last ${KEEP_LAST}), ${last.gcRuns} gc runs, ${failures} failures logged`);
}

await main();
