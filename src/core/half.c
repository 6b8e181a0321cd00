/* half.c — conversions between float32 and the 16-bit formats of mixed
 * precision: IEEE 754 binary16 (fp16) and bfloat16 (bf16), and the fused
 * loops that move a tensor between the library's fp32 master and the
 * host's half-precision buffer.
 *
 * Every conversion is integer arithmetic on the bit patterns, so the result
 * does not depend on the floating-point environment (FTZ/DAZ, rounding
 * mode) nor on the code path: the same bits everywhere. Rounding is to
 * nearest, ties to even (IEEE 754-2019 section 4.3.1, the default
 * roundTiesToEven); overflow goes to infinity as that attribute requires
 * (section 7.4). A NaN stays a NaN of the same sign: the quiet bit is set
 * and the leading payload bits kept (what x86 F16C's VCVTPS2PH and Arm's
 * FCVT produce for fp16; bf16 keeps the top 7 bits the same way). */
#include "core/core.h"

#include <string.h>

#if RO_X86_DISPATCH
#include <stdatomic.h>
#include <cpuid.h>
#include <immintrin.h>
#endif

static inline uint32_t f32_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}

static inline float bits_f32(uint32_t x)
{
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* binary32 -> binary16. Biases 127 and 15: a normal half has the float's
 * exponent minus 112; below 2^-14 the half is subnormal with unit 2^-24. */
uint16_t ro_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    uint32_t r, m, shift, rem, half;
    if (ax > 0x7f800000u) /* NaN: quiet, top 9 payload bits kept */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 = 65504 + half an ulp: rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal half: rebias, round off 13 bits */
        r = ax - 0x38000000u;
        r = (r + 0x0fffu + ((r >> 13) & 1u)) >> 13;
        return (uint16_t)(sign | r);
    }
    if (ax <= 0x33000000u) /* <= 2^-25, half the smallest subnormal: to 0 (tie: even) */
        return (uint16_t)sign;
    /* subnormal half: the value in units of 2^-24 is m * 2^(e - 126) */
    m = (ax & 0x7fffffu) | 0x800000u;
    shift = 126u - (ax >> 23); /* 14 .. 24 */
    r = m >> shift;
    rem = m & ((1u << shift) - 1u);
    half = 1u << (shift - 1u);
    r += rem > half || (rem == half && (r & 1u)); /* may carry into 0x400: 2^-14 */
    return (uint16_t)(sign | r);
}

float ro_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e != 0)
        return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0)
        return bits_f32(sign);
    e = 113u; /* subnormal m * 2^-24: normalise so that bit 10 is the hidden one */
    while (!(m & 0x400u)) {
        m <<= 1;
        e--;
    }
    return bits_f32(sign | (e << 23) | ((m & 0x3ffu) << 13));
}

/* binary32 -> bfloat16: the upper half of the float, rounded. */
uint16_t ro_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: quiet, top 7 payload bits kept */
        return (uint16_t)((x >> 16) | 0x40u);
    /* adding 0x7fff plus the kept lsb rounds ties to even; the carry walks
       into the exponent, and past the largest finite value into inf */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float ro_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* ---- the tensor loops ----------------------------------------------------
 * RO_BLOCK elements at a time through restrict-qualified pointers, with the
 * functions above rewritten without branches (every case computed, one
 * selected), which GCC vectorizes; then the tail one element at a time.
 * Integer arithmetic (and, widening an fp16 subnormal, one exact float
 * product of normal numbers), so every path gives the same bits as the
 * functions above (test: check_precision_convert.c compares them over every
 * fp16 value and millions of floats). The fp16 narrowing shifts each lane
 * by its own amount, which x86 vectors have from AVX2 on: that loop gets an
 * AVX2 copy, picked at run time. */

/* All ones where c holds, else 0: selections by masks, not branches. */
#define HALF_MASK(c) (0u - (uint32_t)(c))
#define HALF_PICK(mask, a, b) (((a) & (mask)) | ((b) & ~(mask)))

