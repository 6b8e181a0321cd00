/* check_smart.c — SMART (Jiang et al. 2020): the adversarial term R_s
 * (paper projected ascent in inf/L2/L1 norms, mt-dnn mode and the
 * docs/methods.md §9 reference vector), the momentum Bregman proximal point term
 * and its EMA teacher, call order and flags, statistics, SAM composition,
 * rollback, options and allocation.
 *
 * Host: a linear model over input embeddings, z_i = b + A sum_t x_{iT+t}
 * with x = e + input_perturbation (T embedding rows per output row). Every
 * expected value below comes from a closed form on this model, a finite
 * difference, or a double-precision reference written here -- never from
 * the library's own output. */
#include "tests.h"
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
static void sm_near(double got, double want, double tol, double floor_, const char *what,
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
    float x[3][SR * SD]; /* the (perturbed) inputs of each slot */
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

static sm_rec *sm_record(sm_host *h, int backward, const regopt_pass *p)
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

static int sm_shape_ok(const sm_host *h, const regopt_pass *p)
{
    return p->slot >= 0 && p->slot < 3 && p->rows > 0 && p->rows <= SO &&
           p->input_rows <= SR && p->input_rows % p->rows == 0 && p->input_width == h->d &&
           p->output_width == h->k;
}

static int sm_forward(const regopt_pass *p, void *user)
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

static int sm_backward(const regopt_pass *p, void *user)
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
static sm_run *sm_open(size_t d, size_t k, int slots, regopt_loss_kind loss, double lr,
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
static void sm_close(sm_run *r)
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
static regopt_regularizer *sm_new(sm_run *r, regopt_regularizer_kind kind)
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
static regopt_regularizer *sm_attach(sm_run *r, regopt_regularizer_kind kind)
{
    regopt_regularizer *g = sm_new(r, kind);
    SM_TMUST(r->t, regopt_trainer_attach(r->t, g));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), r->t);
    return g;
}

static void sm_rset(regopt_regularizer *g, regopt_key key, double v)
{
    RMUST(g, regopt_regularizer_set_double(g, key, v));
}

static double sm_get(const regopt_trainer *t, regopt_key key)
{
    double v = -12345.0;
    SM_MUST(regopt_trainer_get_double(t, key, &v));
    return v;
}

/* SMART on with the given inner-loop settings. */
static void sm_smart(sm_run *r, double lambda, double eps, double sigma, double eta, int K,
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

static void sm_bregman(sm_run *r, double mu, double beta)
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
static void sm_fill(sm_set *s, size_t count, size_t rows, size_t T, size_t d, size_t k,
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

static double sm_rw(const sm_set *s, size_t m, size_t i)
{
    const regopt_batch *b = &s->b[m];
    if (b->mask && !b->mask[i])
        return 0.0;
    return b->weights ? (double)b->weights[i] : 1.0;
}

static double sm_wsum(const sm_set *s)
{
    double w = 0.0;
    size_t m, i;
    for (m = 0; m < s->count; m++)
        for (i = 0; i < s->rows; i++)
            w += sm_rw(s, m, i);
    return w;
}

static void sm_step(sm_run *r, const sm_set *s)
{
    regopt_status st = regopt_trainer_step(r->t, s->b, s->count);
    ck_assert_msg(st == REGOPT_OK, "step -> %s: %s", regopt_status_string(st),
                  regopt_trainer_message(r->t));
    ck_assert_int_eq(r->h.bad, 0);
}

static void sm_reset(sm_run *r)
{
    r->h.nrec = 0;
    r->h.forwards = r->h.backwards = 0;
    r->h.npg_backwards = r->h.npg_without_din = 0;
}

/* The n-th record (0-based) of a forward/backward in `slot` of micro-batch
 * mb whose flags contain `need` and avoid `avoid`; NULL if none. */
static const sm_rec *sm_find(const sm_host *h, int backward, int32_t slot, size_t mb,
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

static const sm_rec *sm_must_find(const sm_host *h, int backward, int32_t slot, size_t mb,
                                  uint32_t need, uint32_t avoid, int n)
{
    const sm_rec *r = sm_find(h, backward, slot, mb, need, avoid, n);
    ck_assert_msg(r != NULL, "no %s #%d in slot %d of micro-batch %zu",
                  backward ? "backward" : "forward", n, (int)slot, mb);
    return r;
}

/* ======================================================================== */
/* Double-precision references                                              */
/* ======================================================================== */

static double ref_norm(const double *x, size_t d, int p)
{
    double s = 0.0;
    size_t j;
    for (j = 0; j < d; j++) {
        double a = fabs(x[j]);
        if (p == REGOPT_SMART_NORM_INF)
            s = a > s ? a : s;
        else
            s += p == REGOPT_SMART_NORM_L1 ? a : a * a;
    }
    return p == REGOPT_SMART_NORM_L2 ? sqrt(s) : s;
}

static double ref_normf(const float *x, size_t d, int p)
{
    double y[SD];
    size_t j;
    for (j = 0; j < d; j++)
        y[j] = x[j];
    return ref_norm(y, d, p);
}

/* Projection onto the L1 ball by bisection on the soft threshold. */
static void ref_project_l1(double *x, size_t d, double r)
{
    double lo = 0.0, hi = 0.0, th;
    size_t j;
    int it;
    if (ref_norm(x, d, REGOPT_SMART_NORM_L1) <= r)
        return;
    for (j = 0; j < d; j++)
        hi = fabs(x[j]) > hi ? fabs(x[j]) : hi;
    for (it = 0; it < 200; it++) {
        double s = 0.0;
        th = 0.5 * (lo + hi);
        for (j = 0; j < d; j++)
            s += fabs(x[j]) > th ? fabs(x[j]) - th : 0.0;
        if (s > r)
            lo = th;
        else
            hi = th;
    }
    th = 0.5 * (lo + hi);
    for (j = 0; j < d; j++) {
        double a = fabs(x[j]) - th;
        x[j] = a > 0.0 ? copysign(a, x[j]) : 0.0;
    }
}

static void ref_project(double *x, size_t d, int p, double r)
{
    size_t j;
    double n;
    if (p == REGOPT_SMART_NORM_INF) {
        for (j = 0; j < d; j++)
            x[j] = x[j] > r ? r : x[j] < -r ? -r : x[j];
    } else if (p == REGOPT_SMART_NORM_L2) {
        n = ref_norm(x, d, p);
        if (n > r)
            for (j = 0; j < d; j++)
                x[j] *= r / n;
    } else {
        ref_project_l1(x, d, r);
    }
}

/* g = A^T A nu (the direction of the ascent gradient of the MSE inner loss
 * on the linear host, up to a positive factor), A is k x d row-major. */
static void ref_ata(const float *A, size_t d, size_t k, const double *nu, double *g)
{
    size_t j, c, l;
    for (j = 0; j < d; j++) {
        g[j] = 0.0;
        for (c = 0; c < k; c++) {
            double an = 0.0;
            for (l = 0; l < d; l++)
                an += (double)A[c * d + l] * nu[l];
            g[j] += (double)A[c * d + j] * an;
        }
    }
}

/* l_s(a, z): symmetric KL (not halved) or mean squared difference. */
static double ref_ls(const double *a, const double *z, size_t k, int mse)
{
    double s = 0.0, la = -HUGE_VAL, lz = -HUGE_VAL, sa = 0.0, sz = 0.0;
    size_t j;
    if (mse) {
        for (j = 0; j < k; j++)
            s += (a[j] - z[j]) * (a[j] - z[j]);
        return s / (double)k;
    }
    for (j = 0; j < k; j++) {
        la = a[j] > la ? a[j] : la;
        lz = z[j] > lz ? z[j] : lz;
    }
    for (j = 0; j < k; j++) {
        sa += exp(a[j] - la);
        sz += exp(z[j] - lz);
    }
    la += log(sa);
    lz += log(sz);
    for (j = 0; j < k; j++) {
        double lp = a[j] - la, lq = z[j] - lz;
        s += (exp(lp) - exp(lq)) * (lp - lq); /* KL(P||Q) + KL(Q||P) */
    }
    return s;
}

static double ref_task(const double *z, size_t k, int32_t y, const float *tg, int mse,
                       double *grad)
{
    double m = -HUGE_VAL, s = 0.0, l = 0.0;
    size_t j;
    if (mse) {
        for (j = 0; j < k; j++) {
            double e = z[j] - tg[j];
            l += e * e;
            grad[j] = 2.0 * e / (double)k;
        }
        return l / (double)k;
    }
    for (j = 0; j < k; j++)
        m = z[j] > m ? z[j] : m;
    for (j = 0; j < k; j++)
        s += exp(z[j] - m);
    for (j = 0; j < k; j++)
        grad[j] = exp(z[j] - m) / s - (j == (size_t)y ? 1.0 : 0.0);
    return m + log(s) - z[y];
}

static void f2d(double *dst, const float *src, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        dst[i] = src[i];
}

/* Central finite difference of w * l_s(a, z) in a (side 0) or z (side 1). */
static double fd_ls(const double *a, const double *z, size_t k, int mse, int side, size_t j)
{
    double ap[SK], zp[SK], h = 1e-5, fp, fm;
    memcpy(ap, a, k * sizeof(double));
    memcpy(zp, z, k * sizeof(double));
    (side ? zp : ap)[j] += h;
    fp = ref_ls(ap, zp, k, mse);
    (side ? zp : ap)[j] -= 2.0 * h;
    fm = ref_ls(ap, zp, k, mse);
    return (fp - fm) / (2.0 * h);
}

/* ======================================================================== */
/* 1. The mt-dnn-compatible reference vector (docs/methods.md §9)           */
/* ======================================================================== */

static const double A_REF[4] = {1.0, 2.0, 3.0, -1.0};
static const float A_REFF[4] = {1.0f, 2.0f, 3.0f, -1.0f};

/* One mt-dnn inner step for the one-row linear model: g = grad of the
 * MSE-mean between A(e + nu) and sg(A e), d = nu + eta g,
 * nu1 = d / (||d||_inf + eps). */
static void ref_mtdnn(const float *A, const double *nu0, double eta, double eps, double *g,
                      double *dd, double *nu1)
{
    double n;
    int j;
    ref_ata(A, 2, 2, nu0, g); /* (2/K) A^T A nu with K = 2 */
    for (j = 0; j < 2; j++)
        dd[j] = nu0[j] + eta * g[j];
    n = ref_norm(dd, 2, REGOPT_SMART_NORM_INF);
    for (j = 0; j < 2; j++)
        nu1[j] = dd[j] / (n + eps);
}

START_TEST(mtdnn_reference_vector)
{
    const float *Af = A_REFF;
    const double nu0[2] = {0.01, -0.02};
    double g[2], dd[2], nu1[2], gfd[2];
    int j;
    /* the docs/methods.md §9 numbers (RV-SMART-MTDNN), from the closed form */
    ref_mtdnn(Af, nu0, 1e-3, 1e-6, g, dd, nu1);
    sm_near(g[0], 0.12, 1e-13, 1.0, "g", 0);
    sm_near(g[1], -0.11, 1e-13, 1.0, "g", 1);
    sm_near(dd[0], 0.01012, 1e-13, 1.0, "d", 0);
    sm_near(dd[1], -0.02011, 1e-13, 1.0, "d", 1);
    sm_near(nu1[0], 0.5032072000397793, 1e-13, 1.0, "nu1", 0);
    sm_near(nu1[1], -0.9999502759683755, 1e-13, 1.0, "nu1", 1);
    /* ... and g really is the gradient of the MSE-mean inner loss */
    for (j = 0; j < 2; j++) {
        double e[2] = {0.5, -1.0}, z[2], ap[2], am[2], np[2], nm[2];
        int c;
        memcpy(np, nu0, sizeof np);
        memcpy(nm, nu0, sizeof nm);
        np[j] += 1e-6;
        nm[j] -= 1e-6;
        for (c = 0; c < 2; c++) {
            z[c] = A_REF[2 * c] * e[0] + A_REF[2 * c + 1] * e[1];
            ap[c] = A_REF[2 * c] * (e[0] + np[0]) + A_REF[2 * c + 1] * (e[1] + np[1]);
            am[c] = A_REF[2 * c] * (e[0] + nm[0]) + A_REF[2 * c + 1] * (e[1] + nm[1]);
        }
        gfd[j] = (ref_ls(ap, z, 2, 1) - ref_ls(am, z, 2, 1)) / 2e-6;
        sm_near(gfd[j], g[j], 1e-7, 1.0, "finite-difference g", j);
    }
}
END_TEST

START_TEST(mtdnn_library_follows_the_update)
{
    sm_run *r = sm_open(2, 2, 3, REGOPT_LOSS_MSE, 1e-3, A_REF, NULL);
    static const float e[2] = {0.5f, -1.0f}, tg[2] = {0.25f, -0.5f};
    sm_data hd = {e};
    regopt_batch b;
    const sm_rec *f0, *bk, *f1;
    double nu0[2], g[2], dd[2], nu1[2], an[2];
    int j;
    regopt_batch_init(&b);
    b.data = &hd;
    b.rows = 1;
    b.targets = tg;
    sm_smart(r, 1.0, 1e-6, 0.01, 1e-3, 1, REGOPT_SMART_NORM_INF, 1);
    SM_TMUST(r->t, regopt_trainer_step(r->t, &b, 1));
    ck_assert_int_eq(r->h.bad, 0);
    f0 = sm_must_find(&r->h, 0, 1, 0, 0, 0, 0);
    bk = sm_must_find(&r->h, 1, 1, 0, REGOPT_PASS_NO_PARAM_GRAD, 0, 0);
    f1 = sm_must_find(&r->h, 0, 1, 0, 0, 0, 1);
    ck_assert(f0->has_pert && f1->has_pert && bk->has_din);
    ck_assert_ptr_null(sm_find(&r->h, 0, 1, 0, 0, 0, 2));
    /* nu0 is sigma times a standard normal draw */
    f2d(nu0, f0->pert, 2);
    ck_assert_msg(fabs(nu0[0]) + fabs(nu0[1]) > 0.0 && fabs(nu0[0]) < 0.08 &&
                      fabs(nu0[1]) < 0.08,
                  "nu0 = [%g, %g] is not N(0, 0.01^2)-sized", nu0[0], nu0[1]);
    ref_mtdnn(A_REFF, nu0, 1e-3, 1e-6, g, dd, nu1); /* A before the update */
    /* d_outputs of the ascent backward: (2/K)(A nu) with K = 2, one row */
    for (j = 0; j < 2; j++) {
        an[j] = A_REF[2 * j] * nu0[0] + A_REF[2 * j + 1] * nu0[1];
        sm_near(bk->out[j], an[j], 1e-4, 1e-3, "ascent d_outputs", j);
        sm_near(bk->din[j], g[j], 1e-4, 1e-3, "g = A^T A nu0", j);
        sm_near(f1->pert[j], nu1[j], 1e-6, 1.0, "nu1 = d/(|d|_inf + eps)", j);
    }
    /* unit inf-norm perturbation (up to eps) */
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), ref_norm(nu1, 2, 0), 1e-6, 1.0,
            "noise norm", 0);
    sm_close(r);
}
END_TEST

/* sigma scales a standard normal draw of the library's generator: the same
 * trainer seed with twice the sigma gives twice the noise; sigma 0 gives 0. */
START_TEST(noise_scales_with_sigma)
{
    float first[3][SR * SD];
    double sig[3] = {0.01, 0.02, 0.0};
    sm_set s;
    int v;
    size_t i, n;
    sm_fill(&s, 1, 3, 1, 3, 2, 0, 0, 1);
    n = 3 * 3;
    for (v = 0; v < 3; v++) {
        sm_run *r = sm_open(3, 2, 2, REGOPT_LOSS_MSE, 0.1, NULL, NULL);
        sm_smart(r, 1.0, 0.5, sig[v], 1e-3, 1, REGOPT_SMART_NORM_L2, 0);
        sm_step(r, &s);
        memcpy(first[v], sm_must_find(&r->h, 0, 1, 0, 0, 0, 0)->pert, n * sizeof(float));
        if (v == 2) {
            /* zero noise: zero gradient, g^ = 0, nothing moves, R_s = 0 */
            const sm_rec *fin = sm_must_find(&r->h, 0, 1, 0, 0, 0, 1);
            for (i = 0; i < n; i++)
                ck_assert_float_eq(fin->pert[i], 0.0f);
            ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_RS), 0.0);
            ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), 0.0);
        }
        sm_close(r);
    }
    for (i = 0; i < n; i++) {
        ck_assert_msg(first[0][i] != 0.0f && fabsf(first[0][i]) < 0.06f, "nu0[%zu] = %g", i,
                      (double)first[0][i]);
        sm_near(first[1][i], 2.0 * first[0][i], 1e-6, 1e-9, "nu0(2 sigma)", (int)i);
        ck_assert_float_eq(first[2][i], 0.0f);
    }
}
END_TEST

