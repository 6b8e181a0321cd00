/* check_pool.c — REGOPT_TRAINER_THREADS: the trainer's worker threads.
 *
 * The option runs the library's own loops over the parameters (optimizer
 * update, gradient zeroing and norm, SAM's perturb/restore and ascent norm,
 * the Bregman teacher's swap, copy and EMA) on a pool of threads, and
 * promises the same bits for every thread count. This suite checks that
 * promise by training the same model from the same weights on 1, 2, 3, 7
 * and 16 threads and comparing every byte of the
 * parameters and of a full checkpoint (optimizer moments, teacher, step,
 * statistics, options), and checks what comes with it: the option's bounds,
 * callbacks on the caller's thread, no allocation in steps, rollback of a
 * failed step, checkpoints that do not carry the option, changing the
 * thread count between steps, and workers joined at free.
 *
 * Every expectation is a comparison between runs, a count of calls or of
 * operating-system threads, or a value computed here -- never a number the
 * library reports about itself. The suite uses the public API only.
 *
 * Host: z_i = bias + W_eff x_i, where x_i = (e_i + input_perturbation_i) *
 * dropout mask (drawn from the pass seed) and W_eff (PL_K x PL_D) is a fixed
 * random projection of EVERY element of every non-bias tensor, frozen one
 * included: W_eff[c] = sum over elements e mapped to cell c of w[e] u[e].
 * So every parameter moves the outputs and gets its own gradient
 * u[e] * dL/dW_eff[c], and one pass costs a few operations per element. */
#define _POSIX_C_SOURCE 200809L /* pthreads, nanosleep under -std=c11 */
#include "tests.h"
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

static void pl_watch(pl_host *h, int what)
{
    if (!h->watch)
        return;
    h->calls[what]++;
    if (!pthread_equal(pthread_self(), h->owner))
        h->foreign[what]++;
}

/* The cell of W_eff that element e of tensor t feeds (5 is prime to 24). */
static size_t pl_cell0(size_t t) { return (t * 7) % PL_CELLS; }

static void pl_weff(const pl_host *h, float *weff)
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

static int pl_forward(const regopt_pass *p, void *user)
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

static int pl_backward(const regopt_pass *p, void *user)
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
static int pl_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
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
static int pl_allreduce(float *buffer, size_t count, void *user)
{
    (void)buffer;
    (void)count;
    pl_watch(user, W_ALLREDUCE);
    return 0;
}

static int pl_write(const void *data, size_t size, void *user)
{
    (void)data;
    (void)size;
    pl_watch(user, W_WRITE);
    return 0;
}

static void *pl_watch_alloc(size_t n, void *user)
{
    pl_watch(user, W_ALLOC);
    return malloc(n);
}

static void pl_watch_free(void *p, void *user)
{
    (void)user; /* free may run from regopt_*_free, also on the caller's thread */
    free(p);
}

/* ---- initial values and data --------------------------------------------- */

static float pl_init(size_t t, size_t e)
{
    return (float)(0.5 * sin(0.013 * (double)e * (double)(t + 1) + (double)t));
}

static float pl_proj(size_t t, size_t e, size_t count)
{
    return (float)(cos(0.7 * (double)e + 0.3 * (double)t) /
                   sqrt((double)count / PL_CELLS + 1.0));
}

static void pl_fill(pl_data *d, regopt_batch *b, int step, int mb)
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
} pl_cfg;

typedef struct pl_run {
    pl_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *sam, *rdrop, *smart, *bregman; /* attached ones, or NULL */
    pl_data data[PL_MB];
    regopt_batch b[PL_MB];
    regopt_allocator watch_alloc;
} pl_run;

/* A regularizer of `kind` from allocator a (NULL: libc), attached to r's
 * trainer; pl_close frees it after the trainer. */
static regopt_regularizer *pl_reg(pl_run *r, regopt_regularizer_kind kind,
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
static pl_run *pl_open(const pl_cfg *c, const regopt_allocator *a, int watch_alloc)
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
    return r;
}

static void pl_close(pl_run *r)
{
    size_t t;
    regopt_trainer_free(r->t);
    /* the trainer detached them: they can be freed now */
    ck_assert(!r->sam || regopt_regularizer_get_trainer(r->sam) == NULL);
    regopt_regularizer_free(r->sam);
    regopt_regularizer_free(r->rdrop);
    regopt_regularizer_free(r->smart);
    regopt_regularizer_free(r->bregman);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    for (t = 0; t < r->h.nt; t++) {
        free(r->h.data[t]);
        free(r->h.grad[t]);
        free(r->h.u[t]);
    }
    free(r);
}

static void pl_threads(pl_run *r, int n)
{
    int64_t got = -1;
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, n));
    MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &got));
    ck_assert_int_eq(got, n);
}

/* Step number s (its data depend on s only). */
static regopt_status pl_step(pl_run *r, int s)
{
    int mb;
    for (mb = 0; mb < PL_MB; mb++)
        pl_fill(&r->data[mb], &r->b[mb], s, mb);
    return regopt_trainer_step(r->t, r->b, PL_MB);
}

static void pl_must_step(pl_run *r, int s)
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

static void pl_take(const pl_run *r, pl_snap *s)
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

static void pl_same(const pl_snap *a, const pl_snap *b, const char *what, int arg)
{
    size_t i = 0;
    ck_assert_msg(a->n == b->n, "%s (%d): %zu bytes against %zu", what, arg, a->n, b->n);
    while (i < a->n && a->bytes[i] == b->bytes[i])
        i++;
    ck_assert_msg(i == a->n, "%s (%d): first different byte at %zu of %zu", what, arg, i,
                  a->n);
}

static void pl_drop(pl_snap *s)
{
    free(s->bytes);
    s->bytes = NULL;
}

