/**
 * What the job tracker reports at each drain, and the collector that folds ring buffer
 * events into it as they arrive: per process, exact aggregates (merged address ranges,
 * the set of changed fds, merged file byte ranges) that stay small however many events
 * came, plus the first events themselves, in order, up to a named limit.
 */
import type { ExecEvent, ExitEvent, FdEvent, FileEvent, FileIdentity, ForkEvent, LayoutEvent, TrackingEvent } from './events.js';
import { pageAlignedRange, type Range, RangeSet } from './ranges.js';

/** Layout and fd events kept per process between two drains; later ones are counted. */
export const EVENTS_KEPT_PER_PROCESS = 1000;
/** Separate byte ranges kept per changed file; past this the whole file counts as changed. */
export const FILE_RANGES_MAX = 4096;

/** FALLOC_FL_* modes that move the bytes after the range (uapi linux/falloc.h). */
const FALLOC_FL_COLLAPSE_RANGE = 0x08;
const FALLOC_FL_INSERT_RANGE = 0x20;

/** Pages that took write faults, sorted by address: addresses[i] took faults[i] faults. */
export interface WrittenPages {
  /** Page-aligned addresses, ascending. */
  addresses: Float64Array;
  faults: Float64Array;
}

export interface FileChange {
  file: FileIdentity;
  /** "major:minor" of file.dev, as /proc/PID/maps writes it (in hex). */
  device: string;
  /** Where a tracked process has it open now; null when none has (closed, or not found). */
  path: string | null;
  /** The paths open*, creat gave for it in the interval, as given: a relative one is
   * relative to the caller's working directory or dirfd. Names, not proof: the file may
   * have been renamed or unlinked since. */
  openedAs: string[];
  /** tgids that changed it. */
  writers: number[];
  /** Byte ranges written or fallocated, merged. */
  ranges: Range[];
  /** An offset was not known, or the writes were too scattered to list: every byte may have changed. */
  wholeFile: boolean;
  /** Truncated, or bytes moved by fallocate collapse/insert: everything from this offset on
   * may have changed, and the size too (a truncate that grew the file sets it to the new
   * size: bytes between the old and new size are new). null when neither happened. */
  tailChangedFrom: number | null;
  writes: number;
  bytesWritten: number;
}

export interface OpaqueSyscallCounts {
  ioUringEnter: number;
  aioSubmit: number;
  processVmWritev: number;
  ptracePoke: number;
  /** ia32/x32 syscalls: none of them were decoded. */
  foreignAbi: number;
}

export interface ProcessActivity {
  tgid: number;
  userWriteFaults: number;
  kernelWriteFaults: number;
  /** Pages that took write faults in the interval. */
  writtenPages: WrittenPages;
  /** False when some faults' pages were not recorded (written_pages was full). */
  writtenPagesComplete: boolean;
  /** Layout events in order (the first EVENTS_KEPT_PER_PROCESS). */
  layoutChanges: LayoutEvent[];
  layoutChangesOmitted: number;
  /**
   * Page-aligned, merged address ranges whose content may differ from the previous
   * checkpoint without a write fault (mapped, unmapped, moved, zapped, re-protected,
   * break moved), and mappings of files that were changed. Pages here are not clean.
   */
  changedRanges: Range[];
  /**
   * False when changedRanges does not cover every such change: the process exec'd (its
   * whole address space is new), attached or detached SysV shared memory (size unknown
   * here), or layout events were lost (see TrackingReport.lost).
   */
  changedRangesComplete: boolean;
  execed: boolean;
  /** Descriptor-table events in order (the first EVENTS_KEPT_PER_PROCESS). */
  fdChanges: FdEvent[];
  fdChangesOmitted: number;
  /** Every fd whose table entry changed: opened, duplicated onto, received, closed. */
  fdsChanged: number[];
  /** close_range calls: [first, last] (last INT32_MAX: to the end of the table). */
  fdRangesClosed: { first: number; last: number; cloexecOnly: boolean }[];
  /** False after an exec (close-on-exec fds closed), or a table-unknown event, or lost fd events. */
  fdTableComplete: boolean;
  /** Files this process changed. */
  fileChanges: FileChange[];
  /** File changes through an fd that another thread closed before the call returned. */
  unidentifiedFileChanges: number;
  opaqueSyscalls: OpaqueSyscallCounts;
}

