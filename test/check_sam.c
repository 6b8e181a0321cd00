/* check_sam.c — the SAM family (SAM, ASAM, GSAM, rho schedule, every-k,
 * m-sharpness, same/fresh seed): the reference vectors of docs/methods.md §9, call
 * order and flags, exact restore, rollback, options and allocation.
 * Expected values come from closed forms or from double-precision
 * references written here, never from the library's own output. */
#include "tests.h"
#include "test_util.h"

#include "test_host.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A new SAM handle with its defaults, from allocator a (NULL: malloc). */
static regopt_regularizer *new_sam(const regopt_allocator *a)
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
static int64_t rstat_int(const regopt_regularizer *r, regopt_key key)
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

static int q_forward(const regopt_pass *p, void *user)
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

static int q_backward(const regopt_pass *p, void *user)
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
static int q_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
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
static qrun *qrun_open(regopt_optimizer_kind kind, double lr, double w0, double w1, int split)
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

static void qrun_close(qrun *r)
{
    regopt_trainer_free(r->t); /* detaches the SAM handle */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    regopt_regularizer_free(r->sam);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

/* A SAM option, on the handle (attached or not). */
static void qset(qrun *r, regopt_key key, double v)
{
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, key, v));
}

static void qstep(qrun *r, size_t count)
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

static int l_forward(const regopt_pass *p, void *user)
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

static int l_backward(const regopt_pass *p, void *user)
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

static lrun *lrun_open(regopt_optimizer_kind kind, double lr, const regopt_allocator *a,
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

static lrun *lrun_sam(regopt_optimizer_kind kind, double lr)
{
    lrun *r = lrun_open(kind, lr, NULL, 0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(r->sam), r->t);
    return r;
}

static void lrun_close(lrun *r)
{
    regopt_trainer_free(r->t); /* detaches the SAM handle */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    regopt_regularizer_free(r->sam);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

/* A SAM option, on the handle (attached or not). */
static void lset(lrun *r, regopt_key key, double v)
{
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, key, v));
}

static void lstep(lrun *r, size_t count)
{
    TMUST(r->t, regopt_trainer_step(r->t, r->b, count));
}

static int same_weights(const lrun *a, const lrun *b)
{
    return memcmp(a->l.h.w, b->l.h.w, sizeof a->l.h.w) == 0 &&
           memcmp(a->l.h.b, b->l.h.b, sizeof a->l.h.b) == 0;
}

/* Double-precision reference of the linear host with softmax cross-entropy:
 * adds to g[16] (W then b) the gradient of sum_{i in [r0, r0+n)} c_i CE_i
 * at weights p[16], c_i = wt_i * inv (wt NULL: 1); returns that loss. */
static double ref_grad(const double *p, const float *x, const int32_t *y, const float *wt,
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

static void params_of(const lrun *r, double *p)
{
    size_t i;
    for (i = 0; i < NW; i++)
        p[i] = r->l.h.w[i];
    for (i = 0; i < TH_K; i++)
        p[NW + i] = r->l.h.b[i];
}

static double norm16(const double *g)
{
    double s = 0.0;
    size_t i;
    for (i = 0; i < NW + TH_K; i++)
        s += g[i] * g[i];
    return sqrt(s);
}

/* ======================================================================== */
/* 1. Reference vectors (docs/methods.md §9)                                */
/* ======================================================================== */

START_TEST(sam_reference_vector)
{
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 1.0, 1.0, 0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_RHO, 0.05);
    qstep(r, 1);
    near(r->q.w[0], 0.8995024814048951, 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], -0.049751859510494434, 1e-6, 1.0, "w1[1]");
    /* the host saw w0 + eps in the perturbed forward */
    ck_assert_int_eq(r->q.forwards, 2);
    ck_assert_int_eq(r->q.backwards, 2);
    ck_assert_uint_eq(r->q.flags[0], REGOPT_PASS_TRAIN);
    ck_assert_uint_eq(r->q.flags[1], REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
    near((double)r->q.seen[0][0], 1.0, 0.0, 1.0, "clean w[0]");
    near((double)r->q.seen[0][1], 1.0, 0.0, 1.0, "clean w[1]");
    near((double)r->q.seen[1][0] - 1.0, 0.004975185951049451, 1e-6, 1.0, "eps[0]");
    near((double)r->q.seen[1][1] - 1.0, 0.04975185951049451, 1e-6, 1.0, "eps[1]");
    /* the final gradient is g_sam */
    near(r->q.g[0], 1.0049751859510494, 1e-6, 1.0, "g_sam[0]");
    near(r->q.g[1], 10.497518595104944, 1e-6, 1.0, "g_sam[1]");
    /* statistics */
    near(rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS), 5.5, 1e-7, 1.0, "sam_clean_loss");
    near(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS), 6.014882394917377, 1e-6, 1.0,
         "sam_perturbed_loss");
    near(rstat(r->sam, REGOPT_STAT_SAM_SHARPNESS), 6.014882394917377 - 5.5, 1e-6, 1.0,
         "sam_sharpness");
    near(rstat(r->sam, REGOPT_STAT_SAM_SHARPNESS),
         rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS) - rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS),
         1e-12, 1.0, "sharpness = perturbed - clean");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), 10.04987562112089, 1e-9, 1.0,
         "sam_ascent_norm");
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.05);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 1.0);
    near(stat(r->t, REGOPT_STAT_LOSS), 5.5, 1e-7, 1.0, "stat.loss is L(w)");
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 2);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 1);
    qrun_close(r);
}
END_TEST

/* Ascent L2 term, base weight decay at the restored w, clipping on the final
 * gradient only: w0 = [1, 1], a = g + 0.5 w = [1.5, 10.5], eps = rho a/||a||,
 * g_sam = h (w0 + eps), w1 = w0 - lr (g_sam * clip + 0.2 w0). */
START_TEST(ascent_weight_decay_and_clipping)
{
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 1.0, 1.0, 0);
    double na = sqrt(1.5 * 1.5 + 10.5 * 10.5), e0 = 0.05 * 1.5 / na, e1 = 0.05 * 10.5 / na;
    double g0 = 1.0 + e0, g1 = 10.0 * (1.0 + e1), ng = sqrt(g0 * g0 + g1 * g1);
    double clip = 1.0 / (ng + 1e-6);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_WEIGHT_DECAY, 0.2));
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, 1.0));
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_ASCENT_WEIGHT_DECAY, 0.5);
    qstep(r, 1);
    near((double)r->q.seen[1][0] - 1.0, e0, 1e-6, 1.0, "eps[0]");
    near((double)r->q.seen[1][1] - 1.0, e1, 1e-6, 1.0, "eps[1]");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), na, 1e-7, 1.0, "ascent norm (unclipped)");
    near(stat(r->t, REGOPT_STAT_GRAD_NORM), ng, 1e-6, 1.0, "grad norm of g_sam");
    near(stat(r->t, REGOPT_STAT_CLIP_SCALE), clip, 1e-6, 1.0, "clip scale");
    near(r->q.w[0], 1.0 - 0.1 * (g0 * clip + 0.2), 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], 1.0 - 0.1 * (g1 * clip + 0.2), 1e-6, 1.0, "w1[1]");
    qrun_close(r);
}
END_TEST

