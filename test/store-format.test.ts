// Store format 4: a version-1 store is upgraded in place on open; a newer one is refused.
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { StoreFormatError } from '../src/store/errors.js';
import { encodeStoreObject } from '../src/store/objects.js';
import { Repository } from '../src/store/repository.js';

describe('store format versions', () => {
  const dir = mkdtempSync('/tmp/crinc-format-');
  const store = join(dir, 'store');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function rawIndex(): Database.Database {
    return new Database(join(store, 'index.sqlite'));
  }

  it('upgrades a version-1 store: retention table, gc generation, managed jobs, quarantine, store.json, version 4', () => {
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
    expect(check.prepare(`SELECT value FROM meta WHERE key = 'format_version'`).pluck().get()).toBe('4');
    expect(check.prepare(`SELECT count(*) FROM managed_jobs`).pluck().get()).toBe(0);
    expect(check.prepare(`SELECT count(*) FROM quarantine`).pluck().get()).toBe(0);
    check.close();
    // The identity moved out of the index, so that the index can be rebuilt without losing the secret.
    const written = JSON.parse(readFileSync(join(store, 'store.json'), 'utf8')) as { secret: string };
    expect(Buffer.from(written.secret, 'base64').equals(secret)).toBe(true);
  });

  it('refuses a store of a newer format, and leaves it as it is', () => {
    const db = rawIndex();
    db.prepare(`UPDATE meta SET value = '5' WHERE key = 'format_version'`).run();
    db.close();
    expect(() => Repository.open(store, { create: false })).toThrow(StoreFormatError);
    expect(() => Repository.open(store, { create: false })).toThrow(/has store format 5; this crinc reads formats 1 to 4/);
    const check = rawIndex();
    expect(check.prepare(`SELECT value FROM meta WHERE key = 'format_version'`).pluck().get()).toBe('5');
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
});
