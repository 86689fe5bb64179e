// End to end on a real CRIU image (counter workload, 1 GiB region, dumped into tmpfs):
// ingest with every page new, ingest again with every page stored, restore
// materialization; each next to `cp -r` of the same image directory on the same tmpfs,
// alternated A B A B (cold memory costs extra on first touch here). Each operation runs
// in a child process (e2e-child.ts) whose peak RSS is read. One more, profiled run of each
// shows where the time goes.
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildResult } from './e2e-child.js';
import { COUNTER, criuDump, dirBytes, startJob } from './workload.js';
import { GIB, gbps, memAvailable, MIB, printTable, type Scratch, verdict } from './util.js';

/** newVsCp: issue 11 asks 0.5× cp for an all-new ingest (an earlier issue asked 0.25×). */
export const E2E_TARGETS = { storedVsCp: 0.5, newVsCp: 0.5, restoreVsCp: 0.5, peakRssMiB: 256 };
const CHILD = join(import.meta.dirname, 'e2e-child.js');

interface Run {
  step: string;
  run: number;
  cpSeconds: number;
  cpFirstSeconds: number;
  result: ChildResult;
  target: number;
}

/**
 * `cp -r src dest` twice back to back, each copy removed at once: the first brings the
 * memory a copy needs into use (it may land on memory the VM has not touched lately and
 * pay for it), the second is the floor. The operation that runs next reuses the same
 * just-freed memory.
 */
function cpSeconds(src: string, dest: string): { first: number; floor: number } {
  const once = (): number => {
    rmSync(dest, { recursive: true, force: true });
    const t = performance.now();
    const r = spawnSync('cp', ['-r', src, dest], { encoding: 'utf8' });
    const s = (performance.now() - t) / 1000;
    if (r.status !== 0) throw new Error(`cp -r ${src} ${dest} failed: ${r.stderr}`);
    rmSync(dest, { recursive: true, force: true });
    return s;
  };
  const first = once();
  return { first, floor: once() };
}

function child(op: 'ingest' | 'restore', args: Record<string, unknown>): ChildResult {
  const r = spawnSync(process.execPath, [CHILD, op, JSON.stringify(args)], { encoding: 'utf8', maxBuffer: 16 * MIB, timeout: 300_000 });
  if (r.status !== 0) throw new Error(`${op} child failed (${r.status ?? r.signal}):\n${r.stderr}${r.stdout}`);
  const last = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(last) as ChildResult;
}

function sameTree(a: string, b: string): boolean {
  return spawnSync('diff', ['-r', '-q', a, b], { stdio: 'ignore' }).status === 0;
}

/**
 * Writes `bytes` of zeros to a tmpfs file and removes it, so that the runs below reuse
 * memory the VM has touched (first touch costs ~2.5 s/GiB here; the kernel hands freed
 * pages out again first) instead of whichever run comes first paying for it. fallocate
 * would not do: tmpfs defers clearing fallocated pages, so it touches nothing.
 */
