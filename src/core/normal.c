/* normal.c — Box-Muller: standard normals from pairs of Philox words.
 *
 * With u1 = (w1 + 1) / 2^32 in (0, 1] and u2 = w2 / 2^32 in [0, 1),
 * r = sqrt(-2 ln u1) and the pair is (r cos 2 pi u2, r sin 2 pi u2) (Box and
 * Muller 1958). The logarithm, sine and cosine are the library's own, in
 * double precision from + - * / and sqrt only (no FMA, no libm), so a draw
 * has the same bits on every CPU, compiler and C library, and the AVX-512
 * path below, eight pairs at a time, makes exactly the scalar path's
 * operations. Both functions are accurate to ~1e-15 relative, far below
 * the float the result is rounded to:
 *   ln x = e ln 2 + ln m, x = m 2^e with m in [sqrt(1/2), sqrt(2)),
 *          ln m = 2 atanh s = 2 (s + s^3/3 + ... + s^19/19), s = (m-1)/(m+1),
 *          |s| <= 0.1716, so the first omitted term is below 2e-17;
 *   2 pi u2 = q pi/2 + phi: the quadrant q is the top two bits of w2 and
 *          phi = f pi/2 with f the other 30 bits over 2^30 (exact); for
 *          f > 1/2 the complement 1 - f (exact) swaps sine and cosine, so
 *          the Taylor series run on [0, pi/4], to x^13 and x^14 (first
 *          omitted terms below 2e-14 and 1e-15). */
#include "core/core.h"

#include <math.h>
#include <string.h>
#if RO_X86_DISPATCH
#include <immintrin.h>
#endif

#define LN2 0.6931471805599453
#define SQRT2 1.4142135623730951
#define HALF_PI 1.5707963267948966
#define TWO_M30 (1.0 / 1073741824.0)

/* atanh series coefficients 1/3 .. 1/19 */
#define A3 (1.0 / 3.0)
#define A5 (1.0 / 5.0)
#define A7 (1.0 / 7.0)
#define A9 (1.0 / 9.0)
#define A11 (1.0 / 11.0)
#define A13 (1.0 / 13.0)
#define A15 (1.0 / 15.0)
#define A17 (1.0 / 17.0)
#define A19 (1.0 / 19.0)
/* sine: -1/3! .. -1/13!, cosine: -1/2! .. 1/14! */
#define S3 (-1.0 / 6.0)
#define S5 (1.0 / 120.0)
#define S7 (-1.0 / 5040.0)
#define S9 (1.0 / 362880.0)
#define S11 (-1.0 / 39916800.0)
#define S13 (1.0 / 6227020800.0)
#define C2 (-1.0 / 2.0)
#define C4 (1.0 / 24.0)
#define C6 (-1.0 / 720.0)
#define C8 (1.0 / 40320.0)
#define C10 (-1.0 / 3628800.0)
#define C12 (1.0 / 479001600.0)
#define C14 (-1.0 / 87178291200.0)

/* The radius sqrt(-2 ln u1), u1 = (w1 + 1) / 2^32. */
static double radius(uint32_t w1)
{
    double x = (double)w1 + 1.0, m, s, z, p, ln;
    uint64_t bits;
    int e;
    memcpy(&bits, &x, sizeof bits);
    e = (int)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    memcpy(&m, &bits, sizeof m);
    if (m > SQRT2) {
        m = m * 0.5;
        e = e + 1;
    }
    s = (m - 1.0) / (m + 1.0);
    z = s * s;
    p = A19;
    p = p * z + A17;
    p = p * z + A15;
    p = p * z + A13;
    p = p * z + A11;
    p = p * z + A9;
    p = p * z + A7;
    p = p * z + A5;
    p = p * z + A3;
    ln = (double)(e - 32) * LN2 + (2.0 * s + (2.0 * s) * (z * p));
    return sqrt(-2.0 * ln);
}

