// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * crinc's watcher of a job between two checkpoints.
 *
 * User space seeds `tracked` with the job's processes; from then on every process a
 * tracked process creates is tracked from its birth (sched_process_fork runs before the
 * child first runs). For tracked processes only, the programs here record:
 *   - write page faults: a count per process and the page addresses (written_pages),
 *     the live signal of how much the job writes between checkpoints;
 *   - on the `events` ring buffer: forks, execs and exits; "layout" events (address
 *     ranges whose content may change without a write fault, or whose mapping
 *     changed); descriptor-table changes; changes of regular files through fds.
 * Whatever cannot be recorded (a full ring buffer or map, an undecodable syscall) is
 * counted, never dropped silently: see enum crinc_loss_counter and
 * crinc_process_stats.opaque_syscalls in events.h.
 *
 * Only tracepoints are used (tp_btf: typed arguments, CO-RE field access): fentry and
 * kprobes are not available on every kernel crinc runs on.
 *
 * x86-64 only: the syscall numbers, the registers that carry syscall arguments and the
 * page-fault error code are x86-64's.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <asm/unistd_64.h>
#include "events.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Kernel and uapi constants used here (macros, so not in vmlinux.h). */
#define PAGE_MASK (~4095ULL)
#define X86_PF_WRITE (1UL << 1) /* page fault error code: the access was a write */
#define TS_COMPAT 0x0002        /* thread_info.status: in an ia32 syscall */
#define X32_SYSCALL_BIT 0x40000000
#define EEXIST 17
#define S_IFMT 0170000
#define S_IFREG 0100000
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_APPEND 02000
#define MAP_ANONYMOUS 0x20
#define MADV_DONTNEED 4
#define MADV_FREE 8
#define MADV_REMOVE 9
#define MADV_DONTNEED_LOCKED 24
#define F_DUPFD 0
#define F_DUPFD_CLOEXEC 1030
#define PTRACE_POKETEXT 4
#define PTRACE_POKEDATA 5
#define RWF_APPEND 0x10
#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define INT32_MAX 0x7fffffff
/* struct user_msghdr (uapi): where recvmsg(2) leaves the control buffer and its
 * length; struct mmsghdr is a user_msghdr and a 4-byte length, padded to 64. */
#define MSGHDR_CONTROL_OFFSET 32
#define MSGHDR_CONTROLLEN_OFFSET 40
#define MMSGHDR_SIZE 64
#define CMSGHDR_SIZE 16 /* struct cmsghdr: size_t len; int level; int type */

/* ---- maps ------------------------------------------------------------------------- */

/* tgid -> tracking session: the id user space gave when it seeded the job's root.
 * A child inherits its parent's session, so user space can tell entries of an old
 * session (a fork racing with untrack) from the current one's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CRINC_TRACKED_PROCESSES_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CRINC_TRACKED_PROCESSES_MAX);
	__type(key, __u32);
	__type(value, struct crinc_process_stats);
} process_stats SEC(".maps");

/* A plain hash, not an LRU: when it is full a new page is counted as unrecorded
 * (exactly, per process), where an LRU would evict an older page without a trace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CRINC_WRITTEN_PAGES_MAX);
	__type(key, struct crinc_page_key);
	__type(value, __u64); /* write faults on that page */
} written_pages SEC(".maps");

/* A decoded syscall between its entry and its exit: the arguments, which the exit
 * needs (registers may be changed by the call), and what the entry saw. */
struct inflight_syscall {
	__u64 nr;
	__u64 args[6];
	__u64 break_before; /* brk: the program break when the call began */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CRINC_INFLIGHT_SYSCALLS_MAX);
	__type(key, __u32); /* tid */
	__type(value, struct inflight_syscall);
} inflight_syscalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CRINC_RING_BUFFER_BYTES);
} events SEC(".maps");

/* The tgids of crinc controllers (tgid -> 1), set by user space when it loads these
 * programs. A tracked thread that is ptraced by a controller (its syscall injection
 * to arm write tracking) or by a process the controller started (CRIU: its parasite)
 * runs their syscalls, not the job's: fd events of such syscalls (userfaultfd,
 * memfd_create, socket, recvmsg, close) are left out. Layout and file events stay,
 * whoever caused them: they decide which pages and file blocks are read. */
#define CRINC_CONTROLLERS_MAX 8

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CRINC_CONTROLLERS_MAX);
	__type(key, __u32);
	__type(value, __u8);
} controllers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CRINC_LOSS_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} loss_counters SEC(".maps");

/* The event structs are only cast to from ring buffer memory and the enums are only
 * used as constants: these typed, never used globals put them in the object's BTF,
 * where user space checks its copy of events.h (src/tracking/bpf/events.ts). */
