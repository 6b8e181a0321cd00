/* bench.h — what bench.c and rates.c share: the counting allocator, the
 * medians and extremes of the timings, the reference rates (rates.c: SGEMM,
 * copy/triad bandwidth, the optimizer's throughput) and --lib-threads. */
#ifndef REGOPT_BENCH_H
#define REGOPT_BENCH_H

#include <regopt.h>

#include <stdlib.h>
#include <string.h>

/* ---- counting allocator ------------------------------------------------ */

/* Counts calls and the bytes alive: each block carries its size in a
 * 16-byte header (kept 16-aligned, as malloc's blocks are). */
typedef struct counter {
    long allocs, frees;
    size_t live, peak; /* bytes the library holds now, and at most */
} counter;

#define COUNT_HEADER 16

static inline void *count_alloc(size_t size, void *user)
{
    counter *c = user;
    unsigned char *p = size <= (size_t)-1 - COUNT_HEADER ? malloc(size + COUNT_HEADER) : NULL;
    if (!p)
        return NULL;
    memcpy(p, &size, sizeof size);
    c->allocs++;
    c->live += size;
    c->peak = c->live > c->peak ? c->live : c->peak;
    return p + COUNT_HEADER;
}

static inline void count_free(void *ptr, void *user)
{
    counter *c = user;
    size_t size;
    if (!ptr)
        return;
    memcpy(&size, (unsigned char *)ptr - COUNT_HEADER, sizeof size);
    c->frees++;
    c->live -= size;
    free((unsigned char *)ptr - COUNT_HEADER);
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

/* ---- the methods benchmarked (bench.c sets them up) ------------------- */

enum { M_PLAIN, M_SAM, M_ASAM, M_RDROP2, M_RDROP, M_SMART, M_SMART_SAM, M_MSAM, M_LOOKSAM,
       M_FSAM, M_VASSO, M_WSAM, M_MESA, M_EMA,
       M_FREELB, M_VAT, M_MESA_SWAP, M_COUNT };

extern const char *const method_name[M_COUNT];

/* methods.c: attach `method`'s regularizers to t, made from allocator a into
 * regs[] (at most MAX_REGS; *n_regs counts them, freed by the caller after
 * the trainer); on failure *why says why. */
#define MAX_REGS 4
regopt_status configure(regopt_trainer *t, int method, const regopt_allocator *a,
                        regopt_regularizer **regs, int *n_regs, const char **why);

/* ---- traffic.c: the traffic model, memory and cost lines ------------- */

/* RATIO kind=traffic: library_ms against the model's bytes at triad_gbs. */
void traffic_report(const char *size, int method, size_t params, size_t inputs,
                    double library_ms, double triad_gbs);
/* BENCH kind=memory: the bytes the library holds after its first steps. */
void memory_report(const char *size, int method, size_t params, size_t bytes);
/* RATIO kind=cost: a step against a plain step of the same run. */
void cost_report(const char *size, int method, double step_ms, double plain_ms);

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