/* ======================================================================== */
/* 2. Paper mode: projected ascent                                          */
/* ======================================================================== */

static void check_paper_mode(int p)
{
    const size_t d = 3, k = 2, rows = 3;
    const double eps = 0.05, eta = 1.0;
    const int K = 3;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_MSE, 0.1, NULL, NULL);
    sm_set s;
    double noise = 0.0;
    int it;
    size_t i, j;
    sm_fill(&s, 1, rows, 1, d, k, 0, 0, 2);
    float A0[SK * SD];
    sm_smart(r, 1.0, eps, 0.03, eta, K, p, 0);
    memcpy(A0, r->h.A, sizeof A0); /* the weights of the step, before its update */
    sm_step(r, &s);
    for (it = 0; it < K; it++) {
        const sm_rec *f = sm_must_find(&r->h, 0, 1, 0, 0, 0, it);
        const sm_rec *bk = sm_must_find(&r->h, 1, 1, 0, REGOPT_PASS_NO_PARAM_GRAD, 0, it);
        const sm_rec *fn = sm_must_find(&r->h, 0, 1, 0, 0, 0, it + 1);
        for (i = 0; i < rows; i++) {
            double nu[SD], g[SD], gn, want[SD];
            f2d(nu, f->pert + i * d, d);
            ref_ata(A0, d, k, nu, g);
            /* the host's d_input is (2/(K W)) A^T A nu, W = rows */
            for (j = 0; j < d; j++)
                sm_near(bk->din[i * d + j], 2.0 / (double)(k * rows) * g[j], 1e-4, 1e-4,
                        "d_input", (int)(100 * it + i * d + j));
            gn = ref_norm(g, d, p);
            for (j = 0; j < d; j++)
                want[j] = nu[j] + eta * g[j] / gn;
            ref_project(want, d, p, eps);
            for (j = 0; j < d; j++)
                sm_near(fn->pert[i * d + j], want[j], 2e-5, eps, "projected nu",
                        (int)(100 * it + i * d + j));
            /* the projection is active and the result is on the ball */
            ck_assert_msg(ref_normf(fn->pert + i * d, d, p) <= eps * (1.0 + 1e-5),
                          "norm %d of row %zu after step %d: %.9g > %g", p, i, it,
                          ref_normf(fn->pert + i * d, d, p), eps);
            sm_near(ref_normf(fn->pert + i * d, d, p), eps, 1e-5, eps, "on the ball",
                    (int)i);
            if (it == K - 1)
                noise += ref_normf(fn->pert + i * d, d, p);
        }
    }
    ck_assert_ptr_null(sm_find(&r->h, 0, 1, 0, 0, 0, K + 1));
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), noise / (double)rows, 1e-6, 1e-9,
            "stat.smart_noise_norm", p);
    sm_close(r);
}

START_TEST(paper_mode_inf) { check_paper_mode(REGOPT_SMART_NORM_INF); }
END_TEST
START_TEST(paper_mode_l2) { check_paper_mode(REGOPT_SMART_NORM_L2); }
END_TEST
START_TEST(paper_mode_l1) { check_paper_mode(REGOPT_SMART_NORM_L1); }
END_TEST

