/* kernels.c — memory-bound loops shared by the step. */
#include "core/core.h"

#include <math.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if RO_X86_DISPATCH
#include <immintrin.h>
#endif

/* Sum of squares in double: a float accumulator loses digits long before
 * 10^7 elements. The sum is defined as sixteen running sums, lane k adding
 * x[i]^2 for i = k (mod 16) in order (the n % 16 last elements go to lanes
 * 0, 1, ...), then added pairwise: lane k + 8 into k, k + 4 into k, k + 2
 * into k, lane 1 into 0. Each float is widened and squared exactly (24-bit
 * significands), so every path below -- AVX-512, AVX, SSE2, scalar -- makes
 * the same rounded additions in the same order: the same bits. Sixteen
 * independent sums also hide the adder's latency, which bounded the loop
 * when it had four. */
/* The lanes added pairwise: k + 8 into k, k + 4 into k, k + 2 into k, 1
 * into 0. */
static double fold16(double *s)
{
    size_t k;
    for (k = 0; k < 8; k++)
        s[k] += s[k + 8];
    for (k = 0; k < 4; k++)
        s[k] += s[k + 4];
    s[0] += s[2];
    s[1] += s[3];
    return s[0] + s[1];
}

/* The tail x[i .. n) (fewer than 16) into lanes 0, 1, ..., then the fold. */
static double combine16(double *s, const float *x, size_t i, size_t n)
{
    size_t k;
    for (k = 0; i < n; i++, k++)
        s[k] += (double)x[i] * x[i];
    return fold16(s);
}

#if RO_X86_DISPATCH
RO_TARGET("avx512f") static double sum_squares_avx512(const float *x, size_t n)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    double s[16];
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        a0 = _mm512_add_pd(a0, _mm512_mul_pd(lo, lo));
        a1 = _mm512_add_pd(a1, _mm512_mul_pd(hi, hi));
    }
    _mm512_storeu_pd(s, a0);
    _mm512_storeu_pd(s + 8, a1);
    /* clean upper state before any SSE code runs: GCC 12 does not insert
       this before the call, and the legacy-SSE loops after it (SGD's, the
       host's) would run three times slower */
    _mm256_zeroupper();
    return combine16(s, x, i, n);
}

RO_TARGET("avx") static double sum_squares_avx(const float *x, size_t n)
{
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    __m256d a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
    double s[16];
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
        __m256d v1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        __m256d v2 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 8));
        __m256d v3 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 12));
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(v0, v0));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(v1, v1));
        a2 = _mm256_add_pd(a2, _mm256_mul_pd(v2, v2));
        a3 = _mm256_add_pd(a3, _mm256_mul_pd(v3, v3));
    }
    _mm256_storeu_pd(s, a0);
    _mm256_storeu_pd(s + 4, a1);
    _mm256_storeu_pd(s + 8, a2);
    _mm256_storeu_pd(s + 12, a3);
    _mm256_zeroupper(); /* as above */
    return combine16(s, x, i, n);
}
#endif

double ro_sum_squares(const float *x, size_t n)
{
    double s[16] = {0};
    size_t i = 0, k;
#if RO_X86_DISPATCH
    __builtin_cpu_init();
    if (n >= 64 && __builtin_cpu_supports("avx512f"))
        return sum_squares_avx512(x, n);
    if (n >= 64 && __builtin_cpu_supports("avx"))
        return sum_squares_avx(x, n);
#endif
#if defined(__SSE2__)
    {
        __m128d a[8];
        for (k = 0; k < 8; k++)
            a[k] = _mm_setzero_pd();
        for (; i + 16 <= n; i += 16)
            for (k = 0; k < 8; k += 2) {
                __m128 v = _mm_loadu_ps(x + i + 2 * k);
                __m128d lo = _mm_cvtps_pd(v), hi = _mm_cvtps_pd(_mm_movehl_ps(v, v));
                a[k] = _mm_add_pd(a[k], _mm_mul_pd(lo, lo));
                a[k + 1] = _mm_add_pd(a[k + 1], _mm_mul_pd(hi, hi));
            }
        for (k = 0; k < 8; k++)
            _mm_storeu_pd(s + 2 * k, a[k]);
    }
#endif
    for (; i + 16 <= n; i += 16)
        for (k = 0; k < 16; k++)
            s[k] += (double)x[i + k] * x[i + k];
    return combine16(s, x, i, n);
}

/* x = T a for one element: a = g + wd w, T = |w| + eta (ASAM) or 1; each
 * operation rounded to float, no contraction (ISO C builds). */
static float scaled(float w, float g, float wd, float eta, int ad)
{
    float a = g + wd * w;
    return ad ? (fabsf(w) + eta) * a : a;
}

