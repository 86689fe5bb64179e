// Dirty tracking of one job for its controller: eBPF (layout, fd, file and fork events,
// fault counts) plus userfaultfd write protection per process. At each checkpoint,
// while the job is frozen, it tells the ingest which pages are proven clean since the
// previous committed checkpoint — and nothing else. The rule that keeps incremental
// checkpoints exact:
//   a page is clean only if its process was tracked without a break since that
//   checkpoint, its VMA was registered for the whole interval, the kernel reports it
//   neither written nor zapped, no eBPF layout event touched it, nothing was lost, and
//   that checkpoint has an id for it.
import { readFileSync } from 'node:fs';
import type { JobTracker, TrackingReport } from '../tracking/bpf/job-tracker.js';
import { pageCount, type Range, subtract, union } from '../tracking/page-ranges.js';
import { TrackingLostError, WriteTracker } from '../tracking/write-protect.js';
import { type CleanPages, NO_CLEAN_PAGES, type PageIndex } from './ingest.js';
import { processTree } from './procfs.js';
import { isGone } from '../sys/proc.js';
import { CHUNK_ID_BYTES } from '../store/format.js';

/**
 * Adaptive arming. Write protection costs one fault per first write to a page in each
 * interval (~15–25 µs in this VM) and saves reading and hashing the pages not written
 * (~2 µs each, plus CRIU's copy which it does not save). Measured here (npm run bench),
 * the job's own loss equals the ingest's gain near 10–15% of pages written per interval.
 * When most pages are written every interval it saves nearly nothing and costs a
 * fault per page: above DISARM_DIRTY_FRACTION the controller disarms and hashes
 * everything; it re-arms when the fraction of pages that changed between two full
 * checkpoints falls below REARM_DIRTY_FRACTION. The gap between the two is hysteresis,
 * so a job near the threshold does not flip every interval.
 */
export const DISARM_DIRTY_FRACTION = 0.25;
export const REARM_DIRTY_FRACTION = 0.1;

export type ProcessTrackingMode = 'armed' | 'arming' | 'disarmed' | 'unarmed';

interface TrackedProcess {
  hostPid: number;
  nsPid: number;
  tracker: WriteTracker | null;
  /** Why the process has no tracker (arming failed, lost), for status and notes. */
  problem: string | null;
}

/** What the freeze-time part of a checkpoint learned, until the checkpoint commits or fails. */
export interface FrozenTracking {
  clean: CleanPages;
  /** What the clean pages' ids come from: the previous checkpoint, a pre-copy of this one, or nothing (none clean). */
  reference: 'checkpoint' | 'precopy' | null;
  /** Why pages were not reused, one line per reason (empty when all tracking held). */
  notes: string[];
  dirtyFraction: number | null;
}

/** One change of a process's fd table, as eBPF saw it. */
export interface FdChange {
  pid: number;
  op: string;
  syscall: string;
  fd: number;
  /** The second fd of a pair, the source of a dup, the last of a closed range; else -1. */
  otherFd: number;
  path: string | null;
}

/** Since the previous checkpoint, for `crinc status`. */
export interface IntervalActivity {
  writeFaults: number;
  writtenPages: number;
  fdChanges: FdChange[];
  fdsChanged: Map<number, Set<number>>;
  modifiedFiles: Map<string, { bytesWritten: number; writes: number }>;
  changedRanges: Map<number, Range[]>;
  complete: boolean;
  incompleteBecause: string[];
  execed: Set<number>;
  startedAt: number;
}

function emptyActivity(): IntervalActivity {
  return {
    writeFaults: 0,
    writtenPages: 0,
    fdChanges: [],
    fdsChanged: new Map(),
    modifiedFiles: new Map(),
    changedRanges: new Map(),
    complete: true,
    incompleteBecause: [],
    execed: new Set(),
    startedAt: Date.now(),
  };
}

/** The PID a host process has inside the job's namespace (CRIU's images use it). */
export function namespacePid(hostPid: number): number {
  const status = readFileSync(`/proc/${hostPid}/status`, 'utf8');
  const m = /^NSpid:\s*([\d\s]+)$/m.exec(status);
  if (!m) return hostPid;
  const pids = m[1]!.trim().split(/\s+/);
  return Number(pids[pids.length - 1]);
}

/** One process a pre-copy may read while the job runs (TrackingSession.precopyTargets). */
export interface PrecopyTarget {
  hostPid: number;
  /** Its PID inside the image. */
  nsPid: number;
  /** The pages that hold private data now, at ascending addresses. */
  ranges: Range[];
  /** Fills `into` with its memory from vaddr on; throws a WriteTrackingError when that is no longer mapped. */
  read(vaddr: number, into: Uint8Array): void;
  /** Its tracker's scans before the pre-copy: the freeze's scan must be the next one. */
  scansBefore: number;
}