START_TEST(asam_reference_vector)
{
    /* eta = 0 (davda54 adaptive=True); options set on the handle BEFORE attach */
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 2.0, 0.5, 0);
    qset(r, REGOPT_SAM_ADAPTIVE, 1);
    qset(r, REGOPT_SAM_ETA, 0.0);
    qset(r, REGOPT_SAM_RHO, 0.5);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_RHO), 0.5);
    qstep(r, 1);
    near(r->q.w[0], 1.7152001695995092, 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], -0.13249973500076706, 1e-6, 1.0, "w1[1]");
    near((double)r->q.seen[1][0] - 2.0, 0.8479983040049083, 1e-6, 1.0, "eps[0]");
    near((double)r->q.seen[1][1] - 0.5, 0.13249973500076692, 1e-6, 1.0, "eps[1]");
    /* ||T g|| = ||[2*2, 0.5*5]|| = sqrt(22.25) */
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), sqrt(22.25), 1e-9, 1.0, "ascent norm");
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.5);
    qrun_close(r);

    /* eta = 0.01, the default */
    r = qrun_open(REGOPT_SGD, 0.1, 2.0, 0.5, 0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_ETA), 0.01);
    qset(r, REGOPT_SAM_ADAPTIVE, 1);
    qset(r, REGOPT_SAM_RHO, 0.5);
    qstep(r, 1);
    ck_assert_uint_eq(r->q.flags[1], REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
    near((double)r->q.seen[1][0] - 2.0, 0.8486612518176859, 1e-6, 1.0, "eps[0], eta 0.01");
    near((double)r->q.seen[1][1] - 0.5, 0.13659116828654005, 1e-6, 1.0, "eps[1], eta 0.01");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), sqrt(4.02 * 4.02 + 2.55 * 2.55), 1e-7, 1.0,
         "ascent norm, eta 0.01");
    qrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 2. GSAM and rho following the learning rate                              */
/* ======================================================================== */

static qrun *gsam_run(double alpha)
{
    qrun *r = qrun_open(REGOPT_SGD, 1.0, 0.5, -0.25, 0);
    r->q.constant = 1;
    r->q.gc[0] = 1.0f;
    r->q.gc[1] = 10.0f;
    r->q.gp[0] = 3.0f;
    r->q.gp[1] = 9.0f;
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_GSAM, 1);
    qset(r, REGOPT_SAM_GSAM_ALPHA, alpha);
    return r;
}

START_TEST(gsam_reference_vector)
{
    qrun *r = gsam_run(0.4);
    qstep(r, 1);
    /* g_perp = [-2.1, 0.7]; direction g_p - 0.4 g_perp = [3.84, 8.72] */
    near(r->q.g[0], 3.84, 1e-6, 1.0, "direction[0]");
    near(r->q.g[1], 8.72, 1e-6, 1.0, "direction[1]");
    near(r->q.w[0], 0.5 - 3.84, 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], -0.25 - 8.72, 1e-6, 1.0, "w1[1]");
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    qrun_close(r);
    /* alpha = 0 is plain SAM: the update is g_p */
    r = gsam_run(0.0);
    qstep(r, 1);
    near(r->q.w[0], 0.5 - 3.0, 1e-6, 1.0, "alpha 0: w1[0]");
    near(r->q.w[1], -0.25 - 9.0, 1e-6, 1.0, "alpha 0: w1[1]");
    qrun_close(r);
    /* the default alpha is 0.4 */
    r = qrun_open(REGOPT_SGD, 1.0, 0.0, 0.0, 0);
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_GSAM_ALPHA), 0.4);
    qrun_close(r);
}
END_TEST

START_TEST(rho_follows_linear_schedule)
{
    /* lr 0.1, LINEAR, W = 2, T = 6, r = 0.1; rho 0.05, rho_min 0.01 */
    const double lr = 0.1, W = 2.0, T = 6.0, ratio = 0.1, rho = 0.05, rho_min = 0.01;
    qrun *r = qrun_open(REGOPT_SGD, lr, 1.0, 1.0, 0);
    int s;
    r->q.constant = 1;
    r->q.gc[0] = 1.0f;
    r->q.gc[1] = 10.0f;
    r->q.gp[0] = 0.5f;
    r->q.gp[1] = -0.5f;
    MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_SCHEDULE, REGOPT_SCHEDULE_LINEAR));
    MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_WARMUP_STEPS, 2));
    MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_TOTAL_STEPS, 6));
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MIN_LR_RATIO, ratio));
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_RHO, rho);
    qset(r, REGOPT_SAM_RHO_MIN, rho_min);
    qset(r, REGOPT_SAM_RHO_FOLLOWS_LR, 1);
    for (s = 0; s < 8; s++) {
        double t = s, f, lr_t, want, dx, dy;
        char what[64];
        if (t < W)
            f = t / W;
        else
            f = ratio + (1.0 - ratio) * fmax(0.0, (T - t) / (T - W));
        lr_t = lr * f;
        want = rho_min + (rho - rho_min) * (lr_t - lr * ratio) / (lr - lr * ratio);
        want = fmin(rho, fmax(rho_min, want)); /* clamped: warm-up has lr_t < lr_min */
        qstep(r, 1);
        snprintf(what, sizeof what, "sam_rho at step %d", s);
        near(rstat(r->sam, REGOPT_STAT_SAM_RHO), want, 1e-12, 1e-3, what);
        near(stat(r->t, REGOPT_STAT_LR), lr_t, 1e-12, 1e-3, "stat.lr");
        /* and the perturbation actually has that radius: eps = rho_t g/||g|| */
        dx = (double)r->q.seen[2 * s + 1][0] - r->q.seen[2 * s][0];
        dy = (double)r->q.seen[2 * s + 1][1] - r->q.seen[2 * s][1];
        snprintf(what, sizeof what, "||eps|| at step %d", s);
        near(sqrt(dx * dx + dy * dy), want, 1e-5, 1.0, what);
    }
    qrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 3. Exact restore                                                         */
/* ======================================================================== */

/* A host that adds a recorded gradient: a plain (no SAM) trainer over it
 * replays "base optimizer from the restored w with the final gradient". */
typedef struct rhost {
    float w[NW], b[TH_K], gw[NW], gb[TH_K];
    float rw[NW], rb[TH_K];
} rhost;

