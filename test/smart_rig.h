/* smart_rig.h — the rig of the SMART suites (check_smart*.c): a linear
 * model over input embeddings, z_i = b + A sum_t x_{iT+t} with
 * x = e + input_perturbation (T embedding rows per output row), that
 * records every pass; runs over it with SMART, Bregman and SAM; batches.
 * The double-precision references: smart_ref.h. */
#ifndef REGOPT_SMART_RIG_H
#define REGOPT_SMART_RIG_H

#include "test_util.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SM_MUST(call)                                                                      \
    do {                                                                                   \
        regopt_status st_ = (call);                                                        \
        ck_assert_msg(st_ == REGOPT_OK, "%s -> %s", #call, regopt_status_string(st_));     \
    } while (0)

#define SM_TMUST(t, call)                                                                  \
    do {                                                                                   \
        regopt_status st_ = (call);                                                        \
        ck_assert_msg(st_ == REGOPT_OK, "%s -> %s: %s", #call, regopt_status_string(st_),  \
                      regopt_trainer_message(t));                                          \
    } while (0)

/* |got - want| <= tol * max(|want|, floor) */
static inline void sm_near(double got, double want, double tol, double floor_, const char *what,
                    int idx)
{
    double m = fabs(want) > floor_ ? fabs(want) : floor_;
    ck_assert_msg(fabs(got - want) <= tol * m, "%s[%d]: got %.17g, want %.17g (tol %g)", what,
                  idx, got, want, tol * m);
}

/* ======================================================================== */
/* The host                                                                 */
/* ======================================================================== */

#define SD 4     /* input width, at most */
#define SK 4     /* output width, at most */
#define SR 8     /* embedding rows of one pass, at most */
#define SO 8     /* output rows of one pass, at most */
#define SCALLS 96
#define SW (SK * SD + SK)

typedef struct sm_rec {
    int backward;
    int32_t slot;
    uint32_t flags;
    uint64_t seed;
    size_t rows, row_offset, micro_batch, input_rows, input_width;
    int has_pert, has_din;
    float pert[SR * SD]; /* forward: input_perturbation */
    float din[SR * SD];  /* backward: what the host wrote to d_input */
    float out[SO * SK];  /* forward: outputs; backward: d_outputs */
    float w[SW];         /* weights in the buffers (A then b) */
} sm_rec;

typedef struct sm_host {
    size_t d, k;
    float A[SK * SD], b[SK], gA[SK * SD], gb[SK];
    float x[4][SR * SD]; /* the (perturbed) inputs of each slot */
    int forwards, backwards, bad;
    int fail_forward;       /* 1-based forward number that fails, 0 = never */
    int fail_perturbed_adv; /* the next adversarial forward at perturbed weights fails */
    int poison;             /* SM_POISON_*: spoil the next ascent pass (then 0) */
    int npg_backwards, npg_without_din;
    int nrec;
    sm_rec rec[SCALLS];
} sm_host;

/* What sm_host.poison spoils: the d_input of the next backward flagged
 * NO_PARAM_GRAD (an ascent backward), or the outputs of the next forward
 * with an input perturbation in slot 1 (with K >= 1 that is an ascent
 * forward). */
enum {
    SM_POISON_NAN_DIN = 1,     /* NaN in every element of d_input */
    SM_POISON_NAN_DIN_ONE = 2, /* NaN in one element of d_input */
    SM_POISON_INF_OUT = 3,     /* +inf in one output */
    SM_POISON_INF_OUT_ALL = 4, /* -inf in every output */
    SM_POISON_HUGE_DIN = 5,    /* 3e37 in every element of d_input: finite */
    SM_POISON_NAN_TEACHER = 6  /* NaN in one output of the next teacher forward */
};

typedef struct sm_data {
    const float *e; /* input_rows x d embeddings of the whole batch */
} sm_data;

static inline sm_rec *sm_record(sm_host *h, int backward, const regopt_pass *p)
{
    sm_rec *r;
    if (h->nrec >= SCALLS)
        return NULL;
    r = &h->rec[h->nrec++];
    memset(r, 0, sizeof *r);
    r->backward = backward;
    r->slot = p->slot;
    r->flags = p->flags;
    r->seed = p->seed;
    r->rows = p->rows;
    r->row_offset = p->row_offset;
    r->micro_batch = p->micro_batch;
    r->input_rows = p->input_rows;
    r->input_width = p->input_width;
    memcpy(r->w, h->A, sizeof h->A);
    memcpy(r->w + SK * SD, h->b, sizeof h->b);
    return r;
}

static inline int sm_shape_ok(const sm_host *h, const regopt_pass *p)
{
    return p->slot >= 0 && p->slot < 4 && p->rows > 0 && p->rows <= SO &&
           p->input_rows <= SR && p->input_rows % p->rows == 0 && p->input_width == h->d &&
           p->output_width == h->k;
}

static inline int sm_forward(const regopt_pass *p, void *user)
{
    sm_host *h = user;
    const sm_data *bd = p->batch;
    size_t d = h->d, k = h->k, T, i, j, c, t, n;
    sm_rec *r;
    float *x;
    h->forwards++;
    r = sm_record(h, 0, p);
    if (!sm_shape_ok(h, p)) {
        h->bad++;
        return 99;
    }
    if (h->forwards == h->fail_forward)
        return 5;
    if (h->fail_perturbed_adv && (p->flags & REGOPT_PASS_PERTURBED_WEIGHTS) && p->slot >= 1) {
        h->fail_perturbed_adv = 0;
        return 6;
    }
    T = p->input_rows / p->rows;
    n = p->input_rows * d;
    x = h->x[p->slot];
    for (i = 0; i < n; i++)
        x[i] = bd->e[p->row_offset * T * d + i] +
               (p->input_perturbation ? p->input_perturbation[i] : 0.0f);
    for (i = 0; i < p->rows; i++)
        for (c = 0; c < k; c++) {
            float z = h->b[c];
            for (t = 0; t < T; t++)
                for (j = 0; j < d; j++)
                    z += h->A[c * d + j] * x[(i * T + t) * d + j];
            p->outputs[i * k + c] = z;
        }
    if ((p->flags & REGOPT_PASS_TEACHER) && h->poison == SM_POISON_NAN_TEACHER) {
        p->outputs[1] = NAN;
        h->poison = 0;
    }
    if (p->input_perturbation && p->slot == 1 &&
        (h->poison == SM_POISON_INF_OUT || h->poison == SM_POISON_INF_OUT_ALL)) {
        for (i = 0; i < p->rows * k; i++)
            if (h->poison == SM_POISON_INF_OUT_ALL || i == 1)
                p->outputs[i] = h->poison == SM_POISON_INF_OUT ? INFINITY : -INFINITY;
        h->poison = 0;
    }
    if (r) {
        r->has_pert = p->input_perturbation != NULL;
        if (p->input_perturbation)
            memcpy(r->pert, p->input_perturbation, n * sizeof(float));
        memcpy(r->out, p->outputs, p->rows * k * sizeof(float));
    }
    return 0;
}

static inline int sm_backward(const regopt_pass *p, void *user)
{
    sm_host *h = user;
    size_t d = h->d, k = h->k, T, i, j, c, t;
    const float *x;
    sm_rec *r;
    h->backwards++;
    r = sm_record(h, 1, p);
    if (!sm_shape_ok(h, p) || !p->d_outputs) {
        h->bad++;
        return 99;
    }
    T = p->input_rows / p->rows;
    x = h->x[p->slot];
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD) {
        h->npg_backwards++;
        if (!p->d_input)
            h->npg_without_din++;
    } else {
        for (i = 0; i < p->rows; i++)
            for (c = 0; c < k; c++) {
                float g = p->d_outputs[i * k + c];
                h->gb[c] += g;
                for (t = 0; t < T; t++)
                    for (j = 0; j < d; j++)
                        h->gA[c * d + j] += g * x[(i * T + t) * d + j];
            }
    }
    if (p->d_input)
        for (i = 0; i < p->rows; i++)
            for (t = 0; t < T; t++)
                for (j = 0; j < d; j++) {
                    float s = 0.0f;
                    for (c = 0; c < k; c++)
                        s += h->A[c * d + j] * p->d_outputs[i * k + c];
                    p->d_input[(i * T + t) * d + j] = s;
                }
    if (p->d_input && (p->flags & REGOPT_PASS_NO_PARAM_GRAD) &&
        (h->poison == SM_POISON_NAN_DIN || h->poison == SM_POISON_NAN_DIN_ONE ||
         h->poison == SM_POISON_HUGE_DIN)) {
        for (i = 0; i < p->input_rows * d; i++)
            if (h->poison != SM_POISON_NAN_DIN_ONE || i == 1)
                p->d_input[i] = h->poison == SM_POISON_HUGE_DIN ? 3e37f : NAN;
        h->poison = 0;
    }
    if (r) {
        r->has_din = p->d_input != NULL;
        memcpy(r->out, p->d_outputs, p->rows * k * sizeof(float));
        if (p->d_input)
            memcpy(r->din, p->d_input, p->input_rows * d * sizeof(float));
    }
    return 0;
}