/* The independent L1 projection itself: a known answer. */
START_TEST(l1_projection_reference)
{
    double x[3] = {0.5, -0.2, 0.05};
    ref_project_l1(x, 3, 0.4); /* theta = 0.15: [0.35, -0.05, 0] */
    sm_near(x[0], 0.35, 1e-12, 1.0, "x", 0);
    sm_near(x[1], -0.05, 1e-12, 1.0, "x", 1);
    sm_near(x[2], 0.0, 1e-12, 1.0, "x", 2);
}
END_TEST

/* ======================================================================== */
/* 3. Finite differences of R_s and D_Breg                                  */
/* ======================================================================== */

/* With only SMART on: d_outputs of slot 0 minus the task part is
 * lambda dR/dz, d_outputs of the final adversarial backward is lambda dR/da;
 * R_s, the task loss and the objective as statistics. */
static void check_rs_gradients(regopt_loss_kind loss)
{
    const size_t d = 3, k = 4, rows = 3;
    const double lambda = 2.5;
    const int mse = loss == REGOPT_LOSS_MSE;
    sm_run *r = sm_open(d, k, 2, loss, 0.1, NULL, NULL);
    sm_set s;
    const sm_rec *fz, *fa, *bz, *ba;
    double W, R = 0.0, task = 0.0;
    size_t i, j;
    sm_fill(&s, 1, rows, 1, d, k, 1, 1, 3);
    W = sm_wsum(&s);
    sm_smart(r, lambda, 0.5, 0.2, 0.1, 1, REGOPT_SMART_NORM_L2, 0);
    sm_step(r, &s);
    fz = sm_must_find(&r->h, 0, 0, 0, 0, 0, 0);
    fa = sm_must_find(&r->h, 0, 1, 0, 0, 0, 1);
    bz = sm_must_find(&r->h, 1, 0, 0, 0, 0, 0);
    ba = sm_must_find(&r->h, 1, 1, 0, 0, REGOPT_PASS_NO_PARAM_GRAD, 0);
    for (i = 0; i < rows; i++) {
        double z[SK], a[SK], tgrad[SK], rw = sm_rw(&s, 0, i);
        f2d(z, fz->out + i * k, k);
        f2d(a, fa->out + i * k, k);
        R += rw * ref_ls(a, z, k, mse) / W;
        task += rw * ref_task(z, k, s.y[0][i], s.tg[0] + i * k, mse, tgrad) / W;
        for (j = 0; j < k; j++) {
            int id = (int)(i * k + j);
            double want_a = lambda * rw / W * fd_ls(a, z, k, mse, 0, j);
            double want_z = lambda * rw / W * fd_ls(a, z, k, mse, 1, j);
            sm_near(ba->out[i * k + j], want_a, 1e-4, 1e-5, "lambda dR/da", id);
            sm_near(bz->out[i * k + j] - rw / W * tgrad[j], want_z, 1e-4, 1e-5,
                    "lambda dR/dz", id);
        }
    }
    ck_assert_msg(R > 1e-6, "R_s = %g is too small to test anything", R);
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_RS), R, 1e-5, 1e-9, "stat.smart_rs", 0);
    sm_near(sm_get(r->t, REGOPT_STAT_LOSS), task, 1e-5, 1e-9, "stat.loss", 0);
    sm_near(sm_get(r->t, REGOPT_STAT_OBJECTIVE), task + lambda * R, 1e-5, 1e-9,
            "stat.objective", 0);
    sm_close(r);
}

START_TEST(rs_gradients_classification) { check_rs_gradients(REGOPT_LOSS_SOFTMAX_CE); }
END_TEST
START_TEST(rs_gradients_regression) { check_rs_gradients(REGOPT_LOSS_MSE); }
END_TEST

/* Bregman only: after two steps with beta 0.5 the teacher lags; in the third
 * d_outputs of slot 0 minus the task part is mu dD/dz. */
static void check_bregman_gradients(regopt_loss_kind loss)
{
    const size_t d = 3, k = 4, rows = 3;
    const double mu = 1.7;
    const int mse = loss == REGOPT_LOSS_MSE;
    sm_run *r = sm_open(d, k, 1, loss, 0.5, NULL, NULL);
    sm_set s;
    const sm_rec *fq, *fz, *bz;
    double W, D = 0.0, task = 0.0;
    size_t i, j;
    int step;
    sm_bregman(r, mu, 0.5);
    for (step = 0; step < 3; step++) {
        sm_fill(&s, 1, rows, 1, d, k, 1, 1, 4 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
    }
    W = sm_wsum(&s);
    fq = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TEACHER, 0, 0);
    fz = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TRAIN, 0, 0);
    bz = sm_must_find(&r->h, 1, 0, 0, 0, 0, 0);
    for (i = 0; i < rows; i++) {
        double z[SK], q[SK], tgrad[SK], rw = sm_rw(&s, 0, i);
        f2d(z, fz->out + i * k, k);
        f2d(q, fq->out + i * k, k);
        D += rw * ref_ls(z, q, k, mse) / W;
        task += rw * ref_task(z, k, s.y[0][i], s.tg[0] + i * k, mse, tgrad) / W;
        for (j = 0; j < k; j++)
            sm_near(bz->out[i * k + j] - rw / W * tgrad[j],
                    mu * rw / W * fd_ls(z, q, k, mse, 0, j), 1e-4, 1e-5, "mu dD/dz",
                    (int)(i * k + j));
    }
    ck_assert_msg(D > 1e-6, "D_Breg = %g is too small to test anything", D);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_D), D, 1e-5, 1e-9, "stat.bregman_d", 0);
    sm_near(sm_get(r->t, REGOPT_STAT_OBJECTIVE), task + mu * D, 1e-5, 1e-9, "stat.objective",
            0);
    sm_close(r);
}

START_TEST(bregman_gradients_classification) { check_bregman_gradients(REGOPT_LOSS_SOFTMAX_CE); }
END_TEST
START_TEST(bregman_gradients_regression) { check_bregman_gradients(REGOPT_LOSS_MSE); }
END_TEST

/* ======================================================================== */
/* 4. Passes: order, slots, flags, NO_PARAM_GRAD, d_input                   */
/* ======================================================================== */

static void check_order(int bregman, int K, int same_seed)
{
    const size_t count = 2;
    sm_run *r = sm_open(2, 3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    sm_set s;
    int i = 0, it;
    size_t mb;
    sm_fill(&s, count, 2, 1, 2, 3, 0, 0, 5);
    sm_smart(r, 1.0, 0.1, 0.01, 0.01, K, REGOPT_SMART_NORM_INF, 0);
    RMUST(r->smart, regopt_regularizer_set_int(r->smart, REGOPT_SMART_SAME_SEED, same_seed));
    if (bregman)
        sm_bregman(r, 1.0, 0.9);
    sm_step(r, &s);
    if (bregman)
        for (mb = 0; mb < count; mb++, i++) {
            const sm_rec *c = &r->h.rec[i];
            ck_assert(!c->backward && c->slot == 0 && c->micro_batch == mb && !c->has_pert);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD);
        }
    for (mb = 0; mb < count; mb++) {
        const sm_rec *clean = &r->h.rec[i++], *c;
        ck_assert(!clean->backward && clean->slot == 0 && clean->micro_batch == mb);
        ck_assert_uint_eq(clean->flags, REGOPT_PASS_TRAIN);
        ck_assert(!clean->has_pert);
        ck_assert_uint_eq(clean->input_rows, 2);
        ck_assert_uint_eq(clean->input_width, 2);
        for (it = 0; it <= K; it++) {
            c = &r->h.rec[i++]; /* adversarial forward */
            ck_assert_msg(!c->backward && c->slot == 1 && c->micro_batch == mb,
                          "call %d: backward %d slot %d", i - 1, c->backward, (int)c->slot);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
            ck_assert(c->has_pert);
            if (same_seed)
                ck_assert_uint_eq(c->seed, clean->seed);
            else
                ck_assert_uint_ne(c->seed, clean->seed);
            c = &r->h.rec[i++]; /* its backward */
            ck_assert(c->backward && c->slot == 1 && c->micro_batch == mb);
            if (it < K) {
                ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN | REGOPT_PASS_NO_PARAM_GRAD);
                ck_assert_msg(c->has_din, "ascent backward %d without d_input", it);
            } else {
                ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
                ck_assert_msg(!c->has_din, "final adversarial backward has a d_input");
            }
        }
        c = &r->h.rec[i++]; /* clean backward */
        ck_assert(c->backward && c->slot == 0 && c->micro_batch == mb && !c->has_din);
        ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
    }
    ck_assert_int_eq(i, r->h.nrec);
    ck_assert_int_eq(r->h.forwards, (int)count * (K + 2 + bregman));
    ck_assert_int_eq(r->h.backwards, (int)count * (K + 2));
    ck_assert_int_eq(r->h.npg_backwards, (int)count * K);
    ck_assert_int_eq(r->h.npg_without_din, 0);
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_FORWARD_CALLS), (double)r->h.forwards);
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_BACKWARD_CALLS), (double)r->h.backwards);
    sm_close(r);
}

START_TEST(order_k1) { check_order(0, 1, 1); }
END_TEST
START_TEST(order_k3_fresh_seed) { check_order(0, 3, 0); }
END_TEST
START_TEST(order_k2_bregman) { check_order(1, 2, 1); }
END_TEST

/* The parameter gradient is exactly task + lambda R_s through both passes
 * at the final nu: the ascent backwards add nothing (SGD, lr 1, so the
 * weight change is the gradient). */
