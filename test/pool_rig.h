/* pool_rig.h — the rig of suite pool (check_pool.c, check_pool_identical.c,
 * check_pool_lifecycle.c): the host (described in check_pool.c), its
 * models, runs with any optimizer and regularizers, snapshots of every
 * tensor and a full checkpoint, traces of the statistics, and the
 * configurations the cases train. Include it after
 * #define _POSIX_C_SOURCE 200809L, before any other header. */
#ifndef REGOPT_POOL_RIG_H
#define REGOPT_POOL_RIG_H

#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The library's split (src/model/model.h, which this public-API suite does not
 * include): chunks of PL_CHUNK elements counted from each tensor's start;
 * threads engage from PL_PAR_MIN trainable elements. */
#define PL_CHUNK 4096
#define PL_PAR_MIN 262144

#define PL_D 8      /* input width: embedding floats per row */
#define PL_K 3      /* classes; the "bias" tensor has PL_K elements */
#define PL_CELLS (PL_K * PL_D)
#define PL_ROWS 6   /* rows per micro-batch */
#define PL_MB 2     /* micro-batches per step */
#define PL_SLOTS 3  /* R-Drop's second pass and SMART's adversarial pass */
#define PL_MAXT 6   /* tensors */
#define PL_MAXSTEPS 12
#define PL_P_DROP 0.1f
#define PL_ALL (REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS)

/* ======================================================================== */
/* Models                                                                   */
/* ======================================================================== */

typedef struct pl_spec {
    const char *name;
    size_t count;
    int trainable;
    int32_t group;
} pl_spec;

/* 200000 + 4097 + 3 + 90001 = 294101 trainable elements (>= PL_PAR_MIN),
 * in 49 + 2 + 1 + 22 = 74 chunks, with a frozen tensor between them. */
static const pl_spec big_model[] = {{"big", 200000, 1, 0},
                                    {"frozen", 777, 0, 0},
                                    {"odd", 4097, 1, 1},
                                    {"bias", PL_K, 1, 2},
                                    {"mid", 90001, 1, 0}};
#define PL_BIG_T (sizeof big_model / sizeof big_model[0])
#define PL_BIG_TRAINABLE (200000 + 4097 + PL_K + 90001)

/* 9000 + 4097 + 3 = 13100 trainable elements: below PL_PAR_MIN. */
static const pl_spec small_model[] = {
    {"w1", 9000, 1, 0}, {"frozen", 100, 0, 0}, {"w2", 4097, 1, 1}, {"bias", PL_K, 1, 2}};
#define PL_SMALL_T (sizeof small_model / sizeof small_model[0])
#define PL_SMALL_TRAINABLE (9000 + 4097 + PL_K)

/* ======================================================================== */
/* The host                                                                 */
/* ======================================================================== */

/* What may call the host, for the thread check. */
enum { W_FORWARD, W_BACKWARD, W_LOSS, W_ALLREDUCE, W_WRITE, W_ALLOC, W_N };

typedef struct pl_host {
    const pl_spec *spec;
    size_t nt, bias, nan_tensor;
    float *data[PL_MAXT], *grad[PL_MAXT], *u[PL_MAXT];
    float weff[PL_SLOTS][PL_CELLS];         /* W_eff at each slot's forward */
    float x[PL_SLOTS][PL_ROWS * PL_D];      /* the inputs of each slot's forward */
    float keep[PL_SLOTS][PL_ROWS * PL_D];   /* their dropout factors */
    size_t rows[PL_SLOTS];
    /* faults: 1-based call numbers, 0 = never */
    int forwards, backwards;
    int fail_forward, fail_backward, nan_grad;
    int bad; /* malformed pass descriptors seen */
    /* thread check */
    int watch;
    pthread_t owner;
    long calls[W_N], foreign[W_N];
} pl_host;

typedef struct pl_data {
    float e[PL_ROWS * PL_D];
    int32_t y[PL_ROWS];
} pl_data;

