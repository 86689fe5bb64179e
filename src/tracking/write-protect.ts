// Which pages a process wrote between two moments, without its help and without
// soft-dirty bits: userfaultfd asynchronous write protection plus PAGEMAP_SCAN.
//
// arm(pid) creates a userfaultfd inside the target (syscall injection, see uffd-inject.ts),
// copies it into this process with pidfd_getfd and closes the target's copy (CRIU refuses
// to dump a process that holds a userfaultfd). On our copy: UFFDIO_API with WP_ASYNC (the
// kernel resolves write faults itself, no handler thread) and WP_UNPOPULATED (unpopulated
// ptes get markers, so a first write there is seen too), then UFFDIO_REGISTER in WP mode
// on every writable private VMA, then one get-and-clear scan: the baseline.
//
// scan() — to be called while the process is stopped — asks PAGEMAP_SCAN for the pages
// that are not write-protected ("written") in the registered VMAs and write-protects them
// again in the same page-table walk, so nothing written during the scan can be lost.
//
// Registration lives exactly as long as our userfaultfd: closing it (close(), or this
// process exiting) drops it silently. A lost registration is always an error the caller
// sees (TrackingLostError), never an empty result.
//
// For the integrator (all checked by test/tracking-wp.test.ts on kernel 6.18):
// - arm() needs ptrace rights over the target and fails while anyone traces it, CRIU
//   included: arm between checkpoints (or before the first dump), never inside the freeze.
//   The target may be running, blocked in a syscall (restarted afterwards) or stopped.
// - scan() and registerNew() need no ptrace: call them inside CRIU's freeze (from its
//   first pagemap open to its post-dump action the tasks are seized), registerNew() first.
// - Use the result as: pages in `tracked` − `dirty` are unchanged since the previous scan;
//   everything else (dirty, new/moved/remapped VMAs, unarmable VMAs) must be read.
// - Threads share one address space: one tracker per process covers them all.
// - fork: the child inherits neither our registration nor write-protect bits (the kernel
//   drops both without UFFD_FEATURE_EVENT_FORK); it is untracked until armed itself, and
//   the parent's tracking is unaffected. exec or exit: the next call throws
//   TrackingLostError (an exec'd process can be armed again).
// - mremap (move) drops the moved VMA's registration; munmap+mmap in place, brk growth
//   and new mmaps give unregistered VMAs: outside `tracked` until registerNew() arms them.
// - Not seen by write protection: writes the kernel does through a page pinned before the
//   scan (io_uring fixed buffers, RDMA, an O_DIRECT read in flight): they never fault.
//   MAP_DROPPABLE memory (glibc's getrandom state) cannot be registered: see unarmable().
// - After a CRIU dump with --leave-running the registration is intact; the kernel's rseq
//   update of the thread's TLS page on resume shows up as one written page per thread.
import { hasExited } from '../sys/proc.js';
import { closeSync, fstatSync, openSync, readFileSync, readlinkSync, readSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { ioctlBuffer, lastErrno, syscallRaw, SyscallError } from '../sys/libc.js';
import { injectSyscalls } from './uffd-inject.js';
import { PagemapScanner, WpAsyncCheckError, type PageRegion, type ScanQuery } from './pagemap-scan.js';
import {
  assertPageRange,
  formatRange,
  intersect,
  normalize,
  subtract,
  union,
  type Range,
} from './page-ranges.js';
import {
  describeUffdFeatures,
  O_CLOEXEC,
  O_NONBLOCK,
  PAGE_SIZE,
  PageCategory,
  PmScanFlag,
  Sys,
  UFFD_API,
  UFFD_USER_MODE_ONLY,
  UFFDIO_API,
  UFFDIO_API_STRUCT,
  UFFDIO_REGISTER,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_REGISTER_STRUCT,
  UffdFeature,
} from './uffd-abi.js';

export type { Range } from './page-ranges.js';

/**
 * End of the user address space searched for registered VMAs: TASK_SIZE_MAX of x86-64
 * with 4-level paging. A process that maps above it (5-level paging, opt-in) is refused.
 */
export const USER_ADDRESS_END = 2 ** 47 - PAGE_SIZE;

/** Features without which tracking cannot be sound or cannot work at all. */
const REQUIRED_FEATURES = UffdFeature.WP_ASYNC | UffdFeature.WP_UNPOPULATED;
/** Asked for when offered: lets private mappings of shmem/hugetlbfs files be registered. */
const OPTIONAL_FEATURES = UffdFeature.WP_HUGETLBFS_SHMEM;

/** Kernel-special mappings that are never the process's data. */
const SPECIAL_MAPPINGS = new Set(['[vsyscall]', '[vvar]', '[vvar_vclock]', '[vdso]', '[uprobes]']);

const { EPERM, ESRCH, EBUSY, EINVAL } = osConstants.errno;

// ---- errors --------------------------------------------------------------------------

export class WriteTrackingError extends Error {
  override name = 'WriteTrackingError';
}

/**
 * Tracking of this process can no longer say what was written: the userfaultfd was closed,
 * the process exec'd (new address space) or exited, or registration vanished. Every page
 * must be treated as changed; a new tracker can be armed.
 */
export class TrackingLostError extends WriteTrackingError {
  override name = 'TrackingLostError';
  constructor(
    readonly pid: number,
    readonly reason: string,
  ) {
    super(`write tracking of process ${pid} is lost: ${reason}; treat every page as changed and arm a new tracker`);
  }
}

/** Memory of a running process could not be read: the range was unmapped meanwhile, or the process ended. */
export class MemoryUnreadableError extends WriteTrackingError {
  override name = 'MemoryUnreadableError';
  constructor(
    readonly pid: number,
    readonly vaddr: number,
    reason: string,
  ) {
    super(`memory of process ${pid} at 0x${vaddr.toString(16)} could not be read: ${reason}`);
  }
}

/** The kernel lacks what tracking needs (userfaultfd async WP, PAGEMAP_SCAN). */
export class WriteTrackingUnsupportedError extends WriteTrackingError {
  override name = 'WriteTrackingUnsupportedError';
}

/** The target cannot be tracked (not a process leader, seccomp, 5-level addresses...). */
export class TargetNotTrackableError extends WriteTrackingError {
  override name = 'TargetNotTrackableError';
  constructor(
    readonly pid: number,
    reason: string,
  ) {
    super(`process ${pid} cannot be write-tracked: ${reason}`);
  }
}

// ---- /proc/PID/maps --------------------------------------------------------------------

export interface Vma extends Range {
  perms: string;
  /** The path, a [name], or '' for anonymous memory. */
  name: string;
}

export function readVmas(pid: number): Vma[] {
  const out: Vma[] = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    if (!line) continue;
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (!m) throw new Error(`/proc/${pid}/maps: unexpected line ${JSON.stringify(line)}`);
    const name = m[4]!;
    if (name === '[vsyscall]') continue; // above every user address, never the process's data
    const start = Number.parseInt(m[1]!, 16);
    const end = Number.parseInt(m[2]!, 16);
    const vma = { start, end, perms: m[3]!, name };
    assertPageRange(vma, `/proc/${pid}/maps`);
    out.push(vma);
  }
  return out;
}

