/* rates.c — the bench's reference rates: the SGEMM rate and the copy/triad
 * memory bandwidth the step and the optimizer are measured against, and the
 * optimizer's throughput through the public API (bench.c prints them first). */
#define _POSIX_C_SOURCE 200112L
#include "host_mlp.h"
#include "bench.h"

#include <cblas.h>
#include <regopt.h>

#include <pthread.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reference rates: SGEMM and memory bandwidth ----------------------- */

/* GFLOP/s of C = A B with m x k times k x n, the median of `reps`. */
double sgemm_rate(int m, int n, int k, int reps)
{
    float *a = calloc((size_t)m * k, sizeof(float)), *b = calloc((size_t)k * n, sizeof(float));
    float *c = calloc((size_t)m * n, sizeof(float));
    double *t = calloc((size_t)reps, sizeof(double)), rate = 0.0;
    int i;
    if (a && b && c && t) {
        for (i = 0; i < m * k; i++)
            a[i] = 0.001f * (float)(i % 97);
        for (i = 0; i < k * n; i++)
            b[i] = 0.001f * (float)(i % 89);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n,
                    0.0f, c, n); /* warm-up: threads, pages */
        for (i = 0; i < reps; i++) {
            double t0 = host_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n,
                        0.0f, c, n);
            t[i] = host_now() - t0;
        }
        rate = 2.0 * m * n * (double)k / median(t, (size_t)reps) * 1e-9;
    }
    free(a);
    free(b);
    free(c);
    free(t);
    return rate;
}

/* Blocks of 16 through block pointers, the form GCC -O2 vectorizes (its
 * cost model refuses loops of unknown length), as the library's loops. */
#define BLOCK 16

static void copy_block(float *restrict a, const float *restrict b)
{
    size_t j;
    for (j = 0; j < BLOCK; j++)
        a[j] = b[j];
}

static void triad_block(float *restrict a, const float *restrict b, const float *restrict c,
                        float s)
{
    size_t j;
    for (j = 0; j < BLOCK; j++)
        a[j] = b[j] + s * c[j];
}

/* One thread's share of a copy or triad pass. */
typedef struct stream_part {
    float *a;
    const float *b, *c; /* c NULL: copy */
    size_t n;
} stream_part;

static void *stream_run(void *arg)
{
    const stream_part *p = arg;
    size_t i;
    if (!p->c)
        for (i = 0; i + BLOCK <= p->n; i += BLOCK)
            copy_block(p->a + i, p->b + i);
    else
        for (i = 0; i + BLOCK <= p->n; i += BLOCK)
            triad_block(p->a + i, p->b + i, p->c + i, 1.5f);
    return NULL;
}

/* Seconds for one pass over n elements split over `threads` threads (the
 * calling one included), as the library splits its loops. */
static double stream_pass(float *a, const float *b, const float *c, size_t n, int threads)
{
    stream_part part[256];
    pthread_t tid[256];
    int k, started = 0;
    double t0 = host_now();
    for (k = 0; k < threads; k++) {
        size_t lo = n / BLOCK * (size_t)k / (size_t)threads * BLOCK;
        size_t hi = n / BLOCK * (size_t)(k + 1) / (size_t)threads * BLOCK;
        part[k].a = a + lo;
        part[k].b = b + lo;
        part[k].c = c ? c + lo : NULL;
        part[k].n = hi - lo;
    }
    for (k = 1; k < threads; k++)
        if (pthread_create(&tid[k], NULL, stream_run, &part[k]) == 0)
            started = k;
        else
            stream_run(&part[k]);
    stream_run(&part[0]);
    for (k = 1; k <= started; k++)
        pthread_join(tid[k], NULL);
    return host_now() - t0;
}

/* STREAM's copy (a = b, 8 bytes per element) and triad (a = b + s c, 12
 * bytes) on `threads` threads, vectorized as the library's loops are,
 * median GB/s of `reps` (n is a multiple of BLOCK). */