static inline void pl_watch(pl_host *h, int what)
{
    if (!h->watch)
        return;
    h->calls[what]++;
    if (!pthread_equal(pthread_self(), h->owner))
        h->foreign[what]++;
}

/* The cell of W_eff that element e of tensor t feeds (5 is prime to 24). */
static inline size_t pl_cell0(size_t t) { return (t * 7) % PL_CELLS; }

static inline void pl_weff(const pl_host *h, float *weff)
{
    double acc[PL_CELLS];
    size_t t, e, c;
    memset(acc, 0, sizeof acc);
    for (t = 0; t < h->nt; t++) {
        const float *w = h->data[t], *u = h->u[t];
        if (t == h->bias)
            continue;
        for (e = 0, c = pl_cell0(t); e < h->spec[t].count; e++) {
            acc[c] += (double)w[e] * u[e];
            c += 5;
            if (c >= PL_CELLS)
                c -= PL_CELLS;
        }
    }
    for (c = 0; c < PL_CELLS; c++)
        weff[c] = (float)acc[c];
}

static inline int pl_forward(const regopt_pass *p, void *user)
{
    pl_host *h = user;
    const pl_data *bd = p->batch;
    const float kv = 1.0f / (1.0f - PL_P_DROP);
    float r[PL_ROWS * PL_D];
    size_t i, j, k, n = p->rows * PL_D, s;
    pl_watch(h, W_FORWARD);
    h->forwards++;
    if (h->forwards == h->fail_forward)
        return 7;
    if (p->slot < 0 || p->slot >= PL_SLOTS || p->rows == 0 || p->rows > PL_ROWS ||
        p->row_offset + p->rows > PL_ROWS || p->output_width != PL_K ||
        (p->flags & REGOPT_PASS_DOUBLED) ||
        (p->input_perturbation && (p->input_rows != p->rows || p->input_width != PL_D))) {
        h->bad++;
        return 99;
    }
    s = (size_t)p->slot;
    if ((p->flags & REGOPT_PASS_TRAIN) && regopt_random_uniform(p->seed, 0, r, n) != REGOPT_OK) {
        h->bad++;
        return 98;
    }
    for (i = 0; i < n; i++) {
        float keep = (p->flags & REGOPT_PASS_TRAIN) ? (r[i] < PL_P_DROP ? 0.0f : kv) : 1.0f;
        float e = bd->e[p->row_offset * PL_D + i] +
                  (p->input_perturbation ? p->input_perturbation[i] : 0.0f);
        h->keep[s][i] = keep;
        h->x[s][i] = e * keep;
    }
    h->rows[s] = p->rows;
    pl_weff(h, h->weff[s]);
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < PL_K; k++) {
            float z = h->data[h->bias][k];
            for (j = 0; j < PL_D; j++)
                z += h->weff[s][k * PL_D + j] * h->x[s][i * PL_D + j];
            p->outputs[i * PL_K + k] = z;
        }
    return 0;
}

