/* optim_adam.c — torch.optim.Adam, AdamW and RAdam updates, each fused into
 * one pass over a tensor. Per-step scalars (bias corrections, RAdam's
 * rectification) are computed once in double by ro_adam_scalars. */
#include "optim/optim.h"

#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if RO_X86_DISPATCH
#include <immintrin.h>
#endif

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

#if RO_X86_DISPATCH
/* The vector path below with eight lanes (AVX): the divider is the loop's
 * bottleneck (two divisions and a square root per element) and handles
 * eight lanes in less time than two four-lane operations. The same
 * operations in the same order, each IEEE-rounded, so the same bits; the
 * target is AVX without FMA, so no multiply-add can be contracted. Returns
 * how many leading elements it updated. */
RO_TARGET("avx") static size_t adam_avx(float b1, float b2, float s, float a1, float a2,
                                        float step, float bc2s, float eps, float wd,
                                        float shrink, float *restrict w,
                                        const float *restrict g, float *restrict m,
                                        float *restrict v, size_t n)
{
    const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), vs = _mm256_set1_ps(s);
    const __m256 va1 = _mm256_set1_ps(a1), va2 = _mm256_set1_ps(a2), vwd = _mm256_set1_ps(wd);
    const __m256 vstep = _mm256_set1_ps(step), vbc2s = _mm256_set1_ps(bc2s);
    const __m256 veps = _mm256_set1_ps(eps), vshrink = _mm256_set1_ps(shrink);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wi = _mm256_mul_ps(_mm256_loadu_ps(w + i), vshrink);
        __m256 d = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(g + i), vs),
                                 _mm256_mul_ps(vwd, wi));
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)),
                                  _mm256_mul_ps(va1, d));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                  _mm256_mul_ps(_mm256_mul_ps(va2, d), d));
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), vbc2s), veps);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_mul_ps(vstep, _mm256_div_ps(mi, den))));
    }
    return i;
}

/* The same with one division fewer: sqrt(v) / bc2s divides by a constant,
 * and with r = RN(1 / bc2s) (exact through double: 53 >= 2 * 24 + 2 bits,
 * so the double rounding is innocuous), q = RN(x r), e = x - q bc2s (exact
 * in an FMA) and q + e r rounded once is RN(x / bc2s): Markstein's theorem
 * (Muller et al., Handbook of Floating-Point Arithmetic, "Markstein's
 * iteration"), checked here against the divider on every significand of x
 * for 900 divisors. The proof needs x finite (eight lanes with an infinite
 * square root take the divider) and no overflow or underflow, which
 * ro_adam_update ensures by calling this only for bc2s in [2^-40, 1]:
 * x <= sqrt(FLT_MAX) < 2^64, and x = 0 gives +0 either way. The other
 * products must not be contracted into FMAs (that would change their
 * bits): every build of the library is ISO C (-std=c11, -std=c99), where
 * GCC and Clang contract nothing across separate intrinsics. */
RO_TARGET("avx,fma") static size_t
adam_avx_fma(float b1, float b2, float s, float a1, float a2, float step, float bc2s, float eps,
             float wd, float shrink, float *restrict w, const float *restrict g,
             float *restrict m, float *restrict v, size_t n)
{
    const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), vs = _mm256_set1_ps(s);
    const __m256 va1 = _mm256_set1_ps(a1), va2 = _mm256_set1_ps(a2), vwd = _mm256_set1_ps(wd);
    const __m256 vstep = _mm256_set1_ps(step), vbc2s = _mm256_set1_ps(bc2s);
    const __m256 vrec = _mm256_set1_ps((float)(1.0 / (double)bc2s));
    const __m256 vinf = _mm256_set1_ps(HUGE_VALF);
    const __m256 veps = _mm256_set1_ps(eps), vshrink = _mm256_set1_ps(shrink);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wi = _mm256_mul_ps(_mm256_loadu_ps(w + i), vshrink);
        __m256 d = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(g + i), vs),
                                 _mm256_mul_ps(vwd, wi));
        __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)),
                                  _mm256_mul_ps(va1, d));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                  _mm256_mul_ps(_mm256_mul_ps(va2, d), d));
        __m256 x = _mm256_sqrt_ps(vi);
        __m256 q = _mm256_mul_ps(x, vrec);
        __m256 e = _mm256_fnmadd_ps(q, vbc2s, x);
        __m256 den;
        q = _mm256_fmadd_ps(e, vrec, q);
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, vinf, _CMP_EQ_OQ)))
            q = _mm256_div_ps(x, vbc2s); /* an infinite v: never in practice */
        den = _mm256_add_ps(q, veps);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(w + i, _mm256_sub_ps(wi, _mm256_mul_ps(vstep, _mm256_div_ps(mi, den))));
    }
    return i;
}

/* adam_avx_fma with sixteen lanes (AVX-512F): the same operations in the
 * same order, so the same bits; the divider is twice as wide. */
