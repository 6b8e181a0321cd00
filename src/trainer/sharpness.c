/* sharpness.c — worst-case and average-case sharpness of regopt_trainer_flatness
 * (Andriushchenko et al., ICML 2023; METHODS2.md, "Measuring flatness"; the
 * reference is tml-epfl/sharpness-vs-generalization sharpness.py:
 * eval_APGD_sharpness with weight_ascent_step_momentum, and
 * eval_average_sharpness). delta lives in a flat vector; the host's weights
 * are always set as w0 + delta from the saved w0, never by subtraction. */
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

#define SH_MOMENTUM 0.75    /* weight_ascent_step_momentum(momentum=0.75) */
#define SH_GRAD_EPS 1e-12   /* the reference's grad_norm + 1e-12 */
#define SH_MAX_CHECKS 32    /* the schedule has at most 9 checkpoints */
#define SH_BISECT_MAX 200
#define SH_MEASURE_AVERAGE 2u /* stream family of the average-case draws */

/* One ascent step over every trainable element: delta_k (cur), delta_{k-1}
 * (prev), the gradient at w0 + delta_k in the grad buffers. */
typedef struct sh_job {
    const ro_flat *f;
    float *cur, *prev;
    int linf, adaptive;
    double step;   /* s T g / (||g|| + 1e-12): s / (||g|| + 1e-12); L-inf: s */
    double scale;  /* plain L2: the projection's factor min(1, rho / ||u||) */
    double lambda; /* adaptive L2: the ellipsoid projection's multiplier */
    float rho;
} sh_job;

static float sh_t(const sh_job *a, float w0) { return a->adaptive ? fabsf(w0) : 1.0f; }

/* u = delta_k + s T dir(g), dir = g / (||g|| + 1e-12) or sign(g). */
static double sh_u(const sh_job *a, float cur, float g, float t)
{
    double d = a->linf ? (double)((g > 0.0f) - (g < 0.0f)) : (double)g;
    return (double)cur + a->step * t * d;
}

/* The projection of u onto {||delta / T|| <= rho}, elementwise once the
 * global factor (L2) or multiplier (adaptive L2) is known. The ellipsoid's
 * Euclidean projection is x = u / (1 + 2 lambda / T^2) (the reference's
 * formula); T = 0 pins the element at 0. */
static double sh_project(const sh_job *a, double u, float t)
{
    double lim = (double)a->rho * t, t2 = (double)t * t;
    if (a->linf)
        return u > lim ? lim : u < -lim ? -lim : u;
    if (!a->adaptive)
        return u * a->scale;
    return t2 > 0.0 ? u * t2 / (t2 + 2.0 * a->lambda) : 0.0;
}

/* sum (x / T)^2 with x the projection at the job's lambda (or u itself). */
static double sh_norm_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const sh_job *a = ctx;
    const float *w0 = a->f->w0 + p->offset, *cur = a->cur + p->offset;
    double s = 0.0;
    size_t j;
    for (j = j0; j < j1; j++) {
        float t = sh_t(a, w0[j]);
        double x = sh_project(a, sh_u(a, cur[j], p->grad[j], t), t);
        if (t > 0.0f)
            s += (x / t) * (x / t);
    }
    return s;
}

static double sh_norm(sh_job *a, double lambda)
{
    a->lambda = lambda;
    return sqrt(ro_sum_pieces(a->f->t->env.par, sh_norm_piece, a));
}

/* The smallest lambda >= 0 whose projection lies in the ball, by bisection
 * (the norm decreases in lambda); the reference bisects to |norm - rho| <=
 * 1e-5, this to a relative width of 1e-9 in lambda, ending inside. */
static void sh_fit_lambda(sh_job *a)
{
    double lo = 0.0, hi = 1.0;
    int i;
    a->scale = 1.0;
    if (sh_norm(a, 0.0) <= a->rho) {
        a->lambda = 0.0;
        return;
    }
    for (i = 0; i < SH_BISECT_MAX && sh_norm(a, hi) > a->rho; i++)
        lo = hi, hi *= 2.0;
    for (i = 0; i < SH_BISECT_MAX && hi - lo > 1e-9 * hi; i++) {
        double mid = 0.5 * (lo + hi);
        if (sh_norm(a, mid) > a->rho)
            lo = mid;
        else
            hi = mid;
    }
    a->lambda = hi;
}