/* cos and sin of 2 pi w2 / 2^32. */
static void circle(uint32_t w2, double *c_out, double *s_out)
{
    unsigned q = w2 >> 30;
    double f = (double)(w2 & 0x3fffffffu) * TWO_M30, t, t2, sn, cs, c, s;
    int swap = f > 0.5;
    if (swap)
        f = 1.0 - f;
    t = f * HALF_PI;
    t2 = t * t;
    sn = S13;
    sn = sn * t2 + S11;
    sn = sn * t2 + S9;
    sn = sn * t2 + S7;
    sn = sn * t2 + S5;
    sn = sn * t2 + S3;
    sn = t + t * (t2 * sn);
    cs = C14;
    cs = cs * t2 + C12;
    cs = cs * t2 + C10;
    cs = cs * t2 + C8;
    cs = cs * t2 + C6;
    cs = cs * t2 + C4;
    cs = cs * t2 + C2;
    cs = 1.0 + t2 * cs;
    /* the angle is q pi/2 + (swap ? pi/2 - t : t) */
    if (swap ^ (int)(q & 1u)) {
        c = sn;
        s = cs;
    } else {
        c = cs;
        s = sn;
    }
    *c_out = q == 1 || q == 2 ? -c : c;
    *s_out = q >= 2 ? -s : s;
}

float ro_normal_one(uint32_t w1, uint32_t w2, int sine)
{
    double r = radius(w1), c, s;
    circle(w2, &c, &s);
    return (float)(sine ? r * s : r * c);
}

