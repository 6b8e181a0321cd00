/* sam_rig.h — the rig of the SAM suites (check_sam.c, check_sam_step.c,
 * check_sam_rollback.c, check_sam_options.c): a quadratic host with two
 * weights, a linear host around test_host.h that honours row_offset, runs
 * over both, and the double-precision reference gradient. */
#ifndef REGOPT_SAM_RIG_H
#define REGOPT_SAM_RIG_H

#include "test_util.h"

#include "test_host.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A new SAM handle with its defaults, from allocator a (NULL: malloc). */
static inline regopt_regularizer *new_sam(const regopt_allocator *a)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *r = regopt_regularizer_create(REGOPT_REG_SAM, a, &st);
    ck_assert_msg(r != NULL, "regopt_regularizer_create(SAM) -> %s: %s",
                  regopt_status_string(st), regopt_last_error_message());
    ck_assert_int_eq(regopt_regularizer_get_kind(r), REGOPT_REG_SAM);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r));
    return r;
}

/* An integer statistic or option of a regularizer (the test fails if it
 * cannot be read). */
static inline int64_t rstat_int(const regopt_regularizer *r, regopt_key key)
{
    int64_t v = -12345;
    RMUST(r, regopt_regularizer_get_int(r, key, &v));
    return v;
}

/* ======================================================================== */
/* Quadratic host: L = 1/2 sum h_i w_i^2, h = [1, 10], one output row = L.  */
/* With `constant`, backward ignores w and adds g_clean or g_perturbed.     */
/* ======================================================================== */

#define QREC 32

typedef struct qhost {
    float w[2], g[2];
    float h[2];
    int constant;
    float gc[2], gp[2];
    int forwards, backwards;
    float seen[QREC][2];
    uint32_t flags[QREC];
} qhost;

static inline int q_forward(const regopt_pass *p, void *user)
{
    qhost *q = user;
    double L = 0.5 * ((double)q->h[0] * q->w[0] * q->w[0] + (double)q->h[1] * q->w[1] * q->w[1]);
    size_t i;
    if (q->forwards < QREC) {
        q->seen[q->forwards][0] = q->w[0];
        q->seen[q->forwards][1] = q->w[1];
        q->flags[q->forwards] = p->flags;
    }
    q->forwards++;
    for (i = 0; i < p->rows; i++)
        p->outputs[i] = (float)L;
    return 0;
}

static inline int q_backward(const regopt_pass *p, void *user)
{
    qhost *q = user;
    size_t i, k;
    q->backwards++;
    for (i = 0; i < p->rows; i++) {
        float d = p->d_outputs[i];
        for (k = 0; k < 2; k++) {
            float gk = q->constant ? ((p->flags & REGOPT_PASS_PERTURBED_WEIGHTS) ? q->gp[k]
                                                                                 : q->gc[k])
                                   : q->h[k] * q->w[k];
            q->g[k] += d * gk;
        }
    }
    return 0;
}

/* row_loss = z, d row_loss / dz = 1 */
static inline int q_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
                  float *row_loss, float *dz, void *user)
{
    size_t i;
    (void)b;
    (void)user;
    for (i = 0; i < rows * width; i++) {
        row_loss[i] = z[i];
        dz[i] = 1.0f;
    }
    return 0;
}

typedef struct qrun {
    qhost q;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *sam; /* created with the run, attached by the test */
    regopt_batch b[2];
} qrun;

/* split: two tensors of one element ("a" in group 0, "b" in group 1)
 * instead of one tensor "w" of two. The SAM handle is created with its
 * defaults but not attached yet. */
