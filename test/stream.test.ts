// Pages stream between CRIU and crinc, never staged: a checkpoint's pages arrive over
// CRIU's page-server protocol on a socket pair, a restore feeds CRIU's lazy-pages daemon
// from the store. Real CRIU, real processes.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, type CheckpointJson, COUNTER, crincAsync, killAndWait, Sandbox, sha256Dir, waitFor } from './helpers.js';

/** The options crinc gives every dump and restore (src/criu/criu.ts), for a dump of our own. */
const CRIU_OPTIONS = ['--ext-unix-sk', '--file-locks', '--tcp-established'];

function verdicts(log: string): string[] {
  return [...log.matchAll(/^verify (?:ok|FAIL).*$/gm)].map((m) => m[0]);
}

/** Asks the counter to check its whole region; resolves with its verdict line. */
async function verifyJob(sb: Sandbox, job: string, pid: number, timeoutMs = 60_000): Promise<string> {
  const before = verdicts(sb.jobLog(job)).length;
  process.kill(pid, 'SIGUSR1');
  return waitFor(() => verdicts(sb.jobLog(job))[before], `${job} to verify its memory`, timeoutMs);
}

describe('a checkpoint streams its pages: the same bytes as a local CRIU dump', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('keeps byte for byte what `criu dump` writes locally, and a plain `criu restore` of its export runs', async () => {
    // --tick-ms 0: the job changes nothing unless told; stopped, it does not even run.
    // Without rseq: the kernel rewrites a thread's rseq area whenever it resumes on
    // another CPU, and each dump's parasite makes it resume (a page would differ).
    const { pid } = await sb.run('still', [COUNTER, '--region-mib', '48', '--window-pages', '64', '--tick-ms', '0'], ['--interval', '1h'], true, {
      GLIBC_TUNABLES: 'glibc.pthread.rseq=0',
    });
    await waitFor(() => /^start pid/m.test(sb.jobLog('still')), 'the job to start');
    process.kill(pid, 'SIGSTOP');
    const kept = join(sb.dir, 'kept');
    mkdirSync(kept);
    const cp = sb.json<CheckpointJson>(['checkpoint', 'still'], { CRINC_KEEP_IMAGES: kept });
    const streamed = join(kept, String(cp.id));
    const local = join(sb.dir, 'local');
    mkdirSync(local);
    execFileSync('criu', ['dump', '-t', String(pid), '-D', local, '-o', 'dump.log', '--leave-running', ...CRIU_OPTIONS]);
    const pageImages = (dir: string) =>
      Object.fromEntries(Object.entries(sha256Dir(dir)).filter(([name]) => /^(pagemap-|pages-)/.test(name)));
    const localPages = pageImages(local);
    expect(Object.keys(localPages).filter((n) => n.startsWith('pages-')).length).toBeGreaterThan(0);
    expect(Object.keys(localPages).filter((n) => n.startsWith('pagemap-')).length).toBeGreaterThan(0);
    expect(pageImages(streamed)).toEqual(localPages);
    // Nothing of the job's memory was staged: only the streamed tee holds pages files.
    expect(cp.imageBytes).toBeGreaterThan(48 * 1024 * 1024);

    // The store gives the same bytes back, and CRIU alone restores them.
    const out = join(sb.dir, 'export');
    sb.ok(['export', 'still', '--id', String(cp.id), '--to', out]);
    expect(pageImages(out)).toEqual(localPages);
    process.kill(pid, 'SIGCONT');
    await killAndWait(pid);
    const work = join(sb.dir, 'restore-work');
    mkdirSync(work);
    execFileSync('criu', ['restore', '-D', out, '-W', work, '-o', 'restore.log', '-d', '--pidfile', join(work, 'pid'), ...CRIU_OPTIONS]);
    const restored = Number(readFileSync(join(work, 'pid'), 'utf8'));
    sb.track(restored);
    // Restored stopped, as it was dumped.
    process.kill(restored, 'SIGCONT');
    expect(await verifyJob(sb, 'still', restored)).toMatch(/^verify ok tick 0$/);
  });
});

