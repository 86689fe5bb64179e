/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/*
 * The contract between crinc's eBPF programs (crinc.bpf.c) and user space
 * (src/tracking/bpf/events.ts): map limits, map key/value layouts, and one event struct
 * per event kind on the `events` ring buffer.
 *
 * Every struct here is laid out with explicit padding so that C and TypeScript agree on
 * each offset without relying on compiler rules; user space checks the offsets against
 * the BTF of the built object when it loads it, so a change here that is not mirrored in
 * events.ts fails loudly instead of misreading events.
 *
 * Process ids are the kernel's global ids (the init PID namespace): a job in its own PID
 * namespace is tracked by its host pids.
 */
#ifndef CRINC_EVENTS_H
#define CRINC_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* ---- limits ---------------------------------------------------------------------- */

/* Processes (thread groups) of tracked jobs at once; also the size of process_stats. */
#define CRINC_TRACKED_PROCESSES_MAX 8192
/* Distinct (process, page) write-fault entries kept between two drains. */
#define CRINC_WRITTEN_PAGES_MAX 262144
/* Threads of tracked processes inside a decoded syscall at the same moment. */
#define CRINC_INFLIGHT_SYSCALLS_MAX 16384
/* Bytes of the event ring buffer (a power of two, a multiple of the page size). */
#define CRINC_RING_BUFFER_BYTES (8u << 20)
/* Bytes kept of a path given to open(2) and friends, or of an exec'd file name,
 * including the terminating NUL; longer names are cut (the event says so). */
#define CRINC_PATH_BYTES 256
/* Control messages of one recvmsg(2) that are looked at for SCM_RIGHTS. */
#define CRINC_CMSG_SCAN_MAX 4
/* Descriptors of one SCM_RIGHTS message that are reported one by one. */
#define CRINC_RECEIVED_FDS_MAX 16
/* Messages of one recvmmsg(2) whose control data is looked at. */
#define CRINC_RECVMMSG_SCAN_MAX 8

/* ---- maps shared with user space ------------------------------------------------- */

/* Key of written_pages: one page of one process. */
struct crinc_page_key {
	__u32 tgid;
	__u32 pad;
	__u64 page_address; /* page-aligned user address */
};

/* Syscalls a tracked process made whose effects on memory, files or descriptors are
 * not decoded: when one is non-zero the tracking of that process is incomplete. */
enum crinc_opaque_syscall {
	CRINC_OPAQUE_IO_URING_ENTER = 0,    /* io_uring can write files, open and close fds */
	CRINC_OPAQUE_AIO_SUBMIT = 1,        /* io_submit(2): asynchronous file writes */
	CRINC_OPAQUE_PROCESS_VM_WRITEV = 2, /* writes into another process's memory */
	CRINC_OPAQUE_PTRACE_POKE = 3,       /* PTRACE_POKETEXT/POKEDATA into a tracee */
	CRINC_OPAQUE_FOREIGN_ABI = 4,       /* ia32 or x32 syscalls: numbers not decoded */
	CRINC_OPAQUE_KINDS = 5,
};

/* Value of process_stats, per tracked tgid. Counters only grow while the process is
 * tracked; user space reads them without deleting and takes differences, and deletes
 * the entry of a process after it has seen its exit. */
struct crinc_process_stats {
	__u64 user_write_faults;   /* write page faults taken in user mode */
	__u64 kernel_write_faults; /* faults of the kernel writing into the process's
				      memory on its behalf (read(2) into a fresh page …) */
	__u64 unrecorded_write_faults; /* write faults whose page did not fit in
					  written_pages (it was full): addresses lost */
	__u64 opaque_syscalls[CRINC_OPAQUE_KINDS]; /* indexed by crinc_opaque_syscall */
};

/* Indices of the loss_counters per-CPU array: information the programs had to drop.
 * Monotonic; user space reports the growth since its previous read. */
