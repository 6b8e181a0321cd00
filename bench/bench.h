/* bench.h — what bench.c and rates.c share: the counting allocator, the
 * medians and extremes of the timings, the reference rates (rates.c: SGEMM,
 * copy/triad bandwidth, the optimizer's throughput) and --lib-threads. */
#ifndef REGOPT_BENCH_H
#define REGOPT_BENCH_H

#include <regopt.h>

#include <stdlib.h>

/* ---- counting allocator ------------------------------------------------ */

typedef struct counter {
    long allocs, frees;
} counter;

static inline void *count_alloc(size_t size, void *user)
{
    ((counter *)user)->allocs++;
    return malloc(size);
}

static inline void count_free(void *ptr, void *user)
{
    if (ptr)
        ((counter *)user)->frees++;
    free(ptr);
}

/* ---- small helpers ----------------------------------------------------- */

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static inline double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static inline double min_of(const double *v, size_t n)
{
    double m = v[0];
    size_t i;
    for (i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static inline double max_of(const double *v, size_t n)
{
    double m = v[0];
    size_t i;
    for (i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* ---- rates.c ----------------------------------------------------------- */

/* --lib-threads: REGOPT_TRAINER_THREADS of every trainer benchmarked. */
extern long lib_threads;

double sgemm_rate(int m, int n, int k, int reps);
int bandwidth(size_t n, int reps, int threads, double *copy_gbs, double *triad_gbs);
int optimizer_rate(regopt_optimizer_kind kind, const char *name, size_t n, int reps,
                   double triad_gbs);
/* One AdamW step over n elements in float32, bf16 and fp16 buffers (a
 * host that does nothing): the library's cost of mixed precision. */
int precision_rate(size_t n, int reps);

#endif