/** VMAs whose content is the process's own private data: writable, private, not special. */
export function isTrackableVma(vma: Vma): boolean {
  return vma.perms[1] === 'w' && vma.perms[3] === 'p' && !SPECIAL_MAPPINGS.has(vma.name);
}

// ---- kernel feature probe ---------------------------------------------------------------

let offeredFeatures: number | undefined;

/** UFFDIO_API features this kernel offers (probed once, on a userfaultfd of our own). */
export function kernelUffdFeatures(): number {
  if (offeredFeatures !== undefined) return offeredFeatures;
  // UFFD_USER_MODE_ONLY: allowed whatever vm.unprivileged_userfaultfd says.
  const fd = syscallRaw(Sys.userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd < 0) throw new WriteTrackingUnsupportedError(`userfaultfd() failed with errno ${lastErrno()}: the kernel has no userfaultfd (CONFIG_USERFAULTFD)`);
  try {
    const api = Buffer.alloc(UFFDIO_API_STRUCT.size);
    api.writeBigUInt64LE(BigInt(UFFD_API), UFFDIO_API_STRUCT.api);
    if (ioctlBuffer(fd, UFFDIO_API, api) < 0) throw new SyscallError('ioctl(UFFDIO_API) probe', lastErrno());
    offeredFeatures = Number(api.readBigUInt64LE(UFFDIO_API_STRUCT.features));
  } finally {
    closeSync(fd);
  }
  return offeredFeatures;
}

