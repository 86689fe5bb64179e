// The store's packs and checkpoint objects are the truth, the index a cache (issue 11),
// with real CRIU, real processes and real SQLite: a lost index is refused by every
// command and rebuilt by `crinc repair` (every checkpoint exports byte for byte as
// before, also after SIGKILLs at random points of repair); a flipped byte is quarantined
// (verify names the checkpoints, `crinc list` marks them) and the running job's next
// checkpoint stores the page again, which heals the older ones; a deleted pack is
// reported without "a bug" and `crinc repair --forget-damaged` forgets exactly the
// checkpoints that needed it.
import Database from 'better-sqlite3';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packPath } from '../src/store/pack.js';
import { type CheckpointJson, COUNTER, crincAsync, damageStoredPage, indexedChunks, killAndWait, lastTick, Sandbox, sha256Dir, waitFor } from './helpers.js';

const JOB = 'sim';

interface ListJson extends CheckpointJson {
  damaged: string[] | null;
}

interface VerifyJson {
  ok: boolean;
  badChunks: { chunk: string }[];
  damaged: { id: number; problems: string[] }[];
}

/** Every file under the store's packs/ and checkpoints/, for "nothing was touched". */
function storeFiles(store: string): string[] {
  return ['packs', 'checkpoints'].flatMap((d) =>
    existsSync(join(store, d)) ? readdirSync(join(store, d), { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name)) : [],
  ).sort();
}

function sha256Tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, sum] of Object.entries(sha256Dir(dir))) out[name] = sum;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) for (const [name, sum] of Object.entries(sha256Tree(join(dir, e.name)))) out[`${e.name}/${name}`] = sum;
  }
  return out;
}

/** Makes the counter (--tick-ms 0) of a job tick once; returns the tick it reached. */
async function tickCounter(sb: Sandbox, job: string, pid: number): Promise<number> {
  const next = lastTick(sb.jobLog(job)) + 1;
  process.kill(pid, 'SIGUSR2');
  await waitFor(() => lastTick(sb.jobLog(job)) === next, `tick ${next}`);
  return next;
}

/** The chunk ids (hex) a checkpoint's manifests name, the zero id aside. */
function chunksOf(store: string, checkpoint: number): Set<string> {
  const db = new Database(join(store, 'index.sqlite'), { readonly: true });
  const out = new Set<string>();
  try {
    for (const m of db.prepare('SELECT manifest FROM files WHERE checkpoint = ?').pluck().all(checkpoint) as Buffer[]) {
      for (let o = 0; o < m.length; o += 16) out.add(m.subarray(o, o + 16).toString('hex'));
    }
  } finally {
    db.close();
  }
  out.delete('0'.repeat(32));
  return out;
}

