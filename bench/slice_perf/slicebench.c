/*
 * slicebench: a cyclictest-style timer wake-up latency loop and a fixed CPU-bound workload.
 *
 * Built statically (gcc -O2 -static) so the same binary runs inside a busybox initramfs
 * guest and directly on the host. Output is a few "SLICEBENCH key=value ..." lines.
 *
 * usage: slicebench LOOPS INTERVAL_US abs|rel WORK_REPS WORK_MITER [fifo]
 *   LOOPS        timer wake-ups measured (after 100 unmeasured warm-up wake-ups)
 *   INTERVAL_US  sleep period in microseconds (1000 = 1 ms)
 *   abs|rel      clock_nanosleep TIMER_ABSTIME on a fixed schedule, or a relative sleep
 *   WORK_REPS    repetitions of the workload, each timed
 *   WORK_MITER   millions of iterations per repetition (xorshift + a 256 KiB table)
 *   fifo         run at SCHED_FIFO priority 80 (like cyclictest -p 80), memory locked
 *
 * latency = time of wake-up - time the timer was due (abs); measured sleep - requested (rel).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define WARMUP 100
#define NSEC 1000000000LL

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * NSEC + t.tv_nsec;
}

static struct timespec to_ts(int64_t ns) {
    struct timespec t = {.tv_sec = ns / NSEC, .tv_nsec = ns % NSEC};
    return t;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(const int64_t *sorted, long n, double p) {
    long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    if (i >= n) i = n - 1;
    return (double)sorted[i] / 1000.0;
}

static uint32_t table[65536];

static uint64_t work(long iterations, uint64_t seed) {
    uint64_t x = seed | 1;
    for (long i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        table[x & 0xffff] += (uint32_t)(x >> 32);
    }
    uint64_t sum = x;
    for (int i = 0; i < 65536; i++) sum += table[i];
    return sum;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s LOOPS INTERVAL_US abs|rel WORK_REPS WORK_MITER [fifo]\n", argv[0]);
        return 2;
    }
    long loops = atol(argv[1]);
    int64_t interval = atol(argv[2]) * 1000LL;
    int absolute = strcmp(argv[3], "abs") == 0;
    int reps = atoi(argv[4]);
    long miter = atol(argv[5]);
    int fifo = argc > 6 && strcmp(argv[6], "fifo") == 0;
    const char *policy = "other";
    if (fifo) {
        struct sched_param sp = {.sched_priority = 80};
        if (sched_setscheduler(0, SCHED_FIFO, &sp) == 0) {
            policy = "fifo80";
        } else {
            policy = "other(fifo refused)";
        }
        mlockall(MCL_CURRENT | MCL_FUTURE);
    }
    int64_t *lat = calloc((size_t)loops, sizeof *lat);
    if (!lat) return 1;
    printf("SLICEBENCH start cpu=%d policy=%s loops=%ld interval_us=%lld mode=%s\n", sched_getcpu(), policy, loops,
           (long long)(interval / 1000), absolute ? "abs" : "rel");
    fflush(stdout);

    int64_t next = now_ns(), resyncs = 0;
    int64_t started = next;
    for (long i = -WARMUP; i < loops; i++) {
        int64_t late;
        if (absolute) {
            next += interval;
            struct timespec due = to_ts(next);
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL) == EINTR) {
            }
            int64_t t = now_ns();
            late = t - next;
            if (late > interval) { /* missed whole periods: restart the schedule, as cyclictest does */
                next = t;
                resyncs++;
            }
        } else {
            struct timespec d = to_ts(interval);
            int64_t t0 = now_ns();
            while (clock_nanosleep(CLOCK_MONOTONIC, 0, &d, &d) == EINTR) {
            }
            late = now_ns() - t0 - interval;
        }
        if (i >= 0) lat[i] = late;
    }
    double elapsed = (double)(now_ns() - started) / 1e9;
    qsort(lat, (size_t)loops, sizeof *lat, cmp64);
    double sum = 0;
    long over100 = 0, over1000 = 0;
    for (long i = 0; i < loops; i++) {
        sum += (double)lat[i];
        over100 += lat[i] > 100000;
        over1000 += lat[i] > 1000000;
    }
    printf("SLICEBENCH latency n=%ld min_us=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f "
           "mean_us=%.1f over100us=%ld over1ms=%ld resyncs=%lld elapsed_s=%.2f\n",
           loops, (double)lat[0] / 1000.0, pct(lat, loops, 50), pct(lat, loops, 90), pct(lat, loops, 99),
           pct(lat, loops, 99.9), (double)lat[loops - 1] / 1000.0, sum / (double)loops / 1000.0, over100, over1000,
           (long long)resyncs, elapsed);
    fflush(stdout);

    int64_t *times = calloc((size_t)reps, sizeof *times);
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        memset(table, 0, sizeof table);
        int64_t t0 = now_ns();
        check ^= work(miter * 1000000L, 0x9e3779b97f4a7c15ULL + (uint64_t)r);
        times[r] = now_ns() - t0;
    }
    qsort(times, (size_t)reps, sizeof *times, cmp64);
    printf("SLICEBENCH work reps=%d miter=%ld min_ms=%.2f median_ms=%.2f max_ms=%.2f check=%016llx\n", reps, miter,
           (double)times[0] / 1e6, (double)times[reps / 2] / 1e6, (double)times[reps - 1] / 1e6,
           (unsigned long long)check);
    printf("SLICEBENCH done\n");
    fflush(stdout);
    return 0;
}