const struct crinc_fork_event *btf_fork_event __attribute__((unused));
const struct crinc_exec_event *btf_exec_event __attribute__((unused));
const struct crinc_exit_event *btf_exit_event __attribute__((unused));
const struct crinc_layout_event *btf_layout_event __attribute__((unused));
const struct crinc_fd_event *btf_fd_event __attribute__((unused));
const struct crinc_file_event *btf_file_event __attribute__((unused));
const enum crinc_event_kind btf_event_kind __attribute__((unused));
const enum crinc_fork_flags btf_fork_flags __attribute__((unused));
const enum crinc_layout_op btf_layout_op __attribute__((unused));
const enum crinc_brk_direction btf_brk_direction __attribute__((unused));
const enum crinc_fd_op btf_fd_op __attribute__((unused));
const enum crinc_fd_flags btf_fd_flags __attribute__((unused));
const enum crinc_file_op btf_file_op __attribute__((unused));
const enum crinc_opaque_syscall btf_opaque_syscall __attribute__((unused));
const enum crinc_loss_counter btf_loss_counter __attribute__((unused));

/* ---- helpers ---------------------------------------------------------------------- */

static __always_inline void count_loss(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&loss_counters, &counter);

	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline bool is_tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&tracked, &tgid) != NULL;
}

static __always_inline struct crinc_process_stats *process_stats_of(__u32 tgid)
{
	struct crinc_process_stats *stats = bpf_map_lookup_elem(&process_stats, &tgid);
	struct crinc_process_stats zero = {};

	if (stats)
		return stats;
	/* NOEXIST: another CPU may have created it meanwhile; either way look it up. */
	bpf_map_update_elem(&process_stats, &tgid, &zero, BPF_NOEXIST);
	stats = bpf_map_lookup_elem(&process_stats, &tgid);
	if (!stats)
		count_loss(CRINC_LOST_PROCESS_STATS);
	return stats;
}

static __always_inline void count_opaque_syscall(__u32 tgid, __u32 kind)
{
	struct crinc_process_stats *stats = process_stats_of(tgid);

	if (stats && kind < CRINC_OPAQUE_KINDS)
		__sync_fetch_and_add(&stats->opaque_syscalls[kind], 1);
}

static __always_inline void fill_header(struct crinc_event_header *header, __u32 kind,
					__u32 tgid)
{
	header->kind = kind;
	header->tgid = tgid;
	header->tid = (__u32)bpf_get_current_pid_tgid();
	header->pad = 0;
	header->time_ns = bpf_ktime_get_ns();
}

/* Events are consumed on a timer, so no consumer waits to be woken per event. */
#define submit_event(event) bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP)

/* The open file behind a descriptor of the current process, or NULL. */
static __always_inline struct file *file_of_fd(int fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = NULL;

	if (fd < 0)
		return NULL;
	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]))
		return NULL;
	return file;
}

/* Whether the current thread is ptraced by a crinc controller or by a child of one. */
static __always_inline bool traced_by_crinc(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_struct *tracer;
	__u32 tgid;

	if (!BPF_CORE_READ(task, ptrace))
		return false;
	tracer = BPF_CORE_READ(task, parent);
	tgid = BPF_CORE_READ(tracer, tgid);
	if (bpf_map_lookup_elem(&controllers, &tgid))
		return true;
	tgid = BPF_CORE_READ(tracer, real_parent, tgid);
	return bpf_map_lookup_elem(&controllers, &tgid) != NULL;
}

