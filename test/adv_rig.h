/* adv_rig.h — the rig of the adversarial suites (check_adv*.c): SMART's
 * linear host over input embeddings (smart_rig.h: z_i = b + A sum_t
 * x_{iT+t}, x = e + input_perturbation) behind callbacks that can fail or
 * poison any numbered pass, and a double-precision reference of that host
 * (outputs, cross-entropy, KL objectives, d_input, parameter gradients)
 * written from the formulas, independently of the library. */
#ifndef REGOPT_ADV_RIG_H
#define REGOPT_ADV_RIG_H

#include "smart_rig.h"

/* ---- a run whose callbacks can fail ------------------------------------- */

typedef struct ad_run {
    sm_run s;          /* first: sm_close frees the whole ad_run */
    int nf, nb;        /* forwards and backwards seen */
    int fail_f, fail_b; /* 1-based call that returns nonzero, 0 = never */
    int nan_out_f;     /* 1-based forward whose outputs get a NaN */
    int nan_din_b;     /* 1-based backward whose d_input gets a NaN */
} ad_run;

static inline int ad_forward(const regopt_pass *p, void *user)
{
    ad_run *a = user;
    int rc;
    a->nf++;
    if (a->nf == a->fail_f)
        return 7;
    rc = sm_forward(p, &a->s.h);
    if (rc == 0 && a->nf == a->nan_out_f)
        p->outputs[0] = NAN;
    return rc;
}

static inline int ad_backward(const regopt_pass *p, void *user)
{
    ad_run *a = user;
    int rc;
    a->nb++;
    if (a->nb == a->fail_b)
        return 8;
    rc = sm_backward(p, &a->s.h);
    if (rc == 0 && a->nb == a->nan_din_b && p->d_input)
        p->d_input[0] = NAN;
    return rc;
}

/* sm_open's model and trainer (SGD, seed 1234), with ad_forward/_backward;
 * caps: REGOPT_CAP_* of the model. */
static inline ad_run *ad_open_caps(size_t d, size_t k, int slots, regopt_loss_kind loss,
                                   double lr, uint32_t caps)
{
    ad_run *a = calloc(1, sizeof *a);
    sm_run *r = &a->s;
    size_t i;
    regopt_status st;
    ck_assert_ptr_nonnull(a);
    r->h.d = d;
    r->h.k = k;
    for (i = 0; i < k * d; i++)
        r->h.A[i] = (float)(0.3 * sin(1.1 * (double)i + 0.4));
    for (i = 0; i < k; i++)
        r->h.b[i] = 0.1f * (float)i - 0.1f;
    r->m = regopt_model_create(NULL, &st);
    ck_assert_ptr_nonnull(r->m);
    SM_MUST(regopt_model_add_param(r->m, "A", r->h.A, r->h.gA, k * d, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, k, REGOPT_DTYPE_FLOAT32, 1));
    SM_MUST(regopt_model_set_output_width(r->m, k));
    SM_MUST(regopt_model_set_input_width(r->m, d));
    SM_MUST(regopt_model_set_slots(r->m, slots));
    SM_MUST(regopt_model_set_callbacks(r->m, ad_forward, ad_backward, a, NULL));
    if (caps)
        SM_MUST(regopt_model_set_capabilities(r->m, caps));
    r->o = regopt_optimizer_create(REGOPT_SGD, NULL, &st);
    ck_assert_ptr_nonnull(r->o);
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, lr));
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_msg(r->t != NULL, "trainer: %s", regopt_last_error_message());
    SM_TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS, loss));
    SM_TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_SEED, 1234));
    return a;
}

static inline ad_run *ad_open(size_t d, size_t k, int slots, regopt_loss_kind loss, double lr)
{
    return ad_open_caps(d, k, slots, loss, lr, 0);
}

/* The adversarial regularizer with a method and its main values. */
static inline regopt_regularizer *ad_adv(ad_run *a, int method, double alpha, double eps,
                                         double step, int K)
{
    regopt_regularizer *g = sm_attach(&a->s, REGOPT_REG_ADVERSARIAL);
    sm_rset(g, REGOPT_ADV_METHOD, method);
    sm_rset(g, REGOPT_ADV_ALPHA, alpha);
    sm_rset(g, REGOPT_ADV_EPSILON, eps);
    sm_rset(g, REGOPT_ADV_STEP, step);
    sm_rset(g, REGOPT_ADV_STEPS, K);
    return g;
}

