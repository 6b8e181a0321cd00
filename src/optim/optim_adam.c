/* optim_adam.c — torch.optim.Adam, AdamW and RAdam updates, each fused into
 * one pass over a tensor, and their finiteness guards (optim.h). Per-step
 * scalars (bias corrections, RAdam's rectification) are computed once in
 * double by ro_adam_scalars. */
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

/* The constants of one Adam/AdamW update. */
typedef struct adam_k {
    float b1, b2, s, a1, a2, step, bc2s, eps, wd, shrink;
} adam_k;

static adam_k adam_constants(const ro_update *u, int decoupled)
{
    adam_k k;
    k.b1 = u->beta1;
    k.b2 = u->beta2;
    k.s = u->grad_scale;
    k.a1 = u->one_minus_beta1;
    k.a2 = u->one_minus_beta2;
    k.step = u->step_size;
    k.bc2s = u->bc2_sqrt;
    k.eps = u->eps;
    k.wd = decoupled ? 0.0f : u->wd;
    k.shrink = decoupled ? 1.0f - u->lr * u->wd : 1.0f; /* AdamW: decay before the step */
    return k;
}

/* One element: the reference every vector path matches, shared by the
 * update and ro_adam_check. m, v (and AMSGrad's maximum unless vmax is
 * NULL) in and out; returns the new weight. */
RO_ALWAYS_INLINE float adam_one(const adam_k *k, float w, float g, float *m, float *v,
                                float *vmax)
{
    float wi = w * k->shrink;
    float d = g * k->s + k->wd * wi;
    float mi = k->b1 * *m + k->a1 * d;
    float vi = k->b2 * *v + k->a2 * d * d;
    *m = mi;
    *v = vi;
    if (vmax) {
        *vmax = *vmax > vi ? *vmax : vi;
        vi = *vmax;
    }
    return wi - k->step * (mi / (sqrtf(vi) / k->bc2s + k->eps));
}

