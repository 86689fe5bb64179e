// Store format 4 without CRIU (real SQLite, real packs, the real command line):
// verify --read-data reads chunks of every size on the codec pool; a damaged chunk is
// quarantined and healed by a later copy; the daemon's scrub finds damage a slice at a
// time; a version-3 store gets its objects on open and is then rebuilt by repair from
// packs without chunk tables; crash recovery removes only what a dead writer noted.
// Checkpoints are files-only commits through the real commit path (as in gc.test.ts).
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Codecs, openCodecs } from '../src/controller/codecs.js';
import { scrubSlice } from '../src/controller/verify.js';
import { FILE_BLOCK_BYTES } from '../src/store/format.js';
import { packPath } from '../src/store/pack.js';
import { type CheckpointRecord, Repository } from '../src/store/repository.js';
import { indexedChunks, Sandbox } from './helpers.js';

/** Job-file sizes around every boundary of a 4 KiB page and a 64 KiB block. */
const SIZES = [1, 4095, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 5];

/** Content that LZ4 shrinks (stored < raw): a random 64-byte pattern repeated, so no two calls give the same bytes. */
function compressible(bytes: number): Buffer {
  const pattern = randomBytes(64);
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 64) pattern.copy(b, i);
  return b;
}

interface StoredFile {
  path: string;
  data: Buffer;
}

async function commitFiles(repo: Repository, codecs: Codecs, takenAt: number, files: StoredFile[]): Promise<CheckpointRecord> {
  const writer = repo.newChunkWriter(codecs.chunks);
  const manifests = files.map((f) => {
    const blocks = Math.ceil(f.data.length / FILE_BLOCK_BYTES);
    const ids = new Uint8Array(blocks * 16);
    for (let b = 0; b < blocks; b++) {
      const block = f.data.subarray(b * FILE_BLOCK_BYTES, Math.min((b + 1) * FILE_BLOCK_BYTES, f.data.length));
      const id = codecs.chunks.chunkId(block);
      writer.put(id, block);
      ids.set(id, b * 16);
    }
    return { role: 'job-file' as const, path: f.path, size: f.data.length, mode: 0o600, uid: 0, gid: 0, blockBytes: FILE_BLOCK_BYTES, ids, identity: null };
  });
  return repo.commitCheckpoint(
    { job: 'files', kind: 'checkpoint', takenAt, mode: 'files', rootPid: null, imageBytes: 0, pagesTotal: 0, pagesHashed: 0, pagesClean: 0, durationMs: 0, freezeMs: 0, note: null },
    manifests,
    writer,
  );
}

