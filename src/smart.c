/* smart.c — SMART's smoothness-inducing adversarial regularizer R_s
 * (Jiang et al., ACL 2020, Eq. 2 and Alg. 1): perturb the host's input
 * embeddings inside an epsilon-ball in the direction that changes the
 * outputs most, and penalise the change. Also namisan/mt-dnn's variant
 * (unit normalisation without projection, optionally its "stable KL"). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ro_smart_defaults(ro_smart *s)
{
    memset(s, 0, sizeof *s);
    s->lambda = 1.0;
    s->epsilon = 1e-5;
    s->sigma = 1e-5;
    s->eta = 1e-3;
    s->steps = 1;
    s->norm = REGOPT_SMART_NORM_INF;
    s->same_seed = 1;
}

regopt_status ro_smart_set(regopt_trainer *t, regopt_key key, double v)
{
    ro_smart *s = &t->smart;
    switch (key) {
    case REGOPT_SMART_LAMBDA: s->lambda = v; break;
    case REGOPT_SMART_EPSILON: s->epsilon = v; break;
    case REGOPT_SMART_SIGMA: s->sigma = v; break;
    case REGOPT_SMART_ETA: s->eta = v; break;
    case REGOPT_SMART_STEPS: s->steps = (int)v; break;
    case REGOPT_SMART_NORM: s->norm = (int)v; break;
    case REGOPT_SMART_MTDNN: s->mtdnn = (int)v; break;
    case REGOPT_SMART_STABLE_KL: s->stable_kl = (int)v; break;
    case REGOPT_SMART_SAME_SEED: s->same_seed = (int)v; break;
    default: break;
    }
    return REGOPT_OK;
}

double ro_smart_get(const regopt_trainer *t, regopt_key key)
{
    const ro_smart *s = &t->smart;
    switch (key) {
    case REGOPT_SMART_LAMBDA: return s->lambda;
    case REGOPT_SMART_EPSILON: return s->epsilon;
    case REGOPT_SMART_SIGMA: return s->sigma;
    case REGOPT_SMART_ETA: return s->eta;
    case REGOPT_SMART_STEPS: return s->steps;
    case REGOPT_SMART_NORM: return s->norm;
    case REGOPT_SMART_MTDNN: return s->mtdnn;
    case REGOPT_SMART_STABLE_KL: return s->stable_kl;
    case REGOPT_SMART_SAME_SEED: return s->same_seed;
    default: return 0.0;
    }
}

int32_t ro_smart_slot(const regopt_trainer *t)
{
    /* after the clean passes: slot 0, or slots 0 and 1 for two-call R-Drop */
    int two_call = t->rdrop.enabled && !(t->rdrop.doubled &&
                                         (t->model->caps & REGOPT_CAP_DOUBLED_BATCH));
    return two_call ? 2 : 1;
}

regopt_status ro_smart_grow(regopt_trainer *t, size_t rows)
{
    ro_smart *s = &t->smart;
    size_t d = t->model->input_width;
    float *nu, *g;
    if (rows <= s->cap_in)
        return REGOPT_OK;
    nu = ro_calloc(&t->alloc, rows, d * sizeof(float));
    g = ro_calloc(&t->alloc, rows, d * sizeof(float));
    if (!nu || !g) {
        ro_free(&t->alloc, nu);
        ro_free(&t->alloc, g);
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for SMART's noise of %zu x %zu", rows, d);
    }
    ro_free(&t->alloc, s->nu);
    ro_free(&t->alloc, s->g);
    s->nu = nu;
    s->g = g;
    s->cap_in = rows;
    return REGOPT_OK;
}

regopt_status ro_smart_add(regopt_trainer *t)
{
    ro_smart *s = &t->smart;
    const regopt_model *m = t->model;
    if (m->input_width == 0)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "SMART perturbs input embeddings: set the model's input width");
    if (m->slots < ro_smart_slot(t) + 1)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "SMART needs %d activation slots here (the model has %d)",
                       (int)ro_smart_slot(t) + 1, (int)m->slots);
    s->sort = ro_calloc(&t->alloc, m->input_width, sizeof(float));
    if (!s->sort)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY, "out of memory for SMART");
    s->enabled = 1;
    return REGOPT_OK;
}

void ro_smart_release(regopt_trainer *t)
{
    ro_smart *s = &t->smart;
    ro_free(&t->alloc, s->nu);
    ro_free(&t->alloc, s->g);
    ro_free(&t->alloc, s->sort);
    s->nu = s->g = s->sort = NULL;
    s->cap_in = 0;
    s->enabled = 0;
}

regopt_status ro_smart_reserve(regopt_trainer *t, const regopt_batch *b, size_t count)
{
    size_t bi, rows = 0;
    if (!t->smart.enabled)
        return REGOPT_OK;
    for (bi = 0; bi < count; bi++) {
        size_t r = ro_input_rows(ro_batch_at(b, bi));
        rows = r > rows ? r : rows;
    }
    return ro_smart_grow(t, rows);
}

