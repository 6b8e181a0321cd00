/* ema.c — the one exponential moving average of the trainable weights that
 * every regularizer keeps (the Bregman/MESA teacher, the EMA average):
 *   v <- b v + (1 - b) w,
 * each element computed in double and rounded to float once. One recurrence
 * for both, so a teacher and an average with equal decays hold the same
 * bits (the teacher IS the EMA a MESA user evaluates: include/regopt.h,
 * "Weight averaging"). A convex combination of two finite floats, rounded
 * once, is finite and lies between them, whatever the decay; and the result
 * of an element depends on nothing else, so not on how the elements are
 * split over threads -- nor on the instruction set: the AVX path below makes
 * the same IEEE operations in the same order (core.h, "Runtime CPU
 * dispatch"), twice as wide as SSE2's, which the widening and narrowing
 * otherwise make the loop's bound. */
#include "reg/reg.h"

#if RO_X86_DISPATCH
#include <immintrin.h>
#endif

RO_ALWAYS_INLINE void ema_block(float *restrict v, const float *restrict w, double b, double k)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++)
        v[j] = (float)(b * (double)v[j] + k * (double)w[j]);
}

RO_ALWAYS_INLINE void ema_run(float *v, const float *w, size_t n, double b, double k)
{
    size_t j;
    for (j = 0; j + RO_BLOCK <= n; j += RO_BLOCK)
        ema_block(v + j, w + j, b, k);
    for (; j < n; j++)
        v[j] = (float)(b * (double)v[j] + k * (double)w[j]);
}

static void ema_base(float *v, const float *w, size_t n, double b, double k)
{
    ema_run(v, w, n, b, k);
}

#if RO_X86_DISPATCH
RO_TARGET("avx") static void ema_avx(float *v, const float *w, size_t n, double b, double k)
{
    ema_run(v, w, n, b, k);
    _mm256_zeroupper(); /* as kernels.c: the SSE loops after it stay fast */
}
#endif

void ro_ema_set(ro_ema_job *e, float *avg, double decay)
{
    e->avg = avg;
    e->keep = decay;
    e->take = 1.0 - decay;
}

void ro_ema_range(float *v, const float *w, size_t n, double keep, double take)
{
#if RO_X86_DISPATCH
    __builtin_cpu_init();
    if (n >= RO_BLOCK && __builtin_cpu_supports("avx")) {
        ema_avx(v, w, n, keep, take);
        return;
    }
#endif
    ema_base(v, w, n, keep, take);
}

void ro_ema_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ro_ema_job *e = ctx;
    ro_ema_range(e->avg + p->offset + j0, p->data + j0, j1 - j0, e->keep, e->take);
}

ro_ema_buf *ro_ema_buf_new(const ro_alloc *a, size_t n)
{
    /* one block: the count, then the floats (16-byte aligned after it) */
    ro_ema_buf *b = ro_calloc(a, 1, sizeof(ro_ema_buf) + 16 + n * sizeof(float));
    if (!b)
        return NULL;
    b->v = (float *)(void *)((char *)b + ((sizeof(ro_ema_buf) + 15) & ~(size_t)15));
    b->refs = 1;
    return b;
}

void ro_ema_buf_drop(const ro_alloc *a, ro_ema_buf *b)
{
    if (b && --b->refs == 0)
        ro_free(a, b);
}