static inline double ad_stat(const regopt_regularizer *g, regopt_key key)
{
    double v = -12345.0;
    RMUST(g, regopt_regularizer_get_double(g, key, &v));
    return v;
}

/* ---- the double-precision reference -------------------------------------- */

typedef struct ad_ref {
    size_t d, k, n, T, in;
    double A[SK * SD], b[SK];
    double e[SR * SD];
    int32_t y[SO];
    double rw[SO];  /* m_i w_i */
    int lab[SO];    /* takes the task loss */
    double W;       /* sum of rw over every row */
    double t[SO * SK]; /* MSE targets */
} ad_ref;

/* The reference of micro-batch m of s for the weights the host holds now. */
static inline void ad_ref_of(ad_ref *R, const sm_run *r, const sm_set *s, size_t m)
{
    const regopt_batch *b = &s->b[m];
    size_t i;
    memset(R, 0, sizeof *R);
    R->d = r->h.d;
    R->k = r->h.k;
    R->n = s->rows;
    R->T = s->T;
    R->in = s->rows * s->T;
    for (i = 0; i < R->k * R->d; i++)
        R->A[i] = r->h.A[i];
    for (i = 0; i < R->k; i++)
        R->b[i] = r->h.b[i];
    for (i = 0; i < R->in * R->d; i++)
        R->e[i] = s->e[m][i];
    for (i = 0; i < R->n; i++) {
        R->y[i] = s->y[m][i];
        R->rw[i] = sm_rw(s, m, i);
        R->lab[i] = !b->task_mask || b->task_mask[i];
        R->W += R->rw[i];
    }
    for (i = 0; i < R->n * R->k; i++)
        R->t[i] = s->tg[m][i];
}

/* MSE values (finite differences need no gradient): the task loss mean_k
 * (z - t)^2 over labelled rows, and the consistency mean_k (a - z)^2 over
 * every kept row, both over W. */
static inline double ad_ref_mse(const ad_ref *R, const double *z, const double *t, int task)
{
    double sum = 0.0;
    size_t i, j;
    for (i = 0; i < R->n; i++) {
        double r = 0.0;
        if ((task && !R->lab[i]) || R->rw[i] == 0.0)
            continue;
        for (j = 0; j < R->k; j++)
            r += (z[i * R->k + j] - t[i * R->k + j]) * (z[i * R->k + j] - t[i * R->k + j]);
        sum += R->rw[i] * r / (double)R->k;
    }
    return sum / R->W;
}

/* z = f(e + r) (r may be NULL). */
static inline void ad_ref_out(const ad_ref *R, const double *r, double *z)
{
    size_t i, c, t, j;
    for (i = 0; i < R->n; i++)
        for (c = 0; c < R->k; c++) {
            double s = R->b[c];
            for (t = 0; t < R->T; t++)
                for (j = 0; j < R->d; j++) {
                    size_t x = (i * R->T + t) * R->d + j;
                    s += R->A[c * R->d + j] * (R->e[x] + (r ? r[x] : 0.0));
                }
            z[i * R->k + c] = s;
        }
}

static inline void ad_softmax(const double *z, size_t k, double *p)
{
    double m = z[0], s = 0.0;
    size_t j;
    for (j = 1; j < k; j++)
        m = z[j] > m ? z[j] : m;
    for (j = 0; j < k; j++)
        s += (p[j] = exp(z[j] - m));
    for (j = 0; j < k; j++)
        p[j] /= s;
}

/* Cross-entropy over labelled rows, / W; dz += scale * d/dz (dz may be NULL). */
static inline double ad_ref_ce(const ad_ref *R, const double *z, double scale, double *dz)
{
    double sum = 0.0, p[SK];
    size_t i, j;
    for (i = 0; i < R->n; i++) {
        if (!R->lab[i] || R->rw[i] == 0.0)
            continue;
        ad_softmax(z + i * R->k, R->k, p);
        sum += R->rw[i] * -log(p[R->y[i]]);
        if (dz)
            for (j = 0; j < R->k; j++)
                dz[i * R->k + j] += scale * R->rw[i] / R->W * (p[j] - (j == (size_t)R->y[i]));
    }
    return sum / R->W;
}

