// One end-to-end operation in its own process, so that its peak RSS is its own:
//   node dist/bench/e2e-child.js ingest  '{"store":…,"image":…,"profile":false}'
//   node dist/bench/e2e-child.js restore '{"store":…,"dest":…,"profile":false}'
// Ingest does what src/controller/checkpoint.ts does with CRIU's page stream, fed from a
// local image directory instead (each pagemap's pages read from its pages-N.img), then
// Repository.commitCheckpoint. Restore does restore.ts's first step:
// load the manifests, materializeImages into dest. Prints one JSON line (ChildResult).
import { closeSync, copyFileSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PE_PRESENT, readPagemap } from '../src/criu/images.js';
import type { PageSource } from '../src/criu/page-server.js';
import type { PageCodec } from '../src/codec/page-codec.js';
import { openCodecs } from '../src/controller/codecs.js';
import { Ingest, NO_CLEAN_PAGES, type StreamedPagesFile } from '../src/controller/ingest.js';
import { materializeImages } from '../src/controller/materialize.js';
import { PackReader, PackWriter } from '../src/store/pack.js';
import { ChunkWriter, type FileManifest, Repository } from '../src/store/repository.js';
import { Profiler, type ProfileRow } from './profile.js';

export const BENCH_JOB = 'bench';

export interface ChildResult {
  op: 'ingest' | 'restore';
  /** The measured operation (ingest + commit, or manifests + materialize), seconds. */
  seconds: number;
  phases: Record<string, number>;
  imageBytes: number;
  storedBytes: number;
  newChunks: number;
  pagesTotal: number;
  pagesZero: number;
  maxRssKiB: number;
  vmHwmKiB: number;
  /** process.memoryUsage() in MiB after the ingest/materialize loop, before commit. */
  memory: Record<string, number>;
  profile?: ProfileRow[];
}

function memoryMiB(): Record<string, number> {
  return Object.fromEntries(Object.entries(process.memoryUsage()).map(([k, v]) => [k, Math.round(v / 2 ** 20)]));
}