/* Per-step statistics, compared as bits. */
typedef struct pl_trace {
    double loss[PL_MAXSTEPS], objective[PL_MAXSTEPS], norm[PL_MAXSTEPS];
    double clip[PL_MAXSTEPS], sam_applied[PL_MAXSTEPS], ascent[PL_MAXSTEPS];
    double rdrop_applied[PL_MAXSTEPS], smart_rs[PL_MAXSTEPS], bregman_d[PL_MAXSTEPS];
} pl_trace;

static void pl_record(const pl_run *r, pl_trace *tr, int s)
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
}

/* ---- operating-system threads of this process (Linux /proc) --------------- */

static int pl_os_threads(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int n = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

static void *pl_nothing(void *arg) { return arg; }

/* The baseline count, taken after one thread has come and gone (some
 * runtimes, ThreadSanitizer's, start a thread of their own at the first
 * pthread_create), as the least of a few reads over about 10 ms: threads
 * joined just before may still be counted for a moment, never fewer than
 * are alive. -1 without /proc. */
static int pl_os_base(void)
{
    struct timespec ms = {0, 1000000L};
    pthread_t th;
    int i, n, least;
    if (pthread_create(&th, NULL, pl_nothing, NULL) == 0)
        pthread_join(th, NULL);
    least = pl_os_threads();
    for (i = 0; i < 10 && least >= 0; i++) {
        nanosleep(&ms, NULL);
        n = pl_os_threads();
        least = n < least ? n : least;
    }
    return least;
}

/* The count once it equals want, or what it was after about 5 s: a joined
 * thread may leave the kernel's count shortly after pthread_join returns.
 * Without /proc, want (nothing to check). */
static int pl_os_threads_settle(int want)
{
    struct timespec ms = {0, 1000000L};
    int i, n = pl_os_threads();
    if (n < 0)
        return want;
    for (i = 0; i < 5000 && n != want; i++) {
        nanosleep(&ms, NULL);
        n = pl_os_threads();
    }
    return n;
}

/* The kernel thread ids of this process (/proc/self/task); 0 without. */
static size_t pl_tasks(long *tids, size_t cap)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    size_t n = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.' && n < cap)
            tids[n++] = strtol(e->d_name, NULL, 10);
    closedir(d);
    return n;
}

/* Nanoseconds thread `tid` has run (/proc/.../schedstat), -1 if unknown. */
static long long pl_runtime(long tid)
{
    char path[64];
    long long ns = -1;
    FILE *f;
    snprintf(path, sizeof path, "/proc/self/task/%ld/schedstat", tid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    if (fscanf(f, "%lld", &ns) != 1)
        ns = -1;
    fclose(f);
    return ns;
}

/* The threads that setting trainer.threads to n started: the tasks that
 * were not there before. Returns how many (0 without /proc). */
static size_t pl_new_workers(pl_run *r, int n, long *workers, size_t cap)
{
    long before[64], after[64];
    size_t nb, na, i, j, k = 0;
    (void)pl_os_base(); /* a runtime's own thread, if any, starts now */
    nb = pl_tasks(before, 64);
    pl_threads(r, n);
    na = pl_tasks(after, 64);
    for (i = 0; i < na; i++) {
        for (j = 0; j < nb && before[j] != after[i]; j++)
            ;
        if (j == nb && k < cap)
            workers[k++] = after[i];
    }
    return nb ? k : 0;
}

static long long pl_workers_runtime(const long *w, size_t n)
{
    long long sum = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        long long ns = pl_runtime(w[i]);
        if (ns < 0)
            return -1;
        sum += ns;
    }
    return sum;
}

/* ======================================================================== */
/* 1. The option                                                            */
/* ======================================================================== */

static const pl_cfg cfg_adamw = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                                 0, 0, 0, 0, 0, 0, 0, 0};

