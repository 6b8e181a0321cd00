/* optim_sgd.c — torch.optim.SGD's update, fused into one pass over a
 * tensor (gradient scaling by the clipping factor included); its
 * finiteness guard (optim.h), and the bound on max |w| that the gradient
 * norm's pass takes for every guard. */
#include "optim/optim.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

/* One element: the reference the blocks above match, shared by the update's
 * tails and ro_sgd_check. *b is the momentum buffer in and out (untouched
 * when mu is 0); returns the new weight. */
RO_ALWAYS_INLINE float sgd_one(const ro_update *u, float w, float g, float *b)
{
    const float mu = u->momentum;
    float d = g * u->grad_scale + u->wd * w;
    if (mu == 0.0f)
        return w - u->lr * d;
    /* torch: the buffer starts as a copy of the first gradient */
    *b = u->first ? d : mu * *b + u->one_minus_dampening * d;
    return w - u->lr * (u->nesterov ? d + mu * *b : *b);
}

void ro_sgd_update(const ro_update *u, float *restrict w, const float *restrict g,
                   float *restrict buf, size_t n)
{
    size_t i = 0, end = n - n % BLOCK;
    float b = 0.0f;
    if (u->momentum == 0.0f) {
        for (; i < end; i += BLOCK)
            plain_block(u, w + i, g + i);
        for (; i < n; i++)
            w[i] = sgd_one(u, w[i], g[i], &b);
        return;
    }
    if (!u->first) { /* the first step, once per run, stays a plain loop */
        if (u->nesterov)
            for (; i < end; i += BLOCK)
                nesterov_block(u, w + i, g + i, buf + i);
        else
            for (; i < end; i += BLOCK)
                momentum_block(u, w + i, g + i, buf + i);
    }
    for (; i < n; i++) {
        b = buf[i];
        w[i] = sgd_one(u, w[i], g[i], &b);
        buf[i] = b;
    }
}

/* ---- the finiteness guard (optim.h) ----------------------------------- */

int ro_sgd_safe(const ro_update *u, const ro_bounds *b, double *state)
{
    /* mirrors sgd_one operation by operation, on magnitudes */
    double mu = u->momentum, d, x, st = b->state;
    d = ro_up(ro_up(b->g * u->grad_scale) + ro_up((double)u->wd * b->w));
    if (mu == 0.0) {
        x = d;
    } else {
        st = u->first ? d : ro_up(ro_up(mu * b->state) + ro_up(u->one_minus_dampening * d));
        x = u->nesterov ? ro_up(d + ro_up(mu * st)) : st;
    }
    x = ro_up(u->lr * x);
    *state = st;
    return d < RO_SAFE_LIMIT && st < RO_SAFE_LIMIT && x < RO_SAFE_LIMIT &&
           ro_up(b->w + x) < RO_SAFE_LIMIT;
}

size_t ro_sgd_check(const ro_update *u, const float *w, const float *g, const float *buf,
                    size_t n, int *what, float *state_max)
{
    float mx = 0.0f;
    size_t i;
    *what = RO_NF_NONE;
    for (i = 0; i < n; i++) {
        float b = u->momentum == 0.0f ? 0.0f : buf[i], wn = sgd_one(u, w[i], g[i], &b);
        if (!ro_finite(w[i])) /* stays so; only a momentum buffer would take it */
            *what = u->momentum == 0.0f ? RO_NF_NONE : RO_NF_WEIGHT_BEFORE;
        else if (!ro_finite(b))
            *what = RO_NF_FIRST;
        else if (!ro_finite(wn))
            *what = RO_NF_WEIGHT;
        if (*what)
            break;
        b = b < 0.0f ? -b : b;
        mx = b > mx ? b : mx;
    }
    *state_max = mx;
    return i;
}

/* The largest top half (sign cleared) of the elements' bits, as signed
 * 16-bit maxima (SSE2 has no 32-bit max), then the rest of the bits set:
 * at most 2^-7 above max |x|, exact about infinities and NaNs, and one
 * instruction per four elements beside the load and the mask. */
uint32_t ro_abs_max_bits(const float *x, size_t n)
{
    uint32_t top = 0;
    size_t i = 0;
#if defined(__SSE2__)
    {
        const __m128i mask = _mm_set1_epi32(0x7fff0000);
        __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
        unsigned short lanes[8];
        int k;
        for (; i + 16 <= n; i += 16) {
            a0 = _mm_max_epi16(a0, _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + i)), mask));
            a1 = _mm_max_epi16(a1, _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + i + 4)),
                                                 mask));
            a2 = _mm_max_epi16(a2, _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + i + 8)),
                                                 mask));
            a3 = _mm_max_epi16(a3, _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + i + 12)),
                                                 mask));
        }
        a0 = _mm_max_epi16(_mm_max_epi16(a0, a1), _mm_max_epi16(a2, a3));
        _mm_storeu_si128((__m128i *)lanes, a0);
        for (k = 1; k < 8; k += 2) /* the top halves (little-endian) */
            top = lanes[k] > top ? lanes[k] : top;
    }
#endif
    for (; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        bits = (bits & 0x7fffffffu) >> 16;
        top = bits > top ? bits : top;
    }
    return top << 16 | 0xffffu;
}