enum crinc_loss_counter {
	CRINC_LOST_FORK_EVENTS = 0,   /* ring buffer full: the rest are likewise */
	CRINC_LOST_EXEC_EVENTS = 1,
	CRINC_LOST_EXIT_EVENTS = 2,
	CRINC_LOST_LAYOUT_EVENTS = 3,
	CRINC_LOST_FD_EVENTS = 4,
	CRINC_LOST_FILE_EVENTS = 5,
	CRINC_LOST_CHILDREN = 6,      /* tracked map full: a child was not tracked */
	CRINC_LOST_PROCESS_STATS = 7, /* process_stats full: a fault was not counted */
	CRINC_LOST_PAGE_ADDRESSES = 8, /* written_pages full: a fault's page not kept */
	CRINC_LOST_SYSCALLS = 9,      /* inflight map full: a syscall was not decoded */
	CRINC_LOSS_COUNTERS = 10,
};

/* ---- events on the ring buffer ----------------------------------------------------- */

enum crinc_event_kind {
	CRINC_EVENT_FORK = 1,
	CRINC_EVENT_EXEC = 2,
	CRINC_EVENT_EXIT = 3,
	CRINC_EVENT_LAYOUT = 4,
	CRINC_EVENT_FD = 5,
	CRINC_EVENT_FILE = 6,
};

/* First member of every event. */
struct crinc_event_header {
	__u32 kind;    /* enum crinc_event_kind */
	__u32 tgid;    /* the process the event is about */
	__u32 tid;     /* the thread that caused it */
	__u32 pad;
	__u64 time_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
};

/* sched_process_fork of a tracked process creating a new process (not a thread).
 * header.tgid is the creating process. */
enum crinc_fork_flags {
	CRINC_FORK_CHILD_UNTRACKED = 1 << 0, /* the tracked map was full */
	CRINC_FORK_SHARES_MEMORY = 1 << 1,   /* CLONE_VM: writes of one are the other's */
	CRINC_FORK_SHARES_FILES = 1 << 2,    /* CLONE_FILES: one fd table for both */
};
struct crinc_fork_event {
	struct crinc_event_header header;
	__u32 child_tgid;
	__u32 flags; /* enum crinc_fork_flags */
};

/* sched_process_exec in a tracked process: its address space was replaced and its
 * close-on-exec descriptors were closed. */
struct crinc_exec_event {
	struct crinc_event_header header;
	__u32 old_tid;  /* the thread that called execve, now the only one (tgid) */
	__u32 filename_truncated; /* the name filled its buffer: it may have been cut */
	char filename[CRINC_PATH_BYTES];
};

/* The last thread of a tracked process exited; it is no longer tracked. */
struct crinc_exit_event {
	struct crinc_event_header header;
	__s32 exit_code; /* wait(2) status word */
	__u32 pad;
};

/* An address range whose content may have changed without a write fault, or whose
 * mapping changed. [start, start + length) is the range the call affected: for
 * mremap the new range, with the old one in old_start/old_length. */
enum crinc_layout_op {
	CRINC_LAYOUT_MMAP = 1,       /* detail: prot; map_flags; fd, file_offset */
	CRINC_LAYOUT_MUNMAP = 2,
	CRINC_LAYOUT_MREMAP = 3,     /* map_flags: MREMAP_* */
	CRINC_LAYOUT_BRK = 4,        /* [start, start + length) between old and new break;
					detail: enum crinc_brk_direction */
	CRINC_LAYOUT_MADVISE = 5,    /* detail: the MADV_* advice (only zapping ones) */
	CRINC_LAYOUT_MPROTECT = 6,   /* detail: prot (mprotect and pkey_mprotect) */
	CRINC_LAYOUT_SHMAT = 7,      /* length 0: the segment size is not known here */
	CRINC_LAYOUT_SHMDT = 8,      /* length 0: the segment size is not known here */
	CRINC_LAYOUT_REMAP_FILE_PAGES = 9,
};
enum crinc_brk_direction {
	CRINC_BRK_GREW = 1,
	CRINC_BRK_SHRANK = 2,
};
struct crinc_layout_event {
	struct crinc_event_header header;
	__u32 op;          /* enum crinc_layout_op */
	__u32 detail;
	__u64 start;
	__u64 length;
	__u64 old_start;   /* mremap only */
	__u64 old_length;  /* mremap only */
	__u64 map_flags;
	__u64 file_offset; /* mmap of a file */
	__s32 fd;          /* mmap of a file, else -1 */
	__u32 syscall_nr;
};