START_TEST(threads_option)
{
    pl_run *r = pl_open(&cfg_adamw, NULL, 0);
    regopt_key key = (regopt_key)0;
    const char *name = NULL;
    int type = 0;
    double lo = 0, hi = 0, def = 0, dv = 0;
    uint32_t flags = 99;
    int64_t v = -1;
    const int64_t bad[] = {0, 257, -1, 1000, INT64_MIN, INT64_MAX};
    const int64_t good[] = {2, 3, 256, 1};
    size_t i;
    int base = pl_os_base();

    /* the key */
    MUST(regopt_key_from_name("trainer.threads", &key));
    ck_assert_int_eq(key, 303);
    ck_assert_int_eq(REGOPT_TRAINER_THREADS, 303);
    MUST(regopt_key_info(REGOPT_TRAINER_THREADS, &name, &type, &lo, &hi, &def, &flags));
    ck_assert_str_eq(name, "trainer.threads");
    ck_assert_int_eq(type, REGOPT_TYPE_INT);
    ck_assert(lo == 1.0 && hi == 256.0 && def == 1.0);
    ck_assert_uint_eq(flags, 0);

    /* default */
    MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 1);
    MUST(regopt_trainer_get_double(r->t, REGOPT_TRAINER_THREADS, &dv));
    ck_assert(dv == 1.0);

    /* out of range: refused, named, nothing changed */
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, bad[i]),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_msg(strstr(regopt_trainer_message(r->t), "trainer.threads") != NULL,
                      "%lld: \"%s\"", (long long)bad[i], regopt_trainer_message(r->t));
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, 1);
    }
    {
        const double dbad[] = {2.5, 0.0, 256.5, 257.0, -3.0, NAN, INFINITY};
        for (i = 0; i < sizeof dbad / sizeof dbad[0]; i++) {
            ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_THREADS, dbad[i]),
                             REGOPT_ERR_OUT_OF_RANGE);
            ck_assert_msg(strstr(regopt_trainer_message(r->t), "trainer.threads") != NULL,
                          "%g: \"%s\"", dbad[i], regopt_trainer_message(r->t));
            MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
            ck_assert_int_eq(v, 1);
        }
    }
    ck_assert_int_eq(pl_os_threads_settle(base), base);

    /* in range: taken, read back, and the workers exist right away */
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, good[i]));
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, good[i]);
        if (base > 0)
            ck_assert_int_eq(pl_os_threads_settle(base + (int)good[i] - 1),
                             base + (int)good[i] - 1);
    }
    /* a failed set keeps a value other than the default too */
    MUST(regopt_trainer_set_double(r->t, REGOPT_TRAINER_THREADS, 2.0));
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_THREADS, 2.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 0),
                     REGOPT_ERR_OUT_OF_RANGE);
    MUST(regopt_trainer_get_double(r->t, REGOPT_TRAINER_THREADS, &dv));
    ck_assert(dv == 2.0);
    ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    /* the same value again: nothing to do */
    MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 2));
    ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 1));
    MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(pl_os_threads_settle(base), base);

    /* a trainer key only */
    ck_assert_int_eq(regopt_optimizer_set_int(r->o, REGOPT_TRAINER_THREADS, 2),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_set_int(NULL, REGOPT_TRAINER_THREADS, 2),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_get_int(NULL, REGOPT_TRAINER_THREADS, &v),
                     REGOPT_ERR_NULL_POINTER);
    {
        /* nor a regularizer's, attached or not */
        regopt_regularizer *sam = tu_new(REGOPT_REG_SAM);
        ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_TRAINER_THREADS, 2),
                         REGOPT_ERR_UNKNOWN_KEY);
        TMUST(r->t, regopt_trainer_attach(r->t, sam));
        ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_TRAINER_THREADS, 2),
                         REGOPT_ERR_UNKNOWN_KEY);
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, 1);
    }
    pl_close(r);
    tu_free_regs();
}
END_TEST

/* ======================================================================== */
/* 2. The same bits on every thread count                                   */
/* ======================================================================== */

static const int pl_counts[] = {2, 3, 7, 16};

/* Run c on `threads` threads; the snapshot and trace of the result. */
static void pl_train(const pl_cfg *c, int threads, pl_snap *s, pl_trace *tr)
{
    pl_run *r = pl_open(c, NULL, 0);
    int i, base = pl_os_base();
    if (threads != 1)
        pl_threads(r, threads);
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base + threads - 1), base + threads - 1);
    for (i = 0; i < c->steps; i++) {
        pl_must_step(r, i);
        pl_record(r, tr, i);
    }
    pl_take(r, s);
    pl_close(r);
}

/* The reference run did what the configuration says, so the comparison is
 * not between runs that skipped the code under test: every chunk of every
 * trainable tensor moved, the frozen tensor did not, and each regularizer
 * was active. */
static void pl_sanity(const pl_cfg *c, const pl_snap *s, const pl_trace *tr)
{
    const pl_spec *spec = c->small ? small_model : big_model;
    size_t nt = c->small ? PL_SMALL_T : PL_BIG_T, t, e, off = 0;
    int i;
    for (t = 0; t < nt; t++) {
        const unsigned char *p = s->bytes + off;
        for (e = 0; e < spec[t].count; e++) {
            float w, w0 = pl_init(t, e);
            memcpy(&w, p + e * sizeof(float), sizeof w);
            if (!spec[t].trainable)
                ck_assert_msg(memcmp(&w, &w0, sizeof w) == 0, "frozen %s[%zu] changed",
                              spec[t].name, e);
            ck_assert_msg(isfinite(w), "%s[%zu] = %g", spec[t].name, e, (double)w);
        }
        if (spec[t].trainable) {
            size_t j0;
            for (j0 = 0; j0 < spec[t].count; j0 += PL_CHUNK) {
                size_t j1 = j0 + PL_CHUNK < spec[t].count ? j0 + PL_CHUNK : spec[t].count;
                size_t moved = 0;
                for (e = j0; e < j1; e++) {
                    float w, w0 = pl_init(t, e);
                    memcpy(&w, p + e * sizeof(float), sizeof w);
                    moved += memcmp(&w, &w0, sizeof w) != 0;
                }
                ck_assert_msg(moved * 2 > j1 - j0, "%s: only %zu of [%zu, %zu) moved",
                              spec[t].name, moved, j0, j1);
            }
        }
        off += spec[t].count * sizeof(float);
    }
    for (i = 0; i < c->steps; i++) {
        ck_assert_msg(isfinite(tr->loss[i]) && tr->norm[i] > 0.0, "step %d: loss %g norm %g",
                      i, tr->loss[i], tr->norm[i]);
        if (c->clip > 0.0)
            ck_assert_msg(tr->clip[i] < 1.0, "step %d does not clip (norm %g)", i,
                          tr->norm[i]);
        if (c->sam)
            ck_assert_msg(tr->sam_applied[i] == 1.0 && tr->ascent[i] > 0.0,
                          "step %d made no ascent", i);
        if (c->rdrop)
            ck_assert_msg(tr->rdrop_applied[i] == 1.0, "step %d ran no R-Drop", i);
        if (c->smart)
            ck_assert_msg(tr->smart_rs[i] > 0.0, "step %d: R_s = %g", i, tr->smart_rs[i]);
        if (c->bregman && i > 0)
            ck_assert_msg(tr->bregman_d[i] > 0.0, "step %d: D_Breg = %g", i, tr->bregman_d[i]);
    }
}