/* ---- processes -------------------------------------------------------------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = parent->tgid;
	__u32 child_tgid = child->tgid;
	struct crinc_process_stats zero = {};
	struct crinc_fork_event *event;
	__u64 *session;
	__u64 child_session;
	__u32 flags = 0;

	/* A new thread joins its tracked thread group: nothing to add. */
	if (child_tgid == parent_tgid)
		return 0;
	session = bpf_map_lookup_elem(&tracked, &parent_tgid);
	if (!session)
		return 0;
	child_session = *session;
	if (bpf_map_update_elem(&tracked, &child_tgid, &child_session, BPF_ANY)) {
		flags |= CRINC_FORK_CHILD_UNTRACKED;
		count_loss(CRINC_LOST_CHILDREN);
	} else {
		/* A reused pid must not inherit an old process's counters. */
		bpf_map_update_elem(&process_stats, &child_tgid, &zero, BPF_ANY);
	}
	if (BPF_CORE_READ(child, mm) == BPF_CORE_READ(parent, mm))
		flags |= CRINC_FORK_SHARES_MEMORY;
	if (BPF_CORE_READ(child, files) == BPF_CORE_READ(parent, files))
		flags |= CRINC_FORK_SHARES_FILES;

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_loss(CRINC_LOST_FORK_EVENTS);
		return 0;
	}
	fill_header(&event->header, CRINC_EVENT_FORK, parent_tgid);
	event->child_tgid = child_tgid;
	event->flags = flags;
	submit_event(event);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = task->tgid;
	struct crinc_exec_event *event;
	long copied;

	if (!is_tracked(tgid))
		return 0;
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_loss(CRINC_LOST_EXEC_EVENTS);
		return 0;
	}
	fill_header(&event->header, CRINC_EVENT_EXEC, tgid);
	event->old_tid = old_pid;
	copied = bpf_probe_read_kernel_str(event->filename, sizeof(event->filename),
					   BPF_CORE_READ(bprm, filename));
	if (copied < 0)
		event->filename[0] = '\0';
	event->filename_truncated = copied == sizeof(event->filename);
	submit_event(event);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task, bool group_dead)
{
	__u32 tgid = task->tgid;
	__u32 tid = task->pid;
	struct crinc_exit_event *event;

	if (!is_tracked(tgid))
		return 0;
	bpf_map_delete_elem(&inflight_syscalls, &tid);
	if (!group_dead)
		return 0;
	bpf_map_delete_elem(&tracked, &tgid);
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_loss(CRINC_LOST_EXIT_EVENTS);
		return 0;
	}
	fill_header(&event->header, CRINC_EVENT_EXIT, tgid);
	event->exit_code = BPF_CORE_READ(task, exit_code);
	event->pad = 0;
	submit_event(event);
	return 0;
}

/* ---- write faults ----------------------------------------------------------------- */

static __always_inline void record_write_fault(__u64 address, bool by_kernel)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct crinc_page_key key = {};
	struct crinc_process_stats *stats;
	__u64 *count;
	__u64 one = 1;
	long err;

	if (!is_tracked(tgid))
		return;
	stats = process_stats_of(tgid);
	if (stats) {
		if (by_kernel)
			__sync_fetch_and_add(&stats->kernel_write_faults, 1);
		else
			__sync_fetch_and_add(&stats->user_write_faults, 1);
	}
	key.tgid = tgid;
	key.page_address = address & PAGE_MASK;
	count = bpf_map_lookup_elem(&written_pages, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return;
	}
	err = bpf_map_update_elem(&written_pages, &key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* Another thread of the process faulted on the same page just now. */
		count = bpf_map_lookup_elem(&written_pages, &key);
		if (count)
			__sync_fetch_and_add(count, 1);
		return;
	}
	if (err) {
		count_loss(CRINC_LOST_PAGE_ADDRESSES);
		if (stats)
			__sync_fetch_and_add(&stats->unrecorded_write_faults, 1);
	}
}

SEC("tp_btf/page_fault_user")
int BPF_PROG(on_user_page_fault, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	if (error_code & X86_PF_WRITE)
		record_write_fault(address, false);
	return 0;
}

/* The kernel writing into user memory for the process (read(2), recv(2) into a page
 * not yet present or write-protected) faults in kernel mode. Kernel addresses (the
 * upper half) are the kernel's own business. */
SEC("tp_btf/page_fault_kernel")
int BPF_PROG(on_kernel_page_fault, unsigned long address, struct pt_regs *regs,
	     unsigned long error_code)
{
	if ((error_code & X86_PF_WRITE) && (long)address >= 0)
		record_write_fault(address, true);
	return 0;
}

/* ---- syscalls: entry -------------------------------------------------------------- */

