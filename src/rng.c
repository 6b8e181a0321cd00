/* rng.c — Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random
 * numbers: as easy as 1, 2, 3", SC'11). Counter based: output = f(key,
 * counter), so any element of any stream is computed directly, in any order,
 * identically on every machine. */
#include "internal.h"

#include <math.h>

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

static void uniform_lanes(uint64_t seed, uint64_t first, float *out)
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

regopt_status regopt_random_uniform(uint64_t seed, uint64_t offset, float *out,
                                    size_t n)
{
    uint32_t w[4];
    size_t k = 0;
    if (!out && n)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_random_uniform: out is NULL");
    while (k < n) {
        uint64_t e = offset + k;
        unsigned j;
        if ((e & 3) == 0 && n - k >= 4 * LANES) {
            uniform_lanes(seed, e >> 2, out + k);
            k += 4 * LANES;
            continue;
        }
        block(seed, e >> 2, w);
        for (j = (unsigned)(e & 3); j < 4 && k < n; j++, k++)
            out[k] = (float)(w[j] >> 8) * (1.0f / 16777216.0f);
    }
    return REGOPT_OK;
}

/* Box-Muller on the word pairs (0,1) and (2,3) of a block: u1 in (0, 1]
 * avoids log(0); even words give the cosine branch, odd words the sine. */
static float normal_of(const uint32_t w[4], unsigned j)
{
    unsigned p = j & ~1u;
    double u1 = ((double)w[p] + 1.0) * (1.0 / 4294967296.0);
    double u2 = (double)w[p + 1] * (1.0 / 4294967296.0);
    double r = sqrt(-2.0 * log(u1));
    double a = 6.283185307179586 * u2;
    return (float)((j & 1u) ? r * sin(a) : r * cos(a));
}

regopt_status regopt_random_normal(uint64_t seed, uint64_t offset, float *out,
                                   size_t n)
{
    uint32_t w[4];
    size_t k = 0;
    if (!out && n)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_random_normal: out is NULL");
    while (k < n) {
        uint64_t e = offset + k;
        unsigned j;
        block(seed, e >> 2, w);
        if ((e & 3) == 0 && n - k >= 4) {
            /* a whole block: each pair's radius once for both of its
               outputs (the same expressions as normal_of, so the same bits;
               log dominates the cost) */
            for (j = 0; j < 4; j += 2, k += 2) {
                double u1 = ((double)w[j] + 1.0) * (1.0 / 4294967296.0);
                double u2 = (double)w[j + 1] * (1.0 / 4294967296.0);
                double r = sqrt(-2.0 * log(u1));
                double a = 6.283185307179586 * u2;
                out[k] = (float)(r * cos(a));
                out[k + 1] = (float)(r * sin(a));
            }
            continue;
        }
        for (j = (unsigned)(e & 3); j < 4 && k < n; j++, k++)
            out[k] = normal_of(w, j);
    }
    return REGOPT_OK;
}
