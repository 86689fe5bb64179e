/**
 * The TypeScript side of bpf/events.h: limits, enums, struct layouts, and decoders from
 * ring buffer records to typed events.
 *
 * `checkContract` compares everything here against the BTF of the loaded object, so a
 * change of events.h that is not made here too stops the tracker at open instead of
 * misreading events.
 */
import type { BpfMap, Btf } from '../libbpf.js';
import { TrackingContractError, TrackingDecodeError } from './errors.js';

// ---- limits (events.h), checked against the maps' sizes ----------------------------------

export const TRACKED_PROCESSES_MAX = 8192;
export const WRITTEN_PAGES_MAX = 262144;
export const INFLIGHT_SYSCALLS_MAX = 16384;
export const RING_BUFFER_BYTES = 8 << 20;
export const PATH_BYTES = 256;

// ---- enums (events.h), checked against the object's BTF -------------------------------

export const EventKind = { FORK: 1, EXEC: 2, EXIT: 3, LAYOUT: 4, FD: 5, FILE: 6 } as const;

export const ForkFlag = { CHILD_UNTRACKED: 1, SHARES_MEMORY: 2, SHARES_FILES: 4 } as const;

export const LayoutOp = {
  MMAP: 1,
  MUNMAP: 2,
  MREMAP: 3,
  BRK: 4,
  MADVISE: 5,
  MPROTECT: 6,
  SHMAT: 7,
  SHMDT: 8,
  REMAP_FILE_PAGES: 9,
} as const;

export const BrkDirection = { GREW: 1, SHRANK: 2 } as const;

export const FdOp = {
  OPENED: 1,
  OPENED_PAIR: 2,
  DUPLICATED: 3,
  CLOSED: 4,
  RANGE_CLOSED: 5,
  RECEIVED: 6,
  TABLE_UNKNOWN: 7,
} as const;

export const FdFlag = { PATH_TRUNCATED: 1, PATH_UNREADABLE: 2, PAIR_UNREADABLE: 4, FILE_UNKNOWN: 8 } as const;

export const FileOp = { WRITE: 1, COPY_IN: 2, TRUNCATE: 3, FALLOCATE: 4 } as const;

export const OpaqueSyscall = {
  IO_URING_ENTER: 0,
  AIO_SUBMIT: 1,
  PROCESS_VM_WRITEV: 2,
  PTRACE_POKE: 3,
  FOREIGN_ABI: 4,
} as const;
export const OPAQUE_KINDS = 5;

export const LossCounter = {
  FORK_EVENTS: 0,
  EXEC_EVENTS: 1,
  EXIT_EVENTS: 2,
  LAYOUT_EVENTS: 3,
  FD_EVENTS: 4,
  FILE_EVENTS: 5,
  CHILDREN: 6,
  PROCESS_STATS: 7,
  PAGE_ADDRESSES: 8,
  SYSCALLS: 9,
} as const;
export const LOSS_COUNTERS = 10;

/** Each TS enum and the C enum it mirrors, with the C names' common prefix. */
const ENUMS: { cName: string; prefix: string; values: Record<string, number> }[] = [
  { cName: 'crinc_event_kind', prefix: 'CRINC_EVENT_', values: EventKind },
  { cName: 'crinc_fork_flags', prefix: 'CRINC_FORK_', values: ForkFlag },
  { cName: 'crinc_layout_op', prefix: 'CRINC_LAYOUT_', values: LayoutOp },
  { cName: 'crinc_brk_direction', prefix: 'CRINC_BRK_', values: BrkDirection },
  { cName: 'crinc_fd_op', prefix: 'CRINC_FD_', values: FdOp },
  { cName: 'crinc_fd_flags', prefix: 'CRINC_FD_', values: FdFlag },
  { cName: 'crinc_file_op', prefix: 'CRINC_FILE_', values: FileOp },
  { cName: 'crinc_opaque_syscall', prefix: 'CRINC_OPAQUE_', values: { ...OpaqueSyscall, KINDS: OPAQUE_KINDS } },
  { cName: 'crinc_loss_counter', prefix: 'CRINC_LOST_', values: LossCounter },
];
/** C enumerators that are counts, not values: compared apart from the prefix rule. */
const ENUM_COUNTS: Record<string, number> = { CRINC_LOSS_COUNTERS: LOSS_COUNTERS };