START_TEST(parameter_gradient_excludes_ascent_passes)
{
    const size_t d = 3, k = 2, rows = 3;
    const double lambda = 3.0;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_MSE, 1.0, NULL, NULL);
    float A0[SK * SD], b0[SK];
    double gA[SK * SD] = {0}, gb[SK] = {0}, W;
    const sm_rec *fa;
    sm_set s;
    size_t i, j, c;
    sm_fill(&s, 1, rows, 1, d, k, 1, 0, 6);
    W = sm_wsum(&s);
    sm_smart(r, lambda, 0.1, 0.05, 1.0, 3, REGOPT_SMART_NORM_INF, 0);
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    sm_step(r, &s);
    fa = sm_must_find(&r->h, 0, 1, 0, 0, 0, 3);
    for (i = 0; i < rows; i++) {
        double rw = sm_rw(&s, 0, i), z[SK], a[SK], dz[SK], da[SK];
        for (c = 0; c < k; c++) { /* outputs from the closed form, not the records */
            z[c] = b0[c];
            a[c] = b0[c];
            for (j = 0; j < d; j++) {
                z[c] += (double)A0[c * d + j] * s.e[0][i * d + j];
                a[c] += (double)A0[c * d + j] * ((double)s.e[0][i * d + j] + fa->pert[i * d + j]);
            }
        }
        ref_task(z, k, 0, s.tg[0] + i * k, 1, dz);
        for (c = 0; c < k; c++) {
            double dr = 2.0 * (a[c] - z[c]) / (double)k;
            da[c] = lambda * rw / W * dr;
            dz[c] = rw / W * dz[c] - da[c];
            gb[c] += dz[c] + da[c];
            for (j = 0; j < d; j++)
                gA[c * d + j] += dz[c] * s.e[0][i * d + j] +
                                 da[c] * ((double)s.e[0][i * d + j] + fa->pert[i * d + j]);
        }
    }
    for (i = 0; i < k * d; i++)
        sm_near((double)A0[i] - r->h.A[i], gA[i], 1e-5, 1e-3, "dA", (int)i);
    for (i = 0; i < k; i++)
        sm_near((double)b0[i] - r->h.b[i], gb[i], 1e-5, 1e-3, "db", (int)i);
    sm_close(r);
}
END_TEST

/* With two-call R-Drop the adversarial slot is 2 (3 slots needed). */
START_TEST(rdrop_moves_smart_to_slot_2)
{
    sm_run *r = sm_open(2, 3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    sm_set s;
    int i, adv = 0;
    sm_fill(&s, 1, 2, 1, 2, 3, 0, 0, 7);
    r->rdrop = sm_attach(r, REGOPT_REG_RDROP);
    sm_smart(r, 1.0, 0.1, 0.01, 0.01, 2, REGOPT_SMART_NORM_INF, 0);
    sm_step(r, &s);
    for (i = 0; i < r->h.nrec; i++)
        if (r->h.rec[i].has_pert || r->h.rec[i].has_din) {
            ck_assert_int_eq(r->h.rec[i].slot, 2);
            adv++;
        }
    ck_assert_int_eq(adv, 3 + 2); /* K+1 forwards, K ascent backwards */
    ck_assert_int_eq(r->h.forwards, 2 + 2 + 1);
    sm_close(r);
}
END_TEST

/* ======================================================================== */
/* 5. The Bregman teacher                                                   */
/* ======================================================================== */

/* bregman.switch_step left at its default (not set at all) */
#define SW_UNSET INT64_MIN

/* EMA of the weights against a double reference: w~_0 = w_0, and after the
 * update that makes step u (1-based), w~ = beta_u w~ + (1 - beta_u) w_u with
 * beta_u = beta for u <= switch * total_steps, beta_late after -- or, with
 * bregman.switch_step = n >= 0, beta for u <= n (the updates of steps
 * 0 .. n-1), beta_late after, whatever total_steps is. switch_step -1 is set
 * explicitly (after 2, to see that -1 really restores the fraction rule). */
static void check_teacher_at(double beta, double beta_late, double sw, int64_t total,
                             int with_smart, int64_t switch_step)
{
    const size_t d = 2, k = 3, count = 2, nw = k * d + k;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    double ema[SW];
    float before[SW];
    sm_set s;
    int step;
    size_t i;
    sm_bregman(r, 1.0, beta);
    sm_rset(r->breg, REGOPT_BREGMAN_BETA_LATE, beta_late);
    sm_rset(r->breg, REGOPT_BREGMAN_SWITCH, sw);
    if (switch_step != SW_UNSET) {
        int64_t v = -12345;
        if (switch_step == -1)
            RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_SWITCH_STEP, 2));
        RMUST(r->breg,
              regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_SWITCH_STEP, switch_step));
        RMUST(r->breg, regopt_regularizer_get_int(r->breg, REGOPT_BREGMAN_SWITCH_STEP, &v));
        ck_assert_int_eq(v, switch_step);
    }
    SM_MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_TOTAL_STEPS, total));
    if (with_smart)
        sm_smart(r, 1.0, 0.1, 0.01, 0.01, 1, REGOPT_SMART_NORM_INF, 0);
    for (step = 0; step < 7; step++) {
        double bu;
        int late;
        memcpy(before, r->h.A, sizeof(float) * k * d);
        memcpy(before + k * d, r->h.b, sizeof(float) * k);
        if (step == 0)
            for (i = 0; i < nw; i++)
                ema[i] = before[i];
        sm_fill(&s, count, 2, 1, d, k, 0, 0, 10 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
        /* the teacher forwards come first, once per micro-batch, and see
           the EMA weights; the student's are back bit-exactly after them */
        for (i = 0; i < (size_t)r->h.nrec; i++) {
            const sm_rec *c = &r->h.rec[i];
            size_t j;
            if (i < count) {
                ck_assert(!c->backward && c->slot == 0 && c->micro_batch == i);
                ck_assert_uint_eq(c->flags, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD);
                for (j = 0; j < k * d; j++)
                    sm_near(c->w[j], ema[j], 2e-6, 1.0, "teacher A", (int)(10 * step + j));
                for (j = 0; j < k; j++)
                    sm_near(c->w[SK * SD + j], ema[k * d + j], 2e-6, 1.0, "teacher b",
                            (int)(10 * step + j));
                if (step == 0 || beta == 0.0) /* the teacher is the student itself */
                    ck_assert_msg(memcmp(c->w, before, sizeof(float) * k * d) == 0,
                                  "step %d: teacher differs from w", step);
            } else {
                ck_assert_msg(!(c->flags & REGOPT_PASS_TEACHER), "teacher pass at call %zu", i);
                if (!c->backward && !(c->flags & REGOPT_PASS_NO_GRAD))
                    ck_assert_msg(memcmp(c->w, before, sizeof(float) * k * d) == 0 &&
                                      memcmp(c->w + SK * SD, before + k * d,
                                             sizeof(float) * k) == 0,
                                  "step %d call %zu: student weights not restored", step, i);
            }
        }
        if (beta == 0.0 || step == 0)
            ck_assert_double_eq(rstat(r->breg, REGOPT_STAT_BREGMAN_D), 0.0);
        if (switch_step != SW_UNSET && switch_step >= 0)
            late = step >= switch_step;
        else
            late = total > 0 && (double)step >= sw * (double)total;
        bu = late ? beta_late : beta;
        sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_BETA), bu, 1e-7, 1e-9, "stat.bregman_beta",
                step);
        if (switch_step != SW_UNSET) /* the beta in force, as the float the EMA used */
            ck_assert_msg(rstat(r->breg, REGOPT_STAT_BREGMAN_BETA) == (double)(float)bu,
                          "switch_step %lld, step %d: bregman.beta_used %.17g, want %s "
                          "(float) %.17g",
                          (long long)switch_step, step, rstat(r->breg, REGOPT_STAT_BREGMAN_BETA),
                          late ? "beta_late" : "beta", (double)(float)bu);
        for (i = 0; i < k * d; i++)
            ema[i] = bu * ema[i] + (1.0 - bu) * r->h.A[i];
        for (i = 0; i < k; i++)
            ema[k * d + i] = bu * ema[k * d + i] + (1.0 - bu) * r->h.b[i];
    }
    sm_close(r);
}

static void check_teacher(double beta, double beta_late, double sw, int64_t total,
                          int with_smart)
{
    check_teacher_at(beta, beta_late, sw, total, with_smart, SW_UNSET);
}

START_TEST(teacher_ema) { check_teacher(0.6, 0.6, 0.1, 0, 0); }
END_TEST
START_TEST(teacher_beta_switch) { check_teacher(0.6, 0.2, 0.3, 10, 1); }
END_TEST
START_TEST(teacher_beta_switch_default_fraction) { check_teacher(0.5, 0.9, 0.1, 20, 0); }
END_TEST
START_TEST(teacher_beta_zero_is_previous_weights) { check_teacher(0.0, 0.0, 0.1, 0, 1); }
END_TEST

/* bregman.switch_step: with total_steps 0 (where the fraction rule never
 * switches) steps 0..2 use beta and steps 3.. beta_late. */
START_TEST(teacher_switch_step_without_total_steps)
{
    check_teacher_at(0.6, 0.2, 0.1, 0, 0, 3);
    check_teacher_at(0.5, 0.9, 0.1, 0, 1, 3); /* with SMART, beta_late > beta */
}
END_TEST

/* switch_step 0: beta_late from the first update on. */
START_TEST(teacher_switch_step_zero) { check_teacher_at(0.6, 0.2, 0.1, 0, 0, 0); }
END_TEST

/* switch_step wins over the fraction: total 10, switch 0.5 would switch at
 * step 5; switch_step 2 switches at step 2 (and 6 would at 6). */
START_TEST(teacher_switch_step_overrides_fraction)
{
    check_teacher_at(0.6, 0.2, 0.5, 10, 0, 2);
    check_teacher_at(0.6, 0.2, 0.3, 10, 0, 6);
}
END_TEST

/* switch_step -1 (the default, here set back after 2): the fraction rule,
 * switching at 0.5 * 10 = step 5; with total_steps 0, never. */
START_TEST(teacher_switch_step_minus_one_is_fraction_rule)
{
    check_teacher_at(0.6, 0.2, 0.5, 10, 0, -1);
    check_teacher_at(0.6, 0.2, 0.5, 0, 0, -1);
}
END_TEST

/* ======================================================================== */
/* 6. Statistics with everything on                                          */
/* ======================================================================== */

