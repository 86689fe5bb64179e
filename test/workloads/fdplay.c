/*
 * A test workload for the eBPF job tracker: it does exactly one thing per command read
 * from stdin and answers with one line on stdout, so a test knows which events each
 * action must produce.
 *
 * Commands (numbers in decimal, addresses in hex with 0x):
 *   mmap N                 anonymous read-write mapping of N pages   -> ok addr=A
 *   mmap-shared F N        shared read-write mapping of N pages of fd F -> ok addr=A
 *   touch A N              write one byte into each of N pages at A  -> ok
 *   read-zero A N          read(2) N pages of /dev/zero into A (the kernel writes them)
 *   munmap A N | madvise A N (MADV_DONTNEED) | mprotect A N (PROT_READ)
 *   mremap A OLD_N NEW_N   MREMAP_MAYMOVE                            -> ok addr=A2
 *   brk DELTA_PAGES        sbrk by that many pages (may be negative) -> ok old=A new=A2
 *   open PATH              O_RDWR|O_CREAT                            -> ok fd=F
 *   open-trunc PATH        O_WRONLY|O_CREAT|O_TRUNC                  -> ok fd=F
 *   dup F | dup2 F T | fcntl-dupfd F MIN | close F | close-range F L
 *   write F LEN | pwrite F OFFSET LEN | ftruncate F LEN | punch F OFFSET LEN
 *   writes F COUNT         COUNT one-byte write(2)s to F
 *   socket | socketpair | pipe | eventfd | memfd NAME                -> ok fd=F [fd2=G]
 *   pass-fd F              send F to itself over a socketpair (SCM_RIGHTS) and receive
 *                          it; the pair is closed again -> ok fd=R (pair=S,T)
 *   fork-write N           a child maps N pages, writes them, exits  -> ok pid=P addr=A
 *   fork-exec PATH         a child execs PATH and is waited for      -> ok pid=P
 *   fork-pause             a child that waits for a signal            -> ok pid=P
 *   kill P                 SIGTERM to P, then wait for it
 *   exit
 * The protocol uses read/write on static buffers only: no stdio, so no allocation
 * (and no brk or mmap) happens besides what a command asks for.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define LINE_MAX_BYTES 4096
#define WRITE_CHUNK_BYTES 65536

static char line[LINE_MAX_BYTES];
static char reply[LINE_MAX_BYTES];
static char payload[WRITE_CHUNK_BYTES];

static void say(const char *text)
{
	size_t length = strlen(text), done = 0;
	while (done < length) {
		ssize_t n = write(1, text + done, length - done);
		if (n < 0) {
			if (errno == EINTR) continue;
			_exit(3);
		}
		done += (size_t)n;
	}
}

static void fail(const char *what)
{
	snprintf(reply, sizeof(reply), "err %s: %s\n", what, strerror(errno));
	say(reply);
}

/* One line from stdin without stdio; 0 at end of input. */
static int read_line(void)
{
	size_t used = 0;
	while (used + 1 < sizeof(line)) {
		ssize_t n = read(0, line + used, 1);
		if (n < 0 && errno == EINTR) continue;
		if (n <= 0) return 0;
		if (line[used] == '\n') break;
		used++;
	}
	line[used] = '\0';
	return 1;
}

static uint64_t number(char **cursor)
{
	return strtoull(strsep(cursor, " "), NULL, 0);
}

static void touch(char *address, uint64_t pages)
{
	for (uint64_t i = 0; i < pages; i++) address[i * PAGE] = (char)(i + 1);
}

static void fork_write(uint64_t pages)
{
	int report[2];
	uint64_t address = 0;
	pid_t child;

	if (pipe(report)) { fail("pipe"); return; }
	child = fork();
	if (child < 0) { fail("fork"); return; }
	if (child == 0) {
		char *region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (region == MAP_FAILED) _exit(1);
		touch(region, pages);
		address = (uint64_t)region;
		if (write(report[1], &address, sizeof(address)) != sizeof(address)) _exit(2);
		_exit(0);
	}
	close(report[1]);
	if (read(report[0], &address, sizeof(address)) != sizeof(address)) address = 0;
	close(report[0]);
	waitpid(child, NULL, 0);
	snprintf(reply, sizeof(reply), "ok pid=%d addr=0x%llx\n", child, (unsigned long long)address);
	say(reply);
}

