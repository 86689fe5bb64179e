// Kernel ABI for write-protection tracking on x86-64: userfaultfd (linux/userfaultfd.h),
// PAGEMAP_SCAN (linux/fs.h, kernel 6.7+), ptrace (linux/ptrace.h, asm/ptrace.h) and the
// syscall numbers we inject or call. The build machines' headers may predate 6.7, so the
// layouts and numbers are written out here from the kernel's uapi and checked by the
// assertions at the end of this file.

/** The only page size this module supports (x86-64 base pages). */
export const PAGE_SIZE = 4096;

// ---- ioctl number encoding (include/uapi/asm-generic/ioctl.h) -------------------------
// nr: bits 0-7, type: bits 8-15, size: bits 16-29, direction: bits 30-31 (1 write, 2 read).
const IOC_WRITE = 1;
const IOC_READ = 2;

function ioc(direction: number, type: number, nr: number, size: number): number {
  if (size >= 1 << 14) throw new Error(`ioctl argument of ${size} bytes does not fit the size field`);
  // >>> 0 keeps the result an unsigned 32-bit number (the direction bits reach bit 31).
  return ((direction << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}

/** _IOWR(type, nr, size) */
export function iowr(type: number, nr: number, size: number): number {
  return ioc(IOC_READ | IOC_WRITE, type, nr, size);
}

/** _IOR(type, nr, size) */
export function ior(type: number, nr: number, size: number): number {
  return ioc(IOC_READ, type, nr, size);
}

// ---- userfaultfd (include/uapi/linux/userfaultfd.h) ------------------------------------

/** The ioctl type byte of every UFFDIO_* request. */
const UFFDIO = 0xaa;
/** The API version UFFDIO_API negotiates. */
export const UFFD_API = 0xaa;

/** userfaultfd(2) flag: handle faults from user mode only; allowed without privilege. */
export const UFFD_USER_MODE_ONLY = 1;

/** struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; } */
export const UFFDIO_API_STRUCT = { size: 24, api: 0, features: 8, ioctls: 16 } as const;
/** struct uffdio_range { __u64 start; __u64 len; } */
export const UFFDIO_RANGE_STRUCT = { size: 16, start: 0, len: 8 } as const;
/** struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; } */
export const UFFDIO_REGISTER_STRUCT = { size: 32, start: 0, len: 8, mode: 16, ioctls: 24 } as const;

/** _IOWR(0xAA, 0x3F, struct uffdio_api) = 0xC018AA3F */
export const UFFDIO_API = iowr(UFFDIO, 0x3f, UFFDIO_API_STRUCT.size);
/** _IOWR(0xAA, 0x00, struct uffdio_register) = 0xC020AA00 */
export const UFFDIO_REGISTER = iowr(UFFDIO, 0x00, UFFDIO_REGISTER_STRUCT.size);
/** _IOR(0xAA, 0x01, struct uffdio_range) = 0x8010AA01 (the kernel's historical _IOR) */
export const UFFDIO_UNREGISTER = ior(UFFDIO, 0x01, UFFDIO_RANGE_STRUCT.size);

export const UFFDIO_REGISTER_MODE_WP = 1 << 1;

/** UFFDIO_API feature bits this module asks for or reports. */
export const UffdFeature = {
  /** hugetlbfs and shmem VMAs can be write-protected (5.19+). */
  WP_HUGETLBFS_SHMEM: 1 << 12,
  /** Write-protecting an unpopulated pte installs a marker, so a first write is seen (6.4+). */
  WP_UNPOPULATED: 1 << 13,
  /** Write faults on protected pages are resolved by the kernel itself, no handler (6.7+). */
  WP_ASYNC: 1 << 15,
} as const;

export function describeUffdFeatures(bits: number): string {
  const names = Object.entries(UffdFeature)
    .filter(([, bit]) => (bits & bit) !== 0)
    .map(([name]) => name);
  return names.length ? names.join('|') : 'none of the write-protection features';
}

// ---- PAGEMAP_SCAN (include/uapi/linux/fs.h, kernel 6.7+) -------------------------------

/**
 * struct pm_scan_arg {
 *   __u64 size, flags, start, end, walk_end, vec, vec_len, max_pages,
 *         category_inverted, category_mask, category_anyof_mask, return_mask;
 * }
 */
export const PM_SCAN_ARG_STRUCT = {
  size: 96,
  fields: {
    size: 0,
    flags: 8,
    start: 16,
    end: 24,
    walkEnd: 32,
    vec: 40,
    vecLen: 48,
    maxPages: 56,
    categoryInverted: 64,
    categoryMask: 72,
    categoryAnyofMask: 80,
    returnMask: 88,
  },
} as const;

/** struct page_region { __u64 start; __u64 end; __u64 categories; } */
export const PAGE_REGION_STRUCT = { size: 24, start: 0, end: 8, categories: 16 } as const;

/** _IOWR('f', 16, struct pm_scan_arg) = 0xC0606610 */
export const PAGEMAP_SCAN = iowr(0x66, 16, PM_SCAN_ARG_STRUCT.size);

/** pm_scan_arg.flags */
export const PmScanFlag = {
  /** Write-protect the pages that match, atomically with reporting them. */
  WP_MATCHING: 1 << 0,
  /** Fail with EPERM when a VMA in the range is not registered for async write protection. */
  CHECK_WPASYNC: 1 << 1,
} as const;

/** Page categories of PAGEMAP_SCAN (masks and page_region.categories). */
export const PageCategory = {
  /** VMA-level: registered with userfaultfd async write protection. */
  WPALLOWED: 1 << 0,
  /** Not write-protected: written since it was last protected (or never protected). */
  WRITTEN: 1 << 1,
  /** Backed by a page-cache page rather than an anonymous one. */
  FILE: 1 << 2,
  PRESENT: 1 << 3,
  SWAPPED: 1 << 4,
  /** The shared zero page (a read of never-written anonymous memory). */
  PFNZERO: 1 << 5,
  HUGE: 1 << 6,
} as const;

// ---- ptrace (include/uapi/linux/ptrace.h, arch/x86/include/uapi/asm/ptrace-abi.h) -------

export const Ptrace = {
  CONT: 7,
  DETACH: 17,
  GETREGS: 12,
  SETREGS: 13,
  SYSCALL: 24,
  SEIZE: 0x4206,
  INTERRUPT: 0x4207,
  GETSIGMASK: 0x420a,
  SETSIGMASK: 0x420b,
} as const;

/** PTRACE_SEIZE option: syscall stops report SIGTRAP | 0x80, told apart from real SIGTRAPs. */
export const PTRACE_O_TRACESYSGOOD = 1;
/** The event number of a PTRACE_INTERRUPT or group stop of a seized tracee (status >> 16). */
export const PTRACE_EVENT_STOP = 128;
/** waitpid: wait for any kind of child, clone children (threads) included. */
export const WALL = 0x40000000;
/** sizeof(kernel sigset_t) on x86-64, the addr argument of PTRACE_{GET,SET}SIGMASK. */
export const KERNEL_SIGSET_BYTES = 8;

/**
 * struct user_regs_struct of x86-64 (27 unsigned longs), byte offsets of the fields we use.
 * Order: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags
 * rsp ss fs_base gs_base ds es fs gs.
 */
export const USER_REGS = {
  size: 27 * 8,
  r10: 7 * 8,
  r9: 8 * 8,
  r8: 9 * 8,
  rax: 10 * 8,
  rdx: 12 * 8,
  rsi: 13 * 8,
  rdi: 14 * 8,
  origRax: 15 * 8,
  rip: 16 * 8,
  cs: 17 * 8,
} as const;

/** The code segment selector of a 64-bit user task; anything else is a 32-bit (compat) task. */
export const USER_CS_64 = 0x33;
/** The x86-64 `syscall` instruction, 0F 05: two bytes, as the restart logic assumes. */
export const SYSCALL_INSTRUCTION = Buffer.from([0x0f, 0x05]);

/** Kernel-internal "restart the interrupted syscall" results a stopped thread may hold in rax. */
export const RestartErrno = {
  ERESTARTSYS: 512,
  ERESTARTNOINTR: 513,
  ERESTARTNOHAND: 514,
  ERESTART_RESTARTBLOCK: 516,
} as const;

// ---- x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) -------------------

export const Sys = {
  close: 3,
  restart_syscall: 219,
  userfaultfd: 323,
  pidfd_open: 434,
  pidfd_getfd: 438,
} as const;

export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

// The documented values, checked once at load so a slip in the encoding cannot pass silently.
const EXPECTED_IOCTLS: Array<[string, number, number]> = [
  ['UFFDIO_API', UFFDIO_API, 0xc018aa3f],
  ['UFFDIO_REGISTER', UFFDIO_REGISTER, 0xc020aa00],
  ['UFFDIO_UNREGISTER', UFFDIO_UNREGISTER, 0x8010aa01],
  ['PAGEMAP_SCAN', PAGEMAP_SCAN, 0xc0606610],
];
for (const [name, got, want] of EXPECTED_IOCTLS) {
  if (got !== want) throw new Error(`${name} encodes as 0x${got.toString(16)}, expected 0x${want.toString(16)}`);
}