static inline int pl_backward(const regopt_pass *p, void *user)
{
    pl_host *h = user;
    float G[PL_CELLS], gb[PL_K];
    const float *d = p->d_outputs, *x;
    size_t i, j, k, t, e, c, s;
    pl_watch(h, W_BACKWARD);
    h->backwards++;
    if (h->backwards == h->fail_backward)
        return 9;
    if (p->slot < 0 || p->slot >= PL_SLOTS || !d || p->rows != h->rows[p->slot] ||
        p->output_width != PL_K) {
        h->bad++;
        return 99;
    }
    s = (size_t)p->slot;
    x = h->x[s];
    memset(G, 0, sizeof G);
    memset(gb, 0, sizeof gb);
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < PL_K; k++) {
            float dk = d[i * PL_K + k];
            gb[k] += dk;
            for (j = 0; j < PL_D; j++)
                G[k * PL_D + j] += dk * x[i * PL_D + j];
        }
    if (!(p->flags & REGOPT_PASS_NO_PARAM_GRAD)) {
        for (t = 0; t < h->nt; t++) {
            float *g = h->grad[t];
            const float *u = h->u[t];
            if (!g)
                continue;
            if (t == h->bias) {
                for (k = 0; k < PL_K; k++)
                    g[k] += gb[k];
                continue;
            }
            for (e = 0, c = pl_cell0(t); e < h->spec[t].count; e++) {
                g[e] += u[e] * G[c];
                c += 5;
                if (c >= PL_CELLS)
                    c -= PL_CELLS;
            }
        }
        if (h->backwards == h->nan_grad) /* in the second chunk of the last tensor */
            h->grad[h->nan_tensor][5000 % h->spec[h->nan_tensor].count] = NAN;
    }
    if (p->d_input)
        for (i = 0; i < p->rows; i++)
            for (j = 0; j < PL_D; j++) {
                float acc = 0.0f;
                for (k = 0; k < PL_K; k++)
                    acc += d[i * PL_K + k] * h->weff[s][k * PL_D + j];
                p->d_input[i * PL_D + j] = h->keep[s][i * PL_D + j] * acc;
            }
    return 0;
}

/* Softmax cross-entropy as a user loss (for the thread check). */
static inline int pl_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
                   float *row_loss, float *dz, void *user)
{
    size_t i, k;
    pl_watch(user, W_LOSS);
    for (i = 0; i < rows; i++) {
        const float *zi = z + i * width;
        double mx = zi[0], se = 0.0;
        for (k = 1; k < width; k++)
            mx = zi[k] > mx ? zi[k] : mx;
        for (k = 0; k < width; k++)
            se += exp(zi[k] - mx);
        row_loss[i] = (float)(mx + log(se) - zi[b->labels[i]]);
        for (k = 0; k < width; k++)
            dz[i * width + k] =
                (float)(exp(zi[k] - mx) / se - (k == (size_t)b->labels[i] ? 1.0 : 0.0));
    }
    return 0;
}

/* One replica: the sum over replicas is the buffer itself. */
static inline int pl_allreduce(float *buffer, size_t count, void *user)
{
    (void)buffer;
    (void)count;
    pl_watch(user, W_ALLREDUCE);
    return 0;
}

static inline int pl_write(const void *data, size_t size, void *user)
{
    (void)data;
    (void)size;
    pl_watch(user, W_WRITE);
    return 0;
}

static inline void *pl_watch_alloc(size_t n, void *user)
{
    pl_watch(user, W_ALLOC);
    return malloc(n);
}

static inline void pl_watch_free(void *p, void *user)
{
    (void)user; /* free may run from regopt_*_free, also on the caller's thread */
    free(p);
}

/* ---- initial values and data --------------------------------------------- */

static inline float pl_init(size_t t, size_t e)
{
    return (float)(0.5 * sin(0.013 * (double)e * (double)(t + 1) + (double)t));
}

static inline float pl_proj(size_t t, size_t e, size_t count)
{
    return (float)(cos(0.7 * (double)e + 0.3 * (double)t) /
                   sqrt((double)count / PL_CELLS + 1.0));
}

static inline void pl_fill(pl_data *d, regopt_batch *b, int step, int mb)
{
    size_t i, j;
    for (i = 0; i < PL_ROWS; i++) {
        size_t row = ((size_t)step * PL_MB + (size_t)mb) * PL_ROWS + i;
        for (j = 0; j < PL_D; j++)
            d->e[i * PL_D + j] = (float)sin(0.37 * (double)row + 1.1 * (double)j + 0.2);
        d->y[i] = (int32_t)((row * 7 + 3) % PL_K);
    }
    regopt_batch_init(b);
    b->data = d;
    b->rows = PL_ROWS;
    b->labels = d->y;
}

/* ======================================================================== */
/* Runs                                                                     */
/* ======================================================================== */