export class TrackingSession {
  private readonly processes = new Map<number, TrackedProcess>();
  private baseline: PageIndex | null = null;
  /** The checkpoint whose pages the baseline is; null exactly when the baseline is. */
  private baselineId: number | null = null;
  /** Pages read by a pre-copy since the previous scan: the next freeze's reference when there is no baseline. */
  private precopy: { pages: PageIndex; scansBefore: Map<number, number> } | null = null;
  private activity = emptyActivity();
  private disarmed = false;
  private pendingFrozen: { dirtyFraction: number | null } | null = null;

  constructor(
    private readonly rootPid: number,
    private readonly bpf: JobTracker,
  ) {
    bpf.track(rootPid);
    this.armNewProcesses();
  }

  get mode(): 'armed' | 'disarmed' {
    return this.disarmed ? 'disarmed' : 'armed';
  }

  /** Whether the next checkpoint can reuse clean pages (a baseline, armed), unless the scan finds the interval's tracking incomplete. */
  get hasBaseline(): boolean {
    return this.baseline !== null && !this.disarmed;
  }

  /** Folds what eBPF saw since the last drain into the interval's activity. */
  private absorb(report: TrackingReport): void {
    const a = this.activity;
    for (const reason of memoryBlindSpots(report)) {
      a.complete = false;
      a.incompleteBecause.push(reason);
    }
    for (const [tgid, p] of report.processes) {
      a.writeFaults += p.userWriteFaults + p.kernelWriteFaults;
      a.writtenPages += p.writtenPages.addresses.length;
      if (p.execed) a.execed.add(tgid);
      if (!p.changedRangesComplete) {
        a.complete = false;
        a.incompleteBecause.push(`process ${tgid}: address-space changes not fully known`);
      }
      a.changedRanges.set(tgid, union(a.changedRanges.get(tgid) ?? [], p.changedRanges));
      const fds = a.fdsChanged.get(tgid) ?? new Set<number>();
      for (const fd of p.fdsChanged) fds.add(fd);
      a.fdsChanged.set(tgid, fds);
      for (const e of p.fdChanges) a.fdChanges.push({ pid: tgid, op: e.op, syscall: e.syscall, fd: e.fd, otherFd: e.otherFd, path: e.path });
    }
    for (const f of report.files) {
      const key = f.path ?? `${f.device}:${f.file.ino}`;
      const prev = a.modifiedFiles.get(key) ?? { bytesWritten: 0, writes: 0 };
      a.modifiedFiles.set(key, { bytesWritten: prev.bytesWritten + f.bytesWritten, writes: prev.writes + f.writes });
    }
  }

  /** The activity since the previous checkpoint (drains eBPF; nothing is lost by asking). */
  peek(): IntervalActivity {
    this.absorb(this.bpf.drain());
    return this.activity;
  }

  processModes(): { pid: number; nsPid: number; mode: ProcessTrackingMode; problem: string | null }[] {
    return [...this.processes.values()].map((p) => ({
      pid: p.hostPid,
      nsPid: p.nsPid,
      mode: this.disarmed ? 'disarmed' : p.tracker ? 'armed' : 'unarmed',
      problem: p.problem,
    }));
  }

  /**
   * The processes a pre-copy may read now, while the job runs, when the next checkpoint
   * has no baseline to reuse pages from (a job's first checkpoint) and tracking is armed.
   * Each is scanned first, running: the scan only forgets what was written so far (no
   * write is lost: each page is reported and protected again at once). A page the
   * freeze's scan then reports clean was not written since, so what the pre-copy reads
   * after this is what it holds at the freeze.
   */
  precopyTargets(): PrecopyTarget[] {
    this.precopy = null;
    if (this.baseline !== null || this.disarmed) return [];
    const targets: PrecopyTarget[] = [];
    for (const p of this.processes.values()) {
      const tracker = p.tracker;
      if (!tracker) continue;
      try {
        const ranges = tracker.forgetWritten();
        targets.push({ hostPid: p.hostPid, nsPid: p.nsPid, ranges, read: (vaddr, into) => tracker.readMemory(vaddr, into), scansBefore: tracker.scanCount });
      } catch (e) {
        if (e instanceof TrackingLostError) {
          // A scan cut short may have protected pages it did not report: this tracker can no longer tell.
          tracker.close();
          p.tracker = null;
          p.problem = e.message;
          continue;
        }
        // Ended since: nothing to read.
        if (!isGone(e)) throw e;
      }
    }
    return targets;
  }