// ---- struct layouts (events.h), checked against the object's BTF --------------------------

/** A struct of events.h: its size and each member's [offset, size] in bytes. */
interface Layout<M extends string> {
  cName: string;
  size: number;
  at: Record<M, number>;
  sizes: Record<M, number>;
}

function layout<M extends string>(cName: string, size: number, members: Record<M, [number, number]>): Layout<M> {
  const at = {} as Record<M, number>;
  const sizes = {} as Record<M, number>;
  for (const [name, [offset, bytes]] of Object.entries(members) as [M, [number, number]][]) {
    at[name] = offset;
    sizes[name] = bytes;
  }
  return { cName, size, at, sizes };
}

export const PAGE_KEY = layout('crinc_page_key', 16, { tgid: [0, 4], pad: [4, 4], page_address: [8, 8] });

export const PROCESS_STATS = layout('crinc_process_stats', 64, {
  user_write_faults: [0, 8],
  kernel_write_faults: [8, 8],
  unrecorded_write_faults: [16, 8],
  opaque_syscalls: [24, 8 * OPAQUE_KINDS],
});

const HEADER = layout('crinc_event_header', 24, { kind: [0, 4], tgid: [4, 4], tid: [8, 4], pad: [12, 4], time_ns: [16, 8] });

const FORK_EVENT = layout('crinc_fork_event', 32, { header: [0, 24], child_tgid: [24, 4], flags: [28, 4] });

const EXEC_EVENT = layout('crinc_exec_event', 32 + PATH_BYTES, {
  header: [0, 24],
  old_tid: [24, 4],
  filename_truncated: [28, 4],
  filename: [32, PATH_BYTES],
});

const EXIT_EVENT = layout('crinc_exit_event', 32, { header: [0, 24], exit_code: [24, 4], pad: [28, 4] });

const LAYOUT_EVENT = layout('crinc_layout_event', 88, {
  header: [0, 24],
  op: [24, 4],
  detail: [28, 4],
  start: [32, 8],
  length: [40, 8],
  old_start: [48, 8],
  old_length: [56, 8],
  map_flags: [64, 8],
  file_offset: [72, 8],
  fd: [80, 4],
  syscall_nr: [84, 4],
});

const FD_EVENT = layout('crinc_fd_event', 64 + PATH_BYTES, {
  header: [0, 24],
  op: [24, 4],
  syscall_nr: [28, 4],
  fd: [32, 4],
  other_fd: [36, 4],
  open_flags: [40, 4],
  flags: [44, 4],
  file_mode: [48, 4],
  file_dev: [52, 4],
  file_ino: [56, 8],
  path: [64, PATH_BYTES],
});

const FILE_EVENT = layout('crinc_file_event', 72, {
  header: [0, 24],
  op: [24, 4],
  syscall_nr: [28, 4],
  fd: [32, 4],
  detail: [36, 4],
  file_dev: [40, 4],
  pad: [44, 4],
  file_ino: [48, 8],
  offset: [56, 8],
  length: [64, 8],
});

const LAYOUTS: Layout<string>[] = [PAGE_KEY, PROCESS_STATS, HEADER, FORK_EVENT, EXEC_EVENT, EXIT_EVENT, LAYOUT_EVENT, FD_EVENT, FILE_EVENT];

/**
 * Throws TrackingContractError unless the object's BTF has exactly the enums and struct
 * layouts this file mirrors, and its maps have the sizes of events.h's limits.
 */
