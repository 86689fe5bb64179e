// A store on S3, against a real Ceph radosgw (scripts/services/ceph-rgw.sh: one monitor,
// one memstore OSD, cephx): a job checkpointed there restores from a wiped local cache,
// byte for byte; a wrong key is refused; a checkpoint killed mid-upload leaves no trace
// in the store's listing and the next one goes through.
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STAGING_ROOT } from '../src/controller/checkpoint.js';
import { openCodecs } from '../src/controller/codecs.js';
import { FILE_BLOCK_BYTES } from '../src/store/format.js';
import { openS3Store } from '../src/store/s3.js';
import { type CheckpointAround, type CheckpointJson, checkpointsAround, CLI, type CliResult, COUNTER, crincAsync, type GcJson, killAndWait, lastTick, resumedLog, ROOT, Sandbox, sha256Dir, waitFor } from './helpers.js';

const RGW_SCRIPT = join(ROOT, 'scripts', 'services', 'ceph-rgw.sh');
const BUCKET = 'crinc-test';
/** A kill that came after the upload had finished proves nothing: the test tries again, this often. */
const KILL_ATTEMPTS = 5;

let s3: S3Client;
let startedRgw = false;

function rgw(command: 'start' | 'env' | 'stop'): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('bash', [RGW_SCRIPT, command], { encoding: 'utf8', timeout: 240_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(async () => {
  // Pinned SDK: its notice about releases from 2027 on is noise here (as in crinc itself).
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
  startedRgw = rgw('env').code !== 0;
  const r = rgw('start');
  if (r.code !== 0) throw new Error(`ceph-rgw.sh start failed:\n${r.stderr}`);
  // The AWS_* variables it prints reach every crinc this test starts.
  for (const m of r.stdout.matchAll(/^export (AWS_[A-Z_]+)=(.*)$/gm)) process.env[m[1]!] = m[2]!;
  s3 = new S3Client({ forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  try {
    await s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
  } catch (e) {
    if (!(e instanceof S3ServiceException && e.name === 'BucketAlreadyOwnedByYou')) throw e;
  }
}, 300_000);

afterAll(() => {
  s3?.destroy();
  if (startedRgw) rgw('stop');
});

/** A fresh prefix per sandbox: stores never share objects. */
function s3Sandbox(): { sb: Sandbox; prefix: string } {
  const prefix = `t-${randomBytes(6).toString('hex')}`;
  return { sb: new Sandbox(`s3://${BUCKET}/${prefix}`), prefix };
}

async function keys(prefix: string): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${prefix}/`, ContinuationToken: token }));
    for (const o of r.Contents ?? []) out.push(o.Key!.slice(prefix.length + 1));
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return out.sort();
}

async function multipartUploads(prefix: string): Promise<string[]> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: `${prefix}/` }));
  return (r.Uploads ?? []).map((u) => u.Key!);
}

describe('a job checkpointed to S3, restored from a wiped local cache', () => {
  const { sb, prefix } = s3Sandbox();
  const kept = join(sb.dir, 'kept-images');
  afterAll(() => sb.cleanup());
  const around: CheckpointAround[] = [];
  let jobPid = 0;
  let listed: CheckpointJson[] = [];

  beforeAll(async () => {
    mkdirSync(kept);
    const { pid, controller } = await sb.run('counter', [COUNTER, '--region-mib', '24', '--window-pages', '96', '--tick-ms', '50']);
    jobPid = pid;
    await waitFor(() => lastTick(sb.jobLog('counter')) >= 5, 'the job to tick');
    around.push(...(await checkpointsAround(sb, 'counter', 2, { CRINC_KEEP_IMAGES: kept })));
    listed = sb.json<CheckpointJson[]>(['list', 'counter']);
    // This node goes away: controller, job and the whole local cache.
    await killAndWait(controller.pid!);
    await killAndWait(jobPid);
    rmSync(sb.local, { recursive: true, force: true });
  });

  it('keeps the store as objects: identity, packs with their chunk tables, one object per checkpoint', async () => {
    const all = await keys(prefix);
    expect(all).toContain('store.json');
    expect(all.filter((k) => k.startsWith('checkpoints/'))).toEqual(around.map((a) => `checkpoints/${String(a.cp.id).padStart(12, '0')}`));
    const packs = all.filter((k) => k.endsWith('.pack'));
    expect(packs.length).toBeGreaterThan(0);
    expect(all.filter((k) => k.endsWith('.idx')).sort()).toEqual(packs.map((k) => k.replace(/\.pack$/, '.idx')).sort());
    const object = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${prefix}/checkpoints/${String(around[0]!.cp.id).padStart(12, '0')}` }));
    const record = JSON.parse(await object.Body!.transformToString()) as { id: number; job: { name: string }; files: { role: string }[] };
    expect(record.id).toBe(around[0]!.cp.id);
    expect(record.job.name).toBe('counter');
    expect(record.files.some((f) => f.role === 'image')).toBe(true);
  });

  it('rebuilds the list from the objects', () => {
    const rebuilt = sb.json<CheckpointJson[]>(['list', 'counter']);
    expect(rebuilt).toEqual(listed);
    expect(rebuilt.map((c) => c.id)).toEqual(around.map((a) => a.cp.id));
  });

  it('exports every checkpoint byte for byte as CRIU wrote it', () => {
    for (const { cp } of around) {
      const out = join(sb.dir, `export-${cp.id}`);
      sb.ok(['export', 'counter', '--id', String(cp.id), '--to', out]);
      const original = sha256Dir(join(kept, String(cp.id)));
      expect(Object.keys(original).some((n) => /^pages-\d+\.img$/.test(n))).toBe(true);
      expect(sha256Dir(out)).toEqual(original);
    }
  });

  it('restores --at a time before the 2nd checkpoint: the job goes on from the 1st one\'s counter', async () => {
    const [first, second] = around as [CheckpointAround, CheckpointAround];
    const at = new Date((Date.parse(first.cp.takenAt) + Date.parse(second.cp.takenAt)) / 2).toISOString();
    const restoredAt = Date.now();
    const r = sb.json<{ pid: number; checkpoint: number }>(['restore', 'counter', '--at', at]);
    sb.track(r.pid);
    expect(r.checkpoint).toBe(first.cp.id);
    // The log came back from the store too: it ends at the 1st checkpoint, new ticks follow.
    const { log, resumedAt, lastSaved } = await resumedLog(sb, 'counter', restoredAt);
    expect(lastSaved).toBeGreaterThanOrEqual(first.before);
    expect(lastSaved).toBeLessThanOrEqual(first.after);
    expect(log[resumedAt]!.tick).toBe(lastSaved + 1);
    log.forEach((t, i) => {
      expect(t.tick).toBe(i + 1);
    });
    process.kill(r.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog('counter'))?.[0], 'the job to verify its memory');
    expect(verdict).toMatch(/^verify ok tick \d+$/);
  });

  it('refuses a wrong secret key with a clear error', () => {
    const r = sb.cli(['list'], { AWS_SECRET_ACCESS_KEY: 'not-the-secret-key' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/refused .* in s3:\/\/crinc-test\/t-[0-9a-f]+ \(SignatureDoesNotMatch: .*secret access key is wrong\)/);
    expect(r.stderr).toMatch(/Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
    expect(r.stderr).not.toMatch(/unexpected error/);
  });

  it('prune forgets in the bucket too: a rebuilt cache does not bring forgotten checkpoints back; gc frees their chunks', async () => {
    const before = sb.json<CheckpointJson[]>(['list', 'counter']);
    const checkpoints = before.filter((c) => c.kind === 'checkpoint').map((c) => c.id);
    expect(checkpoints.length).toBeGreaterThanOrEqual(2);
    const newest = Math.max(...checkpoints);
    sb.ok(['prune', 'counter', '--keep-last', '1']);
    const after = sb.json<CheckpointJson[]>(['list', 'counter']);
    expect(after).toEqual(before.filter((c) => c.kind !== 'checkpoint' || c.id === newest));
    const objects = (await keys(prefix)).filter((k) => k.startsWith('checkpoints/'));
    expect(objects).toEqual(after.map((c) => `checkpoints/${String(c.id).padStart(12, '0')}`));
    rmSync(sb.local, { recursive: true, force: true });
    expect(sb.json<CheckpointJson[]>(['list', 'counter'])).toEqual(after);
    const gc = sb.json<GcJson>(['gc']);
    expect(gc.deadChunks).toBeGreaterThan(0);
    expect(gc.bytesFreed).toBeGreaterThan(0);
    expect(sb.json<CheckpointJson[]>(['list', 'counter'])).toEqual(after);
    const out = join(sb.dir, `export-${newest}-after-gc`);
    sb.ok(['export', 'counter', '--id', String(newest), '--to', out]);
    expect(sha256Dir(out)).toEqual(sha256Dir(join(kept, String(newest))));
    // GC's lock went with it.
    expect((await keys(prefix)).filter((k) => k.startsWith('locks/'))).toEqual([]);
  });

  it('verify --read-data checks the objects through ranged reads; a deleted pack object names the checkpoints that need it', async () => {
    const v = sb.cli(['verify', '--read-data', '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect((JSON.parse(v.stdout) as { bytesRead: number }).bytesRead).toBeGreaterThan(0);
    const pack = (await keys(prefix)).find((k) => k.endsWith('.pack'))!;
    await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: `${prefix}/${pack}` }));
    // The open's catch-up drops the gone pack from the cache: its chunks are missing.
    const missing = sb.cli(['verify', '--json']);
    expect(missing.code, missing.stderr).toBe(1);
    const report = JSON.parse(missing.stdout) as { damaged: { id: number; problems: string[] }[] };
    expect(report.damaged.length).toBeGreaterThan(0);
    for (const d of report.damaged) expect(d.problems.join('\n')).toMatch(/is not in the index/);
    expect(sb.json<{ id: number; damaged: string[] | null }[]>(['list', 'counter']).filter((c) => c.damaged !== null).map((c) => c.id))
      .toEqual(report.damaged.map((d) => d.id).sort((a, b) => a - b));
  });
});

