// Write-protection tracking (src/tracking/write-protect.ts) against real processes.
//
// Every scenario drives test/workloads/wpmem.c, stops it, reads its memory through
// /proc/PID/mem (an oracle independent of the tracker: /proc/PID/pagemap flags say which
// pages hold private data) and scans. Soundness: every page whose content differs from
// the previous round is in the scan's `dirty` set or outside its `tracked` ranges (the
// caller hashes those). Zero misses are allowed. Precision is checked loosely. The
// workload's driver and the oracle are in test/support/wp-harness.ts.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { becomeChildSubreaper, processVmWrite, waitpidRaw } from '../src/sys/libc.js';
import { containsAddress, formatRange, intersect, normalize, pageCount, subtract, type Range } from '../src/tracking/page-ranges.js';
import { SCAN_VEC_ENTRIES } from '../src/tracking/pagemap-scan.js';
import { PAGE_SIZE } from '../src/tracking/uffd-abi.js';
import {
  TargetNotTrackableError,
  TrackingLostError,
  WriteTracker,
  WriteTrackingError,
  type ScanResult,
} from '../src/tracking/write-protect.js';
import {
  contentOf,
  forkChild,
  pagesOf,
  pickPages,
  PM_UFFD_WP,
  region,
  sameContent,
  snapshot,
  started,
  startSessionWorkload,
  startWorkload,
  Tracked,
  useScratchDir,
  waitStopped,
  WPMEM,
} from './support/wp-harness.js';
import { prng } from './support/prng.js';

/** Facts worth reporting, printed at the end. */
const findings: string[] = [];
function note(line: string): void {
  findings.push(line);
  console.log(`[tracking-wp] ${line}`);
}

let dir: string;
beforeAll(() => {
  expect(existsSync(WPMEM), `${WPMEM} is missing: run bash scripts/setup.sh --build-only`).toBe(true);
  // The oracle reads no swapped pages (see snapshot()); with swap active it would be blind.
  expect(readFileSync('/proc/swaps', 'utf8').trim().split('\n').length, 'this test expects no active swap').toBe(1);
  dir = mkdtempSync('/tmp/crinc-wp-');
  useScratchDir(dir);
});
afterAll(() => {
  for (const p of started) p.kill();
  rmSync(dir, { recursive: true, force: true });
  console.log(`[tracking-wp] summary:\n  ${findings.join('\n  ')}`);
});

// ---- scenarios -----------------------------------------------------------------------

