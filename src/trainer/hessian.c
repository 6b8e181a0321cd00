/* hessian.c — the top Hessian eigenvalue (power iteration) and the Hessian
 * trace (Hutchinson's estimator) of regopt_trainer_flatness, as PyHessian
 * computes them (Yao et al. 2020, hessian.py eigenvalues() and trace()),
 * with Hessian-vector products from a central difference of gradients, the
 * only derivative the host gives (METHODS2.md, "Measuring flatness"):
 *
 *   H v ~= (g(w0 + h v) - g(w0 - h v)) / (2 h),  h = fd_scale (1 + ||w0||) / ||v||
 *
 * Truncation error O(h^2 ||v||^2 |D^3 L|), rounding O(eps32 |g| / h); the
 * default fd_scale = cbrt(eps32) balances them. */
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

#define HV_MEASURE_EIGEN 3u /* stream families of the start and probe vectors */
#define HV_MEASURE_TRACE 4u
#define HV_REL_EPS 1e-6     /* PyHessian's abs(previous) + 1e-6 */

/* v, a flat vector, or (v NULL) the Rademacher vector of stream `seed`:
 * v_e = +1 if regopt_random_uniform(seed, e) >= 0.5, else -1. */
typedef struct hv_job {
    const ro_flat *f;
    const float *v;
    uint64_t seed;
    float *gp;     /* g(w0 + h v), then H v in place (eigenvalue) */
    float h;
    double inv2h;
} hv_job;

/* Rademacher signs of elements [e, e + m) of the stream, m <= 256. */
static void hv_signs(uint64_t seed, uint64_t e, float *out, size_t m)
{
    size_t q;
    (void)regopt_random_uniform(seed, e, out, m);
    for (q = 0; q < m; q++)
        out[q] = out[q] >= 0.5f ? 1.0f : -1.0f;
}

/* w = w0 + h v for the Rademacher v (a flat v goes through ro_flat_move). */
static void hv_move_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const hv_job *a = ctx;
    const float *w0 = a->f->w0 + p->offset;
    float r[256];
    size_t j, m, q;
    for (j = j0; j < j1; j += m) {
        m = j1 - j < 256 ? j1 - j : 256;
        hv_signs(a->seed, (uint64_t)(p->offset + j), r, m);
        for (q = 0; q < m; q++)
            p->data[j + q] = w0[j + q] + a->h * r[q];
    }
}

static void hv_move(ro_flat *f, hv_job *a, float h)
{
    float keep = a->h;
    if (a->v) {
        ro_flat_move(f, a->v, h);
        return;
    }
    a->h = h;
    ro_each_piece(f->t->env.par, hv_move_piece, a);
    a->h = keep;
    f->moved = 1;
}

/* H v = (gp - g) / (2h), written over gp. */
static void hv_finish_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const hv_job *a = ctx;
    float *gp = a->gp + p->offset;
    size_t j;
    for (j = j0; j < j1; j++)
        gp[j] = (float)(((double)gp[j] - p->grad[j]) * a->inv2h);
}

/* v . H v = sum_e r_e (gp_e - g_e) / (2h) for the Rademacher v. */
static double hv_vhv_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const hv_job *a = ctx;
    const float *gp = a->gp + p->offset;
    float r[256];
    double s = 0.0;
    size_t j, m, q;
    for (j = j0; j < j1; j += m) {
        m = j1 - j < 256 ? j1 - j : 256;
        hv_signs(a->seed, (uint64_t)(p->offset + j), r, m);
        for (q = 0; q < m; q++)
            s += r[q] * ((double)gp[j + q] - p->grad[j + q]);
    }
    return s * a->inv2h;
}

/* The two gradients of one product: g(w0 + h v) into a->gp, g(w0 - h v)
 * left in the grad buffers; w is w0 again afterwards. */
static regopt_status hv_gradients(ro_flat *f, hv_job *a, double wnorm, double vnorm)
{
    double l = 0.0, h = f->rq->fd_scale * (1.0 + wnorm) / vnorm;
    regopt_status st;
    a->h = (float)h;
    a->inv2h = 0.5 / (double)a->h;
    f->res->fd_step = (double)a->h;
    hv_move(f, a, a->h);
    st = ro_flat_gradient(f, &l);
    if (st == REGOPT_OK)
        ro_flat_copy(f, a->gp, NULL);
    hv_move(f, a, -a->h);
    if (st == REGOPT_OK)
        st = ro_flat_gradient(f, &l);
    ro_flat_restore(f);
    return st;
}

