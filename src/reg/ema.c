/* ema.c — the one exponential moving average of the trainable weights that
 * every regularizer keeps (the Bregman/MESA teacher, the EMA average):
 *   v <- b v + (1 - b) w,
 * each element computed in double and rounded to float once. One recurrence
 * for both, so a teacher and an average with equal decays hold the same
 * bits (the teacher IS the EMA a MESA user evaluates: include/regopt.h,
 * "Weight averaging"). A convex combination of two finite floats, rounded
 * once, is finite and lies between them, whatever the decay; and the result
 * of an element depends on nothing else, so not on how the elements are
 * split over threads. */
#include "reg/reg.h"

static void ema_block(float *restrict v, const float *restrict w, double b, double k)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++)
        v[j] = (float)(b * (double)v[j] + k * (double)w[j]);
}

void ro_ema_set(ro_ema_job *e, float *avg, double decay)
{
    e->avg = avg;
    e->keep = decay;
    e->take = 1.0 - decay;
}

void ro_ema_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ro_ema_job *e = ctx;
    float *v = e->avg + p->offset + j0;
    const float *w = p->data + j0;
    double b = e->keep, k = e->take;
    size_t n = j1 - j0, j;
    for (j = 0; j + RO_BLOCK <= n; j += RO_BLOCK)
        ema_block(v + j, w + j, b, k);
    for (; j < n; j++)
        v[j] = (float)(b * (double)v[j] + k * (double)w[j]);
}
