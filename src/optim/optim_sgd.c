/* optim_sgd.c — torch.optim.SGD's update, fused into one pass over a
 * tensor (gradient scaling by the clipping factor included). */
#include "optim/optim.h"

/* GCC at -O2 vectorizes a loop only when vector code replaces all of it,
 * i.e. when its trip count is a known multiple of the vector width. So the
 * loops run over blocks of BLOCK elements through block pointers, then a
 * scalar tail that is also the reference. The first step, once per run,
 * stays a plain loop. */
#define BLOCK 16

static void plain_block(const ro_update *u, float *restrict w, const float *restrict g)
{
    const float lr = u->lr, wd = u->wd, s = u->grad_scale;
    size_t j;
    for (j = 0; j < BLOCK; j++)
        w[j] -= lr * (g[j] * s + wd * w[j]);
}

static void momentum_block(const ro_update *u, float *restrict w, const float *restrict g,
                           float *restrict buf)
{
    const float lr = u->lr, wd = u->wd, s = u->grad_scale;
    const float mu = u->momentum, keep = u->one_minus_dampening;
    size_t j;
    for (j = 0; j < BLOCK; j++) {
        float d = g[j] * s + wd * w[j], b = mu * buf[j] + keep * d;
        buf[j] = b;
        w[j] -= lr * b;
    }
}

static void nesterov_block(const ro_update *u, float *restrict w, const float *restrict g,
                           float *restrict buf)
{
    const float lr = u->lr, wd = u->wd, s = u->grad_scale;
    const float mu = u->momentum, keep = u->one_minus_dampening;
    size_t j;
    for (j = 0; j < BLOCK; j++) {
        float d = g[j] * s + wd * w[j], b = mu * buf[j] + keep * d;
        buf[j] = b;
        w[j] -= lr * (d + mu * b);
    }
}

void ro_sgd_update(const ro_update *u, float *restrict w, const float *restrict g,
                   float *restrict buf, size_t n)
{
    const float lr = u->lr, wd = u->wd, s = u->grad_scale;
    const float mu = u->momentum, keep = u->one_minus_dampening;
    size_t i = 0, end = n - n % BLOCK;
    if (mu == 0.0f) {
        for (; i < end; i += BLOCK)
            plain_block(u, w + i, g + i);
        for (; i < n; i++)
            w[i] -= lr * (g[i] * s + wd * w[i]);
        return;
    }
    if (u->first) { /* torch: the buffer starts as a copy of the first gradient */
        for (; i < n; i++) {
            float d = g[i] * s + wd * w[i];
            buf[i] = d;
            w[i] -= lr * (u->nesterov ? d + mu * d : d);
        }
        return;
    }
    if (u->nesterov)
        for (; i < end; i += BLOCK)
            nesterov_block(u, w + i, g + i, buf + i);
    else
        for (; i < end; i += BLOCK)
            momentum_block(u, w + i, g + i, buf + i);
    for (; i < n; i++) {
        float d = g[i] * s + wd * w[i], b = mu * buf[i] + keep * d;
        buf[i] = b;
        w[i] -= lr * (u->nesterov ? d + mu * b : b);
    }
}