/* delta_{k+1} = 0.75 P(u) + 0.25 delta_{k-1}; delta_{k-1} <- delta_k. */
static void sh_apply_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const sh_job *a = ctx;
    const float *w0 = a->f->w0 + p->offset;
    float *cur = a->cur + p->offset, *prev = a->prev + p->offset;
    size_t j;
    for (j = j0; j < j1; j++) {
        float t = sh_t(a, w0[j]);
        double x = sh_project(a, sh_u(a, cur[j], p->grad[j], t), t);
        float next = (float)(SH_MOMENTUM * x + (1.0 - SH_MOMENTUM) * prev[j]);
        prev[j] = cur[j];
        cur[j] = next;
    }
}

static regopt_status sh_ascent(ro_flat *f, float *cur, float *prev, double s)
{
    const regopt_flatness_request *rq = f->rq;
    double gn = sqrt(ro_flat_dot(f, NULL, NULL));
    sh_job a;
    if (!isfinite(gn))
        return ro_fail(f->t->msg, REGOPT_ERR_NONFINITE_GRADIENT, "regopt_trainer_flatness: "
                       "the gradient of the worst-case ascent is not finite (norm %g)", gn);
    memset(&a, 0, sizeof a);
    a.f = f;
    a.cur = cur;
    a.prev = prev;
    a.linf = rq->norm == REGOPT_FLAT_NORM_INF;
    a.adaptive = rq->adaptive;
    a.rho = (float)rq->rho;
    a.step = a.linf ? s : s / (gn + SH_GRAD_EPS);
    a.scale = 1.0;
    if (!a.linf && a.adaptive) {
        sh_fit_lambda(&a);
    } else if (!a.linf) {
        double un = sh_norm(&a, 0.0);
        a.scale = un > rq->rho ? rq->rho / un : 1.0;
    }
    ro_each_piece(f->t->env.par, sh_apply_piece, &a);
    return REGOPT_OK;
}

/* The reference's checkpoints: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
 * max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j K), until w_j >= K or
 * two in a row are equal; then w_0 = 0 is dropped. */
static size_t sh_checkpoints(uint32_t k, uint32_t *out)
{
    double p0 = 0.0, p1 = 0.22;
    uint32_t prev = 0, w = (uint32_t)ceil(p1 * k);
    size_t n = 0;
    out[n++] = w;
    while (w < k && w != prev && n < SH_MAX_CHECKS) {
        double p2 = p1 + fmax(p1 - p0 - 0.03, 0.06);
        p0 = p1;
        p1 = p2;
        prev = w;
        w = (uint32_t)ceil(p1 * k);
        out[n++] = w;
    }
    return n;
}

static int sh_is_check(const uint32_t *w, size_t n, uint32_t i)
{
    size_t j;
    for (j = 0; j < n; j++)
        if (w[j] == i)
            return 1;
    return 0;
}

/* The largest ||delta / T||_p of the maximiser, on the calling thread. */
static double sh_radius(const ro_flat *f, const float *d)
{
    const regopt_model *m = f->t->model;
    int linf = f->rq->norm == REGOPT_FLAT_NORM_INF;
    double s = 0.0;
    size_t i, j;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad)
            continue;
        for (j = 0; j < p->count; j++) {
            double t = f->rq->adaptive ? fabs((double)f->w0[p->offset + j]) : 1.0;
            double r = t > 0.0 ? fabs((double)d[p->offset + j]) / t : 0.0;
            s = linf ? (r > s ? r : s) : s + r * r;
        }
    }
    return linf ? s : sqrt(s);
}

/* The state of eval_APGD_sharpness's loop over iterations. */
typedef struct sh_track {
    double worst, prev_worst, s, prev_s;
    uint32_t prev_cp, updates, halvings;
} sh_track;

/* At a checkpoint: halve s when too few iterations raised the maximum or
 * nothing moved; returns 1 when it did. */
