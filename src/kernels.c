/* kernels.c — memory-bound loops shared by the step. */
#include "internal.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Sum of squares in double: a float accumulator loses digits long before
 * 10^7 elements. Four independent partial sums keep the adds pipelined;
 * the loop is latency-bound on them, so the SSE2 path holds the same four
 * sums in two registers, each float widened exactly and squared exactly
 * (24-bit significands) before the one rounding add per element that the
 * scalar code makes: the same bits, half the instructions. */
double ro_sum_squares(const float *x, size_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t i = 0;
#if defined(__SSE2__)
    {
        __m128d a01 = _mm_setzero_pd(), a23 = _mm_setzero_pd();
        double s[4];
        for (; i + 4 <= n; i += 4) {
            __m128 v = _mm_loadu_ps(x + i);
            __m128d lo = _mm_cvtps_pd(v), hi = _mm_cvtps_pd(_mm_movehl_ps(v, v));
            a01 = _mm_add_pd(a01, _mm_mul_pd(lo, lo));
            a23 = _mm_add_pd(a23, _mm_mul_pd(hi, hi));
        }
        _mm_storeu_pd(s, a01);
        _mm_storeu_pd(s + 2, a23);
        s0 = s[0];
        s1 = s[1];
        s2 = s[2];
        s3 = s[3];
    }
#endif
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)x[i] * x[i];
    return (s0 + s1) + (s2 + s3);
}

void ro_zero(float *x, size_t n) { memset(x, 0, n * sizeof *x); }
