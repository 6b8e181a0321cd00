/* smart_ref.h — double-precision references of the SMART suites: norms
 * and projections, the loss-side l_s and the task loss, finite
 * differences of l_s (the rig: smart_rig.h). */
#ifndef REGOPT_SMART_REF_H
#define REGOPT_SMART_REF_H

#include "smart_rig.h"

/* ======================================================================== */
/* Double-precision references                                              */
/* ======================================================================== */

static inline double ref_norm(const double *x, size_t d, int p)
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

static inline double ref_normf(const float *x, size_t d, int p)
{
    double y[SD];
    size_t j;
    for (j = 0; j < d; j++)
        y[j] = x[j];
    return ref_norm(y, d, p);
}

/* Projection onto the L1 ball by bisection on the soft threshold. */
static inline void ref_project_l1(double *x, size_t d, double r)
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

static inline void ref_project(double *x, size_t d, int p, double r)
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
static inline void ref_ata(const float *A, size_t d, size_t k, const double *nu, double *g)
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
static inline double ref_ls(const double *a, const double *z, size_t k, int mse)
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

static inline double ref_task(const double *z, size_t k, int32_t y, const float *tg, int mse,
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

static inline void f2d(double *dst, const float *src, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        dst[i] = src[i];
}

/* Central finite difference of w * l_s(a, z) in a (side 0) or z (side 1). */
static inline double fd_ls(const double *a, const double *z, size_t k, int mse, int side, size_t j)
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

#endif
