/* average_rig.h — the averaged weights of smart_rig.h's linear model as
 * the weight-averaging suites read them (check_average*.c). */
#ifndef REGOPT_AVERAGE_RIG_H
#define REGOPT_AVERAGE_RIG_H

#include "smart_rig.h"

/* The host's trainable weights, in the library's flat order (A, then b). */
static inline void av_weights(const sm_run *r, float *w)
{
    size_t kd = r->h.k * r->h.d;
    memcpy(w, r->h.A, kd * sizeof(float));
    memcpy(w + kd, r->h.b, r->h.k * sizeof(float));
}

static inline size_t av_n(const sm_run *r) { return r->h.k * r->h.d + r->h.k; }

/* The average as the library holds it: swapped in, read, swapped back; the
 * host's buffers must then hold the trained weights bit for bit. */
static inline void av_read(sm_run *r, regopt_regularizer *g, float *avg)
{
    float before[SW], after[SW];
    size_t n = av_n(r);
    av_weights(r, before);
    RMUST(g, regopt_regularizer_swap_average(g));
    ck_assert_int_eq(regopt_regularizer_average_swapped(g), 1);
    av_weights(r, avg);
    RMUST(g, regopt_regularizer_swap_average(g));
    ck_assert_int_eq(regopt_regularizer_average_swapped(g), 0);
    av_weights(r, after);
    ck_assert_msg(memcmp(before, after, n * sizeof(float)) == 0, "swap twice changed w");
}

#endif
