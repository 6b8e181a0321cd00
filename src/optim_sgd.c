/* optim_sgd.c — torch.optim.SGD's update, fused into one pass over a
 * tensor (gradient scaling by the clipping factor included). */
#include "internal.h"

void ro_sgd_update(const ro_update *u, float *w, const float *g, float *buf,
                   size_t n)
{
    const float lr = u->lr, wd = u->wd, s = u->grad_scale;
    const float mu = u->momentum, keep = u->one_minus_dampening;
    size_t i;
    if (mu == 0.0f) {
        for (i = 0; i < n; i++)
            w[i] -= lr * (g[i] * s + wd * w[i]);
        return;
    }
    for (i = 0; i < n; i++) {
        float d = g[i] * s + wd * w[i];
        /* torch: the buffer starts as a copy of the first gradient */
        float b = u->first ? d : mu * buf[i] + keep * d;
        buf[i] = b;
        w[i] -= lr * (u->nesterov ? d + mu * b : b);
    }
}