function openFilesStore(store: string): Repository {
  const repo = Repository.open(store, { create: true });
  const now = Date.now();
  repo.saveJob({ name: 'files', createdAt: now, command: ['true'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: now });
  return repo;
}

function flipStoredByte(store: string, id: Uint8Array, at: number): void {
  const row = indexedChunks(store).get(Buffer.from(id).toString('hex'))!;
  const fd = openSync(packPath(store, row.pack), 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, row.offset + at);
  b[0] = b[0]! ^ 0x20;
  writeSync(fd, b, 0, 1, row.offset + at);
  closeSync(fd);
}

function expectExport(sb: Sandbox, id: number, files: StoredFile[]): void {
  const out = join(sb.dir, `export-${id}-${Math.random()}`);
  sb.ok(['export', 'files', '--id', String(id), '--to', out]);
  for (const f of files) expect(readFileSync(join(out, 'files', f.path)).equals(f.data), `${f.path} of checkpoint ${id}`).toBe(true);
  rmSync(out, { recursive: true, force: true });
}

describe('verify --read-data, quarantine and healing, scrub', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());
  // Every boundary size, random (stored raw) and compressible (stored shorter); 300 compressible
  // 64 KiB blocks, which fill several pool batches by their raw size but not by their stored size;
  // and a file of 4097 blocks, whose manifest is indirect (its parts are 64 KiB chunks themselves).
  const files: StoredFile[] = [
    ...SIZES.map((n) => ({ path: `/random-${n}`, data: randomBytes(n) })),
    ...SIZES.map((n) => ({ path: `/compressible-${n}`, data: compressible(n) })),
    { path: '/many-blocks', data: Buffer.concat(Array.from({ length: 300 }, () => compressible(FILE_BLOCK_BYTES))) },
    { path: '/indirect', data: Buffer.concat([Buffer.alloc(4096 * FILE_BLOCK_BYTES, 0), compressible(10)]) },
  ];
  let first: CheckpointRecord;

  it('reads every chunk of every size on the pool and exports every file byte for byte', async () => {
    const repo = openFilesStore(sb.store);
    const codecs = await openCodecs(repo);
    first = await commitFiles(repo, codecs, Date.now(), files);
    const indirect = repo.db.prepare(`SELECT manifest_indirect FROM files WHERE path = '/indirect'`).pluck().get();
    expect(indirect).toBe(1);
    await codecs.pool.close();
    repo.close();
    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    const report = JSON.parse(v.stdout) as { ok: boolean; chunks: number; bytesRead: number };
    expect(report.ok).toBe(true);
    expect(report.bytesRead).toBeGreaterThan(300 * 1000);
    expectExport(sb, first.id, files);
  });

  it('a damaged 64 KiB chunk: verify names it and the checkpoint, list marks it, a new copy heals it', async () => {
    const victim = files.find((f) => f.path === '/many-blocks')!;
    const block = victim.data.subarray(5 * FILE_BLOCK_BYTES, 6 * FILE_BLOCK_BYTES);
    const repo = Repository.open(sb.store, { create: false });
    const codecs = await openCodecs(repo);
    const id = codecs.chunks.chunkId(block);
    flipStoredByte(sb.store, id, 40);
    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code).toBe(1);
    const report = JSON.parse(v.stdout) as { badChunks: { chunk: string }[]; damaged: { id: number; problems: string[] }[] };
    expect(report.badChunks.map((c) => c.chunk)).toEqual([Buffer.from(id).toString('hex')]);
    expect(report.damaged.map((d) => d.id)).toEqual([first.id]);
    expect(report.damaged[0]!.problems.join('\n')).toContain('/many-blocks');
    const listed = sb.json<{ id: number; damaged: string[] | null }[]>(['list']);
    expect(listed.find((c) => c.id === first.id)!.damaged).not.toBeNull();

    // The store knows the chunk is bad: a writer stores it again instead of deduplicating.
    repo.refreshAfterCollection();
    expect(repo.isQuarantined(id)).toBe(true);
    expect(repo.unknownChunks(id, [0])).toEqual([0]);
    const second = await commitFiles(repo, codecs, Date.now() + 1000, [{ path: '/again', data: Buffer.from(block) }]);
    expect(second.storedBytes).toBeGreaterThan(0);
    expect(repo.isQuarantined(id)).toBe(false);
    await codecs.pool.close();
    repo.close();
    // Healed: the first checkpoint exports whole again, nothing is marked, verify passes.
    expectExport(sb, first.id, files);
    expect(sb.json<{ damaged: string[] | null }[]>(['list']).every((c) => c.damaged === null)).toBe(true);
    expect(sb.cli(['verify', '--read-data']).code).toBe(0);
  });

  it('the scrub reads the store a slice at a time, and quarantines and marks what it finds', async () => {
    const victim = files.find((f) => f.path === '/random-65537')!;
    const repo = Repository.open(sb.store, { create: false });
    const codecs = await openCodecs(repo);
    const id = codecs.chunks.chunkId(victim.data.subarray(0, FILE_BLOCK_BYTES));
    flipStoredByte(sb.store, id, 1000);
    const packs = repo.db.prepare('SELECT count(*) FROM packs').pluck().get() as number;
    let found = 0;
    let wrapped = false;
    for (let slice = 0; slice < packs + 1 && !wrapped; slice++) {
      const r = await scrubSlice(repo, codecs, 1); // one pack per slice
      expect(r.packs).toBe(1);
      found += r.badChunks;
      wrapped = r.wrapped;
      if (r.badChunks > 0) expect(r.damaged.map((d) => d.id)).toEqual([first.id]);
    }
    expect(wrapped).toBe(true);
    expect(found).toBe(1);
    expect(repo.isQuarantined(id)).toBe(true);
    expect(repo.damagedCheckpoints().has(first.id)).toBe(true);
    await codecs.pool.close();
    repo.close();
    const refused = sb.cli(['export', 'files', '--id', String(first.id), '--to', join(sb.dir, 'refused')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`chunk ${Buffer.from(id).toString('hex')}`);
    expect(refused.stderr).not.toMatch(/a bug/);
  });
});

describe('a version-3 store: upgraded on open, rebuilt by repair from packs without chunk tables', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());
  const files: StoredFile[] = SIZES.map((n) => ({ path: `/f-${n}`, data: randomBytes(n) }));

  it('writes store.json and checkpoint objects from the index, and repair rebuilds the same', async () => {
    const repo = openFilesStore(sb.store);
    const codecs = await openCodecs(repo);
    const a = await commitFiles(repo, codecs, Date.now(), files.slice(0, 4));
    const b = await commitFiles(repo, codecs, Date.now() + 1000, files);
    await codecs.pool.close();
    repo.close();
    // What version 3 wrote: no store.json, no checkpoint objects, no chunk tables, no version-4 tables.
    rmSync(join(sb.store, 'store.json'));
    rmSync(join(sb.store, 'checkpoints'), { recursive: true });
    for (const e of readdirSync(join(sb.store, 'packs'), { recursive: true, withFileTypes: true })) if (e.name.endsWith('.idx')) rmSync(join(e.parentPath, e.name));
    const db = new Database(join(sb.store, 'index.sqlite'));
    db.exec(`DROP TABLE quarantine; DROP TABLE damaged; DROP TABLE forgotten; UPDATE meta SET value = '3' WHERE key = 'format_version'`);
    db.close();

    sb.ok(['list']);
    expect(existsSync(join(sb.store, 'store.json'))).toBe(true);
    expect(readdirSync(join(sb.store, 'checkpoints')).sort()).toEqual([a.id, b.id].map((id) => String(id).padStart(12, '0')));

    rmSync(join(sb.store, 'index.sqlite'));
    for (const suffix of ['-wal', '-shm']) rmSync(join(sb.store, `index.sqlite${suffix}`), { force: true });
    expect(sb.cli(['list']).stderr).toMatch(/crinc repair/);
    const r = sb.cli(['repair', '--read-data', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { rebuild: { checkpoints: number } }).rebuild.checkpoints).toBe(2);
    expectExport(sb, a.id, files.slice(0, 4));
    expectExport(sb, b.id, files);
  });
});