/* ---- norms and projections of one embedding row ----------------------- */

static double row_norm(const float *x, size_t d, int p)
{
    double s = 0.0;
    size_t j;
    for (j = 0; j < d; j++) {
        double a = fabs((double)x[j]);
        if (p == REGOPT_SMART_NORM_INF)
            s = a > s ? a : s;
        else
            s += p == REGOPT_SMART_NORM_L1 ? a : a * a;
    }
    return p == REGOPT_SMART_NORM_L2 ? sqrt(s) : s;
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

/* One ascent update of every embedding row of nu from its gradient g. */
static void ascent_update(ro_smart *s, size_t rows, size_t d)
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

/* ---- the term ------------------------------------------------------------ */

/* l_s between adversarial outputs a and clean outputs z, row weighted:
 * gradient into da (scaled by `scale`) and, unless dz is NULL (detached),
 * into dz. */
static double smooth_loss(const regopt_trainer *t, const regopt_batch *v, const float *a,
                          const float *z, double inv_weight, double scale, int stable,
                          float *da, float *dz)
{
    size_t i, k = t->model->output_width;
    double sum = 0.0;
    for (i = 0; i < v->rows; i++) {
        float rw = ro_row_weight(v, i), c = (float)(rw * inv_weight * scale);
        const float *ai = a + i * k, *zi = z + i * k;
        float *dai = da ? da + i * k : NULL, *dzi = dz ? dz + i * k : NULL;
        if (rw == 0.0f)
            continue;
        if (t->loss_kind == REGOPT_LOSS_MSE)
            sum += rw * ro_sq_diff_row(ai, zi, k, c, dai, dzi);
        else if (stable)
            sum += rw * ro_stable_kl_row(ai, zi, k, c, dai);
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

regopt_status ro_smart_term(regopt_trainer *t, const regopt_batch *v, size_t bi, size_t r0,
                            uint32_t flags, uint64_t seed, uint32_t role, uint32_t chunk,
                            double inv_weight, const float *z, float *dz, double *rs)
{
    ro_smart *s = &t->smart;
    size_t n = v->rows, k = t->model->output_width, d = t->model->input_width;
    size_t in = ro_input_rows(v), i, off = (size_t)(t->rdrop_now ? 2 : 1) * n * k;
    float *a = t->outputs + off, *da = t->d_outputs + off;
    uint64_t adv_seed = s->same_seed
                            ? seed
                            : ro_pass_seed(t->seed, t->step, (uint32_t)bi,
                                           smart_role(RO_SEED_SMART_ADV, role, chunk));
    regopt_pass p;
    regopt_status st;
    int it;
    /* nu ~ N(0, sigma^2), reproducible from the trainer seed */
    regopt_random_normal(ro_pass_seed(t->seed, t->step, (uint32_t)bi,
                                      smart_role(RO_SEED_SMART_NOISE, role, chunk)),
                         0, s->nu, in * d);
    for (i = 0; i < in * d; i++)
        s->nu[i] *= (float)s->sigma;
    ro_pass_init(t, &p, v, bi, flags, adv_seed);
    p.slot = ro_smart_slot(t);
    p.row_offset = r0;
    p.outputs = a;
    p.input_perturbation = s->nu;
    for (it = 0; it < s->steps; it++) {
        p.flags = flags;
        p.d_outputs = NULL;
        p.d_input = NULL;
        st = ro_call_forward(t, &p);
        if (st != REGOPT_OK)
            return st;
        ro_zero(da, n * k);
        smooth_loss(t, v, a, z, inv_weight, 1.0, s->stable_kl, da, NULL);
        p.flags = flags | REGOPT_PASS_NO_PARAM_GRAD;
        p.d_outputs = da;
        p.d_input = s->g;
        ro_zero(s->g, in * d);
        st = ro_call_backward(t, &p);
        if (st != REGOPT_OK)
            return st;
        ascent_update(s, in, d);
    }
    if (!(flags & REGOPT_PASS_PERTURBED_WEIGHTS))
        for (i = 0; i < in; i++) {
            t->acc[RO_ACC_NOISE_SUM] += row_norm(s->nu + i * d, d, s->norm);
            t->acc[RO_ACC_NOISE_ROWS] += 1.0;
        }
    /* R_s with gradients into both passes (Eq. 2: nothing detached) */
    p.flags = flags;
    p.d_outputs = NULL;
    p.d_input = NULL;
    st = ro_call_forward(t, &p);
    if (st != REGOPT_OK)
        return st;
    ro_zero(da, n * k);
    *rs = smooth_loss(t, v, a, z, inv_weight, s->lambda, 0, da, dz);
    if (!isfinite(*rs))
        return ro_fail(t->msg, REGOPT_ERR_NONFINITE_LOSS,
                       "SMART's adversarial term of micro-batch %zu is %g", bi, *rs);
    p.d_outputs = da;
    return ro_call_backward(t, &p);
}