static void pl_identity_counts(const pl_cfg *c, const int *counts, size_t n)
{
    pl_snap ref, got;
    pl_trace tref, tgot;
    size_t k;
    memset(&tref, 0, sizeof tref);
    pl_train(c, 1, &ref, &tref);
    pl_sanity(c, &ref, &tref);
    for (k = 0; k < n; k++) {
        memset(&tgot, 0, sizeof tgot);
        pl_train(c, counts[k], &got, &tgot);
        pl_same(&got, &ref, "parameters and checkpoint against one thread", counts[k]);
        ck_assert_msg(memcmp(&tgot, &tref, sizeof tref) == 0,
                      "%d threads: the step statistics differ from one thread's", counts[k]);
        pl_drop(&got);
    }
    pl_drop(&ref);
}

static void pl_identity(const pl_cfg *c)
{
    pl_identity_counts(c, pl_counts, sizeof pl_counts / sizeof pl_counts[0]);
}

/*                                kind          sm ams nes st  lr    mom  clip  wd
 *                                sam ad gs m  awd  rd sm br */
static const pl_cfg cfg_adam_ams = {REGOPT_ADAM, 0, 1, 0, 5, 1e-2, 0, 0, 1e-3,
                                    0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sgd_nesterov = {REGOPT_SGD, 0, 0, 1, 5, 5e-2, 0.9, 0, 1e-3,
                                        0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sgd_plain = {REGOPT_SGD, 0, 0, 0, 4, 5e-2, 0, 0, 1e-3,
                                     0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_radam = {REGOPT_RADAM, 0, 0, 0, 8, 1e-2, 0, 0, 1e-3,
                                 0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_clip = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0.05, 1e-2,
                                0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_clip_sgd = {REGOPT_SGD, 0, 0, 0, 5, 5e-2, 0.5, 0.05, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sam = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                               1, 0, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_asam = {REGOPT_SGD, 0, 0, 0, 5, 5e-2, 0.9, 0, 1e-3,
                                1, 1, 0, 0, 0, 0, 0, 0};
static const pl_cfg cfg_gsam = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                                1, 0, 1, 0, 0, 0, 0, 0};
static const pl_cfg cfg_sam_m = {REGOPT_ADAM, 0, 0, 0, 4, 1e-2, 0, 0, 0,
                                 1, 0, 0, 4, 1e-3, 0, 0, 0};
static const pl_cfg cfg_smart_bregman = {REGOPT_ADAMW, 0, 0, 0, 5, 1e-2, 0, 0, 1e-2,
                                         0, 0, 0, 0, 0, 0, 1, 1};
static const pl_cfg cfg_rdrop = {REGOPT_ADAM, 0, 0, 0, 5, 1e-2, 0, 0, 0,
                                 0, 0, 0, 0, 0, 1, 0, 0};
static const pl_cfg cfg_everything = {REGOPT_ADAMW, 0, 1, 0, 5, 1e-2, 0, 0.5, 1e-2,
                                      1, 1, 1, 0, 1e-3, 1, 1, 1};
static const pl_cfg cfg_small = {REGOPT_ADAMW, 1, 0, 0, 5, 1e-2, 0, 0.05, 1e-2,
                                 1, 0, 0, 0, 0, 0, 0, 1};
static const pl_cfg cfg_small_sgd = {REGOPT_SGD, 1, 0, 1, 5, 5e-2, 0.9, 0, 1e-3,
                                     1, 1, 0, 0, 0, 0, 0, 0};

START_TEST(identical_adamw) { pl_identity(&cfg_adamw); }
END_TEST
START_TEST(identical_adam_amsgrad) { pl_identity(&cfg_adam_ams); }
END_TEST
START_TEST(identical_sgd_momentum_nesterov) { pl_identity(&cfg_sgd_nesterov); }
END_TEST
START_TEST(identical_sgd_plain) { pl_identity(&cfg_sgd_plain); }
END_TEST
START_TEST(identical_radam) { pl_identity(&cfg_radam); }
END_TEST
START_TEST(identical_clipping)
{
    pl_identity(&cfg_clip);
    pl_identity(&cfg_clip_sgd);
}
END_TEST
START_TEST(identical_sam) { pl_identity(&cfg_sam); }
END_TEST
START_TEST(identical_asam) { pl_identity(&cfg_asam); }
END_TEST
START_TEST(identical_gsam) { pl_identity(&cfg_gsam); }
END_TEST
START_TEST(identical_sam_m_sharpness) { pl_identity(&cfg_sam_m); }
END_TEST
START_TEST(identical_smart_bregman) { pl_identity(&cfg_smart_bregman); }
END_TEST
START_TEST(identical_rdrop) { pl_identity(&cfg_rdrop); }
END_TEST
START_TEST(identical_everything) { pl_identity(&cfg_everything); }
END_TEST

/* Below PL_PAR_MIN trainable elements the loops stay on one thread; the
 * result is the same whatever the option says. */
START_TEST(identical_small_model)
{
    static const int four[] = {4};
    pl_identity_counts(&cfg_small, four, 1);
    pl_identity_counts(&cfg_small_sgd, four, 1);
}
END_TEST

/* The largest pool: more threads than the model's 74 chunks. */
START_TEST(identical_max_threads)
{
    static const int most[] = {256};
    pl_cfg c = cfg_sam;
    c.steps = 2;
    c.bregman = 1;
    pl_identity_counts(&c, most, 1);
}
END_TEST

/* The comparisons above would also pass if the workers never ran: check
 * that they do work in the steps of a big model, and none in those of a
 * model below PL_PAR_MIN trainable elements. Measured as the workers' run
 * time (Linux schedstat; skipped where it cannot be read). */
START_TEST(workers_take_part)
{
    struct timespec settle = {0, 100000000L}; /* idle workers go to sleep */
    long w[8];
    size_t n;
    long long t0, t1;
    int i;
    pl_run *r = pl_open(&cfg_sam, NULL, 0);
    n = pl_new_workers(r, 2, w, 8);
    if (n == 0 || pl_workers_runtime(w, n) < 0) {
        pl_close(r);
        return; /* no /proc/self/task/N/schedstat here */
    }
    ck_assert_uint_eq(n, 1);
    pl_must_step(r, 0);
    nanosleep(&settle, NULL);
    t0 = pl_workers_runtime(w, n);
    for (i = 1; i < 4; i++)
        pl_must_step(r, i);
    t1 = pl_workers_runtime(w, n);
    ck_assert_msg(t1 > t0, "the worker did not run during the steps (%lld ns -> %lld ns)", t0,
                  t1);
    pl_close(r);

    r = pl_open(&cfg_small, NULL, 0);
    n = pl_new_workers(r, 4, w, 8);
    ck_assert_uint_eq(n, 3);
    pl_must_step(r, 0);
    nanosleep(&settle, NULL);
    t0 = pl_workers_runtime(w, n);
    for (i = 1; i < 4; i++)
        pl_must_step(r, i);
    t1 = pl_workers_runtime(w, n);
    ck_assert_msg(t1 == t0, "workers ran for a model below %d elements (%lld ns -> %lld ns)",
                  PL_PAR_MIN, t0, t1);
    pl_close(r);
}
END_TEST

/* ======================================================================== */
/* 3. Callbacks run on the thread that called                               */
/* ======================================================================== */

typedef struct pl_stepper {
    pl_run *r;
    int first, steps;
    regopt_status st;
    int failed_step;
} pl_stepper;

static void *pl_step_thread(void *arg)
{
    pl_stepper *s = arg;
    int i;
    s->r->h.owner = pthread_self();
    s->st = REGOPT_OK;
    s->failed_step = -1;
    for (i = 0; i < s->steps && s->st == REGOPT_OK; i++) {
        s->st = pl_step(s->r, s->first + i);
        if (s->st != REGOPT_OK)
            s->failed_step = s->first + i;
    }
    return NULL;
}

START_TEST(callbacks_on_the_calling_thread)
{
    pl_cfg c = cfg_everything;
    pl_run *r;
    pl_stepper job;
    pthread_t th;
    int i, w, base = pl_os_base();
    double loss = 0;
    float out[PL_ROWS * PL_K];
    static const char *what[W_N] = {"forward", "backward", "loss", "all-reduce", "write",
                                    "allocator"};
    r = pl_open(&c, NULL, 1);
    r->h.owner = pthread_self();
    r->h.watch = 1;
    TMUST(r->t, regopt_trainer_set_loss_callback(r->t, pl_loss, &r->h, NULL));
    TMUST(r->t, regopt_trainer_set_allreduce(r->t, pl_allreduce, &r->h, NULL));
    /* a method key is the regularizer's: the trainer no longer takes it */
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_SAM_SYNC_ASCENT, 1),
                     REGOPT_ERR_UNKNOWN_KEY);
    RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_SYNC_ASCENT, 1));
    pl_threads(r, 4);
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base + 3), base + 3);

    /* on the test's thread */
    for (i = 0; i < 3; i++)
        pl_must_step(r, i);
    pl_fill(&r->data[0], &r->b[0], 9, 0);
    TMUST(r->t, regopt_trainer_evaluate(r->t, &r->b[0], &loss, out));
    TMUST(r->t, regopt_trainer_save(r->t, PL_ALL, pl_write, &r->h));

    /* on another thread (one at a time: the handle is never shared) */
    memset(&job, 0, sizeof job);
    job.r = r;
    job.first = 3;
    job.steps = 3;
    ck_assert_int_eq(pthread_create(&th, NULL, pl_step_thread, &job), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(job.st == REGOPT_OK, "step %d in a thread: %s: %s", job.failed_step,
                  regopt_status_string(job.st), regopt_trainer_message(r->t));
    r->h.owner = pthread_self();

    for (w = 0; w < W_N; w++) {
        if (w != W_ALLOC) /* the allocator may have nothing left to do */
            ck_assert_msg(r->h.calls[w] > 0, "no %s call", what[w]);
        ck_assert_msg(r->h.foreign[w] == 0, "%ld of %ld %s calls on another thread",
                      r->h.foreign[w], r->h.calls[w], what[w]);
    }
    ck_assert_int_eq(r->h.bad, 0);
    /* the allocator: setting the option is where the pool is made */
    r->h.calls[W_ALLOC] = 0;
    pl_threads(r, 3);
    ck_assert_msg(r->h.calls[W_ALLOC] > 0, "setting trainer.threads allocated nothing");
    ck_assert_int_eq(r->h.foreign[W_ALLOC], 0);
    r->h.watch = 0;
    pl_close(r);
}
END_TEST