export function checkContract(btf: Btf, maps: { tracked: BpfMap; processStats: BpfMap; writtenPages: BpfMap; events: BpfMap; lossCounters: BpfMap }): void {
  const problems: string[] = [];
  for (const { cName, prefix, values } of ENUMS) {
    const actual = btf.enumValues(cName);
    const expected = new Map(Object.entries(values).map(([name, value]) => [prefix + name, value]));
    for (const [name, value] of actual) {
      const want = expected.get(name) ?? ENUM_COUNTS[name];
      if (want !== value) problems.push(`enum ${cName}: ${name} is ${value} in the object, ${want ?? 'absent'} here`);
    }
    for (const name of expected.keys()) if (!actual.has(name)) problems.push(`enum ${cName}: ${name} is missing from the object`);
  }
  for (const expected of LAYOUTS) {
    const actual = btf.structLayout(expected.cName);
    if (actual.size !== expected.size) problems.push(`struct ${expected.cName}: ${actual.size} bytes in the object, ${expected.size} here`);
    const names = Object.keys(expected.at);
    if (actual.members.map((m) => m.name).join() !== names.join()) {
      problems.push(`struct ${expected.cName}: members ${actual.members.map((m) => m.name).join(', ')} in the object, ${names.join(', ')} here`);
      continue;
    }
    for (const member of actual.members) {
      if (member.offset !== expected.at[member.name] || member.size !== expected.sizes[member.name]) {
        problems.push(`struct ${expected.cName}: ${member.name} at ${member.offset} (${member.size} bytes) in the object, at ${expected.at[member.name]} (${expected.sizes[member.name]}) here`);
      }
    }
  }
  const limits: [BpfMap, number][] = [
    [maps.tracked, TRACKED_PROCESSES_MAX],
    [maps.processStats, TRACKED_PROCESSES_MAX],
    [maps.writtenPages, WRITTEN_PAGES_MAX],
    [maps.events, RING_BUFFER_BYTES],
    [maps.lossCounters, LOSS_COUNTERS],
  ];
  for (const [map, limit] of limits) {
    if (map.maxEntries !== limit) problems.push(`map ${map.name}: max_entries ${map.maxEntries} in the object, ${limit} here`);
  }
  if (problems.length) throw new TrackingContractError(problems);
}

// ---- syscall names (x86-64) of the calls whose events are decoded --------------------------

const SYSCALL_NAMES = new Map<number, string>([
  [1, 'write'], [2, 'open'], [3, 'close'], [9, 'mmap'], [10, 'mprotect'], [11, 'munmap'], [12, 'brk'],
  [18, 'pwrite64'], [20, 'writev'], [22, 'pipe'], [25, 'mremap'], [28, 'madvise'], [30, 'shmat'],
  [32, 'dup'], [33, 'dup2'], [40, 'sendfile'], [41, 'socket'], [43, 'accept'], [47, 'recvmsg'],
  [53, 'socketpair'], [67, 'shmdt'], [72, 'fcntl'], [77, 'ftruncate'], [85, 'creat'],
  [213, 'epoll_create'], [216, 'remap_file_pages'], [253, 'inotify_init'], [257, 'openat'],
  [275, 'splice'], [282, 'signalfd'], [283, 'timerfd_create'], [284, 'eventfd'], [285, 'fallocate'],
  [288, 'accept4'], [289, 'signalfd4'], [290, 'eventfd2'], [291, 'epoll_create1'], [292, 'dup3'],
  [293, 'pipe2'], [294, 'inotify_init1'], [296, 'pwritev'], [298, 'perf_event_open'], [299, 'recvmmsg'],
  [300, 'fanotify_init'], [304, 'open_by_handle_at'], [319, 'memfd_create'], [323, 'userfaultfd'],
  [326, 'copy_file_range'], [328, 'pwritev2'], [329, 'pkey_mprotect'], [425, 'io_uring_setup'],
  [428, 'open_tree'], [430, 'fsopen'], [432, 'fsmount'], [433, 'fspick'], [434, 'pidfd_open'],
  [436, 'close_range'], [437, 'openat2'], [438, 'pidfd_getfd'], [444, 'landlock_create_ruleset'],
  [447, 'memfd_secret'],
]);