typedef struct pl_cfg {
    regopt_optimizer_kind kind;
    int small, amsgrad, nesterov, steps;
    double lr, momentum, clip, wd;
    int sam, adaptive, gsam, m_rows;
    double ascent_wd;
    int rdrop, smart, bregman;
    int average; /* 0: none, else 1 + average.mode; with bregman: MESA's divergence */
} pl_cfg;

typedef struct pl_run {
    pl_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *sam, *rdrop, *smart, *bregman, *average; /* attached ones, or NULL */
    pl_data data[PL_MB];
    regopt_batch b[PL_MB];
    regopt_allocator watch_alloc;
} pl_run;

/* A regularizer of `kind` from allocator a (NULL: libc), attached to r's
 * trainer; pl_close frees it after the trainer. */
static inline regopt_regularizer *pl_reg(pl_run *r, regopt_regularizer_kind kind,
                                  const regopt_allocator *a)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *g = regopt_regularizer_create(kind, a, &st);
    ck_assert_msg(g != NULL, "regularizer %d: %s %s", (int)kind, regopt_status_string(st),
                  regopt_last_error_message());
    TMUST(r->t, regopt_trainer_attach(r->t, g));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), r->t);
    return g;
}

/* A run of configuration c. a: the allocator of model and optimizer (and so
 * the trainer), NULL for libc; watch_alloc: an allocator that records its
 * callers' threads instead. */
