/* smart.c — SMART's smoothness-inducing adversarial regularizer R_s
 * (Jiang et al., ACL 2020, Eq. 2 and Alg. 1; docs/methods.md §5): perturb
 * the host's input embeddings inside an epsilon-ball in the direction that
 * changes the outputs most, and penalise the change. Also namisan/mt-dnn's
 * variant (unit normalisation without projection, optionally its "stable
 * KL"). */
#include "reg/reg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Roles of SMART's draws (counter word 3, see smart_role). */
#define SEED_NOISE 3u
#define SEED_ADV 4u

typedef struct smart {
    double lambda, epsilon, sigma, eta;
    int steps, norm, mtdnn, stable_kl, same_seed, detach;
    float *nu, *g;  /* perturbation and its gradient, cap_in embedding rows */
    float *sort;    /* L1 projection scratch, input width */
    size_t cap_in;
} smart;

enum { SM_RS, SM_NOISE_SUM, SM_NOISE_ROWS, SM_N_ACC };

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define RO REGOPT_KEY_READ_ONLY
static const ro_key_desc smart_keys[] = {
    {REGOPT_SMART_LAMBDA, "smart.lambda", D, RO_OWNER_REG, 0, 1e4, 1, 0},
    {REGOPT_SMART_EPSILON, "smart.epsilon", D, RO_OWNER_REG, 0, 1e3, 1e-5,
     REGOPT_KEY_MIN_EXCLUSIVE},
    {REGOPT_SMART_SIGMA, "smart.sigma", D, RO_OWNER_REG, 0, 1e3, 1e-5, 0},
    {REGOPT_SMART_ETA, "smart.eta", D, RO_OWNER_REG, 0, 1e3, 1e-3, 0},
    {REGOPT_SMART_STEPS, "smart.steps", I, RO_OWNER_REG, 1, 100, 1, 0},
    {REGOPT_SMART_NORM, "smart.norm", I, RO_OWNER_REG, 0, 2, 0, 0},
    {REGOPT_SMART_MTDNN, "smart.mtdnn", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SMART_STABLE_KL, "smart.stable_kl", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SMART_SAME_SEED, "smart.same_seed", I, RO_OWNER_REG, 0, 1, 1, 0},
    {REGOPT_SMART_DETACH_TARGET, "smart.detach_target", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_STAT_SMART_RS, "smart.rs", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SMART_NOISE_NORM, "smart.noise_norm", D, RO_OWNER_REG, 0, HUGE_VAL, 0, RO},
};

static void smart_init(ro_reg *r)
{
    smart *s = r->self;
    s->lambda = 1.0;
    s->epsilon = 1e-5;
    s->sigma = 1e-5;
    s->eta = 1e-3;
    s->steps = 1;
    s->norm = REGOPT_SMART_NORM_INF;
    s->same_seed = 1;
}

static regopt_status smart_set(ro_reg *r, const ro_key_desc *k, int32_t group, double v)
{
    smart *s = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_SMART_LAMBDA: s->lambda = v; break;
    case REGOPT_SMART_EPSILON: s->epsilon = v; break;
    case REGOPT_SMART_SIGMA: s->sigma = v; break;
    case REGOPT_SMART_ETA: s->eta = v; break;
    case REGOPT_SMART_STEPS: s->steps = (int)v; break;
    case REGOPT_SMART_NORM: s->norm = (int)v; break;
    case REGOPT_SMART_MTDNN: s->mtdnn = (int)v; break;
    case REGOPT_SMART_STABLE_KL: s->stable_kl = (int)v; break;
    case REGOPT_SMART_DETACH_TARGET: s->detach = (int)v; break;
    default: s->same_seed = (int)v; break;
    }
    return REGOPT_OK;
}

