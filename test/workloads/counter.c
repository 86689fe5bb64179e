/*
 * A checkpointable test workload whose whole state follows from one counter.
 *
 * Each tick increments the counter, rewrites a window of pages of a memory region with
 * a pattern derived from (page, tick), logs "tick N at MS" on stdout, and, with --out,
 * appends a line to a file and rewrites that file's header in place. On SIGUSR1 it
 * checks every page of the region against the counter and logs "verify ok tick N" or
 * "verify FAIL ...": a restored process proves its memory came back intact.
 *
 *   counter [--region-mib N] [--window-pages W] [--tick-ms T] [--out FILE] [--ticks N] [--zero-every Z]
 *
 * --tick-ms 0 ticks only on SIGUSR2, so a test controls exactly what changes.
 * --ticks N ends the run after tick N: it verifies the region, logs "done tick N" and
 * exits 0 (1 when the region is wrong), so a resumed job shows it finished its work.
 * --zero-every Z makes every Z-th page (page % Z == 0) hold zeros, written like the others:
 * present pages of all zeros between pages of data.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#define HEADER_BYTES 32

static volatile sig_atomic_t verify_requested, tick_requested;
static void on_usr1(int s) { (void)s; verify_requested = 1; }
static void on_usr2(int s) { (void)s; tick_requested = 1; }

static uint64_t word_of(uint64_t page, uint64_t tick, uint64_t k) {
    /* splitmix64 of the triple: distinct per page, tick and word, never all zero in practice */
    uint64_t z = page * 0x9E3779B97F4A7C15ull ^ (tick + 1) * 0xBF58476D1CE4E5B9ull ^ k * 0x94D049BB133111EBull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t zero_every;

/* Word k of page at tick: the pattern, or 0 on the pages --zero-every keeps zero. */
static uint64_t expected(uint64_t page, uint64_t tick, uint64_t k) {
    return zero_every && page % zero_every == 0 ? 0 : word_of(page, tick, k);
}

static void fill(uint64_t *p, uint64_t page, uint64_t tick) {
    for (uint64_t k = 0; k < PAGE / 8; k++) p[k] = expected(page, tick, k);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    uint64_t region_mib = 32, window = 64, last_tick = 0;
    long tick_ms = 100;
    const char *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--region-mib") && i + 1 < argc) region_mib = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--window-pages") && i + 1 < argc) window = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--tick-ms") && i + 1 < argc) tick_ms = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
        else if (!strcmp(argv[i], "--ticks") && i + 1 < argc) last_tick = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--zero-every") && i + 1 < argc) zero_every = strtoull(argv[++i], NULL, 10);
        else { dprintf(2, "usage: counter [--region-mib N] [--window-pages W] [--tick-ms T] [--out FILE] [--ticks N] [--zero-every Z]\n"); return 2; }
    }
    uint64_t pages = region_mib * 1024 * 1024 / PAGE;
    if (window == 0 || window > pages || pages % window) { dprintf(2, "window must divide the region's %lu pages\n", (unsigned long)pages); return 2; }
    uint64_t windows = pages / window;

    uint64_t *region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) { perror("mmap"); return 1; }
    /* Tick 0 fills every page; tick t >= 1 rewrites window (t - 1) % windows. */
    for (uint64_t p = 0; p < pages; p++) fill(region + p * (PAGE / 8), p, 0);

    int out = -1;
    off_t out_end = HEADER_BYTES;
    if (out_path) {
        out = open(out_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (out < 0) { perror("open --out"); return 1; }
        char header[HEADER_BYTES + 1];
        snprintf(header, sizeof header, "%-*s", HEADER_BYTES - 1, "count=0");
        header[HEADER_BYTES - 1] = '\n';
        pwrite(out, header, HEADER_BYTES, 0);
    }

    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    /* The signals stay blocked except inside sigsuspend: a signal between checking the
     * flags and waiting cannot be lost (pause() would lose it, and a syscall restarted
     * after a ptrace interrupt makes that window real). */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGUSR2);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    dprintf(1, "start pid %d pages %lu window %lu\n", getpid(), (unsigned long)pages, (unsigned long)window);

    uint64_t tick = 0;
    for (;;) {
        int done = last_tick > 0 && tick >= last_tick;
        if (verify_requested || done) {
            verify_requested = 0;
            uint64_t bad = 0, first_bad = 0;
            for (uint64_t p = 0; p < pages; p++) {
                uint64_t w = p / window, last = 0;
                /* the last tick t in [1, tick] with (t - 1) % windows == w, else 0 */
                if (tick >= w + 1) last = w + 1 + ((tick - (w + 1)) / windows) * windows;
                uint64_t *pg = region + p * (PAGE / 8);
                for (uint64_t k = 0; k < PAGE / 8; k++)
                    if (pg[k] != expected(p, last, k)) { if (!bad++) first_bad = p; break; }
            }
            if (bad) dprintf(1, "verify FAIL tick %lu bad pages %lu first %lu\n", (unsigned long)tick, (unsigned long)bad, (unsigned long)first_bad);
            else dprintf(1, "verify ok tick %lu\n", (unsigned long)tick);
            if (done) {
                dprintf(1, "done tick %lu\n", (unsigned long)tick);
                return bad ? 1 : 0;
            }
        }
        if (tick_ms > 0) {
            struct timespec ts = { tick_ms / 1000, (tick_ms % 1000) * 1000000L };
            sigprocmask(SIG_SETMASK, &waiting, NULL);
            while (nanosleep(&ts, &ts) && errno == EINTR && !verify_requested) {}
            sigprocmask(SIG_BLOCK, &blocked, NULL);
            if (verify_requested) continue;
        } else {
            if (!tick_requested) { sigsuspend(&waiting); continue; }
            tick_requested = 0;
        }
        tick++;
        uint64_t w = (tick - 1) % windows;
        for (uint64_t p = w * window; p < (w + 1) * window; p++) fill(region + p * (PAGE / 8), p, tick);
        if (out >= 0) {
            char line[64];
            int n = snprintf(line, sizeof line, "tick %lu\n", (unsigned long)tick);
            pwrite(out, line, n, out_end);
            out_end += n;
            char header[HEADER_BYTES + 1];
            snprintf(header, sizeof header, "count=%-*lu", HEADER_BYTES - 7, (unsigned long)tick);
            header[HEADER_BYTES - 1] = '\n';
            pwrite(out, header, HEADER_BYTES, 0);
        }
        dprintf(1, "tick %lu at %lld\n", (unsigned long)tick, now_ms());
    }
}