static void check_stats(int p, regopt_loss_kind loss)
{
    const size_t d = 2, k = 3, rows = 2, T = 2, count = 2;
    const double lambda = 1.5, mu = 0.7;
    const int mse = loss == REGOPT_LOSS_MSE;
    sm_run *r = sm_open(d, k, 2, loss, 0.3, NULL, NULL);
    sm_set s;
    double W, R = 0.0, D = 0.0, task = 0.0, noise = 0.0, nrows = 0.0;
    size_t mb, i, j;
    int step;
    sm_smart(r, lambda, 0.2, 0.05, 0.5, 2, p, 0);
    sm_bregman(r, mu, 0.5);
    for (step = 0; step < 3; step++) {
        sm_fill(&s, count, rows, T, d, k, 1, 1, 20 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
    }
    W = sm_wsum(&s);
    for (mb = 0; mb < count; mb++) {
        const sm_rec *fq = sm_must_find(&r->h, 0, 0, mb, REGOPT_PASS_TEACHER, 0, 0);
        const sm_rec *fz = sm_must_find(&r->h, 0, 0, mb, REGOPT_PASS_TRAIN, 0, 0);
        const sm_rec *fa = sm_must_find(&r->h, 0, 1, mb, 0, 0, 2);
        ck_assert_uint_eq(fa->input_rows, rows * T);
        for (i = 0; i < rows; i++) {
            double z[SK], a[SK], q[SK], g[SK], rw = sm_rw(&s, mb, i);
            f2d(z, fz->out + i * k, k);
            f2d(a, fa->out + i * k, k);
            f2d(q, fq->out + i * k, k);
            R += rw * ref_ls(a, z, k, mse) / W;
            D += rw * ref_ls(z, q, k, mse) / W;
            task += rw * ref_task(z, k, s.y[mb][i], s.tg[mb] + i * k, mse, g) / W;
        }
        for (j = 0; j < rows * T; j++) { /* every embedding row, padded or not */
            noise += ref_normf(fa->pert + j * d, d, p);
            nrows += 1.0;
        }
    }
    ck_assert(R > 1e-7 && D > 1e-7);
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_RS), R, 1e-5, 1e-9, "stat.smart_rs", p);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_D), D, 1e-5, 1e-9, "stat.bregman_d", p);
    sm_near(sm_get(r->t, REGOPT_STAT_LOSS), task, 1e-5, 1e-9, "stat.loss", p);
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), noise / nrows, 1e-6, 1e-9,
            "stat.smart_noise_norm", p);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_BETA), 0.5, 1e-7, 1e-9, "stat.bregman_beta", p);
    sm_near(sm_get(r->t, REGOPT_STAT_OBJECTIVE), task + lambda * R + mu * D, 1e-5, 1e-9,
            "stat.objective", p);
    sm_close(r);
}

START_TEST(stats_inf_ce) { check_stats(REGOPT_SMART_NORM_INF, REGOPT_LOSS_SOFTMAX_CE); }
END_TEST
START_TEST(stats_l1_mse) { check_stats(REGOPT_SMART_NORM_L1, REGOPT_LOSS_MSE); }
END_TEST
START_TEST(stats_l2_ce) { check_stats(REGOPT_SMART_NORM_L2, REGOPT_LOSS_SOFTMAX_CE); }
END_TEST

/* Statistics read 0 before the first step (before and after attach) and
 * cannot be set: on their handle they are read-only (REGOPT_ERR_STATE, as
 * for the trainer's statistics), and since 1.0 they are not trainer keys. */
START_TEST(stats_read_only)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_key keys[4] = {REGOPT_STAT_SMART_RS, REGOPT_STAT_SMART_NOISE_NORM,
                          REGOPT_STAT_BREGMAN_D, REGOPT_STAT_BREGMAN_BETA};
    regopt_regularizer *smart = sm_new(r, REGOPT_REG_SMART);
    regopt_regularizer *breg = sm_new(r, REGOPT_REG_BREGMAN);
    int i, attached;
    for (attached = 0; attached < 2; attached++) {
        if (attached) {
            SM_TMUST(r->t, regopt_trainer_attach(r->t, smart));
            SM_TMUST(r->t, regopt_trainer_attach(r->t, breg));
        }
        for (i = 0; i < 4; i++) {
            regopt_regularizer *g = i < 2 ? smart : breg;
            regopt_status st;
            ck_assert_double_eq(rstat(g, keys[i]), 0.0);
            st = regopt_regularizer_set_double(g, keys[i], 1.0);
            ck_assert_msg(st == REGOPT_ERR_STATE, "setting statistic %d on its handle: %s",
                          (int)keys[i], regopt_status_string(st));
            ck_assert_double_eq(rstat(g, keys[i]), 0.0);
            ck_assert_int_eq(regopt_trainer_set_double(r->t, keys[i], 0.0),
                             REGOPT_ERR_UNKNOWN_KEY);
        }
    }
    sm_close(r);
}
END_TEST

/* ======================================================================== */
/* 7. SMART + Bregman + SAM                                                 */
/* ======================================================================== */

static void sm_sam(sm_run *r)
{
    r->sam = sm_attach(r, REGOPT_REG_SAM);
    sm_rset(r->sam, REGOPT_SAM_RHO, 0.05);
}

START_TEST(sam_counts_and_restores)
{
    const size_t d = 2, k = 3, count = 2, nw = k * d;
    const int K = 2;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_SOFTMAX_CE, 0.25, NULL, NULL);
    float A0[SK * SD], b0[SK];
    sm_set s;
    int i, pert_adv = 0, pert_npg = 0, clean_seen = 0;
    size_t j;
    sm_smart(r, 1.0, 0.1, 0.01, 0.1, K, REGOPT_SMART_NORM_INF, 0);
    sm_bregman(r, 1.0, 0.5);
    sm_sam(r);
    sm_fill(&s, count, 2, 1, d, k, 0, 0, 30);
    sm_step(r, &s); /* first step: teacher = w */
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    sm_fill(&s, count, 2, 1, d, k, 0, 0, 31);
    sm_reset(r);
    sm_step(r, &s);
    ck_assert_int_eq(r->h.forwards, (int)count * (1 + 2 * (K + 2)));
    ck_assert_int_eq(r->h.backwards, (int)count * 2 * (K + 2));
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_FORWARD_CALLS), (double)r->h.forwards);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 1.0);
    for (i = 0; i < r->h.nrec; i++) {
        const sm_rec *c = &r->h.rec[i];
        if (i < (int)count) {
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD);
            continue;
        }
        if (c->flags & REGOPT_PASS_PERTURBED_WEIGHTS) {
            ck_assert_msg(memcmp(c->w, A0, sizeof(float) * nw) != 0,
                          "perturbed pass at unperturbed weights");
            if (!c->backward && c->slot == 1)
                pert_adv++;
            if (c->backward && (c->flags & REGOPT_PASS_NO_PARAM_GRAD))
                pert_npg++;
        } else if (!c->backward) {
            ck_assert_msg(memcmp(c->w, A0, sizeof(float) * nw) == 0, "clean pass at w + eps");
            clean_seen++;
        }
    }
    ck_assert_int_eq(pert_adv, (int)count * (K + 1));
    ck_assert_int_eq(pert_npg, (int)count * K);
    ck_assert_int_eq(clean_seen, (int)count * (K + 2));
    /* restored bit-exactly before the update: w_new = w - lr g (SGD) where g
       is the gradient left in the buffers */
    for (j = 0; j < nw; j++)
        sm_near(r->h.A[j], (double)A0[j] - 0.25 * r->h.gA[j], 1e-6, 1.0, "A", (int)j);
    for (j = 0; j < k; j++)
        sm_near(r->h.b[j], (double)b0[j] - 0.25 * r->h.gb[j], 1e-6, 1.0, "b", (int)j);
    /* the SMART statistics are those of the clean evaluation */
    ck_assert(rstat(r->smart, REGOPT_STAT_SMART_RS) > 0.0);
    sm_close(r);
}
END_TEST

static sm_run *rollback_run(void)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.25, NULL, NULL);
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    sm_smart(r, 1.0, 0.1, 0.01, 0.1, 2, REGOPT_SMART_NORM_L2, 0);
    sm_bregman(r, 1.0, 0.5);
    sm_sam(r);
    return r;
}

/* A run that fails in the adversarial forward of the perturbed evaluation
 * at step `fail_at`, retries and continues, ends bit-identical to a run that
 * never failed: parameters, step count, momentum, teacher and noise. */
static void check_rollback(int fail_at)
{
    sm_run *a = rollback_run(), *b = rollback_run();
    sm_set s;
    int step, i;
    for (step = 0; step < 5; step++) {
        sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 40 + (unsigned)step);
        if (step == fail_at) {
            float A0[SK * SD], b0[SK];
            regopt_status st;
            int64_t n = -1;
            memcpy(A0, a->h.A, sizeof A0);
            memcpy(b0, a->h.b, sizeof b0);
            a->h.fail_perturbed_adv = 1;
            st = regopt_trainer_step(a->t, s.b, s.count);
            ck_assert_int_eq(st, REGOPT_ERR_FORWARD);
            ck_assert_int_eq(a->h.fail_perturbed_adv, 0);
            ck_assert_msg(memcmp(A0, a->h.A, sizeof A0) == 0 && memcmp(b0, a->h.b, sizeof b0) == 0,
                          "weights changed by a failed step");
            SM_MUST(regopt_trainer_get_int(a->t, REGOPT_STAT_STEP, &n));
            ck_assert_int_eq(n, step);
        }
        sm_reset(a);
        sm_reset(b);
        sm_step(a, &s);
        sm_step(b, &s);
        ck_assert_int_eq(a->h.nrec, b->h.nrec);
        for (i = 0; i < a->h.nrec; i++) {
            const sm_rec *x = &a->h.rec[i], *y = &b->h.rec[i];
            ck_assert_msg(x->flags == y->flags && x->seed == y->seed &&
                              memcmp(x->w, y->w, sizeof x->w) == 0 &&
                              memcmp(x->pert, y->pert, sizeof x->pert) == 0,
                          "step %d call %d differs from the run that never failed", step, i);
        }
        ck_assert_msg(memcmp(a->h.A, b->h.A, sizeof a->h.A) == 0 &&
                          memcmp(a->h.b, b->h.b, sizeof a->h.b) == 0,
                      "weights differ after step %d", step);
    }
    sm_close(a);
    sm_close(b);
}

