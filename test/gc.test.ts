// GC beside running checkpoints, with real CRIU and real processes: two jobs under
// `crinc run` (long-lived controllers that cache chunk ids) are checkpointed while GCs
// run, over and over, with `--keep-last 2` making garbage. Afterwards every checkpoint
// exports byte for byte as CRIU wrote it, the newest of each job restores, and the
// store holds exactly the chunks its checkpoints name. Then verify finds damage, and
// the store's permissions are root-only.
import Database from 'better-sqlite3';
import { chmodSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCodecs } from '../src/controller/codecs.js';
import { FILE_BLOCK_BYTES } from '../src/store/format.js';
import { packPath } from '../src/store/pack.js';
import { Repository } from '../src/store/repository.js';
import { lockStore } from '../src/store/store-lock.js';
import { type CheckpointJson, COUNTER, crincAsync, type GcJson, indexedChunks, killAndWait, Sandbox, sha256Dir, waitFor } from './helpers.js';

const JOBS = ['alpha', 'beta'];
const ROUNDS = 3;

describe('gc while two jobs are checkpointed', () => {
  const sb = new Sandbox();
  const kept = join(sb.dir, 'kept-images');
  const pids = new Map<string, number>();
  let freed = 0;
  afterAll(() => sb.cleanup());

  beforeAll(async () => {
    mkdirSync(kept);
    for (const job of JOBS) {
      // alpha with dirty tracking (clean pages reuse the previous checkpoint's ids), beta without.
      const extra = ['--interval', '1h', '--keep-last', '2', ...(job === 'beta' ? ['--no-tracking'] : [])];
      const { pid } = await sb.run(job, [COUNTER, '--region-mib', '4', '--window-pages', '256', '--tick-ms', '40'], extra);
      pids.set(job, pid);
    }
  });

  it('checkpoints both jobs and collects garbage at the same time, round after round', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const runs = [
        ...JOBS.map((job) => crincAsync(sb.store, ['checkpoint', job, '--json'], { CRINC_KEEP_IMAGES: kept })),
        crincAsync(sb.store, ['gc', '--json']),
      ];
      const results = await Promise.all(runs.map((r) => r.done));
      for (const r of results) expect(r.code, r.stderr).toBe(0);
      freed += (JSON.parse(results[2]!.stdout) as GcJson).bytesFreed;
      await sleep(300);
    }
    const last = sb.json<GcJson>(['gc']);
    freed += last.bytesFreed;
    expect(freed).toBeGreaterThan(0);
    // Nothing left to collect: a second GC finds no dead chunk.
    expect(sb.json<GcJson>(['gc', '--dry-run']).deadChunks).toBe(0);
  });

  it('keeps exactly the chunks that checkpoints name', () => {
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    const referenced = new Set<string>();
    const zero = '0'.repeat(32);
    for (const row of db.prepare('SELECT manifest, manifest_indirect FROM files').all() as { manifest: Buffer; manifest_indirect: number }[]) {
      expect(row.manifest_indirect).toBe(0); // small jobs: every manifest inline
      for (let o = 0; o < row.manifest.length; o += 16) {
        const id = row.manifest.subarray(o, o + 16).toString('hex');
        if (id !== zero) referenced.add(id);
      }
    }
    const stored = new Set(indexedChunks(sb.store).keys());
    db.close();
    expect(stored.size).toBe(referenced.size);
    for (const id of referenced) expect(stored.has(id)).toBe(true);
  });

  it('every checkpoint left exports byte for byte, and verify --read-data passes', () => {
    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    const list = sb.json<CheckpointJson[]>(['list']).filter((c) => c.kind === 'checkpoint');
    for (const job of JOBS) expect(list.filter((c) => c.job === job).length).toBe(2); // --keep-last 2
    for (const cp of list) {
      const out = join(sb.dir, `export-${cp.id}`);
      sb.ok(['export', cp.job, '--id', String(cp.id), '--to', out]);
      expect(sha256Dir(out)).toEqual(sha256Dir(join(kept, String(cp.id))));
    }
  });

  it('the newest checkpoint of each job restores, memory intact', async () => {
    for (const job of JOBS) {
      await killAndWait(pids.get(job)!);
      const r = sb.json<{ pid: number }>(['restore', job]);
      sb.track(r.pid);
      pids.set(job, r.pid);
      await sleep(200);
      process.kill(r.pid, 'SIGUSR1');
      const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog(job))?.[0], `${job} to verify its memory`);
      expect(verdict).toMatch(/^verify ok tick \d+$/);
    }
  });

  it('creates everything root-only, and refuses a store others can write', () => {
    const walk = (dir: string): void => {
      expect(statSync(dir).mode & 0o777, dir).toBe(0o700);
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        if (e.isDirectory()) walk(path);
        else expect(statSync(path).mode & 0o777, path).toBe(0o600);
      }
    };
    walk(sb.store);
    expect(readdirSync(join(sb.store, 'locks'))).toEqual(expect.arrayContaining(['_store.lock', '_store-gate.lock', '_gc.lock']));
    chmodSync(sb.store, 0o720);
    const r = sb.cli(['gc']);
    chmodSync(sb.store, 0o700);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/has mode 720: others could read or change checkpoints, which hold the job's memory. Fix: chmod 700/);
  });

  it('verify names the damaged checkpoints: a flipped byte (--read-data), a missing pack', () => {
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    // A stored page of alpha's newest checkpoint (raw pages: one flipped byte cannot be decoded around).
    const newest = db.prepare(`SELECT id, taken_at FROM checkpoints WHERE job = 'alpha' AND kind = 'checkpoint' ORDER BY id DESC LIMIT 1`).get() as { id: number; taken_at: number };
    const manifest = db.prepare(`SELECT manifest FROM files WHERE checkpoint = ? AND path LIKE 'pages-%'`).pluck().get(newest.id) as Buffer;
    const chunks = indexedChunks(sb.store);
    const locate = { get: (id: Buffer) => chunks.get(id.toString('hex')) };
    let target: { id: string; pack: string; offset: number } | undefined;
    for (let o = 0; o < manifest.length && !target; o += 16) {
      const row = locate.get(manifest.subarray(o, o + 16)) as { pack: string; offset: number; compression: number } | undefined;
      if (row && row.compression === 0) target = { id: manifest.subarray(o, o + 16).toString('hex'), pack: row.pack, offset: row.offset };
    }
    expect(target).toBeDefined();
    const fd = openSync(packPath(sb.store, target!.pack), 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, target!.offset + 7);
    b[0] = b[0]! ^ 0x01;
    writeSync(fd, b, 0, 1, target!.offset + 7);
    closeSync(fd);

    expect(sb.cli(['verify']).code).toBe(0); // structure intact: only reading the data finds it
    const r = sb.cli(['verify', '--read-data', '--json']);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout) as { ok: boolean; badChunks: { chunk: string }[]; damaged: { id: number; job: string; takenAt: string; problems: string[] }[] };
    expect(report.ok).toBe(false);
    expect(report.badChunks.map((c) => c.chunk)).toEqual([target!.id]);
    const hit = report.damaged.find((d) => d.id === newest.id)!;
    expect(hit.job).toBe('alpha');
    expect(hit.takenAt).toBe(new Date(newest.taken_at).toISOString());
    expect(hit.problems.join('\n')).toContain(`chunk ${target!.id} of pages-`);
    // Every damaged checkpoint names that chunk; the others are not listed.
    for (const d of report.damaged) expect(d.problems.join('\n')).toContain(target!.id);
    const text = sb.cli(['verify', '--read-data']);
    expect(text.stdout).toContain(`checkpoint ${newest.id} of alpha (checkpoint, taken ${new Date(newest.taken_at).toISOString()}) is damaged:`);

    // A pack file gone: found without reading data; every checkpoint with chunks in it is named.
    const victim = db.prepare(`SELECT name FROM packs WHERE name != ? ORDER BY id LIMIT 1`).pluck().get(target!.pack) as string;
    db.close();
    rmSync(packPath(sb.store, victim));
    const missing = sb.cli(['verify', '--json']);
    expect(missing.code).toBe(1);
    const m = JSON.parse(missing.stdout) as { packProblems: { pack: string; problem: string }[]; damaged: { problems: string[] }[] };
    expect(m.packProblems).toEqual([{ pack: victim, problem: 'the pack file is missing' }]);
    expect(m.damaged.length).toBeGreaterThan(0);
    // Each needs the missing pack, or the chunk the flipped byte damaged (quarantined by the run above).
    for (const d of m.damaged) {
      expect(d.problems.join('\n')).toMatch(new RegExp(`is in a damaged pack \\(the pack file is missing\\)|chunk ${target!.id} of \\S+ is quarantined`));
    }
  });
});