static double smart_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    const smart *s = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_SMART_LAMBDA: return s->lambda;
    case REGOPT_SMART_EPSILON: return s->epsilon;
    case REGOPT_SMART_SIGMA: return s->sigma;
    case REGOPT_SMART_ETA: return s->eta;
    case REGOPT_SMART_STEPS: return s->steps;
    case REGOPT_SMART_NORM: return s->norm;
    case REGOPT_SMART_MTDNN: return s->mtdnn;
    case REGOPT_SMART_STABLE_KL: return s->stable_kl;
    case REGOPT_SMART_DETACH_TARGET: return s->detach;
    default: return s->same_seed;
    }
}

static regopt_status smart_attach(ro_reg *r)
{
    smart *s = r->self;
    const regopt_model *m = r->env->model;
    if (m->input_width == 0)
        return ro_fail(r->env->msg, REGOPT_ERR_STATE,
                       "SMART perturbs input embeddings: smart_set the model's input width");
    s->sort = ro_calloc(r->env->alloc, m->input_width, sizeof(float));
    if (!s->sort)
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY, "out of memory for SMART");
    return REGOPT_OK;
}

static void smart_detach(ro_reg *r)
{
    smart *s = r->self;
    ro_free(r->env->alloc, s->nu);
    ro_free(r->env->alloc, s->g);
    ro_free(r->env->alloc, s->sort);
    s->nu = s->g = s->sort = NULL;
    s->cap_in = 0;
}

/* Grow the noise buffers to `rows` embedding rows (no-op when large enough). */
static regopt_status smart_grow(ro_reg *r, size_t rows)
{
    smart *s = r->self;
    size_t d = r->env->model->input_width;
    float *nu, *g;
    if (rows <= s->cap_in)
        return REGOPT_OK;
    /* d >= 1 (smart_attach); the batch check bounds a step's rows, this
       also regopt_trainer_reserve's */
    if (rows > RO_MAX_INPUT_FLOATS / d)
        return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "SMART's noise for %zu embedding rows x input width %zu would be more "
                       "than 2^36 floats", rows, d);
    nu = ro_calloc(r->env->alloc, rows, d * sizeof(float));
    g = ro_calloc(r->env->alloc, rows, d * sizeof(float));
    if (!nu || !g) {
        ro_free(r->env->alloc, nu);
        ro_free(r->env->alloc, g);
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for SMART's noise of %zu x %zu", rows, d);
    }
    ro_free(r->env->alloc, s->nu);
    ro_free(r->env->alloc, s->g);
    s->nu = nu;
    s->g = g;
    s->cap_in = rows;
    return REGOPT_OK;
}

/* Room for `rows` embedding rows, and for the largest micro-batch's
 * embedding rows (in_rows). */
static regopt_status smart_reserve(ro_reg *r, size_t rows, size_t in_rows)
{
    return smart_grow(r, in_rows > rows ? in_rows : rows);
}

/* One slot and one output block of its own for the adversarial passes. */
static void smart_plan(ro_reg *r, ro_plan *p, int now)
{
    (void)now;
    r->slot = p->slots++;
    r->block = p->blocks++;
}

/* ---- norms and projections of one embedding row ----------------------- */

/* ||x||_p; NaN if any element is NaN (the inf-norm's max keeps a NaN
 * instead of dropping it, as the sums of the other norms do). */
static double row_norm(const float *x, size_t d, int p)
{
    double s = 0.0;
    size_t j;
    for (j = 0; j < d; j++) {
        double a = fabs((double)x[j]);
        if (p == REGOPT_SMART_NORM_INF)
            s = (a > s || isnan(a)) ? a : s; /* once s is NaN, a > s is false */
        else
            s += p == REGOPT_SMART_NORM_L1 ? a : a * a;
    }
    return p == REGOPT_SMART_NORM_L2 ? sqrt(s) : s;
}

/* The first of `rows` rows of width d holding a NaN or an infinity, or
 * `rows` if none does. */
static size_t nonfinite_row(const float *x, size_t rows, size_t d)
{
    size_t i, j;
    for (i = 0; i < rows; i++)
        for (j = 0; j < d; j++)
            if (!isfinite(x[i * d + j]))
                return i;
    return rows;
}