/* The syscalls whose results are decoded at exit (x86-64 numbers). */
static __always_inline bool is_decoded_syscall(long nr)
{
	switch (nr) {
	/* layout */
	case __NR_mmap: case __NR_munmap: case __NR_mremap: case __NR_brk:
	case __NR_madvise: case __NR_mprotect: case __NR_pkey_mprotect:
	case __NR_shmat: case __NR_shmdt: case __NR_remap_file_pages:
	/* descriptors */
	case __NR_open: case __NR_openat: case __NR_openat2: case __NR_creat:
	case __NR_close: case __NR_close_range: case __NR_dup: case __NR_dup2:
	case __NR_dup3: case __NR_fcntl: case __NR_socket: case __NR_socketpair:
	case __NR_accept: case __NR_accept4: case __NR_pipe: case __NR_pipe2:
	case __NR_eventfd: case __NR_eventfd2: case __NR_signalfd: case __NR_signalfd4:
	case __NR_timerfd_create: case __NR_epoll_create: case __NR_epoll_create1:
	case __NR_inotify_init: case __NR_inotify_init1: case __NR_fanotify_init:
	case __NR_memfd_create: case __NR_memfd_secret: case __NR_userfaultfd:
	case __NR_pidfd_open: case __NR_pidfd_getfd: case __NR_io_uring_setup:
	case __NR_perf_event_open: case __NR_open_by_handle_at: case __NR_open_tree:
	case __NR_fsopen: case __NR_fsmount: case __NR_fspick:
	case __NR_landlock_create_ruleset: case __NR_recvmsg: case __NR_recvmmsg:
	/* files */
	case __NR_write: case __NR_pwrite64: case __NR_writev: case __NR_pwritev:
	case __NR_pwritev2: case __NR_copy_file_range: case __NR_sendfile:
	case __NR_splice: case __NR_ftruncate: case __NR_fallocate:
	/* opaque: counted */
	case __NR_io_uring_enter: case __NR_io_submit: case __NR_process_vm_writev:
	case __NR_ptrace:
		return true;
	default:
		return false;
	}
}

/* Calls of a decoded syscall that cannot have an effect recorded here. */
static __always_inline bool is_irrelevant_call(long nr, const __u64 *args)
{
	switch (nr) {
	case __NR_madvise:
		return args[2] != MADV_DONTNEED && args[2] != MADV_FREE &&
		       args[2] != MADV_REMOVE && args[2] != MADV_DONTNEED_LOCKED;
	case __NR_fcntl:
		return args[1] != F_DUPFD && args[1] != F_DUPFD_CLOEXEC;
	case __NR_ptrace:
		return args[0] != PTRACE_POKETEXT && args[0] != PTRACE_POKEDATA;
	default:
		return false;
	}
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long nr)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u32 tid = (__u32)pid_tgid;
	struct inflight_syscall call = {};

	/* ia32 and x32 calls use other numbers: counted, never misread as x86-64 ones. */
	if ((task->thread_info.status & TS_COMPAT) || (nr & X32_SYSCALL_BIT)) {
		if (is_tracked(tgid))
			count_opaque_syscall(tgid, CRINC_OPAQUE_FOREIGN_ABI);
		return 0;
	}
	if (!is_decoded_syscall(nr) || !is_tracked(tgid))
		return 0;
	call.nr = nr;
	call.args[0] = regs->di;
	call.args[1] = regs->si;
	call.args[2] = regs->dx;
	call.args[3] = regs->r10;
	call.args[4] = regs->r8;
	call.args[5] = regs->r9;
	if (is_irrelevant_call(nr, call.args))
		return 0;
	if (nr == __NR_brk)
		call.break_before = BPF_CORE_READ(task, mm, brk);
	if (bpf_map_update_elem(&inflight_syscalls, &tid, &call, BPF_ANY))
		count_loss(CRINC_LOST_SYSCALLS);
	return 0;
}

/* ---- syscalls: layout ------------------------------------------------------------- */

struct layout_change {
	__u32 op;
	__u32 detail;
	__u64 start;
	__u64 length;
	__u64 old_start;
	__u64 old_length;
	__u64 map_flags;
	__u64 file_offset;
	__s32 fd;
	__u32 syscall_nr;
};

static __noinline void emit_layout(const struct layout_change *change)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct crinc_layout_event *event;

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_loss(CRINC_LOST_LAYOUT_EVENTS);
		return;
	}
	fill_header(&event->header, CRINC_EVENT_LAYOUT, tgid);
	event->op = change->op;
	event->detail = change->detail;
	event->start = change->start;
	event->length = change->length;
	event->old_start = change->old_start;
	event->old_length = change->old_length;
	event->map_flags = change->map_flags;
	event->file_offset = change->file_offset;
	event->fd = change->fd;
	event->syscall_nr = change->syscall_nr;
	submit_event(event);
}

static __always_inline bool is_error(long ret)
{
	return ret < 0 && ret >= -4095;
}

