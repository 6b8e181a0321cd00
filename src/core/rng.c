/* rng.c — Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random
 * numbers: as easy as 1, 2, 3", SC'11). Counter based: output = f(key,
 * counter), so any element of any stream is computed directly, in any order,
 * identically on every machine. */
#include "core/core.h"

#include <math.h>
#if RO_X86_DISPATCH
#include <immintrin.h>
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void ro_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
                      uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    int r;
    for (r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        if (r > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

static void block(uint64_t seed, uint64_t index, uint32_t out[4])
{
    uint32_t key[2], ctr[4];
    key[0] = (uint32_t)seed;
    key[1] = (uint32_t)(seed >> 32);
    ctr[0] = (uint32_t)index;
    ctr[1] = (uint32_t)(index >> 32);
    ctr[2] = 0;
    ctr[3] = 0;
    ro_philox4x32_10(ctr, key, out);
}

uint64_t ro_pass_seed(uint64_t trainer_seed, uint64_t step,
                      uint32_t micro_batch, uint32_t role)
{
    uint32_t key[2], ctr[4], out[4];
    key[0] = (uint32_t)trainer_seed;
    key[1] = (uint32_t)(trainer_seed >> 32);
    ctr[0] = (uint32_t)step;
    ctr[1] = (uint32_t)(step >> 32);
    ctr[2] = micro_batch;
    ctr[3] = role;
    ro_philox4x32_10(ctr, key, out);
    return ((uint64_t)out[1] << 32) | out[0];
}

/* LANES consecutive blocks at once, first .. first + LANES - 1, as
 * uniforms: the same rounds as ro_philox4x32_10, written lane by lane so
 * that the compiler runs them in vector registers (the 32 x 32 -> 64-bit
 * products map to pmuludq); hosts draw a dropout mask per unit from here,
 * so it is in every training forward. */
#define LANES 16

RO_ALWAYS_INLINE void uniform_lanes_body(uint64_t seed, uint64_t first, float *out)
{
    uint32_t c0[LANES], c1[LANES], c2[LANES], c3[LANES];
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    int r, l;
    for (l = 0; l < LANES; l++) {
        uint64_t b = first + (uint64_t)l;
        c0[l] = (uint32_t)b;
        c1[l] = (uint32_t)(b >> 32);
        c2[l] = 0;
        c3[l] = 0;
    }
    for (r = 0; r < 10; r++) {
        for (l = 0; l < LANES; l++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c0[l], p1 = (uint64_t)PHILOX_M1 * c2[l];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
            c1[l] = (uint32_t)p1;
            c3[l] = (uint32_t)p0;
            c0[l] = n0;
            c2[l] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (l = 0; l < LANES; l++) { /* 24-bit values: exact as int32 and float */
        out[4 * l] = (float)(int32_t)(c0[l] >> 8) * (1.0f / 16777216.0f);
        out[4 * l + 1] = (float)(int32_t)(c1[l] >> 8) * (1.0f / 16777216.0f);
        out[4 * l + 2] = (float)(int32_t)(c2[l] >> 8) * (1.0f / 16777216.0f);
        out[4 * l + 3] = (float)(int32_t)(c3[l] >> 8) * (1.0f / 16777216.0f);
    }
}

static void uniform_lanes_base(uint64_t seed, uint64_t first, float *out)
{
    uniform_lanes_body(seed, first, out);
}

typedef void (*uniform_lanes_fn)(uint64_t, uint64_t, float *);

#if RO_X86_DISPATCH
/* The same integer rounds with 4 products per instruction instead of
 * SSE2's 2 (vpmuludq), or 8 with AVX-512 below: integer arithmetic and
 * exact conversions, so every clone gives the same bits. */
RO_TARGET("avx2") static void uniform_lanes_avx2(uint64_t seed, uint64_t first, float *out)
{
    uniform_lanes_body(seed, first, out);
}

/* AVX-512, written out: one register holds word j of all 16 blocks.
 * vpmuludq multiplies the even 32-bit lanes only, so each product is made
 * twice (the odd lanes shifted down) and the halves are blended back into
 * place: the same 32 x 32 -> 64-bit products as the scalar rounds. The
 * four words of each block are then interleaved into output order. */
#define PHILOX_ODD 0xAAAAu /* the odd 32-bit lanes */

RO_TARGET("avx512f") static void mulhilo16(__m512i m, __m512i c, __m512i *hi, __m512i *lo)
{
    __m512i pe = _mm512_mul_epu32(c, m), po = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
    *hi = _mm512_mask_blend_epi32(PHILOX_ODD, _mm512_srli_epi64(pe, 32), po);
    *lo = _mm512_mask_blend_epi32(PHILOX_ODD, pe, _mm512_slli_epi64(po, 32));
}

/* 128-bit piece j of r (a compile-time constant for the instruction) */
#define PIECE(r, j) _mm512_extracti32x4_epi32((r), (j))

/* The raw words of blocks first .. first + 15, block by block: out[4 l + j]
 * is word j of block first + l. */
RO_TARGET("avx512f") static void words_lanes_avx512(uint64_t seed, uint64_t first,
                                                    uint32_t *out)
{
    uint32_t lo[LANES], hi[LANES];
    __m512i c0, c1, c2, c3, k0, k1, m0 = _mm512_set1_epi32((int)PHILOX_M0);
    __m512i m1 = _mm512_set1_epi32((int)PHILOX_M1), a, b, r0, r1, r2, r3;
    int r, l;
    for (l = 0; l < LANES; l++) {
        uint64_t x = first + (uint64_t)l;
        lo[l] = (uint32_t)x;
        hi[l] = (uint32_t)(x >> 32);
    }
    c0 = _mm512_loadu_si512(lo);
    c1 = _mm512_loadu_si512(hi);
    c2 = c3 = _mm512_setzero_si512();
    k0 = _mm512_set1_epi32((int)(uint32_t)seed);
    k1 = _mm512_set1_epi32((int)(uint32_t)(seed >> 32));
    for (r = 0; r < 10; r++) {
        __m512i hi0, lo0, hi1, lo1;
        mulhilo16(m0, c0, &hi0, &lo0);
        mulhilo16(m1, c2, &hi1, &lo1);
        c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), k0);
        c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), k1);
        c1 = lo1;
        c3 = lo0;
        k0 = _mm512_add_epi32(k0, _mm512_set1_epi32((int)PHILOX_W0));
        k1 = _mm512_add_epi32(k1, _mm512_set1_epi32((int)PHILOX_W1));
    }
    /* within each 128-bit piece j (blocks 4j .. 4j + 3): rk holds block 4j + k */
    a = _mm512_unpacklo_epi32(c0, c1);
    b = _mm512_unpacklo_epi32(c2, c3);
    r0 = _mm512_unpacklo_epi64(a, b);
    r1 = _mm512_unpackhi_epi64(a, b);
    a = _mm512_unpackhi_epi32(c0, c1);
    b = _mm512_unpackhi_epi32(c2, c3);
    r2 = _mm512_unpacklo_epi64(a, b);
    r3 = _mm512_unpackhi_epi64(a, b);
#define STORE_PIECE(j)                                                                     \
    do {                                                                                   \
        _mm_storeu_si128((__m128i *)(out + 16 * (j)), PIECE(r0, j));                       \
        _mm_storeu_si128((__m128i *)(out + 16 * (j) + 4), PIECE(r1, j));                   \
        _mm_storeu_si128((__m128i *)(out + 16 * (j) + 8), PIECE(r2, j));                   \
        _mm_storeu_si128((__m128i *)(out + 16 * (j) + 12), PIECE(r3, j));                  \
    } while (0)
    STORE_PIECE(0);
    STORE_PIECE(1);
    STORE_PIECE(2);
    STORE_PIECE(3);
#undef STORE_PIECE
}
#undef PIECE

