// Every bad input or broken precondition ends with a clear message and a non-zero exit,
// and changes nothing.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Repository } from '../src/store/repository.js';
import { type CheckpointJson, CLI, COUNTER, damageStoredPage, type JobInfo, killAndWait, lastTick, Sandbox, waitFor } from './helpers.js';

describe('errors', () => {
  const sb = new Sandbox();
  let pid = 0;
  let first: CheckpointJson;
  afterAll(() => sb.cleanup());

  beforeAll(async () => {
    ({ pid } = await sb.run('err', [COUNTER, '--region-mib', '8', '--tick-ms', '0']));
    first = sb.json<CheckpointJson>(['checkpoint', 'err']);
  });

  it('refuses to run as a user other than root', () => {
    const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, CLI, 'list'], {
      encoding: 'utf8',
      env: { ...process.env, CRINC_STORE: sb.store },
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/must run as root/);
  });

  it('says when CRIU is missing, and which version works and how to get it', () => {
    const emptyPath = join(sb.dir, 'no-criu');
    mkdirSync(emptyPath, { recursive: true });
    const r = sb.cli(['checkpoint', 'err'], { PATH: emptyPath });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/CRIU is not installed/);
    expect(r.stderr).toMatch(/4\.2 or newer/);
    expect(r.stderr).toMatch(/npm run setup/);
  });

  it('says when CRIU is too old', () => {
    // A stand-in: the machine's real CRIU is the working 4.2, and an old one cannot be
    // installed beside it; this script answers `criu --version` as Debian's 3.17 does.
    const fake = join(sb.dir, 'old-criu');
    mkdirSync(fake, { recursive: true });
    writeFileSync(join(fake, 'criu'), '#!/bin/sh\necho "Version: 3.17.1"\n', { mode: 0o755 });
    const r = sb.cli(['checkpoint', 'err'], { PATH: `${fake}:${process.env.PATH}` });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/CRIU 3\.17\.1 is too old/);
    expect(r.stderr).toMatch(/4\.2 or newer/);
  });

  it('names the known jobs when a job is unknown', () => {
    const r = sb.cli(['restore', 'nosuchjob']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown job "nosuchjob"; known jobs: err/);
    expect(sb.cli(['checkpoint', 'nosuchjob']).stderr).toMatch(/unknown job/);
    expect(sb.cli(['list', 'nosuchjob']).stderr).toMatch(/unknown job/);
  });

  it('refuses an unparsable time', () => {
    const r = sb.cli(['restore', 'err', '--at', 'last tuesdayish']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/cannot read "last tuesdayish" as a time/);
    const i = sb.cli(['run', '--interval', 'often', '--', COUNTER]);
    expect(i.code).not.toBe(0);
    expect(i.stderr).toMatch(/cannot read "often" as a duration/);
  });

  it('takes one checkpoint of a job at a time', () => {
    const repo = Repository.open(sb.store, { create: false });
    const lock = repo.lockJob('err', 'checkpoint');
    try {
      const r = sb.cli(['checkpoint', 'err']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/a checkpoint or restore of job "err" is already in progress \(checkpoint by crinc pid \d+/);
    } finally {
      lock.release();
      repo.close();
    }
    // Released: the next one goes through.
    expect(sb.json<CheckpointJson>(['checkpoint', 'err']).id).toBeGreaterThan(first.id);
  });

  it('refuses to restore over a running job', () => {
    const r = sb.cli(['restore', 'err']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`job "err" is still running as pid ${pid}`));
  });

  it('says when the job\'s process is not running', async () => {
    process.kill(pid, 'SIGUSR2');
    await waitFor(() => lastTick(sb.jobLog('err')) === 1, 'a tick');
    await killAndWait(pid);
    const r = sb.cli(['checkpoint', 'err']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`its process ${pid} is not running`));
  });

  it('names the earliest checkpoint when --at is before it', () => {
    const before = new Date(Date.parse(first.takenAt) - 60_000).toISOString();
    const r = sb.cli(['restore', 'err', '--at', before]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`the earliest is checkpoint ${first.id} taken at ${first.takenAt}`);
  });

  it('refuses a damaged pack: names the chunk and the pack, leaves no job running and its files as they were', () => {
    // Flip one byte inside a stored page of the first checkpoint.
    const damaged = damageStoredPage(sb.store);

    const logPath = join(sb.store, 'jobs', 'err', 'stdout.log');
    const logBefore = readFileSync(logPath, 'utf8');
    const r = sb.cli(['restore', 'err', '--id', String(first.id)]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`chunk ${damaged.id} in pack ${damaged.pack} is damaged`);
    // Nothing restored: no process, the job's log (newer than the checkpoint) as it was.
    // Pages are served as the job runs, so the damage shows once the job's files were
    // put back: the job is killed and they get their newer content again, which the
    // pre-restore snapshot taken before also keeps.
    expect(readFileSync(logPath, 'utf8')).toBe(logBefore);
    expect(sb.json<JobInfo[]>(['jobs']).find((j) => j.job === 'err')!.state).toBe('stopped');
    const extra = sb.json<CheckpointJson[]>(['list', 'err']).filter((c) => c.kind !== 'checkpoint');
    expect(extra.map((c) => c.kind)).toEqual(extra.length ? ['pre-restore'] : []);
  });

  it('keeps the store root-only', () => {
    expect(statSync(sb.store).mode & 0o777).toBe(0o700);
    expect(statSync(join(sb.store, 'index.sqlite')).mode & 0o777).toBe(0o600);
    expect(statSync(join(sb.store, 'packs')).mode & 0o777).toBe(0o700);
    chmodSync(sb.store, 0o777);
    const r = sb.cli(['list']);
    chmodSync(sb.store, 0o700);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/has mode 777: others could read or change checkpoints/);
  });
});