/* ---- runs ---------------------------------------------------------------- */

#define SM_MAX_REGS 8

typedef struct sm_run {
    sm_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_allocator a; /* the run's allocator (has_a), used for its regularizers too */
    int has_a;
    regopt_regularizer *smart, *breg, *sam, *rdrop; /* the attached handles */
    regopt_regularizer *regs[SM_MAX_REGS];          /* every handle sm_new made */
    int nregs;
} sm_run;

/* A (k x d) and b from a fixed formula unless A0 is given (then b = 0). */
static inline sm_run *sm_open(size_t d, size_t k, int slots, regopt_loss_kind loss, double lr,
                       const double *A0, const regopt_allocator *a)
{
    sm_run *r = calloc(1, sizeof *r);
    size_t i;
    regopt_status st;
    ck_assert_ptr_nonnull(r);
    if (a) {
        r->a = *a;
        r->has_a = 1;
    }
    r->h.d = d;
    r->h.k = k;
    for (i = 0; i < k * d; i++)
        r->h.A[i] = A0 ? (float)A0[i] : (float)(0.3 * sin(1.1 * (double)i + 0.4));
    for (i = 0; i < k; i++)
        r->h.b[i] = A0 ? 0.0f : 0.1f * (float)i - 0.1f;
    r->m = regopt_model_create(a, &st);
    ck_assert_ptr_nonnull(r->m);
    SM_MUST(regopt_model_add_param(r->m, "A", r->h.A, r->h.gA, k * (d ? d : 1),
                                   REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, k, REGOPT_DTYPE_FLOAT32, 1));
    SM_MUST(regopt_model_set_output_width(r->m, k));
    if (d)
        SM_MUST(regopt_model_set_input_width(r->m, d));
    SM_MUST(regopt_model_set_slots(r->m, slots));
    SM_MUST(regopt_model_set_callbacks(r->m, sm_forward, sm_backward, &r->h, NULL));
    r->o = regopt_optimizer_create(REGOPT_SGD, a, &st);
    ck_assert_ptr_nonnull(r->o);
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, lr));
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_msg(r->t != NULL, "trainer: %s", regopt_last_error_message());
    SM_TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS, loss));
    SM_TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_SEED, 1234));
    return r;
}