/* ======================================================================== */
/* 4. Allocation                                                            */
/* ======================================================================== */

START_TEST(no_allocation_in_steps)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    pl_cfg cfg = cfg_everything;
    pl_run *r = pl_open(&cfg, &a, 0);
    long before, frees;
    int i, base = pl_os_base();

    before = c.allocs;
    pl_threads(r, 2);
    ck_assert_msg(c.allocs > before, "the pool is not allocated when the option is set");
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    pl_must_step(r, 0);
    before = c.allocs;
    for (i = 1; i < 8; i++)
        pl_must_step(r, i);
    ck_assert_int_eq(c.allocs, before);

    /* the same value: nothing; fewer threads: the pool goes, nothing new */
    pl_threads(r, 2);
    ck_assert_int_eq(c.allocs, before);
    frees = c.frees;
    pl_threads(r, 1);
    ck_assert_int_eq(c.allocs, before);
    ck_assert_msg(c.frees > frees, "the pool was not freed when set back to 1");
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base), base);
    pl_threads(r, 3);
    ck_assert(c.allocs > before);
    before = c.allocs;
    for (i = 8; i < 11; i++)
        pl_must_step(r, i);
    ck_assert_int_eq(c.allocs, before);

    pl_close(r);
    ck_assert_int_eq(c.allocs, c.frees);
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base), base);
}
END_TEST