static int r_forward(const regopt_pass *p, void *user)
{
    (void)user;
    p->outputs[0] = 0.0f;
    return 0;
}

static int r_backward(const regopt_pass *p, void *user)
{
    rhost *h = user;
    float d = p->d_outputs[0];
    size_t i;
    for (i = 0; i < NW; i++)
        h->gw[i] += d * h->rw[i];
    for (i = 0; i < TH_K; i++)
        h->gb[i] += d * h->rb[i];
    return 0;
}

static void exact_restore(int adaptive)
{
    lrun *r = lrun_sam(REGOPT_ADAM, 0.05);
    rhost *h = calloc(1, sizeof *h);
    regopt_model *m = regopt_model_create(NULL, NULL);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAM, NULL, NULL);
    regopt_trainer *t;
    regopt_batch b;
    int s, i;
    memcpy(h->w, r->l.h.w, sizeof h->w);
    memcpy(h->b, r->l.h.b, sizeof h->b);
    MUST(regopt_model_add_param(m, "W", h->w, h->gw, NW, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(m, "b", h->b, h->gb, TH_K, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(m, 1));
    MUST(regopt_model_set_callbacks(m, r_forward, r_backward, h, NULL));
    MUST(regopt_optimizer_set_double(o, REGOPT_OPT_LR, 0.05));
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    MUST(regopt_trainer_set_loss_callback(t, q_loss, NULL, NULL));
    regopt_batch_init(&b);
    b.data = h;
    b.rows = 1;
    if (adaptive) {
        lset(r, REGOPT_SAM_ADAPTIVE, 1);
        lset(r, REGOPT_SAM_RHO, 0.5);
    }
    for (s = 0; s < 6; s++) {
        float w_before[NW], b_before[TH_K];
        memcpy(w_before, r->l.h.w, sizeof w_before);
        memcpy(b_before, r->l.h.b, sizeof b_before);
        r->l.nrec = 0;
        lstep(r, 2);
        ck_assert_int_eq(r->l.nrec, 4);
        for (i = 0; i < 4; i++) {
            const lrec *c = &r->l.rec[i];
            int same = memcmp(c->w, w_before, sizeof w_before) == 0 &&
                       memcmp(c->b, b_before, sizeof b_before) == 0;
            if (i < 2) /* clean passes of step s run at the weights step s-1 left */
                ck_assert_msg(same, "step %d: clean forward %d did not see the restored w", s,
                              i);
            else
                ck_assert_msg(!same && (c->flags & REGOPT_PASS_PERTURBED_WEIGHTS),
                              "step %d: perturbed forward %d saw unperturbed weights", s, i);
        }
        /* the update = the base optimizer from w_before with the final gradient */
        memcpy(h->rw, r->l.h.gw, sizeof h->rw);
        memcpy(h->rb, r->l.h.gb, sizeof h->rb);
        TMUST(t, regopt_trainer_step(t, &b, 1));
        ck_assert_msg(memcmp(h->w, r->l.h.w, sizeof h->w) == 0 &&
                          memcmp(h->b, r->l.h.b, sizeof h->b) == 0,
                      "step %d: weights differ from the base update at the restored w", s);
    }
    regopt_trainer_free(t);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    free(h);
    lrun_close(r);
}

START_TEST(restore_is_exact_sam)
{
    exact_restore(0);
}
END_TEST

START_TEST(restore_is_exact_asam)
{
    exact_restore(1);
}
END_TEST

/* ======================================================================== */
/* 4. Call order, flags, seeds                                              */
/* ======================================================================== */

START_TEST(call_order_and_flags)
{
    lrun *r = lrun_sam(REGOPT_SGD, 0.05);
    const th_call *c = r->l.h.calls;
    int i;
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_SAM_SAME_SEED), 1);
    lstep(r, 3);
    ck_assert_int_eq(r->l.h.ncalls, 12);
    for (i = 0; i < 12; i++) {
        int perturbed = i >= 6;
        ck_assert_int_eq(c[i].backward, i % 2);
        ck_assert_int_eq(c[i].slot, 0);
        ck_assert_uint_eq(c[i].micro_batch, (size_t)((i % 6) / 2));
        ck_assert_uint_eq(c[i].rows, N);
        ck_assert_uint_eq(c[i].flags, perturbed ? REGOPT_PASS_TRAIN |
                                                      REGOPT_PASS_PERTURBED_WEIGHTS
                                                : REGOPT_PASS_TRAIN);
    }
    for (i = 0; i < 3; i++) /* same seed: the perturbed pass repeats the clean one */
        ck_assert(c[6 + 2 * i].seed == c[2 * i].seed);
    ck_assert(c[0].seed != c[2].seed && c[2].seed != c[4].seed && c[0].seed != c[4].seed);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 6);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 6);
    lrun_close(r);

    /* fresh seeds */
    r = lrun_sam(REGOPT_SGD, 0.05);
    c = r->l.h.calls;
    lset(r, REGOPT_SAM_SAME_SEED, 0);
    lstep(r, 3);
    ck_assert_int_eq(r->l.h.ncalls, 12);
    {
        int j;
        for (i = 0; i < 3; i++) {
            ck_assert_uint_eq(c[6 + 2 * i].flags,
                              REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
            for (j = 0; j < 6; j++)
                if (j != 3 + i)
                    ck_assert_msg(c[6 + 2 * i].seed != c[2 * j].seed,
                                  "perturbed seed %d repeats forward %d", i, j);
        }
    }
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 6);
    lrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 5. rho = 0 with the same seed is the base optimizer                      */
/* ======================================================================== */

START_TEST(rho_zero_equals_base_optimizer)
{
    lrun *a = lrun_sam(REGOPT_ADAM, 0.05), *b = lrun_open(REGOPT_ADAM, 0.05, NULL, 0);
    lrun *c = lrun_sam(REGOPT_ADAM, 0.05);
    int s;
    a->l.drop = b->l.drop = c->l.drop = 0.3f;
    lset(a, REGOPT_SAM_RHO, 0.0);
    lset(c, REGOPT_SAM_RHO, 0.0);
    lset(c, REGOPT_SAM_SAME_SEED, 0);
    for (s = 0; s < 4; s++) {
        lstep(a, 2);
        lstep(b, 2);
        lstep(c, 2);
        ck_assert_msg(same_weights(a, b), "step %d: SAM with rho 0 differs from Adam", s);
        ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 4);
        ck_assert(memcmp(&(double){stat(a->t, REGOPT_STAT_LOSS)},
                         &(double){stat(b->t, REGOPT_STAT_LOSS)}, sizeof(double)) == 0);
    }
    /* the host's dropout really depends on the seed: fresh seeds differ */
    ck_assert(!same_weights(a, c));
    lrun_close(a);
    lrun_close(b);
    lrun_close(c);
}
END_TEST