export interface LossCounts {
  forkEvents: number;
  execEvents: number;
  exitEvents: number;
  layoutEvents: number;
  fdEvents: number;
  fileEvents: number;
  /** Children not tracked: the tracked map was full. */
  children: number;
  /** Faults not counted: the per-process statistics map was full. */
  processStats: number;
  /** Faults whose page was not recorded: written_pages was full. */
  pageAddresses: number;
  /** Syscalls not decoded: too many threads inside decoded syscalls at once. */
  syscalls: number;
}

export interface TrackingReport {
  session: number;
  /** CLOCK_MONOTONIC nanoseconds: the previous drain (or track()) and this one. */
  fromNs: bigint;
  toNs: bigint;
  /** tgids tracked now. */
  live: number[];
  forks: ForkEvent[];
  execs: ExecEvent[];
  exits: ExitEvent[];
  /** Every process that did anything tracked in the interval, live or exited. */
  processes: Map<number, ProcessActivity>;
  /** Changed files, all processes together. */
  files: FileChange[];
  lost: LossCounts;
  /** True when nothing was lost and nothing happened that tracking cannot see. Seen but
   * sweeping changes (an exec) keep it true: the per-process *Complete flags say those. */
  complete: boolean;
  /** Why complete is false, one line per reason. */
  incompleteBecause: string[];
}

export function fileKey(file: FileIdentity): string {
  return `${file.dev}:${file.ino}`;
}

export function deviceName(kernelDev: number): string {
  return `${(kernelDev >>> 20).toString(16).padStart(2, '0')}:${(kernelDev & 0xfffff).toString(16).padStart(2, '0')}`;
}

export class FileAccumulator {
  readonly writers = new Set<number>();
  /** The last fd each writer used for it: where its path is looked up. */
  readonly fdOfWriter = new Map<number, number>();
  readonly ranges = new RangeSet();
  wholeFile = false;
  tailChangedFrom: number | null = null;
  writes = 0;
  bytesWritten = 0;

  constructor(readonly file: FileIdentity) {}

  add(event: FileEvent): void {
    this.writers.add(event.tgid);
    this.fdOfWriter.set(event.tgid, event.fd);
    switch (event.op) {
      case 'write':
      case 'copy-in':
        this.writes++;
        this.bytesWritten += event.length;
        this.addRange(event.offset, event.length);
        break;
      case 'truncate':
        this.changeTailFrom(event.offset);
        break;
      case 'fallocate':
        this.addRange(event.offset, event.length);
        if (event.mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) this.changeTailFrom(event.offset);
        break;
    }
  }

  merge(other: FileAccumulator): void {
    for (const tgid of other.writers) this.writers.add(tgid);
    for (const [tgid, fd] of other.fdOfWriter) this.fdOfWriter.set(tgid, fd);
    if (other.wholeFile) this.wholeFile = true;
    else for (const range of other.ranges.toArray()) this.addRange(range.start, range.end - range.start);
    this.changeTailFrom(other.tailChangedFrom);
    this.writes += other.writes;
    this.bytesWritten += other.bytesWritten;
  }

  private addRange(offset: number | null, length: number): void {
    if (this.wholeFile) return;
    if (offset === null || this.ranges.size >= FILE_RANGES_MAX) {
      this.wholeFile = true;
      return;
    }
    this.ranges.add(offset, offset + length);
  }

  private changeTailFrom(offset: number | null): void {
    if (offset === null) return;
    this.tailChangedFrom = this.tailChangedFrom === null ? offset : Math.min(this.tailChangedFrom, offset);
  }

  toChange(path: string | null, openedAs: string[]): FileChange {
    return {
      file: { ...this.file },
      device: deviceName(this.file.dev),
      path,
      openedAs,
      writers: [...this.writers].sort((a, b) => a - b),
      ranges: this.wholeFile ? [] : this.ranges.toArray(),
      wholeFile: this.wholeFile,
      tailChangedFrom: this.tailChangedFrom,
      writes: this.writes,
      bytesWritten: this.bytesWritten,
    };
  }
}