/* 24-bit values: exact as int32 and float */
RO_TARGET("avx512f") static void uniform_lanes_avx512(uint64_t seed, uint64_t first, float *out)
{
    uint32_t w[4 * LANES];
    const __m512 scale = _mm512_set1_ps(1.0f / 16777216.0f);
    int j;
    words_lanes_avx512(seed, first, w);
    for (j = 0; j < 4 * LANES; j += 16) {
        __m512i x = _mm512_srli_epi32(_mm512_loadu_si512(w + j), 8);
        _mm512_storeu_ps(out + j, _mm512_mul_ps(_mm512_cvtepi32_ps(x), scale));
    }
}

/* Chosen per call: the CPU test reads a cached word, cheap beside the
 * 64 values it serves. */
static uniform_lanes_fn uniform_lanes_pick(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return uniform_lanes_avx512;
    if (__builtin_cpu_supports("avx2"))
        return uniform_lanes_avx2;
    return uniform_lanes_base;
}

typedef void (*words_lanes_fn)(uint64_t, uint64_t, uint32_t *);

/* The normals' words 16 blocks at a time where AVX-512 is there; NULL:
 * block by block (log and sincos dominate the normals, the scalar rounds
 * come next) */
static words_lanes_fn words_lanes_pick(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? words_lanes_avx512 : NULL;
}
#else
static uniform_lanes_fn uniform_lanes_pick(void) { return uniform_lanes_base; }
typedef void (*words_lanes_fn)(uint64_t, uint64_t, uint32_t *);
static words_lanes_fn words_lanes_pick(void) { return NULL; }
#endif