function prewarm(path: string, bytes: number): number {
  const t = performance.now();
  const block = Buffer.alloc(4 * MIB);
  const fd = openSync(path, 'w', 0o600);
  try {
    for (let done = 0; done < bytes; done += block.length) writeSync(fd, block);
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
  return (performance.now() - t) / 1000;
}

export interface E2EResults {
  /** Per step, the op/cp ratio of each run. */
  ratios: Record<'new' | 'stored' | 'restore', number[]>;
  peakRssMiB: number;
}

export async function endToEnd(scratch: Scratch, regionMib: number): Promise<E2EResults | undefined> {
  const need = (regionMib * MIB) * 5 + GIB;
  const avail = memAvailable(readFileSync('/proc/meminfo', 'utf8'));
  if (avail < need) {
    console.log(`\nEnd to end: skipped, ${(avail / GIB).toFixed(1)} GiB available and ${(need / GIB).toFixed(1)} GiB needed (job + image + copies on tmpfs)`);
    return undefined;
  }
  const warmSeconds = prewarm(scratch.dir('prewarm'), need - GIB);
  const image = scratch.dir('e2e-image');
  const copy = scratch.dir('e2e-cp');
  const dest = scratch.dir('e2e-restored');
  const stores = [1, 2, 3].map((i) => scratch.dir(`e2e-store-${i}`));

  const started = performance.now();
  const job = await startJob(scratch, 'counter', [COUNTER, '--region-mib', String(regionMib), '--tick-ms', '0'], /^start pid/m, 180_000);
  const fillSeconds = (performance.now() - started) / 1000;
  let dumpSeconds: number;
  try {
    dumpSeconds = criuDump(job.pid, image);
  } finally {
    await job.kill();
  }
  rmSync(`${image}.work`, { recursive: true, force: true });
  const imageBytes = dirBytes(image);

  const runs: Run[] = [];
  // (a) all pages new: a fresh store each run.
  for (const i of [0, 1]) {
    const cp = cpSeconds(image, copy);
    runs.push({ step: '(a) ingest, all pages new', run: i + 1, cpSeconds: cp.floor, cpFirstSeconds: cp.first, result: child('ingest', { store: stores[i], image }), target: E2E_TARGETS.newVsCp });
  }
  rmSync(stores[0]!, { recursive: true, force: true });
  // (b) the same image again into the store of (a) run 2: every page already stored.
  for (const i of [0, 1]) {
    const cp = cpSeconds(image, copy);
    runs.push({ step: '(b) ingest, all pages stored', run: i + 1, cpSeconds: cp.floor, cpFirstSeconds: cp.first, result: child('ingest', { store: stores[1], image }), target: E2E_TARGETS.storedVsCp });
  }
  // (c) restore materialization of it.
  let identical = true;
  for (const i of [0, 1]) {
    const cp = cpSeconds(image, copy);
    rmSync(dest, { recursive: true, force: true });
    runs.push({ step: '(c) restore materialization', run: i + 1, cpSeconds: cp.floor, cpFirstSeconds: cp.first, result: child('restore', { store: stores[1], dest }), target: E2E_TARGETS.restoreVsCp });
    if (i === 0) identical = sameTree(image, dest);
    rmSync(dest, { recursive: true, force: true });
  }
  rmSync(stores[1]!, { recursive: true, force: true });

  // Profiled runs (timers around each stage: slower than the runs above).
  const profiled = [
    { title: '(a) ingest, all pages new', r: child('ingest', { store: stores[2], image, profile: true }) },
    { title: '(b) ingest, all pages stored', r: child('ingest', { store: stores[2], image, profile: true }) },
    { title: '(c) restore materialization', r: child('restore', { store: stores[2], dest, profile: true }) },
  ];
  rmSync(dest, { recursive: true, force: true });
  rmSync(stores[2]!, { recursive: true, force: true });
  rmSync(image, { recursive: true, force: true });

  const first = runs[0]!.result;
  const peakRss = Math.max(...runs.filter((r) => r.result.op === 'ingest').map((r) => r.result.vmHwmKiB)) / 1024;
  printTable(
    `End to end on a ${(imageBytes / GIB).toFixed(2)} GiB CRIU image in /dev/shm (counter --region-mib ${regionMib}; ${first.pagesTotal} pages, ${first.pagesZero} zero), each run next to cp -r of the same directory, alternated cp, op, cp, op`,
    ['step', 'run', 'op s', 'op GB/s', 'cp s', 'cp GB/s', '(1st cp s)', '× cp', 'target', 'result', 'split s', 'peak RSS MiB'],
    runs.map((r) => {
      const ratio = r.cpSeconds / r.result.seconds;
      const split = Object.values(r.result.phases).map((s) => s.toFixed(2)).join(' + ');
      return [
        r.step,
        String(r.run),
        r.result.seconds.toFixed(2),
        gbps(imageBytes / r.result.seconds),
        r.cpSeconds.toFixed(2),
        gbps(imageBytes / r.cpSeconds),
        `(${r.cpFirstSeconds.toFixed(2)})`,
        `${ratio.toFixed(2)}×`,
        `≥ ${r.target.toFixed(2)}×`,
        verdict(ratio, r.target),
        split,
        (r.result.vmHwmKiB / 1024).toFixed(0),
      ];
    }),
    [
      `op s: the operation alone in an already started process (ingest + commit; restore: manifests + materialize), as split s shows.`,
      `cp: cp -r on the same tmpfs, the second of two back-to-back copies (1st cp s: the first, which may land on memory the VM has not touched lately, ~2.5 s/GiB extra).`,
      `peak RSS of the ingest (VmHWM of the child, Node + codec + SQLite included): ${peakRss.toFixed(0)} MiB, target ≤ ${E2E_TARGETS.peakRssMiB} MiB: ${verdict(peakRss, E2E_TARGETS.peakRssMiB, true)}`,
      `all-new ingest stored ${(first.storedBytes / MIB).toFixed(0)} MiB in ${first.newChunks} new chunks (stored/raw ${(first.storedBytes / imageBytes).toFixed(3)}: the counter's pages are pseudo-random)`,
      `memory of (a) run 1 after the ingest loop, before commit (MiB): ${JSON.stringify(first.memory)}`,
      `tmpfs pre-warm (write + rm of ${((need - GIB) / GIB).toFixed(0)} GiB) ${warmSeconds.toFixed(1)} s, job fill ${fillSeconds.toFixed(1)} s, criu dump ${dumpSeconds.toFixed(2)} s; restored image byte-identical to CRIU's: ${identical ? 'yes' : 'NO'}`,
    ],
  );

  for (const { title, r } of profiled) {
    const total = r.seconds * 1000;
    printTable(
      `Profile of ${title}: ${r.seconds.toFixed(2)} s with timers (exclusive times; a wrapped call inside another is charged to the inner one)`,
      ['stage', 'calls', 'ms', 'share', 'µs/call'],
      (r.profile ?? [])
        .filter((p) => p.ms >= 0.5)
        .map((p) => [p.label, p.calls ? String(p.calls) : '-', p.ms.toFixed(0), `${((100 * p.ms) / total).toFixed(1)}%`, p.calls ? ((1000 * p.ms) / p.calls).toFixed(2) : '-']),
    );
  }
  const ratios = (prefix: string): number[] => runs.filter((r) => r.step.startsWith(prefix)).map((r) => r.cpSeconds / r.result.seconds);
  return { ratios: { new: ratios('(a)'), stored: ratios('(b)'), restore: ratios('(c)') }, peakRssMiB: peakRss };
}