static void fork_exec(const char *path)
{
	pid_t child = fork();
	if (child < 0) { fail("fork"); return; }
	if (child == 0) {
		execl(path, path, (char *)NULL);
		_exit(127);
	}
	waitpid(child, NULL, 0);
	snprintf(reply, sizeof(reply), "ok pid=%d\n", child);
	say(reply);
}

static void pass_fd(int fd)
{
	int pair[2], received = -1;
	char byte = 'x';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union { struct cmsghdr header; char space[CMSG_SPACE(sizeof(int))]; } control;
	struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof(control.space) };
	struct cmsghdr *cmsg;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair)) { fail("socketpair"); return; }
	memset(&control, 0, sizeof(control));
	cmsg = CMSG_FIRSTHDR(&message);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	if (sendmsg(pair[0], &message, 0) != 1) { fail("sendmsg"); return; }
	message.msg_controllen = sizeof(control.space);
	if (recvmsg(pair[1], &message, 0) != 1) { fail("recvmsg"); return; }
	cmsg = CMSG_FIRSTHDR(&message);
	if (cmsg && cmsg->cmsg_type == SCM_RIGHTS) memcpy(&received, CMSG_DATA(cmsg), sizeof(int));
	close(pair[0]);
	close(pair[1]);
	snprintf(reply, sizeof(reply), "ok fd=%d pair=%d,%d\n", received, pair[0], pair[1]);
	say(reply);
}