describe('a checkpoint killed while its packs upload', () => {
  const { sb, prefix } = s3Sandbox();
  afterAll(() => sb.cleanup());

  it('leaves no visible partial checkpoint; the newest complete one restores; the next one goes through', async () => {
    // 64 MiB of incompressible pages; each tick (SIGUSR2) rewrites 32 MiB of them, so every
    // checkpoint uploads a pack in several parts.
    const { pid, controller } = await sb.run('big', [COUNTER, '--region-mib', '64', '--window-pages', '8192', '--tick-ms', '0']);
    // Checkpoints below are taken by `crinc checkpoint` itself: the process to kill.
    await killAndWait(controller.pid!);
    const complete = [sb.json<CheckpointJson>(['checkpoint', 'big'])];

    let killed = false;
    for (let attempt = 0; attempt < KILL_ATTEMPTS && !killed; attempt++) {
      const tick = lastTick(sb.jobLog('big'));
      process.kill(pid, 'SIGUSR2');
      await waitFor(() => lastTick(sb.jobLog('big')) === tick + 1, 'a tick');
      const before = await keys(prefix);
      const writer = spawn(process.execPath, [CLI, 'checkpoint', 'big', '--json'], {
        env: { ...process.env, CRINC_STORE: sb.store, ...sb.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      writer.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<NodeJS.Signals | null>((resolve) => writer.once('exit', (_code, signal) => resolve(signal)));
      let done = false;
      void exited.then(() => (done = true));
      while (!done) {
        if ((await multipartUploads(prefix)).length > 0) {
          writer.kill('SIGKILL');
          break;
        }
      }
      killed = (await exited) === 'SIGKILL';
      if (!killed) {
        complete.push(JSON.parse(out) as CheckpointJson);
        continue;
      }
      // Its staging on tmpfs (crinc-checkpoint-<pid>-…) outlives it; the store never depends on it.
      for (const name of readdirSync(STAGING_ROOT)) {
        if (name.startsWith(`crinc-checkpoint-${writer.pid}-`)) rmSync(join(STAGING_ROOT, name), { recursive: true, force: true });
      }
      // Parts were in the bucket, the checkpoint object never was.
      expect((await multipartUploads(prefix)).length).toBeGreaterThan(0);
      const after = await keys(prefix);
      expect(after.filter((k) => k.startsWith('checkpoints/'))).toEqual(before.filter((k) => k.startsWith('checkpoints/')));
    }
    expect(killed).toBe(true);

    const ids = complete.map((c) => c.id);
    expect(sb.json<CheckpointJson[]>(['list', 'big']).map((c) => c.id)).toEqual(ids);
    rmSync(sb.local, { recursive: true, force: true });
    expect(sb.json<CheckpointJson[]>(['list', 'big']).map((c) => c.id)).toEqual(ids);

    // The newest complete checkpoint restores, and its memory checks out.
    await killAndWait(pid);
    const savedTick = complete.length - 1;
    const r = sb.json<{ pid: number; checkpoint: number }>(['restore', 'big']);
    sb.track(r.pid);
    expect(r.checkpoint).toBe(ids[ids.length - 1]);
    process.kill(r.pid, 'SIGUSR1');
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog('big'))?.[0], 'the job to verify its memory');
    expect(verdict).toBe(`verify ok tick ${savedTick}`);

    // The next checkpoint is unaffected.
    const next = sb.json<CheckpointJson>(['checkpoint', 'big']);
    expect(next.id).toBeGreaterThan(ids[ids.length - 1]!);
    expect(sb.json<CheckpointJson[]>(['list', 'big']).map((c) => c.id)).toEqual([...ids, next.id]);
  });
});

describe('gc of an S3 store, SIGKILLed at every point: every checkpoint comes back from a fresh cache and from another node', () => {
  const JOB = 'collected';
  const { sb, prefix } = s3Sandbox();
  const kept = join(sb.dir, 'kept-images');
  /** Another node: its cache is made before any GC and never wiped. */
  const nodeB = { CRINC_CACHE: join(sb.dir, 'node-b') };
  const counterOf = new Map<number, number>();
  let pid = 0;
  let counter = 0;
  let checks = 0;
  afterAll(() => sb.cleanup());

  beforeAll(async () => {
    mkdirSync(kept);
    pid = await sb.runForFaults(JOB);
  });

  async function checkpoint(): Promise<number> {
    process.kill(pid, 'SIGUSR2');
    counter++;
    await waitFor(() => lastTick(sb.jobLog(JOB)) === counter, `tick ${counter}`);
    const cp = sb.json<CheckpointJson>(['checkpoint', JOB, '--keep-last', '2'], { CRINC_KEEP_IMAGES: kept });
    counterOf.set(cp.id, counter);
    return cp.id;
  }

  /** What every kill must leave: both checkpoints listed, exported byte for byte and verified, whichever cache reads the bucket. */
  async function checkStore(what: string): Promise<void> {
    const ids = sb.json<CheckpointJson[]>(['list', JOB]).map((c) => c.id);
    expect(ids.length, `checkpoints after ${what}`).toBe(2); // --keep-last 2
    const fresh = { CRINC_CACHE: join(sb.dir, `fresh-cache-${++checks}`) };
    for (const [node, cache] of [['a fresh cache', fresh], ['node B', nodeB]] as const) {
      const listed = sb.cli(['list', JOB, '--json'], cache);
      expect(listed.code, listed.stderr).toBe(0);
      // Catch-up took every checkpoint in: no object names a deleted pack.
      expect(listed.stderr, `${node} after ${what}`).not.toMatch(/left out/);
      expect((JSON.parse(listed.stdout) as CheckpointJson[]).map((c) => c.id), `${node} after ${what}`).toEqual(ids);
      for (const id of ids) {
        const out = join(sb.dir, `export-${checks}-${id}`);
        sb.ok(['export', JOB, '--id', String(id), '--to', out], cache);
        expect(sha256Dir(out), `export of ${id} from ${node} after ${what}`).toEqual(sha256Dir(join(kept, String(id))));
        rmSync(out, { recursive: true, force: true });
      }
    }
    const v = sb.cli(['verify', '--read-data', '--json'], fresh);
    expect(v.code, `verify after ${what}: ${v.stdout}${v.stderr}`).toBe(0);
  }

  it('makes garbage and a pack to repack; node B caches the store', async () => {
    // The first checkpoint's pack holds the whole region: once enough of it was rewritten
    // and the checkpoints that named it forgotten, it is mostly dead.
    let plan: GcJson | undefined;
    for (let i = 0; i < 8 && !(plan && plan.repackedPacks > 0); i++) {
      await checkpoint();
      plan = sb.json<GcJson>(['gc', '--dry-run']);
    }
    expect(plan!.deadChunks).toBeGreaterThan(0);
    expect(plan!.repackedPacks).toBeGreaterThan(0);
    expect(sb.cli(['list'], nodeB).code).toBe(0);
    await checkStore('the first checkpoints');
  });

  // gc-mid-rewrite: below, where an object names a pack that GC deletes.
  for (const point of ['gc-repack-written', 'gc-before-delete', 'gc-mid-sweep', 'gc-after-delete']) {
    it(`killed at ${point}`, async () => {
      await checkpoint(); // new garbage
      const r = sb.cli(['gc'], { CRINC_FAULT: point });
      expect(r.signal, `crinc gc with CRINC_FAULT=${point} was not killed:\n${r.stdout}${r.stderr}`).toBe('SIGKILL');
      // Its exclusive lock is left in the bucket; on this node it counts for nothing (its process is gone).
      expect((await keys(prefix)).filter((k) => k.startsWith('locks/')).length).toBe(1);
      await checkpoint();
      await checkStore(point);
    });
  }

  it('killed at random times', async () => {
    for (let round = 0; round < 2; round++) {
      await checkpoint();
      const run = crincAsync(sb.store, ['gc'], sb.env);
      const delayMs = 200 + Math.floor(Math.random() * 2000);
      await sleep(delayMs);
      run.kill();
      const r = await run.done;
      await checkStore(`a kill of gc after ${delayMs} ms (${r.signal ?? `exit ${r.code}`})`);
    }
  });

  it('then a gc completes: nothing left to collect, every object names existing packs, no lock or upload left', async () => {
    const gc = sb.json<GcJson>(['gc']);
    expect(gc.bytesFreed).toBeGreaterThanOrEqual(0);
    const again = sb.json<GcJson>(['gc', '--dry-run']);
    expect(again.deadChunks).toBe(0);
    expect(again.deadPacks).toBe(0);
    expect(again.orphanFiles).toBe(0);
    const all = await keys(prefix);
    const packs = all.filter((k) => k.endsWith('.pack')).map((k) => k.replace(/\.pack$/, ''));
    expect(all.filter((k) => k.endsWith('.idx')).map((k) => k.replace(/\.idx$/, '')).sort()).toEqual(packs.sort());
    for (const key of all.filter((k) => k.startsWith('checkpoints/'))) {
      const object = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${prefix}/${key}` }));
      const record = JSON.parse(await object.Body!.transformToString()) as { packs: string[] };
      for (const p of record.packs) expect(packs, `${key} names pack ${p}`).toContain(`packs/${p.slice(0, 2)}/${p}`);
    }
    expect(all.filter((k) => k.startsWith('locks/'))).toEqual([]);
    expect(await multipartUploads(prefix)).toEqual([]);
    await checkStore('a complete gc');
  });

  it('the newest checkpoint restores from a fresh cache, memory intact', async () => {
    const ids = sb.json<CheckpointJson[]>(['list', JOB]).map((c) => c.id);
    const newest = ids[ids.length - 1]!;
    await killAndWait(pid);
    const r = sb.json<{ pid: number; checkpoint: number }>(['restore', JOB], { CRINC_CACHE: join(sb.dir, 'restore-cache') });
    sb.track(r.pid);
    expect(r.checkpoint).toBe(newest);
    process.kill(r.pid, 'SIGUSR1');
    // The job's log is one of its files: restored in place, where the job writes on.
    const verdict = await waitFor(() => /^verify (ok|FAIL).*$/m.exec(sb.jobLog(JOB))?.[0], 'the job to verify its memory');
    expect(verdict).toBe(`verify ok tick ${counterOf.get(newest)}`);
  });
});

describe('gc of an S3 store where a checkpoint object names a pack whose chunks are placed elsewhere', () => {
  // Two commits raced (as two jobs with the same pages would): each wrote the shared
  // blocks, the index places them in the later one's pack, so the earlier one's pack is
  // mostly dead although its checkpoint lives. GC repacks it and must rewrite that
  // checkpoint's object to name the packs that now hold its chunks. Committed through
  // the real commit path, in this process (files only: no CRIU needed to make a race).
  const { sb, prefix } = s3Sandbox();
  const nodeB = { CRINC_CACHE: join(sb.dir, 'node-b') };
  const SHARED_BLOCKS = 6;
  const blocks = (seed: number) => Buffer.concat(Array.from({ length: SHARED_BLOCKS + 1 }, (_, i) => randomBlock(i < SHARED_BLOCKS ? i : seed)));
  const contents = new Map<number, Buffer>();
  let objects: Map<number, string[]>;
  afterAll(() => sb.cleanup());

  /** A block of incompressible bytes, the same for the same seed. */
  function randomBlock(seed: number): Buffer {
    const out = Buffer.alloc(FILE_BLOCK_BYTES);
    let x = seed * 2654435761 + 1;
    for (let i = 0; i < out.length; i += 4) {
      x = (x ^ (x << 13)) >>> 0;
      x = (x ^ (x >>> 17)) >>> 0;
      x = (x ^ (x << 5)) >>> 0;
      out.writeUInt32LE(x, i);
    }
    return out;
  }

  async function packsNamed(): Promise<Map<number, string[]>> {
    const out = new Map<number, string[]>();
    for (const key of (await keys(prefix)).filter((k) => k.startsWith('checkpoints/'))) {
      const object = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${prefix}/${key}` }));
      const record = JSON.parse(await object.Body!.transformToString()) as { id: number; packs: string[] };
      out.set(record.id, record.packs);
    }
    return out;
  }

  async function checkStore(what: string): Promise<void> {
    const fresh = { CRINC_CACHE: join(sb.dir, `fresh-${randomBytes(4).toString('hex')}`) };
    for (const [node, cache] of [['a fresh cache', fresh], ['node B', nodeB]] as const) {
      const listed = sb.cli(['list', '--json'], cache);
      expect(listed.stderr, `${node} after ${what}`).not.toMatch(/left out/);
      expect((JSON.parse(listed.stdout) as CheckpointJson[]).map((c) => c.id).sort(), `${node} after ${what}`).toEqual([...contents.keys()].sort());
      for (const [id, content] of contents) {
        const out = join(sb.dir, `export-${randomBytes(4).toString('hex')}`);
        sb.ok(['export', 'files', '--id', String(id), '--to', out], cache);
        expect(readFileSync(join(out, 'files', 'data')).equals(content), `checkpoint ${id} from ${node} after ${what}`).toBe(true);
      }
    }
    const v = sb.cli(['verify', '--read-data'], fresh);
    expect(v.code, `verify after ${what}: ${v.stdout}${v.stderr}`).toBe(0);
  }

  it('commits two checkpoints whose packs both hold the shared blocks', async () => {
    const repo = await openS3Store(sb.store, { create: true, cacheDir: sb.local, onWarning: (m) => { throw new Error(m); } });
    const codecs = await openCodecs(repo);
    const now = Date.now();
    repo.saveJob({ name: 'files', createdAt: now, command: ['true'], cwd: '/', pid: null, controllerPid: null, state: 'stopped', updatedAt: now });
    const lock = await repo.lockShared('the test');
    // Both writers take their chunks for new before either commits.
    const writers = [1, 2].map((seed) => {
      const data = blocks(100 + seed);
      const writer = repo.newChunkWriter(codecs.chunks);
      const ids: Uint8Array[] = [];
      for (let o = 0; o < data.length; o += FILE_BLOCK_BYTES) {
        const id = codecs.chunks.chunkId(data.subarray(o, o + FILE_BLOCK_BYTES));
        writer.put(id, data.subarray(o, o + FILE_BLOCK_BYTES));
        ids.push(id);
      }
      return { data, writer, ids: new Uint8Array(Buffer.concat(ids)) };
    });
    for (const [k, { data, writer, ids }] of writers.entries()) {
      const cp = await repo.commitCheckpoint(
        { job: 'files', kind: 'checkpoint', takenAt: now + k, mode: 'files', rootPid: null, imageBytes: 0, pagesTotal: 0, pagesHashed: 0, pagesClean: 0, durationMs: 0, freezeMs: 0, note: null },
        [{ role: 'job-file', path: '/data', size: data.length, mode: 0o600, uid: 0, gid: 0, blockBytes: FILE_BLOCK_BYTES, ids, identity: null }],
        writer,
      );
      contents.set(cp.id, data);
    }
    lock.release();
    await codecs.pool.close();
    repo.close();
    objects = await packsNamed();
    expect([...objects.values()].map((p) => p.length)).toEqual([1, 1]);
    expect(sb.cli(['list'], nodeB).code).toBe(0);
    const plan = sb.json<GcJson>(['gc', '--dry-run']);
    expect(plan.repackedPacks).toBe(1);
    await checkStore('the commits');
  });

  it('gc killed after rewriting the object: both checkpoints come back', async () => {
    const r = sb.cli(['gc'], { CRINC_FAULT: 'gc-mid-rewrite' });
    expect(r.signal, `${r.stdout}${r.stderr}`).toBe('SIGKILL');
    await checkStore('gc-mid-rewrite');
  });

  it('a gc completes: the earlier object names the repacked copy and the later pack, the old pack is gone', async () => {
    sb.json<GcJson>(['gc']);
    const [first, second] = [...contents.keys()].sort((a, b) => a - b) as [number, number];
    const now = await packsNamed();
    expect(now.get(second)).toEqual(objects.get(second));
    const firstPacks = now.get(first)!;
    expect(firstPacks).toHaveLength(2);
    expect(firstPacks).toContain(objects.get(second)![0]);
    expect(firstPacks).not.toContain(objects.get(first)![0]);
    const stored = (await keys(prefix)).filter((k) => k.endsWith('.pack'));
    for (const p of firstPacks) expect(stored).toContain(`packs/${p.slice(0, 2)}/${p}.pack`);
    expect(stored).toHaveLength(2);
    await checkStore('a complete gc');
  });
});

