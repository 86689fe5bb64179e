/*
 * The dirty-tracking benchmark's workload (bench/dirty.ts): a region of pseudo-random
 * pages, and on each SIGUSR2 one "tick" that rewrites N whole pages with new
 * pseudo-random content and says how long that took, so the benchmark sees the
 * workload's own slowdown under write protection.
 *
 *   dirtier --region-mib M --ctl FILE
 *
 * At start it fills every page (no zero pages: every page is data) and prints
 * "ready pid P pages N". On SIGUSR2 it reads the page count N from FILE (one decimal
 * number; the file is opened only for that read, so it is never open during a dump),
 * rewrites N consecutive pages from a cursor that goes on where the previous tick
 * stopped (wrapping around the region), and prints
 * "tick K pages N ns T" (T: CLOCK_MONOTONIC time of the write loop alone).
 * Between ticks it sleeps in pause(), so nothing else writes its memory.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static volatile sig_atomic_t tick_requested;
static void on_usr2(int s) { (void)s; tick_requested = 1; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64: cheap and incompressible; seeded per (page, tick) so every write is new content. */
static void fill(uint64_t *p, uint64_t page, uint64_t tick) {
    uint64_t x = (page + 1) * 0x9E3779B97F4A7C15ull ^ (tick + 1) * 0xBF58476D1CE4E5B9ull;
    if (!x) x = 1;
    for (int k = 0; k < WORDS; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[k] = x;
    }
}

static long read_count(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

int main(int argc, char **argv) {
    uint64_t region_mib = 64;
    const char *ctl = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--region-mib") && i + 1 < argc) region_mib = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--ctl") && i + 1 < argc) ctl = argv[++i];
        else { dprintf(2, "usage: dirtier --region-mib M --ctl FILE\n"); return 2; }
    }
    if (!ctl || region_mib == 0) { dprintf(2, "usage: dirtier --region-mib M --ctl FILE\n"); return 2; }
    uint64_t pages = region_mib * 1024 * 1024 / PAGE;
    /* MAP_POPULATE: one kernel pass allocates the region instead of a fault per page. */
    uint64_t *region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (region == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(region, pages * PAGE, MADV_NOHUGEPAGE); /* 4 KiB pages, as write protection tracks them */
    for (uint64_t p = 0; p < pages; p++) fill(region + p * WORDS, p, 0);

    signal(SIGUSR2, on_usr2);
    dprintf(1, "ready pid %d pages %lu\n", getpid(), (unsigned long)pages);

    uint64_t tick = 0, cursor = 0;
    for (;;) {
        if (!tick_requested) { pause(); continue; }
        tick_requested = 0;
        long n = read_count(ctl);
        if (n < 0 || (uint64_t)n > pages) { dprintf(1, "tick error: bad page count in %s\n", ctl); continue; }
        tick++;
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) {
            fill(region + cursor * WORDS, cursor, tick);
            if (++cursor == pages) cursor = 0;
        }
        uint64_t t1 = now_ns();
        dprintf(1, "tick %lu pages %ld ns %lu\n", (unsigned long)tick, n, (unsigned long)(t1 - t0));
    }
}