// ---- the tracker ---------------------------------------------------------------------

export interface ArmOptions {
  /**
   * 'auto' creates the userfaultfd with full rights and falls back to UFFD_USER_MODE_ONLY
   * when the target may not (vm.unprivileged_userfaultfd=0, no CAP_SYS_PTRACE);
   * 'user-mode-only' always uses it. Async write protection resolves kernel-mode writes
   * (read() into a buffer, process_vm_writev) without a handler, so both track them.
   */
  uffdMode?: 'auto' | 'user-mode-only';
  /**
   * A target under a seccomp filter might be killed by the injected userfaultfd() if its
   * filter says SECCOMP_RET_KILL; by default such targets are refused.
   */
  allowSeccompFilteredTarget?: boolean;
}

export interface UnarmableVma extends Range {
  name: string;
  reason: string;
}

export interface ScanResult {
  /**
   * 1 for the first scan after arm(), then 2, 3... Scan 1 is relative to the arming,
   * which is no atomic moment if the process was running then, and to no checkpoint:
   * take a full checkpoint with it; from scan 2 on, results are relative to the
   * previous scan (the previous checkpoint's freeze).
   */
  sequence: number;
  /**
   * Pages whose changes since the previous scan this result accounts for: registered
   * without interruption since then. A page in here and not in `dirty` is unchanged.
   * Everything outside (new or moved VMAs, VMAs that could not be registered) is unknown.
   */
  tracked: Range[];
  /** Pages in `tracked` that may have changed: `written` ∪ `vanished`, within `tracked`. */
  dirty: Range[];
  /** Pages the kernel reports written (not write-protected), in every registered VMA. */
  written: Range[];
  /**
   * Pages that held private data at the previous scan and hold none now (zapped by
   * MADV_DONTNEED/FREE or unmapped and mapped again in place, reverted to the file page)
   * without a write fault: their content may now read as zeros or as the file's.
   */
  vanished: Range[];
  /** Registered VMA ranges now (after this scan). */
  armed: Range[];
  /** Time of the whole scan, ms. */
  scanMs: number;
  /** The three page-table walks of a scan, ms: registered VMAs, written pages, populated pages. */
  walkMs: { registered: number; written: number; populated: number };
  /** PAGEMAP_SCAN calls made. */
  ioctls: number;
}

const QUERY_REGISTERED: ScanQuery = {
  flags: 0,
  categoryMask: PageCategory.WPALLOWED,
  categoryAnyofMask: 0,
  categoryInverted: 0,
  returnMask: PageCategory.WPALLOWED,
};

/**
 * Written pages, write-protected again in the same walk. category_mask == return_mask ==
 * PAGE_IS_WRITTEN exactly: the kernel's fast path for this query, which also treats an
 * empty pte as written (and installs a marker), so a zapped page is reported.
 */
const QUERY_WRITTEN_AND_PROTECT: ScanQuery = {
  flags: PmScanFlag.WP_MATCHING | PmScanFlag.CHECK_WPASYNC,
  categoryMask: PageCategory.WRITTEN,
  categoryAnyofMask: 0,
  categoryInverted: 0,
  returnMask: PageCategory.WRITTEN,
};

/**
 * Write-protects whatever is written, silently skipping VMAs that are not registered: for
 * the baseline at arm() and for ranges registerNew() just added, where the process may be
 * running and a VMA replaced between the registration query and this walk.
 */