int bandwidth(size_t n, int reps, int threads, double *copy_gbs, double *triad_gbs)
{
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    double *tc = calloc((size_t)reps, sizeof(double)), *tt = calloc((size_t)reps, sizeof(double));
    volatile float sink;
    size_t i;
    int r, rc = -1;
    if (a && b && c && tc && tt) {
        for (i = 0; i < n; i++) {
            a[i] = 0.0f;
            b[i] = 1.0f;
            c[i] = 2.0f;
        }
        for (r = 0; r < reps; r++) {
            tc[r] = stream_pass(a, b, NULL, n, threads);
            tt[r] = stream_pass(a, b, c, n, threads);
        }
        sink = a[n / 2];
        (void)sink;
        n -= n % BLOCK;
        *copy_gbs = 8.0 * (double)n / median(tc, (size_t)reps) * 1e-9;
        *triad_gbs = 12.0 * (double)n / median(tt, (size_t)reps) * 1e-9;
        rc = 0;
    }
    free(a);
    free(b);
    free(c);
    free(tc);
    free(tt);
    return rc;
}

/* ---- optimizer throughput through the public API ----------------------- */

/* A host with one tensor of n elements and callbacks that do nothing: a
 * step is then exactly the library's own work on the parameters -- zero the
 * gradient, its norm, the fused update. */
static int noop_forward(const regopt_pass *p, void *user)
{
    (void)user;
    p->outputs[0] = 0.0f;
    return 0;
}

static int noop_backward(const regopt_pass *p, void *user)
{
    (void)p;
    (void)user;
    return 0;
}

int optimizer_rate(regopt_optimizer_kind kind, const char *name, size_t n, int reps,
                   double triad_gbs)
{
    float *w = malloc(n * sizeof *w), *g = calloc(n, sizeof *g), target = 0.0f;
    double *t = calloc((size_t)reps, sizeof(double));
    counter cnt = {0, 0, 0, 0};
    regopt_allocator a;
    regopt_model *m = NULL;
    regopt_optimizer *o = NULL;
    regopt_trainer *tr = NULL;
    regopt_status st = REGOPT_ERR_NO_MEMORY;
    regopt_batch b;
    float x = 0.0f;
    int r, rc = -1;
    /* bytes a fused implementation must move per element: the update reads
       w, g and the moments and writes w and the moments; zeroing writes g,
       the norm reads it */
    double update_bytes = kind == REGOPT_SGD ? 20.0 : 28.0, total_bytes = update_bytes + 8.0;
    a.size = sizeof a;
    a.alloc = count_alloc;
    a.free = count_free;
    a.user = &cnt;
    regopt_batch_init(&b);
    b.data = &x;
    b.rows = 1;
    b.targets = &target;
    if (w && g && t && regopt_random_normal(3, 0, w, n) == REGOPT_OK)
        m = regopt_model_create(&a, &st);
    if (m)
        st = regopt_model_add_param(m, "w", w, g, n, REGOPT_DTYPE_FLOAT32, 0);
    if (st == REGOPT_OK)
        st = regopt_model_set_output_width(m, 1);
    if (st == REGOPT_OK)
        st = regopt_model_set_callbacks(m, noop_forward, noop_backward, NULL, NULL);
    if (st == REGOPT_OK)
        o = regopt_optimizer_create(kind, &a, &st);
    if (st == REGOPT_OK && kind == REGOPT_SGD)
        st = regopt_optimizer_set_double(o, REGOPT_OPT_MOMENTUM, 0.9);
    if (st == REGOPT_OK)
        tr = regopt_trainer_create(m, o, &st);
    if (st == REGOPT_OK)
        st = regopt_trainer_set_int(tr, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE);
    if (st == REGOPT_OK)
        st = regopt_trainer_set_int(tr, REGOPT_TRAINER_THREADS, lib_threads);
    for (r = -2; r < reps && st == REGOPT_OK; r++) { /* two warm-up steps */
        double t0 = host_now();
        st = regopt_trainer_step(tr, &b, 1);
        if (r >= 0)
            t[r] = host_now() - t0;
    }
    if (st == REGOPT_OK) {
        double sec = median(t, (size_t)reps), gbs = total_bytes * (double)n / sec * 1e-9;
        printf("# optimizer %-12s n=%zu  %8.3f ms/step  %6.2f GB/s = %.2f x triad\n", name, n,
               sec * 1e3, gbs, gbs / triad_gbs);
        printf("BENCH kind=optimizer opt=%s n=%zu ms=%.4f bytes_per_element=%.0f gbs=%.3f "
               "triad_gbs=%.3f ratio_triad=%.4f\n",
               name, n, sec * 1e3, total_bytes, gbs, triad_gbs, gbs / triad_gbs);
        rc = 0;
    } else {
        fprintf(stderr, "bench: optimizer %s: %s %s\n", name, regopt_status_string(st),
                tr ? regopt_trainer_message(tr) : regopt_last_error_message());
    }
    regopt_trainer_free(tr);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    free(w);
    free(g);
    free(t);
    return rc;
}