static __always_inline void decode_layout(const struct inflight_syscall *call, long ret)
{
	struct layout_change change = { .fd = -1, .syscall_nr = call->nr };
	__u64 before, after;

	if (is_error(ret))
		return;
	switch (call->nr) {
	case __NR_mmap:
		change.op = CRINC_LAYOUT_MMAP;
		change.start = ret;
		change.length = call->args[1];
		change.detail = call->args[2];
		change.map_flags = call->args[3];
		if (!(call->args[3] & MAP_ANONYMOUS)) {
			change.fd = call->args[4];
			change.file_offset = call->args[5];
		}
		break;
	case __NR_munmap:
		change.op = CRINC_LAYOUT_MUNMAP;
		change.start = call->args[0];
		change.length = call->args[1];
		break;
	case __NR_mremap:
		change.op = CRINC_LAYOUT_MREMAP;
		change.start = ret;
		change.length = call->args[2];
		change.old_start = call->args[0];
		change.old_length = call->args[1];
		change.map_flags = call->args[3];
		break;
	case __NR_brk:
		/* brk returns the break it left in place, also when it refused to move it. */
		before = call->break_before;
		after = ret;
		if (before == after)
			return;
		change.op = CRINC_LAYOUT_BRK;
		change.start = before < after ? before : after;
		change.length = before < after ? after - before : before - after;
		change.detail = before < after ? CRINC_BRK_GREW : CRINC_BRK_SHRANK;
		break;
	case __NR_madvise:
		change.op = CRINC_LAYOUT_MADVISE;
		change.start = call->args[0];
		change.length = call->args[1];
		change.detail = call->args[2];
		break;
	case __NR_mprotect:
	case __NR_pkey_mprotect:
		change.op = CRINC_LAYOUT_MPROTECT;
		change.start = call->args[0];
		change.length = call->args[1];
		change.detail = call->args[2];
		break;
	case __NR_shmat:
		change.op = CRINC_LAYOUT_SHMAT;
		change.start = ret;
		change.detail = call->args[2];
		break;
	case __NR_shmdt:
		change.op = CRINC_LAYOUT_SHMDT;
		change.start = call->args[0];
		break;
	case __NR_remap_file_pages:
		change.op = CRINC_LAYOUT_REMAP_FILE_PAGES;
		change.start = call->args[0];
		change.length = call->args[1];
		break;
	default:
		return;
	}
	emit_layout(&change);
}

/* ---- syscalls: descriptors -------------------------------------------------------- */

struct fd_change {
	__u32 op;
	__u32 syscall_nr;
	__s32 fd;
	__s32 other_fd;
	__u32 open_flags;
	__u32 flags;
	__u64 user_path; /* address of a NUL-terminated path argument, or 0 */
};

static __noinline void emit_fd(const struct fd_change *change)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct crinc_fd_event *event;
	struct file *file = NULL;
	__u32 flags = change->flags;
	long copied;

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_loss(CRINC_LOST_FD_EVENTS);
		return;
	}
	fill_header(&event->header, CRINC_EVENT_FD, tgid);
	event->op = change->op;
	event->syscall_nr = change->syscall_nr;
	event->fd = change->fd;
	event->other_fd = change->other_fd;
	event->open_flags = change->open_flags;
	event->file_mode = 0;
	event->file_dev = 0;
	event->file_ino = 0;
	event->path[0] = '\0';
	if (change->op != CRINC_FD_CLOSED && change->op != CRINC_FD_RANGE_CLOSED &&
	    change->op != CRINC_FD_TABLE_UNKNOWN) {
		file = file_of_fd(change->fd);
		if (file) {
			event->file_mode = BPF_CORE_READ(file, f_inode, i_mode);
			event->file_dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
			event->file_ino = BPF_CORE_READ(file, f_inode, i_ino);
		} else {
			flags |= CRINC_FD_FILE_UNKNOWN;
		}
	}
	if (change->user_path) {
		copied = bpf_probe_read_user_str(event->path, sizeof(event->path),
						 (const void *)change->user_path);
		if (copied < 0) {
			event->path[0] = '\0';
			flags |= CRINC_FD_PATH_UNREADABLE;
		} else if (copied == sizeof(event->path)) {
			flags |= CRINC_FD_PATH_TRUNCATED;
		}
	}
	event->flags = flags;
	submit_event(event);
}

static __always_inline void emit_fd_table_unknown(__u32 syscall_nr)
{
	struct fd_change change = {
		.op = CRINC_FD_TABLE_UNKNOWN, .syscall_nr = syscall_nr, .fd = -1, .other_fd = -1,
	};

	emit_fd(&change);
}

/* recvmsg(2): the descriptors of SCM_RIGHTS messages in the control data the kernel
 * wrote back (msg_controllen is updated to the length it used). */