const QUERY_PROTECT_REGISTERED: ScanQuery = { ...QUERY_WRITTEN_AND_PROTECT, flags: PmScanFlag.WP_MATCHING };

/**
 * Populated pages of anonymous VMAs, for the "vanished" comparison. No PAGE_IS_FILE here:
 * asking for it costs a page lookup per pte (10x the walk: 3.5 ms instead of 0.35 ms for
 * 256 MiB here), and an anonymous VMA holds no page-cache pages anyway.
 */
const QUERY_POPULATED_ANON: ScanQuery = {
  flags: 0,
  categoryMask: 0,
  categoryAnyofMask: PageCategory.PRESENT | PageCategory.SWAPPED,
  categoryInverted: 0,
  returnMask: PageCategory.PRESENT | PageCategory.SWAPPED | PageCategory.PFNZERO,
};

/** Populated pages of file-backed VMAs, told apart: the file's page or a private copy. */
const QUERY_POPULATED_FILE: ScanQuery = {
  ...QUERY_POPULATED_ANON,
  returnMask: PageCategory.PRESENT | PageCategory.SWAPPED | PageCategory.FILE | PageCategory.PFNZERO,
};

/** Names /proc/PID/maps gives anonymous memory; anything else may hold page-cache pages. */
function isAnonymousVma(vma: Vma): boolean {
  const n = vma.name;
  return n === '' || n === '[heap]' || n.startsWith('[stack') || n.startsWith('[anon:');
}

/** A page holds private data (what CRIU dumps) unless it is the file's page or the zero page. */
function holdsPrivateData(categories: number): boolean {
  if (categories & PageCategory.FILE) return false;
  if (categories & PageCategory.SWAPPED) return true;
  return (categories & PageCategory.PRESENT) !== 0 && (categories & PageCategory.PFNZERO) === 0;
}

/** One tracker per process (tgid): threads share its address space. */
export class WriteTracker {
  private readonly scanner: PagemapScanner;
  private readonly uffdIdentity: { dev: number; ino: number };
  /** Registered ranges at the end of the previous scan (or arm). */
  private armedAtScan: Range[] = [];
  /** Ranges newly registered since the previous scan: not tracked until the next one. */
  private registeredSinceScan: Range[] = [];
  /** Pages holding private data at the previous scan. */
  private populatedAtScan: Range[] = [];
  private unarmableVmas: UnarmableVma[] = [];
  /** Why a range was refused, kept so that registerNew() does not read smaps again. */
  private readonly refusedReasons = new Map<string, string>();
  private scans = 0;
  private closed = false;

  private constructor(
    readonly pid: number,
    private readonly uffd: number,
    private readonly pagemapFd: number,
    private readonly memFd: number,
    /** The userfaultfd flags the target's uffd was created with. */
    readonly uffdFlags: number,
    /** The UFFDIO_API features enabled. */
    readonly features: number,
  ) {
    this.scanner = new PagemapScanner(pagemapFd);
    const st = fstatSync(uffd);
    this.uffdIdentity = { dev: st.dev, ino: st.ino };
  }