/* ======================================================================== */
/* 6. SAM every k-th step                                                   */
/* ======================================================================== */

START_TEST(sam_every_k_steps)
{
    lrun *r = lrun_sam(REGOPT_SGD, 0.05);
    int s;
    lset(r, REGOPT_SAM_EVERY, 3);
    for (s = 0; s < 7; s++) {
        int before = r->l.h.forwards, due = s % 3 == 0, i;
        r->l.nrec = 0;
        lstep(r, 2);
        ck_assert_int_eq(r->l.h.forwards - before, due ? 4 : 2);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), due ? 4 : 2);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), due ? 4 : 2);
        ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), due);
        for (i = 0; i < r->l.nrec; i++)
            ck_assert_uint_eq(r->l.rec[i].flags & REGOPT_PASS_PERTURBED_WEIGHTS,
                              due && i >= 2 ? REGOPT_PASS_PERTURBED_WEIGHTS : 0u);
    }
    lrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 7. m-sharpness                                                           */
/* ======================================================================== */

START_TEST(m_sharpness_chunks_and_gradient)
{
    const size_t m = 3, count = 2;
    const double rho = 0.5;
    lrun *r = lrun_sam(REGOPT_SGD, 0.05);
    float wt[2 * N];
    double p0[NW + TH_K], total[NW + TH_K] = {0}, inv, wsum = 0.0, clean_loss = 0.0;
    size_t i, bi, r0, k = 0;
    for (i = 0; i < 2 * N; i++) {
        wt[i] = 0.5f + 0.25f * (float)(i % 5);
        wsum += wt[i];
    }
    r->b[0].weights = wt;
    r->b[1].weights = wt + N;
    inv = 1.0 / wsum;
    lset(r, REGOPT_SAM_M_ROWS, (double)m);
    lset(r, REGOPT_SAM_RHO, rho);
    params_of(r, p0);
    /* reference: every chunk ascends with its own gradient, the perturbed
     * gradients (each weighted as in the step loss) are summed */
    for (bi = 0; bi < count; bi++)
        for (r0 = 0; r0 < N; r0 += m) {
            size_t n = N - r0 < m ? N - r0 : m;
            const float *x = r->x + bi * N * TH_D;
            const int32_t *y = r->y + bi * N;
            double g[NW + TH_K] = {0}, pe[NW + TH_K], nrm;
            clean_loss += ref_grad(p0, x, y, wt + bi * N, r0, n, inv, g);
            nrm = norm16(g);
            for (i = 0; i < NW + TH_K; i++)
                pe[i] = p0[i] + rho * g[i] / (nrm + 1e-12);
            ref_grad(pe, x, y, wt + bi * N, r0, n, inv, total);
        }
    lstep(r, count);
    /* 3 chunks (3, 3, 2 rows) per micro-batch, clean then perturbed each */
    ck_assert_int_eq(r->l.nrec, 12);
    for (bi = 0; bi < count; bi++)
        for (r0 = 0; r0 < N; r0 += m, k += 2) {
            size_t n = N - r0 < m ? N - r0 : m;
            const lrec *c = &r->l.rec[k], *pc = &r->l.rec[k + 1];
            ck_assert_uint_eq(c->mb, bi);
            ck_assert_uint_eq(c->row_offset, r0);
            ck_assert_uint_eq(c->rows, n);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
            ck_assert_uint_eq(pc->mb, bi);
            ck_assert_uint_eq(pc->row_offset, r0);
            ck_assert_uint_eq(pc->rows, n);
            ck_assert_uint_eq(pc->flags, REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
            ck_assert(pc->seed == c->seed); /* same_seed default */
        }
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 12);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 12);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    near(rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS), clean_loss, 1e-6, 1.0, "clean loss");
    for (i = 0; i < NW; i++)
        near(r->l.h.gw[i], total[i], 1e-5, 0.1, "final gradient W");
    for (i = 0; i < TH_K; i++)
        near(r->l.h.gb[i], total[NW + i], 1e-5, 0.1, "final gradient b");
    /* and the update used it: w1 = w0 - lr * g */
    for (i = 0; i < NW; i++)
        near(r->l.h.w[i], p0[i] - 0.05 * total[i], 1e-6, 1.0, "w1");
    lrun_close(r);
}
END_TEST

START_TEST(m_at_least_rows_is_plain_sam)
{
    static const double ms[2] = {N, 1000};
    int k, s;
    for (k = 0; k < 2; k++) {
        lrun *a = lrun_sam(REGOPT_ADAM, 0.05), *b = lrun_sam(REGOPT_ADAM, 0.05);
        lset(a, REGOPT_SAM_M_ROWS, ms[k]);
        for (s = 0; s < 3; s++) {
            TMUST(a->t, regopt_trainer_step(a->t, &a->b[s], 1));
            TMUST(b->t, regopt_trainer_step(b->t, &b->b[s], 1));
            ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 2);
            ck_assert_msg(same_weights(a, b), "m = %g, step %d: differs from plain SAM", ms[k],
                          s);
        }
        ck_assert_uint_eq(a->l.rec[1].row_offset, 0);
        ck_assert_uint_eq(a->l.rec[1].rows, N);
        lrun_close(a);
        lrun_close(b);
    }
}
END_TEST

/* ======================================================================== */
/* 8. Gradient accumulation                                                 */
/* ======================================================================== */

START_TEST(accumulation_equals_one_big_batch)
{
    lrun *a = lrun_sam(REGOPT_ADAM, 0.05), *b = lrun_sam(REGOPT_ADAM, 0.05);
    regopt_batch big;
    th_batch hbig;
    int s;
    size_t i;
    th_batch_of(&big, &hbig, b->x, b->y, 2 * N);
    for (s = 0; s < 3; s++) {
        lstep(a, 2);
        TMUST(b->t, regopt_trainer_step(b->t, &big, 1));
        near(rstat(a->sam, REGOPT_STAT_SAM_CLEAN_LOSS), rstat(b->sam, REGOPT_STAT_SAM_CLEAN_LOSS),
             1e-6, 1.0, "clean loss");
        near(rstat(a->sam, REGOPT_STAT_SAM_PERTURBED_LOSS),
             rstat(b->sam, REGOPT_STAT_SAM_PERTURBED_LOSS), 1e-6, 1.0, "perturbed loss");
        near(rstat(a->sam, REGOPT_STAT_SAM_ASCENT_NORM), rstat(b->sam, REGOPT_STAT_SAM_ASCENT_NORM),
             1e-5, 1.0, "ascent norm");
    }
    for (i = 0; i < NW; i++)
        near(a->l.h.w[i], b->l.h.w[i], 1e-6, 1.0, "W");
    for (i = 0; i < TH_K; i++)
        near(a->l.h.b[i], b->l.h.b[i], 1e-6, 1.0, "b");
    lrun_close(a);
    lrun_close(b);
}
END_TEST