RO_TARGET("avx512f") static size_t
adam_avx512(float b1, float b2, float s, float a1, float a2, float step, float bc2s, float eps,
            float wd, float shrink, float *restrict w, const float *restrict g,
            float *restrict m, float *restrict v, size_t n)
{
    const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), vs = _mm512_set1_ps(s);
    const __m512 va1 = _mm512_set1_ps(a1), va2 = _mm512_set1_ps(a2), vwd = _mm512_set1_ps(wd);
    const __m512 vstep = _mm512_set1_ps(step), vbc2s = _mm512_set1_ps(bc2s);
    const __m512 vrec = _mm512_set1_ps((float)(1.0 / (double)bc2s));
    const __m512 vinf = _mm512_set1_ps(HUGE_VALF);
    const __m512 veps = _mm512_set1_ps(eps), vshrink = _mm512_set1_ps(shrink);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wi = _mm512_mul_ps(_mm512_loadu_ps(w + i), vshrink);
        __m512 d = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(g + i), vs),
                                 _mm512_mul_ps(vwd, wi));
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_loadu_ps(m + i)),
                                  _mm512_mul_ps(va1, d));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_loadu_ps(v + i)),
                                  _mm512_mul_ps(_mm512_mul_ps(va2, d), d));
        __m512 x = _mm512_sqrt_ps(vi);
        __m512 q = _mm512_mul_ps(x, vrec);
        __m512 e = _mm512_fnmadd_ps(q, vbc2s, x);
        __m512 den;
        q = _mm512_fmadd_ps(e, vrec, q);
        if (_mm512_cmp_ps_mask(x, vinf, _CMP_EQ_OQ))
            q = _mm512_div_ps(x, vbc2s); /* an infinite v: never in practice */
        den = _mm512_add_ps(q, veps);
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(w + i, _mm512_sub_ps(wi, _mm512_mul_ps(vstep, _mm512_div_ps(mi, den))));
    }
    return i;
}
#endif

void ro_adam_update(const ro_update *u, float *restrict w, const float *restrict g,
                    float *restrict m, float *restrict v, float *restrict vmax, size_t n,
                    int decoupled)
{
    const float b1 = u->beta1, b2 = u->beta2, s = u->grad_scale;
    const float a1 = u->one_minus_beta1, a2 = u->one_minus_beta2;
    const float step = u->step_size, bc2s = u->bc2_sqrt, eps = u->eps;
    const float wd = decoupled ? 0.0f : u->wd;
    const float shrink = decoupled ? 1.0f - u->lr * u->wd : 1.0f;
    size_t i = 0;
    if (u->amsgrad) {
        for (; i < n; i++) {
            float wi = w[i] * shrink;
            float d = g[i] * s + wd * wi;
            float mi = b1 * m[i] + a1 * d;
            float vi = b2 * v[i] + a2 * d * d;
            float vm = vmax[i] > vi ? vmax[i] : vi;
            m[i] = mi;
            v[i] = vi;
            vmax[i] = vm;
            w[i] = wi - step * (mi / (sqrtf(vm) / bc2s + eps));
        }
        return;
    }
#if RO_X86_DISPATCH
    __builtin_cpu_init(); /* idempotent; cheap beside the loop */
    if (n >= 16 && bc2s >= 0x1p-40f && bc2s <= 1.0f && __builtin_cpu_supports("avx512f"))
        i = adam_avx512(b1, b2, s, a1, a2, step, bc2s, eps, wd, shrink, w, g, m, v, n);
    if (n - i >= 8 && bc2s >= 0x1p-40f && bc2s <= 1.0f && __builtin_cpu_supports("avx") &&
        __builtin_cpu_supports("fma"))
        i += adam_avx_fma(b1, b2, s, a1, a2, step, bc2s, eps, wd, shrink, w + i, g + i, m + i, v + i,
                          n - i);
    else if (n - i >= 8 && __builtin_cpu_supports("avx"))
        i += adam_avx(b1, b2, s, a1, a2, step, bc2s, eps, wd, shrink, w + i, g + i, m + i,
                      v + i, n - i);
#endif
#if defined(__SSE2__)
    /* The update is the step's largest memory-bound loop. GCC does not
     * vectorize sqrtf unless errno is off for the whole build, so this path
     * spells out the same operations, in the same order, four lanes at a
     * time; IEEE sqrt, div, mul and add round each lane exactly as the
     * scalar code does, so the results are bit-identical. */
    {
        const __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vs = _mm_set1_ps(s);
        const __m128 va1 = _mm_set1_ps(a1), va2 = _mm_set1_ps(a2), vwd = _mm_set1_ps(wd);
        const __m128 vstep = _mm_set1_ps(step), vbc2s = _mm_set1_ps(bc2s);
        const __m128 veps = _mm_set1_ps(eps), vshrink = _mm_set1_ps(shrink);
        for (; i + 4 <= n; i += 4) {
            __m128 wi = _mm_mul_ps(_mm_loadu_ps(w + i), vshrink);
            __m128 d = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(g + i), vs), _mm_mul_ps(vwd, wi));
            __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(va1, d));
            __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)),
                                   _mm_mul_ps(_mm_mul_ps(va2, d), d));
            __m128 den = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), vbc2s), veps);
            _mm_storeu_ps(m + i, mi);
            _mm_storeu_ps(v + i, vi);
            _mm_storeu_ps(w + i, _mm_sub_ps(wi, _mm_mul_ps(vstep, _mm_div_ps(mi, den))));
        }
    }
#endif
    for (; i < n; i++) { /* the reference; the tail of the vector path */
        float wi = w[i] * shrink; /* AdamW: decay before the Adam step */
        float d = g[i] * s + wd * wi;
        float mi = b1 * m[i] + a1 * d;
        float vi = b2 * v[i] + a2 * d * d;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi - step * (mi / (sqrtf(vi) / bc2s + eps));
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