static __always_inline void decode_received_fds(const struct inflight_syscall *call)
{
	const char *msghdr = (const char *)call->args[1];
	struct fd_change change = { .op = CRINC_FD_RECEIVED, .syscall_nr = call->nr, .other_fd = -1 };
	struct { __u64 len; __s32 level; __s32 type; } cmsg;
	__u64 control, control_length, position = 0;
	__u64 fd_count;
	__s32 fd;

	if (bpf_probe_read_user(&control, sizeof(control), msghdr + MSGHDR_CONTROL_OFFSET) ||
	    bpf_probe_read_user(&control_length, sizeof(control_length),
				msghdr + MSGHDR_CONTROLLEN_OFFSET)) {
		emit_fd_table_unknown(call->nr);
		return;
	}
	for (int i = 0; i < CRINC_CMSG_SCAN_MAX; i++) {
		if (position + CMSGHDR_SIZE > control_length)
			return;
		if (bpf_probe_read_user(&cmsg, sizeof(cmsg), (const void *)(control + position))) {
			emit_fd_table_unknown(call->nr);
			return;
		}
		if (cmsg.len < CMSGHDR_SIZE || position + cmsg.len > control_length)
			return;
		if (cmsg.level == SOL_SOCKET && cmsg.type == SCM_RIGHTS) {
			fd_count = (cmsg.len - CMSGHDR_SIZE) / sizeof(__s32);
			for (int j = 0; j < CRINC_RECEIVED_FDS_MAX; j++) {
				if (j >= fd_count)
					break;
				if (bpf_probe_read_user(&fd, sizeof(fd),
							(const void *)(control + position +
								       CMSGHDR_SIZE + j * sizeof(__s32)))) {
					emit_fd_table_unknown(call->nr);
					return;
				}
				change.fd = fd;
				emit_fd(&change);
			}
			if (fd_count > CRINC_RECEIVED_FDS_MAX)
				emit_fd_table_unknown(call->nr);
		}
		position += (cmsg.len + 7) & ~7ULL; /* CMSG_ALIGN */
	}
	if (position + CMSGHDR_SIZE <= control_length)
		emit_fd_table_unknown(call->nr);
}

/* recvmmsg(2): not decoded; said so when any received message carried control data. */
static __always_inline void check_recvmmsg(const struct inflight_syscall *call, long count)
{
	const char *messages = (const char *)call->args[1];
	__u64 control_length;

	if (count > CRINC_RECVMMSG_SCAN_MAX) {
		emit_fd_table_unknown(call->nr);
		return;
	}
	for (int i = 0; i < CRINC_RECVMMSG_SCAN_MAX; i++) {
		if (i >= count)
			return;
		if (bpf_probe_read_user(&control_length, sizeof(control_length),
					messages + i * MMSGHDR_SIZE + MSGHDR_CONTROLLEN_OFFSET) ||
		    control_length >= CMSGHDR_SIZE) {
			emit_fd_table_unknown(call->nr);
			return;
		}
	}
}

/* pipe(2), pipe2(2), socketpair(2): the two new fds are in the caller's int[2]. */
static __always_inline void decode_fd_pair(const struct inflight_syscall *call,
					   const void *pair, __u32 open_flags)
{
	struct fd_change change = {
		.op = CRINC_FD_OPENED_PAIR, .syscall_nr = call->nr, .open_flags = open_flags,
	};
	__s32 fds[2];

	if (bpf_probe_read_user(fds, sizeof(fds), pair)) {
		change.fd = -1;
		change.other_fd = -1;
		change.flags = CRINC_FD_PAIR_UNREADABLE;
	} else {
		change.fd = fds[0];
		change.other_fd = fds[1];
	}
	emit_fd(&change);
}

/* ---- syscalls: files -------------------------------------------------------------- */

struct file_change {
	__u32 op;
	__u32 syscall_nr;
	__s32 fd;
	__u32 detail;
	__s64 offset;       /* explicit offset of the call, or -1 */
	__u64 length;
	__u64 user_offset;  /* address of a loff_t the call advanced by length, or 0 */
	bool append;        /* RWF_APPEND */
};

/* Reports a change of the file behind change->fd when it is a regular file. The
 * offset, when the call did not give one: appends end at the new size, other writes
 * at the new file position. */