  /**
   * Arms tracking of pid (running or stopped; must not be traced by anyone else). All
   * writable private VMAs are registered and the baseline is taken: the first scan()
   * reports what is written from now on.
   */
  static arm(pid: number, options: ArmOptions = {}): WriteTracker {
    const offered = kernelUffdFeatures();
    if ((offered & REQUIRED_FEATURES) !== REQUIRED_FEATURES) {
      throw new WriteTrackingUnsupportedError(
        `this kernel's userfaultfd offers ${describeUffdFeatures(offered)}; write tracking needs WP_ASYNC and WP_UNPOPULATED (Linux 6.7 or later)`,
      );
    }
    checkTarget(pid, options);

    // These two bind to the address space pid has now: a later exec cannot redirect them.
    const pagemapFd = openSync(`/proc/${pid}/pagemap`, 'r');
    let memFd = -1;
    let uffd = -1;
    try {
      memFd = openSync(`/proc/${pid}/mem`, 'r');
      const created = createUffdInTarget(pid, options.uffdMode ?? 'auto');
      uffd = created.fd;
      const wanted = REQUIRED_FEATURES | (offered & OPTIONAL_FEATURES);
      const api = Buffer.alloc(UFFDIO_API_STRUCT.size);
      api.writeBigUInt64LE(BigInt(UFFD_API), UFFDIO_API_STRUCT.api);
      api.writeBigUInt64LE(BigInt(wanted), UFFDIO_API_STRUCT.features);
      if (ioctlBuffer(uffd, UFFDIO_API, api) < 0) throw new SyscallError(`ioctl(UFFDIO_API, ${describeUffdFeatures(wanted)})`, lastErrno());
      const granted = Number(api.readBigUInt64LE(UFFDIO_API_STRUCT.features));
      if ((granted & wanted) !== wanted) {
        throw new WriteTrackingUnsupportedError(`UFFDIO_API granted ${describeUffdFeatures(granted)} of ${describeUffdFeatures(wanted)}`);
      }
      const tracker = new WriteTracker(pid, uffd, pagemapFd, memFd, created.flags, wanted);
      tracker.registerVmas(readVmas(pid).filter(isTrackableVma));
      tracker.takeBaseline();
      return tracker;
    } catch (e) {
      if (uffd >= 0) closeSync(uffd);
      if (memFd >= 0) closeSync(memFd);
      closeSync(pagemapFd);
      throw e;
    }
  }

  /** Registered ranges as of the latest scan, arm or registerNew. */
  armedRanges(): Range[] {
    return union(this.armedAtScan, this.registeredSinceScan);
  }

  /**
   * A scan of the running process whose written pages are dropped: from here on, scan()
   * reports only what is written after this (a pre-copy reads the memory next). No write
   * gets lost, as each page is reported and protected again at once; only the layout may
   * move under the walk, which the next scan, frozen, accounts for. Returns the pages that
   * hold private data (what CRIU would dump) in the registered VMAs, as the scan found them.
   */
  forgetWritten(): Range[] {
    this.scan();
    return this.populatedAtScan;
  }

  /** Scans taken so far: the next scan's sequence is this plus one. */
  get scanCount(): number {
    return this.scans;
  }

  /** Fills `into` with the process's memory from vaddr on (through /proc/PID/mem, bound to this address space). */
  readMemory(vaddr: number, into: Uint8Array): void {
    let done = 0;
    while (done < into.length) {
      let n: number;
      try {
        n = readSync(this.memFd, into, done, into.length - done, vaddr + done);
      } catch (e) {
        // EIO: not mapped (any more); ESRCH: the process is gone.
        throw new MemoryUnreadableError(this.pid, vaddr + done, (e as NodeJS.ErrnoException).code ?? String(e));
      }
      if (n === 0) throw new MemoryUnreadableError(this.pid, vaddr + done, 'the address space ended');
      done += n;
    }
  }

  /** Writable private VMAs that could not be registered at the latest attempt, and why. */
  unarmable(): UnarmableVma[] {
    return this.unarmableVmas.map((v) => ({ ...v }));
  }