regopt_status regopt_random_uniform(uint64_t seed, uint64_t offset, float *out,
                                    size_t n)
{
    uint32_t w[4];
    size_t k = 0;
    uniform_lanes_fn lanes = n >= 4 * LANES ? uniform_lanes_pick() : uniform_lanes_base;
    if (!out && n)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_random_uniform: out is NULL");
    while (k < n) {
        uint64_t e = offset + k;
        unsigned j;
        if ((e & 3) == 0 && n - k >= 4 * LANES) {
            lanes(seed, e >> 2, out + k);
            k += 4 * LANES;
            continue;
        }
        block(seed, e >> 2, w);
        for (j = (unsigned)(e & 3); j < 4 && k < n; j++, k++)
            out[k] = (float)(w[j] >> 8) * (1.0f / 16777216.0f);
    }
    return REGOPT_OK;
}

/* Box-Muller (normal.c) on the word pairs (0,1) and (2,3) of a block: even
 * words give the cosine branch, odd words the sine. */
static float normal_of(const uint32_t w[4], unsigned j)
{
    unsigned p = j & ~1u;
    return ro_normal_one(w[p], w[p + 1], (int)(j & 1u));
}

regopt_status regopt_random_normal(uint64_t seed, uint64_t offset, float *out,
                                   size_t n)
{
    uint32_t w[4], ws[4 * LANES];
    size_t k = 0;
    words_lanes_fn lanes = n >= 4 * LANES ? words_lanes_pick() : NULL;
    if (!out && n)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_random_normal: out is NULL");
    while (k < n) {
        uint64_t e = offset + k;
        unsigned j;
        if ((e & 3) == 0 && n - k >= 4) {
            /* whole blocks: each pair's radius once for both of its
               outputs (the same operations as normal_of, so the same bits) */
            unsigned count = lanes && n - k >= 4 * LANES ? 4 * LANES : 4;
            const uint32_t *src = ws;
            if (count == 4)
                block(seed, e >> 2, ws);
            else
                lanes(seed, e >> 2, ws);
            ro_normal_pairs(src, count / 2, out + k);
            k += count;
            continue;
        }
        block(seed, e >> 2, w);
        for (j = (unsigned)(e & 3); j < 4 && k < n; j++, k++)
            out[k] = normal_of(w, j);
    }
    return REGOPT_OK;
}