describe('WriteTracker on real processes', () => {
  it('reports exactly the chosen pages written, and nothing once they are protected again', async () => {
    const p = await startWorkload();
    const base = await p.alloc(512);
    await p.cmd(`fill ${base.toString(16)} 512 1`);
    const t = await Tracked.arm(p);
    // The target never keeps a userfaultfd of its own (CRIU would refuse to dump it).
    for (const fd of readdirSync(`/proc/${p.pid}/fd`)) expect(readlinkSync(`/proc/${p.pid}/fd/${fd}`)).not.toContain('userfaultfd');
    expect(t.tracker.unarmable()).toEqual([]);
    expect(intersect(t.tracker.armedRanges(), region(base, 512))).toEqual(region(base, 512));

    const rand = prng(1);
    for (let round = 0; round < 20; round++) {
      const chosen = pickPages(rand, 512, 1 + Math.floor(rand() * 40));
      await p.cmd(`poke ${base.toString(16)} ${round + 10} ${chosen.join(',')}`);
      const { scan } = await t.round(`chosen pages, round ${round}`);
      // Precise inside the region: the written pages, no more, no less.
      expect(intersect(scan.dirty, region(base, 512))).toEqual(pagesOf(base, chosen));
    }
    const { scan } = await t.round('no writes');
    expect(intersect(scan.dirty, region(base, 512))).toEqual([]);
    note(`chosen pages: ${t.rounds} rounds, ${t.totals.changedTracked} changed pages, 0 missed, ${t.totals.unchangedButDirty} unchanged-but-reported pages in the whole process`);
    t.tracker.close();
    p.kill();
  });

  it('scans past a full result buffer (more written runs than SCAN_VEC_ENTRIES)', async () => {
    const p = await startWorkload();
    const pages = 3 * SCAN_VEC_ENTRIES;
    const base = await p.alloc(pages);
    await p.cmd(`fill ${base.toString(16)} ${pages} 50`);
    const t = await Tracked.arm(p);
    // Every other page: one run per written page, 1.5 buffers full.
    const everyOther = Array.from({ length: pages / 2 }, (_, i) => 2 * i);
    await p.cmd(`poke ${base.toString(16)} 51 ${everyOther.join(',')}`);
    const { scan } = await t.round('fragmented writes');
    expect(intersect(scan.dirty, region(base, pages))).toEqual(pagesOf(base, everyOther));
    expect(scan.ioctls).toBeGreaterThan(3); // registered + written (2 calls or more) + populated
    const { scan: again } = await t.round('nothing written after the fragmented round');
    expect(intersect(again.dirty, region(base, pages))).toEqual([]);
    t.tracker.close();
    p.kill();
  });

  it('sees the writes of 4 threads', async () => {
    const p = await startWorkload();
    const pages = 4096;
    const base = await p.alloc(pages);
    await p.cmd(`fill ${base.toString(16)} ${pages} 2`);
    const t = await Tracked.arm(p, false); // armed while it runs
    for (let round = 0; round < 10; round++) {
      await p.cmd(`threads ${base.toString(16)} ${pages} 4 ${200 + round * 50} ${round + 1}`);
      const { verdict } = await t.round(`threads, round ${round}`);
      expect(verdict.changedTracked).toBeGreaterThan(100);
    }
    note(`4 threads: ${t.rounds} rounds, ${t.totals.changedTracked} changed pages, 0 missed`);
    t.tracker.close();
    p.kill();
  });

  it('tracks a child forked after arming only once the child is armed itself', async () => {
    const parent = await startWorkload();
    const pages = 256;
    const base = await parent.alloc(pages);
    await parent.cmd(`fill ${base.toString(16)} ${pages} 3`);
    const pt = await Tracked.arm(parent);
    const child = await forkChild(parent);

    // What the child inherits: its VMAs, but neither our userfaultfd context nor any
    // registration (the kernel drops it at fork without UFFD_FEATURE_EVENT_FORK).
    const smaps = readFileSync(`/proc/${child.pid}/smaps`, 'utf8');
    const childUffdVmas = smaps.split('\n').filter((l) => l.startsWith('VmFlags:') && / uw/.test(l)).length;
    const parentUffdVmas = readFileSync(`/proc/${parent.pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags:') && / uw/.test(l)).length;
    // And no write-protect bit in its page tables (/proc/PID/pagemap bit 57, PM_UFFD_WP).
    const wpBits = (pid: number): number => {
      const fd = openSync(`/proc/${pid}/pagemap`, 'r');
      try {
        const entries = Buffer.alloc(pages * 8);
        readSync(fd, entries, 0, entries.length, (base / PAGE_SIZE) * 8);
        let n = 0;
        for (let i = 0; i < pages; i++) if (entries.readBigUInt64LE(i * 8) & PM_UFFD_WP) n++;
        return n;
      } finally {
        closeSync(fd);
      }
    };
    const parentWp = wpBits(parent.pid);
    const childWp = wpBits(child.pid);
    note(
      `fork: parent has ${parentUffdVmas} VMAs flagged uw (uffd-wp) in smaps, the child ${childUffdVmas} right after fork; pages with the uffd-wp pte bit in the test region: parent ${parentWp}/${pages}, child ${childWp}/${pages}`,
    );
    expect(parentWp).toBe(pages);
    expect(childWp).toBe(0);
    expect(parentUffdVmas).toBeGreaterThan(0);
    expect(childUffdVmas).toBe(0);

    const ct = await Tracked.arm(child);
    expect(ct.tracker.unarmable()).toEqual([]);
    const rand = prng(3);
    for (let round = 0; round < 10; round++) {
      const inChild = pickPages(rand, pages, 20);
      const inParent = pickPages(rand, pages, 20);
      await child.cmd(`poke ${base.toString(16)} ${round + 100} ${inChild.join(',')}`);
      await parent.cmd(`poke ${base.toString(16)} ${round + 200} ${inParent.join(',')}`);
      const c = await ct.round(`child, round ${round}`);
      const q = await pt.round(`parent, round ${round}`);
      expect(intersect(c.scan.dirty, region(base, pages))).toEqual(pagesOf(base, inChild));
      expect(intersect(q.scan.dirty, region(base, pages))).toEqual(pagesOf(base, inParent));
    }
    note(`fork: child armed separately, ${ct.totals.changedTracked} child and ${pt.totals.changedTracked} parent changed pages, 0 missed; each sees only its own writes`);
    ct.tracker.close();
    pt.tracker.close();
    child.kill();
    parent.kill();
  });

  it('leaves new mappings untracked until registerNew, then tracks them', async () => {
    const p = await startWorkload();
    const t = await Tracked.arm(p);
    const base = await p.alloc(64);
    await p.cmd(`fill ${base.toString(16)} 64 4`);
    const first = await t.round('new mmap', { registerNew: true });
    expect(intersect(first.scan.tracked, region(base, 64))).toEqual([]);
    expect(intersect(first.added, region(base, 64))).toEqual(region(base, 64));
    await p.cmd(`poke ${base.toString(16)} 9 1,2,3`);
    const second = await t.round('new mmap, written after registerNew');
    expect(intersect(second.scan.tracked, region(base, 64))).toEqual(region(base, 64));
    expect(intersect(second.scan.dirty, region(base, 64))).toEqual(pagesOf(base, [1, 2, 3]));
    note('mmap after arming: outside `tracked` until registerNew, then tracked precisely');
    t.tracker.close();
    p.kill();
  });

  it('munmap + mmap at the same address: the new mapping is not tracked', async () => {
    const p = await startWorkload();
    const base = await p.alloc(64);
    await p.cmd(`fill ${base.toString(16)} 64 5`);
    const t = await Tracked.arm(p);
    await p.cmd(`munmap ${base.toString(16)} 64`);
    await p.cmd(`mmapfixed ${base.toString(16)} 64`);
    await p.cmd(`poke ${base.toString(16)} 3 5`);
    const r = await t.round('munmap+mmap', { registerNew: true });
    expect(intersect(r.scan.tracked, region(base, 64))).toEqual([]);
    expect(r.verdict.changed).toBeGreaterThanOrEqual(64);
    await p.cmd(`poke ${base.toString(16)} 4 6,7`);
    const r2 = await t.round('munmap+mmap, written after registerNew');
    expect(intersect(r2.scan.dirty, region(base, 64))).toEqual(pagesOf(base, [6, 7]));
    // Half of it replaced: the other half stays tracked.
    await p.cmd(`munmap ${base.toString(16)} 32`);
    await p.cmd(`mmapfixed ${base.toString(16)} 32`);
    const r3 = await t.round('half munmap+mmap');
    expect(intersect(r3.scan.tracked, region(base, 64))).toEqual([{ start: base + 32 * PAGE_SIZE, end: base + 64 * PAGE_SIZE }]);
    note('munmap + mmap(MAP_FIXED) in place: the new VMA is unregistered, so outside `tracked` (the untouched half stays tracked)');
    t.tracker.close();
    p.kill();
  });

  it('mremap: a moved region is untracked at its new place, a grown one only in its old part', async () => {
    const p = await startWorkload();
    const base = await p.alloc(64);
    await p.cmd(`fill ${base.toString(16)} 64 6`);
    const destination = await p.alloc(64); // replaced by the move (MREMAP_FIXED)
    // A hole to grow into: the second half of a fresh 128-page mapping, unmapped.
    const growBase = await p.alloc(128);
    await p.cmd(`munmap ${(growBase + 64 * PAGE_SIZE).toString(16)} 64`);
    await p.cmd(`fill ${growBase.toString(16)} 64 7`);
    const t = await Tracked.arm(p);

    const [moved] = await p.cmd(`mremap ${base.toString(16)} 64 64 fixed:${destination.toString(16)}`);
    const to = Number.parseInt(moved!, 16);
    expect(to).toBe(destination);
    await p.cmd(`poke ${to.toString(16)} 8 0,1`);
    const r = await t.round('mremap move', { registerNew: true });
    expect(intersect(r.scan.tracked, region(to, 64))).toEqual([]);
    expect(intersect(r.added, region(to, 64))).toEqual(region(to, 64));
    await p.cmd(`poke ${to.toString(16)} 9 5`);
    const r2 = await t.round('moved region written after registerNew');
    expect(intersect(r2.scan.dirty, region(to, 64))).toEqual(pagesOf(to, [5]));

    const [grown] = await p.cmd(`mremap ${growBase.toString(16)} 64 128 grow`);
    expect(Number.parseInt(grown!, 16)).toBe(growBase);
    await p.cmd(`poke ${growBase.toString(16)} 9 3,100`);
    const g = await t.round('mremap grow');
    expect(intersect(g.scan.tracked, region(growBase, 128))).toEqual(region(growBase, 64));
    expect(intersect(g.scan.dirty, region(growBase, 64))).toEqual(pagesOf(growBase, [3]));
    const grownPartArmed = intersect(t.tracker.armedRanges(), region(growBase + 64 * PAGE_SIZE, 64));
    note(
      `mremap: a moved VMA loses its registration (no UFFD_FEATURE_EVENT_REMAP), untracked until registerNew; an in-place grow ${grownPartArmed.length ? 'keeps the registration (the VMA is extended) but' : 'leaves the new part unregistered and'} the new part is outside \`tracked\` for one scan`,
    );
    t.tracker.close();
    p.kill();
  });

  it('madvise(MADV_DONTNEED), with and without a read afterwards, and on a THP', async () => {
    const p = await startWorkload();
    const pages = 2048; // 8 MiB, 2 MiB aligned: whole page tables can be freed
    const base = await p.alloc(pages, 'thp');
    await p.cmd(`fill ${base.toString(16)} ${pages} 8`);
    await p.cmd(`madvise ${base.toString(16)} ${pages} populatewrite`);
    const thpBefore = readFileSync(`/proc/${p.pid}/smaps_rollup`, 'utf8').match(/AnonHugePages:\s+(\d+)/)?.[1];
    const t = await Tracked.arm(p);
    const b = base.toString(16);
    const hex = (i: number): string => (base + i * PAGE_SIZE).toString(16);
    // a) a few pages zapped, nothing else
    await p.cmd(`madvise ${hex(10)} 5 dontneed`);
    const a = await t.round('dontneed, no read');
    // b) zapped then read (maps the zero page)
    await p.cmd(`madvise ${hex(100)} 5 dontneed`);
    await p.cmd(`read ${hex(100)} 5`);
    const rb = await t.round('dontneed, then read');
    // c) a whole 2 MiB-aligned block: the kernel may free the page table (PT_RECLAIM) or the THP
    await p.cmd(`madvise ${hex(512)} 512 dontneed`);
    const c = await t.round('dontneed of an aligned 2 MiB block');
    // d) same, then read
    await p.cmd(`madvise ${hex(1024)} 512 dontneed`);
    await p.cmd(`read ${hex(1024)} 512`);
    const d = await t.round('dontneed of an aligned 2 MiB block, then read');
    // e) then written again
    await p.cmd(`poke ${b} 11 10,512,1030`);
    await t.round('written after dontneed');
    for (const [label, r, range] of [
      ['a', a, pagesOf(base, [10, 11, 12, 13, 14])],
      ['b', rb, pagesOf(base, [100, 101, 102, 103, 104])],
      ['c', c, [{ start: base + 512 * PAGE_SIZE, end: base + 1024 * PAGE_SIZE }]],
      ['d', d, [{ start: base + 1024 * PAGE_SIZE, end: base + 1536 * PAGE_SIZE }]],
    ] as const) {
      note(
        `madvise ${label}: ${pageCount(range)} zapped pages: ${pageCount(intersect(r.scan.written, range))} reported written by the kernel, ${pageCount(intersect(r.scan.vanished, range))} by the vanished check; dirty ${pageCount(intersect(r.scan.dirty, range))}`,
      );
      expect(intersect(r.scan.dirty, range)).toEqual(range);
    }
    note(`madvise: AnonHugePages before arming ${thpBefore} kB`);
    t.tracker.close();
    p.kill();
  });

  it('brk grow and shrink', async () => {
    const p = await startWorkload();
    const t = await Tracked.arm(p);
    const [, grownTo] = await p.cmd('sbrk 64');
    const top = Number.parseInt(grownTo!, 16);
    const heapNew = top - 64 * PAGE_SIZE;
    await p.cmd(`fill ${heapNew.toString(16)} 64 12`);
    const r1 = await t.round('brk grow', { registerNew: true });
    expect(intersect(r1.scan.tracked, region(heapNew, 64))).toEqual([]);
    await p.cmd(`poke ${heapNew.toString(16)} 13 0,63`);
    const r2 = await t.round('brk grown part written');
    expect(intersect(r2.scan.dirty, region(heapNew, 64))).toEqual(pagesOf(heapNew, [0, 63]));
    await p.cmd('sbrk -32');
    await p.cmd('sbrk 32');
    const r3 = await t.round('brk shrink and grow back', { registerNew: true });
    // The re-grown 32 pages are a new (zero) mapping: untracked.
    expect(intersect(r3.scan.tracked, region(heapNew + 32 * PAGE_SIZE, 32))).toEqual([]);
    await p.cmd(`poke ${heapNew.toString(16)} 14 1,40`);
    await t.round('after brk regrow');
    note('brk: a grown heap is a new, unregistered VMA until registerNew; shrink + regrow likewise');
    t.tracker.close();
    p.kill();
  });

  it('pages read before they are written, read() from a pipe, process_vm_writev', async () => {
    const p = await startWorkload();
    const pages = 256;
    const base = await p.alloc(pages);
    const b = base.toString(16);
    await p.cmd(`fill ${b} ${pages} 15`);
    // Half of a second region never touched: reads map the zero page, writes come after.
    const fresh = await p.alloc(pages);
    const t = await Tracked.arm(p);

    await p.cmd(`readpoke ${b} 16 1,2,3,200`);
    await p.cmd(`read ${fresh.toString(16)} 64`);
    const r1 = await t.round('read then write');
    expect(intersect(r1.scan.dirty, region(base, pages))).toEqual(pagesOf(base, [1, 2, 3, 200]));
    note(`reads of never-touched anonymous pages (zero page): ${pageCount(intersect(r1.scan.dirty, region(fresh, 64)))} of 64 reported (content unchanged)`);

    await p.cmd(`pipe ${(base + 10 * PAGE_SIZE).toString(16)} ${5 * PAGE_SIZE} 17`);
    const r2 = await t.round('read() from a pipe into the pages');
    expect(intersect(r2.scan.dirty, region(base, pages))).toEqual(pagesOf(base, [10, 11, 12, 13, 14]));

    const payload = Buffer.alloc(3 * PAGE_SIZE, 0x5a);
    expect(processVmWrite(p.pid, base + 50 * PAGE_SIZE, payload)).toBe(payload.length);
    const r3 = await t.round('process_vm_writev from another process');
    expect(intersect(r3.scan.dirty, region(base, pages))).toEqual(pagesOf(base, [50, 51, 52]));

    // Same with the target stopped while we write into it.
    await p.stop();
    expect(processVmWrite(p.pid, base + 60 * PAGE_SIZE, payload.subarray(0, 100))).toBe(100);
    p.cont();
    const r4 = await t.round('process_vm_writev into a stopped process');
    expect(intersect(r4.scan.dirty, region(base, pages))).toEqual(pagesOf(base, [60]));
    note('kernel-mode writes (read() into user memory, process_vm_writev from outside) are reported like user writes');
    t.tracker.close();
    p.kill();
  });

  it('user-mode-only userfaultfd still sees kernel-mode writes (async WP needs no handler)', async () => {
    const p = await startWorkload();
    const base = await p.alloc(64);
    await p.cmd(`fill ${base.toString(16)} 64 18`);
    await p.stop();
    const tracker = WriteTracker.arm(p.pid, { uffdMode: 'user-mode-only' });
    const t = new Tracked(p, tracker);
    p.cont();
    expect(tracker.uffdFlags & 1).toBe(1);
    await p.cmd(`pipe ${(base + 4 * PAGE_SIZE).toString(16)} ${2 * PAGE_SIZE} 19`);
    expect(processVmWrite(p.pid, base + 30 * PAGE_SIZE, Buffer.alloc(10, 1))).toBe(10);
    const r = await t.round('user-mode-only');
    expect(intersect(r.scan.dirty, region(base, 64))).toEqual(pagesOf(base, [4, 5, 30]));
    tracker.close();
    p.kill();
  });

  it('arms a process blocked in read(), sleeping in nanosleep(), spinning, or stopped, without disturbing it', async () => {
    const p = await startWorkload();
    // blocked in read() on its command pipe (ERESTARTSYS): the next command must still work
    const t1 = WriteTracker.arm(p.pid);
    expect((await p.cmd('read 0 0'))[0]).toBe('0');
    t1.close();
    // in nanosleep (ERESTART_RESTARTBLOCK): resumed through restart_syscall, full length
    const sleeping = p.cmd('sleep 400');
    await sleep(100);
    const t2 = WriteTracker.arm(p.pid);
    const [slept] = await sleeping;
    expect(Number(slept)).toBeGreaterThanOrEqual(400);
    expect(Number(slept)).toBeLessThan(1000);
    t2.close();
    // in user code, no syscall
    const spinning = p.cmd('spin 300');
    await sleep(100);
    const t3 = WriteTracker.arm(p.pid);
    expect(Number((await spinning)[0])).toBeGreaterThanOrEqual(300);
    t3.close();
    // stopped (group stop): still stopped after arming, until SIGCONT
    await p.stop();
    const t4 = WriteTracker.arm(p.pid);
    await sleep(50);
    await waitStopped(p.pid);
    p.cont();
    expect((await p.cmd('read 0 0'))[0]).toBe('0');
    t4.close();
    note('arming injects into a thread blocked in read(), in nanosleep() (restarted through restart_syscall: slept ' + slept + ' ms of 400), busy in user code, or group-stopped (stays stopped)');
    p.kill();
  });

  it('refuses a seccomp-filtered target unless told to try', async () => {
    const p = await startWorkload();
    await p.cmd('seccomp');
    expect(() => WriteTracker.arm(p.pid)).toThrow(TargetNotTrackableError);
    const t = WriteTracker.arm(p.pid, { allowSeccompFilteredTarget: true });
    expect(t.unarmable()).toEqual([]);
    t.close();
    p.kill();
  });

  it('a private file page reverted by MADV_DONTNEED to the file content is reported', async () => {
    const p = await startWorkload();
    const file = join(dir, 'private-file');
    const pages = 64;
    const pattern = Buffer.alloc(pages * PAGE_SIZE);
    for (let i = 0; i < pattern.length; i += 4) pattern.writeUInt32LE(i * 2654435761 >>> 0, i);
    writeFileSync(file, pattern);
    const [hex] = await p.cmd(`mapfile ${file} ${pages}`);
    const base = Number.parseInt(hex!, 16);
    await p.cmd(`poke ${hex} 50 1,2,3,4`); // COW: these pages now hold private data
    await p.cmd(`read ${hex} ${pages}`); // the others map the file's pages
    const t = await Tracked.arm(p);
    await p.cmd(`madvise ${(base + PAGE_SIZE).toString(16)} 2 dontneed`); // pages 1, 2 revert to the file
    await p.cmd(`read ${hex} ${pages}`);
    const r = await t.round('private file page reverted');
    expect(intersect(r.scan.dirty, region(base, pages))).toEqual(pagesOf(base, [1, 2]));
    note(
      `MADV_DONTNEED + read of a written private file page (reverts to the file's content): ${pageCount(intersect(r.scan.written, pagesOf(base, [1, 2])))} of 2 reported written by the kernel, ${pageCount(intersect(r.scan.vanished, pagesOf(base, [1, 2])))} by the vanished check`,
    );
    t.tracker.close();
    p.kill();
  });

  it('MADV_DONTNEED of whole 2 MiB blocks of small pages (the kernel may free the page table)', async () => {
    const p = await startWorkload();
    const pages = 2048;
    const base = await p.alloc(pages, 'aligned');
    await p.cmd(`fill ${base.toString(16)} ${pages} 40`);
    const t = await Tracked.arm(p);
    const hex = (i: number): string => (base + i * PAGE_SIZE).toString(16);
    await p.cmd(`madvise ${hex(512)} 512 dontneed`);
    await p.cmd(`madvise ${hex(1024)} 1024 dontneed`);
    await p.cmd(`read ${hex(1536)} 512`);
    const r = await t.round('aligned dontneed of small pages');
    const zapped = [{ start: base + 512 * PAGE_SIZE, end: base + 2048 * PAGE_SIZE }];
    expect(intersect(r.scan.dirty, zapped)).toEqual(zapped);
    note(
      `MADV_DONTNEED of 3 aligned 2 MiB blocks of 4 KiB pages: ${pageCount(intersect(r.scan.written, zapped))} of 1536 pages reported written by the kernel, ${pageCount(intersect(r.scan.vanished, zapped))} by the vanished check`,
    );
    t.tracker.close();
    p.kill();
  });

  it('reports a MAP_DROPPABLE mapping (glibc getrandom state) as unarmable, with the reason', async () => {
    const p = await startWorkload();
    await p.cmd('random');
    const droppable = readFileSync(`/proc/${p.pid}/smaps`, 'utf8').includes(' dp');
    const t = WriteTracker.arm(p.pid);
    const unarmable = t.unarmable();
    if (droppable) {
      expect(unarmable.length).toBeGreaterThan(0);
      expect(unarmable[0]!.reason).toContain('MAP_DROPPABLE');
      // Unarmable memory is never inside `tracked`: the caller reads it at every checkpoint.
      await p.stop();
      const s = t.scan();
      p.cont();
      expect(intersect(s.tracked, normalize(unarmable))).toEqual([]);
    }
    note(`getrandom(): ${droppable ? `glibc mapped its vDSO state MAP_DROPPABLE; unarmable: ${unarmable.map((u) => `${formatRange(u)} (${u.reason})`).join(', ')}` : 'no MAP_DROPPABLE mapping appeared'}`);
    t.close();
    p.kill();
  });

  it('stays sound over many random rounds of mixed operations', async () => {
    const p = await startWorkload();
    const rand = prng(42);
    const regions: Array<{ base: number; pages: number }> = [];
    for (const pages of [1024, 300, 4096]) {
      const base = await p.alloc(pages);
      await p.cmd(`fill ${base.toString(16)} ${pages} ${pages}`);
      regions.push({ base, pages });
    }
    const t = await Tracked.arm(p);
    const ROUNDS = 120;
    let pageWrites = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const ops = 1 + Math.floor(rand() * 4);
      for (let k = 0; k < ops; k++) {
        const r = regions[Math.floor(rand() * regions.length)]!;
        const h = r.base.toString(16);
        const at = (i: number): string => (r.base + i * PAGE_SIZE).toString(16);
        const op = Math.floor(rand() * 8);
        const n = 1 + Math.floor(rand() * Math.min(64, r.pages - 1));
        const start = Math.floor(rand() * (r.pages - n));
        if (op === 0) {
          const chosen = pickPages(rand, r.pages, n);
          await p.cmd(`poke ${h} ${round * 10 + k} ${chosen.join(',')}`);
          pageWrites += chosen.length;
        } else if (op === 1) {
          await p.cmd(`threads ${h} ${r.pages} 4 ${n * 4} ${round * 10 + k}`);
          pageWrites += n * 16;
        } else if (op === 2) {
          await p.cmd(`madvise ${at(start)} ${n} dontneed`);
          if (rand() < 0.5) await p.cmd(`read ${at(start)} ${n}`);
        } else if (op === 3) {
          await p.cmd(`pipe ${at(start)} ${n * PAGE_SIZE - Math.floor(rand() * 100)} ${round}`);
          pageWrites += n;
        } else if (op === 4) {
          expect(processVmWrite(p.pid, r.base + start * PAGE_SIZE, Buffer.alloc(n * PAGE_SIZE, round & 0xff))).toBe(n * PAGE_SIZE);
          pageWrites += n;
        } else if (op === 5) {
          await p.cmd(`readpoke ${h} ${round} ${pickPages(rand, r.pages, n).join(',')}`);
          pageWrites += n;
        } else if (op === 6) {
          await p.cmd(`mprotect ${at(start)} ${n} r`);
          await p.cmd(`mprotect ${at(start)} ${n} rw`);
        } else {
          await p.cmd(`pokerand ${h} ${r.pages} ${n * 8} ${round * 10 + k}`);
          pageWrites += n * 8;
        }
      }
      await t.round(`random round ${round}`);
    }
    note(
      `random mix: ${ROUNDS} rounds, ~${pageWrites} page writes, ${t.totals.changedTracked} changed tracked pages, 0 missed, ${t.totals.unchangedButDirty} reported pages unchanged (of ${t.totals.dirty} reported)`,
    );
    t.tracker.close();
    p.kill();
  });

  it('turns a closed userfaultfd, an exec or an exit into TrackingLostError', async () => {
    const p = await startWorkload();
    const tracker = WriteTracker.arm(p.pid);
    // The uffd closed behind the tracker's back (a stray close in this process).
    closeSync((tracker as unknown as { uffd: number }).uffd);
    expect(() => tracker.scan()).toThrow(TrackingLostError);
    // The number is reused by an unrelated file: the tracker must neither scan nor close it.
    const uffdNumber = (tracker as unknown as { uffd: number }).uffd;
    const fillers: number[] = [];
    let unrelated = -1;
    for (let i = 0; i < 256 && unrelated !== uffdNumber; i++) {
      unrelated = openSync('/dev/null', 'r');
      if (unrelated !== uffdNumber) fillers.push(unrelated);
    }
    for (const fd of fillers) closeSync(fd);
    expect(unrelated).toBe(uffdNumber);
    expect(() => tracker.scan()).toThrow(/closed behind the tracker's back/);
    tracker.close();
    expect(readlinkSync(`/proc/self/fd/${unrelated}`)).toBe('/dev/null');
    closeSync(unrelated);

    const t2 = WriteTracker.arm(p.pid);
    await p.cmd('exec');
    await sleep(100);
    await p.cmd('read 0 0'); // the new image answers
    let err: unknown;
    try {
      t2.scan();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(TrackingLostError);
    note(`exec: ${(err as Error).message}`);
    t2.close();

    const t3 = WriteTracker.arm(p.pid);
    p.kill();
    await sleep(100);
    expect(() => t3.scan()).toThrow(TrackingLostError);
    t3.close();
    expect(() => t3.scan()).toThrow(WriteTrackingError);
  });

  it('measures scan time for 256 MiB and the first-write cost after a scan', async () => {
    const p = await startWorkload();
    const pages = 65536; // 256 MiB
    const base = await p.alloc(pages);
    const h = base.toString(16);
    await p.cmd(`fill ${h} ${pages} 20`);
    await p.stop();
    const tracker = WriteTracker.arm(p.pid);
    p.cont();
    const timeScan = async (): Promise<ScanResult> => {
      await p.stop();
      try {
        return tracker.scan();
      } finally {
        p.cont();
      }
    };
    // The three states alternate (A B C A B C ...): this VM's timings drift.
    const REPEATS = 4;
    const times: Record<'clean' | 'scattered' | 'all', ScanResult[]> = { clean: [], scattered: [], all: [] };
    for (let i = 0; i < REPEATS; i++) {
      times.clean.push(await timeScan());
      await p.cmd(`pokerand ${h} ${pages} ${Math.floor(pages * 0.05)} ${21 + i}`);
      times.scattered.push(await timeScan());
      await p.cmd(`fill ${h} ${pages} ${30 + i}`);
      const all = await timeScan();
      expect(pageCount(intersect(all.written, region(base, pages)))).toBe(pages);
      times.all.push(all);
    }
    const fmtScans = (rs: ScanResult[]): string => {
      const total = rs.map((r) => r.scanMs.toFixed(1)).join('/');
      const med = (xs: number[]): string => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)]!.toFixed(1);
      return `${total} ms (median walks: registered ${med(rs.map((r) => r.walkMs.registered))}, written ${med(rs.map((r) => r.walkMs.written))}, populated ${med(rs.map((r) => r.walkMs.populated))})`;
    };
    note(`scan of a 256 MiB region, nothing written: ${fmtScans(times.clean)}`);
    note(`scan of a 256 MiB region, 5% scattered writes (~${pageCount(intersect(times.scattered[0]!.written, region(base, pages)))} pages): ${fmtScans(times.scattered)}`);
    note(`scan of a 256 MiB region, all written: ${fmtScans(times.all)}, ${times.all[0]!.ioctls} ioctls`);

    // First write to a protected page (fault, resolved in the kernel) vs to a page already
    // written since the last scan (no fault), alternated A B A B.
    const perPage: Record<string, number[]> = { protected: [], unprotected: [] };
    const N = 16384;
    for (let i = 0; i < 4; i++) {
      await timeScan(); // protect everything
      const [nsProtected] = await p.cmd(`timewrite ${h} ${N}`);
      const [nsUnprotected] = await p.cmd(`timewrite ${h} ${N}`);
      perPage.protected!.push(Number(nsProtected) / N / 1000);
      perPage.unprotected!.push(Number(nsUnprotected) / N / 1000);
    }
    const fmt = (xs: number[]): string => xs.map((x) => x.toFixed(2)).join('/');
    note(`first write after a scan: ${fmt(perPage.protected!)} µs per page; a second write: ${fmt(perPage.unprotected!)} µs per page`);
    tracker.close();
    p.kill();
  });
});

