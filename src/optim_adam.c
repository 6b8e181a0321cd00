/* optim_adam.c — torch.optim.Adam, AdamW and RAdam updates, each fused into
 * one pass over a tensor. Per-step scalars (bias corrections, RAdam's
 * rectification) are computed once in double by ro_adam_scalars. */
#include "internal.h"

#include <math.h>

void ro_adam_scalars(ro_update *u, const regopt_optimizer *o, uint64_t t,
                     double lr)
{
    double b1 = o->beta1, b2 = o->beta2, tt = (double)t;
    double bc1 = 1.0 - pow(b1, tt), bc2 = 1.0 - pow(b2, tt);
    u->beta1 = (float)b1;
    u->beta2 = (float)b2;
    /* torch passes 1 - beta as a Python float: round the difference, not
     * beta (1 - (float)0.999 is off by 1.3e-5 relative) */
    u->one_minus_beta1 = (float)(1.0 - b1);
    u->one_minus_beta2 = (float)(1.0 - b2);
    u->eps = (float)o->eps;
    u->amsgrad = o->amsgrad;
    u->bc2_sqrt = (float)sqrt(bc2);
    u->step_size = (float)(lr / bc1);
    u->rectified = 0;
    if (o->kind == REGOPT_RADAM) {
        /* Liu et al. 2020, Alg. 2: rho_t is the length of the approximated
         * SMA; the variance is tractable, and rectified, only when rho_t > 5
         * (torch's threshold). */
        double rho_inf = 2.0 / (1.0 - b2) - 1.0;
        double rho_t = rho_inf - 2.0 * tt * pow(b2, tt) / bc2;
        if (rho_t > 5.0) {
            double rect = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                               ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
            u->rectified = 1;
            u->step_size = (float)(lr * rect / bc1);
        }
    }
}

void ro_adam_update(const ro_update *u, float *w, const float *g, float *m,
                    float *v, float *vmax, size_t n, int decoupled)
{
    const float b1 = u->beta1, b2 = u->beta2, s = u->grad_scale;
    const float a1 = u->one_minus_beta1, a2 = u->one_minus_beta2;
    const float step = u->step_size, bc2s = u->bc2_sqrt, eps = u->eps;
    const float wd = decoupled ? 0.0f : u->wd;
    const float shrink = decoupled ? 1.0f - u->lr * u->wd : 1.0f;
    size_t i;
    for (i = 0; i < n; i++) {
        float wi = w[i] * shrink; /* AdamW: decay before the Adam step */
        float d = g[i] * s + wd * wi;
        float mi = b1 * m[i] + a1 * d;
        float vi = b2 * v[i] + a2 * d * d;
        float den;
        m[i] = mi;
        v[i] = vi;
        if (u->amsgrad) {
            float vm = vmax[i] > vi ? vmax[i] : vi;
            vmax[i] = vm;
            vi = vm;
        }
        den = sqrtf(vi) / bc2s + eps;
        w[i] = wi - step * (mi / den);
    }
}

void ro_radam_update(const ro_update *u, float *w, const float *g, float *m,
                     float *v, size_t n)
{
    const float b1 = u->beta1, b2 = u->beta2, s = u->grad_scale;
    const float a1 = u->one_minus_beta1, a2 = u->one_minus_beta2, wd = u->wd;
    const float step = u->step_size, bc2s = u->bc2_sqrt, eps = u->eps;
    size_t i;
    for (i = 0; i < n; i++) {
        float d = g[i] * s + wd * w[i];
        float mi = b1 * m[i] + a1 * d;
        float vi = b2 * v[i] + a2 * d * d;
        m[i] = mi;
        v[i] = vi;
        /* rectified: lr*r_t/bc1 * m * sqrt(bc2)/(sqrt(v)+eps);
           otherwise the un-adapted momentum step lr/bc1 * m */
        w[i] -= u->rectified ? step * mi * (bc2s / (sqrtf(vi) + eps)) : step * mi;
    }
}