/** Sockets in /proc/net/unix and /proc/net/tcp{,6}: inode → listening, and a unix socket's path. */
function socketTable(): Map<number, { listening: boolean; kind: string; path: string }> {
  const table = new Map<number, { listening: boolean; kind: string; path: string }>();
  for (const line of readFileSync('/proc/net/unix', 'utf8').trim().split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // Flags __SO_ACCEPTCON (0x10000): a listening socket.
    table.set(Number(f[6]), { listening: (parseInt(f[3]!, 16) & 0x10000) !== 0, kind: 'unix', path: f[7] ?? '' });
  }
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, 'utf8').trim().split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      table.set(Number(f[9]), { listening: f[3] === '0A', kind: 'tcp', path: '' });
    }
  }
  return table;
}

function socketInodes(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) out.set(Number(fd), Number(m[1]));
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // gone
  }
  return out;
}

function criuDumps(): { pid: number; args: string[] }[] {
  const out: { pid: number; args: string[] }[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const args = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (args[0]?.endsWith('criu') && args[1] === 'dump') out.push({ pid: Number(p), args });
    } catch {
      // gone
    }
  }
  return out;
}

describe('the page stream cannot be reached by another process', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  it('has no listening endpoint: CRIU gets a connected socket pair, and a dump goes on through it', async () => {
    await sb.run('target', [COUNTER, '--region-mib', '256', '--window-pages', '64', '--tick-ms', '50']);
    const checkpoint = crincAsync(sb.store, ['checkpoint', 'target', '--json']);
    const seen: { fd3Kind: string; listening: string[] }[] = [];
    let done = false;
    void checkpoint.done.then(() => (done = true));
    while (!done) {
      for (const dump of criuDumps()) {
        const at = dump.args.indexOf('--ps-socket');
        if (at < 0) continue;
        const table = socketTable();
        const criuSockets = socketInodes(dump.pid);
        const fd = Number(dump.args[at + 1]);
        const fdInode = criuSockets.get(fd);
        if (fdInode === undefined) continue;
        // No TCP socket of CRIU or crinc listens; no unix socket of crinc does but the
        // controller's control socket (root-only, in the store, carries no pages). CRIU's
        // own parasite socket (abstract, crtools-pr-…) is CRIU's business, not the pages'.
        const crincPid = Number(readFileSync(`/proc/${dump.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
        // Only this test's dumps: their crinc works on this test's store.
        if (!readFileSync(`/proc/${crincPid}/environ`, 'utf8').split('\0').includes(`CRINC_STORE=${sb.store}`)) continue;
        const control = join(sb.store, 'jobs', 'target', 'control.sock');
        const crincSockets = [...socketInodes(crincPid).values()];
        const describe = (ino: number) => `${table.get(ino)!.kind}:${ino} ${table.get(ino)!.path}`;
        const listening = [
          ...[...criuSockets.values(), ...crincSockets].filter((ino) => table.get(ino)?.listening && table.get(ino)!.kind === 'tcp'),
          ...crincSockets.filter((ino) => table.get(ino)?.listening && table.get(ino)!.path !== control),
        ].map(describe);
        // The page stream itself: an unnamed, connected unix socket (a socket pair).
        const stream = table.get(fdInode);
        seen.push({ fd3Kind: stream ? `${stream.kind}${stream.listening ? ' listening' : ''}${stream.path ? ` ${stream.path}` : ''}` : 'unknown', listening });
        // No address or port option: nothing to connect to.
        expect(dump.args).not.toContain('--port');
        expect(dump.args).not.toContain('--address');
      }
      await sleep(10);
    }
    const r = await checkpoint.done;
    expect(r.code, r.stderr).toBe(0);
    expect(seen.length, 'the test saw the dump while it ran').toBeGreaterThan(0);
    for (const s of seen) {
      expect(s.fd3Kind).toBe('unix');
      expect(s.listening).toEqual([]);
    }
    const cp = JSON.parse(r.stdout) as CheckpointJson;
    expect(cp.pagesTotal).toBeGreaterThanOrEqual((256 * 1024 * 1024) / 4096);
  });
});

describe('lazy restore of pages of zeros between pages of data', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  // Replies go out of a few reused buffers: a page of zeros (stored as a hole, not read
  // from the store) must not carry what an earlier reply left in its buffer.
  it('gives back the zero pages as zeros and the others as they were', async () => {
    const { pid } = await sb.run('zeros', [COUNTER, '--region-mib', '64', '--window-pages', '256', '--tick-ms', '0', '--zero-every', '3'], ['--interval', '1h']);
    await waitFor(() => /^start pid/m.test(sb.jobLog('zeros')), 'the job to fill its memory');
    process.kill(pid, 'SIGUSR2');
    await waitFor(() => /^tick 1 at/m.test(sb.jobLog('zeros')), 'tick 1');
    const cp = sb.json<CheckpointJson>(['checkpoint', 'zeros']);
    await killAndWait(pid);

    const r = sb.json<{ pid: number; checkpoint: number; server: number }>(['restore', 'zeros', '--lazy']);
    sb.track(r.pid);
    sb.track(r.server);
    expect(r.checkpoint).toBe(cp.id);
    await waitFor(() => !alive(r.server), 'the page server to finish', 60_000);
    expect(readFileSync(join(sb.local, 'jobs', 'zeros', 'lazy-restore.log'), 'utf8')).toMatch(/every page is in/);
    expect(await verifyJob(sb, 'zeros', r.pid)).toMatch(/^verify ok tick 1$/);
    await killAndWait(r.pid);
  });
});

describe('crinc killed before criu restore runs', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());

  /** criu lazy-pages daemons, the restores they would serve, and the shells that run them. */
  const lazyDaemons = () => readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try {
      const args = readFileSync(`/proc/${p}/cmdline`, 'latin1').split('\0');
      if (args[0] === 'criu' && args[1] === 'restore') return args.includes('--lazy-pages');
      return args.includes('lazy-pages') || (args[0] === 'sh' && args.some((a) => a.includes('criu lazy-pages')));
    } catch {
      return false;
    }
  });

  it.each([
    ['restore-staging', 'both CRIUs wait at their gates'],
    ['restore-daemon-ready', 'the daemon listens, the restore waits at its gate'],
  ] as const)('killed at %s (%s): leaves no CRIU waiting for it; a second restore works', async (point, _gates) => {
    const job = `early-${point}`;
    const { pid } = await sb.run(job, [COUNTER, '--region-mib', '8', '--tick-ms', '0'], ['--interval', '1h']);
    await waitFor(() => /^start pid/m.test(sb.jobLog(job)), 'the job to start');
    process.kill(pid, 'SIGUSR2');
    await waitFor(() => /^tick 1 at/m.test(sb.jobLog(job)), 'tick 1');
    const cp = sb.json<CheckpointJson>(['checkpoint', job]);
    await killAndWait(pid);

    const before = new Set(lazyDaemons());
    const killed = sb.cli(['restore', job], { CRINC_FAULT: point });
    expect(killed.signal).toBe('SIGKILL');
    const started = lazyDaemons().filter((p) => !before.has(p));
    expect(started.length, 'the daemon and restore crinc started').toBeGreaterThan(1);
    // A CRIU waiting at its gate is let through with an empty inventory by the watchdog,
    // and fails. The watchdog waits for a pidfile until the restore has exited, then ends
    // the daemon, which would otherwise wait for a restore for ever.
    await waitFor(() => started.every((p) => !existsSync(`/proc/${p}/cmdline`) || readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.startsWith('Z')), 'CRIU to end', 20_000);

    const again = sb.json<{ pid: number; checkpoint: number }>(['restore', job]);
    sb.track(again.pid);
    expect(again.checkpoint).toBe(cp.id);
    expect(await verifyJob(sb, job, again.pid)).toMatch(/^verify ok tick 1$/);
    await killAndWait(again.pid);
  });
});

describe('lazy restore of a 1 GiB job', () => {
  const sb = new Sandbox();
  afterAll(() => sb.cleanup());
  let cpId = 0;

  it('returns while pages still arrive; the job verifies its whole memory', async () => {
    const { pid } = await sb.run('big', [COUNTER, '--region-mib', '1024', '--window-pages', '256', '--tick-ms', '0'], ['--interval', '1h']);
    await waitFor(() => /^start pid/m.test(sb.jobLog('big')), 'the job to fill its memory', 120_000);
    process.kill(pid, 'SIGUSR2');
    await waitFor(() => /^tick 1 at/m.test(sb.jobLog('big')), 'tick 1');
    cpId = sb.json<CheckpointJson>(['checkpoint', 'big']).id;
    await killAndWait(pid);

    const r = sb.json<{ pid: number; checkpoint: number; server: number }>(['restore', 'big', '--lazy']);
    sb.track(r.pid);
    sb.track(r.server);
    expect(r.checkpoint).toBe(cpId);
    // The command came back while its page server still runs (1 GiB takes seconds to push).
    expect(alive(r.server)).toBe(true);
    // It has stalled once in CI (no verdict in 60 s): then the page server's log says how far it got.
    const lazyLog = join(sb.local, 'jobs', 'big', 'lazy-restore.log');
    const verdict = await verifyJob(sb, 'big', r.pid).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}; server alive: ${alive(r.server)}; lazy-restore.log ends:\n${existsSync(lazyLog) ? readFileSync(lazyLog, 'utf8').slice(-4000) : '(none)'}`);
    });
    expect(verdict).toMatch(/^verify ok tick 1$/);
    await waitFor(() => !alive(r.server), 'the page server to finish', 120_000);
    expect(readFileSync(join(sb.local, 'jobs', 'big', 'lazy-restore.log'), 'utf8')).toMatch(/every page is in/);
    // Once every page is in, the job runs without crinc.
    process.kill(r.pid, 'SIGUSR2');
    await waitFor(() => /^tick 2 at/m.test(sb.jobLog('big')), 'tick 2 after the restore');
    expect(await verifyJob(sb, 'big', r.pid)).toMatch(/^verify ok tick 2$/);
    await killAndWait(r.pid);
  });

  it('crinc killed mid lazy restore: the job is killed, never runs on without its pages; a second restore works', async () => {
    const r = sb.json<{ pid: number; checkpoint: number; server: number }>(['restore', 'big', '--lazy']);
    sb.track(r.pid);
    process.kill(r.server, 'SIGKILL');
    // The job asks for a page crinc will never send: the watchdog kills it.
    process.kill(r.pid, 'SIGUSR1');
    await waitFor(() => !alive(r.pid), 'the job to be killed', 30_000);
    expect(verdicts(sb.jobLog('big')).filter((v) => v.startsWith('verify FAIL'))).toEqual([]);

    const again = sb.json<{ pid: number; checkpoint: number }>(['restore', 'big']);
    sb.track(again.pid);
    expect(again.checkpoint).toBe(cpId);
    expect(await verifyJob(sb, 'big', again.pid)).toMatch(/^verify ok tick 1$/);
    await killAndWait(again.pid);
    // The killed server's staging goes with the next command once its CRIU has ended.
    const leftover = `crinc-restore-${r.server}-`;
    const inUse = () => readdirSync('/proc').filter((p) => /^\d+$/.test(p)).some((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(leftover);
      } catch {
        return false;
      }
    });
    await waitFor(() => !inUse(), "the killed server's CRIU to end");
    sb.cli(['jobs']);
    expect(readdirSync('/dev/shm').filter((n) => n.startsWith(leftover))).toEqual([]);
  });
});
