/*
 * A workload for the dirty-tracking tests: one way of changing memory, one step per
 * SIGUSR2, so the tests know exactly when memory changes. SIGUSR1 prints a hash of all
 * the memory the scenario owns ("hash H step K"; with a child, the child prints its own
 * "child-hash H step K"). Output goes to stdout, one line per event.
 *
 *   scenario NAME
 *
 * NAME: writer, threads, fork-child, mmap-new, remap-same, mremap, dontneed, brk,
 *       read-then-write, pipe-read, vm-writev; and fds PATH: each step opens PATH, dups
 *       it, closes the first fd, makes a socket and a pipe, closes the pipe's read end,
 *       and prints "fds OPENED DUP SOCKET PIPE_R PIPE_W".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define REGION_PAGES 4096 /* 16 MiB */
#define SMALL_PAGES 64
#define MAX_EXTRA 256
#define THREADS 4

static volatile sig_atomic_t step_requested, hash_requested;
static void on_usr2(int s) { (void)s; step_requested = 1; }
static void on_usr1(int s) { (void)s; hash_requested = 1; }

static const char *scenario;
static const char *fds_path;
static uint8_t *region;               /* written at start, changed by most scenarios */
static uint8_t *small;                /* SMALL_PAGES, for remap-same and mremap */
static uint8_t *extra[MAX_EXTRA];     /* regions made by mmap-new */
static size_t extra_pages[MAX_EXTRA];
static int extras;
static uint8_t *brk_base;             /* brk: the break when the scenario started */
static pid_t child = -1;
static unsigned long step;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next_random(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static void write_page(uint8_t *page, uint64_t tag) {
    uint64_t *w = (uint64_t *)page;
    for (int k = 0; k < PAGE / 8; k++) w[k] = tag * 0x100000001B3ull + (uint64_t)k;
}

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001B3ull; }
    return h;
}

static uint64_t memory_hash(void) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, region, (size_t)REGION_PAGES * PAGE);
    if (small) h = fnv(h, small, (size_t)SMALL_PAGES * PAGE);
    for (int i = 0; i < extras; i++) h = fnv(h, extra[i], extra_pages[i] * PAGE);
    if (brk_base) h = fnv(h, brk_base, (size_t)((uint8_t *)sbrk(0) - brk_base));
    return h;
}

/* ---- threads: four writers woken per step ---- */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go = PTHREAD_COND_INITIALIZER, done = PTHREAD_COND_INITIALIZER;
static unsigned long thread_round, finished;