static inline qrun *qrun_open(regopt_optimizer_kind kind, double lr, double w0, double w1,
                              int split)
{
    qrun *r = calloc(1, sizeof *r);
    int i;
    ck_assert_ptr_nonnull(r);
    r->q.w[0] = (float)w0;
    r->q.w[1] = (float)w1;
    r->q.h[0] = 1.0f;
    r->q.h[1] = 10.0f;
    r->m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(r->m);
    if (split) {
        MUST(regopt_model_add_param(r->m, "a", r->q.w, r->q.g, 1, REGOPT_DTYPE_FLOAT32, 0));
        MUST(regopt_model_add_param(r->m, "b", r->q.w + 1, r->q.g + 1, 1, REGOPT_DTYPE_FLOAT32,
                                    1));
    } else {
        MUST(regopt_model_add_param(r->m, "w", r->q.w, r->q.g, 2, REGOPT_DTYPE_FLOAT32, 0));
    }
    MUST(regopt_model_set_output_width(r->m, 1));
    MUST(regopt_model_set_callbacks(r->m, q_forward, q_backward, &r->q, NULL));
    r->o = regopt_optimizer_create(kind, NULL, NULL);
    ck_assert_ptr_nonnull(r->o);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, lr));
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    MUST(regopt_trainer_set_loss_callback(r->t, q_loss, NULL, NULL));
    r->sam = new_sam(NULL);
    for (i = 0; i < 2; i++) {
        regopt_batch_init(&r->b[i]);
        r->b[i].data = &r->q;
        r->b[i].rows = 1;
    }
    return r;
}

static inline void qrun_close(qrun *r)
{
    regopt_trainer_free(r->t); /* detaches the SAM handle */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    regopt_regularizer_free(r->sam);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

/* A SAM option, on the handle (attached or not). */
static inline void qset(qrun *r, regopt_key key, double v)
{
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, key, v));
}

static inline void qstep(qrun *r, size_t count)
{
    TMUST(r->t, regopt_trainer_step(r->t, r->b, count));
}

/* ======================================================================== */
/* Linear host wrapper around test_host.h: honours row_offset, optional     */
/* dropout on the inputs drawn from pass->seed, records what each forward   */
/* saw (weights, flags, seed, rows).                                        */
/* ======================================================================== */

#define N 8
#define NW (TH_D * TH_K)
#define LROWS 32
#define LREC 64

typedef struct lrec {
    uint32_t flags;
    uint64_t seed;
    size_t row_offset, rows, mb;
    float w[NW], b[TH_K], watch[8];
} lrec;

typedef struct lhost {
    th_host h;
    float drop; /* dropout probability on the inputs, 0 = none */
    const float *watch;
    size_t nwatch;
    float xd[LROWS * TH_D];
    th_batch view;
    int nrec;
    lrec rec[LREC];
} lhost;

static inline int l_forward(const regopt_pass *p, void *user)
{
    lhost *l = user;
    const th_batch *b = p->batch;
    const float *x = b->x + p->row_offset * TH_D;
    regopt_pass q = *p;
    size_t i, n = p->rows * TH_D;
    float u[LROWS * TH_D];
    int drop = l->drop > 0.0f && (p->flags & REGOPT_PASS_TRAIN);
    if (n > LROWS * TH_D)
        return 99;
    if (drop && regopt_random_uniform(p->seed, 0, u, n) != REGOPT_OK)
        return 98;
    for (i = 0; i < n; i++)
        l->xd[i] = drop ? (u[i] >= l->drop ? x[i] / (1.0f - l->drop) : 0.0f) : x[i];
    if (l->nrec < LREC) {
        lrec *r = &l->rec[l->nrec++];
        r->flags = p->flags;
        r->seed = p->seed;
        r->row_offset = p->row_offset;
        r->rows = p->rows;
        r->mb = p->micro_batch;
        memcpy(r->w, l->h.w, sizeof r->w);
        memcpy(r->b, l->h.b, sizeof r->b);
        if (l->nwatch)
            memcpy(r->watch, l->watch, l->nwatch * sizeof(float));
    }
    l->view.x = l->xd;
    q.batch = &l->view;
    return th_forward(&q, &l->h);
}

static inline int l_backward(const regopt_pass *p, void *user)
{
    return th_backward(p, &((lhost *)user)->h);
}

typedef struct lrun {
    lhost l;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *sam; /* created with the run, attached by lrun_sam */
    float x[4 * N * TH_D];
    int32_t y[4 * N];
    th_batch hb[4];
    regopt_batch b[4];
    float extra[5], idle_g[2]; /* frozen[3] (no grad), idle[2] (grad never written) */
} lrun;