/* The sum of x^2 with x as above, in the lanes of ro_sum_squares. */
static double combine16_scaled(double *s, const float *w, const float *g, size_t i, size_t n,
                               float wd, float eta, int ad)
{
    size_t k;
    for (k = 0; i < n; i++, k++) {
        float x = scaled(w[i], g[i], wd, eta, ad);
        s[k] += (double)x * x;
    }
    return fold16(s);
}

#if RO_X86_DISPATCH
RO_TARGET("avx512f") static double scaled_squares_avx512(const float *w, const float *g,
                                                         size_t n, float wd, float eta, int ad)
{
    const __m512 vwd = _mm512_set1_ps(wd), veta = _mm512_set1_ps(eta);
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    double s[16];
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wi = _mm512_loadu_ps(w + i);
        __m512 x = _mm512_add_ps(_mm512_loadu_ps(g + i), _mm512_mul_ps(vwd, wi));
        __m512d lo, hi;
        if (ad) {
            __m512 tw = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(wi), absmask));
            x = _mm512_mul_ps(_mm512_add_ps(tw, veta), x);
        }
        lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
        hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        a0 = _mm512_add_pd(a0, _mm512_mul_pd(lo, lo));
        a1 = _mm512_add_pd(a1, _mm512_mul_pd(hi, hi));
    }
    _mm512_storeu_pd(s, a0);
    _mm512_storeu_pd(s + 8, a1);
    _mm256_zeroupper(); /* as in sum_squares_avx512 */
    return combine16_scaled(s, w, g, i, n, wd, eta, ad);
}
#endif

double ro_sum_scaled_squares(const float *w, const float *g, size_t n, float wd, float eta,
                             int ad)
{
    double s[16] = {0};
    size_t i = 0, k;
#if RO_X86_DISPATCH
    __builtin_cpu_init();
    if (n >= 64 && __builtin_cpu_supports("avx512f"))
        return scaled_squares_avx512(w, g, n, wd, eta, ad);
#endif
    for (; i + 16 <= n; i += 16)
        for (k = 0; k < 16; k++) {
            float x = scaled(w[i + k], g[i + k], wd, eta, ad);
            s[k] += (double)x * x;
        }
    return combine16_scaled(s, w, g, i, n, wd, eta, ad);
}

/* Dot product in double, in the lanes of ro_sum_squares: lane k adds
 * x[i] y[i] for i = k (mod 16), the tail into lanes 0, 1, ..., then the
 * fold. A product of two widened floats is exact in double, so the SSE2 and
 * scalar paths make the same additions in the same order: the same bits. */
double ro_dot(const float *x, const float *y, size_t n)
{
    double s[16] = {0};
    size_t i = 0, k;
#if defined(__SSE2__)
    {
        __m128d a[8];
        for (k = 0; k < 8; k++)
            a[k] = _mm_setzero_pd();
        for (; i + 16 <= n; i += 16)
            for (k = 0; k < 8; k += 2) {
                __m128 u = _mm_loadu_ps(x + i + 2 * k), v = _mm_loadu_ps(y + i + 2 * k);
                __m128d ulo = _mm_cvtps_pd(u), uhi = _mm_cvtps_pd(_mm_movehl_ps(u, u));
                __m128d vlo = _mm_cvtps_pd(v), vhi = _mm_cvtps_pd(_mm_movehl_ps(v, v));
                a[k] = _mm_add_pd(a[k], _mm_mul_pd(ulo, vlo));
                a[k + 1] = _mm_add_pd(a[k + 1], _mm_mul_pd(uhi, vhi));
            }
        for (k = 0; k < 8; k++)
            _mm_storeu_pd(s + 2 * k, a[k]);
    }
#endif
    for (; i + 16 <= n; i += 16)
        for (k = 0; k < 16; k++)
            s[k] += (double)x[i + k] * y[i + k];
    for (k = 0; i < n; i++, k++)
        s[k] += (double)x[i] * y[i];
    return fold16(s);
}

/* a <-> b element by element, in RO_BLOCK blocks of restrict-qualified
 * pointers (GCC -O2 vectorizes only those) and a tail: one pass, no
 * scratch; twice restores both sides bit for bit (a float move never
 * rounds). */
static void exchange_block(float *restrict a, float *restrict b)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        float t = a[j];
        a[j] = b[j];
        b[j] = t;
    }
}

void ro_exchange(float *a, float *b, size_t n)
{
    size_t j = 0;
    for (; j + RO_BLOCK <= n; j += RO_BLOCK)
        exchange_block(a + j, b + j);
    for (; j < n; j++) {
        float t = a[j];
        a[j] = b[j];
        b[j] = t;
    }
}

void ro_zero(float *x, size_t n) { memset(x, 0, n * sizeof *x); }