  /** The pages a pre-copy read (by PID inside the image), and each process's scans before it. */
  usePrecopy(pages: PageIndex, scansBefore: Map<number, number>): void {
    this.precopy = { pages, scansBefore };
  }

  /**
   * While the job is frozen for a checkpoint: drain eBPF, register new VMAs and scan
   * every tracked process. Returns what the ingest may reuse.
   */
  whileFrozen(): FrozenTracking {
    // A pre-copy is for this freeze only, and only stands in for a missing baseline.
    const precopy = this.baseline === null ? this.precopy : null;
    this.precopy = null;
    this.absorb(this.bpf.drain());
    const a = this.activity;
    const notes: string[] = [];
    const cleanByNsPid = new Map<number, Range[]>();
    let trackedPages = 0;
    let dirtyPages = 0;
    const live = new Set(processTree(this.rootPid));
    for (const pid of live) {
      const p = this.processes.get(pid);
      if (!p) {
        notes.push(`process ${pid} is new: all its pages hashed`);
        continue;
      }
      if (!p.tracker) continue;
      if (a.execed.has(pid)) {
        // A new address space: the tracker watches the old one. Arm it again.
        p.tracker.close();
        p.tracker = null;
        p.problem = 'exec replaced its address space';
        notes.push(`process ${pid} exec'd: all its pages hashed`);
        continue;
      }
      try {
        p.tracker.registerNew();
        const scan = p.tracker.scan();
        // Nothing scanned between the pre-copy's read and now: clean means unchanged since read.
        const sincePrecopy = precopy !== null && precopy.scansBefore.get(p.nsPid) === scan.sequence - 1;
        if (scan.sequence < 2 && !sincePrecopy) {
          // Relative to the arming, not to a checkpoint: no clean pages, no dirty rate.
          notes.push(`process ${pid}: tracking starts at this checkpoint`);
          continue;
        }
        // The dirty rate is that of an interval between checkpoints, not of a pre-copy's few seconds.
        if (!sincePrecopy) {
          trackedPages += pageCount(scan.tracked);
          dirtyPages += pageCount(scan.dirty);
        }
        if (precopy !== null && !sincePrecopy) {
          notes.push(`process ${pid} was not pre-copied: all its pages hashed`);
          continue;
        }
        const changed = a.changedRanges.get(pid) ?? [];
        cleanByNsPid.set(p.nsPid, subtract(subtract(scan.tracked, scan.dirty), changed));
      } catch (e) {
        if (!(e instanceof TrackingLostError)) throw e;
        p.tracker.close();
        p.tracker = null;
        p.problem = e.message;
        notes.push(`process ${pid}: ${e.message}; all its pages hashed`);
      }
    }
    if (!a.complete) notes.push(`tracking incomplete: ${a.incompleteBecause.join('; ')}`);
    const reference = this.baseline ?? precopy?.pages ?? null;
    const usable = reference !== null && a.complete && !this.disarmed;
    if (this.baseline === null && precopy !== null) notes.push('pre-copied while the job ran: pages not written since were not read again');
    else if (this.baseline === null) notes.push('no baseline: the previous checkpoint was not taken by this controller');
    if (this.disarmed) notes.push('tracking disarmed (most pages written every interval)');
    const dirtyFraction = trackedPages > 0 ? dirtyPages / trackedPages : null;
    this.pendingFrozen = { dirtyFraction };
    return {
      clean: usable
        ? {
            forProcess(nsPid: number) {
              const clean = cleanByNsPid.get(nsPid);
              const pages = reference.get(nsPid);
              return clean && pages ? { clean, baseline: pages } : undefined;
            },
          }
        : NO_CLEAN_PAGES,
      reference: usable ? (this.baseline !== null ? 'checkpoint' : 'precopy') : null,
      notes,
      dirtyFraction,
    };
  }

  /** The baseline's pages, by PID inside the image (none without a baseline). */
  baselinePages(): PageIndex {
    return this.hasBaseline ? this.baseline! : new Map();
  }

  /** The checkpoint the baseline's page ids are of; null without a baseline. */
  get baselineCheckpoint(): number | null {
    return this.baselineId;
  }

  /**
   * The baseline's checkpoint was forgotten (`crinc repair --forget-damaged`, say): GC may
   * have deleted chunks only it named, so its ids must not be reused. The next checkpoint
   * reads every page.
   */
  dropBaseline(): void {
    this.baseline = null;
    this.baselineId = null;
  }