/** Everything one process did between two drains, as far as events tell. */
export class ProcessAccumulator {
  readonly layoutChanges: LayoutEvent[] = [];
  layoutChangesOmitted = 0;
  readonly changedRanges = new RangeSet();
  changedRangesComplete = true;
  execed = false;
  readonly fdChanges: FdEvent[] = [];
  fdChangesOmitted = 0;
  readonly fdsChanged = new Set<number>();
  readonly fdRangesClosed: { first: number; last: number; cloexecOnly: boolean }[] = [];
  fdTableComplete = true;
  readonly files = new Map<string, FileAccumulator>();
  unidentifiedFileChanges = 0;
  /** Why this process's changes are not fully known, each reason once. */
  readonly incompleteBecause = new Set<string>();

  constructor(readonly tgid: number) {}

  addLayout(event: LayoutEvent): void {
    if (this.layoutChanges.length < EVENTS_KEPT_PER_PROCESS) this.layoutChanges.push(event);
    else this.layoutChangesOmitted++;
    if (event.op === 'shmat' || event.op === 'shmdt') {
      this.changedRangesComplete = false;
      this.incompleteBecause.add('attached or detached SysV shared memory (its size is not known here)');
      return;
    }
    const range = pageAlignedRange(event.start, event.length);
    this.changedRanges.add(range.start, range.end);
    if (event.op === 'mremap') {
      const old = pageAlignedRange(event.oldStart, event.oldLength);
      this.changedRanges.add(old.start, old.end);
    }
  }

  addExec(): void {
    // Seen, not lost: the process's address space and fd table are new, which the
    // per-process flags say; the report stays complete.
    this.execed = true;
    this.changedRangesComplete = false;
    this.fdTableComplete = false;
  }

  addFd(event: FdEvent): void {
    if (this.fdChanges.length < EVENTS_KEPT_PER_PROCESS) this.fdChanges.push(event);
    else this.fdChangesOmitted++;
    switch (event.op) {
      case 'opened':
      case 'duplicated':
      case 'received':
      case 'closed':
        this.fdsChanged.add(event.fd);
        break;
      case 'opened-pair':
        if (event.pairUnreadable) this.fdTableUnknown();
        else {
          this.fdsChanged.add(event.fd);
          this.fdsChanged.add(event.otherFd);
        }
        break;
      case 'range-closed':
        this.fdRangesClosed.push({ first: event.fd, last: event.otherFd, cloexecOnly: (event.openFlags & CLOSE_RANGE_CLOEXEC) !== 0 });
        break;
      case 'table-unknown':
        this.fdTableUnknown();
        break;
    }
  }

  private fdTableUnknown(): void {
    this.fdTableComplete = false;
    this.incompleteBecause.add(`fd table changed in ways not decoded (read /proc/${this.tgid}/fd again)`);
  }

  addFile(event: FileEvent): void {
    if (event.file === null) {
      this.unidentifiedFileChanges++;
      this.incompleteBecause.add('changed a file through an fd that another thread closed meanwhile (file unknown)');
      return;
    }
    const key = fileKey(event.file);
    let file = this.files.get(key);
    if (!file) this.files.set(key, (file = new FileAccumulator(event.file)));
    file.add(event);
  }
}

/** close_range flag (uapi linux/close_range.h): set close-on-exec instead of closing. */
const CLOSE_RANGE_CLOEXEC = 1 << 2;

/** Folds events into per-process accumulators until the next drain takes them. */
export class ActivityCollector {
  forks: ForkEvent[] = [];
  execs: ExecEvent[] = [];
  exits: ExitEvent[] = [];
  readonly processes = new Map<number, ProcessAccumulator>();

  process(tgid: number): ProcessAccumulator {
    let process = this.processes.get(tgid);
    if (!process) this.processes.set(tgid, (process = new ProcessAccumulator(tgid)));
    return process;
  }

  add(event: TrackingEvent): void {
    switch (event.kind) {
      case 'fork':
        this.forks.push(event);
        break;
      case 'exec':
        this.execs.push(event);
        this.process(event.tgid).addExec();
        break;
      case 'exit':
        this.exits.push(event);
        break;
      case 'layout':
        this.process(event.tgid).addLayout(event);
        break;
      case 'fd':
        this.process(event.tgid).addFd(event);
        break;
      case 'file':
        this.process(event.tgid).addFile(event);
        break;
    }
  }
}