  /**
   * The pages written since the previous scan, write-protected again atomically. Call it
   * while every thread of the process is stopped (CRIU's freeze, SIGSTOP): a thread that
   * runs meanwhile cannot make a write get lost, but the layout (and so `tracked`) could
   * change under the walk. In a checkpoint's freeze call registerNew() first, then
   * scan(): VMAs registered then are tracked from this checkpoint on.
   */
  scan(): ScanResult {
    this.assertAlive();
    const t0 = performance.now();
    const callsBefore = this.scanner.calls;
    const registered = this.queryRegistered();
    const t1 = performance.now();
    if (registered.length === 0 && this.armedRanges().length > 0) {
      throw new TrackingLostError(this.pid, 'no VMA of the process is registered any more');
    }
    const written: Range[] = [];
    for (const r of registered) {
      try {
        this.scanner.scan(r, QUERY_WRITTEN_AND_PROTECT, (region) => written.push(region));
      } catch (e) {
        if (e instanceof WpAsyncCheckError) {
          throw new TrackingLostError(this.pid, `${formatRange(r)} lost its registration during the scan (is the process really stopped?)`);
        }
        throw e;
      }
    }
    const t2 = performance.now();
    const populated = this.queryPopulated(registered);
    const t3 = performance.now();
    const writtenSet = normalize(written);
    const tracked = subtract(intersect(this.armedAtScan, registered), this.registeredSinceScan);
    const vanished = subtract(intersect(subtract(this.populatedAtScan, populated), tracked), writtenSet);
    const dirty = intersect(union(writtenSet, vanished), tracked);
    const scanMs = performance.now() - t0;

    this.armedAtScan = registered;
    this.registeredSinceScan = [];
    this.populatedAtScan = populated;
    this.scans++;
    return {
      sequence: this.scans,
      tracked,
      dirty,
      written: writtenSet,
      vanished,
      armed: registered,
      scanMs,
      walkMs: { registered: t1 - t0, written: t2 - t1, populated: t3 - t2 },
      ioctls: this.scanner.calls - callsBefore,
    };
  }

  /**
   * Registers the writable private VMAs that are not registered (new mmaps, grown brk,
   * moved or re-mapped regions) and write-protects them at once. Returns the newly
   * registered ranges. They are not in the next scan's `tracked` (their content since the
   * previous scan is unknown: the caller reads it); they are tracked from that scan on.
   * So call it before scan() in a checkpoint's freeze: the next checkpoint then knows
   * exactly what changed in them.
   */
  registerNew(): Range[] {
    this.assertAlive();
    const before = this.queryRegistered();
    const candidates = readVmas(this.pid).filter(isTrackableVma);
    const missing = candidates.filter((v) => subtract([{ start: v.start, end: v.end }], before).length > 0);
    this.registerVmas(missing);
    const after = this.queryRegistered();
    const added = subtract(after, before);
    for (const r of added) this.scanner.scan(r, QUERY_PROTECT_REGISTERED, () => {});
    this.registeredSinceScan = union(this.registeredSinceScan, added);
    return added;
  }

  /** Closes our userfaultfd (which drops the registration) and the procfs files. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    // If the number was closed behind our back and reused, it is someone else's now.
    if (this.uffdIsOurs()) closeSync(this.uffd);
    closeSync(this.pagemapFd);
    closeSync(this.memFd);
  }

  // ---- internals --------------------------------------------------------------------

  private registerVmas(vmas: Vma[]): void {
    const unarmable: UnarmableVma[] = [];
    const arg = Buffer.alloc(UFFDIO_REGISTER_STRUCT.size);
    for (const vma of vmas) {
      if (vma.end > USER_ADDRESS_END) throw new TargetNotTrackableError(this.pid, `it maps ${formatRange(vma)}, above the 47-bit address space this tracker scans`);
      arg.fill(0);
      arg.writeBigUInt64LE(BigInt(vma.start), UFFDIO_REGISTER_STRUCT.start);
      arg.writeBigUInt64LE(BigInt(vma.end - vma.start), UFFDIO_REGISTER_STRUCT.len);
      arg.writeBigUInt64LE(BigInt(UFFDIO_REGISTER_MODE_WP), UFFDIO_REGISTER_STRUCT.mode);
      if (ioctlBuffer(this.uffd, UFFDIO_REGISTER, arg) === 0) continue;
      const e = lastErrno();
      if (e === ESRCH) throw new TrackingLostError(this.pid, 'its address space is gone (exec or exit)');
      if (e === EINVAL || e === EBUSY || e === EPERM) {
        // EINVAL: a kind of VMA userfaultfd refuses (MAP_DROPPABLE, VM_PFNMAP...), or it
        // changed since maps was read; EBUSY: another userfaultfd owns it; EPERM: no
        // VM_MAYWRITE. None of these is armed; the caller hashes what lies there.
        const key = `${formatRange(vma)} ${vma.name}`;
        let reason = this.refusedReasons.get(key);
        if (reason === undefined) {
          reason = e === EBUSY ? 'owned by another userfaultfd' : e === EPERM ? 'not writable through this mapping (no VM_MAYWRITE)' : refusedVmaReason(this.pid, vma);
          this.refusedReasons.set(key, reason);
        }
        unarmable.push({ start: vma.start, end: vma.end, name: vma.name, reason });
        continue;
      }
      throw new SyscallError(`ioctl(UFFDIO_REGISTER ${formatRange(vma)} ${vma.name || '[anon]'})`, e);
    }
    this.unarmableVmas = unarmable;
  }

  private takeBaseline(): void {
    const registered = this.queryRegistered();
    for (const r of registered) this.scanner.scan(r, QUERY_PROTECT_REGISTERED, () => {});
    this.armedAtScan = registered;
    this.registeredSinceScan = [];
    this.populatedAtScan = this.queryPopulated(registered);
  }

  /** Address ranges of the VMAs registered for async WP: a VMA-level category. */
  private queryRegistered(): Range[] {
    const out: Range[] = [];
    this.scanner.scan({ start: 0, end: USER_ADDRESS_END }, QUERY_REGISTERED, (r) => out.push(r));
    return normalize(out);
  }