  /** The checkpoint committed: it is the next baseline. Adapts arming, arms new processes. */
  committed(checkpoint: number, pages: PageIndex): void {
    const previous = this.baseline;
    this.baseline = pages;
    this.baselineId = checkpoint;
    this.precopy = null;
    this.activity = emptyActivity();
    const fraction = this.pendingFrozen?.dirtyFraction ?? null;
    this.pendingFrozen = null;
    if (!this.disarmed && fraction !== null && fraction > DISARM_DIRTY_FRACTION) {
      this.disarm();
    } else if (this.disarmed && previous !== null && changedFraction(previous, pages) < REARM_DIRTY_FRACTION) {
      this.disarmed = false;
    }
    if (!this.disarmed) this.armNewProcesses();
  }

  /** The checkpoint failed after the scan cleared the written bits: the next must be full. */
  failed(): void {
    this.dropBaseline();
    this.precopy = null;
    this.pendingFrozen = null;
  }

  close(): void {
    for (const p of this.processes.values()) p.tracker?.close();
    this.processes.clear();
    this.bpf.untrack();
  }

  private disarm(): void {
    this.disarmed = true;
    for (const p of this.processes.values()) {
      p.tracker?.close();
      p.tracker = null;
    }
  }

  /** Arms every process of the job that has no tracker; after a thaw, so tracked from the next checkpoint on. */
  private armNewProcesses(): void {
    const live = new Set(processTree(this.rootPid));
    for (const pid of this.processes.keys()) if (!live.has(pid)) this.processes.delete(pid);
    for (const pid of live) {
      const existing = this.processes.get(pid);
      if (existing?.tracker) continue;
      let entry: TrackedProcess;
      try {
        entry = existing ?? { hostPid: pid, nsPid: namespacePid(pid), tracker: null, problem: null };
      } catch (e) {
        // Ended since the tree was read (a short-lived child): nothing to track, and no reason to stop tracking the rest.
        if (isGone(e)) continue;
        throw e;
      }
      try {
        entry.tracker = WriteTracker.arm(pid);
        entry.problem = null;
      } catch (e) {
        entry.problem = `cannot arm write tracking: ${(e as Error).message}`;
      }
      this.processes.set(pid, entry);
    }
  }
}

/**
 * What eBPF could not see that may change memory without write protection noticing:
 * lost layout, fork or exec events, and kernel writes through pages pinned in advance
 * (io_uring, AIO). process_vm_writev and ptrace pokes write through the target's page
 * tables, so write protection reports them: they do not count here.
 */
function memoryBlindSpots(report: TrackingReport): string[] {
  const out: string[] = [];
  const { lost } = report;
  if (lost.layoutEvents > 0) out.push(`${lost.layoutEvents} layout events lost`);
  if (lost.forkEvents > 0 || lost.children > 0) out.push('fork events lost: children may be untracked');
  if (lost.execEvents > 0) out.push('exec events lost');
  if (lost.syscalls > 0) out.push(`${lost.syscalls} syscalls not decoded`);
  for (const [tgid, p] of report.processes) {
    const o = p.opaqueSyscalls;
    if (o.ioUringEnter > 0) out.push(`process ${tgid} used io_uring (kernel writes into pinned buffers are invisible)`);
    if (o.aioSubmit > 0) out.push(`process ${tgid} used AIO (kernel writes into pinned buffers are invisible)`);
    if (o.foreignAbi > 0) out.push(`process ${tgid} made ia32/x32 syscalls (not decoded)`);
  }
  return out;
}

/** Fraction of pages whose id differs (or that are new) between two checkpoints. */
export function changedFraction(before: PageIndex, after: PageIndex): number {
  let total = 0;
  let changed = 0;
  for (const [pid, now] of after) {
    const prev = before.get(pid);
    total += now.addresses.length;
    if (!prev) {
      changed += now.addresses.length;
      continue;
    }
    const p = prev.addresses.cursor();
    for (const n = now.addresses.cursor(); !n.done; n.next()) {
      p.skipBelow(n.vaddr);
      const same =
        !p.done &&
        p.vaddr === n.vaddr &&
        Buffer.compare(
          prev.ids.subarray(p.index * CHUNK_ID_BYTES, (p.index + 1) * CHUNK_ID_BYTES),
          now.ids.subarray(n.index * CHUNK_ID_BYTES, (n.index + 1) * CHUNK_ID_BYTES),
        ) === 0;
      if (!same) changed++;
    }
  }
  return total === 0 ? 0 : changed / total;
}