RO_ALWAYS_INLINE void f16_from_block(uint16_t *restrict dst, const float *restrict src)
{
    uint32_t xb[RO_BLOCK], out[RO_BLOCK]; /* integers the vectorizer can type */
    size_t j;
    memcpy(xb, src, sizeof xb);
    for (j = 0; j < RO_BLOCK; j++) {
        uint32_t x = xb[j], ax = x & 0x7fffffffu;
        uint32_t rn = ax - 0x38000000u, m = (ax & 0x7fffffu) | 0x800000u;
        /* a subnormal half's shift, 126 - exponent, is 14 .. 24; clamped
           there for the other lanes */
        uint32_t e = ax >> 23, sh = 126u - (e < 102u ? 102u : e > 112u ? 112u : e);
        uint32_t r = m >> sh, rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1u);
        /* up by one above half an ulp, and at half to an even r (masks:
           a _Bool here would stop the vectorizer) */
        uint32_t tie = HALF_MASK(rem == half) & (0u - (r & 1u));
        uint32_t rs = r + ((HALF_MASK(rem > half) | tie) & 1u);
        uint32_t v;
        rn = (rn + 0x0fffu + ((rn >> 13) & 1u)) >> 13;
        v = HALF_PICK(HALF_MASK(ax <= 0x33000000u), 0u, rs);
        v = HALF_PICK(HALF_MASK(ax >= 0x38800000u), rn, v);
        v = HALF_PICK(HALF_MASK(ax >= 0x477ff000u), 0x7c00u, v);
        v = HALF_PICK(HALF_MASK(ax > 0x7f800000u), 0x7e00u | ((ax >> 13) & 0x3ffu), v);
        out[j] = ((x >> 16) & 0x8000u) | v;
    }
    for (j = 0; j < RO_BLOCK; j++)
        dst[j] = (uint16_t)out[j];
}

RO_ALWAYS_INLINE void bf16_from_block(uint16_t *restrict dst, const float *restrict src)
{
    uint32_t xb[RO_BLOCK];
    size_t j;
    memcpy(xb, src, sizeof xb);
    for (j = 0; j < RO_BLOCK; j++) {
        uint32_t x = xb[j];
        uint32_t r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16, q = (x >> 16) | 0x40u;
        dst[j] = (uint16_t)HALF_PICK(HALF_MASK((x & 0x7fffffffu) > 0x7f800000u), q, r);
    }
}

RO_ALWAYS_INLINE void f16_to_block(float *restrict dst, const uint16_t *restrict src)
{
    float sub[RO_BLOCK];
    uint32_t sb[RO_BLOCK], out[RO_BLOCK];
    size_t j;
    /* a subnormal (or zero) is m 2^-24: exact in float, and normal */
    for (j = 0; j < RO_BLOCK; j++)
        sub[j] = (float)(int32_t)(src[j] & 0x3ffu) * 0x1p-24f;
    memcpy(sb, sub, sizeof sb);
    for (j = 0; j < RO_BLOCK; j++) {
        uint32_t h = src[j], sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
        uint32_t v = sign | sb[j];
        v = HALF_PICK(HALF_MASK(e != 0u), sign | ((e + 112u) << 23) | (m << 13), v);
        v = HALF_PICK(HALF_MASK(e == 0x1fu), sign | 0x7f800000u | (m << 13), v);
        out[j] = v;
    }
    memcpy(dst, out, sizeof out);
}

RO_ALWAYS_INLINE void f16_from_loop(uint16_t *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + RO_BLOCK <= n; i += RO_BLOCK)
        f16_from_block(dst + i, src + i);
    for (; i < n; i++)
        dst[i] = ro_f32_to_f16(src[i]);
}

#if RO_X86_DISPATCH
RO_TARGET("avx2") static void f16_from_avx2(uint16_t *dst, const float *src, size_t n)
{
    f16_from_loop(dst, src, n);
}

/* F16C's VCVTPS2PH with the rounding in its immediate (to nearest, ties to
 * even, whatever MXCSR's rounding field says) is this file's conversion,
 * bit for bit: IEEE rounding, overflow to inf, subnormal halves (MXCSR.FTZ
 * does not apply to it), a NaN quieted with its leading payload bits; a
 * float subnormal under MXCSR.DAZ becomes a zero of its sign, which is what
 * it rounds to anyway. Checked over all 2^32 floats with and without
 * FTZ/DAZ when written, and by check_precision_convert.c's array test. */
/* F16C (CPUID.1:ECX.F16C) with the OS's AVX state (clang 14's
 * __builtin_cpu_supports does not know "f16c"). */