void ro_adam_update(const ro_update *u, float *restrict w, const float *restrict g,
                    float *restrict m, float *restrict v, float *restrict vmax, size_t n,
                    int decoupled)
{
    const adam_k k = adam_constants(u, decoupled);
#if RO_X86_DISPATCH || defined(__SSE2__)
    const float b1 = k.b1, b2 = k.b2, s = k.s, a1 = k.a1, a2 = k.a2;
    const float step = k.step, bc2s = k.bc2s, eps = k.eps, wd = k.wd, shrink = k.shrink;
#endif
    size_t i = 0;
    if (u->amsgrad) {
        for (; i < n; i++)
            w[i] = adam_one(&k, w[i], g[i], m + i, v + i, vmax + i);
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
    for (; i < n; i++) /* the reference; the tail of the vector path */
        w[i] = adam_one(&k, w[i], g[i], m + i, v + i, NULL);
}

/* The constants of one RAdam update. */
typedef struct radam_k {
    float b1, b2, s, a1, a2, wd, step, bc2s, eps;
    int rectified;
} radam_k;

static radam_k radam_constants(const ro_update *u)
{
    radam_k k;
    k.b1 = u->beta1;
    k.b2 = u->beta2;
    k.s = u->grad_scale;
    k.a1 = u->one_minus_beta1;
    k.a2 = u->one_minus_beta2;
    k.wd = u->wd;
    k.step = u->step_size;
    k.bc2s = u->bc2_sqrt;
    k.eps = u->eps;
    k.rectified = u->rectified;
    return k;
}

/* One element of RAdam, shared by the update and ro_radam_check. */
RO_ALWAYS_INLINE float radam_one(const radam_k *k, float w, float g, float *m, float *v)
{
    float d = g * k->s + k->wd * w;
    float mi = k->b1 * *m + k->a1 * d;
    float vi = k->b2 * *v + k->a2 * d * d;
    *m = mi;
    *v = vi;
    /* rectified: lr*r_t/bc1 * m * sqrt(bc2)/(sqrt(v)+eps);
       otherwise the un-adapted momentum step lr/bc1 * m */
    return w - (k->rectified ? k->step * mi * (k->bc2s / (sqrtf(vi) + k->eps)) : k->step * mi);
}

void ro_radam_update(const ro_update *u, float *w, const float *g, float *m,
                     float *v, size_t n)
{
    const radam_k k = radam_constants(u);
    size_t i;
    for (i = 0; i < n; i++)
        w[i] = radam_one(&k, w[i], g[i], m + i, v + i);
}

/* ---- the finiteness guard (optim.h) ----------------------------------- */

/* d = g s + wd w, m and v of the Adam family, on magnitudes. v needs no
 * bound of its own: with v finite and b2 <= 1, fl(b2 v) <= FLT_MAX, and
 * adding less than 2^103 (half an ulp of FLT_MAX) cannot round past it. */
static int moments_safe(const ro_update *u, const ro_bounds *b, double w, double wd,
                        double *m)
{
    double d = ro_up(ro_up(b->g * u->grad_scale) + ro_up(wd * w));
    *m = ro_up(ro_up((double)u->beta1 * b->state) + ro_up(u->one_minus_beta1 * d));
    return d < RO_SAFE_LIMIT && *m < RO_SAFE_LIMIT &&
           ro_up(ro_up(u->one_minus_beta2 * d) * d) < 0x1p102;
}

int ro_adam_safe(const ro_update *u, const ro_bounds *b, int decoupled, double *state)
{
    const adam_k k = adam_constants(u, decoupled);
    double wi = ro_up(b->w * fabs((double)k.shrink)), m = HUGE_VAL, q, x;
    int ok = wi < RO_SAFE_LIMIT && moments_safe(u, b, wi, k.wd, &m);
    /* the denominator is at least eps (sqrt(v) >= 0, bc2s > 0; AMSGrad's
       maximum of two finite values is finite): |m / den| <= m / eps */
    q = ro_up(m / k.eps);
    x = ro_up(k.step * q);
    *state = m;
    return ok && k.eps > 0.0f && k.bc2s > 0.0f && q < RO_SAFE_LIMIT && x < RO_SAFE_LIMIT &&
           ro_up(wi + x) < RO_SAFE_LIMIT;
}

int ro_radam_safe(const ro_update *u, const ro_bounds *b, double *state)
{
    const radam_k k = radam_constants(u);
    double m, x, r = 0.0;
    int ok = moments_safe(u, b, b->w, k.wd, &m);
    if (k.rectified) { /* step m times bc2s / (sqrt(v) + eps), the latter <= bc2s / eps */
        r = ro_up((double)k.bc2s / k.eps);
        x = ro_up(ro_up(k.step * m) * r);
    } else {
        x = ro_up(k.step * m);
    }
    *state = m;
    return ok && k.eps > 0.0f && r < RO_SAFE_LIMIT && x < RO_SAFE_LIMIT &&
           ro_up(b->w + x) < RO_SAFE_LIMIT;
}

/* The verdict on one element: what is non-finite first, inputs first. */
static int verdict(float w, float wn, float m, float v, float vm)
{
    if (!ro_finite(w))
        return RO_NF_WEIGHT_BEFORE;
    if (!ro_finite(m))
        return RO_NF_FIRST;
    if (!ro_finite(v))
        return RO_NF_SECOND;
    if (!ro_finite(vm))
        return RO_NF_SECOND_MAX;
    return ro_finite(wn) ? RO_NF_NONE : RO_NF_WEIGHT;
}

size_t ro_adam_check(const ro_update *u, const float *w, const float *g, const float *m,
                     const float *v, const float *vmax, size_t n, int decoupled, int *what,
                     float *state_max)
{
    const adam_k k = adam_constants(u, decoupled);
    float mx = 0.0f;
    size_t i;
    *what = RO_NF_NONE;
    for (i = 0; i < n; i++) {
        float mi = m[i], vi = v[i], vm = u->amsgrad ? vmax[i] : 0.0f;
        float wn = adam_one(&k, w[i], g[i], &mi, &vi, u->amsgrad ? &vm : NULL);
        *what = verdict(w[i], wn, mi, vi, vm);
        if (*what)
            break;
        mi = mi < 0.0f ? -mi : mi;
        mx = mi > mx ? mi : mx;
    }
    *state_max = mx;
    return i;
}

size_t ro_radam_check(const ro_update *u, const float *w, const float *g, const float *m,
                      const float *v, size_t n, int *what, float *state_max)
{
    const radam_k k = radam_constants(u);
    float mx = 0.0f;
    size_t i;
    *what = RO_NF_NONE;
    for (i = 0; i < n; i++) {
        float mi = m[i], vi = v[i], wn = radam_one(&k, w[i], g[i], &mi, &vi);
        *what = verdict(w[i], wn, mi, vi, 0.0f);
        if (*what)
            break;
        mi = mi < 0.0f ? -mi : mi;
        mx = mi > mx ? mi : mx;
    }
    *state_max = mx;
    return i;
}