/* ======================================================================== */
/* 9. Zero gradient                                                         */
/* ======================================================================== */

START_TEST(zero_gradient_is_a_plain_step)
{
    int variant, s, i;
    for (variant = 0; variant < 3; variant++) {
        qrun *r = qrun_open(REGOPT_SGD, 0.1, 1.5, -2.0, 0);
        double w[2] = {1.5, -2.0};
        r->q.constant = 1; /* gc = gp = 0 */
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_WEIGHT_DECAY, 0.1));
        TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
        qset(r, REGOPT_SAM_DELTA, 0.0); /* 0/0 would be NaN */
        if (variant == 1) {
            qset(r, REGOPT_SAM_ADAPTIVE, 1);
            qset(r, REGOPT_SAM_ETA, 0.0);
        } else if (variant == 2) {
            qset(r, REGOPT_SAM_GSAM, 1);
        }
        for (s = 0; s < 3; s++) {
            int before = r->q.forwards;
            qstep(r, 2);
            ck_assert_int_eq(r->q.forwards - before, 2);
            for (i = before; i < r->q.forwards; i++)
                ck_assert_uint_eq(r->q.flags[i], REGOPT_PASS_TRAIN);
            ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 0);
            ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
            ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 2);
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), 0.0);
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_SHARPNESS), 0.0);
            ck_assert(isfinite(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS)));
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS),
                                rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS));
            for (i = 0; i < 2; i++) { /* only weight decay: w -= lr * wd * w */
                w[i] -= 0.1 * 0.1 * w[i];
                ck_assert(isfinite(r->q.w[i]));
                near(r->q.w[i], w[i], 1e-6, 1.0, "weight decay only");
            }
        }
        qrun_close(r);
    }
}
END_TEST

/* ======================================================================== */
/* 10. Frozen and idle tensors                                              */
/* ======================================================================== */

START_TEST(frozen_and_idle_tensors_are_not_perturbed)
{
    int adaptive, s, i;
    for (adaptive = 0; adaptive < 2; adaptive++) {
        lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 1);
        float orig[5];
        memcpy(orig, r->extra, sizeof orig);
        TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
        if (adaptive) {
            lset(r, REGOPT_SAM_ADAPTIVE, 1);
            lset(r, REGOPT_SAM_RHO, 0.5);
        }
        for (s = 0; s < 3; s++) {
            double p[NW + TH_K], g[NW + TH_K] = {0};
            params_of(r, p);
            ref_grad(p, r->x, r->y, NULL, 0, N, 1.0 / N, g);
            r->l.nrec = 0;
            lstep(r, 1);
            ck_assert_int_eq(r->l.nrec, 2);
            ck_assert(memcmp(r->l.rec[1].w, r->l.rec[0].w, sizeof r->l.rec[0].w) != 0);
            for (i = 0; i < 2; i++)
                ck_assert_msg(memcmp(r->l.rec[i].watch, orig, sizeof orig) == 0,
                              "adaptive %d step %d: frozen/idle tensor moved in forward %d",
                              adaptive, s, i);
            if (!adaptive) /* the frozen and idle tensors add nothing to the norm */
                near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), norm16(g), 1e-5, 0.0,
                     "ascent norm over W and b only");
        }
        ck_assert(memcmp(r->extra, orig, sizeof orig) == 0);
        ck_assert_float_eq(r->idle_g[0], 0.0f);
        ck_assert_float_eq(r->idle_g[1], 0.0f);
        lrun_close(r);
    }
}
END_TEST

/* ======================================================================== */
/* 11. Rollback when a perturbed pass fails                                 */
/* ======================================================================== */

enum fault { F_FORWARD, F_BACKWARD, F_NAN_OUTPUT, F_INF_GRAD };

typedef struct snapshot {
    float w[NW], b[TH_K];
    int64_t step;
    double loss;
} snapshot;

static void snap(const lrun *r, snapshot *s)
{
    memcpy(s->w, r->l.h.w, sizeof s->w);
    memcpy(s->b, r->l.h.b, sizeof s->b);
    s->step = stat_int(r->t, REGOPT_STAT_STEP);
    s->loss = stat(r->t, REGOPT_STAT_LOSS);
}

static void same_bits(const snapshot *a, const snapshot *b, const char *what)
{
    ck_assert_msg(memcmp(a->w, b->w, sizeof a->w) == 0, "%s: W differs", what);
    ck_assert_msg(memcmp(a->b, b->b, sizeof a->b) == 0, "%s: b differs", what);
    ck_assert_int_eq(a->step, b->step);
    ck_assert_msg(memcmp(&a->loss, &b->loss, sizeof a->loss) == 0, "%s: stat.loss differs",
                  what);
}

/* `at` is the 1-based forward (or backward) call within the failing step. */
static void sam_rollback(int m_rows, int gsam, enum fault f, int at, regopt_status want,
                         const char *words)
{
    lrun *bad = lrun_sam(REGOPT_ADAM, 0.05), *good = lrun_sam(REGOPT_ADAM, 0.05);
    snapshot before, after, x, g;
    int i;
    lrun *both[2];
    both[0] = bad;
    both[1] = good;
    for (i = 0; i < 2; i++) {
        lset(both[i], REGOPT_SAM_M_ROWS, m_rows);
        lset(both[i], REGOPT_SAM_GSAM, gsam);
        lset(both[i], REGOPT_SAM_RHO, 0.2);
    }
    for (i = 0; i < 3; i++) {
        lstep(bad, 2);
        lstep(good, 2);
    }
    snap(bad, &before);
    switch (f) {
    case F_FORWARD: bad->l.h.fail_forward = bad->l.h.forwards + at; break;
    case F_BACKWARD: bad->l.h.fail_backward = bad->l.h.backwards + at; break;
    case F_NAN_OUTPUT: bad->l.h.nan_output = bad->l.h.forwards + at; break;
    case F_INF_GRAD: bad->l.h.inf_grad = bad->l.h.backwards + at; break;
    }
    bad->l.nrec = 0;
    ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), want);
    ck_assert_msg(strstr(regopt_trainer_message(bad->t), words) != NULL, "message \"%s\"",
                  regopt_trainer_message(bad->t));
    /* the fault did hit a pass at perturbed weights */
    ck_assert(bad->l.nrec >= 2);
    ck_assert(bad->l.rec[bad->l.nrec - 1].flags & REGOPT_PASS_PERTURBED_WEIGHTS);
    ck_assert(memcmp(bad->l.rec[bad->l.nrec - 1].w, before.w, sizeof before.w) != 0);
    snap(bad, &after);
    same_bits(&before, &after, "after the failed step");
    bad->l.h.fail_forward = bad->l.h.fail_backward = bad->l.h.nan_output = 0;
    bad->l.h.inf_grad = 0;
    for (i = 0; i < 3; i++) {
        lstep(bad, 2);
        lstep(good, 2);
    }
    snap(bad, &x);
    snap(good, &g);
    same_bits(&x, &g, "after continuing");
    lrun_close(bad);
    lrun_close(good);
}