static inline pl_run *pl_open(const pl_cfg *c, const regopt_allocator *a, int watch_alloc)
{
    pl_run *r = calloc(1, sizeof *r);
    pl_host *h;
    regopt_status st;
    size_t t, e;
    ck_assert_ptr_nonnull(r);
    h = &r->h;
    h->spec = c->small ? small_model : big_model;
    h->nt = c->small ? PL_SMALL_T : PL_BIG_T;
    h->nan_tensor = h->nt - 1;
    if (watch_alloc) {
        r->watch_alloc.size = sizeof r->watch_alloc;
        r->watch_alloc.alloc = pl_watch_alloc;
        r->watch_alloc.free = pl_watch_free;
        r->watch_alloc.user = h;
        a = &r->watch_alloc;
    }
    r->m = regopt_model_create(a, &st);
    ck_assert_msg(r->m != NULL, "model: %s", regopt_status_string(st));
    for (t = 0; t < h->nt; t++) {
        size_t n = h->spec[t].count;
        h->data[t] = malloc(n * sizeof(float));
        h->u[t] = malloc(n * sizeof(float));
        h->grad[t] = h->spec[t].trainable ? calloc(n, sizeof(float)) : NULL;
        ck_assert(h->data[t] && h->u[t] && (h->grad[t] || !h->spec[t].trainable));
        for (e = 0; e < n; e++) {
            h->data[t][e] = pl_init(t, e);
            h->u[t][e] = pl_proj(t, e, n);
        }
        if (strcmp(h->spec[t].name, "bias") == 0)
            h->bias = t;
        MUST(regopt_model_add_param(r->m, h->spec[t].name, h->data[t], h->grad[t], n,
                                    REGOPT_DTYPE_FLOAT32, h->spec[t].group));
    }
    MUST(regopt_model_set_output_width(r->m, PL_K));
    MUST(regopt_model_set_input_width(r->m, PL_D));
    MUST(regopt_model_set_slots(r->m, PL_SLOTS));
    MUST(regopt_model_set_callbacks(r->m, pl_forward, pl_backward, h, NULL));
    ck_assert_uint_eq(regopt_model_element_count(r->m),
                      c->small ? PL_SMALL_TRAINABLE + 100 : PL_BIG_TRAINABLE + 777);

    r->o = regopt_optimizer_create(c->kind, a, &st);
    ck_assert_msg(r->o != NULL, "optimizer: %s", regopt_status_string(st));
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, c->lr));
    if (c->kind == REGOPT_SGD && c->momentum > 0.0)
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, c->momentum));
    if (c->nesterov)
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_NESTEROV, 1));
    if (c->amsgrad)
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_AMSGRAD, 1));
    if (c->kind == REGOPT_RADAM) /* rectified from the 6th step on */
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_BETA2, 0.999));
    if (c->clip > 0.0)
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, c->clip));
    if (c->wd > 0.0)
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_WEIGHT_DECAY, c->wd));
    /* per-group scalars inside the pieces: a slower group, an undecayed one */
    MUST(regopt_optimizer_set_group(r->o, 1, REGOPT_GROUP_LR_SCALE, 0.5));
    MUST(regopt_optimizer_set_group(r->o, 2, REGOPT_GROUP_WEIGHT_DECAY, 0.0));

    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_msg(r->t != NULL, "trainer: %s %s", regopt_status_string(st),
                  regopt_last_error_message());
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_SEED, 4242));
    /* the regularizers take the run's allocator too, so that the counting
     * tests see everything a run allocates */
    if (c->sam) {
        regopt_regularizer *sam = r->sam = pl_reg(r, REGOPT_REG_SAM, a);
        RMUST(sam, regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, c->adaptive ? 0.5 : 0.05));
        if (c->adaptive) {
            RMUST(sam, regopt_regularizer_set_int(sam, REGOPT_SAM_ADAPTIVE, 1));
            /* the bias group unscaled: per-tensor choice inside the pieces */
            RMUST(sam, regopt_regularizer_set_group(sam, 2, REGOPT_SAM_GROUP_ADAPTIVE, 0.0));
        }
        if (c->gsam)
            RMUST(sam, regopt_regularizer_set_int(sam, REGOPT_SAM_GSAM, 1));
        if (c->m_rows)
            RMUST(sam, regopt_regularizer_set_int(sam, REGOPT_SAM_M_ROWS, c->m_rows));
        if (c->ascent_wd > 0.0)
            RMUST(sam, regopt_regularizer_set_double(sam, REGOPT_SAM_ASCENT_WEIGHT_DECAY,
                                                     c->ascent_wd));
    }
    if (c->rdrop) {
        r->rdrop = pl_reg(r, REGOPT_REG_RDROP, a);
        RMUST(r->rdrop, regopt_regularizer_set_double(r->rdrop, REGOPT_RDROP_ALPHA, 1.0));
    }
    if (c->smart) {
        regopt_regularizer *sm = r->smart = pl_reg(r, REGOPT_REG_SMART, a);
        RMUST(sm, regopt_regularizer_set_double(sm, REGOPT_SMART_SIGMA, 1e-2));
        RMUST(sm, regopt_regularizer_set_double(sm, REGOPT_SMART_EPSILON, 5e-2));
        RMUST(sm, regopt_regularizer_set_double(sm, REGOPT_SMART_ETA, 1e-2));
        RMUST(sm, regopt_regularizer_set_int(sm, REGOPT_SMART_STEPS, 2));
    }
    if (c->bregman) {
        r->bregman = pl_reg(r, REGOPT_REG_BREGMAN, a);
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_BETA, 0.8));
    }
    if (c->average) {
        regopt_regularizer *g = r->average = pl_reg(r, REGOPT_REG_AVERAGE, a);
        RMUST(g, regopt_regularizer_set_int(g, REGOPT_AVERAGE_MODE, c->average - 1));
        RMUST(g, regopt_regularizer_set_int(g, REGOPT_AVERAGE_WARMUP, REGOPT_AVERAGE_WARMUP_TF));
        RMUST(g, regopt_regularizer_set_double(g, REGOPT_AVERAGE_DECAY, 0.7));
        if (r->bregman) {
            RMUST(r->bregman, regopt_regularizer_set_int(r->bregman, REGOPT_BREGMAN_DIVERGENCE,
                                                         REGOPT_BREGMAN_KL_TEACHER));
            RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_TAU, 5));
        }
    }
    return r;
}