/* KL(P_z || P_a) over every kept row / W, z detached: da += scale (Pa - Pz);
 * with sym, + KL(P_a || P_z) and its full gradients into da and dz. */
static inline double ad_ref_kl(const ad_ref *R, const double *z, const double *a, int sym,
                               double scale, double *dz, double *da)
{
    double sum = 0.0, p[SK], q[SK];
    size_t i, j, k = R->k;
    for (i = 0; i < R->n; i++) {
        double kpq = 0.0, kqp = 0.0, c = scale * R->rw[i] / R->W;
        if (R->rw[i] == 0.0)
            continue;
        ad_softmax(z + i * k, k, p);
        ad_softmax(a + i * k, k, q);
        for (j = 0; j < k; j++) {
            kpq += p[j] * log(p[j] / q[j]);
            kqp += q[j] * log(q[j] / p[j]);
        }
        sum += R->rw[i] * (sym ? kpq + kqp : kpq);
        for (j = 0; j < k; j++) {
            double r = log(q[j] / p[j]);
            if (!sym) {
                da[j + i * k] += c * (q[j] - p[j]);
                continue;
            }
            /* d/da [KL(P||Q) + KL(Q||P)] = (Q - P) + Q (r - KL(Q||P)) */
            da[j + i * k] += c * ((q[j] - p[j]) + q[j] * (r - kqp));
            if (dz)
                dz[j + i * k] += c * ((p[j] - q[j]) + p[j] * (-r - kpq));
        }
    }
    return sum / R->W;
}

/* g = d/d(embeddings) for d/dz = dz: A^T dz_i at each of row i's T rows. */
static inline void ad_ref_din(const ad_ref *R, const double *dz, double *g)
{
    size_t i, t, j, c;
    for (i = 0; i < R->n; i++)
        for (t = 0; t < R->T; t++)
            for (j = 0; j < R->d; j++) {
                double s = 0.0;
                for (c = 0; c < R->k; c++)
                    s += R->A[c * R->d + j] * dz[i * R->k + c];
                g[(i * R->T + t) * R->d + j] = s;
            }
}

/* Parameter gradient of a pass at e + r with d/dz = dz, added to gA, gb. */
static inline void ad_ref_pgrad(const ad_ref *R, const double *r, const double *dz, double *gA,
                                double *gb)
{
    size_t i, c, t, j;
    for (i = 0; i < R->n; i++)
        for (c = 0; c < R->k; c++) {
            double g = dz[i * R->k + c];
            gb[c] += g;
            for (t = 0; t < R->T; t++)
                for (j = 0; j < R->d; j++) {
                    size_t x = (i * R->T + t) * R->d + j;
                    gA[c * R->d + j] += g * (R->e[x] + (r ? r[x] : 0.0));
                }
        }
}

/* The host's gradient buffers against the reference's (relative 1e-4 of
 * the largest element). */
static inline void ad_check_grads(const sm_run *r, const double *gA, const double *gb,
                                  const char *what)
{
    size_t i, kd = r->h.k * r->h.d;
    double m = 1e-12;
    for (i = 0; i < kd; i++)
        m = fabs(gA[i]) > m ? fabs(gA[i]) : m;
    for (i = 0; i < r->h.k; i++)
        m = fabs(gb[i]) > m ? fabs(gb[i]) : m;
    for (i = 0; i < kd; i++)
        ck_assert_msg(fabs(r->h.gA[i] - gA[i]) <= 1e-4 * m, "%s: gA[%zu] = %.9g, want %.9g",
                      what, i, (double)r->h.gA[i], gA[i]);
    for (i = 0; i < r->h.k; i++)
        ck_assert_msg(fabs(r->h.gb[i] - gb[i]) <= 1e-4 * m, "%s: gb[%zu] = %.9g, want %.9g",
                      what, i, (double)r->h.gb[i], gb[i]);
}

/* ||x|| over n doubles (L2). */
static inline double ad_norm2(const double *x, size_t n)
{
    double s = 0.0;
    size_t i;
    for (i = 0; i < n; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

#endif