START_TEST(rollback_in_perturbed_adversarial_forward) { check_rollback(2); }
END_TEST
START_TEST(rollback_in_first_step) { check_rollback(0); }
END_TEST

/* A failure in the teacher forward itself leaves the student in place. */
START_TEST(rollback_in_teacher_forward)
{
    sm_run *r = rollback_run();
    float A0[SK * SD], b0[SK];
    sm_set s;
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 50);
    sm_step(r, &s);
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    sm_reset(r);
    r->h.fail_forward = 2; /* the second teacher forward */
    ck_assert_int_eq(regopt_trainer_step(r->t, s.b, s.count), REGOPT_ERR_FORWARD);
    ck_assert_msg(memcmp(A0, r->h.A, sizeof A0) == 0 && memcmp(b0, r->h.b, sizeof b0) == 0,
                  "student weights not restored after a failed teacher pass");
    r->h.fail_forward = 0;
    sm_step(r, &s);
    sm_close(r);
}
END_TEST

/* ======================================================================== */
/* 8. Errors and options                                                    */
/* ======================================================================== */

/* attach(g) fails with `want`, and g stays unattached and the trainer's
 * regularizer count is unchanged (on failure nothing changes). */
static void sm_attach_fails(sm_run *r, regopt_regularizer *g, regopt_status want)
{
    size_t n = regopt_trainer_regularizer_count(r->t);
    regopt_trainer *owner = regopt_regularizer_get_trainer(g);
    regopt_status st = regopt_trainer_attach(r->t, g);
    ck_assert_msg(st == want, "attach of kind %d -> %s, want %s (%s)",
                  (int)regopt_regularizer_get_kind(g), regopt_status_string(st),
                  regopt_status_string(want), regopt_trainer_message(r->t));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), n);
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), owner);
}

START_TEST(smart_needs_input_width_and_slots)
{
    sm_run *r = sm_open(0, 3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_regularizer *smart, *breg;
    smart = sm_new(r, REGOPT_REG_SMART);
    sm_attach_fails(r, smart, REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "input width") != NULL, "%s",
                  regopt_trainer_message(r->t));
    sm_attach(r, REGOPT_REG_BREGMAN);
    sm_close(r);

    r = sm_open(2, 3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    smart = sm_new(r, REGOPT_REG_SMART);
    sm_attach_fails(r, smart, REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "slot") != NULL, "%s",
                  regopt_trainer_message(r->t));
    /* Bregman needs no extra slot */
    breg = sm_attach(r, REGOPT_REG_BREGMAN);
    sm_attach_fails(r, sm_new(r, REGOPT_REG_BREGMAN), REGOPT_ERR_STATE); /* a second one */
    sm_attach_fails(r, breg, REGOPT_ERR_STATE);                          /* the same twice */
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    sm_close(r);

    /* two slots: SMART alone fits, SMART with two-call R-Drop does not */
    r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    smart = sm_attach(r, REGOPT_REG_SMART);
    sm_attach_fails(r, sm_new(r, REGOPT_REG_SMART), REGOPT_ERR_STATE);
    sm_attach_fails(r, sm_new(r, REGOPT_REG_RDROP), REGOPT_ERR_STATE);
    SM_TMUST(r->t, regopt_trainer_detach(r->t, smart));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(smart));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    sm_attach(r, REGOPT_REG_RDROP);
    sm_attach_fails(r, smart, REGOPT_ERR_STATE); /* the detached handle, back: no slot */
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "slot") != NULL, "%s",
                  regopt_trainer_message(r->t));
    sm_close(r);
}
END_TEST

typedef struct sm_key {
    regopt_key key;
    const char *name;
    int type;
    double min, max, def;
    uint32_t flags;
    regopt_regularizer_kind kind; /* the handle the key belongs to */
} sm_key;

#define KD REGOPT_TYPE_DOUBLE
#define KI REGOPT_TYPE_INT
#define RS REGOPT_REG_SMART
#define RB REGOPT_REG_BREGMAN
/* from the header's comments */
static const sm_key SM_KEYS[] = {
    {REGOPT_SMART_LAMBDA, "smart.lambda", KD, 0, 1e4, 1, 0, RS},
    {REGOPT_SMART_EPSILON, "smart.epsilon", KD, 0, 1e3, 1e-5, REGOPT_KEY_MIN_EXCLUSIVE, RS},
    {REGOPT_SMART_SIGMA, "smart.sigma", KD, 0, 1e3, 1e-5, 0, RS},
    {REGOPT_SMART_ETA, "smart.eta", KD, 0, 1e3, 1e-3, 0, RS},
    {REGOPT_SMART_STEPS, "smart.steps", KI, 1, 100, 1, 0, RS},
    {REGOPT_SMART_NORM, "smart.norm", KI, 0, 2, REGOPT_SMART_NORM_INF, 0, RS},
    {REGOPT_SMART_MTDNN, "smart.mtdnn", KI, 0, 1, 0, 0, RS},
    {REGOPT_SMART_STABLE_KL, "smart.stable_kl", KI, 0, 1, 0, 0, RS},
    {REGOPT_SMART_SAME_SEED, "smart.same_seed", KI, 0, 1, 1, 0, RS},
    {REGOPT_BREGMAN_MU, "bregman.mu", KD, 0, 1e4, 1, 0, RB},
    {REGOPT_BREGMAN_BETA, "bregman.beta", KD, 0, 1, 0.99, REGOPT_KEY_MAX_EXCLUSIVE, RB},
    {REGOPT_BREGMAN_BETA_LATE, "bregman.beta_late", KD, 0, 1, 0.999, REGOPT_KEY_MAX_EXCLUSIVE,
     RB},
    {REGOPT_BREGMAN_SWITCH, "bregman.switch", KD, 0, 1, 0.1, 0, RB},
    {REGOPT_BREGMAN_SWITCH_STEP, "bregman.switch_step", KI, -1, 2147483648.0, -1, 0, RB},
};

static void expect_out_of_range(regopt_regularizer *g, const sm_key *k, double v)
{
    double before = rstat(g, k->key);
    regopt_status st = regopt_regularizer_set_double(g, k->key, v);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %g -> %s", k->name, v,
                  regopt_status_string(st));
    ck_assert_msg(strstr(regopt_regularizer_message(g), k->name) != NULL,
                  "message of %s = %g does not name the key: %s", k->name, v,
                  regopt_regularizer_message(g));
    ck_assert_double_eq(rstat(g, k->key), before);
}

static void expect_accepted(regopt_regularizer *g, const sm_key *k, double v)
{
    regopt_status st = regopt_regularizer_set_double(g, k->key, v);
    ck_assert_msg(st == REGOPT_OK, "%s = %.17g -> %s: %s", k->name, v, regopt_status_string(st),
                  regopt_regularizer_message(g));
    ck_assert_double_eq(rstat(g, k->key), v);
}

/* The smallest integral double above an integer x (x + 1 rounds to x from
 * 2^53 on). */
static double int_above(double x)
{
    return x + 1.0 > x ? x + 1.0 : nextafter(x, HUGE_VAL);
}

START_TEST(option_bounds_and_defaults)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_regularizer *smart = sm_new(r, REGOPT_REG_SMART);
    regopt_regularizer *breg = sm_new(r, REGOPT_REG_BREGMAN);
    size_t i;
    int attached;
    /* options work before the attach and after it */
    for (attached = 0; attached < 2; attached++) {
        if (attached) {
            SM_TMUST(r->t, regopt_trainer_attach(r->t, smart));
            SM_TMUST(r->t, regopt_trainer_attach(r->t, breg));
        }
        for (i = 0; i < sizeof SM_KEYS / sizeof SM_KEYS[0]; i++) {
            const sm_key *k = &SM_KEYS[i];
            regopt_regularizer *g = k->kind == RS ? smart : breg;
            regopt_regularizer *other = k->kind == RS ? breg : smart;
            const char *name = NULL;
            int type = 0;
            double mn = -1, mx = -1, def = -1, v = -1;
            uint32_t flags = 99;
            regopt_key found = (regopt_key)0;
            SM_MUST(regopt_key_info(k->key, &name, &type, &mn, &mx, &def, &flags));
            ck_assert_str_eq(name, k->name);
            ck_assert_int_eq(type, k->type);
            ck_assert_msg(mn == k->min && mx == k->max, "%s: [%g, %g]", k->name, mn, mx);
            ck_assert_msg(def == k->def, "%s: key_info default %g, header %g", k->name, def,
                          k->def);
            ck_assert_uint_eq(flags, k->flags);
            SM_MUST(regopt_key_from_name(k->name, &found));
            ck_assert_int_eq(found, k->key);
            /* a new regularizer holds the default */
            ck_assert_msg(rstat(g, k->key) == k->def, "%s: regularizer default %g (attached %d)",
                          k->name, rstat(g, k->key), attached);
            /* edges */
            if (k->flags & REGOPT_KEY_MIN_EXCLUSIVE) {
                expect_out_of_range(g, k, k->min);
                expect_accepted(g, k, nextafter(k->min, HUGE_VAL));
            } else {
                expect_accepted(g, k, k->min);
                expect_out_of_range(g, k,
                                    k->type == KI ? k->min - 1 : nextafter(k->min, -HUGE_VAL));
            }
            if (k->flags & REGOPT_KEY_MAX_EXCLUSIVE) {
                expect_out_of_range(g, k, k->max);
                expect_accepted(g, k, nextafter(k->max, -HUGE_VAL));
            } else {
                expect_accepted(g, k, k->max);
                expect_out_of_range(g, k,
                                    k->type == KI ? int_above(k->max) : nextafter(k->max, HUGE_VAL));
            }
            expect_out_of_range(g, k, NAN);
            expect_out_of_range(g, k, HUGE_VAL);
            expect_out_of_range(g, k, -HUGE_VAL);
            if (k->type == KI) {
                int64_t iv = -12345;
                expect_out_of_range(g, k, k->min + 0.5);
                ck_assert_int_eq(regopt_regularizer_set_int(g, k->key, (int64_t)k->max + 1),
                                 REGOPT_ERR_OUT_OF_RANGE);
                ck_assert_int_eq(regopt_regularizer_set_int(g, k->key, (int64_t)k->min - 1),
                                 REGOPT_ERR_OUT_OF_RANGE);
                RMUST(g, regopt_regularizer_set_int(g, k->key, (int64_t)k->min));
                RMUST(g, regopt_regularizer_get_int(g, k->key, &iv));
                ck_assert_int_eq(iv, (int64_t)k->min);
            }
            /* back to the default */
            expect_accepted(g, k, k->def);
            /* a key of one kind: not a key of the other kind, nor of the
               trainer (since 1.0) or the optimizer */
            ck_assert_int_eq(regopt_regularizer_set_double(other, k->key, k->def),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_regularizer_get_double(other, k->key, &v),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_trainer_set_double(r->t, k->key, k->def),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_optimizer_set_double(r->o, k->key, k->def),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_double_eq(rstat(g, k->key), k->def);
        }
    }
    sm_close(r);
}
END_TEST

