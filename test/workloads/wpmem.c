/*
 * A workload for the write-protection tracking tests: it changes its memory exactly when
 * told to, so a test can compare what the tracker reports with what really changed.
 *
 * It reads one command per line on stdin and answers one line on stdout: "ok [values]" or
 * "err message". Addresses are hex, counts decimal. A forked child serves the same
 * commands on two FIFOs. On end of input it waits for a signal (a restored copy must not
 * exit just because its old stdin is gone).
 *
 *   alloc P                  mmap P anonymous private pages          -> ok ADDR
 *   allocthp P               same, 2 MiB aligned, MADV_HUGEPAGE       -> ok ADDR
 *   allocaligned P           same, 2 MiB aligned, MADV_NOHUGEPAGE     -> ok ADDR
 *   mapfile PATH P           mmap P pages of a file, private, rw      -> ok ADDR
 *   fill ADDR P SEED         write every word of P pages             -> ok
 *   poke ADDR SEED I,J,...   write one word in page I, J... of ADDR  -> ok
 *   pokerand ADDR P N SEED   write one word in N random pages of P   -> ok
 *   threads ADDR P T N SEED  T threads, each pokes N random pages    -> ok
 *   read ADDR P              read one word of each page              -> ok SUM
 *   readpoke ADDR SEED I,... read each listed page, then write it    -> ok SUM
 *   munmap ADDR P | mmapfixed ADDR P | mprotect ADDR P rw|r|none
 *   mremap ADDR P NEWP move|grow|fixed:ADDR                         -> ok NEWADDR
 *   madvise ADDR P dontneed|free|populatewrite
 *   sbrk DELTA_PAGES                                                -> ok OLDBRK NEWBRK
 *   pipe ADDR BYTES SEED     fill ADDR by read() from a pipe (kernel writes user memory)
 *   fork CMDFIFO REPLYFIFO   child serves commands on the FIFOs     -> ok CHILDPID
 *   timewrite ADDR P         write a byte in each page, timed       -> ok NANOSECONDS
 *   sleep MS | spin MS       nanosleep / busy-loop, then answer
 *   seccomp                  install an allow-everything seccomp filter
 *   tls                      where the kernel writes on every resume -> ok RSEQ_ADDR ERRNO_ADDR
 *   random                   getrandom() (glibc may map vDSO state with MAP_DROPPABLE)
 *   exec                     answer, then execve itself (a new address space)
 *   exit
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/rseq.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define HUGE (2u << 20)
#define LINE_MAX_BYTES (1 << 20)
/* The largest chunk moved through the pipe at once: below the default pipe capacity. */
#define PIPE_CHUNK 16384

static int in_fd = 0, out_fd = 1;

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    buf[n++] = '\n';
    /* one write per line: lines of parent and child never interleave */
    if (write(out_fd, buf, n) != n) _exit(3);
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27; x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* A value that differs for every (page address, seed, word): a write always changes the page. */
static void poke_page(char *page, uint64_t seed) {
    uint64_t *w = (uint64_t *)page;
    uint64_t v = mix((uint64_t)(uintptr_t)page ^ mix(seed));
    w[v % (PAGE / 8)] += v | 1;
}

struct thread_job { char *base; long pages, count; uint64_t seed; };

static void *thread_main(void *arg) {
    struct thread_job *j = arg;
    uint64_t s = j->seed;
    for (long i = 0; i < j->count; i++) {
        s = mix(s + i);
        poke_page(j->base + (s % j->pages) * PAGE, s);
    }
    return NULL;
}