// ---- CRIU ----------------------------------------------------------------------------

// CRIU is part of the set-up (npm test installs it): without it this fails, never skips.
describe('WriteTracker and CRIU', () => {
  it('a tracked process dumps (--leave-running), keeps being tracked, and restores', async () => {
    becomeChildSubreaper(); // criu restore -d leaves the restored process to us
    const p = await startSessionWorkload();
    const pages = 4096;
    const base = await p.alloc(pages);
    const h = base.toString(16);
    await p.cmd(`fill ${h} ${pages} 30`);
    const t = await Tracked.arm(p);
    await p.cmd(`poke ${h} 31 1,2,3`);
    await t.round('before dump');

    const images = mkdtempSync(join(dir, 'images-'));
    const smapsUw = (): number => readFileSync(`/proc/${p.pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags:') && / uw/.test(l)).length;
    const uwBefore = smapsUw();
    const armedBefore = t.tracker.armedRanges();

    // Written between the last scan and the dump: the scan inside CRIU's freeze must say so.
    const beforeDump = pickPages(prng(29), pages, 25);
    await p.cmd(`poke ${h} 32 ${beforeDump.join(',')}`);
    // CRIU runs the post-dump action while the tasks are still frozen: the controller's
    // place for the scan. This one signals the test and waits for its go.
    const frozenFlag = join(dir, 'criu-frozen');
    const goFlag = join(dir, 'criu-go');
    const script = join(dir, 'post-dump.sh');
    writeFileSync(
      script,
      `#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0\ntouch ${frozenFlag}\nwhile [ ! -e ${goFlag} ]; do sleep 0.01; done\n`,
      { mode: 0o755 },
    );
    const criu = spawn('criu', ['dump', '-t', String(p.pid), '-D', images, '--leave-running', '--action-script', script, '-o', 'dump.log', '-v4'], { stdio: 'ignore' });
    let criuCode: number | undefined;
    const criuExit = new Promise<number>((res) => criu.once('exit', (code) => res((criuCode = code ?? -1))));
    for (let i = 0; i < 3000 && !existsSync(frozenFlag) && criuCode === undefined; i++) await sleep(10);
    if (!existsSync(frozenFlag)) {
      writeFileSync(goFlag, '');
      throw new Error(`criu dump did not reach its post-dump action (exit ${criuCode}):\n${tail(join(images, 'dump.log'))}`);
    }
    let inFreeze: Awaited<ReturnType<Tracked['round']>>;
    try {
      const states = readdirSync(`/proc/${p.pid}/task`).map((tid) => {
        const stat = readFileSync(`/proc/${p.pid}/task/${tid}/stat`, 'utf8');
        return stat[stat.lastIndexOf(')') + 2];
      });
      note(`inside CRIU's post-dump action the task state is ${states.join(',')} (t: tracing stop)`);
      inFreeze = await t.round('inside the CRIU freeze', { registerNew: true, frozenBy: 'criu' });
    } finally {
      writeFileSync(goFlag, '');
    }
    const code = await criuExit;
    if (code !== 0) throw new Error(`criu dump failed (${code}):\n${tail(join(images, 'dump.log'))}`);
    expect(intersect(inFreeze.scan.dirty, region(base, pages))).toEqual(pagesOf(base, beforeDump));
    const others = subtract(inFreeze.scan.dirty, pagesOf(base, beforeDump)).map((r) => {
      const v = t.prev.vmas.find((m) => r.start >= m.start && r.start < m.end);
      return `${pageCount([r])} in ${v ? v.name || '[anon]' : '?'}`;
    });
    note(
      `scan inside CRIU's freeze (post-dump action): ${pageCount(inFreeze.scan.dirty)} dirty pages: the test's ${beforeDump.length}, and ${others.join(', ')}; registerNew added ${pageCount(inFreeze.added)} pages (CRIU's parasite mapping is gone by then); ${inFreeze.scan.scanMs.toFixed(2)} ms`,
    );

    // Nothing written since: what does the scan report after CRIU's parasite came and went?
    const after = await t.round('right after criu dump');
    const inRegion = pageCount(intersect(after.scan.dirty, region(base, pages)));
    const [rseqHex, errnoHex] = await p.cmd('tls');
    const pageOf = (hex: string): number => {
      const a = Number.parseInt(hex, 16);
      return a - (a % PAGE_SIZE);
    };
    const rseqPage = pageOf(rseqHex!);
    const errnoPage = pageOf(errnoHex!);
    const where = after.scan.dirty.map((r) => {
      if (containsAddress([r], rseqPage)) return `${formatRange(r)} (the page of the thread's struct rseq${rseqPage === errnoPage ? ' and errno' : ''}, which the kernel updates when the thread resumes)`;
      const v = t.prev.vmas.find((m) => r.start >= m.start && r.start < m.end);
      return `${formatRange(r)} in ${v ? `${formatRange(v)} ${v.perms} ${v.name || '[anon]'}` : '?'}`;
    });
    note(
      `criu dump --leave-running: uw VMAs ${uwBefore} before, ${smapsUw()} after; armed ranges ${sameRanges(armedBefore, t.tracker.armedRanges()) ? 'unchanged' : 'CHANGED'}; the scan after the dump reports ${pageCount(after.scan.dirty)} pages (${inRegion} in the 16 MiB test region): ${where.join('; ')}`,
    );
    expect(inRegion).toBe(0);
    expect(pageCount(after.scan.dirty)).toBeLessThan(64);
    expect(sameRanges(armedBefore, t.tracker.armedRanges())).toBe(true);

    // The test region as the image holds it: nothing wrote there between the dump and now.
    const regionAtDump = new Map<number, Buffer | string>();
    for (let a = base; a < base + pages * PAGE_SIZE; a += PAGE_SIZE) regionAtDump.set(a, contentOf(t.prev, a));

    // Still tracking, soundly.
    const rand = prng(30);
    for (let round = 0; round < 5; round++) {
      const chosen = pickPages(rand, pages, 30);
      await p.cmd(`poke ${h} ${round + 40} ${chosen.join(',')}`);
      const r = await t.round(`after dump, round ${round}`);
      expect(intersect(r.scan.dirty, region(base, pages))).toEqual(pagesOf(base, chosen));
    }

    // Restore the image: the original must be gone first (CRIU restores the same PID).
    t.tracker.close();
    p.kill();
    await new Promise<void>((res) => {
      const child = (p as unknown as { child: ChildProcess }).child;
      if (child.exitCode !== null || child.signalCode !== null) res();
      else child.once('exit', () => res());
    });
    const restore = spawnSync('criu', ['restore', '-D', images, '-d', '-o', 'restore.log', '-v4'], { encoding: 'utf8' });
    if (restore.status !== 0) throw new Error(`criu restore failed (${restore.status}): ${restore.stderr}\n${tail(join(images, 'restore.log'))}`);
    try {
      // The restored process holds no userfaultfd and no registration; it can be armed anew.
      const uw = readFileSync(`/proc/${p.pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags:') && / uw/.test(l)).length;
      expect(uw).toBe(0);
      process.kill(p.pid, 'SIGSTOP');
      await waitStopped(p.pid);
      const restored = snapshot(p.pid);
      let differing = 0;
      for (const [a, c] of regionAtDump) if (!sameContent(c, contentOf(restored, a))) differing++;
      expect(differing, 'pages of the test region that came back different').toBe(0);
      const again = WriteTracker.arm(p.pid);
      const s = again.scan();
      expect(pageCount(intersect(s.dirty, region(base, pages)))).toBe(0);
      again.close();
      note('criu restore: the restored process has no uffd registration (smaps uw: 0) and can be armed again');
    } finally {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone
      }
      for (let i = 0; i < 100; i++) {
        const [r] = waitpidRaw(p.pid, 1 /* WNOHANG */);
        if (r === p.pid || r < 0) break;
        await sleep(20);
      }
    }
  });
});

function tail(path: string): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-40).join('\n');
  } catch {
    return '(no log)';
  }
}

function sameRanges(a: Range[], b: Range[]): boolean {
  return JSON.stringify(normalize(a)) === JSON.stringify(normalize(b));
}