describe('crash recovery removes only what a dead writer noted', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('keeps a pack that no journal names, removes one a dead writer noted', async () => {
    const repo = openFilesStore(sb.store);
    const codecs = await openCodecs(repo);
    const x = [{ path: '/x', data: randomBytes(5000) }];
    const cp = await commitFiles(repo, codecs, Date.now(), x);
    const pack = repo.db.prepare('SELECT name FROM packs').pluck().get() as string;
    await codecs.pool.close();
    repo.close();
    // Unknown to the index, noted by nobody: it might belong to a checkpoint; it stays.
    const stranger = 'ab'.padEnd(32, '1');
    mkdirSync(join(sb.store, 'packs', 'ab'), { recursive: true, mode: 0o700 });
    copyFileSync(packPath(sb.store, pack), packPath(sb.store, stranger));
    // Noted by a writer that is dead (no process has pid 2^22, the kernel's maximum): removed.
    const abandoned = 'cd'.padEnd(32, '2');
    mkdirSync(join(sb.store, 'packs', 'cd'), { recursive: true, mode: 0o700 });
    copyFileSync(packPath(sb.store, pack), packPath(sb.store, abandoned) + '.partial');
    mkdirSync(join(sb.store, 'writers'), { recursive: true, mode: 0o700 });
    writeFileSync(join(sb.store, 'writers', `4194304-1-${'0'.repeat(12)}.journal`), `${abandoned}\n`, { mode: 0o600 });

    const r = sb.cli(['list']);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`${abandoned}.pack.partial`);
    expect(existsSync(packPath(sb.store, stranger))).toBe(true);
    expect(existsSync(packPath(sb.store, abandoned) + '.partial')).toBe(false);
    expect(readdirSync(join(sb.store, 'writers'))).toEqual([]);
    sb.ok(['gc']);
    expect(existsSync(packPath(sb.store, stranger))).toBe(true);
    expectExport(sb, cp.id, x);
  });
});

describe('a forget killed before it deleted the checkpoint objects', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('stays forgotten: repair does not bring it back, and the next open deletes the objects', async () => {
    const repo = openFilesStore(sb.store);
    const codecs = await openCodecs(repo);
    const kept: StoredFile[] = [{ path: '/k', data: randomBytes(70_000) }];
    const old = await commitFiles(repo, codecs, Date.now(), [{ path: '/o', data: randomBytes(5000) }]);
    const newest = await commitFiles(repo, codecs, Date.now() + 1000, kept);
    await codecs.pool.close();
    repo.close();
    const r = sb.cli(['prune', 'files', '--keep-last', '1'], { CRINC_FAULT: 'retention-before-objects' });
    expect(r.signal).toBe('SIGKILL');
    const object = (id: number) => join(sb.store, 'checkpoints', String(id).padStart(12, '0'));
    expect(existsSync(object(old.id)), 'the object is still there after the kill').toBe(true);
    // Repair first: it rebuilds from the objects, but keeps the old index's forgotten ids.
    sb.ok(['repair']);
    expect(sb.json<{ id: number }[]>(['list']).map((c) => c.id)).toEqual([newest.id]);
    expect(existsSync(object(old.id)), 'catch-up deleted the object').toBe(false);
    expectExport(sb, newest.id, kept);
  });
});

describe('a damaged part of an indirect manifest', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('is found when the manifest is read: export fails naming it, and it is quarantined', async () => {
    const repo = openFilesStore(sb.store);
    const codecs = await openCodecs(repo);
    // 4097 blocks: parts of 4096 ids and of 1 id; the second (16 random bytes) is stored as it is and read straight into place.
    const file = { path: '/indirect', data: Buffer.concat([Buffer.alloc(4096 * FILE_BLOCK_BYTES, 0), randomBytes(10)]) };
    const cp = await commitFiles(repo, codecs, Date.now(), [file]);
    const manifest = repo.db.prepare(`SELECT manifest FROM files WHERE path = '/indirect'`).pluck().get() as Buffer;
    expect(manifest.length).toBe(2 * 16);
    const part = manifest.subarray(16, 32);
    await codecs.pool.close();
    repo.close();
    expectExport(sb, cp.id, [file]);

    flipStoredByte(sb.store, part, 3);
    const refused = sb.cli(['export', 'files', '--id', String(cp.id), '--to', join(sb.dir, 'refused')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`chunk ${part.toString('hex')}`);
    expect(refused.stderr).not.toMatch(/a bug/);
    const again = Repository.open(sb.store, { create: false });
    expect(again.isQuarantined(part)).toBe(true);
    again.close();
  });
});