static int descending(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Euclidean projection onto {||x||_1 <= r} (Duchi et al., ICML 2008, Fig. 1):
 * soft-threshold by theta, found from the sorted magnitudes. */
static void project_l1(float *x, size_t d, double r, float *sorted)
{
    double cum = 0.0, theta = 0.0;
    size_t j;
    if (row_norm(x, d, REGOPT_SMART_NORM_L1) <= r)
        return;
    for (j = 0; j < d; j++)
        sorted[j] = fabsf(x[j]);
    qsort(sorted, d, sizeof *sorted, descending);
    for (j = 0; j < d; j++) {
        cum += sorted[j];
        if (sorted[j] - (cum - r) / (double)(j + 1) > 0.0)
            theta = (cum - r) / (double)(j + 1);
    }
    for (j = 0; j < d; j++) {
        double a = fabs((double)x[j]) - theta;
        x[j] = a > 0.0 ? (float)(x[j] > 0.0f ? a : -a) : 0.0f;
    }
}

static void project(float *x, size_t d, int p, double r, float *sorted)
{
    size_t j;
    if (p == REGOPT_SMART_NORM_INF) {
        for (j = 0; j < d; j++)
            x[j] = x[j] > (float)r ? (float)r : x[j] < -(float)r ? -(float)r : x[j];
    } else if (p == REGOPT_SMART_NORM_L2) {
        double n = row_norm(x, d, p);
        if (n > r)
            for (j = 0; j < d; j++)
                x[j] = (float)(x[j] * (r / n));
    } else {
        project_l1(x, d, r, sorted);
    }
}

/* One ascent update of every embedding row of nu from its gradient g, which
 * the caller checked to be finite (so is every norm below: n > 0 means
 * g != 0, never "not NaN"). */
static void ascent_update(smart *s, size_t rows, size_t d)
{
    size_t i, j;
    for (i = 0; i < rows; i++) {
        float *nu = s->nu + i * d;
        const float *g = s->g + i * d;
        if (s->mtdnn) { /* d = nu + eta g; nu = d / (||d||_p + eps) */
            double n;
            for (j = 0; j < d; j++)
                nu[j] += (float)s->eta * g[j];
            n = row_norm(nu, d, s->norm) + s->epsilon;
            for (j = 0; j < d; j++)
                nu[j] = (float)(nu[j] / n);
        } else { /* nu = projection of nu + eta g / ||g||_p */
            double n = row_norm(g, d, s->norm);
            if (n > 0.0)
                for (j = 0; j < d; j++)
                    nu[j] += (float)(s->eta * g[j] / n);
            project(nu, d, s->norm, s->epsilon, s->sort);
        }
    }
}

/* mt-dnn's SymKlCriterion (and smart-pytorch's sym_kl_loss) on one row:
 * KL(sg(Q)||P) + KL(sg(P)||Q) with P = softmax(a), Q = softmax(z) -- the
 * value of the symmetric KL, but each direction's target detached, so the
 * gradient is coef (P - Q) into da and coef (Q - P) into dz (each may be
 * NULL). */
static double detached_sym_kl_row(const float *a, const float *z, size_t k, float coef,
                                  float *da, float *dz)
{
    float ma = a[0], mz = z[0];
    double sa = 0.0, sz = 0.0, la, lz, sum = 0.0;
    size_t j;
    for (j = 1; j < k; j++) {
        ma = a[j] > ma ? a[j] : ma;
        mz = z[j] > mz ? z[j] : mz;
    }
    for (j = 0; j < k; j++) {
        sa += exp((double)a[j] - ma);
        sz += exp((double)z[j] - mz);
    }
    la = (double)ma + log(sa);
    lz = (double)mz + log(sz);
    for (j = 0; j < k; j++) {
        double lp = (double)a[j] - la, lq = (double)z[j] - lz, p = exp(lp), q = exp(lq);
        sum += (p - q) * (lp - lq); /* KL(P||Q) + KL(Q||P) */
        if (da)
            da[j] += (float)(coef * (p - q));
        if (dz)
            dz[j] += (float)(coef * (q - p));
    }
    return sum;
}

/* l_s between adversarial outputs a and clean outputs z, row weighted:
 * gradient into da (scaled by `scale`) and, unless dz is NULL (detached),
 * into dz; `detach` = mt-dnn's detached targets (smart.detach_target). */
static double smooth_loss(const ro_env *e, const regopt_batch *v, const float *a,
                          const float *z, double inv_weight, double scale, int stable,
                          int detach, float *da, float *dz)
{
    size_t i, k = e->model->output_width;
    double sum = 0.0;
    for (i = 0; i < v->rows; i++) {
        float rw = ro_row_weight(v, i), c = (float)(rw * inv_weight * scale);
        const float *ai = a + i * k, *zi = z + i * k;
        float *dai = da ? da + i * k : NULL, *dzi = dz ? dz + i * k : NULL;
        if (rw == 0.0f)
            continue;
        if (e->loss_kind == REGOPT_LOSS_MSE)
            sum += rw * ro_sq_diff_row(ai, zi, k, c, dai, dzi);
        else if (stable)
            sum += rw * ro_stable_kl_row(ai, zi, k, c, dai);
        else if (detach)
            sum += rw * detached_sym_kl_row(ai, zi, k, c, dai, dzi);
        else /* KL + KL, not halved: twice ro_sym_kl_row */
            sum += rw * 2.0 * ro_sym_kl_row(ai, zi, k, 2.0f * c, dai, dzi);
    }
    return sum * inv_weight;
}

/* The counter word of SMART's draws: its kind in bits 0-3, the evaluation
 * it belongs to (clean or SAM-perturbed) in bits 4-5, the chunk above bit 8,
 * so no two draws of a step share a stream. */
static uint32_t smart_role(uint32_t kind, uint32_t role, uint32_t chunk)
{
    return kind | ((role & 3u) << 4) | (chunk << 8);
}

/* R_s for a view whose clean outputs (and their gradient) are in v: the
 * ascent and the final adversarial pass with its backward; adds
 * lambda * dR_s/dz to the clean outputs' gradient. */
static regopt_status smart_term(ro_reg *r, ro_view *v, double *weighted)
{
    smart *s = r->self;
    ro_step *st_ = v->s;
    ro_env *e = r->env;
    size_t n = v->n, k = v->k, d = e->model->input_width;
    size_t in = ro_input_rows(&v->rows), i;
    uint64_t adv_seed = s->same_seed
                            ? v->seed
                            : ro_step_seed(st_, v->bi, smart_role(SEED_ADV, v->role, v->chunk));
    regopt_pass p;
    regopt_status st;
    float *a, *da;
    double rs;
    int it;
    /* nu ~ N(0, sigma^2), reproducible from the trainer seed */
    regopt_random_normal(ro_step_seed(st_, v->bi, smart_role(SEED_NOISE, v->role, v->chunk)), 0,
                         s->nu, in * d);
    for (i = 0; i < in * d; i++)
        s->nu[i] *= (float)s->sigma;
    ro_view_pass(v, &p, r->slot, r->block, adv_seed);
    a = p.outputs;
    da = st_->d_outputs + (a - st_->outputs);
    p.input_perturbation = s->nu;
    for (it = 0; it < s->steps; it++) {
        double inner;
        size_t bad;
        p.flags = v->flags;
        p.d_outputs = NULL;
        p.d_input = NULL;
        st = ro_call_forward(e, &p);
        if (st != REGOPT_OK)
            return st;
        ro_zero(da, n * k);
        inner = smooth_loss(e, &v->rows, a, v->z, st_->inv_weight, 1.0, s->stable_kl, 0, da,
                            NULL);
        /* Every non-finite value of the ascent fails the step here, in both
           modes, with the status of a non-finite R_s below: the paper
           mode's `n > 0` and inf-norm max would otherwise skip or clip it
           into a successful step with another result. */
        if (!isfinite(inner))
            return ro_fail(e->msg, REGOPT_ERR_NONFINITE_LOSS,
                           "SMART's ascent forward (step %d of %d) of micro-batch %zu: the "
                           "inner loss of its outputs is %g", it + 1, s->steps, v->bi, inner);
        p.flags = v->flags | REGOPT_PASS_NO_PARAM_GRAD;
        p.d_outputs = da;
        p.d_input = s->g;
        ro_zero(s->g, in * d);
        st = ro_call_backward(e, &p);
        if (st != REGOPT_OK)
            return st;
        bad = nonfinite_row(s->g, in, d);
        if (bad < in)
            return ro_fail(e->msg, REGOPT_ERR_NONFINITE_LOSS,
                           "SMART's ascent backward (step %d of %d) of micro-batch %zu wrote "
                           "a NaN or infinite d_input in embedding row %zu", it + 1, s->steps,
                           v->bi, bad);
        ascent_update(s, in, d);
        bad = nonfinite_row(s->nu, in, d);
        if (bad < in) /* mt-dnn's nu + eta g can overflow a float */
            return ro_fail(e->msg, REGOPT_ERR_NONFINITE_LOSS,
                           "SMART's ascent update (step %d of %d) of micro-batch %zu overflowed "
                           "in embedding row %zu (smart.eta too large for this d_input?)",
                           it + 1, s->steps, v->bi, bad);
    }
    if (!(v->flags & REGOPT_PASS_PERTURBED_WEIGHTS))
        for (i = 0; i < in; i++) {
            st_->acc[r->acc0 + SM_NOISE_SUM] += row_norm(s->nu + i * d, d, s->norm);
            st_->acc[r->acc0 + SM_NOISE_ROWS] += 1.0;
        }
    /* R_s with gradients into both passes (Eq. 2: nothing detached; mt-dnn
       detaches each direction's target: smart.detach_target) */
    p.flags = v->flags;
    p.d_outputs = NULL;
    p.d_input = NULL;
    st = ro_call_forward(e, &p);
    if (st != REGOPT_OK)
        return st;
    ro_zero(da, n * k);
    rs = smooth_loss(e, &v->rows, a, v->z, st_->inv_weight, s->lambda, 0, s->detach, da,
                     v->dz);
    if (!isfinite(rs))
        return ro_fail(e->msg, REGOPT_ERR_NONFINITE_LOSS,
                       "SMART's final adversarial forward of micro-batch %zu: R_s is %g",
                       v->bi, rs);
    *weighted = s->lambda * rs;
    if (!(v->flags & REGOPT_PASS_PERTURBED_WEIGHTS))
        st_->acc[r->acc0 + SM_RS] += rs;
    p.d_outputs = da;
    return ro_call_backward(e, &p);
}

static void smart_commit(ro_reg *r, const ro_step *s)
{
    const double *a = s->acc + r->acc0;
    r->stats[0] = a[SM_RS];
    r->stats[1] = a[SM_NOISE_ROWS] > 0.0 ? a[SM_NOISE_SUM] / a[SM_NOISE_ROWS] : 0.0;
}

const ro_reg_ops ro_smart_ops = {
    .name = "smart",
    .title = "SMART",
    .kind = REGOPT_REG_SMART,
    .flags = REGOPT_REG_SINGLE | RO_REG_BACKEND,
    .order = 30,
    .size = sizeof(smart),
    .keys = smart_keys,
    .n_keys = sizeof smart_keys / sizeof smart_keys[0],
    .stat0 = REGOPT_STAT_SMART_RS,
    .n_stats = 2,
    .n_acc = SM_N_ACC,
    .init = smart_init,
    .attach = smart_attach,
    .detach = smart_detach,
    .reserve = smart_reserve,
    .set = smart_set,
    .get = smart_get,
    .plan = smart_plan,
    .term = smart_term,
    .commit = smart_commit,
};