  /** Pages holding private data in the registered ranges (maps read now: call it frozen). */
  private queryPopulated(registered: Range[]): Range[] {
    const anonymous = normalize(readVmas(this.pid).filter(isAnonymousVma));
    const out: Range[] = [];
    const collect = (region: PageRegion): void => {
      if (holdsPrivateData(region.categories)) out.push(region);
    };
    for (const r of intersect(registered, anonymous)) this.scanner.scan(r, QUERY_POPULATED_ANON, collect);
    for (const r of subtract(registered, anonymous)) this.scanner.scan(r, QUERY_POPULATED_FILE, collect);
    return normalize(out);
  }

  private uffdIsOurs(): boolean {
    try {
      const st = fstatSync(this.uffd);
      return st.dev === this.uffdIdentity.dev && st.ino === this.uffdIdentity.ino;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EBADF') return false;
      throw e;
    }
  }

  /** Our uffd is still the one we made, and the address space it serves still exists. */
  private assertAlive(): void {
    if (this.closed) throw new WriteTrackingError(`the write tracker of process ${this.pid} is closed`);
    if (!this.uffdIsOurs()) {
      throw new TrackingLostError(this.pid, `its userfaultfd (fd ${this.uffd}) was closed behind the tracker's back (the number is free or reused)`);
    }
    // /proc/PID/mem opened at arm holds that address space: a read at address 0 (never
    // mapped) fails with EIO while it lives and returns 0 bytes once it is torn down.
    const probe = Buffer.alloc(1);
    try {
      const n = readSync(this.memFd, probe, 0, 1, 0);
      if (n === 0) {
        throw new TrackingLostError(this.pid, hasExited(this.pid) ? 'the process exited' : 'the process replaced its address space (execve)');
      }
    } catch (e) {
      if (e instanceof TrackingLostError) throw e;
      if ((e as NodeJS.ErrnoException).code !== 'EIO') throw e;
    }
  }
}

/** Why UFFDIO_REGISTER said EINVAL for vma, from its smaps VmFlags (read only on failure). */
function refusedVmaReason(pid: number, vma: Vma): string {
  let flags: string[] = [];
  try {
    const smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8');
    const header = `${vma.start.toString(16).padStart(8, '0')}-${vma.end.toString(16).padStart(8, '0')} `;
    const at = smaps.indexOf(header);
    if (at >= 0) flags = /^VmFlags:(.*)$/m.exec(smaps.slice(at))?.[1]?.trim().split(/\s+/) ?? [];
  } catch {
    // gone meanwhile: the generic reason below
  }
  if (flags.includes('dp')) return 'MAP_DROPPABLE (the kernel may discard it at any time; glibc keeps its vDSO getrandom state there), which userfaultfd refuses';
  if (flags.includes('pf') || flags.includes('io')) return 'a VM_PFNMAP/VM_IO device mapping, which userfaultfd refuses';
  if (flags.length === 0) return 'userfaultfd refused it (EINVAL) and it is gone from smaps: it changed while being registered';
  return `userfaultfd refused it (EINVAL); VmFlags: ${flags.join(' ')}`;
}