static void *writer_thread(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (thread_round == seen) pthread_cond_wait(&go, &mu);
        seen = thread_round;
        pthread_mutex_unlock(&mu);
        for (int i = 0; i < 16; i++) {
            size_t p = (size_t)((seen * 7919 + id * 104729 + (unsigned)i * 131) % REGION_PAGES);
            write_page(region + p * PAGE, seen * 1000 + id * 100 + (unsigned)i);
        }
        pthread_mutex_lock(&mu);
        finished++;
        pthread_cond_signal(&done);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void random_writes(int n) {
    for (int i = 0; i < n; i++) write_page(region + (next_random() % REGION_PAGES) * PAGE, next_random());
}

static void do_step(void) {
    step++;
    if (!strcmp(scenario, "writer")) {
        random_writes(32);
    } else if (!strcmp(scenario, "threads")) {
        pthread_mutex_lock(&mu);
        thread_round++;
        finished = 0;
        pthread_cond_broadcast(&go);
        while (finished < THREADS) pthread_cond_wait(&done, &mu);
        pthread_mutex_unlock(&mu);
    } else if (!strcmp(scenario, "fork-child")) {
        if (child < 0) {
            child = fork();
            if (child == 0) { child = -1; scenario = "writer"; rng ^= 0xABCDEF; return; } /* the child: a writer */
        } else {
            kill(child, SIGUSR2); /* the child writes too */
        }
        random_writes(8);
    } else if (!strcmp(scenario, "mmap-new")) {
        if (extras < MAX_EXTRA) {
            size_t pages = 8 + step % 8;
            uint8_t *m = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            for (size_t p = 0; p < pages; p += 2) write_page(m + p * PAGE, step * 100 + p);
            extra[extras] = m;
            extra_pages[extras++] = pages;
        }
    } else if (!strcmp(scenario, "remap-same")) {
        /* Zapped without a write fault: the unwritten half now reads as zeros. */
        munmap(small, SMALL_PAGES * PAGE);
        uint8_t *m = mmap(small, SMALL_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (m != small) abort();
        for (int p = 0; p < SMALL_PAGES; p += 2) write_page(small + p * PAGE, step * 1000 + (unsigned)p);
    } else if (!strcmp(scenario, "mremap")) {
        /* The written region moves to another address, then one page changes. */
        uint8_t *dest = mmap(NULL, SMALL_PAGES * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint8_t *m = mremap(small, SMALL_PAGES * PAGE, SMALL_PAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
        if (m == MAP_FAILED) abort();
        small = m;
        write_page(small + (step % SMALL_PAGES) * PAGE, step);
    } else if (!strcmp(scenario, "dontneed")) {
        size_t first = (size_t)(next_random() % (REGION_PAGES - 16));
        madvise(region + first * PAGE, 16 * PAGE, MADV_DONTNEED);
        volatile uint64_t sum = 0;
        for (int p = 0; p < 16; p++) sum += *(volatile uint64_t *)(region + (first + (size_t)p) * PAGE);
        (void)sum;
    } else if (!strcmp(scenario, "brk")) {
        uint8_t *top = sbrk(8 * PAGE);
        for (int p = 0; p < 8; p++) write_page(top + p * PAGE, step * 10 + (unsigned)p);
        sbrk(-4 * PAGE);
    } else if (!strcmp(scenario, "read-then-write")) {
        size_t p = (size_t)(next_random() % REGION_PAGES);
        volatile uint64_t v = *(volatile uint64_t *)(small + (step % SMALL_PAGES) * PAGE); /* a read fault first */
        (void)v;
        write_page(small + (step % SMALL_PAGES) * PAGE, step);
        write_page(region + p * PAGE, step);
    } else if (!strcmp(scenario, "pipe-read")) {
        /* The kernel writes into our pages (copy_to_user), no user-mode write. */
        int fds[2];
        if (pipe(fds)) abort();
        uint8_t buf[PAGE];
        write_page(buf, step * 31);
        size_t p = (size_t)(next_random() % REGION_PAGES);
        if (write(fds[1], buf, PAGE) != PAGE || read(fds[0], region + p * PAGE, PAGE) != PAGE) abort();
        close(fds[0]);
        close(fds[1]);
    } else if (!strcmp(scenario, "vm-writev")) {
        /* Another process writes into ours with process_vm_writev. */
        size_t p = (size_t)(next_random() % REGION_PAGES);
        pid_t parent = getpid();
        pid_t writer = fork();
        if (writer == 0) {
            uint8_t buf[PAGE];
            write_page(buf, step * 77);
            struct iovec local = { buf, PAGE }, remote = { region + p * PAGE, PAGE };
            _exit(process_vm_writev(parent, &local, 1, &remote, 1, 0) == PAGE ? 0 : 1);
        }
        int status;
        waitpid(writer, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status)) abort();
    } else if (!strcmp(scenario, "fds")) {
        int opened = open(fds_path, O_RDWR | O_CREAT, 0600);
        int dup_fd = dup(opened);
        close(opened);
        int sock = socket(AF_UNIX, SOCK_STREAM, 0);
        int p[2];
        if (opened < 0 || dup_fd < 0 || sock < 0 || pipe(p)) abort();
        close(p[0]);
        dprintf(1, "fds %d %d %d %d %d\n", opened, dup_fd, sock, p[0], p[1]);
    } else {
        abort();
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) { dprintf(2, "usage: scenario NAME [PATH]\n"); return 2; }
    scenario = argv[1];
    /* Blocked except inside the main thread's sigsuspend (threads inherit the block): no
     * signal is lost between the check and the wait, and none goes to a writer thread. */
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGUSR2);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    fds_path = argc == 3 ? argv[2] : "/dev/null";
    region = mmap(NULL, (size_t)REGION_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t p = 0; p < REGION_PAGES; p++) write_page(region + p * PAGE, p);
    if (!strcmp(scenario, "remap-same") || !strcmp(scenario, "mremap") || !strcmp(scenario, "read-then-write")) {
        small = mmap(NULL, SMALL_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (strcmp(scenario, "read-then-write"))
            for (int p = 0; p < SMALL_PAGES; p++) write_page(small + p * PAGE, 7 + (unsigned)p);
    }
    if (!strcmp(scenario, "brk")) brk_base = sbrk(0);
    if (!strcmp(scenario, "threads"))
        for (uintptr_t t = 0; t < THREADS; t++) {
            pthread_t th;
            pthread_create(&th, NULL, writer_thread, (void *)t);
        }
    dprintf(1, "ready %s pid %d\n", scenario, getpid());
    for (;;) {
        if (!step_requested && !hash_requested) sigsuspend(&waiting);
        if (step_requested) {
            step_requested = 0;
            do_step();
            dprintf(1, "%s %lu\n", strcmp(argv[1], scenario) ? "child-step" : "step", step);
        }
        if (hash_requested) {
            hash_requested = 0;
            if (child > 0) kill(child, SIGUSR1);
            dprintf(1, "%s %016llx step %lu\n", strcmp(argv[1], scenario) ? "child-hash" : "hash", (unsigned long long)memory_hash(), step);
        }
    }
}