static __noinline void emit_file(const struct file_change *change)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct crinc_file_event *event;
	struct file *file = file_of_fd(change->fd);
	__u32 mode = 0, file_flags = 0;
	__s64 offset = change->offset;
	__u64 advanced;

	if (file) {
		mode = BPF_CORE_READ(file, f_inode, i_mode);
		if ((mode & S_IFMT) != S_IFREG)
			return;
		file_flags = BPF_CORE_READ(file, f_flags);
	}
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count_loss(CRINC_LOST_FILE_EVENTS);
		return;
	}
	fill_header(&event->header, CRINC_EVENT_FILE, tgid);
	event->op = change->op;
	event->syscall_nr = change->syscall_nr;
	event->fd = change->fd;
	event->detail = change->detail;
	event->pad = 0;
	event->length = change->length;
	if (!file) {
		/* Closed by another thread before the call returned: identity unknown. */
		event->file_dev = 0;
		event->file_ino = 0;
		event->offset = -1;
		submit_event(event);
		return;
	}
	event->file_dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	event->file_ino = BPF_CORE_READ(file, f_inode, i_ino);
	if (change->op == CRINC_FILE_WRITE || change->op == CRINC_FILE_COPY_IN) {
		if ((file_flags & O_APPEND) || change->append) {
			offset = BPF_CORE_READ(file, f_inode, i_size) - change->length;
		} else if (change->user_offset) {
			offset = -1;
			if (!bpf_probe_read_user(&advanced, sizeof(advanced),
						 (const void *)change->user_offset))
				offset = advanced - change->length;
		} else if (offset < 0) {
			offset = BPF_CORE_READ(file, f_pos) - change->length;
		}
	}
	event->offset = offset < 0 ? -1 : offset;
	submit_event(event);
}

static __always_inline void decode_file(const struct inflight_syscall *call, long ret)
{
	struct file_change change = { .syscall_nr = call->nr, .offset = -1 };

	switch (call->nr) {
	case __NR_write:
	case __NR_writev:
		change.op = CRINC_FILE_WRITE;
		change.fd = call->args[0];
		break;
	case __NR_pwrite64:
	case __NR_pwritev:
		change.op = CRINC_FILE_WRITE;
		change.fd = call->args[0];
		change.offset = call->args[3];
		break;
	case __NR_pwritev2:
		/* offset -1: at the file position, like writev */
		change.op = CRINC_FILE_WRITE;
		change.fd = call->args[0];
		change.offset = call->args[3];
		change.append = (call->args[5] & RWF_APPEND) != 0;
		break;
	case __NR_copy_file_range:
	case __NR_splice:
		change.op = CRINC_FILE_COPY_IN;
		change.fd = call->args[2];
		change.user_offset = call->args[3];
		break;
	case __NR_sendfile:
		change.op = CRINC_FILE_COPY_IN;
		change.fd = call->args[0];
		break;
	case __NR_ftruncate:
		change.op = CRINC_FILE_TRUNCATE;
		change.fd = call->args[0];
		change.offset = call->args[1];
		emit_file(&change);
		return;
	case __NR_fallocate:
		change.op = CRINC_FILE_FALLOCATE;
		change.fd = call->args[0];
		change.detail = call->args[1];
		change.offset = call->args[2];
		change.length = call->args[3];
		emit_file(&change);
		return;
	default:
		return;
	}
	/* Writes and copies: only those that moved bytes. */
	if (ret <= 0)
		return;
	change.length = ret;
	emit_file(&change);
}

/* ---- syscalls: descriptors (continued) ------------------------------------------ */

static __always_inline void decode_open(const struct inflight_syscall *call, long fd)
{
	struct fd_change change = { .op = CRINC_FD_OPENED, .syscall_nr = call->nr, .fd = fd,
				    .other_fd = -1 };
	struct file_change truncate = { .op = CRINC_FILE_TRUNCATE, .syscall_nr = call->nr,
					.fd = fd, .offset = 0 };
	__u64 how_flags = 0;

	switch (call->nr) {
	case __NR_open:
		change.user_path = call->args[0];
		change.open_flags = call->args[1];
		break;
	case __NR_creat:
		change.user_path = call->args[0];
		change.open_flags = O_CREAT | O_WRONLY | O_TRUNC;
		break;
	case __NR_openat:
		change.other_fd = call->args[0];
		change.user_path = call->args[1];
		change.open_flags = call->args[2];
		break;
	case __NR_openat2:
		change.other_fd = call->args[0];
		change.user_path = call->args[1];
		/* struct open_how starts with the u64 flags */
		if (!bpf_probe_read_user(&how_flags, sizeof(how_flags), (const void *)call->args[2]))
			change.open_flags = how_flags;
		break;
	default:
		return;
	}
	emit_fd(&change);
	if (change.open_flags & O_TRUNC)
		emit_file(&truncate);
}

