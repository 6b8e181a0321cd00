/* loss.c — the task losses, per row, with their gradients.
 * Cross-entropy is computed from log-softmax with the row maximum
 * subtracted, so no probability that underflowed is ever logged. */
#include "model/model.h"

#include <math.h>

double ro_softmax_ce_row(const float *z, size_t k, int32_t label, double s,
                         float coef, float *dz)
{
    float zmax = z[0];
    double sum = 0.0, lse, loss, zbar = 0.0;
    size_t j;
    for (j = 1; j < k; j++)
        if (z[j] > zmax)
            zmax = z[j];
    /* exp once per logit: kept in dz (when there is one) for the gradient */
    for (j = 0; j < k; j++) {
        float e = expf(z[j] - zmax);
        if (dz)
            dz[j] = e;
        sum += e;
    }
    lse = (double)zmax + log(sum);
    /* l = lse - sum_j q_j z_j with q = (1-s) onehot + s/K */
    if (s > 0.0) {
        for (j = 0; j < k; j++)
            zbar += z[j];
        zbar /= (double)k;
    }
    loss = lse - (1.0 - s) * z[label] - s * zbar;
    if (dz) {
        float inv = (float)(1.0 / sum), uni = (float)(s / (double)k);
        for (j = 0; j < k; j++)
            dz[j] = coef * (dz[j] * inv - uni);
        dz[label] -= coef * (float)(1.0 - s);
    }
    return loss;
}

double ro_mse_row(const float *z, const float *t, size_t k, float coef, float *dz)
{
    double sum = 0.0, scale = 2.0 * coef / (double)k;
    size_t j;
    for (j = 0; j < k; j++) {
        double d = (double)z[j] - t[j];
        sum += d * d;
        if (dz)
            dz[j] = (float)(scale * d);
    }
    return sum / (double)k;
}

/* R-Drop's consistency term for classification (Liang et al. 2021, Eq. 2):
 * c = (KL(P||Q) + KL(Q||P)) / 2 with P = softmax(z1), Q = softmax(z2), from
 * log-softmax with the maxima subtracted. With r = log P - log Q,
 *   dc/dz1 = (P (r - KL(P||Q)) + P - Q) / 2
 *   dc/dz2 = (Q (-r - KL(Q||P)) + Q - P) / 2
 * scaled by coef and ADDED to d1, d2 (which hold the task-loss gradients);
 * either may be NULL (a detached side). */
double ro_sym_kl_row(const float *z1, const float *z2, size_t k, float coef, float *d1,
                     float *d2)
{
    float m1 = z1[0], m2 = z2[0];
    double s1 = 0.0, s2 = 0.0, l1, l2, kpq = 0.0, kqp = 0.0;
    size_t j;
    for (j = 1; j < k; j++) {
        m1 = z1[j] > m1 ? z1[j] : m1;
        m2 = z2[j] > m2 ? z2[j] : m2;
    }
    for (j = 0; j < k; j++) {
        s1 += expf(z1[j] - m1);
        s2 += expf(z2[j] - m2);
    }
    l1 = (double)m1 + log(s1); /* log-sum-exp: log P_j = z1_j - l1 */
    l2 = (double)m2 + log(s2);
    for (j = 0; j < k; j++) {
        double r = ((double)z1[j] - l1) - ((double)z2[j] - l2);
        double p = exp((double)z1[j] - l1), q = exp((double)z2[j] - l2);
        kpq += p * r;
        kqp -= q * r;
    }
    if (d1 || d2)
        for (j = 0; j < k; j++) {
            double r = ((double)z1[j] - l1) - ((double)z2[j] - l2);
            double p = exp((double)z1[j] - l1), q = exp((double)z2[j] - l2);
            if (d1)
                d1[j] += (float)(coef * 0.5 * (p * (r - kpq) + p - q));
            if (d2)
                d2[j] += (float)(coef * 0.5 * (q * (-r - kqp) + q - p));
        }
    return 0.5 * (kpq + kqp);
}

/* The regression form: c = mean_k (z1_k - z2_k)^2, gradients added. */
double ro_sq_diff_row(const float *z1, const float *z2, size_t k, float coef, float *d1,
                      float *d2)
{
    double sum = 0.0, scale = 2.0 * coef / (double)k;
    size_t j;
    for (j = 0; j < k; j++) {
        double d = (double)z1[j] - z2[j];
        sum += d * d;
        if (d1)
            d1[j] += (float)(scale * d);
        if (d2)
            d2[j] -= (float)(scale * d);
    }
    return sum / (double)k;
}

/* mt-dnn's "stable KL" of adversarial logits a against detached target
 * logits b: sum_k p_k (r_p,k - r_q,k) * 2 with p = softmax(a), q =
 * softmax(b) and r = -log(1/(x + 1e-6) - 1 + 1e-6) (log-odds) held constant,
 * so the gradient flows through p only: d/da_j = p_j (c_j - sum_k p_k c_k),
 * c = 2 (r_p - r_q). Gradient scaled by coef, added to da. */
double ro_stable_kl_row(const float *a, const float *b, size_t k, float coef, float *da)
{
    float ma = a[0], mb = b[0];
    double sa = 0.0, sb = 0.0, la, lb, loss = 0.0, mean_c = 0.0;
    const double eps = 1e-6;
    size_t j;
    for (j = 1; j < k; j++) {
        ma = a[j] > ma ? a[j] : ma;
        mb = b[j] > mb ? b[j] : mb;
    }
    for (j = 0; j < k; j++) {
        sa += expf(a[j] - ma);
        sb += expf(b[j] - mb);
    }
    la = (double)ma + log(sa);
    lb = (double)mb + log(sb);
    for (j = 0; j < k; j++) {
        double p = exp((double)a[j] - la), q = exp((double)b[j] - lb);
        double c = 2.0 * (-log(1.0 / (p + eps) - 1.0 + eps) + log(1.0 / (q + eps) - 1.0 + eps));
        loss += p * c;
        mean_c += p * c;
    }
    if (da)
        for (j = 0; j < k; j++) {
            double p = exp((double)a[j] - la), q = exp((double)b[j] - lb);
            double c = 2.0 * (-log(1.0 / (p + eps) - 1.0 + eps) + log(1.0 / (q + eps) - 1.0 + eps));
            da[j] += (float)(coef * p * (c - mean_c));
        }
    return loss;
}
