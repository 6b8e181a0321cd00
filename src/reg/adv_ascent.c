/* adv_ascent.c — the perturbation of adversarial training (adv.c): its
 * initialisations, norms over a unit (an embedding row, an example, the
 * micro-batch), the ascent updates of PGD/FGM (Madry et al. 2018, Eq. 8's
 * l2 form), FreeLB (Zhu et al. 2020, Alg. 1) and VAT's power iteration
 * (Miyato et al. 2018, Eq. 8-9), and the detached KL of VAT's objective. */
#include "reg/adv.h"

#include <math.h>

/* ||x||_2 or ||x||_inf over n floats; NaN if any element is NaN. */
static double adv_unit_norm(const float *x, size_t n, int norm)
{
    double s = 0.0;
    size_t j;
    for (j = 0; j < n; j++) {
        double a = fabs((double)x[j]);
        if (norm == REGOPT_ADV_NORM_INF)
            s = (a > s || isnan(a)) ? a : s;
        else
            s += a * a;
    }
    return norm == REGOPT_ADV_NORM_INF ? s : sqrt(s);
}

/* VAT's normalisation of one unit (vat_tf's get_normalized_vector): x /
 * (1e-12 + max|x|), then / sqrt(1e-6 + sum x^2); scaled by `scale`. */
static void adv_vat_normalise(float *out, const float *x, size_t n, double scale)
{
    double m = 0.0, s = 0.0;
    size_t j;
    for (j = 0; j < n; j++)
        m = fabs((double)x[j]) > m ? fabs((double)x[j]) : m;
    m += 1e-12;
    for (j = 0; j < n; j++) {
        double y = x[j] / m;
        s += y * y;
    }
    s = sqrt(1e-6 + s);
    for (j = 0; j < n; j++)
        out[j] = (float)(scale * (x[j] / m) / s);
}

void ro_adv_initial(float *r, const ro_adv_geom *g, const adv_cfg *c, uint64_t seed)
{
    size_t n = g->in * g->d, u = g->unit * g->d, i;
    switch (c->init) {
    case REGOPT_ADV_INIT_GAUSSIAN: /* N(0, mag^2) per element (SMART's nu_0) */
        (void)regopt_random_normal(seed, 0, r, n);
        for (i = 0; i < n; i++)
            r[i] = (float)(c->mag * r[i]);
        break;
    case REGOPT_ADV_INIT_UNIFORM: {
        /* FreeLB: U(-1, 1) mag / sqrt(L d) (l2; L d = the unit's elements) or
           U(-mag, mag) (linf) */
        double sc = g->norm == REGOPT_ADV_NORM_INF ? c->mag : c->mag / sqrt((double)u);
        (void)regopt_random_uniform(seed, 0, r, n);
        for (i = 0; i < n; i++)
            r[i] = (float)(sc * (2.0 * r[i] - 1.0));
        break;
    }
    case REGOPT_ADV_INIT_DIRECTION: /* VAT: xi d / ||d||, d ~ N(0, I) */
        (void)regopt_random_normal(seed, 0, r, n);
        for (i = 0; i < n; i += u)
            adv_vat_normalise(r + i, r + i, u, c->mag);
        break;
    default:
        ro_zero(r, n);
        break;
    }
}

void ro_adv_update(float *r, const float *g, const ro_adv_geom *geo, const adv_cfg *c,
                   int method, double eps, int last)
{
    size_t n = geo->in * geo->d, u = geo->unit * geo->d, i, j;
    for (i = 0; i < n; i += u) {
        float *ri = r + i;
        const float *gi = g + i;
        double gn, den, rn;
        if (method == REGOPT_ADV_VAT) { /* power iteration; r_adv = eps g^ */
            adv_vat_normalise(ri, gi, u, last ? eps : c->mag);
            continue;
        }
        gn = adv_unit_norm(gi, u, geo->norm);
        /* FreeLB divides by max(||g||, 1e-8); FGM and PGD skip a zero g */
        den = method == REGOPT_ADV_FREELB ? (gn > 1e-8 ? gn : 1e-8) : gn;
        if (den > 0.0)
            for (j = 0; j < u; j++)
                ri[j] = (float)(ri[j] + c->step * (gi[j] / den));
        if (eps <= 0.0) /* FreeLB's max_norm 0: unbounded */
            continue;
        if (geo->norm == REGOPT_ADV_NORM_INF) {
            for (j = 0; j < u; j++)
                ri[j] = ri[j] > (float)eps ? (float)eps : ri[j] < -(float)eps ? -(float)eps
                                                                                : ri[j];
        } else if ((rn = adv_unit_norm(ri, u, REGOPT_ADV_NORM_L2)) > eps) {
            for (j = 0; j < u; j++)
                ri[j] = (float)(ri[j] * (eps / rn));
        }
    }
}

double ro_adv_norm_sum(const float *r, const ro_adv_geom *g)
{
    size_t n = g->in * g->d, u = g->unit * g->d, i;
    double s = 0.0;
    for (i = 0; i < n; i += u)
        s += adv_unit_norm(r + i, u, g->norm);
    return s;
}

size_t ro_adv_nonfinite_row(const float *x, size_t rows, size_t d)
{
    size_t i, j;
    for (i = 0; i < rows; i++)
        for (j = 0; j < d; j++)
            if (!isfinite(x[i * d + j]))
                return i;
    return rows;
}

double ro_adv_kl_row(const float *z, const float *a, size_t k, float coef, float *da)
{
    float mz = z[0], ma = a[0];
    double sz = 0.0, sa = 0.0, lz, la, kl = 0.0;
    size_t j;
    for (j = 1; j < k; j++) {
        mz = z[j] > mz ? z[j] : mz;
        ma = a[j] > ma ? a[j] : ma;
    }
    for (j = 0; j < k; j++) {
        sz += exp((double)z[j] - mz);
        sa += exp((double)a[j] - ma);
    }
    lz = (double)mz + log(sz); /* log-sum-exp: log P_j = z_j - lz */
    la = (double)ma + log(sa);
    for (j = 0; j < k; j++) {
        double lp = (double)z[j] - lz, lq = (double)a[j] - la, p = exp(lp);
        kl += p * (lp - lq);
        if (da)
            da[j] += (float)(coef * (exp(lq) - p));
    }
    return kl;
}
