// Store format 5: a version-1 or version-4 store is upgraded in place on open; a newer one is refused.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openCodecs } from '../../src/controller/codecs.js';
import { CHUNK_INDEX_DIR } from '../../src/store/chunk-index.js';
import { StoreFormatError } from '../../src/store/errors.js';
import { FILE_BLOCK_BYTES } from '../../src/store/format.js';
import { encodeStoreObject, PACK_INDEX_SUFFIX, packKey } from '../../src/store/objects.js';
import { Repository } from '../../src/store/repository.js';

describe('store format versions', () => {
  const dir = mkdtempSync('/tmp/crinc-format-');
  const store = join(dir, 'store');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function rawIndex(): Database.Database {
    return new Database(join(store, 'index.sqlite'));
  }

  it('upgrades a version-1 store: retention table, gc generation, managed jobs, quarantine, store.json, version 5', () => {
    Repository.open(store, { create: true }).close();
    // Turn the new store into what version 1 wrote: no retention or managed_jobs table, no gc_generation.
    const db = rawIndex();
    db.exec(`DROP TABLE retention; DROP TABLE managed_jobs; DROP TABLE quarantine; DROP TABLE damaged; DROP TABLE forgotten;
      DELETE FROM meta WHERE key = 'gc_generation'; UPDATE meta SET value = '1' WHERE key = 'format_version'`);
    const secret = db.prepare(`SELECT value FROM meta WHERE key = 'secret'`).pluck().get() as Buffer;
    db.close();
    rmSync(join(store, 'store.json'));

    const repo = Repository.open(store, { create: false });
    expect(repo.gcGeneration()).toBe(0);
    repo.saveJob({ name: 'j', createdAt: 1, command: ['x'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: 1 });
    repo.setJobRetention('j', { keepLast: 2 });
    expect(repo.jobRetention('j')).toEqual({ keepLast: 2 });
    repo.close();
    const check = rawIndex();
    expect(check.prepare(`SELECT value FROM meta WHERE key = 'format_version'`).pluck().get()).toBe('5');
    expect(check.prepare(`SELECT count(*) FROM managed_jobs`).pluck().get()).toBe(0);
    expect(check.prepare(`SELECT count(*) FROM quarantine`).pluck().get()).toBe(0);
    check.close();
    // The identity moved out of the index, so that the index can be rebuilt without losing the secret.
    const written = JSON.parse(readFileSync(join(store, 'store.json'), 'utf8')) as { secret: string };
    expect(Buffer.from(written.secret, 'base64').equals(secret)).toBe(true);
  });

  it('refuses a store of a newer format, and leaves it as it is', () => {
    const db = rawIndex();
    db.prepare(`UPDATE meta SET value = '6' WHERE key = 'format_version'`).run();
    db.close();
    expect(() => Repository.open(store, { create: false })).toThrow(StoreFormatError);
    expect(() => Repository.open(store, { create: false })).toThrow(/has store format 6; this crinc reads formats 1 to 5/);
    const check = rawIndex();
    expect(check.prepare(`SELECT value FROM meta WHERE key = 'format_version'`).pluck().get()).toBe('6');
    check.close();
  });

  it('a new store takes the identity of a store.json already there (a creation killed before its index, or a concurrent one)', () => {
    const fresh = join(dir, 'fresh');
    mkdirSync(fresh, { mode: 0o700 });
    const identity = { storeId: 'ab'.repeat(16), createdAt: '2026-01-01T00:00:00.000Z', secret: new Uint8Array(randomBytes(192)) };
    writeFileSync(join(fresh, 'store.json'), encodeStoreObject(identity), { mode: 0o600 });
    const repo = Repository.open(fresh, { create: true });
    expect(Buffer.from(repo.secret).equals(Buffer.from(identity.secret))).toBe(true);
    repo.close();
  });

  it('upgrades a version-4 store: its chunk rows become runs, and every chunk is read back as stored', async () => {
    const v4 = join(dir, 'v4');
    mkdirSync(v4, { mode: 0o700 });
    const repo = Repository.open(v4, { create: true });
    const codecs = await openCodecs(repo);
    repo.saveJob({ name: 'files', createdAt: 1, command: ['true'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: 1 });
    // Two checkpoints, two packs; blocks of distinct content, one shared by both.
    const blocks = Array.from({ length: 5 }, (_, i) => Buffer.from(randomBytes(FILE_BLOCK_BYTES).fill(i, 0, 100)));
    const ids: Uint8Array[] = [];
    for (const [k, part] of [blocks.slice(0, 3), blocks.slice(2)].entries()) {
      const writer = repo.newChunkWriter(codecs.chunks);
      const partIds = part.map((b) => {
        const id = codecs.chunks.chunkId(b);
        writer.put(id, b);
        return id;
      });
      ids.push(...partIds);
      await repo.commitCheckpoint(
        { job: 'files', kind: 'checkpoint', takenAt: 1000 + k, mode: 'files', rootPid: null, imageBytes: 0, pagesTotal: 0, pagesHashed: 0, pagesClean: 0, durationMs: 0, freezeMs: 0, note: null },
        [{ role: 'job-file', path: '/data', size: part.length * FILE_BLOCK_BYTES, mode: 0o600, uid: 0, gid: 0, blockBytes: FILE_BLOCK_BYTES, ids: Buffer.concat(partIds), identity: null }],
        writer,
      );
    }
    const placed = new Map<string, { pack: number; offset: number; stored: number; raw: number; compression: number }>();
    const packIds = new Map((repo.db.prepare('SELECT name, id FROM packs').raw().all() as [string, number][]).map(([n, i]) => [n, i]));
    repo.chunkIndex.forEach((id, at, place) => {
      const where = repo.chunkIndex.location(place, id, at);
      placed.set(id.toString('hex', at, at + 16), { pack: packIds.get(place.pack)!, offset: where.offset, stored: where.storedLength, raw: where.rawLength, compression: where.compression });
    });
    await codecs.pool.close();
    repo.close();
    expect(placed.size).toBe(5);

    // What version 4 had: a chunks table, no runs; one pack written before format 4 (no .idx).
    const db = new Database(join(v4, 'index.sqlite'));
    db.exec(`DROP TABLE index_runs; UPDATE meta SET value = '4' WHERE key = 'format_version';
      CREATE TABLE chunks (id BLOB PRIMARY KEY, pack INTEGER NOT NULL REFERENCES packs(id), offset INTEGER NOT NULL,
        stored_length INTEGER NOT NULL, raw_length INTEGER NOT NULL, compression INTEGER NOT NULL) WITHOUT ROWID`);
    const ins = db.prepare('INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)');
    for (const [id, c] of placed) ins.run(Buffer.from(id, 'hex'), c.pack, c.offset, c.stored, c.raw, c.compression);
    const oldest = db.prepare('SELECT name FROM packs ORDER BY id LIMIT 1').pluck().get() as string;
    db.close();
    rmSync(join(v4, CHUNK_INDEX_DIR), { recursive: true });
    rmSync(join(v4, packKey(oldest, PACK_INDEX_SUFFIX)));

    const upgraded = Repository.open(v4, { create: false });
    const upgradedCodecs = await openCodecs(upgraded);
    try {
      expect(upgraded.db.prepare(`SELECT value FROM meta WHERE key = 'format_version'`).pluck().get()).toBe('5');
      expect(upgraded.db.prepare(`SELECT count(*) FROM sqlite_master WHERE name = 'chunks'`).pluck().get()).toBe(0);
      expect(upgraded.db.prepare('SELECT count(*) FROM index_runs').pluck().get()).toBe(2);
      for (const [i, id] of ids.entries()) expect(Buffer.from(await upgraded.readChunk(id, upgradedCodecs.chunks)).equals(blocks[i < 3 ? i : i - 1]!)).toBe(true);
      // The pack without a chunk table has one again, from its blob headers.
      expect(readFileSync(join(v4, packKey(oldest, PACK_INDEX_SUFFIX))).length).toBeGreaterThan(0);
    } finally {
      await upgradedCodecs.pool.close();
      upgraded.close();
    }
  });
});