/* A pool that cannot be made (either of its allocations fails): the old
 * setting and its threads stay, and the run goes on as if nothing was
 * tried. */
START_TEST(failed_pool_changes_nothing)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    pl_run *r = pl_open(&cfg_sam, &a, 0), *ref = pl_open(&cfg_sam, NULL, 0);
    pl_snap s1, s2;
    int64_t v = 0;
    int i, k, base = pl_os_base();
    pl_threads(r, 2);
    pl_must_step(r, 0);
    pl_must_step(ref, 0);
    for (k = 1; k <= 2; k++) {
        c.fail_at = c.allocs + k;
        ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 5),
                         REGOPT_ERR_NO_MEMORY);
        ck_assert_msg(strstr(regopt_trainer_message(r->t), "trainer.threads") != NULL, "\"%s\"",
                      regopt_trainer_message(r->t));
        ck_assert_int_eq(c.allocs, c.fail_at); /* the failing one was the last tried */
        c.fail_at = 0;
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, 2);
        if (base > 0)
            ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    }
    for (i = 1; i < 4; i++) {
        pl_must_step(r, i);
        pl_must_step(ref, i);
    }
    pl_take(r, &s1);
    pl_take(ref, &s2);
    pl_same(&s1, &s2, "after two failed sets", 0);
    pl_drop(&s1);
    pl_drop(&s2);
    pl_close(r);
    pl_close(ref);
    ck_assert_int_eq(c.allocs - 2, c.frees); /* two allocations returned NULL */
}
END_TEST

/* ======================================================================== */
/* 5. A failed step changes nothing                                         */
/* ======================================================================== */

enum pl_fault { F_BACKWARD, F_NAN, F_FORWARD };

/* Where a fault's call number `at` counts from: the step's first call, the
 * first call of SAM's perturbed half (the second half of the step's calls),
 * or back from the step's last call (at = 0: the last). */
enum pl_from { FROM_START, FROM_PERTURBED, FROM_END };

/* Train 2 steps on `threads` threads, fail step 3 with the fault injected
 * at the call given by at and from, and check that parameters, moments,
 * teacher, step count and statistics are as before, then that the run goes
 * on bit for bit as a one-thread run that never failed. */
static void pl_rollback(const pl_cfg *c, int threads, enum pl_fault f, enum pl_from from,
                        int at, regopt_status want, const char *words)
{
    pl_run *bad = pl_open(c, NULL, 0), *good = pl_open(c, NULL, 0);
    pl_snap before, after;
    int i, per, n;
    pl_threads(bad, threads);
    for (i = 0; i < 2; i++) {
        pl_must_step(bad, i);
        pl_must_step(good, i);
    }
    /* the callbacks of one step, counted on the run that does not fail */
    per = (f == F_FORWARD ? good->h.forwards : good->h.backwards) / 2;
    n = from == FROM_START ? at : from == FROM_PERTURBED ? per / 2 + at : per - at;
    ck_assert_msg(n >= 1 && n <= per, "call %d of %d", n, per);
    pl_take(bad, &before);
    switch (f) {
    case F_BACKWARD: bad->h.fail_backward = bad->h.backwards + n; break;
    case F_NAN: bad->h.nan_grad = bad->h.backwards + n; break;
    case F_FORWARD: bad->h.fail_forward = bad->h.forwards + n; break;
    }
    ck_assert_int_eq(pl_step(bad, 2), want);
    ck_assert_msg(strstr(regopt_trainer_message(bad->t), words) != NULL,
                  "message \"%s\" lacks \"%s\"", regopt_trainer_message(bad->t), words);
    pl_take(bad, &after);
    pl_same(&before, &after, "state after a failed step", n);
    pl_drop(&before);
    pl_drop(&after);
    bad->h.fail_backward = bad->h.nan_grad = bad->h.fail_forward = 0;
    for (i = 2; i < 5; i++) {
        pl_must_step(bad, i);
        pl_must_step(good, i);
    }
    pl_take(bad, &before);
    pl_take(good, &after);
    pl_same(&before, &after, "resumed after a failure, against a one-thread run", n);
    pl_drop(&before);
    pl_drop(&after);
    pl_close(bad);
    pl_close(good);
}

START_TEST(rollback_backward_failure)
{
    /* SAM: clean backwards 1, 2, then perturbed 3, 4: fail at w + eps */
    pl_rollback(&cfg_sam, 2, F_BACKWARD, FROM_PERTURBED, 1, REGOPT_ERR_BACKWARD,
                "backward callback returned 9");
    pl_rollback(&cfg_sam, 2, F_BACKWARD, FROM_START, 1, REGOPT_ERR_BACKWARD, "returned 9");
    pl_rollback(&cfg_adamw, 2, F_BACKWARD, FROM_END, 0, REGOPT_ERR_BACKWARD, "returned 9");
    pl_rollback(&cfg_sgd_nesterov, 3, F_BACKWARD, FROM_END, 0, REGOPT_ERR_BACKWARD,
                "returned 9");
    pl_rollback(&cfg_asam, 2, F_BACKWARD, FROM_END, 0, REGOPT_ERR_BACKWARD, "returned 9");
}
END_TEST