describe('index lost, byte flipped, pack deleted: nothing spreads, everything is repaired', () => {
  const sb = new Sandbox();
  const kept = join(sb.dir, 'kept-images');
  let pid = 0;
  /** The export of each checkpoint while the store was whole. */
  const exported = new Map<number, Record<string, string>>();
  afterAll(() => sb.cleanup());

  async function tick(): Promise<void> {
    await tickCounter(sb, JOB, pid);
  }

  function exportOf(id: number): Record<string, string> {
    const out = join(sb.dir, `export-${id}-${Date.now()}-${Math.random()}`);
    sb.ok(['export', JOB, '--id', String(id), '--to', out]);
    const sums = sha256Tree(out);
    rmSync(out, { recursive: true, force: true });
    return sums;
  }

  /** The image files of a checkpoint's export, to compare with what CRIU wrote (CRINC_KEEP_IMAGES). */
  function imagesOf(id: number): Record<string, string> {
    const out = join(sb.dir, `images-${id}-${Date.now()}`);
    sb.ok(['export', JOB, '--id', String(id), '--to', out]);
    const sums = sha256Dir(out);
    rmSync(out, { recursive: true, force: true });
    return sums;
  }

  function list(): ListJson[] {
    return sb.json<ListJson[]>(['list']).filter((c) => c.kind === 'checkpoint');
  }

  beforeAll(async () => {
    // Pages change only on SIGUSR2 (--tick-ms 0): between two checkpoints without a tick the
    // region is the same. Two windows: a tick's pages are overwritten two ticks later.
    // Its --out file is a job file: unchanged between two checkpoints without a tick.
    const run = await sb.run(JOB, [COUNTER, '--region-mib', '1', '--window-pages', '128', '--tick-ms', '0', '--out', join(sb.dir, 'out.txt')], ['--interval', '1h'], true, { CRINC_KEEP_IMAGES: kept });
    pid = run.pid;
    for (let i = 0; i < 3; i++) {
      await tick();
      sb.json<CheckpointJson>(['checkpoint', JOB], { CRINC_KEEP_IMAGES: kept });
    }
    for (const c of list()) exported.set(c.id, exportOf(c.id));
  });

  it('index deleted: every command refuses, touches nothing and names crinc repair', () => {
    const before = storeFiles(sb.store);
    renameSync(join(sb.store, 'index.sqlite'), join(sb.dir, 'index.sqlite.lost'));
    for (const suffix of ['-wal', '-shm']) rmSync(join(sb.store, `index.sqlite${suffix}`), { force: true });
    const first = [...exported.keys()][0]!;
    for (const args of [['list'], ['jobs'], ['checkpoint', JOB], ['restore', JOB], ['export', JOB, '--id', String(first), '--to', join(sb.dir, 'x')],
      ['gc'], ['verify'], ['prune', JOB, '--keep-last', '1'], ['run', '--job', 'other', '--', COUNTER]]) {
      const r = sb.cli(args);
      expect(r.code, `crinc ${args.join(' ')}`).toBe(1);
      expect(r.stderr, `crinc ${args.join(' ')}`).toMatch(/index \(index\.sqlite\) is missing; nothing was changed\. Rebuild the index .* crinc repair --store /);
      expect(r.stderr).not.toMatch(/a bug/);
    }
    expect(storeFiles(sb.store)).toEqual(before);
  });

  it('crinc repair rebuilds the index: every checkpoint exports byte for byte as before', () => {
    const r = sb.cli(['repair', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { rebuild: { checkpoints: number; unreadablePacks: unknown[] }; verify: { ok: boolean } };
    expect(report.rebuild.checkpoints).toBe(exported.size);
    expect(report.rebuild.unreadablePacks).toEqual([]);
    expect(report.verify.ok).toBe(true);
    expect(list().map((c) => c.id)).toEqual([...exported.keys()]);
    for (const [id, sums] of exported) expect(exportOf(id), `export of ${id} after repair`).toEqual(sums);
    // Again: repair is idempotent.
    sb.ok(['repair']);
    for (const [id, sums] of exported) expect(exportOf(id)).toEqual(sums);
  });

  it('SIGKILL at random points of repair (and before its swap) leaves a store that repairs and exports the same', async () => {
    const kill = sb.cli(['repair'], { CRINC_FAULT: 'repair-before-swap' });
    expect(kill.signal).toBe('SIGKILL');
    expect(sb.cli(['list']).code).toBe(0); // the old index is still whole
    for (let round = 0; round < 4; round++) {
      // With the index gone half of the time, so that the killed repair is the only way back.
      if (round % 2 === 0) rmSync(join(sb.store, 'index.sqlite'), { force: true });
      const run = crincAsync(sb.store, ['repair']);
      await sleep(50 + Math.floor(Math.random() * 600));
      run.kill();
      await run.done;
    }
    sb.ok(['repair']);
    expect(list().map((c) => c.id)).toEqual([...exported.keys()]);
    for (const [id, sums] of exported) expect(exportOf(id), `export of ${id} after killed repairs`).toEqual(sums);
    expect(readdirSync(sb.store).filter((n) => n.startsWith('index.sqlite.rebuild'))).toEqual([]);
  });

  it('a flipped byte: verify names the checkpoints, list marks them, the next checkpoint stores the page again and heals them', async () => {
    const ids = [...exported.keys()];
    const newest = ids[ids.length - 1]!;
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    // A page of the region in the newest and the one before: one that no tick changes from now on.
    const manifests = ids.slice(-2).map((id) => db.prepare(`SELECT manifest FROM files WHERE checkpoint = ? AND path LIKE 'pages-%' ORDER BY length(manifest) DESC LIMIT 1`).pluck().get(id) as Buffer);
    const inOlder = new Set<string>();
    for (let o = 0; o < manifests[0]!.length; o += 16) inOlder.add(manifests[0]!.subarray(o, o + 16).toString('hex'));
    const chunks = indexedChunks(sb.store);
    const locate = { get: (id: Buffer) => chunks.get(id.toString('hex')) };
    let target: { id: string; pack: string; offset: number } | undefined;
    for (let o = manifests[1]!.length - 16; o >= 0 && !target; o -= 16) {
      const id = manifests[1]!.subarray(o, o + 16);
      const row = locate.get(id) as { pack: string; offset: number; compression: number } | undefined;
      if (row && row.compression === 0 && inOlder.has(id.toString('hex'))) target = { id: id.toString('hex'), pack: row.pack, offset: row.offset };
    }
    // And the block of the job file (the same in the last two checkpoints: no tick since).
    const fileBlock = db.prepare(`SELECT manifest FROM files WHERE checkpoint = ? AND role = 'job-file'`).pluck().get(newest) as Buffer;
    expect(fileBlock.length).toBe(16);
    const fileRow = locate.get(fileBlock) as { pack: string; offset: number };
    db.close();
    expect(target, 'a stable, uncompressed page').toBeDefined();
    for (const [pack, at] of [[target!.pack, target!.offset + 33], [fileRow.pack, fileRow.offset + 5]] as const) {
      const fd = openSync(packPath(sb.store, pack), 'r+');
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, at);
      b[0] = b[0]! ^ 0x10;
      writeSync(fd, b, 0, 1, at);
      closeSync(fd);
    }

    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code).toBe(1);
    const report = JSON.parse(v.stdout) as VerifyJson;
    expect(report.badChunks.map((c) => c.chunk).sort()).toEqual([target!.id, fileBlock.toString('hex')].sort());
    const damagedIds = report.damaged.map((d) => d.id).sort((x, y) => x - y);
    expect(damagedIds).toEqual(expect.arrayContaining(ids.slice(-2)));
    const marked = list().filter((c) => c.damaged !== null).map((c) => c.id);
    expect(marked).toEqual(damagedIds);
    expect(sb.ok(['list'])).toMatch(new RegExp(`^${newest} DAMAGED`, 'm'));
    const refused = sb.cli(['export', JOB, '--id', String(newest), '--to', join(sb.dir, 'damaged-export')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`chunk ${target!.id}`);
    expect(refused.stderr).not.toMatch(/a bug/);

    // The running job still holds the right page and file: its next checkpoint (no tick: same
    // memory, same file) stores both again: the page though tracking calls it clean, the file
    // though its identity did not change.
    const next = sb.json<CheckpointJson>(['checkpoint', JOB], { CRINC_KEEP_IMAGES: kept });
    expect(imagesOf(next.id)).toEqual(sha256Dir(join(kept, String(next.id))));
    const after = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    const placed = indexedChunks(sb.store);
    const where = placed.get(target!.id)?.pack;
    expect(where, 'the chunk now lives in the new copy').not.toBe(target!.pack);
    expect(after.prepare('SELECT count(*) FROM quarantine').pluck().get()).toBe(0);
    const fileWhere = placed.get(Buffer.from(fileBlock).toString('hex'))?.pack;
    expect(fileWhere, 'the job file block now lives in the new copy').not.toBe(fileRow.pack);
    after.close();
    // Healed: the damaged checkpoints restore (export) as CRIU wrote them, and nothing is marked.
    expect(list().filter((c) => c.damaged !== null)).toEqual([]);
    for (const id of damagedIds) expect(exportOf(id), `healed checkpoint ${id}`).toEqual(exported.get(id));
    // The index points at the new copy; the damaged one lies unreferenced in its pack until GC repacks it.
    expect(sb.cli(['verify', '--read-data']).code).toBe(0);
    exported.set(next.id, exportOf(next.id));
  });

  it('a healed checkpoint restores, memory intact', async () => {
    const ids = [...exported.keys()];
    const id = ids[ids.length - 2]!;
    await killAndWait(pid);
    const r = sb.json<{ pid: number }>(['restore', JOB, '--id', String(id)]);
    sb.track(r.pid);
    pid = r.pid;
    await sleep(200);
    process.kill(pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog(JOB))?.[0], 'the restored job to verify its memory');
    expect(verdict).toMatch(/^verify ok tick \d+$/);
  });

  it('a deleted pack: typed errors, verify names the checkpoints, repair --forget-damaged forgets exactly those', async () => {
    // Three more ticks and checkpoints: a tick's pages live two ticks, so the middle one's pack is not the newest's.
    for (let i = 0; i < 3; i++) {
      await tick();
      const cp = sb.json<CheckpointJson>(['checkpoint', JOB]);
      exported.set(cp.id, exportOf(cp.id));
    }
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    const ids = list().map((c) => c.id);
    // Which checkpoints need each pack.
    const packOf = new Map<string, string>();
    for (const [id, c] of indexedChunks(sb.store)) packOf.set(id, c.pack);
    const users = new Map<string, Set<number>>();
    for (const id of ids) {
      for (const m of db.prepare('SELECT manifest FROM files WHERE checkpoint = ?').pluck().all(id) as Buffer[]) {
        for (let o = 0; o < m.length; o += 16) {
          const pack = packOf.get(m.subarray(o, o + 16).toString('hex'));
          if (!pack) continue;
          if (!users.has(pack)) users.set(pack, new Set());
          users.get(pack)!.add(id);
        }
      }
    }
    db.close();
    // Chunks stored twice (the healed page): a pack holding one is not the only copy of what it holds.
    const copies = new Map<string, number>();
    for (const e of readdirSync(join(sb.store, 'packs'), { recursive: true, withFileTypes: true }).filter((f) => f.name.endsWith('.idx'))) {
      const idx = readFileSync(join(e.parentPath, e.name));
      for (let o = 24; o < idx.length; o += 32) copies.set(idx.subarray(o, o + 16).toString('hex'), (copies.get(idx.subarray(o, o + 16).toString('hex')) ?? 0) + 1);
    }
    const soleCopies = (pack: string) => [...packOf].every(([id, p]) => p !== pack || copies.get(id) === 1);
    const newest = ids[ids.length - 1]!;
    const victim = [...users].filter(([pack, u]) => !u.has(newest) && soleCopies(pack)).sort((a, b) => a[1].size - b[1].size)[0];
    expect(victim, 'a pack the newest checkpoint does not use').toBeDefined();
    rmSync(packPath(sb.store, victim![0]));

    const v = sb.cli(['verify', '--json']);
    expect(v.code).toBe(1);
    const damaged = (JSON.parse(v.stdout) as VerifyJson).damaged.map((d) => d.id).sort((x, y) => x - y);
    expect(damaged).toEqual([...victim![1]].sort((x, y) => x - y));
    expect(list().filter((c) => c.damaged !== null).map((c) => c.id)).toEqual(damaged);
    const e = sb.cli(['export', JOB, '--id', String(damaged[0]), '--to', join(sb.dir, 'missing-export')]);
    expect(e.code).toBe(1);
    expect(e.stderr).toMatch(/pack [0-9a-f]{32} is missing|chunk [0-9a-f]{32} is referenced by a checkpoint but is not in the store/);
    expect(e.stderr).not.toMatch(/a bug/);
    const gc = sb.cli(['gc']);
    expect(gc.stderr).not.toMatch(/a bug/);

    const r = sb.cli(['repair', '--read-data', '--forget-damaged', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { forgotten: { id: number }[] };
    expect(report.forgotten.map((d) => d.id).sort((x, y) => x - y)).toEqual(damaged);
    const left = list().map((c) => c.id);
    expect(left).toEqual(ids.filter((id) => !damaged.includes(id)));
    for (const id of left) if (exported.has(id)) expect(exportOf(id)).toEqual(exported.get(id));
    expect(sb.cli(['verify']).code).toBe(0);
  });
});

describe('the checkpoint clean pages were tracked against is forgotten, then collected', () => {
  const sb = new Sandbox();
  const JOB2 = 'tracked';
  let pid = 0;
  afterAll(() => sb.cleanup());

  it("the running job's next checkpoint reads those pages again, and restores", async () => {
    // crinc run with dirty tracking: its controller keeps the newest checkpoint's page ids
    // in memory, to reuse for pages not written since.
    const run = await sb.run(JOB2, [COUNTER, '--region-mib', '8', '--window-pages', '64', '--tick-ms', '0'], ['--interval', '1h']);
    pid = run.pid;
    await tickCounter(sb, JOB2, pid);
    const older = sb.json<CheckpointJson>(['checkpoint', JOB2]);
    await tickCounter(sb, JOB2, pid);
    const newest = sb.json<CheckpointJson>(['checkpoint', JOB2]);
    // A page only the newest holds is damaged: repair forgets the newest, GC collects the
    // rest of what only it held (the pages the last tick wrote).
    const olderChunks = chunksOf(sb.store, older.id);
    const own = [...chunksOf(sb.store, newest.id)].filter((id) => !olderChunks.has(id));
    expect(own.length).toBeGreaterThan(60);
    damageStoredPage(sb.store, (id) => own.includes(id));
    const r = sb.cli(['repair', '--read-data', '--forget-damaged', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { forgotten: { id: number }[] }).forgotten.map((d) => d.id)).toEqual([newest.id]);
    sb.ok(['gc']);
    const kept = new Set(indexedChunks(sb.store).keys());
    expect(own.filter((id) => kept.has(id))).toEqual([]);

    // No tick since: the pages are those of the forgotten checkpoint, clean since it.
    const next = sb.json<CheckpointJson>(['checkpoint', JOB2]);
    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    await killAndWait(pid);
    const restored = sb.json<{ pid: number; checkpoint: number }>(['restore', JOB2]);
    sb.track(restored.pid);
    expect(restored.checkpoint).toBe(next.id);
    process.kill(restored.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog(JOB2))?.[0], 'the restored job to verify its memory');
    expect(verdict).toMatch(/^verify ok tick 2$/);
  });
});