function checkTarget(pid: number, options: ArmOptions): void {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    throw new TargetNotTrackableError(pid, 'it does not exist');
  }
  const field = (name: string): string | undefined => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1];
  if (Number(field('Tgid')) !== pid) throw new TargetNotTrackableError(pid, `it is a thread of process ${field('Tgid')}; arm the process`);
  if (field('State')?.startsWith('Z')) throw new TargetNotTrackableError(pid, 'it is a zombie');
  if (field('VmSize') === undefined) throw new TargetNotTrackableError(pid, 'it has no address space (a kernel thread?)');
  if (field('Seccomp') === '2' && !options.allowSeccompFilteredTarget) {
    throw new TargetNotTrackableError(pid, 'it runs under a seccomp filter, which might kill it for the injected userfaultfd() (pass allowSeccompFilteredTarget to try anyway)');
  }
}

/**
 * Creates a userfaultfd inside pid, takes a copy, and closes pid's own: the target never
 * keeps one (CRIU refuses to dump a process holding a userfaultfd).
 */
function createUffdInTarget(pid: number, mode: 'auto' | 'user-mode-only'): { fd: number; flags: number } {
  const pidfd = syscallRaw(Sys.pidfd_open, pid, 0);
  if (pidfd < 0) throw new SyscallError(`pidfd_open(${pid})`, lastErrno());
  try {
    let flags = O_CLOEXEC | O_NONBLOCK | (mode === 'user-mode-only' ? UFFD_USER_MODE_ONLY : 0);
    let localFd = -1;
    try {
      injectSyscalls(pid, (target) => {
        let remoteFd = target.syscall(Sys.userfaultfd, flags);
        if (remoteFd === -EPERM && mode === 'auto') {
          flags |= UFFD_USER_MODE_ONLY;
          remoteFd = target.syscall(Sys.userfaultfd, flags);
        }
        if (remoteFd < 0) throw new WriteTrackingError(`userfaultfd() inside process ${pid} failed with errno ${-remoteFd}`);
        let getfdFailure: unknown;
        try {
          localFd = syscallRaw(Sys.pidfd_getfd, pidfd, remoteFd, 0);
          if (localFd < 0) throw new SyscallError(`pidfd_getfd(${pid}, ${remoteFd})`, lastErrno());
        } catch (e) {
          getfdFailure = e;
        }
        // Closed whatever happened: the target would keep a userfaultfd, and CRIU could no
        // longer dump it. That failure says the other, if both failed.
        const closed = target.syscall(Sys.close, remoteFd);
        if (closed !== 0) {
          const also = getfdFailure === undefined ? '' : ` (pidfd_getfd had failed too: ${(getfdFailure as Error).message})`;
          throw new WriteTrackingError(`close(${remoteFd}) inside process ${pid} failed with errno ${-closed}; it still holds a userfaultfd${also}`);
        }
        if (getfdFailure !== undefined) throw getfdFailure;
      });
    } catch (e) {
      if (localFd >= 0) closeSync(localFd);
      throw e;
    }
    const kind = readlinkSync(`/proc/self/fd/${localFd}`);
    if (kind !== 'anon_inode:[userfaultfd]') {
      closeSync(localFd);
      throw new WriteTrackingError(`the descriptor copied from process ${pid} is ${kind}, not a userfaultfd (did another thread reuse the number?)`);
    }
    return { fd: localFd, flags };
  } finally {
    closeSync(pidfd);
  }
}