static int has_f16c(void)
{
    static atomic_int known; /* 0 not asked yet, 1 no, 2 yes: any thread may ask */
    int k = atomic_load_explicit(&known, memory_order_relaxed);
    if (k == 0) {
        unsigned a, b, c, d;
        k = __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C)
                ? 2 : 1;
        atomic_store_explicit(&known, k, memory_order_relaxed);
    }
    return k == 2;
}

RO_TARGET("avx,f16c") static void f16_from_f16c(uint16_t *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = ro_f32_to_f16(src[i]);
}

/* VCVTPH2PS widens exactly but quiets a signalling NaN, which the integer
 * path keeps signalling: those lanes get the quiet bit back off. */
RO_TARGET("avx2,f16c") static void f16_to_f16c(float *dst, const uint16_t *src, size_t n)
{
    const __m128i e = _mm_set1_epi16(0x7e00), inf = _mm_set1_epi16(0x7c00);
    const __m128i pay = _mm_set1_epi16(0x1ff), z = _mm_setzero_si128();
    const __m256i quiet = _mm256_set1_epi32(0x00400000);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
        __m256i f = _mm256_castps_si256(_mm256_cvtph_ps(h));
        __m128i snan = _mm_andnot_si128(_mm_cmpeq_epi16(_mm_and_si128(h, pay), z),
                                        _mm_cmpeq_epi16(_mm_and_si128(h, e), inf));
        f = _mm256_andnot_si256(_mm256_and_si256(_mm256_cvtepi16_epi32(snan), quiet), f);
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(f));
    }
    for (; i < n; i++)
        dst[i] = ro_f16_to_f32(src[i]);
}
#endif

void ro_half_from_f32(uint16_t *dst, const float *src, size_t n, int dtype)
{
    size_t i = 0;
    if (dtype == REGOPT_DTYPE_BFLOAT16) {
        for (; i + RO_BLOCK <= n; i += RO_BLOCK)
            bf16_from_block(dst + i, src + i);
        for (; i < n; i++)
            dst[i] = ro_f32_to_bf16(src[i]);
        return;
    }
#if RO_X86_DISPATCH
    if (n >= RO_BLOCK && has_f16c()) {
        f16_from_f16c(dst, src, n);
        return;
    }
    if (n >= RO_BLOCK && __builtin_cpu_supports("avx2")) {
        f16_from_avx2(dst, src, n);
        return;
    }
#endif
    f16_from_loop(dst, src, n);
}

void ro_half_to_f32(float *dst, const uint16_t *src, size_t n, int dtype)
{
    size_t i = 0, j;
#if RO_X86_DISPATCH
    if (dtype != REGOPT_DTYPE_BFLOAT16 && n >= RO_BLOCK && __builtin_cpu_supports("avx2") &&
        has_f16c()) {
        f16_to_f16c(dst, src, n);
        return;
    }
#endif
    if (dtype == REGOPT_DTYPE_BFLOAT16) {
        for (; i + RO_BLOCK <= n; i += RO_BLOCK)
            for (j = 0; j < RO_BLOCK; j++)
                dst[i + j] = bits_f32((uint32_t)src[i + j] << 16);
    } else {
        for (; i + RO_BLOCK <= n; i += RO_BLOCK)
            f16_to_block(dst + i, src + i);
    }
    for (; i < n; i++)
        dst[i] = dtype == REGOPT_DTYPE_BFLOAT16 ? ro_bf16_to_f32(src[i]) : ro_f16_to_f32(src[i]);
}

/* g += h * inv, h = 0, in one pass: the flush of a host gradient buffer
 * into the fp32 accumulator after a backward (the unscaled sum stays in
 * fp32 over every backward of a step, so micro-batches lose nothing to the
 * 11- or 8-bit significand). The product is taken in double and rounded
 * once: inv = 1/S is exact for the power-of-two scales of dynamic scaling,
 * and within half an ulp of double for a fixed scale. Returns the number of
 * non-finite results (an overflow of the scaled gradient). dtype FLOAT32:
 * h is a float buffer (loss scaling of float32 buffers). */
#define FLUSH_CHUNK (16 * RO_BLOCK)