describe('the bucket lock', () => {
  const JOB = 'locked';
  const { sb, prefix } = s3Sandbox();
  afterAll(() => sb.cleanup());

  beforeAll(async () => {
    const run = await sb.run(JOB, [COUNTER, '--region-mib', '2', '--window-pages', '64', '--tick-ms', '0'], ['--interval', '1h', '--no-tracking']);
    run.controller.kill('SIGINT');
    await waitFor(() => run.controller.exitCode !== null, 'the controller to stop');
    sb.json<CheckpointJson>(['checkpoint', JOB]);
  });

  /** Another node's lock, written as that node's crinc would (docs/FORMAT.md, "The bucket lock"): the test plays that node. */
  async function otherNodesLock(kind: 'shared' | 'exclusive', purpose: string): Promise<string> {
    const key = `${prefix}/locks/${randomBytes(16).toString('hex')}`;
    const record = { format: 1, kind, purpose, host: 'node-b', bootId: randomUUID(), pidNamespace: 'pid:[1]', pid: 4242, pidStart: 1, createdAt: new Date().toISOString() };
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: JSON.stringify(record) }));
    return key;
  }

  /** Runs crinc with args: it must still be waiting after 6 s, and finish once the other node's lock `key` is gone. */
  async function waitsForOtherNode(args: string[], key: string): Promise<CliResult> {
    const cmd = crincAsync(sb.store, args, sb.env);
    let finished = false;
    void cmd.done.then(() => (finished = true));
    await sleep(6000);
    expect(finished, `crinc ${args[0]} waited for the other node's lock`).toBe(false);
    await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: key }));
    return cmd.done;
  }

  it("another node's gc (exclusive): a gc here fails naming it, a checkpoint waits until it is gone", async () => {
    const key = await otherNodesLock('exclusive', 'gc');
    const gc = sb.cli(['gc']);
    expect(gc.code).toBe(1);
    expect(gc.stderr).toMatch(/is locked, so gc cannot start: exclusive lock for gc by crinc pid 4242 on node-b/);
    const r = await waitsForOtherNode(['checkpoint', JOB, '--json'], key);
    expect(r.code, r.stderr).toBe(0);
    expect(sb.json<CheckpointJson[]>(['list', JOB]).length).toBe(2);
  });

  it("another node's checkpoint (shared): gc waits for it, then collects", async () => {
    sb.ok(['prune', JOB, '--keep-last', '1']);
    const key = await otherNodesLock('shared', 'checkpoint of job elsewhere');
    const r = await waitsForOtherNode(['gc', '--json'], key);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as GcJson).deadChunks).toBeGreaterThan(0);
    expect((await keys(prefix)).filter((k) => k.startsWith('locks/'))).toEqual([]);
    expect(sb.cli(['verify', '--read-data']).code).toBe(0);
  });
});