START_TEST(rollback_perturbed_forward)
{
    /* forwards per step: clean 1, 2, perturbed 3, 4 */
    sam_rollback(0, 0, F_FORWARD, 4, REGOPT_ERR_FORWARD, "forward callback returned 7");
    sam_rollback(0, 0, F_FORWARD, 3, REGOPT_ERR_FORWARD, "micro-batch 0");
    /* m-sharpness, 3 chunks per micro-batch: forward 8 = micro-batch 1,
     * chunk 0, perturbed, after three chunks were accumulated */
    sam_rollback(3, 0, F_FORWARD, 8, REGOPT_ERR_FORWARD, "micro-batch 1");
}
END_TEST

START_TEST(rollback_perturbed_backward)
{
    sam_rollback(0, 0, F_BACKWARD, 3, REGOPT_ERR_BACKWARD, "backward callback returned 9");
    sam_rollback(0, 1, F_BACKWARD, 4, REGOPT_ERR_BACKWARD, "micro-batch 1");
    sam_rollback(3, 1, F_BACKWARD, 10, REGOPT_ERR_BACKWARD, "backward callback returned 9");
}
END_TEST

START_TEST(rollback_perturbed_nonfinite)
{
    sam_rollback(0, 0, F_NAN_OUTPUT, 4, REGOPT_ERR_NONFINITE_LOSS, "micro-batch 1");
    sam_rollback(0, 0, F_INF_GRAD, 4, REGOPT_ERR_NONFINITE_GRADIENT, "not finite");
}
END_TEST

/* ======================================================================== */
/* 12. Options                                                              */
/* ======================================================================== */

typedef struct samkey {
    regopt_key key;
    const char *name;
    int type;
    double min, max, def;
} samkey;

/* As documented in regopt.h. */
static const samkey sam_keys[] = {
    {REGOPT_SAM_RHO, "sam.rho", REGOPT_TYPE_DOUBLE, 0, 1e3, 0.05},
    {REGOPT_SAM_DELTA, "sam.delta", REGOPT_TYPE_DOUBLE, 0, 1, 1e-12},
    {REGOPT_SAM_ADAPTIVE, "sam.adaptive", REGOPT_TYPE_INT, 0, 1, 0},
    {REGOPT_SAM_ETA, "sam.eta", REGOPT_TYPE_DOUBLE, 0, 1e3, 0.01},
    {REGOPT_SAM_GSAM, "sam.gsam", REGOPT_TYPE_INT, 0, 1, 0},
    {REGOPT_SAM_GSAM_ALPHA, "sam.gsam_alpha", REGOPT_TYPE_DOUBLE, 0, 1e3, 0.4},
    {REGOPT_SAM_RHO_MIN, "sam.rho_min", REGOPT_TYPE_DOUBLE, 0, 1e3, 0},
    {REGOPT_SAM_RHO_FOLLOWS_LR, "sam.rho_follows_lr", REGOPT_TYPE_INT, 0, 1, 0},
    {REGOPT_SAM_EVERY, "sam.every", REGOPT_TYPE_INT, 1, 2147483648.0, 1},
    {REGOPT_SAM_M_ROWS, "sam.m_rows", REGOPT_TYPE_INT, 0, 2147483648.0, 0},
    {REGOPT_SAM_SAME_SEED, "sam.same_seed", REGOPT_TYPE_INT, 0, 1, 1},
    {REGOPT_SAM_ASCENT_WEIGHT_DECAY, "sam.ascent_weight_decay", REGOPT_TYPE_DOUBLE, 0, 1e3, 0},
    {REGOPT_SAM_SYNC_ASCENT, "sam.sync_ascent", REGOPT_TYPE_INT, 0, 1, 0},
};

static void refused(regopt_regularizer *r, const samkey *k, double v, double keep)
{
    regopt_status st = regopt_regularizer_set_double(r, k->key, v);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %.17g: %s", k->name, v,
                  regopt_status_string(st));
    ck_assert_msg(strstr(regopt_regularizer_message(r), k->name) != NULL,
                  "%s = %g: message \"%s\" does not name the key", k->name, v,
                  regopt_regularizer_message(r));
    ck_assert_double_eq(rstat(r, k->key), keep);
}

START_TEST(sam_options_bounds_and_defaults)
{
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    size_t i;
    for (i = 0; i < sizeof sam_keys / sizeof sam_keys[0]; i++) {
        const samkey *k = &sam_keys[i];
        const char *name = NULL;
        int type = 0;
        double mn = -1, mx = -1, def = -1, tv = -1;
        int64_t iv = -1;
        uint32_t flags = 99;
        regopt_key found = (regopt_key)0;
        MUST(regopt_key_info(k->key, &name, &type, &mn, &mx, &def, &flags));
        ck_assert_str_eq(name, k->name);
        ck_assert_int_eq(type, k->type);
        ck_assert_double_eq(mn, k->min);
        ck_assert_double_eq(mx, k->max);
        ck_assert_double_eq(def, k->def);
        ck_assert_uint_eq(flags, 0);
        MUST(regopt_key_from_name(k->name, &found));
        ck_assert_int_eq(found, k->key);
        /* a new handle holds the default (before it is attached) */
        ck_assert_double_eq(rstat(r->sam, k->key), def);
        /* 1.0: method keys are no trainer keys any more */
        ck_assert_int_eq(regopt_trainer_set_double(r->t, k->key, k->def),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_trainer_set_int(r->t, k->key, (int64_t)k->min),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_trainer_get_double(r->t, k->key, &tv), REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_trainer_get_int(r->t, k->key, &iv), REGOPT_ERR_UNKNOWN_KEY);
    }
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    for (i = 0; i < sizeof sam_keys / sizeof sam_keys[0]; i++) {
        const samkey *k = &sam_keys[i];
        regopt_regularizer *s = r->sam;
        ck_assert_double_eq(rstat(s, k->key), k->def);
        RMUST(s, regopt_regularizer_set_double(s, k->key, k->min));
        ck_assert_double_eq(rstat(s, k->key), k->min);
        RMUST(s, regopt_regularizer_set_double(s, k->key, k->max));
        ck_assert_double_eq(rstat(s, k->key), k->max);
        if (k->type == REGOPT_TYPE_INT) {
            int64_t v = -1;
            RMUST(s, regopt_regularizer_set_int(s, k->key, (int64_t)k->min));
            RMUST(s, regopt_regularizer_get_int(s, k->key, &v));
            ck_assert_int_eq(v, (int64_t)k->min);
            ck_assert_int_eq(regopt_regularizer_set_int(s, k->key, (int64_t)k->min - 1),
                             REGOPT_ERR_OUT_OF_RANGE);
            ck_assert_int_eq(regopt_regularizer_set_int(s, k->key, (int64_t)k->max + 1),
                             REGOPT_ERR_OUT_OF_RANGE);
            refused(s, k, k->min - 1.0, k->min);
            refused(s, k, k->max + 1.0, k->min);
            refused(s, k, k->min + 0.5, k->min);
            RMUST(s, regopt_regularizer_set_double(s, k->key, k->max));
        } else {
            refused(s, k, nextafter(k->min, -INFINITY), k->max);
            refused(s, k, nextafter(k->max, INFINITY), k->max);
        }
        refused(s, k, NAN, k->max);
        refused(s, k, INFINITY, k->max);
        refused(s, k, -INFINITY, k->max);
        RMUST(s, regopt_regularizer_set_double(s, k->key, k->def));
        ck_assert_double_eq(rstat(s, k->key), k->def);
        /* still no trainer key while SAM is attached */
        ck_assert_int_eq(regopt_trainer_set_double(r->t, k->key, k->def),
                         REGOPT_ERR_UNKNOWN_KEY);
    }
    lrun_close(r);
}
END_TEST