/* The trainer first (it detaches everything), then the regularizers. */
static inline void sm_close(sm_run *r)
{
    int i;
    regopt_trainer_free(r->t);
    for (i = 0; i < r->nregs; i++) {
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r->regs[i]));
        regopt_regularizer_free(r->regs[i]);
    }
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

/* A new regularizer of `kind`, from the run's allocator, freed by sm_close. */
static inline regopt_regularizer *sm_new(sm_run *r, regopt_regularizer_kind kind)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *g = regopt_regularizer_create(kind, r->has_a ? &r->a : NULL, &st);
    ck_assert_msg(g != NULL, "regopt_regularizer_create(%d) -> %s: %s", (int)kind,
                  regopt_status_string(st), regopt_last_error_message());
    ck_assert_int_lt(r->nregs, SM_MAX_REGS);
    r->regs[r->nregs++] = g;
    ck_assert_int_eq(regopt_regularizer_get_kind(g), kind);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(g));
    return g;
}

/* sm_new, then attach it to the run's trainer. */
static inline regopt_regularizer *sm_attach(sm_run *r, regopt_regularizer_kind kind)
{
    regopt_regularizer *g = sm_new(r, kind);
    SM_TMUST(r->t, regopt_trainer_attach(r->t, g));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), r->t);
    return g;
}

static inline void sm_rset(regopt_regularizer *g, regopt_key key, double v)
{
    RMUST(g, regopt_regularizer_set_double(g, key, v));
}

static inline double sm_get(const regopt_trainer *t, regopt_key key)
{
    double v = -12345.0;
    SM_MUST(regopt_trainer_get_double(t, key, &v));
    return v;
}

/* SMART on with the given inner-loop settings. */
static inline void sm_smart(sm_run *r, double lambda, double eps, double sigma, double eta, int K,
                     int norm, int mtdnn)
{
    regopt_regularizer *g = r->smart = sm_attach(r, REGOPT_REG_SMART);
    sm_rset(g, REGOPT_SMART_LAMBDA, lambda);
    sm_rset(g, REGOPT_SMART_EPSILON, eps);
    sm_rset(g, REGOPT_SMART_SIGMA, sigma);
    sm_rset(g, REGOPT_SMART_ETA, eta);
    sm_rset(g, REGOPT_SMART_STEPS, K);
    sm_rset(g, REGOPT_SMART_NORM, norm);
    sm_rset(g, REGOPT_SMART_MTDNN, mtdnn);
}

