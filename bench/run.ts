// crinc's benchmark (`npm run bench`): the page corpus and codec table, end to end on a
// 1 GiB CRIU image, and (issue 4, later) dirty tracking. Prints tables with targets and
// PASS/MISS; asserts nothing. Everything it creates lives under one /dev/shm directory and
// is removed, and every process it starts is killed by pid, at the end or on Ctrl-C.
//
//   node dist/bench/run.js [--only corpus,e2e,store,dirty,stream] [--region-mib N] [--stream-mib 1024,4096]
import { cpus, loadavg } from 'node:os';
import { buildCorpus } from './corpus.js';
import { codecTable, TARGETS, type CodecResults } from './codec-table.js';
import { dirtyTracking } from './dirty.js';
import { E2E_TARGETS, endToEnd, type E2EResults } from './e2e.js';
import { storeCosts, storeRows, type StoreResults } from './store.js';
import { streaming } from './stream.js';
import { MIB, printTable, Scratch, since, verdict } from './util.js';

const SECTIONS = ['corpus', 'e2e', 'store', 'dirty', 'stream'] as const;
type Section = (typeof SECTIONS)[number];

function parseArgs(argv: string[]): { only: Set<Section>; regionMib: number; streamSizes: number[] } {
  let only = new Set<Section>(SECTIONS);
  let regionMib = 1024;
  let streamSizes = [1024, 4096];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--only' && argv[i + 1]) {
      const names = argv[++i]!.split(',');
      const bad = names.filter((n) => !(SECTIONS as readonly string[]).includes(n));
      if (bad.length) throw new Error(`unknown section ${bad.join(', ')}; sections: ${SECTIONS.join(', ')}`);
      only = new Set(names as Section[]);
    } else if (a === '--region-mib' && argv[i + 1]) {
      regionMib = Number(argv[++i]);
    } else if (a === '--stream-mib' && argv[i + 1]) {
      streamSizes = argv[++i]!.split(',').map(Number);
    } else {
      throw new Error(`usage: node dist/bench/run.js [--only ${SECTIONS.join(',')}] [--region-mib N] [--stream-mib N,M]`);
    }
  }
  return { only, regionMib, streamSizes };
}

/** Every target with its result, in one place. */
function summary(codec: CodecResults | undefined, e2e: E2EResults | undefined, store: StoreResults | undefined): void {
  const rows: string[][] = [];
  const runs = (v: number[]): string => v.map((x) => `${x.toFixed(2)}×`).join(', ');
  const worst = (v: number[]): number => (v.length ? Math.min(...v) : NaN);
  if (codec) {
    rows.push(['hash + zero (PageCodec.hashPages), GB/s', (codec.hashRate / 1e9).toFixed(2), `≥ ${TARGETS.hashGBps}`, verdict(codec.hashRate / 1e9, TARGETS.hashGBps)]);
    rows.push(['LZ4 compress: compressChunk per page, GB/s', (codec.lz4Compress / 1e9).toFixed(2), `≥ ${TARGETS.lz4CompressGBps}`, verdict(codec.lz4Compress / 1e9, TARGETS.lz4CompressGBps)]);
    rows.push(['LZ4 decompress: decompressChunk per page, GB/s', (codec.lz4Decompress / 1e9).toFixed(2), `≥ ${TARGETS.lz4DecompressGBps}`, verdict(codec.lz4Decompress / 1e9, TARGETS.lz4DecompressGBps)]);
    for (const t of codec.extraTargets) rows.push([t.label, (t.rate / 1e9).toFixed(2), `≥ ${t.target}`, verdict(t.rate / 1e9, t.target)]);
  }
  if (e2e) {
    const { ratios: r } = e2e;
    rows.push(['ingest, all pages stored, × cp (runs 1, 2)', runs(r.stored), `≥ ${E2E_TARGETS.storedVsCp}×`, verdict(worst(r.stored), E2E_TARGETS.storedVsCp)]);
    rows.push(['ingest, all pages new, × cp (runs 1, 2)', runs(r.new), `≥ ${E2E_TARGETS.newVsCp}×`, verdict(worst(r.new), E2E_TARGETS.newVsCp)]);
    rows.push(['restore materialization, × cp (runs 1, 2)', runs(r.restore), `≥ ${E2E_TARGETS.restoreVsCp}×`, verdict(worst(r.restore), E2E_TARGETS.restoreVsCp)]);
    rows.push(['peak RSS of the 1 GiB ingest, MiB', e2e.peakRssMiB.toFixed(0), `≤ ${E2E_TARGETS.peakRssMiB}`, verdict(e2e.peakRssMiB, E2E_TARGETS.peakRssMiB, true)]);
  }
  if (store) rows.push(...storeRows(store));
  if (rows.length) printTable('Targets (PASS only when every run meets it; printed, not asserted)', ['target', 'result', 'wanted', 'PASS/MISS'], rows);
}

async function main(): Promise<number> {
  const { only, regionMib, streamSizes } = parseArgs(process.argv.slice(2));
  const scratch = new Scratch();
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${signal}: cleaning up ${scratch.root}`);
    void scratch.cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  // A stray rejection (a worker pool's, say) must not leave processes or tmpfs behind.
  const crash = (error: unknown): void => {
    console.error(`\nbench crashed: ${(error as Error)?.stack ?? String(error)}`);
    scratch.cleanupSync();
    process.exit(1);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  const started = performance.now();
  console.log(`crinc bench: Node ${process.version}, ${cpus().length} cores, load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}, scratch ${scratch.root}`);
  let codec: CodecResults | undefined;
  let e2e: E2EResults | undefined;
  let store: StoreResults | undefined;
  let failed = 0;
  // A section that fails (src/ changing under the bench, say) is reported; the others still run.
  const section = async (name: Section, run: () => Promise<void>): Promise<void> => {
    if (!only.has(name)) return;
    try {
      await run();
    } catch (e) {
      failed++;
      console.log(`\nsection ${name} FAILED: ${(e as Error).stack ?? String(e)}`);
    }
  };
  try {
    await section('corpus', async () => {
      const t = performance.now();
      const corpus = await buildCorpus(scratch);
      console.log(`\ncorpus: ${(corpus.data.length / MIB).toFixed(0)} MiB in ${since(t).toFixed(1)} s`);
      codec = await codecTable(corpus);
    });
    await section('e2e', async () => {
      e2e = await endToEnd(scratch, regionMib);
    });
    await section('store', async () => {
      store = await storeCosts(scratch);
    });
    await section('dirty', async () => {
      if (!(await dirtyTracking(scratch))) console.log('\nDirty tracking (issue 4): not built yet (bench/dirty.ts)');
    });
    await section('stream', async () => {
      await streaming(scratch, streamSizes);
    });
  } finally {
    await scratch.cleanup();
  }
  summary(codec, e2e, store);
  console.log(`\nbench done in ${since(started).toFixed(1)} s (load average now ${loadavg().map((l) => l.toFixed(2)).join(' ')}: other work on the machine skews the numbers)`);
  return failed ? 1 : 0;
}

// Exit explicitly: a worker pool probed by the codec table must not keep the process up.
process.exit(await main());