static inline void pl_close(pl_run *r)
{
    size_t t;
    regopt_trainer_free(r->t);
    /* the trainer detached them: they can be freed now */
    ck_assert(!r->sam || regopt_regularizer_get_trainer(r->sam) == NULL);
    regopt_regularizer_free(r->sam);
    regopt_regularizer_free(r->rdrop);
    regopt_regularizer_free(r->smart);
    regopt_regularizer_free(r->bregman);
    regopt_regularizer_free(r->average);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    for (t = 0; t < r->h.nt; t++) {
        free(r->h.data[t]);
        free(r->h.grad[t]);
        free(r->h.u[t]);
    }
    free(r);
}

static inline void pl_threads(pl_run *r, int n)
{
    int64_t got = -1;
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, n));
    MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &got));
    ck_assert_int_eq(got, n);
}

/* Step number s (its data depend on s only). */
static inline regopt_status pl_step(pl_run *r, int s)
{
    int mb;
    for (mb = 0; mb < PL_MB; mb++)
        pl_fill(&r->data[mb], &r->b[mb], s, mb);
    return regopt_trainer_step(r->t, r->b, PL_MB);
}

static inline void pl_must_step(pl_run *r, int s)
{
    regopt_status st = pl_step(r, s);
    ck_assert_msg(st == REGOPT_OK, "step %d: %s: %s (host saw %d bad passes)", s,
                  regopt_status_string(st), regopt_trainer_message(r->t), r->h.bad);
    ck_assert_int_eq(r->h.bad, 0);
}

/* ---- snapshots: every tensor's bytes, then a full checkpoint -------------- */

typedef struct pl_snap {
    unsigned char *bytes;
    size_t n;
} pl_snap;

static inline void pl_take(const pl_run *r, pl_snap *s)
{
    size_t t, off = 0, ck = 0, written = 0;
    MUST(regopt_trainer_checkpoint_size(r->t, PL_ALL, &ck));
    s->n = ck;
    for (t = 0; t < r->h.nt; t++)
        s->n += r->h.spec[t].count * sizeof(float);
    s->bytes = malloc(s->n);
    ck_assert_ptr_nonnull(s->bytes);
    for (t = 0; t < r->h.nt; t++) {
        memcpy(s->bytes + off, r->h.data[t], r->h.spec[t].count * sizeof(float));
        off += r->h.spec[t].count * sizeof(float);
    }
    TMUST(r->t, regopt_trainer_save_buffer(r->t, PL_ALL, s->bytes + off, ck, &written));
    ck_assert_uint_eq(written, ck);
}

static inline void pl_same(const pl_snap *a, const pl_snap *b, const char *what, int arg)
{
    size_t i = 0;
    ck_assert_msg(a->n == b->n, "%s (%d): %zu bytes against %zu", what, arg, a->n, b->n);
    while (i < a->n && a->bytes[i] == b->bytes[i])
        i++;
    ck_assert_msg(i == a->n, "%s (%d): first different byte at %zu of %zu", what, arg, i,
                  a->n);
}

static inline void pl_drop(pl_snap *s)
{
    free(s->bytes);
    s->bytes = NULL;
}

/* Per-step statistics, compared as bits. */
typedef struct pl_trace {
    double loss[PL_MAXSTEPS], objective[PL_MAXSTEPS], norm[PL_MAXSTEPS];
    double clip[PL_MAXSTEPS], sam_applied[PL_MAXSTEPS], ascent[PL_MAXSTEPS];
    double rdrop_applied[PL_MAXSTEPS], smart_rs[PL_MAXSTEPS], bregman_d[PL_MAXSTEPS];
    double average_count[PL_MAXSTEPS];
} pl_trace;