function vmHwmKiB(): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** A local CRIU image directory fed to the ingest as CRIU would stream it. */
async function ingestImageDirectory(ingest: Ingest, dir: string): Promise<FileManifest[]> {
  const small = mkdtempSync(join(tmpdir(), 'crinc-bench-images-'));
  try {
    const streamed: StreamedPagesFile[] = [];
    for (const name of readdirSync(dir).sort()) {
      if (/^pages-\d+\.img$/.test(name)) continue;
      copyFileSync(join(dir, name), join(small, name));
      const process = /^pagemap-(\d+)\.img$/.exec(name);
      if (!name.startsWith('pagemap')) continue;
      const pagemap = readPagemap(join(dir, name));
      const pagesName = `pages-${pagemap.pagesId}.img`;
      const fd = openSync(join(dir, pagesName), 'r');
      const source: PageSource = {
        read: (into) => {
          for (let done = 0; done < into.length; ) done += readSync(fd, into, done, into.length - done, null);
        },
        skip: () => {
          throw new Error('nothing is clean in a bench ingest');
        },
      };
      try {
        const stream = ingest.beginPages(pagesName, process ? Number(process[1]) : null, NO_CLEAN_PAGES);
        for (const e of pagemap.entries) if (e.flags & PE_PRESENT) await ingest.addPages(stream, Number(e.vaddr), e.nrPages, source);
        streamed.push(ingest.endPages(stream));
      } finally {
        closeSync(fd);
      }
    }
    await ingest.finishPages();
    return ingest.imageDirectory(small, streamed);
  } finally {
    rmSync(small, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const [op, json] = process.argv.slice(2);
  const args = JSON.parse(json ?? '{}') as { store: string; image?: string; dest?: string; profile?: boolean };
  const repo = Repository.open(args.store, { create: true });
  const codecs = await openCodecs(repo);
  if (!repo.findJob(BENCH_JOB)) {
    const now = Date.now();
    repo.saveJob({ name: BENCH_JOB, createdAt: now, command: ['counter'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: now });
  }
  const profiler = args.profile ? new Profiler() : undefined;
  let result: ChildResult;
  if (op === 'ingest') {
    if (profiler) {
      profiler.wrapFs({ readSync: 'read image files (readSync)', writeSync: 'pack writes (writeSync)', fsyncSync: 'fsync', renameSync: 'rename' });
      profiler.wrap(codecs.pages, 'hashPages', 'hash + zero check (PageCodec.hashPages)');
      profiler.wrap(codecs.pages, 'chunkId', 'chunk ids of 64 KiB blocks and manifest parts (chunkId)');
      profiler.wrap(repo, 'hasChunk', 'SQLite lookup per chunk (Repository.hasChunk)');
      profiler.wrap(codecs.chunks, 'compress', 'LZ4 compress (compressChunk)');
      profiler.wrap(ChunkWriter.prototype, 'put', 'ChunkWriter.put itself (idHex, dedup Set)');
      profiler.wrap(PackWriter.prototype, 'add', 'pack add (blob header alloc, buffer copy)');
      profiler.wrap(PackWriter.prototype, 'finish', 'pack finish (trailer, flush)');
      profiler.wrap(repo, 'commitCheckpoint', 'commit: SQLite transaction (chunk rows, manifests)');
      profiler.wrap(ChunkWriter.prototype, 'storeManifest', 'manifest parts (storeManifest)');
      profiler.reset();
    }
    const writer = repo.newChunkWriter(codecs.chunks);
    const ingest = new Ingest(codecs, repo, writer);
    const t0 = performance.now();
    const images = await ingestImageDirectory(ingest, args.image!);
    const t1 = performance.now();
    const memory = memoryMiB();
    const s = ingest.stats;
    const record = await repo.commitCheckpoint(
      {
        job: BENCH_JOB,
        kind: 'checkpoint',
        takenAt: Date.now(),
        mode: 'full',
        rootPid: null,
        imageBytes: s.imageBytes,
        pagesTotal: s.pagesTotal,
        pagesHashed: s.pagesHashed,
        pagesClean: s.pagesClean,
        durationMs: t1 - t0,
        freezeMs: 0,
        note: 'bench',
      },
      images,
      writer,
    );
    const t2 = performance.now();
    result = {
      op: 'ingest',
      seconds: (t2 - t0) / 1000,
      phases: { ingest: (t1 - t0) / 1000, commit: (t2 - t1) / 1000 },
      imageBytes: s.imageBytes,
      storedBytes: record.storedBytes,
      newChunks: writer.newChunks,
      pagesTotal: s.pagesTotal,
      pagesZero: s.pagesZero,
      maxRssKiB: 0,
      vmHwmKiB: 0,
      memory,
      ...(profiler ? { profile: profiler.rows(t2 - t0, 'ingest loop and the rest (JS per page: ids, subarrays)') } : {}),
    };
  } else if (op === 'restore') {
    if (profiler) {
      profiler.wrapFs({ readSync: 'pack reads (readSync)', writeSync: 'image writes (writeSync)', fsyncSync: 'fsync', ftruncateSync: 'ftruncate' });
      profiler.wrap(repo, 'readChunk', 'readChunk itself: SQLite lookup per chunk, checks');
      profiler.wrap(PackReader.prototype, 'readInto', 'pack reads (PackReader.readInto)');
      profiler.wrap(codecs.chunks, 'decompress', 'LZ4 decompress (decompressChunk)');
      profiler.wrap(codecs.pages as PageCodec, 'chunkId', 'verify: chunk id of every chunk read (chunkId)');
      profiler.wrap(repo, 'checkpointFiles', 'load manifests (checkpointFiles)');
      profiler.reset();
    }
    const t0 = performance.now();
    const cp = repo.latestCheckpoint(BENCH_JOB);
    if (!cp) throw new Error(`no checkpoint in ${args.store}`);
    const files = await repo.checkpointFiles(cp.id, codecs.chunks, 'image');
    const t1 = performance.now();
    await materializeImages(repo, files, codecs, args.dest!);
    const t2 = performance.now();
    const memory = memoryMiB();
    result = {
      op: 'restore',
      seconds: (t2 - t0) / 1000,
      phases: { manifests: (t1 - t0) / 1000, materialize: (t2 - t1) / 1000 },
      imageBytes: cp.imageBytes,
      storedBytes: cp.storedBytes,
      newChunks: 0,
      pagesTotal: cp.pagesTotal,
      pagesZero: 0,
      maxRssKiB: 0,
      vmHwmKiB: 0,
      memory,
      ...(profiler ? { profile: profiler.rows(t2 - t0, 'materialize loop and the rest (JS per block)') } : {}),
    };
  } else {
    throw new Error(`unknown operation ${op}`);
  }
  repo.close();
  result.maxRssKiB = process.resourceUsage().maxRSS;
  result.vmHwmKiB = vmHwmKiB();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
// Exit explicitly: a codec worker pool that src/ may start must not keep the child up.
process.exit(0);