/* A change of a tracked process's descriptor table, from a successful syscall. */
enum crinc_fd_op {
	CRINC_FD_OPENED = 1,        /* fd is new (open*, socket, accept*, eventfd, memfd …) */
	CRINC_FD_OPENED_PAIR = 2,   /* fd and other_fd are new (pipe*, socketpair) */
	CRINC_FD_DUPLICATED = 3,    /* fd now refers to other_fd's file (dup*, F_DUPFD*);
				       dup2/dup3 onto an open fd closed that one first */
	CRINC_FD_CLOSED = 4,
	CRINC_FD_RANGE_CLOSED = 5,  /* close_range(fd, other_fd, flags): other_fd is the
				       last fd, clamped to INT32_MAX; with
				       CLOSE_RANGE_CLOEXEC nothing was closed */
	CRINC_FD_RECEIVED = 6,      /* fd arrived in an SCM_RIGHTS message */
	CRINC_FD_TABLE_UNKNOWN = 7, /* the table may have changed in ways not decoded
				       here (more fds received than reported, recvmmsg
				       with control data …): read /proc/PID/fd again */
};
enum crinc_fd_flags {
	CRINC_FD_PATH_TRUNCATED = 1 << 0, /* the path filled its buffer: it may have been cut */
	CRINC_FD_PATH_UNREADABLE = 1 << 1, /* the path argument could not be read */
	CRINC_FD_PAIR_UNREADABLE = 1 << 2, /* pipe/socketpair: the int[2] could not be read */
	CRINC_FD_FILE_UNKNOWN = 1 << 3,   /* the new fd was not found in the fd table */
};
struct crinc_fd_event {
	struct crinc_event_header header;
	__u32 op;           /* enum crinc_fd_op */
	__u32 syscall_nr;   /* which call did it */
	__s32 fd;
	__s32 other_fd;     /* see crinc_fd_op; openat*: the dirfd; else -1 */
	__u32 open_flags;   /* O_* of open*, SOCK_* type of socket, flags of dup3 … */
	__u32 flags;        /* enum crinc_fd_flags */
	__u32 file_mode;    /* i_mode of the file fd now refers to (0: unknown) */
	__u32 file_dev;     /* the kernel's dev_t (major << 20 | minor) of its inode */
	__u64 file_ino;
	char path[CRINC_PATH_BYTES]; /* the path as passed to open*, creat, memfd_create */
};

/* A change of a regular file's content or size through a descriptor. */
enum crinc_file_op {
	CRINC_FILE_WRITE = 1,    /* write, pwrite64, writev, pwritev, pwritev2 */
	CRINC_FILE_COPY_IN = 2,  /* copy_file_range, sendfile, splice into the file */
	CRINC_FILE_TRUNCATE = 3, /* ftruncate, or open* with O_TRUNC: new size in offset */
	CRINC_FILE_FALLOCATE = 4, /* detail: the FALLOC_FL_* mode; offset, length */
};
struct crinc_file_event {
	struct crinc_event_header header;
	__u32 op;         /* enum crinc_file_op */
	__u32 syscall_nr;
	__s32 fd;
	__u32 detail;
	__u32 file_dev;   /* the kernel's dev_t (major << 20 | minor) */
	__u32 pad;
	__u64 file_ino;
	__s64 offset;     /* first byte changed; -1: not known, assume the whole file */
	__u64 length;     /* bytes changed (0 for a truncate) */
};

#endif /* CRINC_EVENTS_H */