static int sh_checkpoint(sh_track *k, uint32_t i)
{
    int few = (double)k->updates < 0.75 * (double)(i - k->prev_cp);
    int still = k->prev_s == k->s && k->prev_worst == k->worst;
    k->prev_s = k->s;
    k->prev_worst = k->worst;
    k->prev_cp = i;
    k->updates = 0;
    if (!few && !still)
        return 0;
    k->s *= 0.5;
    k->halvings++;
    return 1;
}

regopt_status ro_flat_worst(ro_flat *f)
{
    size_t n = f->t->model->n_trainable, nw;
    uint32_t k = f->rq->worst_iterations, i, w[SH_MAX_CHECKS];
    float *cur = f->vec[0], *prev = f->vec[1], *best = f->vec[2];
    double l = 0.0;
    sh_track tr;
    regopt_status st = ro_flat_gradient(f, &l); /* at w, delta_0 = 0 */
    memset(cur, 0, n * sizeof *cur);
    memset(prev, 0, n * sizeof *prev);
    memset(best, 0, n * sizeof *best);
    nw = sh_checkpoints(k, w);
    memset(&tr, 0, sizeof tr);
    tr.worst = tr.prev_worst = f->res->loss;
    tr.s = tr.prev_s = 2.0 * f->rq->rho;
    for (i = 0; i < k && st == REGOPT_OK; i++) {
        int last = i + 1 == k;
        st = sh_ascent(f, cur, prev, tr.s);
        ro_flat_move(f, cur, 1.0f);
        if (st == REGOPT_OK)
            st = last ? ro_flat_loss(f, &l) : ro_flat_gradient(f, &l);
        if (st == REGOPT_OK && l > tr.worst) {
            tr.worst = l;
            ro_flat_copy(f, best, cur);
            tr.updates++;
        }
        if (st == REGOPT_OK && sh_is_check(w, nw, i) && sh_checkpoint(&tr, i) && !last) {
            ro_flat_move(f, best, 1.0f); /* the next gradient at the best point */
            st = ro_flat_gradient(f, &l);
        }
    }
    ro_flat_restore(f);
    f->res->worst_case = tr.worst - f->res->loss;
    f->res->worst_radius = sh_radius(f, best);
    f->res->worst_iterations = i;
    f->res->worst_halvings = tr.halvings;
    return st;
}

/* ---- average case -------------------------------------------------------- */

typedef struct sh_noise {
    const ro_flat *f;
    uint64_t seed;
    float sigma;
} sh_noise;

/* w = w0 + sigma T z, z_e = regopt_random_normal(seed, e) for flat index e. */
static void sh_noise_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const sh_noise *a = ctx;
    const float *w0 = a->f->w0 + p->offset;
    float z[256];
    size_t j, m, q;
    for (j = j0; j < j1; j += m) {
        m = j1 - j < 256 ? j1 - j : 256;
        (void)regopt_random_normal(a->seed, (uint64_t)(p->offset + j), z, m);
        for (q = 0; q < m; q++) {
            float t = a->f->rq->adaptive ? fabsf(w0[j + q]) : 1.0f;
            p->data[j + q] = w0[j + q] + a->sigma * t * z[q];
        }
    }
}

regopt_status ro_flat_average(ro_flat *f)
{
    uint32_t n = f->rq->average_samples, k;
    double mean = 0.0, m2 = 0.0;
    regopt_status st = REGOPT_OK;
    sh_noise a;
    a.f = f;
    a.sigma = (float)f->rq->sigma;
    for (k = 0; k < n && st == REGOPT_OK; k++) {
        double l = 0.0, d, dm;
        a.seed = ro_flat_seed(f, SH_MEASURE_AVERAGE, k);
        ro_each_piece(f->t->env.par, sh_noise_piece, &a);
        f->moved = 1;
        st = ro_flat_loss(f, &l);
        d = l - f->res->loss; /* Welford's running mean and variance */
        dm = d - mean;
        mean += dm / (k + 1);
        m2 += dm * (d - mean);
    }
    ro_flat_restore(f);
    f->res->average_case = mean;
    f->res->average_stderr = k > 1 ? sqrt(m2 / (k - 1) / k) : 0.0;
    f->res->average_samples = k;
    return st;
}