/* ======================================================================== */
/* 9. Allocation                                                            */
/* ======================================================================== */


static sm_run *alloc_run(const regopt_allocator *a, int sam)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, a);
    sm_smart(r, 1.0, 0.1, 0.01, 0.1, 2, REGOPT_SMART_NORM_L1, 0);
    sm_bregman(r, 1.0, 0.5);
    if (sam)
        sm_sam(r);
    return r;
}

START_TEST(no_allocation_after_the_first_step)
{
    int sam;
    for (sam = 0; sam < 2; sam++) {
        counting c = {0, 0, 0};
        regopt_allocator a = {sizeof(regopt_allocator), count_alloc, count_release, &c};
        sm_run *r = alloc_run(&a, sam);
        sm_set s;
        long before;
        int step;
        sm_fill(&s, 2, 3, 2, 2, 3, 1, 1, 60);
        sm_step(r, &s);
        before = c.allocs;
        for (step = 0; step < 6; step++) {
            sm_fill(&s, 1 + (size_t)(step % 2), 3 - (size_t)(step % 3 == 1), 2, 2, 3, 1, 0,
                    61 + (unsigned)step);
            sm_reset(r);
            sm_step(r, &s);
        }
        ck_assert_msg(c.allocs == before, "SMART/Bregman%s steps allocated %ld times",
                      sam ? "/SAM" : "", c.allocs - before);
        sm_close(r);
        ck_assert_int_eq(c.allocs, c.frees);
    }
}
END_TEST

/* The header: regularizers allocate their buffers when added, "never in a
 * step", and regopt_trainer_reserve makes "not even the first step"
 * allocate. */
START_TEST(reserve_makes_the_first_smart_step_allocation_free)
{
    counting c = {0, 0, 0};
    regopt_allocator a = {sizeof(regopt_allocator), count_alloc, count_release, &c};
    sm_run *r = alloc_run(&a, 1);
    sm_set s;
    long before;
    sm_fill(&s, 2, 3, 1, 2, 3, 0, 0, 70);
    SM_TMUST(r->t, regopt_trainer_reserve(r->t, 8));
    before = c.allocs;
    sm_step(r, &s);
    before = c.allocs - before;
    sm_close(r); /* first, so that a failure below leaks nothing */
    ck_assert_msg(before == 0, "the first step after reserve allocated %ld times", before);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

/* ======================================================================== */

/* Regression: a batch whose embedding-row count is not a multiple of its
 * rows (token-level inputs of varied lengths) keeps that count in every
 * pass; once it was rounded down to a multiple, so the host and the noise
 * buffers disagreed. Host: z_i = a . (sum of all embedding rows) + b_i. */
typedef struct ragged {
    float a[2], b[2], ga[2], gb[2];
    const float *e;
    float sum[2];
    size_t seen_rows[16];
    int passes, perturbed;
} ragged;

static int ragged_forward(const regopt_pass *p, void *user)
{
    ragged *r = user;
    size_t i, j;
    if (r->passes < 16)
        r->seen_rows[r->passes] = p->input_rows;
    r->passes++;
    r->perturbed += p->input_perturbation != NULL;
    r->sum[0] = r->sum[1] = 0.0f;
    for (i = 0; i < p->input_rows; i++)
        for (j = 0; j < 2; j++)
            r->sum[j] += r->e[i * 2 + j] +
                         (p->input_perturbation ? p->input_perturbation[i * 2 + j] : 0.0f);
    for (i = 0; i < p->rows; i++)
        p->outputs[i * 2 + 0] = r->a[0] * r->sum[0] + r->b[0],
        p->outputs[i * 2 + 1] = r->a[1] * r->sum[1] + r->b[1];
    return 0;
}

static int ragged_backward(const regopt_pass *p, void *user)
{
    ragged *r = user;
    size_t i;
    float d0 = 0.0f, d1 = 0.0f;
    for (i = 0; i < p->rows; i++)
        d0 += p->d_outputs[i * 2], d1 += p->d_outputs[i * 2 + 1];
    if (p->d_input)
        for (i = 0; i < p->input_rows; i++)
            p->d_input[i * 2] = r->a[0] * d0, p->d_input[i * 2 + 1] = r->a[1] * d1;
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 0;
    r->ga[0] += d0 * r->sum[0], r->ga[1] += d1 * r->sum[1];
    r->gb[0] += d0, r->gb[1] += d1;
    return 0;
}

START_TEST(ragged_input_rows_kept)
{
    static const float e[5 * 2] = {0.1f, -0.2f, 0.3f, 0.4f, -0.5f, 0.6f, 0.7f, -0.8f, 0.9f, 1.0f};
    static const int32_t y[2] = {0, 1};
    ragged r;
    regopt_model *m = regopt_model_create(NULL, NULL);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    regopt_trainer *t;
    regopt_regularizer *smart;
    regopt_batch b;
    int i;
    memset(&r, 0, sizeof r);
    r.a[0] = 0.5f, r.a[1] = -0.25f;
    r.e = e;
    SM_MUST(regopt_model_add_param(m, "a", r.a, r.ga, 2, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_add_param(m, "b", r.b, r.gb, 2, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_set_output_width(m, 2));
    SM_MUST(regopt_model_set_input_width(m, 2));
    SM_MUST(regopt_model_set_slots(m, 2));
    SM_MUST(regopt_model_set_callbacks(m, ragged_forward, ragged_backward, &r, NULL));
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    smart = tu_add(t, REGOPT_REG_SMART);
    RMUST(smart, regopt_regularizer_set_int(smart, REGOPT_SMART_STEPS, 2));
    regopt_batch_init(&b);
    b.rows = 2;
    b.input_rows = 5; /* 2 + 3 tokens: not a multiple of 2 */
    b.labels = y;
    SM_TMUST(t, regopt_trainer_step(t, &b, 1));
    ck_assert_int_ge(r.perturbed, 3); /* noise pass, 2 ascent steps... */
    for (i = 0; i < r.passes && i < 16; i++)
        ck_assert_msg(r.seen_rows[i] == 5, "pass %d saw %zu embedding rows, want 5", i,
                      r.seen_rows[i]);
    regopt_trainer_free(t);
    tu_free_regs();
    regopt_optimizer_free(o);
    regopt_model_free(m);
}
END_TEST

/* ======================================================================== */
/* Non-finite ascent passes (issue 16, defect 8)                            */
/* ======================================================================== */

/* A NaN d_input or a non-finite adversarial output in an ascent pass fails
 * the step with the status the final adversarial pass gives (the loss is not
 * finite), a message naming the pass, and nothing changed -- in paper mode
 * with every norm (where `n > 0` and the inf-norm's max used to drop NaN and
 * make a successful step) and in mt-dnn mode alike. */
static void check_nonfinite_ascent(int norm, int mtdnn, int poison, regopt_loss_kind loss)
{
    sm_run *r = sm_open(3, 2, 2, loss, 0.1, NULL, NULL);
    float A0[SK * SD], b0[SK];
    double rs0, noise0;
    const char *msg, *pass = poison <= SM_POISON_NAN_DIN_ONE ? "ascent backward"
                                                             : "ascent forward";
    sm_set s;
    regopt_status st;
    sm_fill(&s, 2, 3, 1, 3, 2, 1, 0, 7);
    sm_smart(r, 1.0, 0.05, 0.03, 1.0, 2, norm, mtdnn);
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    sm_step(r, &s); /* a good step first: momentum and statistics to keep */
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    rs0 = rstat(r->smart, REGOPT_STAT_SMART_RS);
    noise0 = rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM);
    r->h.poison = poison;
    st = regopt_trainer_step(r->t, s.b, s.count);
    msg = regopt_trainer_message(r->t);
    ck_assert_msg(st == REGOPT_ERR_NONFINITE_LOSS,
                  "norm %d mtdnn %d poison %d: step -> %s (%s)", norm, mtdnn, poison,
                  regopt_status_string(st), msg);
    ck_assert_int_eq(r->h.poison, 0); /* the poisoned pass ran */
    ck_assert_msg(strstr(msg, "SMART") && strstr(msg, pass) && strstr(msg, "micro-batch 0"),
                  "norm %d mtdnn %d poison %d: the message does not name the %s: %s", norm,
                  mtdnn, poison, pass, msg);
    ck_assert_msg(memcmp(A0, r->h.A, sizeof A0) == 0 && memcmp(b0, r->h.b, sizeof b0) == 0,
                  "norm %d mtdnn %d poison %d: weights changed by a failed step", norm, mtdnn,
                  poison);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 1);
    ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_RS), rs0);
    ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), noise0);
    /* the same step again, unspoiled, succeeds */
    sm_step(r, &s);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 2);
    ck_assert(isfinite(rstat(r->smart, REGOPT_STAT_SMART_RS)));
    sm_close(r);
}

static void check_nonfinite_ascent_all(int mtdnn)
{
    static const int norms[3] = {REGOPT_SMART_NORM_INF, REGOPT_SMART_NORM_L1,
                                 REGOPT_SMART_NORM_L2};
    int i, poison;
    for (i = 0; i < 3; i++)
        for (poison = SM_POISON_NAN_DIN; poison <= SM_POISON_INF_OUT_ALL; poison++) {
            check_nonfinite_ascent(norms[i], mtdnn, poison, REGOPT_LOSS_SOFTMAX_CE);
            check_nonfinite_ascent(norms[i], mtdnn, poison, REGOPT_LOSS_MSE);
        }
}