#if RO_X86_DISPATCH
/* Eight pairs: the scalar functions' operations lane by lane. */
RO_TARGET("avx512f") static void pairs_avx512(const uint32_t *w, float *out)
{
    const __m512i idx1 = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i idx2 = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512i all = _mm512_loadu_si512(w);
    const __m256i w1 = _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx1, all));
    const __m256i w2 = _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx2, all));
    const __m512d one = _mm512_set1_pd(1.0), half = _mm512_set1_pd(0.5);
    const __m512i sign = _mm512_set1_epi64((long long)0x8000000000000000ull);
    __m512d x, ed, m, s, z, p, ln, r, f, t, t2, sn, cs, c, sv;
    __mmask8 big, swap, odd, negc, negs;
    __m256i q;
    float co[8], si[8];
    int k;
    /* radius */
    /* radius: x = m 2^e with getexp/getmant, the bits the scalar code
       reads; e - 32 is small, so the doubles are the scalar's integers */
    x = _mm512_add_pd(_mm512_cvtepu32_pd(w1), one);
    ed = _mm512_sub_pd(_mm512_getexp_pd(x), _mm512_set1_pd(32.0));
    m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(SQRT2), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, big, m, half);
    ed = _mm512_mask_add_pd(ed, big, ed, one);
    s = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
    z = _mm512_mul_pd(s, s);
    p = _mm512_set1_pd(A19);
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A17));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A15));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A13));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A11));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A9));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A7));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A5));
    p = _mm512_add_pd(_mm512_mul_pd(p, z), _mm512_set1_pd(A3));
    s = _mm512_add_pd(s, s);
    ln = _mm512_add_pd(_mm512_mul_pd(ed, _mm512_set1_pd(LN2)),
                       _mm512_add_pd(s, _mm512_mul_pd(s, _mm512_mul_pd(z, p))));
    r = _mm512_sqrt_pd(_mm512_mul_pd(_mm512_set1_pd(-2.0), ln));
    /* circle */
    q = _mm256_srli_epi32(w2, 30);
    f = _mm512_mul_pd(_mm512_cvtepu32_pd(_mm256_and_si256(w2, _mm256_set1_epi32(0x3fffffff))),
                      _mm512_set1_pd(TWO_M30));
    swap = _mm512_cmp_pd_mask(f, half, _CMP_GT_OQ);
    f = _mm512_mask_sub_pd(f, swap, one, f);
    t = _mm512_mul_pd(f, _mm512_set1_pd(HALF_PI));
    t2 = _mm512_mul_pd(t, t);
    sn = _mm512_set1_pd(S13);
    sn = _mm512_add_pd(_mm512_mul_pd(sn, t2), _mm512_set1_pd(S11));
    sn = _mm512_add_pd(_mm512_mul_pd(sn, t2), _mm512_set1_pd(S9));
    sn = _mm512_add_pd(_mm512_mul_pd(sn, t2), _mm512_set1_pd(S7));
    sn = _mm512_add_pd(_mm512_mul_pd(sn, t2), _mm512_set1_pd(S5));
    sn = _mm512_add_pd(_mm512_mul_pd(sn, t2), _mm512_set1_pd(S3));
    sn = _mm512_add_pd(t, _mm512_mul_pd(t, _mm512_mul_pd(t2, sn)));
    cs = _mm512_set1_pd(C14);
    cs = _mm512_add_pd(_mm512_mul_pd(cs, t2), _mm512_set1_pd(C12));
    cs = _mm512_add_pd(_mm512_mul_pd(cs, t2), _mm512_set1_pd(C10));
    cs = _mm512_add_pd(_mm512_mul_pd(cs, t2), _mm512_set1_pd(C8));
    cs = _mm512_add_pd(_mm512_mul_pd(cs, t2), _mm512_set1_pd(C6));
    cs = _mm512_add_pd(_mm512_mul_pd(cs, t2), _mm512_set1_pd(C4));
    cs = _mm512_add_pd(_mm512_mul_pd(cs, t2), _mm512_set1_pd(C2));
    cs = _mm512_add_pd(one, _mm512_mul_pd(t2, cs));
    {
        __m512i q64 = _mm512_cvtepu32_epi64(q);
        odd = _mm512_test_epi64_mask(q64, _mm512_set1_epi64(1));
        negc = _mm512_cmp_epu64_mask(_mm512_sub_epi64(q64, _mm512_set1_epi64(1)),
                                     _mm512_set1_epi64(1), _MM_CMPINT_LE); /* q = 1, 2 */
        negs = _mm512_cmp_epu64_mask(q64, _mm512_set1_epi64(2), _MM_CMPINT_NLT); /* q >= 2 */
    }
    swap = (__mmask8)(swap ^ odd);
    c = _mm512_mask_blend_pd(swap, cs, sn);
    sv = _mm512_mask_blend_pd(swap, sn, cs);
    c = _mm512_castsi512_pd(_mm512_mask_xor_epi64(_mm512_castpd_si512(c), negc,
                                                  _mm512_castpd_si512(c), sign));
    sv = _mm512_castsi512_pd(_mm512_mask_xor_epi64(_mm512_castpd_si512(sv), negs,
                                                   _mm512_castpd_si512(sv), sign));
    _mm256_storeu_ps(co, _mm512_cvtpd_ps(_mm512_mul_pd(r, c)));
    _mm256_storeu_ps(si, _mm512_cvtpd_ps(_mm512_mul_pd(r, sv)));
    _mm256_zeroupper(); /* before the scalar code (see kernels.c) */
    for (k = 0; k < 8; k++) {
        out[2 * k] = co[k];
        out[2 * k + 1] = si[k];
    }
}
#endif

void ro_normal_pairs(const uint32_t *w, size_t pairs, float *out)
{
    size_t i = 0;
#if RO_X86_DISPATCH
    __builtin_cpu_init();
    if (pairs >= 8 && __builtin_cpu_supports("avx512f"))
        for (; i + 8 <= pairs; i += 8)
            pairs_avx512(w + 2 * i, out + 2 * i);
#endif
    for (; i < pairs; i++) {
        double r = radius(w[2 * i]), c, s;
        circle(w[2 * i + 1], &c, &s);
        out[2 * i] = (float)(r * c);
        out[2 * i + 1] = (float)(r * s);
    }
}
