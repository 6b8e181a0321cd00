/* loss.c — the task losses, per row, with their gradients.
 * Cross-entropy is computed from log-softmax with the row maximum
 * subtracted, so no probability that underflowed is ever logged. */
#include "internal.h"

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