static regopt_status hv_nonfinite(ro_flat *f, const char *what, double v)
{
    return ro_fail(f->t->msg, REGOPT_ERR_NONFINITE_GRADIENT, "regopt_trainer_flatness: %s "
                   "is %g (a gradient of a Hessian-vector product is not finite)", what, v);
}

static void hv_scale_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const hv_job *a = ctx;
    float *v = (float *)a->v + p->offset;
    const float *src = a->gp + p->offset;
    size_t j;
    for (j = j0; j < j1; j++)
        v[j] = (float)(src[j] * a->inv2h); /* inv2h holds 1 / ||src|| here */
}

/* v = src / norm (src may be v). */
static void hv_normalize(ro_flat *f, float *v, float *src, double norm)
{
    hv_job a;
    memset(&a, 0, sizeof a);
    a.f = f;
    a.v = v;
    a.gp = src;
    a.inv2h = 1.0 / norm;
    ro_each_piece(f->t->env.par, hv_scale_piece, &a);
}

static void hv_normal_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const hv_job *a = ctx;
    (void)regopt_random_normal(a->seed, (uint64_t)(p->offset + j0), (float *)a->v + p->offset + j0,
                               j1 - j0);
}

/* v_0: normal draws of stream (seed, eigenvalue, 0), normalised. */
static void hv_start(ro_flat *f, float *v)
{
    hv_job a;
    memset(&a, 0, sizeof a);
    a.f = f;
    a.v = v;
    a.seed = ro_flat_seed(f, HV_MEASURE_EIGEN, 0);
    ro_each_piece(f->t->env.par, hv_normal_piece, &a);
    hv_normalize(f, v, v, sqrt(ro_flat_dot(f, v, v)));
}

regopt_status ro_flat_eigen(ro_flat *f)
{
    uint32_t k, n = f->rq->eigen_iterations;
    double wnorm = sqrt(ro_flat_dot(f, f->w0, f->w0)), lam = 0.0, prev = 0.0;
    float *v = f->vec[0], *hv = f->vec[1];
    regopt_status st = REGOPT_OK;
    hv_job a;
    memset(&a, 0, sizeof a);
    a.f = f;
    a.v = v;
    a.gp = hv;
    hv_start(f, v);
    for (k = 0; k < n && st == REGOPT_OK; k++) {
        double norm;
        st = hv_gradients(f, &a, wnorm, 1.0);
        if (st != REGOPT_OK)
            break;
        ro_each_piece(f->t->env.par, hv_finish_piece, &a);
        lam = ro_flat_dot(f, v, hv); /* v is a unit vector: the Rayleigh quotient */
        norm = sqrt(ro_flat_dot(f, hv, hv));
        if (!isfinite(norm) || !isfinite(lam))
            st = hv_nonfinite(f, "||H v||", norm);
        f->res->eigen_iterations = k + 1;
        f->res->eigenvalue = lam;
        f->res->eigen_change = k > 0 ? fabs(lam - prev) / (fabs(prev) + HV_REL_EPS) : 0.0;
        if ((k > 0 && f->res->eigen_change < f->rq->eigen_tolerance) || norm == 0.0) {
            f->res->eigen_converged = 1;
            break;
        }
        prev = lam;
        if (st == REGOPT_OK)
            hv_normalize(f, v, hv, norm);
    }
    return st;
}

regopt_status ro_flat_trace(ro_flat *f)
{
    uint32_t k, n = f->rq->trace_samples;
    double wnorm = sqrt(ro_flat_dot(f, f->w0, f->w0));
    double vnorm = sqrt((double)f->t->model->n_trainable), mean = 0.0, m2 = 0.0;
    regopt_status st = REGOPT_OK;
    hv_job a;
    memset(&a, 0, sizeof a);
    a.f = f;
    a.gp = f->vec[0];
    for (k = 0; k < n && st == REGOPT_OK; k++) {
        double x, dm, prev = mean;
        a.seed = ro_flat_seed(f, HV_MEASURE_TRACE, k);
        st = hv_gradients(f, &a, wnorm, vnorm);
        if (st != REGOPT_OK)
            break;
        x = ro_sum_pieces(f->t->env.par, hv_vhv_piece, &a);
        if (!isfinite(x))
            st = hv_nonfinite(f, "v . H v", x);
        dm = x - mean; /* Welford's running mean and variance */
        mean += dm / (k + 1);
        m2 += dm * (x - mean);
        f->res->trace_samples = k + 1;
        f->res->trace = mean;
        f->res->trace_stderr = k > 0 ? sqrt(m2 / k / (k + 1)) : 0.0;
        if (fabs(mean - prev) / (fabs(prev) + HV_REL_EPS) < f->rq->trace_tolerance) {
            f->res->trace_converged = 1;
            break;
        }
    }
    return st;
}