/* The library's cost of one mixed-precision step around a host that does
 * nothing (one forward and one backward): AdamW over n elements held as
 * float32, bf16 (no scaling) or fp16 (dynamic scaling from 2^16) buffers.
 * Mixed precision adds the write of round(w) before the forward, the flush
 * of the host's gradient into the fp32 sum after the backward and, for the
 * float32 buffers with scaling, the same flush; the ratio to the plain
 * float32 step is the overhead. */
int precision_rate(size_t n, int reps)
{
    static const struct {
        const char *name;
        regopt_dtype dt;
        int scaling;
    } kinds[4] = {{"fp32", REGOPT_DTYPE_FLOAT32, REGOPT_SCALING_OFF},
                  {"fp32_scaled", REGOPT_DTYPE_FLOAT32, REGOPT_SCALING_DYNAMIC},
                  {"bf16", REGOPT_DTYPE_BFLOAT16, REGOPT_SCALING_AUTO},
                  {"fp16", REGOPT_DTYPE_FLOAT16, REGOPT_SCALING_AUTO}};
    double base = 0.0;
    int k, rc = 0;
    for (k = 0; k < 4 && rc == 0; k++) {
        size_t es = kinds[k].dt == REGOPT_DTYPE_FLOAT32 ? 4 : 2;
        float *w32 = malloc(n * sizeof *w32), target = 0.0f, x = 0.0f;
        void *w = calloc(n, es), *g = calloc(n, es);
        double *t = calloc((size_t)reps, sizeof(double));
        regopt_model *m = NULL;
        regopt_optimizer *o = NULL;
        regopt_trainer *tr = NULL;
        regopt_status st = REGOPT_ERR_NO_MEMORY;
        regopt_batch b;
        int r;
        regopt_batch_init(&b);
        b.data = &x;
        b.rows = 1;
        b.targets = &target;
        if (w32 && w && g && t && regopt_random_normal(3, 0, w32, n) == REGOPT_OK &&
            regopt_convert(w32, REGOPT_DTYPE_FLOAT32, w, kinds[k].dt, n) == REGOPT_OK)
            m = regopt_model_create(NULL, &st);
        if (m)
            st = regopt_model_add_param(m, "w", w, g, n, kinds[k].dt, 0);
        if (st == REGOPT_OK)
            st = regopt_model_set_output_width(m, 1);
        if (st == REGOPT_OK)
            st = regopt_model_set_callbacks(m, noop_forward, noop_backward, NULL, NULL);
        if (st == REGOPT_OK)
            o = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
        if (st == REGOPT_OK)
            tr = regopt_trainer_create(m, o, &st);
        if (st == REGOPT_OK)
            st = regopt_trainer_set_int(tr, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE);
        if (st == REGOPT_OK)
            st = regopt_trainer_set_int(tr, REGOPT_TRAINER_THREADS, lib_threads);
        if (st == REGOPT_OK)
            st = regopt_trainer_set_int(tr, REGOPT_TRAINER_LOSS_SCALING, kinds[k].scaling);
        for (r = -2; r < reps && st == REGOPT_OK; r++) {
            double t0 = host_now();
            st = regopt_trainer_step(tr, &b, 1);
            if (r >= 0)
                t[r] = host_now() - t0;
        }
        if (st == REGOPT_OK) {
            double ms = median(t, (size_t)reps) * 1e3;
            if (k == 0)
                base = ms;
            printf("# mixed precision %-11s n=%zu  %8.3f ms/step  %.2f x the fp32 step\n",
                   kinds[k].name, n, ms, ms / base);
            printf("BENCH kind=mixed_precision_step buffers=%s n=%zu ms=%.4f ratio_fp32=%.4f\n",
                   kinds[k].name, n, ms, ms / base);
        } else {
            fprintf(stderr, "bench: mixed precision %s: %s %s\n", kinds[k].name,
                    regopt_status_string(st),
                    tr ? regopt_trainer_message(tr) : regopt_last_error_message());
            rc = -1;
        }
        regopt_trainer_free(tr);
        regopt_optimizer_free(o);
        regopt_model_free(m);
        free(w32);
        free(w);
        free(g);
        free(t);
    }
    return rc;
}