/* One block of the flush: the host's values already widened in w. */
static void flush_block(float *restrict g, const float *restrict w, double inv,
                        uint32_t *restrict bad)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        g[j] += (float)((double)w[j] * inv);
        bad[j] += (f32_bits(g[j]) & 0x7f800000u) == 0x7f800000u;
    }
}

size_t ro_grad_flush(float *g, void *h, size_t n, int dtype, double inv)
{
    size_t i = 0, j, bad = 0;
    uint32_t lanes[RO_BLOCK] = {0};
    float w[FLUSH_CHUNK];
    if (dtype == REGOPT_DTYPE_FLOAT32) {
        float *hf = h;
        for (; i + RO_BLOCK <= n; i += RO_BLOCK) {
            flush_block(g + i, hf + i, inv, lanes);
            memset(hf + i, 0, RO_BLOCK * sizeof *hf);
        }
        for (; i < n; i++) {
            float v = (float)((double)hf[i] * inv);
            g[i] += v;
            hf[i] = 0.0f;
            bad += (f32_bits(g[i]) & 0x7f800000u) == 0x7f800000u;
        }
    } else {
        uint16_t *hh = h;
        /* widened a chunk at a time (the fastest path for the CPU), then
           added a block at a time */
        for (; i + FLUSH_CHUNK <= n; i += FLUSH_CHUNK) {
            ro_half_to_f32(w, hh + i, FLUSH_CHUNK, dtype);
            for (j = 0; j < FLUSH_CHUNK; j += RO_BLOCK)
                flush_block(g + i + j, w + j, inv, lanes);
            memset(hh + i, 0, FLUSH_CHUNK * sizeof *hh);
        }
        for (; i < n; i++) {
            float v = dtype == REGOPT_DTYPE_BFLOAT16 ? ro_bf16_to_f32(hh[i]) : ro_f16_to_f32(hh[i]);
            g[i] += (float)((double)v * inv);
            hh[i] = 0;
            bad += (f32_bits(g[i]) & 0x7f800000u) == 0x7f800000u;
        }
    }
    for (j = 0; j < RO_BLOCK; j++)
        bad += lanes[j];
    return bad;
}

/* x *= inv with a count of non-finite results (SMART's d_input). */
size_t ro_unscale(float *x, size_t n, double inv)
{
    size_t i, bad = 0;
    for (i = 0; i < n; i++) {
        x[i] = (float)((double)x[i] * inv);
        bad += (f32_bits(x[i]) & 0x7f800000u) == 0x7f800000u;
    }
    return bad;
}

/* dst = src * s (the scaled d_outputs a backward receives). */
void ro_scale_copy(float *dst, const float *src, size_t n, double s)
{
    size_t i;
    for (i = 0; i < n; i++)
        dst[i] = (float)((double)src[i] * s);
}

regopt_status regopt_convert(const void *src, regopt_dtype src_dtype, void *dst,
                             regopt_dtype dst_dtype, size_t n)
{
    int half_src = src_dtype == REGOPT_DTYPE_FLOAT16 || src_dtype == REGOPT_DTYPE_BFLOAT16;
    int half_dst = dst_dtype == REGOPT_DTYPE_FLOAT16 || dst_dtype == REGOPT_DTYPE_BFLOAT16;
    if (n && (!src || !dst))
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_convert: %s is NULL",
                           src ? "dst" : "src");
    if (half_src && dst_dtype == REGOPT_DTYPE_FLOAT32)
        ro_half_to_f32(dst, src, n, (int)src_dtype);
    else if (half_dst && src_dtype == REGOPT_DTYPE_FLOAT32)
        ro_half_from_f32(dst, src, n, (int)dst_dtype);
    else if (src_dtype == dst_dtype && (half_src || src_dtype == REGOPT_DTYPE_FLOAT32))
        memmove(dst, src, n * (half_src ? 2u : 4u));
    else
        return ro_fail_tls((src_dtype >= 1 && src_dtype <= 4 && dst_dtype >= 1 && dst_dtype <= 4)
                               ? REGOPT_ERR_UNSUPPORTED : REGOPT_ERR_INVALID_ARGUMENT,
                           "regopt_convert: no conversion from dtype %d to dtype %d (float32 "
                           "= 1 to or from float16 = 2 or bfloat16 = 3)",
                           (int)src_dtype, (int)dst_dtype);
    return REGOPT_OK;
}