static __always_inline void decode_fd(const struct inflight_syscall *call, long ret)
{
	struct fd_change change = {
		.op = CRINC_FD_OPENED, .syscall_nr = call->nr, .fd = ret, .other_fd = -1,
	};

	if (ret < 0)
		return;
	switch (call->nr) {
	case __NR_open:
	case __NR_creat:
	case __NR_openat:
	case __NR_openat2:
		decode_open(call, ret);
		return;
	case __NR_close:
		change.op = CRINC_FD_CLOSED;
		change.fd = call->args[0];
		break;
	case __NR_close_range:
		change.op = CRINC_FD_RANGE_CLOSED;
		change.fd = call->args[0] > INT32_MAX ? INT32_MAX : call->args[0];
		change.other_fd = call->args[1] > INT32_MAX ? INT32_MAX : call->args[1];
		change.open_flags = call->args[2];
		break;
	case __NR_dup:
	case __NR_dup2:
	case __NR_dup3:
	case __NR_fcntl: /* F_DUPFD, F_DUPFD_CLOEXEC only (filtered at entry) */
		change.op = CRINC_FD_DUPLICATED;
		change.other_fd = call->args[0];
		if (call->nr == __NR_dup3)
			change.open_flags = call->args[2];
		break;
	case __NR_socket:
		change.open_flags = call->args[1];
		break;
	case __NR_accept:
	case __NR_accept4:
		change.other_fd = call->args[0];
		break;
	case __NR_pipe:
		decode_fd_pair(call, (const void *)call->args[0], 0);
		return;
	case __NR_pipe2:
		decode_fd_pair(call, (const void *)call->args[0], call->args[1]);
		return;
	case __NR_socketpair:
		decode_fd_pair(call, (const void *)call->args[3], call->args[1]);
		return;
	case __NR_memfd_create:
		change.user_path = call->args[0];
		change.open_flags = call->args[1];
		break;
	case __NR_pidfd_getfd:
		change.other_fd = call->args[1]; /* the fd number in the other process */
		break;
	case __NR_recvmsg:
		decode_received_fds(call);
		return;
	case __NR_recvmmsg:
		check_recvmmsg(call, ret);
		return;
	case __NR_eventfd: case __NR_eventfd2: case __NR_signalfd: case __NR_signalfd4:
	case __NR_timerfd_create: case __NR_epoll_create: case __NR_epoll_create1:
	case __NR_inotify_init: case __NR_inotify_init1: case __NR_fanotify_init:
	case __NR_memfd_secret: case __NR_userfaultfd: case __NR_pidfd_open:
	case __NR_io_uring_setup: case __NR_perf_event_open: case __NR_open_by_handle_at:
	case __NR_open_tree: case __NR_fsopen: case __NR_fsmount: case __NR_fspick:
	case __NR_landlock_create_ruleset:
		break;
	default:
		return;
	}
	emit_fd(&change);
}

/* ---- syscalls: exit --------------------------------------------------------------- */

static __always_inline void decode_opaque(const struct inflight_syscall *call, long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (ret < 0)
		return;
	switch (call->nr) {
	case __NR_io_uring_enter:
		count_opaque_syscall(tgid, CRINC_OPAQUE_IO_URING_ENTER);
		break;
	case __NR_io_submit:
		if (ret > 0)
			count_opaque_syscall(tgid, CRINC_OPAQUE_AIO_SUBMIT);
		break;
	case __NR_process_vm_writev:
		if (ret > 0)
			count_opaque_syscall(tgid, CRINC_OPAQUE_PROCESS_VM_WRITEV);
		break;
	case __NR_ptrace: /* POKETEXT, POKEDATA only (filtered at entry) */
		count_opaque_syscall(tgid, CRINC_OPAQUE_PTRACE_POKE);
		break;
	}
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct inflight_syscall *inflight;
	struct inflight_syscall call;

	if (!is_decoded_syscall(nr))
		return 0;
	inflight = bpf_map_lookup_elem(&inflight_syscalls, &tid);
	if (!inflight)
		return 0;
	call = *inflight;
	bpf_map_delete_elem(&inflight_syscalls, &tid);
	/* An entry of another syscall is stale (its exit was never seen): not ours. */
	if (call.nr != nr)
		return 0;

	switch (nr) {
	case __NR_mmap: case __NR_munmap: case __NR_mremap: case __NR_brk:
	case __NR_madvise: case __NR_mprotect: case __NR_pkey_mprotect:
	case __NR_shmat: case __NR_shmdt: case __NR_remap_file_pages:
		decode_layout(&call, ret);
		break;
	case __NR_write: case __NR_pwrite64: case __NR_writev: case __NR_pwritev:
	case __NR_pwritev2: case __NR_copy_file_range: case __NR_sendfile:
	case __NR_splice: case __NR_ftruncate: case __NR_fallocate:
		if (ret >= 0)
			decode_file(&call, ret);
		break;
	case __NR_io_uring_enter: case __NR_io_submit: case __NR_process_vm_writev:
	case __NR_ptrace:
		decode_opaque(&call, ret);
		break;
	default:
		if (!traced_by_crinc())
			decode_fd(&call, ret);
		break;
	}
	return 0;
}