function syscallName(nr: number): string {
  return SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`;
}

// ---- decoded events ----------------------------------------------------------------------

/** An inode as the kernel names it: dev is the kernel's dev_t (major << 20 | minor). */
export interface FileIdentity {
  dev: number;
  ino: number;
}

interface EventBase {
  /** The process the event is about. */
  tgid: number;
  /** The thread that caused it. */
  tid: number;
  /** CLOCK_MONOTONIC, nanoseconds. */
  monotonicNs: bigint;
}

export interface ForkEvent extends EventBase {
  kind: 'fork';
  childTgid: number;
  /** False when the tracked map was full: the child and its descendants are not tracked. */
  childTracked: boolean;
  sharesMemory: boolean;
  sharesFiles: boolean;
}

export interface ExecEvent extends EventBase {
  kind: 'exec';
  /** The thread that called execve (now the process's only thread, with tid = tgid). */
  oldTid: number;
  filename: string;
  /** The name filled its buffer: it may have been cut. */
  filenameTruncated: boolean;
}

export interface ExitEvent extends EventBase {
  kind: 'exit';
  /** wait(2) status word: exit code << 8, or the terminating signal. */
  exitStatus: number;
}

export type LayoutOpName = 'mmap' | 'munmap' | 'mremap' | 'brk' | 'madvise' | 'mprotect' | 'shmat' | 'shmdt' | 'remap_file_pages';

export interface LayoutEvent extends EventBase {
  kind: 'layout';
  op: LayoutOpName;
  syscall: string;
  /** The range the call affected (for mremap the new one); length 0 for shmat/shmdt: unknown. */
  start: number;
  length: number;
  /** mremap: the range the mapping moved from. */
  oldStart: number;
  oldLength: number;
  /** prot for mmap/mprotect, the advice for madvise, BrkDirection for brk, shmflg for shmat. */
  detail: number;
  mapFlags: number;
  /** mmap of a file: its fd and offset; else fd -1. */
  fd: number;
  fileOffset: number;
}

export type FdOpName = 'opened' | 'opened-pair' | 'duplicated' | 'closed' | 'range-closed' | 'received' | 'table-unknown';

export interface FdEvent extends EventBase {
  kind: 'fd';
  op: FdOpName;
  syscall: string;
  fd: number;
  /** opened-pair: the second new fd; duplicated: the source fd; range-closed: the last
   * fd (INT32_MAX: to the end); openat*: the dirfd; accept*: the listening fd; else -1. */
  otherFd: number;
  /** O_* flags of open*, the SOCK_* type of socket, flags of dup3, memfd_create, close_range … */
  openFlags: number;
  /** The file fd refers to after the call; null when closed or not found. */
  file: (FileIdentity & { mode: number }) | null;
  /** The path given to open*, creat or memfd_create; null for other calls. */
  path: string | null;
  pathTruncated: boolean;
  pathUnreadable: boolean;
  /** pipe/socketpair: the new fds could not be read from the caller's memory (fd, otherFd are -1). */
  pairUnreadable: boolean;
}

export type FileOpName = 'write' | 'copy-in' | 'truncate' | 'fallocate';

export interface FileEvent extends EventBase {
  kind: 'file';
  op: FileOpName;
  syscall: string;
  fd: number;
  /** null: the fd was closed by another thread before the call returned. */
  file: FileIdentity | null;
  /** First byte changed; truncate: the new size; null: not known (assume the whole file). */
  offset: number | null;
  length: number;
  /** fallocate: the FALLOC_FL_* mode. */
  mode: number;
}

export type TrackingEvent = ForkEvent | ExecEvent | ExitEvent | LayoutEvent | FdEvent | FileEvent;

const LAYOUT_OP_NAMES: Record<number, LayoutOpName> = {
  [LayoutOp.MMAP]: 'mmap',
  [LayoutOp.MUNMAP]: 'munmap',
  [LayoutOp.MREMAP]: 'mremap',
  [LayoutOp.BRK]: 'brk',
  [LayoutOp.MADVISE]: 'madvise',
  [LayoutOp.MPROTECT]: 'mprotect',
  [LayoutOp.SHMAT]: 'shmat',
  [LayoutOp.SHMDT]: 'shmdt',
  [LayoutOp.REMAP_FILE_PAGES]: 'remap_file_pages',
};

const FD_OP_NAMES: Record<number, FdOpName> = {
  [FdOp.OPENED]: 'opened',
  [FdOp.OPENED_PAIR]: 'opened-pair',
  [FdOp.DUPLICATED]: 'duplicated',
  [FdOp.CLOSED]: 'closed',
  [FdOp.RANGE_CLOSED]: 'range-closed',
  [FdOp.RECEIVED]: 'received',
  [FdOp.TABLE_UNKNOWN]: 'table-unknown',
};

const FILE_OP_NAMES: Record<number, FileOpName> = {
  [FileOp.WRITE]: 'write',
  [FileOp.COPY_IN]: 'copy-in',
  [FileOp.TRUNCATE]: 'truncate',
  [FileOp.FALLOCATE]: 'fallocate',
};

/** An unsigned 64-bit field as a number; throws unless it is exact. */
export function readU64(view: DataView, offset: number): number {
  const low = view.getUint32(offset, true);
  const high = view.getUint32(offset + 4, true);
  // Below 2^53 every integer is exact; above, only multiples of a power of two are.
  if (high >= 0x200000) {
    const value = view.getBigUint64(offset, true);
    if (BigInt(Number(value)) !== value) throw new TrackingDecodeError(`64-bit value ${value} at offset ${offset} is not exact as a number`);
  }
  return high * 0x100000000 + low;
}

function cString(view: DataView, offset: number, bytes: number): string {
  const raw = new Uint8Array(view.buffer, view.byteOffset + offset, bytes);
  const end = raw.indexOf(0);
  return Buffer.from(raw.subarray(0, end < 0 ? bytes : end)).toString('utf8');
}

function opName<T>(names: Record<number, T>, value: number, what: string): T {
  const name = names[value];
  if (name === undefined) throw new TrackingDecodeError(`unknown ${what} ${value}`);
  return name;
}

/** Decodes one ring buffer record (valid only during the call: everything is copied out). */
export function decodeEvent(view: DataView): TrackingEvent {
  if (view.byteLength < HEADER.size) throw new TrackingDecodeError(`record of ${view.byteLength} bytes is shorter than an event header`);
  const kind = view.getUint32(HEADER.at.kind, true);
  const base: EventBase = {
    tgid: view.getUint32(HEADER.at.tgid, true),
    tid: view.getUint32(HEADER.at.tid, true),
    monotonicNs: view.getBigUint64(HEADER.at.time_ns, true),
  };
  const expectSize = (size: number, name: string) => {
    if (view.byteLength !== size) throw new TrackingDecodeError(`${name} record of ${view.byteLength} bytes, expected ${size}`);
  };
  switch (kind) {
    case EventKind.FORK: {
      expectSize(FORK_EVENT.size, 'fork');
      const flags = view.getUint32(FORK_EVENT.at.flags, true);
      return {
        kind: 'fork',
        ...base,
        childTgid: view.getUint32(FORK_EVENT.at.child_tgid, true),
        childTracked: (flags & ForkFlag.CHILD_UNTRACKED) === 0,
        sharesMemory: (flags & ForkFlag.SHARES_MEMORY) !== 0,
        sharesFiles: (flags & ForkFlag.SHARES_FILES) !== 0,
      };
    }
    case EventKind.EXEC:
      expectSize(EXEC_EVENT.size, 'exec');
      return {
        kind: 'exec',
        ...base,
        oldTid: view.getUint32(EXEC_EVENT.at.old_tid, true),
        filename: cString(view, EXEC_EVENT.at.filename, PATH_BYTES),
        filenameTruncated: view.getUint32(EXEC_EVENT.at.filename_truncated, true) !== 0,
      };
    case EventKind.EXIT:
      expectSize(EXIT_EVENT.size, 'exit');
      return { kind: 'exit', ...base, exitStatus: view.getInt32(EXIT_EVENT.at.exit_code, true) };
    case EventKind.LAYOUT: {
      expectSize(LAYOUT_EVENT.size, 'layout');
      const at = LAYOUT_EVENT.at;
      return {
        kind: 'layout',
        ...base,
        op: opName(LAYOUT_OP_NAMES, view.getUint32(at.op, true), 'layout op'),
        syscall: syscallName(view.getUint32(at.syscall_nr, true)),
        start: readU64(view, at.start),
        length: readU64(view, at.length),
        oldStart: readU64(view, at.old_start),
        oldLength: readU64(view, at.old_length),
        detail: view.getUint32(at.detail, true),
        mapFlags: readU64(view, at.map_flags),
        fd: view.getInt32(at.fd, true),
        fileOffset: readU64(view, at.file_offset),
      };
    }
    case EventKind.FD: {
      expectSize(FD_EVENT.size, 'fd');
      const at = FD_EVENT.at;
      const op = opName(FD_OP_NAMES, view.getUint32(at.op, true), 'fd op');
      const flags = view.getUint32(at.flags, true);
      const nr = view.getUint32(at.syscall_nr, true);
      const mode = view.getUint32(at.file_mode, true);
      const hasPath = PATH_SYSCALLS.has(nr) && op === 'opened';
      return {
        kind: 'fd',
        ...base,
        op,
        syscall: syscallName(nr),
        fd: view.getInt32(at.fd, true),
        otherFd: view.getInt32(at.other_fd, true),
        openFlags: view.getUint32(at.open_flags, true),
        file: mode === 0 ? null : { mode, dev: view.getUint32(at.file_dev, true), ino: readU64(view, at.file_ino) },
        path: hasPath ? cString(view, at.path, PATH_BYTES) : null,
        pathTruncated: (flags & FdFlag.PATH_TRUNCATED) !== 0,
        pathUnreadable: (flags & FdFlag.PATH_UNREADABLE) !== 0,
        pairUnreadable: (flags & FdFlag.PAIR_UNREADABLE) !== 0,
      };
    }
    case EventKind.FILE: {
      expectSize(FILE_EVENT.size, 'file');
      const at = FILE_EVENT.at;
      const dev = view.getUint32(at.file_dev, true);
      const ino = readU64(view, at.file_ino);
      const offset = view.getBigInt64(at.offset, true);
      return {
        kind: 'file',
        ...base,
        op: opName(FILE_OP_NAMES, view.getUint32(at.op, true), 'file op'),
        syscall: syscallName(view.getUint32(at.syscall_nr, true)),
        fd: view.getInt32(at.fd, true),
        file: dev === 0 && ino === 0 ? null : { dev, ino },
        offset: offset < 0n ? null : readU64(view, at.offset),
        length: readU64(view, at.length),
        mode: view.getUint32(at.detail, true),
      };
    }
    default:
      throw new TrackingDecodeError(`unknown event kind ${kind}`);
  }
}

/** Calls whose fd events carry the path (or memfd name) the caller gave. */
const PATH_SYSCALLS = new Set([2 /* open */, 85 /* creat */, 257 /* openat */, 437 /* openat2 */, 319 /* memfd_create */]);