/* The statistics of the SAM handle: numbers, names, read-only, 0 before the
 * first step after attach; the trainer does not serve them. */
START_TEST(sam_statistics_keys)
{
    static const struct { regopt_key key; int value; const char *name; } stats[] = {
        {REGOPT_STAT_SAM_CLEAN_LOSS, 1090, "sam.clean_loss"},
        {REGOPT_STAT_SAM_PERTURBED_LOSS, 1091, "sam.perturbed_loss"},
        {REGOPT_STAT_SAM_SHARPNESS, 1092, "sam.sharpness"},
        {REGOPT_STAT_SAM_ASCENT_NORM, 1093, "sam.ascent_norm"},
        {REGOPT_STAT_SAM_RHO, 1094, "sam.rho_used"},
        {REGOPT_STAT_SAM_APPLIED, 1095, "sam.applied"},
    };
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    size_t i;
    for (i = 0; i < sizeof stats / sizeof stats[0]; i++) {
        const char *name = NULL;
        uint32_t flags = 0;
        regopt_key found = (regopt_key)0;
        double v = -1;
        ck_assert_int_eq(stats[i].key, stats[i].value);
        MUST(regopt_key_info(stats[i].key, &name, NULL, NULL, NULL, NULL, &flags));
        ck_assert_str_eq(name, stats[i].name);
        ck_assert(flags & REGOPT_KEY_READ_ONLY);
        MUST(regopt_key_from_name(stats[i].name, &found));
        ck_assert_int_eq(found, stats[i].key);
        ck_assert_double_eq(rstat(r->sam, stats[i].key), 0.0);
        ck_assert_int_eq(regopt_regularizer_set_double(r->sam, stats[i].key, 1.0),
                         REGOPT_ERR_STATE);
        ck_assert_int_eq(regopt_trainer_get_double(r->t, stats[i].key, &v),
                         REGOPT_ERR_UNKNOWN_KEY);
    }
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    for (i = 0; i < sizeof stats / sizeof stats[0]; i++)
        ck_assert_double_eq(rstat(r->sam, stats[i].key), 0.0);
    lstep(r, 1);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 1.0);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.05);
    ck_assert(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM) > 0.0);
    /* the trainer's own statistics stay on the trainer */
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    lrun_close(r);
}
END_TEST

START_TEST(regularizer_attach_and_detach)
{
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    regopt_regularizer *sam2 = new_sam(NULL);
    regopt_status st = REGOPT_OK;
    static const int bad_kinds[] = {0, 1000, 99, -1};
    size_t i;
    ck_assert_int_eq(regopt_trainer_detach(r->t, r->sam), REGOPT_ERR_STATE);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(r->t, 0));
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(r->sam), r->t);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(r->t, 0), r->sam);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(r->t, 1));
    /* the same handle twice, and a second SAM: refused, nothing changes */
    ck_assert_int_eq(regopt_trainer_attach(r->t, r->sam), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_attach(r->t, sam2), REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "weight-side") != NULL,
                  "message \"%s\"", regopt_trainer_message(r->t));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam2));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    lset(r, REGOPT_SAM_RHO, 0.07); /* set while attached */
    lstep(r, 1);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    TMUST(r->t, regopt_trainer_detach(r->t, r->sam));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    ck_assert_int_eq(regopt_trainer_detach(r->t, r->sam), REGOPT_ERR_STATE);
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_RHO), 0.07); /* options are kept */
    lstep(r, 1);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 1);
    /* kinds that do not exist */
    for (i = 0; i < sizeof bad_kinds / sizeof bad_kinds[0]; i++) {
        st = REGOPT_OK;
        ck_assert_ptr_null(
            regopt_regularizer_create((regopt_regularizer_kind)bad_kinds[i], NULL, &st));
        ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    }
    ck_assert_int_eq(regopt_trainer_attach(NULL, r->sam), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_detach(NULL, r->sam), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_attach(r->t, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_detach(r->t, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->sam));
    /* on again after being off: same handle, options kept, statistics reset */
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 0.0);
    lstep(r, 2);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 4);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.07);
    /* another SAM handle may take the place once the first one is detached */
    TMUST(r->t, regopt_trainer_detach(r->t, r->sam));
    TMUST(r->t, regopt_trainer_attach(r->t, sam2));
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(r->t, 0), sam2);
    lstep(r, 1);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    ck_assert_double_eq(rstat(sam2, REGOPT_STAT_SAM_RHO), 0.05);
    lrun_close(r); /* the trainer detaches sam2 */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam2));
    regopt_regularizer_free(sam2);
}
END_TEST