START_TEST(rollback_nonfinite_gradient)
{
    /* a NaN in the second chunk of the last tensor, a worker's part */
    pl_rollback(&cfg_adamw, 2, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT, "\"mid\"");
    pl_rollback(&cfg_sgd_nesterov, 2, F_NAN, FROM_START, 1, REGOPT_ERR_NONFINITE_GRADIENT,
                "\"mid\"");
    /* in SAM's perturbed gradient; in GSAM's clean (ascent) gradient */
    pl_rollback(&cfg_sam, 2, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT, "\"mid\"");
    pl_rollback(&cfg_gsam, 2, F_NAN, FROM_START, 2, REGOPT_ERR_NONFINITE_GRADIENT,
                "not finite");
}
END_TEST

START_TEST(rollback_teacher_and_smart_failure)
{
    /* the teacher's forward (the step's first): the teacher's weights are in
       the buffers when it fails; then a clean forward after the swap back */
    pl_rollback(&cfg_smart_bregman, 2, F_FORWARD, FROM_START, 1, REGOPT_ERR_FORWARD,
                "forward callback returned 7");
    pl_rollback(&cfg_smart_bregman, 2, F_FORWARD, FROM_START, 4, REGOPT_ERR_FORWARD,
                "returned 7");
    pl_rollback(&cfg_smart_bregman, 2, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT,
                "\"mid\"");
    /* everything: failures in SAM's perturbed half, at w + eps */
    pl_rollback(&cfg_everything, 2, F_BACKWARD, FROM_PERTURBED, 1, REGOPT_ERR_BACKWARD,
                "returned 9");
    pl_rollback(&cfg_everything, 3, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT,
                "not finite");
    pl_rollback(&cfg_everything, 2, F_FORWARD, FROM_END, 0, REGOPT_ERR_FORWARD, "returned 7");
}
END_TEST

/* ======================================================================== */
/* 6. Checkpoints do not carry the option                                   */
/* ======================================================================== */

static uint32_t pl_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t pl_u64(const unsigned char *p)
{
    return (uint64_t)pl_u32(p) | (uint64_t)pl_u32(p + 4) << 32;
}

/* The keys of the "options" section (checkpoint format 2: 24-byte entries
 * u32 key | u32 group | u32 type | u32 owner | value), and each entry's
 * owner (0xffffffff: the trainer or optimizer, else N of "reg.N"). */
static size_t pl_option_keys(const unsigned char *ck, size_t n, uint32_t *keys,
                             uint32_t *owners, size_t cap)
{
    uint32_t sections, i;
    ck_assert_uint_ge(n, 32);
    ck_assert_int_eq(memcmp(ck, "REGOPTCK", 8), 0);
    sections = pl_u32(ck + 12);
    ck_assert_uint_eq(pl_u64(ck + 16), n);
    for (i = 0; i < sections; i++) {
        const unsigned char *e = ck + 32 + 48 * (size_t)i;
        uint64_t off, size, count, j;
        char name[25];
        ck_assert_uint_le(32 + 48 * (size_t)(i + 1), n);
        memcpy(name, e, 24);
        name[24] = '\0';
        if (strcmp(name, "options") != 0)
            continue;
        off = pl_u64(e + 24);
        size = pl_u64(e + 32);
        ck_assert_uint_le(off + size, n);
        count = pl_u32(ck + off);
        ck_assert_uint_eq(size, 8 + 24 * count);
        ck_assert_uint_le(count, cap);
        for (j = 0; j < count; j++) {
            keys[j] = pl_u32(ck + off + 8 + 24 * j);
            owners[j] = pl_u32(ck + off + 8 + 24 * j + 12);
        }
        return (size_t)count;
    }
    ck_abort_msg("no options section");
    return 0;
}

static unsigned char *pl_save(pl_run *r, size_t *n)
{
    unsigned char *b;
    size_t w = 0;
    MUST(regopt_trainer_checkpoint_size(r->t, PL_ALL, n));
    b = malloc(*n);
    ck_assert_ptr_nonnull(b);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, PL_ALL, b, *n, &w));
    ck_assert_uint_eq(w, *n);
    return b;
}

