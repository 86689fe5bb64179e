// Crash safety with real CRIU and real processes: the process doing a checkpoint, a
// prune or a GC is SIGKILLed at every named fault point (CRINC_FAULT, src/sys/fault.ts)
// and at random times. After each kill, the next command cleans up what was left,
// `crinc verify --read-data` passes, the oldest and the newest committed checkpoints
// restore and the job goes on from their counters, and every other one exports byte
// for byte as CRIU wrote it. The counter ticks only on SIGUSR2, so the counter of every
// checkpoint is known exactly.
import Database from 'better-sqlite3';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  alive, type CheckpointJson, COUNTER, crincAsync, killAndWait, lastTick, Sandbox, sha256Dir, waitFor,
} from './helpers.js';

const JOB = 'crash';
const KEEP = ['--keep-last', '3'];

describe('SIGKILL at every fault point and at random times', () => {
  const sb = new Sandbox();
  const kept = join(sb.dir, 'kept-images');
  const env = { CRINC_KEEP_IMAGES: kept };
  /** The counter of each committed checkpoint. */
  const counterOf = new Map<number, number>();
  /** Checkpoints exported and compared already: verify --read-data covers their chunks after later kills. */
  const exported = new Set<number>();
  let pid = 0;
  let counter = 0;
  afterAll(() => sb.cleanup());

  beforeAll(async () => {
    mkdirSync(kept);
    pid = await sb.runForFaults(JOB);
    expect(alive(pid)).toBe(true);
  });

  async function tick(): Promise<void> {
    process.kill(pid, 'SIGUSR2');
    counter++;
    await waitFor(() => lastTick(sb.jobLog(JOB)) === counter, `tick ${counter}`);
  }

  /** The committed process checkpoints, read from the index (as `crinc list` does, without a process start). */
  function checkpoints(): { id: number }[] {
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    try {
      return db.prepare(`SELECT id FROM checkpoints WHERE job = ? AND kind = 'checkpoint' ORDER BY taken_at, id`).all(JOB) as { id: number }[];
    } finally {
      db.close();
    }
  }

  /** A checkpoint that is not killed. */
  async function checkpoint(): Promise<number> {
    await tick();
    const cp = sb.json<CheckpointJson>(['checkpoint', JOB, ...KEEP], env);
    counterOf.set(cp.id, counter);
    return cp.id;
  }

  /** Runs crinc with CRINC_FAULT=point; it must die by SIGKILL there. */
  function killedAt(point: string, args: string[]): void {
    const r = sb.cli(args, { ...env, CRINC_FAULT: point });
    expect(r.signal, `crinc ${args.join(' ')} with CRINC_FAULT=${point} was not killed:\n${r.stdout}${r.stderr}`).toBe('SIGKILL');
  }

  /** A checkpoint the process died in: committed (the counter is the current one) or not. */
  function noteCommitted(before: Set<number>): number[] {
    const added = checkpoints().map((c) => c.id).filter((id) => !before.has(id) && !counterOf.has(id));
    for (const id of added) counterOf.set(id, counter);
    return added;
  }

  async function restoreAndCheck(id: number): Promise<void> {
    await killAndWait(pid);
    const r = sb.json<{ pid: number; checkpoint: number }>(['restore', JOB, '--id', String(id)]);
    sb.track(r.pid);
    pid = r.pid;
    counter = counterOf.get(id)!;
    // The log is back at the checkpoint; the process goes on from its counter, memory intact.
    expect(lastTick(sb.jobLog(JOB))).toBe(counter);
    await tick();
    process.kill(pid, 'SIGUSR1');
    await waitFor(() => new RegExp(`^verify (ok|FAIL).* tick ${counter}`, 'm').exec(sb.jobLog(JOB))?.[0], `the job restored from ${id} to verify`);
    expect(sb.jobLog(JOB)).toMatch(new RegExp(`^verify ok tick ${counter}$`, 'm'));
  }

  /** Staging dirs whose crinc is dead, and which processes (a CRIU it started) still name. */
  function stagingStillInUse(): string[] {
    const dead = readdirSync('/dev/shm').filter((n) => { const m = /^crinc-[a-z]+-(\d+)-/.exec(n); return m && !alive(Number(m[1])); });
    const used: string[] = [];
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
      } catch {
        continue; // exited meanwhile
      }
      used.push(...dead.filter((d) => cmd.includes(`/dev/shm/${d}/`)));
    }
    return used;
  }

  /** What every kill must leave: a clean, verified store whose checkpoints all come back. */
  async function checkStore(what: string): Promise<void> {
    // A CRIU whose crinc was killed finishes on its own (its hook answers "fail", the job
    // thaws); its staging stays until then.
    await waitFor(() => stagingStillInUse().length === 0, `the CRIU of a killed checkpoint to finish (after ${what})`, 60_000);
    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code, `after ${what}: ${v.stdout}${v.stderr}`).toBe(0);
    // The open before verify removed what the killed process left; nothing unindexed stays.
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    // Each pack with its chunk table (.idx); each checkpoint with its object.
    const indexed = (db.prepare('SELECT name FROM packs').pluck().all() as string[]).flatMap((n) => [`${n}.pack`, `${n}.idx`]);
    const indexedCheckpoints = (db.prepare('SELECT id FROM checkpoints').pluck().all() as number[]).map((id) => String(id).padStart(12, '0'));
    db.close();
    const onDisk = readdirSync(join(sb.store, 'packs'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => e.name);
    expect(onDisk.sort(), `pack files after ${what}`).toEqual(indexed.sort());
    expect(readdirSync(join(sb.store, 'checkpoints')).sort(), `checkpoint objects after ${what}`).toEqual(indexedCheckpoints.sort());
    expect(existsSync(join(sb.store, 'writers')) ? readdirSync(join(sb.store, 'writers')) : [], `writer journals after ${what}`).toEqual([]);
    expect(readdirSync('/dev/shm').filter((n) => { const m = /^crinc-[a-z]+-(\d+)-/.exec(n); return m && !alive(Number(m[1])); }), 'staging of dead processes').toEqual([]);

    const ids = checkpoints().map((c) => c.id);
    for (const id of ids) expect(counterOf.has(id), `checkpoint ${id} has a known counter`).toBe(true);
    for (const id of ids.slice(1, -1)) {
      // A checkpoint indexed by catch-up was killed before CRINC_KEEP_IMAGES kept its images:
      // it was restored and verified as the newest right after its kill instead.
      if (exported.has(id) || !existsSync(join(kept, String(id)))) continue;
      exported.add(id);
      const out = join(sb.dir, `export-${id}-${Date.now()}`);
      sb.ok(['export', JOB, '--id', String(id), '--to', out]);
      expect(sha256Dir(out), `export of ${id} after ${what}`).toEqual(sha256Dir(join(kept, String(id))));
    }
    await restoreAndCheck(ids[0]!);
    // The newest last: the job goes on from it.
    if (ids.length > 1) await restoreAndCheck(ids[ids.length - 1]!);
  }

  it('takes a first checkpoint', async () => {
    await checkpoint();
    await checkStore('the first checkpoint');
  });

  for (const point of ['checkpoint-while-frozen', 'checkpoint-after-dump', 'checkpoint-mid-pack', 'commit-packs-written']) {
    it(`killed at ${point}: nothing committed, the job runs on`, async () => {
      const before = new Set(checkpoints().map((c) => c.id));
      await tick();
      killedAt(point, ['checkpoint', JOB, ...KEEP]);
      expect(noteCommitted(before)).toEqual([]);
      // Never left frozen: the job ticks.
      await tick();
      await checkStore(point);
    });
  }

  for (const point of ['commit-object-written', 'commit-in-transaction']) {
    it(`killed at ${point}: committed (its object is the commit point), indexed by the next open`, async () => {
      const before = new Set(checkpoints().map((c) => c.id));
      await tick();
      killedAt(point, ['checkpoint', JOB, ...KEEP]);
      expect(noteCommitted(before), 'not in the index before an open').toEqual([]);
      sb.ok(['list']);
      expect(noteCommitted(before).length).toBe(1);
      await checkStore(point);
    });
  }

  it('killed at checkpoint-after-commit: committed', async () => {
    const before = new Set(checkpoints().map((c) => c.id));
    await tick();
    killedAt('checkpoint-after-commit', ['checkpoint', JOB, ...KEEP]);
    expect(noteCommitted(before).length).toBe(1);
    await checkStore('checkpoint-after-commit');
  });

  it('killed in retention after a checkpoint: committed, nothing forgotten', async () => {
    await checkpoint();
    expect(checkpoints().length).toBe(3); // the next commit makes 4: --keep-last 3 forgets one
    const before = new Set(checkpoints().map((c) => c.id));
    await tick();
    killedAt('retention-in-transaction', ['checkpoint', JOB, ...KEEP]);
    expect(noteCommitted(before).length).toBe(1);
    expect(checkpoints().length).toBe(4); // the transaction that forgot one was rolled back
    await checkStore('retention-in-transaction (checkpoint)');
  });

  it('killed in crinc prune: nothing forgotten', async () => {
    const before = checkpoints().map((c) => c.id);
    killedAt('retention-in-transaction', ['prune', JOB, '--keep-last', '1']);
    expect(checkpoints().map((c) => c.id)).toEqual(before);
    await checkStore('retention-in-transaction (prune)');
  });

  it('has garbage to collect and a pack to repack', async () => {
    await checkpoint(); // forgets two: the first checkpoint's full pack is mostly dead now
    const plan = sb.json<{ deadChunks: number; repackedPacks: number; bytesFreed: number }>(['gc', '--dry-run']);
    expect(plan.deadChunks).toBeGreaterThan(0);
    expect(plan.repackedPacks).toBeGreaterThan(0);
    expect(plan.bytesFreed).toBeGreaterThan(0);
  });

  for (const point of ['gc-repack-written', 'gc-before-delete', 'gc-mid-sweep', 'gc-after-delete']) {
    it(`killed at ${point}`, async () => {
      if (point === 'gc-mid-sweep') await checkpoint(); // new garbage: the repack was committed
      killedAt(point, ['gc']);
      await checkStore(point);
    });
  }

  for (const [round, command] of ['checkpoint', 'gc', 'checkpoint'].entries()) {
    it(`killed at a random time during ${command} (${round + 1} of 3)`, async () => {
      const before = new Set(checkpoints().map((c) => c.id));
      await tick();
      if (command === 'gc') await checkpoint(); // something to collect
      const args = command === 'gc' ? ['gc'] : ['checkpoint', JOB, ...KEEP];
      const run = crincAsync(sb.store, args, env);
      const delayMs = 100 + Math.floor(Math.random() * 1200);
      await sleep(delayMs);
      run.kill();
      const r = await run.done;
      // Killed after its commit point (the checkpoint's object), a checkpoint is indexed by the next open.
      sb.ok(['list']);
      noteCommitted(before);
      await checkStore(`a kill of ${command} after ${delayMs} ms (${r.signal ?? `exit ${r.code}`})`);
    });
  }

  it('the power cut: a staging dir and a half-written pack are cleaned up and never referenced', async () => {
    // A new job with a 16 MiB region: killed after the 10th pool batch (256 pages each)
    // of its first checkpoint went to the pack writer, which has flushed 4 MiB by then.
    await killAndWait(pid);
    const big = await sb.run('big', [COUNTER, '--region-mib', '16', '--window-pages', '256', '--tick-ms', '0'], ['--interval', '1h', '--no-tracking']);
    big.controller.kill('SIGINT');
    await waitFor(() => big.controller.exitCode !== null, 'the controller to stop');
    const r = sb.cli(['checkpoint', 'big'], { CRINC_FAULT: 'checkpoint-mid-pack:10' });
    expect(r.signal).toBe('SIGKILL');
    const partials = readdirSync(join(sb.store, 'packs'), { recursive: true, withFileTypes: true }).filter((e) => e.name.endsWith('.pack.partial'));
    expect(partials.length).toBe(1);
    const partialPath = join(partials[0]!.parentPath, partials[0]!.name);
    expect(statSync(partialPath).size).toBeGreaterThan(4 * 1024 * 1024); // written, but no trailer
    const staging = readdirSync('/dev/shm').filter((n) => { const m = /^crinc-checkpoint-(\d+)-/.exec(n); return m && !alive(Number(m[1])); });
    expect(staging.length).toBeGreaterThan(0);

    const next = sb.cli(['list']);
    expect(next.code).toBe(0);
    expect(next.stderr).toMatch(/removed \d+ leftover file\(s\) of interrupted/);
    expect(existsSync(partialPath)).toBe(false);
    for (const s of staging) expect(existsSync(join('/dev/shm', s))).toBe(false);
    const name = partials[0]!.name.replace('.pack.partial', '');
    // The next checkpoint writes its chunks again (into new packs): the index never names the dead one.
    const cp = sb.json<CheckpointJson>(['checkpoint', 'big']);
    expect(cp.storedBytes).toBeGreaterThan(0);
    const db = new Database(join(sb.store, 'index.sqlite'), { readonly: true });
    expect(db.prepare('SELECT count(*) FROM packs WHERE name = ?').pluck().get(name)).toBe(0);
    db.close();
    expect(sb.cli(['verify', '--read-data']).code).toBe(0);
    sb.track(sb.jobPid('big'));
  });
});