static inline void sm_bregman(sm_run *r, double mu, double beta)
{
    r->breg = sm_attach(r, REGOPT_REG_BREGMAN);
    sm_rset(r->breg, REGOPT_BREGMAN_MU, mu);
    sm_rset(r->breg, REGOPT_BREGMAN_BETA, beta);
}

/* ---- batches ------------------------------------------------------------- */

typedef struct sm_set {
    size_t count, rows, T;
    float e[2][SR * SD];
    int32_t y[2][SO];
    float tg[2][SO * SK];
    float wt[2][SO];
    uint8_t mask[2][SO];
    sm_data hd[2];
    regopt_batch b[2];
} sm_set;

/* count micro-batches of `rows` rows, T embedding rows per row; weights and
 * a padded last row of micro-batch 0 on request. */
static inline void sm_fill(sm_set *s, size_t count, size_t rows, size_t T, size_t d, size_t k,
                    int weighted, int padded, unsigned salt)
{
    size_t m, i;
    memset(s, 0, sizeof *s);
    s->count = count;
    s->rows = rows;
    s->T = T;
    for (m = 0; m < count; m++) {
        for (i = 0; i < rows * T * d; i++)
            s->e[m][i] = (float)sin(1.3 * (double)(i + 17 * m) + 0.7 * salt + 0.2);
        for (i = 0; i < rows; i++) {
            s->y[m][i] = (int32_t)((i + m + salt) % k);
            s->wt[m][i] = 0.5f + 0.25f * (float)((i + m) % 3);
            s->mask[m][i] = (uint8_t)!(padded && m == 0 && i == rows - 1);
        }
        for (i = 0; i < rows * k; i++)
            s->tg[m][i] = (float)cos(0.9 * (double)(i + 5 * m) + salt);
        s->hd[m].e = s->e[m];
        regopt_batch_init(&s->b[m]);
        s->b[m].data = &s->hd[m];
        s->b[m].rows = rows;
        s->b[m].labels = s->y[m];
        s->b[m].targets = s->tg[m];
        s->b[m].weights = weighted ? s->wt[m] : NULL;
        s->b[m].mask = padded ? s->mask[m] : NULL;
        s->b[m].input_rows = T > 1 ? rows * T : 0;
    }
}

static inline double sm_rw(const sm_set *s, size_t m, size_t i)
{
    const regopt_batch *b = &s->b[m];
    if (b->mask && !b->mask[i])
        return 0.0;
    return b->weights ? (double)b->weights[i] : 1.0;
}

static inline double sm_wsum(const sm_set *s)
{
    double w = 0.0;
    size_t m, i;
    for (m = 0; m < s->count; m++)
        for (i = 0; i < s->rows; i++)
            w += sm_rw(s, m, i);
    return w;
}

static inline void sm_step(sm_run *r, const sm_set *s)
{
    regopt_status st = regopt_trainer_step(r->t, s->b, s->count);
    ck_assert_msg(st == REGOPT_OK, "step -> %s: %s", regopt_status_string(st),
                  regopt_trainer_message(r->t));
    ck_assert_int_eq(r->h.bad, 0);
}

static inline void sm_reset(sm_run *r)
{
    r->h.nrec = 0;
    r->h.forwards = r->h.backwards = 0;
    r->h.npg_backwards = r->h.npg_without_din = 0;
}

/* The n-th record (0-based) of a forward/backward in `slot` of micro-batch
 * mb whose flags contain `need` and avoid `avoid`; NULL if none. */
static inline const sm_rec *sm_find(const sm_host *h, int backward, int32_t slot, size_t mb,
                             uint32_t need, uint32_t avoid, int n)
{
    int i;
    for (i = 0; i < h->nrec; i++) {
        const sm_rec *r = &h->rec[i];
        if (r->backward == backward && r->slot == slot && r->micro_batch == mb &&
            (r->flags & need) == need && !(r->flags & avoid) && n-- == 0)
            return r;
    }
    return NULL;
}

static inline const sm_rec *sm_must_find(const sm_host *h, int backward, int32_t slot, size_t mb,
                                  uint32_t need, uint32_t avoid, int n)
{
    const sm_rec *r = sm_find(h, backward, slot, mb, need, avoid, n);
    ck_assert_msg(r != NULL, "no %s #%d in slot %d of micro-batch %zu",
                  backward ? "backward" : "forward", n, (int)slot, mb);
    return r;
}

/* SAM on top of the run's regularizers, rho 0.05. */
static inline void sm_sam(sm_run *r)
{
    r->sam = sm_attach(r, REGOPT_REG_SAM);
    sm_rset(r->sam, REGOPT_SAM_RHO, 0.05);
}

#endif