START_TEST(checkpoint_does_not_carry_threads)
{
    pl_cfg c = cfg_everything;
    pl_run *a = pl_open(&c, NULL, 0), *b1, *b5, *one = pl_open(&c, NULL, 0);
    unsigned char *ck, *ck_one;
    size_t n, n_one, nkeys, i;
    uint32_t keys[512], owners[512];
    int has_lr = 0, has_loss = 0, has_rho = 0;
    int64_t v = 0;
    pl_snap s1, s5, sa, so;
    int step;

    pl_threads(a, 3);
    for (step = 0; step < 3; step++) {
        pl_must_step(a, step);
        pl_must_step(one, step);
    }
    ck = pl_save(a, &n);
    ck_one = pl_save(one, &n_one);
    /* the saves of a 3-thread and a 1-thread run are the same bytes */
    ck_assert_uint_eq(n, n_one);
    ck_assert_int_eq(memcmp(ck, ck_one, n), 0);
    nkeys = pl_option_keys(ck, n, keys, owners, sizeof keys / sizeof keys[0]);
    for (i = 0; i < nkeys; i++) {
        ck_assert_msg(keys[i] != REGOPT_TRAINER_THREADS, "trainer.threads saved (entry %zu)",
                      i);
        has_lr |= keys[i] == REGOPT_OPT_LR && owners[i] == 0xffffffffu;
        has_loss |= keys[i] == REGOPT_TRAINER_LOSS && owners[i] == 0xffffffffu;
        /* sam.rho belongs to a regularizer section, not the trainer */
        has_rho |= keys[i] == REGOPT_SAM_RHO && owners[i] != 0xffffffffu;
    }
    ck_assert_msg(has_lr && has_loss && has_rho, "the options section was not read right");

    /* into a one-thread trainer and a five-thread one, options and params */
    b1 = pl_open(&c, NULL, 0);
    b5 = pl_open(&c, NULL, 0);
    pl_threads(b5, 5);
    TMUST(b1->t, regopt_trainer_load_buffer(b1->t, PL_ALL, ck, n));
    TMUST(b5->t, regopt_trainer_load_buffer(b5->t, PL_ALL, ck, n));
    MUST(regopt_trainer_get_int(b1->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 1);
    MUST(regopt_trainer_get_int(b5->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 5);
    /* a load without options leaves it too */
    TMUST(b5->t, regopt_trainer_load_buffer(b5->t, REGOPT_CHECKPOINT_PARAMS, ck, n));
    MUST(regopt_trainer_get_int(b5->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 5);

    /* training goes on bit for bit: loaded on 1 and 5 threads, and the
       uninterrupted runs on 3 and 1 */
    for (step = 3; step < 6; step++) {
        pl_must_step(b1, step);
        pl_must_step(b5, step);
        pl_must_step(a, step);
        pl_must_step(one, step);
    }
    pl_take(b1, &s1);
    pl_take(b5, &s5);
    pl_take(a, &sa);
    pl_take(one, &so);
    pl_same(&s5, &s1, "resumed on 5 threads against 1", 5);
    pl_same(&sa, &s1, "uninterrupted on 3 threads against resumed on 1", 3);
    pl_same(&so, &s1, "uninterrupted on 1 thread against resumed on 1", 1);
    pl_drop(&s1);
    pl_drop(&s5);
    pl_drop(&sa);
    pl_drop(&so);
    free(ck);
    free(ck_one);
    pl_close(a);
    pl_close(b1);
    pl_close(b5);
    pl_close(one);
}
END_TEST

/* ======================================================================== */
/* 7. Changing the thread count between steps                               */
/* ======================================================================== */

START_TEST(threads_change_between_steps)
{
    static const int plan[] = {1, 4, 2, 1, 4, 2, 7, 1, 3, 1};
    pl_cfg c = cfg_everything;
    pl_run *r = pl_open(&c, NULL, 0), *ref = pl_open(&c, NULL, 0);
    pl_snap s1, s2;
    size_t i;
    int base = pl_os_base();
    for (i = 0; i < sizeof plan / sizeof plan[0]; i++) {
        pl_threads(r, plan[i]);
        if (base > 0)
            ck_assert_int_eq(pl_os_threads_settle(base + plan[i] - 1), base + plan[i] - 1);
        pl_must_step(r, (int)i);
        pl_must_step(ref, (int)i);
        pl_take(r, &s1);
        pl_take(ref, &s2);
        pl_same(&s1, &s2, "after a step on the planned threads", (int)i);
        pl_drop(&s1);
        pl_drop(&s2);
    }
    pl_close(r);
    pl_close(ref);
}
END_TEST

/* ======================================================================== */
/* 8. Free joins the workers                                                */
/* ======================================================================== */

START_TEST(free_joins_workers)
{
    int i, base = pl_os_base();
    for (i = 0; i < 50; i++) {
        pl_run *r = pl_open(i % 3 ? &cfg_sam : &cfg_smart_bregman, NULL, 0);
        pl_threads(r, 8);
        if (i % 2)
            pl_must_step(r, i); /* workers have run and are spinning or asleep */
        if (i % 5 == 0) {
            pl_threads(r, 1 + i % 7);
            pl_threads(r, 8);
        }
        if (i % 4 == 1) {
            pl_must_step(r, i + 1);
            pl_must_step(r, i + 2);
        }
        pl_close(r); /* freed at once, or right after a step */
        if (base > 0)
            ck_assert_msg(pl_os_threads_settle(base) == base,
                          "cycle %d: %d threads left, %d before", i, pl_os_threads(), base);
    }
}
END_TEST

Suite *suite_pool(void)
{
    Suite *s = suite_create("pool");
    TCase *opt = tcase_create("option");
    TCase *same = tcase_create("identical");
    TCase *life = tcase_create("lifecycle");
    tcase_set_timeout(opt, 300); /* sanitizers and valgrind are slow */
    tcase_set_timeout(same, 300);
    tcase_set_timeout(life, 300);
    tcase_add_test(opt, threads_option);
    tcase_add_test(same, identical_adamw);
    tcase_add_test(same, identical_adam_amsgrad);
    tcase_add_test(same, identical_sgd_momentum_nesterov);
    tcase_add_test(same, identical_sgd_plain);
    tcase_add_test(same, identical_radam);
    tcase_add_test(same, identical_clipping);
    tcase_add_test(same, identical_sam);
    tcase_add_test(same, identical_asam);
    tcase_add_test(same, identical_gsam);
    tcase_add_test(same, identical_sam_m_sharpness);
    tcase_add_test(same, identical_smart_bregman);
    tcase_add_test(same, identical_rdrop);
    tcase_add_test(same, identical_everything);
    tcase_add_test(same, identical_small_model);
    tcase_add_test(same, identical_max_threads);
    tcase_add_test(same, workers_take_part);
    tcase_add_test(life, callbacks_on_the_calling_thread);
    tcase_add_test(life, no_allocation_in_steps);
    tcase_add_test(life, failed_pool_changes_nothing);
    tcase_add_test(life, rollback_backward_failure);
    tcase_add_test(life, rollback_nonfinite_gradient);
    tcase_add_test(life, rollback_teacher_and_smart_failure);
    tcase_add_test(life, checkpoint_does_not_carry_threads);
    tcase_add_test(life, threads_change_between_steps);
    tcase_add_test(life, free_joins_workers);
    suite_add_tcase(s, opt);
    suite_add_tcase(s, same);
    suite_add_tcase(s, life);
    return s;
}