/* A huge but finite d_input: the paper's update divides by its norm and
 * stays finite; mt-dnn's nu + eta g overflows a float, which fails the step
 * naming the update instead of feeding inf/inf = NaN to the host. */
START_TEST(huge_d_input_overflows_only_mtdnn)
{
    int mtdnn;
    for (mtdnn = 0; mtdnn <= 1; mtdnn++) {
        sm_run *r = sm_open(3, 2, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
        float A0[SK * SD];
        regopt_status st;
        sm_set s;
        sm_fill(&s, 1, 3, 1, 3, 2, 0, 0, 9);
        sm_smart(r, 1.0, 0.05, 0.03, 1000.0, 1, REGOPT_SMART_NORM_L2, mtdnn);
        memcpy(A0, r->h.A, sizeof A0);
        r->h.poison = SM_POISON_HUGE_DIN;
        st = regopt_trainer_step(r->t, s.b, s.count);
        ck_assert_int_eq(r->h.poison, 0);
        if (!mtdnn) {
            ck_assert_msg(st == REGOPT_OK, "paper mode: %s", regopt_trainer_message(r->t));
        } else {
            ck_assert_int_eq(st, REGOPT_ERR_NONFINITE_LOSS);
            ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "ascent update"));
            ck_assert_int_eq(memcmp(A0, r->h.A, sizeof A0), 0);
            ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 0);
        }
        sm_close(r);
    }
}
END_TEST

/* The Bregman term has no ascent to swallow a NaN: a NaN teacher output
 * makes D, and so the step's loss, NaN, and the step fails unchanged. */
START_TEST(bregman_reports_nonfinite_teacher)
{
    int mse;
    for (mse = 0; mse <= 1; mse++) {
        sm_run *r = sm_open(3, 2, 1, mse ? REGOPT_LOSS_MSE : REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL,
                            NULL);
        float A0[SK * SD], b0[SK];
        sm_set s;
        sm_fill(&s, 2, 3, 1, 3, 2, 1, 0, 11);
        sm_bregman(r, 1.0, 0.5);
        sm_step(r, &s);
        memcpy(A0, r->h.A, sizeof A0);
        memcpy(b0, r->h.b, sizeof b0);
        r->h.poison = SM_POISON_NAN_TEACHER;
        ck_assert_int_eq(regopt_trainer_step(r->t, s.b, s.count), REGOPT_ERR_NONFINITE_LOSS);
        ck_assert_int_eq(r->h.poison, 0);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "micro-batch 0"));
        ck_assert_int_eq(memcmp(A0, r->h.A, sizeof A0), 0);
        ck_assert_int_eq(memcmp(b0, r->h.b, sizeof b0), 0);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 1);
        sm_step(r, &s);
        sm_close(r);
    }
}
END_TEST

START_TEST(paper_mode_reports_nonfinite_ascent) { check_nonfinite_ascent_all(0); }
END_TEST
START_TEST(mtdnn_mode_reports_nonfinite_ascent) { check_nonfinite_ascent_all(1); }
END_TEST

/* ---- sizes (issue 16, defect 9) ------------------------------------------ */

/* An allocator that remembers the largest request and refuses any over
 * 1 GiB (so an unfixed library fails cleanly instead of paging). */
typedef struct capped {
    size_t biggest;
    long allocs;
} capped;

static void *capped_alloc(size_t n, void *user)
{
    capped *c = user;
    c->allocs++;
    if (n > c->biggest)
        c->biggest = n;
    return n > ((size_t)1 << 30) ? NULL : malloc(n);
}

static void capped_free(void *p, void *user)
{
    (void)user;
    free(p);
}

static int wide_pass(const regopt_pass *p, void *user)
{
    (void)p;
    ++*(int *)user;
    return 0;
}

/* SMART's two noise buffers are input_rows x input_width floats each: a
 * reserve or a batch asking for more than 2^36 floats (or for a count whose
 * byte size wraps) is refused with a message, before any allocation of
 * that size, and nothing changes. */
START_TEST(smart_noise_size_is_bounded)
{
    static const size_t bad_in[] = {(size_t)1 << 17, SIZE_MAX / 2 + 1, SIZE_MAX};
    static float w[2] = {0.5f, -0.25f}, gw[2];
    const size_t d = (size_t)1 << 20; /* 2^20 x 2^16 = 2^36 floats */
    capped c = {0, 0};
    regopt_allocator a = {sizeof(regopt_allocator), capped_alloc, capped_free, &c};
    regopt_model *m = regopt_model_create(&a, NULL);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_SGD, &a, NULL);
    regopt_trainer *t;
    regopt_regularizer *smart;
    regopt_batch b;
    int32_t y[4] = {0, 1, 0, 1};
    int calls = 0;
    int64_t steps = -1;
    size_t i;
    SM_MUST(regopt_model_add_param(m, "w", w, gw, 2, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_set_output_width(m, 2));
    SM_MUST(regopt_model_set_input_width(m, d));
    SM_MUST(regopt_model_set_slots(m, 2));
    SM_MUST(regopt_model_set_callbacks(m, wide_pass, wide_pass, &calls, NULL));
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    smart = tu_add(t, REGOPT_REG_SMART);
    ck_assert_ptr_nonnull(smart);
    c.biggest = 0;
    /* regopt_trainer_reserve sizes the noise for as many embedding rows */
    ck_assert_int_eq(regopt_trainer_reserve(t, (size_t)1 << 17), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "SMART"));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "2^36"));
    ck_assert_msg(c.biggest <= ((size_t)1 << 26), "an allocation of %zu bytes was tried",
                  c.biggest);
    /* a batch's embedding rows likewise, and before any pass */
    regopt_batch_init(&b);
    b.rows = 4;
    b.labels = y;
    for (i = 0; i < sizeof bad_in / sizeof bad_in[0]; i++) {
        b.input_rows = bad_in[i];
        ck_assert_int_eq(regopt_trainer_step(t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "input rows"));
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "2^36"));
    }
    ck_assert_msg(c.biggest <= ((size_t)1 << 26), "an allocation of %zu bytes was tried",
                  c.biggest);
    ck_assert_int_eq(calls, 0);
    ck_assert_float_eq(w[0], 0.5f);
    ck_assert_float_eq(w[1], -0.25f);
    SM_MUST(regopt_trainer_get_int(t, REGOPT_STAT_STEP, &steps));
    ck_assert_int_eq(steps, 0);
    /* small sizes still work */
    SM_TMUST(t, regopt_trainer_reserve(t, 4));
    regopt_trainer_free(t);
    tu_free_regs();
    regopt_optimizer_free(o);
    regopt_model_free(m);
}
END_TEST

Suite *suite_smart(void)
{
    Suite *s = suite_create("smart");
    TCase *tc = tcase_create("inner loop");
    tcase_add_test(tc, mtdnn_reference_vector);
    tcase_add_test(tc, mtdnn_library_follows_the_update);
    tcase_add_test(tc, noise_scales_with_sigma);
    tcase_add_test(tc, l1_projection_reference);
    tcase_add_test(tc, paper_mode_inf);
    tcase_add_test(tc, paper_mode_l2);
    tcase_add_test(tc, paper_mode_l1);
    tcase_add_test(tc, paper_mode_reports_nonfinite_ascent);
    tcase_add_test(tc, mtdnn_mode_reports_nonfinite_ascent);
    tcase_add_test(tc, huge_d_input_overflows_only_mtdnn);
    tcase_add_test(tc, bregman_reports_nonfinite_teacher);
    suite_add_tcase(s, tc);

    tc = tcase_create("gradients");
    tcase_add_test(tc, rs_gradients_classification);
    tcase_add_test(tc, rs_gradients_regression);
    tcase_add_test(tc, bregman_gradients_classification);
    tcase_add_test(tc, bregman_gradients_regression);
    tcase_add_test(tc, parameter_gradient_excludes_ascent_passes);
    suite_add_tcase(s, tc);

    tc = tcase_create("passes");
    tcase_add_test(tc, order_k1);
    tcase_add_test(tc, order_k3_fresh_seed);
    tcase_add_test(tc, order_k2_bregman);
    tcase_add_test(tc, rdrop_moves_smart_to_slot_2);
    tcase_add_test(tc, ragged_input_rows_kept);
    suite_add_tcase(s, tc);

    tc = tcase_create("teacher");
    tcase_add_test(tc, teacher_ema);
    tcase_add_test(tc, teacher_beta_switch);
    tcase_add_test(tc, teacher_beta_switch_default_fraction);
    tcase_add_test(tc, teacher_beta_zero_is_previous_weights);
    tcase_add_test(tc, teacher_switch_step_without_total_steps);
    tcase_add_test(tc, teacher_switch_step_zero);
    tcase_add_test(tc, teacher_switch_step_overrides_fraction);
    tcase_add_test(tc, teacher_switch_step_minus_one_is_fraction_rule);
    suite_add_tcase(s, tc);

    tc = tcase_create("statistics");
    tcase_add_test(tc, stats_inf_ce);
    tcase_add_test(tc, stats_l1_mse);
    tcase_add_test(tc, stats_l2_ce);
    tcase_add_test(tc, stats_read_only);
    suite_add_tcase(s, tc);

    tc = tcase_create("sam");
    tcase_add_test(tc, sam_counts_and_restores);
    tcase_add_test(tc, rollback_in_perturbed_adversarial_forward);
    tcase_add_test(tc, rollback_in_first_step);
    tcase_add_test(tc, rollback_in_teacher_forward);
    suite_add_tcase(s, tc);

    tc = tcase_create("options");
    tcase_add_test(tc, smart_needs_input_width_and_slots);
    tcase_add_test(tc, option_bounds_and_defaults);
    suite_add_tcase(s, tc);

    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_after_the_first_step);
    tcase_add_test(tc, reserve_makes_the_first_smart_step_allocation_free);
    tcase_add_test(tc, smart_noise_size_is_bounded);
    suite_add_tcase(s, tc);
    return s;
}