START_TEST(group_sam_adaptive_key)
{
    lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 0);
    regopt_regularizer *s = r->sam;
    const char *name = NULL;
    int type = 0;
    double mn = -1, mx = -1, def = -1, v = -1;
    uint32_t flags = 0;
    regopt_key found = (regopt_key)0;
    ck_assert_int_eq(REGOPT_SAM_GROUP_ADAPTIVE, 1050);
    MUST(regopt_key_info(REGOPT_SAM_GROUP_ADAPTIVE, &name, &type, &mn, &mx, &def, &flags));
    ck_assert_str_eq(name, "sam.group_adaptive");
    ck_assert_int_eq(type, REGOPT_TYPE_INT);
    ck_assert_double_eq(mn, 0.0);
    ck_assert_double_eq(mx, 1.0);
    ck_assert_double_eq(def, 1.0);
    ck_assert(flags & REGOPT_KEY_GROUP);
    MUST(regopt_key_from_name("sam.group_adaptive", &found));
    ck_assert_int_eq(found, REGOPT_SAM_GROUP_ADAPTIVE);
    ck_assert_int_eq(regopt_key_from_name("group.sam_adaptive", &found), REGOPT_ERR_UNKNOWN_KEY);
    RMUST(s, regopt_regularizer_get_group(s, 0, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(s, regopt_regularizer_get_group(s, REGOPT_MAX_GROUPS - 1, REGOPT_SAM_GROUP_ADAPTIVE,
                                          &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(s, regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 0.0));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 0.0);
    RMUST(s, regopt_regularizer_get_group(s, 4, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(s, regopt_regularizer_set_group(s, REGOPT_MAX_GROUPS - 1, REGOPT_SAM_GROUP_ADAPTIVE,
                                          0.0));
    ck_assert_int_eq(regopt_regularizer_set_group(s, -1, REGOPT_SAM_GROUP_ADAPTIVE, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(
        regopt_regularizer_set_group(s, REGOPT_MAX_GROUPS, REGOPT_SAM_GROUP_ADAPTIVE, 0.0),
        REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(
        regopt_regularizer_get_group(s, REGOPT_MAX_GROUPS, REGOPT_SAM_GROUP_ADAPTIVE, &v),
        REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 0.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 2.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, -1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(s), "sam.group_adaptive"));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 0.0);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 0, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_group(s, 0, REGOPT_SAM_RHO, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_group(s, 0, REGOPT_SAM_GROUP_ADAPTIVE, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_set_group(NULL, 0, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_group(NULL, 0, REGOPT_SAM_GROUP_ADAPTIVE, &v),
                     REGOPT_ERR_NULL_POINTER);
    /* a group key is no plain key, of the handle or of the trainer */
    ck_assert_int_eq(regopt_regularizer_set_double(s, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    /* nor an optimizer group key */
    ck_assert_int_eq(regopt_optimizer_set_group(r->o, 0, REGOPT_SAM_GROUP_ADAPTIVE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    /* group settings survive attach and can change while attached */
    TMUST(r->t, regopt_trainer_attach(r->t, s));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 0.0);
    RMUST(s, regopt_regularizer_set_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, 1.0));
    RMUST(s, regopt_regularizer_get_group(s, 5, REGOPT_SAM_GROUP_ADAPTIVE, &v));
    ck_assert_double_eq(v, 1.0);
    lrun_close(r);
}
END_TEST

START_TEST(asam_skips_non_adaptive_groups)
{
    /* "a" = 2 in group 0 (adaptive), "b" = 0.5 in group 1 (not): g = [2, 5],
     * T = [2.01, 1], ||T g|| = ||[4.02, 5]||, eps = rho T^2 g / ||T g|| */
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 2.0, 0.5, 1);
    double nrm = sqrt(4.02 * 4.02 + 25.0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_ADAPTIVE, 1);
    qset(r, REGOPT_SAM_RHO, 0.5);
    RMUST(r->sam, regopt_regularizer_set_group(r->sam, 1, REGOPT_SAM_GROUP_ADAPTIVE, 0.0));
    qstep(r, 1);
    near((double)r->q.seen[1][0] - 2.0, 0.5 * 2.01 * 2.01 * 2.0 / nrm, 1e-6, 1.0, "eps a");
    near((double)r->q.seen[1][1] - 0.5, 0.5 * 5.0 / nrm, 1e-6, 1.0, "eps b (unscaled)");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), nrm, 1e-7, 1.0, "ascent norm");
    qrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 13. No allocation in steps                                               */
/* ======================================================================== */


START_TEST(no_allocation_in_sam_steps)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    lrun *r = lrun_open(REGOPT_ADAM, 0.05, &a, 0);
    long before;
    int i;
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    lset(r, REGOPT_SAM_M_ROWS, 3);
    lset(r, REGOPT_SAM_GSAM, 1);
    lset(r, REGOPT_SAM_ADAPTIVE, 1);
    lstep(r, 4);
    before = c.allocs;
    for (i = 0; i < 12; i++)
        lstep(r, (size_t)(1 + i % 4));
    ck_assert_int_eq(c.allocs, before);
    /* whole-step SAM with every 2 */
    lset(r, REGOPT_SAM_M_ROWS, 0);
    lset(r, REGOPT_SAM_GSAM, 0);
    lset(r, REGOPT_SAM_EVERY, 2);
    before = c.allocs;
    for (i = 0; i < 8; i++)
        lstep(r, (size_t)(1 + i % 4));
    ck_assert_int_eq(c.allocs, before);
    lrun_close(r);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

Suite *suite_sam(void)
{
    Suite *s = suite_create("sam");
    TCase *tc = tcase_create("reference");
    tcase_add_test(tc, sam_reference_vector);
    tcase_add_test(tc, asam_reference_vector);
    tcase_add_test(tc, ascent_weight_decay_and_clipping);
    tcase_add_test(tc, gsam_reference_vector);
    tcase_add_test(tc, rho_follows_linear_schedule);
    tcase_add_test(tc, asam_skips_non_adaptive_groups);
    suite_add_tcase(s, tc);
    tc = tcase_create("step");
    tcase_add_test(tc, restore_is_exact_sam);
    tcase_add_test(tc, restore_is_exact_asam);
    tcase_add_test(tc, call_order_and_flags);
    tcase_add_test(tc, rho_zero_equals_base_optimizer);
    tcase_add_test(tc, sam_every_k_steps);
    tcase_add_test(tc, m_sharpness_chunks_and_gradient);
    tcase_add_test(tc, m_at_least_rows_is_plain_sam);
    tcase_add_test(tc, accumulation_equals_one_big_batch);
    tcase_add_test(tc, zero_gradient_is_a_plain_step);
    tcase_add_test(tc, frozen_and_idle_tensors_are_not_perturbed);
    suite_add_tcase(s, tc);
    tc = tcase_create("rollback");
    tcase_add_test(tc, rollback_perturbed_forward);
    tcase_add_test(tc, rollback_perturbed_backward);
    tcase_add_test(tc, rollback_perturbed_nonfinite);
    suite_add_tcase(s, tc);
    tc = tcase_create("options");
    tcase_add_test(tc, sam_options_bounds_and_defaults);
    tcase_add_test(tc, sam_statistics_keys);
    tcase_add_test(tc, regularizer_attach_and_detach);
    tcase_add_test(tc, group_sam_adaptive_key);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_in_sam_steps);
    suite_add_tcase(s, tc);
    return s;
}