describe('a long-lived process after another process collected garbage', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('forgets the chunk ids it cached, so a chunk GC deleted is written again, not referenced', async () => {
    // In this test process, as in a `crinc run` controller: one Repository kept open,
    // the previous checkpoint's ids cached as known. Checkpoint rows without a process (files only) are
    // committed through the real commit path.
    const repo = Repository.open(sb.store, { create: true });
    const codecs = await openCodecs(repo);
    const now = Date.now();
    repo.saveJob({ name: 'files', createdAt: now, command: ['true'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: now });
    const block = Buffer.alloc(FILE_BLOCK_BYTES, 7);
    const blockId = codecs.chunks.chunkId(block);
    const commit = (takenAt: number) => {
      const writer = repo.newChunkWriter(codecs.chunks);
      writer.put(blockId, block);
      return repo.commitCheckpoint(
        { job: 'files', kind: 'checkpoint', takenAt, mode: 'files', rootPid: null, imageBytes: 0, pagesTotal: 0, pagesHashed: 0, pagesClean: 0, durationMs: 0, freezeMs: 0, note: null },
        [{ role: 'job-file', path: '/data', size: block.length, mode: 0o600, uid: 0, gid: 0, blockBytes: FILE_BLOCK_BYTES, ids: blockId, identity: null }],
        writer,
      );
    };
    const first = await commit(now);
    repo.rememberKnown(blockId);
    expect(repo.hasChunk(blockId)).toBe(true);
    await repo.forgetCheckpoints([first.id]);

    // Another process collects: the block's chunk is deleted.
    const gc = sb.json<GcJson>(['gc']);
    expect(gc.deadChunks).toBe(1);

    // The next commit checks the GC generation first (as takeCheckpoint does, under the store lock).
    const lock = await lockStore(sb.store, 'shared');
    repo.refreshAfterCollection();
    expect(repo.hasChunk(blockId)).toBe(false);
    const second = await commit(now + 1000);
    lock.release();
    expect(second.storedBytes).toBeGreaterThan(0); // written again
    await codecs.pool.close();
    repo.close();

    expect(sb.cli(['verify', '--read-data']).code).toBe(0);
    const out = join(sb.dir, 'export');
    sb.ok(['export', 'files', '--id', String(second.id), '--to', out]);
    expect(readFileSync(join(out, 'files', 'data')).equals(block)).toBe(true);
  });
});