static inline lrun *lrun_open(regopt_optimizer_kind kind, double lr, const regopt_allocator *a,
                       int with_extra)
{
    lrun *r = calloc(1, sizeof *r);
    int i;
    ck_assert_ptr_nonnull(r);
    th_init(&r->l.h);
    r->m = regopt_model_create(a, NULL);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "W", r->l.h.w, r->l.h.gw, NW, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(r->m, "b", r->l.h.b, r->l.h.gb, TH_K, REGOPT_DTYPE_FLOAT32, 1));
    if (with_extra) {
        static const float init[5] = {1.5f, -2.0f, 0.25f, 0.75f, -1.25f};
        memcpy(r->extra, init, sizeof init);
        MUST(regopt_model_add_param(r->m, "frozen", r->extra, NULL, 3, REGOPT_DTYPE_FLOAT32, 0));
        MUST(regopt_model_add_param(r->m, "idle", r->extra + 3, r->idle_g, 2,
                                    REGOPT_DTYPE_FLOAT32, 2));
        r->l.watch = r->extra;
        r->l.nwatch = 5;
    }
    MUST(regopt_model_set_output_width(r->m, TH_K));
    MUST(regopt_model_set_callbacks(r->m, l_forward, l_backward, &r->l, NULL));
    r->o = regopt_optimizer_create(kind, a, NULL);
    ck_assert_ptr_nonnull(r->o);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, lr));
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    r->sam = new_sam(a);
    th_data(r->x, r->y, 4 * N, 0);
    for (i = 0; i < 4; i++)
        th_batch_of(&r->b[i], &r->hb[i], r->x + i * N * TH_D, r->y + i * N, N);
    return r;
}

static inline lrun *lrun_sam(regopt_optimizer_kind kind, double lr)
{
    lrun *r = lrun_open(kind, lr, NULL, 0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(r->sam), r->t);
    return r;
}

static inline void lrun_close(lrun *r)
{
    regopt_trainer_free(r->t); /* detaches the SAM handle */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    regopt_regularizer_free(r->sam);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

/* A SAM option, on the handle (attached or not). */
static inline void lset(lrun *r, regopt_key key, double v)
{
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, key, v));
}

static inline void lstep(lrun *r, size_t count)
{
    TMUST(r->t, regopt_trainer_step(r->t, r->b, count));
}

static inline int same_weights(const lrun *a, const lrun *b)
{
    return memcmp(a->l.h.w, b->l.h.w, sizeof a->l.h.w) == 0 &&
           memcmp(a->l.h.b, b->l.h.b, sizeof a->l.h.b) == 0;
}

/* Double-precision reference of the linear host with softmax cross-entropy:
 * adds to g[16] (W then b) the gradient of sum_{i in [r0, r0+n)} c_i CE_i
 * at weights p[16], c_i = wt_i * inv (wt NULL: 1); returns that loss. */
static inline double ref_grad(const double *p, const float *x, const int32_t *y, const float *wt,
                       size_t r0, size_t n, double inv, double *g)
{
    double loss = 0.0;
    size_t i, j, k;
    for (i = r0; i < r0 + n; i++) {
        double z[TH_K], mx = -1e300, se = 0.0, c = (wt ? wt[i] : 1.0) * inv;
        for (k = 0; k < TH_K; k++) {
            z[k] = p[NW + k];
            for (j = 0; j < TH_D; j++)
                z[k] += (double)x[i * TH_D + j] * p[j * TH_K + k];
            mx = z[k] > mx ? z[k] : mx;
        }
        for (k = 0; k < TH_K; k++)
            se += exp(z[k] - mx);
        loss += c * (mx + log(se) - z[y[i]]);
        for (k = 0; k < TH_K; k++) {
            double d = c * (exp(z[k] - mx) / se - (k == (size_t)y[i] ? 1.0 : 0.0));
            g[NW + k] += d;
            for (j = 0; j < TH_D; j++)
                g[j * TH_K + k] += (double)x[i * TH_D + j] * d;
        }
    }
    return loss;
}

static inline void params_of(const lrun *r, double *p)
{
    size_t i;
    for (i = 0; i < NW; i++)
        p[i] = r->l.h.w[i];
    for (i = 0; i < TH_K; i++)
        p[NW + i] = r->l.h.b[i];
}

static inline double norm16(const double *g)
{
    double s = 0.0;
    size_t i;
    for (i = 0; i < NW + TH_K; i++)
        s += g[i] * g[i];
    return sqrt(s);
}

#endif