static char *next_line(void) {
    static char buf[LINE_MAX_BYTES];
    static size_t have = 0, start = 0;
    for (;;) {
        char *nl = memchr(buf + start, '\n', have - start);
        if (nl) {
            *nl = 0;
            char *line = buf + start;
            start = nl - buf + 1;
            return line;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
        start = 0;
        if (have == sizeof buf) return NULL;
        ssize_t n = read(in_fd, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return NULL;
        have += n;
    }
}

static void serve(void);

static void command(char *line) {
    char op[32] = {0};
    unsigned long a = 0, p = 0, n = 0, t = 0, seed = 0;
    char word[4096] = {0};
    if (sscanf(line, "%31s", op) != 1) { reply("err empty"); return; }

    if (!strcmp(op, "alloc") || !strcmp(op, "allocthp") || !strcmp(op, "allocaligned")) {
        int aligned_kind = !strcmp(op, "allocthp") ? MADV_HUGEPAGE : !strcmp(op, "allocaligned") ? MADV_NOHUGEPAGE : 0;
        int thp = aligned_kind != 0;
        sscanf(line, "%*s %lu", &p);
        size_t len = p * PAGE, extra = thp ? HUGE : 0;
        char *m = mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) { reply("err mmap %s", strerror(errno)); return; }
        if (thp) {
            char *aligned = (char *)(((uintptr_t)m + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
            if (aligned > m) munmap(m, aligned - m);
            munmap(aligned + len, (m + len + extra) - (aligned + len));
            m = aligned;
            if (madvise(m, len, aligned_kind)) { reply("err madvise %s", strerror(errno)); return; }
        }
        reply("ok %lx", (unsigned long)m);
    } else if (!strcmp(op, "mapfile")) {
        char path[2048];
        sscanf(line, "%*s %2047s %lu", path, &p);
        int fd = open(path, O_RDONLY);
        if (fd < 0) { reply("err open %s", strerror(errno)); return; }
        char *m = mmap(NULL, p * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        close(fd);
        if (m == MAP_FAILED) { reply("err mmap %s", strerror(errno)); return; }
        reply("ok %lx", (unsigned long)m);
    } else if (!strcmp(op, "sleep") || !strcmp(op, "spin")) {
        sscanf(line, "%*s %lu", &n);
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (!strcmp(op, "sleep")) {
            /* one nanosleep: if interrupted it must be restarted by the kernel, not by us */
            struct timespec d = { (time_t)(n / 1000), (long)(n % 1000) * 1000000 };
            if (nanosleep(&d, NULL)) { reply("err nanosleep %s", strerror(errno)); return; }
        } else {
            do clock_gettime(CLOCK_MONOTONIC, &now);
            while ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 < (long)n);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        reply("ok %ld", (long)((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000));
    } else if (!strcmp(op, "random")) {
        unsigned char b[16];
        if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) { reply("err getrandom %s", strerror(errno)); return; }
        reply("ok %u", b[0]);
    } else if (!strcmp(op, "tls")) {
        /* glibc registers this thread's struct rseq in its TLS block; the kernel updates it */
        reply("ok %lx %lx", (unsigned long)((char *)__builtin_thread_pointer() + __rseq_offset), (unsigned long)&errno);
    } else if (!strcmp(op, "seccomp")) {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = { 1, &allow };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
            reply("err seccomp %s", strerror(errno));
            return;
        }
        reply("ok");
    } else if (!strcmp(op, "fill")) {
        sscanf(line, "%*s %lx %lu %lu", &a, &p, &seed);
        for (unsigned long i = 0; i < p; i++) {
            uint64_t *w = (uint64_t *)(a + i * PAGE);
            for (int k = 0; k < PAGE / 8; k++) w[k] = mix(seed ^ mix(a + i * PAGE + k));
        }
        reply("ok");
    } else if (!strcmp(op, "poke") || !strcmp(op, "readpoke")) {
        int readfirst = !strcmp(op, "readpoke");
        char *list = NULL;
        int off = 0;
        sscanf(line, "%*s %lx %lu %n", &a, &seed, &off);
        list = line + off;
        uint64_t sum = 0;
        while (*list) {
            char *end;
            unsigned long i = strtoul(list, &end, 10);
            if (end == list) break;
            char *pg = (char *)(a + i * PAGE);
            if (readfirst) sum += *(volatile uint64_t *)pg;
            poke_page(pg, seed + i);
            list = *end == ',' ? end + 1 : end;
        }
        reply("ok %lu", (unsigned long)sum);
    } else if (!strcmp(op, "pokerand")) {
        sscanf(line, "%*s %lx %lu %lu %lu", &a, &p, &n, &seed);
        struct thread_job j = { (char *)a, (long)p, (long)n, seed };
        thread_main(&j);
        reply("ok");
    } else if (!strcmp(op, "threads")) {
        sscanf(line, "%*s %lx %lu %lu %lu %lu", &a, &p, &t, &n, &seed);
        pthread_t th[64];
        struct thread_job jobs[64];
        if (t > 64) t = 64;
        for (unsigned long i = 0; i < t; i++) {
            jobs[i] = (struct thread_job){ (char *)a, (long)p, (long)n, seed * 131 + i };
            pthread_create(&th[i], NULL, thread_main, &jobs[i]);
        }
        for (unsigned long i = 0; i < t; i++) pthread_join(th[i], NULL);
        reply("ok");
    } else if (!strcmp(op, "read")) {
        sscanf(line, "%*s %lx %lu", &a, &p);
        uint64_t sum = 0;
        for (unsigned long i = 0; i < p; i++) sum += *(volatile uint64_t *)(a + i * PAGE);
        reply("ok %lu", (unsigned long)sum);
    } else if (!strcmp(op, "munmap")) {
        sscanf(line, "%*s %lx %lu", &a, &p);
        if (munmap((void *)a, p * PAGE)) { reply("err munmap %s", strerror(errno)); return; }
        reply("ok");
    } else if (!strcmp(op, "mmapfixed")) {
        sscanf(line, "%*s %lx %lu", &a, &p);
        void *m = mmap((void *)a, p * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (m == MAP_FAILED) { reply("err mmap %s", strerror(errno)); return; }
        reply("ok");
    } else if (!strcmp(op, "mprotect")) {
        sscanf(line, "%*s %lx %lu %4095s", &a, &p, word);
        int prot = !strcmp(word, "rw") ? PROT_READ | PROT_WRITE : !strcmp(word, "r") ? PROT_READ : PROT_NONE;
        if (mprotect((void *)a, p * PAGE, prot)) { reply("err mprotect %s", strerror(errno)); return; }
        reply("ok");
    } else if (!strcmp(op, "mremap")) {
        sscanf(line, "%*s %lx %lu %lu %4095s", &a, &p, &n, word);
        void *m;
        if (!strncmp(word, "fixed:", 6)) {
            unsigned long to = strtoul(word + 6, NULL, 16);
            m = mremap((void *)a, p * PAGE, n * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)to);
        } else if (!strcmp(word, "grow")) {
            m = mremap((void *)a, p * PAGE, n * PAGE, 0);
        } else {
            m = mremap((void *)a, p * PAGE, n * PAGE, MREMAP_MAYMOVE);
        }
        if (m == MAP_FAILED) { reply("err mremap %s", strerror(errno)); return; }
        reply("ok %lx", (unsigned long)m);
    } else if (!strcmp(op, "madvise")) {
        sscanf(line, "%*s %lx %lu %4095s", &a, &p, word);
        int advice = !strcmp(word, "dontneed") ? MADV_DONTNEED : !strcmp(word, "free") ? MADV_FREE : MADV_POPULATE_WRITE;
        if (madvise((void *)a, p * PAGE, advice)) { reply("err madvise %s", strerror(errno)); return; }
        reply("ok");
    } else if (!strcmp(op, "sbrk")) {
        long delta = 0;
        sscanf(line, "%*s %ld", &delta);
        void *old = sbrk(0);
        if (sbrk(delta * PAGE) == (void *)-1) { reply("err sbrk %s", strerror(errno)); return; }
        reply("ok %lx %lx", (unsigned long)old, (unsigned long)sbrk(0));
    } else if (!strcmp(op, "pipe")) {
        sscanf(line, "%*s %lx %lu %lu", &a, &n, &seed);
        int fds[2];
        if (pipe(fds)) { reply("err pipe %s", strerror(errno)); return; }
        static char chunk[PIPE_CHUNK];
        for (unsigned long done = 0; done < n;) {
            size_t len = n - done < PIPE_CHUNK ? n - done : PIPE_CHUNK;
            for (size_t k = 0; k < len; k++) chunk[k] = (char)mix(seed + done + k);
            if (write(fds[1], chunk, len) != (ssize_t)len) { reply("err pipe write"); return; }
            /* the kernel copies from the pipe straight into the (write-protected) target pages */
            if (read(fds[0], (char *)a + done, len) != (ssize_t)len) { reply("err pipe read"); return; }
            done += len;
        }
        close(fds[0]);
        close(fds[1]);
        reply("ok");
    } else if (!strcmp(op, "fork")) {
        char cmd_fifo[2048], reply_fifo[2048];
        sscanf(line, "%*s %2047s %2047s", cmd_fifo, reply_fifo);
        pid_t child = fork();
        if (child < 0) { reply("err fork %s", strerror(errno)); return; }
        if (child == 0) {
            in_fd = open(cmd_fifo, O_RDONLY);
            out_fd = open(reply_fifo, O_WRONLY);
            if (in_fd < 0 || out_fd < 0) _exit(4);
            serve();
            _exit(0);
        }
        reply("ok %d", child);
    } else if (!strcmp(op, "timewrite")) {
        sscanf(line, "%*s %lx %lu", &a, &p);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (unsigned long i = 0; i < p; i++) ((volatile char *)a)[i * PAGE] += 1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        reply("ok %lld", (long long)(t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec));
    } else if (!strcmp(op, "exec")) {
        reply("ok");
        execl("/proc/self/exe", "wpmem", (char *)NULL);
        reply("err exec %s", strerror(errno));
    } else if (!strcmp(op, "exit")) {
        reply("ok");
        _exit(0);
    } else {
        reply("err unknown command %s", op);
    }
}

static void serve(void) {
    char *line;
    while ((line = next_line()) != NULL) command(line);
}

int main(void) {
    /* descriptors inherited from whoever started us would only get in CRIU's way */
    closefrom(3);
    signal(SIGPIPE, SIG_IGN);
    /* reap forked children so they never linger as zombies */
    signal(SIGCHLD, SIG_IGN);
    serve();
    /* end of input: stay alive (a restored copy has lost its stdin) until killed */
    for (;;) pause();
}