static inline void pl_record(const pl_run *r, pl_trace *tr, int s)
{
    tr->loss[s] = stat(r->t, REGOPT_STAT_LOSS);
    tr->objective[s] = stat(r->t, REGOPT_STAT_OBJECTIVE);
    tr->norm[s] = stat(r->t, REGOPT_STAT_GRAD_NORM);
    tr->clip[s] = stat(r->t, REGOPT_STAT_CLIP_SCALE);
    /* a regularizer's statistics live on its handle (0: not attached) */
    tr->sam_applied[s] = r->sam ? rstat(r->sam, REGOPT_STAT_SAM_APPLIED) : 0.0;
    tr->ascent[s] = r->sam ? rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM) : 0.0;
    tr->rdrop_applied[s] = r->rdrop ? rstat(r->rdrop, REGOPT_STAT_RDROP_APPLIED) : 0.0;
    tr->smart_rs[s] = r->smart ? rstat(r->smart, REGOPT_STAT_SMART_RS) : 0.0;
    tr->bregman_d[s] = r->bregman ? rstat(r->bregman, REGOPT_STAT_BREGMAN_D) : 0.0;
    tr->average_count[s] = r->average ? rstat(r->average, REGOPT_STAT_AVERAGE_COUNT) : 0.0;
}

/* ---- configurations of the runs ----------------------------------------- */

/*                                kind          sm ams nes st  lr    mom  clip  wd
 *                                sam ad gs m  awd  rd sm br av */
static const pl_cfg cfg_adamw = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                                 0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_adam_ams = {REGOPT_ADAM, 0, 1, 0, 5, 1e-2, 0, 0, 1e-3,
                                    0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sgd_nesterov = {REGOPT_SGD, 0, 0, 1, 5, 5e-2, 0.9, 0, 1e-3,
                                        0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sgd_plain = {REGOPT_SGD, 0, 0, 0, 4, 5e-2, 0, 0, 1e-3,
                                     0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_radam = {REGOPT_RADAM, 0, 0, 0, 8, 1e-2, 0, 0, 1e-3,
                                 0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_clip = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0.05, 1e-2,
                                0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_clip_sgd = {REGOPT_SGD, 0, 0, 0, 5, 5e-2, 0.5, 0.05, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sam = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                               1, 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_asam = {REGOPT_SGD, 0, 0, 0, 5, 5e-2, 0.9, 0, 1e-3,
                                1, 1, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_gsam = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                                1, 0, 1, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sam_m = {REGOPT_ADAM, 0, 0, 0, 4, 1e-2, 0, 0, 0,
                                 1, 0, 0, 4, 1e-3, 0, 0, 0, 0};
static const pl_cfg cfg_smart_bregman = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                                         0, 0, 0, 0, 0, 0, 1, 1, 0};
/* EMA and MESA's divergence; SWA (the average is in the checkpoint bytes) */
static const pl_cfg cfg_average_mesa = {REGOPT_SGD, 0, 0, 0, 5, 1e-2, 0.9, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 1, 1};
static const pl_cfg cfg_average_swa = {REGOPT_ADAM, 0, 0, 0, 5, 1e-2, 0, 0, 0,
                                       0, 0, 0, 0, 0, 0, 0, 0, 2};
static const pl_cfg cfg_rdrop = {REGOPT_ADAM, 0, 0, 0, 5, 1e-2, 0, 0, 0,
                                 0, 0, 0, 0, 0, 1, 0, 0, 0};
static const pl_cfg cfg_everything = {REGOPT_ADAMW, 0, 1, 0, 5, 1e-2, 0, 0.5, 1e-2,
                                      1, 1, 1, 0, 1e-3, 1, 1, 1, 0};
static const pl_cfg cfg_small = {REGOPT_ADAMW, 1, 0, 0, 5, 1e-2, 0, 0.05, 1e-2,
                                 1, 0, 0, 0, 0, 0, 0, 1, 0};
static const pl_cfg cfg_small_sgd = {REGOPT_SGD, 1, 0, 1, 5, 5e-2, 0.9, 0, 1e-3,
                                     1, 1, 0, 0, 0, 0, 0, 0, 0};

/* The "identical" and "lifecycle" cases of suite_pool (check_pool_identical.c,
 * check_pool_lifecycle.c). */
TCase *pool_identical_tcase(void);
TCase *pool_lifecycle_tcase(void);

#endif