int main(void)
{
	memset(payload, 'w', sizeof(payload));
	say("ready\n");
	while (read_line()) {
		char *cursor = line;
		char *command = strsep(&cursor, " ");
		if (!strcmp(command, "mmap")) {
			uint64_t pages = number(&cursor);
			void *region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (region == MAP_FAILED) { fail("mmap"); continue; }
			snprintf(reply, sizeof(reply), "ok addr=%p\n", region);
		} else if (!strcmp(command, "mmap-shared")) {
			int fd = number(&cursor);
			uint64_t pages = number(&cursor);
			void *region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (region == MAP_FAILED) { fail("mmap"); continue; }
			snprintf(reply, sizeof(reply), "ok addr=%p\n", region);
		} else if (!strcmp(command, "read-zero")) {
			char *address = (char *)number(&cursor);
			size_t length = number(&cursor) * PAGE;
			int zero = open("/dev/zero", O_RDONLY);
			if (zero < 0 || read(zero, address, length) != (ssize_t)length) { fail("read /dev/zero"); continue; }
			close(zero);
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "writes")) {
			int fd = number(&cursor);
			uint64_t count = number(&cursor);
			uint64_t i;
			for (i = 0; i < count; i++) if (write(fd, payload, 1) != 1) break;
			if (i < count) { fail("write"); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "touch")) {
			char *address = (char *)number(&cursor);
			touch(address, number(&cursor));
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "munmap") || !strcmp(command, "madvise") || !strcmp(command, "mprotect")) {
			void *address = (void *)number(&cursor);
			size_t length = number(&cursor) * PAGE;
			int result = !strcmp(command, "munmap") ? munmap(address, length)
				   : !strcmp(command, "madvise") ? madvise(address, length, MADV_DONTNEED)
				   : mprotect(address, length, PROT_READ);
			if (result) { fail(command); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "mremap")) {
			void *address = (void *)number(&cursor);
			size_t old_length = number(&cursor) * PAGE;
			size_t new_length = number(&cursor) * PAGE;
			void *moved = mremap(address, old_length, new_length, MREMAP_MAYMOVE);
			if (moved == MAP_FAILED) { fail("mremap"); continue; }
			snprintf(reply, sizeof(reply), "ok addr=%p\n", moved);
		} else if (!strcmp(command, "brk")) {
			long pages = strtol(strsep(&cursor, " "), NULL, 0);
			void *old_break = sbrk(0);
			if (sbrk(pages * PAGE) == (void *)-1) { fail("sbrk"); continue; }
			snprintf(reply, sizeof(reply), "ok old=%p new=%p\n", old_break, sbrk(0));
		} else if (!strcmp(command, "open") || !strcmp(command, "open-trunc")) {
			int flags = !strcmp(command, "open") ? O_RDWR | O_CREAT : O_WRONLY | O_CREAT | O_TRUNC;
			int fd = open(cursor, flags, 0644);
			if (fd < 0) { fail("open"); continue; }
			snprintf(reply, sizeof(reply), "ok fd=%d\n", fd);
		} else if (!strcmp(command, "dup") || !strcmp(command, "dup2") || !strcmp(command, "fcntl-dupfd")) {
			int fd = number(&cursor);
			int result = !strcmp(command, "dup") ? dup(fd)
				   : !strcmp(command, "dup2") ? dup2(fd, number(&cursor))
				   : fcntl(fd, F_DUPFD_CLOEXEC, (int)number(&cursor));
			if (result < 0) { fail(command); continue; }
			snprintf(reply, sizeof(reply), "ok fd=%d\n", result);
		} else if (!strcmp(command, "close")) {
			if (close(number(&cursor))) { fail("close"); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "close-range")) {
			unsigned first = number(&cursor);
			unsigned last = number(&cursor);
			if (syscall(SYS_close_range, first, last, 0)) { fail("close_range"); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "write") || !strcmp(command, "pwrite")) {
			int fd = number(&cursor);
			off_t offset = !strcmp(command, "pwrite") ? (off_t)number(&cursor) : -1;
			size_t length = number(&cursor);
			ssize_t written = length > sizeof(payload) ? -1
					: offset < 0 ? write(fd, payload, length) : pwrite(fd, payload, length, offset);
			if (written != (ssize_t)length) { fail(command); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "ftruncate")) {
			int fd = number(&cursor);
			if (ftruncate(fd, number(&cursor))) { fail("ftruncate"); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "punch")) {
			int fd = number(&cursor);
			off_t offset = number(&cursor);
			if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, number(&cursor))) { fail("fallocate"); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "socket") || !strcmp(command, "eventfd")) {
			int fd = !strcmp(command, "socket") ? socket(AF_UNIX, SOCK_STREAM, 0) : eventfd(0, 0);
			if (fd < 0) { fail(command); continue; }
			snprintf(reply, sizeof(reply), "ok fd=%d\n", fd);
		} else if (!strcmp(command, "memfd")) {
			int fd = memfd_create(cursor, 0);
			if (fd < 0) { fail("memfd_create"); continue; }
			snprintf(reply, sizeof(reply), "ok fd=%d\n", fd);
		} else if (!strcmp(command, "socketpair") || !strcmp(command, "pipe")) {
			int fds[2];
			int result = !strcmp(command, "pipe") ? pipe(fds) : socketpair(AF_UNIX, SOCK_STREAM, 0, fds);
			if (result) { fail(command); continue; }
			snprintf(reply, sizeof(reply), "ok fd=%d fd2=%d\n", fds[0], fds[1]);
		} else if (!strcmp(command, "pass-fd")) {
			pass_fd(number(&cursor));
			continue;
		} else if (!strcmp(command, "fork-write")) {
			fork_write(number(&cursor));
			continue;
		} else if (!strcmp(command, "fork-exec")) {
			fork_exec(cursor);
			continue;
		} else if (!strcmp(command, "fork-pause")) {
			pid_t child = fork();
			if (child < 0) { fail("fork"); continue; }
			if (child == 0) {
				pause();
				_exit(0);
			}
			snprintf(reply, sizeof(reply), "ok pid=%d\n", child);
		} else if (!strcmp(command, "kill")) {
			pid_t child = number(&cursor);
			if (kill(child, SIGTERM) || waitpid(child, NULL, 0) != child) { fail("kill"); continue; }
			snprintf(reply, sizeof(reply), "ok\n");
		} else if (!strcmp(command, "exit")) {
			say("ok\n");
			return 0;
		} else {
			snprintf(reply, sizeof(reply), "err unknown command %s\n", command);
		}
		say(reply);
	}
	return 0;
}
