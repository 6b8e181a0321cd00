/* check_rng.c — Philox4x32-10 against the Random123 known-answer vectors,
 * and the public uniform/normal streams built on it. */
#include "tests.h"

#include "core/core.h"

#include <math.h>
#include <stdlib.h>

START_TEST(philox_known_answers)
{
    /* Random123 tests/kat_vectors, "philox4x32 10": ctr[4] key[2] -> out[4] */
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    int i, j;
    for (i = 0; i < 3; i++) {
        uint32_t out[4];
        ro_philox4x32_10(kat[i], kat[i] + 4, out);
        for (j = 0; j < 4; j++)
            ck_assert_msg(out[j] == kat[i][6 + j], "vector %d word %d: %08x != %08x", i, j,
                          out[j], kat[i][6 + j]);
    }
}
END_TEST

START_TEST(uniform_is_the_documented_mapping)
{
    /* element i of stream s: word i%4 of Philox(key = s, ctr = {i/4, 0, 0, 0}) */
    const uint64_t seed = 0x0123456789abcdefULL;
    uint32_t key[2] = {0x89abcdefu, 0x01234567u}, ctr[4] = {5, 0, 0, 0}, w[4];
    float u[4];
    int j;
    ro_philox4x32_10(ctr, key, w);
    ck_assert_int_eq(regopt_random_uniform(seed, 20, u, 4), REGOPT_OK);
    for (j = 0; j < 4; j++)
        ck_assert_float_eq(u[j], (float)(w[j] >> 8) / 16777216.0f);
}
END_TEST

START_TEST(streams_do_not_depend_on_the_split)
{
    float whole[37], part[37], nwhole[37], npart[37];
    int i;
    ck_assert_int_eq(regopt_random_uniform(7, 3, whole, 37), REGOPT_OK);
    ck_assert_int_eq(regopt_random_normal(7, 3, nwhole, 37), REGOPT_OK);
    for (i = 0; i < 37; i += 5) {
        size_t n = i + 5 <= 37 ? 5 : (size_t)(37 - i);
        ck_assert_int_eq(regopt_random_uniform(7, 3 + (uint64_t)i, part + i, n), REGOPT_OK);
        ck_assert_int_eq(regopt_random_normal(7, 3 + (uint64_t)i, npart + i, n), REGOPT_OK);
    }
    for (i = 0; i < 37; i++) {
        ck_assert_float_eq(whole[i], part[i]);
        ck_assert_float_eq(nwhole[i], npart[i]);
    }
}
END_TEST

/* The documented mapping, computed here with libm in double: element i
 * of stream s comes from words (2k, 2k + 1) of Philox block i/4, k =
 * (i%4)/2, u1 = (w + 1)/2^32, u2 = w'/2^32, cos branch for even i. The
 * library computes log, sin and cos itself (normal.c); both are within
 * ~1e-15 of the exact values, so after rounding to float they agree except
 * when the exact value lies within that distance of a rounding boundary:
 * allow 1 ulp, and at most a few such draws in 2^20. The draws are taken
 * whole (AVX-512 path, 64 at a time) and one by one (scalar path). */
START_TEST(normal_is_box_muller)
{
    const uint64_t seed = 0xfeedbeefcafe1234ULL;
    uint32_t key[2] = {0xcafe1234u, 0xfeedbeefu};
    const size_t n = (size_t)1 << 20;
    float *got = malloc(n * sizeof *got), one;
    size_t i, bad = 0;
    ck_assert_ptr_nonnull(got);
    ck_assert_int_eq(regopt_random_normal(seed, 0, got, n), REGOPT_OK);
    for (i = 0; i < n; i++) {
        uint32_t ctr[4] = {(uint32_t)(i / 4), (uint32_t)(i / 4 >> 32), 0, 0}, w[4];
        unsigned p = (unsigned)(i % 4) & ~1u;
        double u1, u2, r, a, want;
        float wf;
        ro_philox4x32_10(ctr, key, w);
        u1 = ((double)w[p] + 1.0) / 4294967296.0;
        u2 = (double)w[p + 1] / 4294967296.0;
        r = sqrt(-2.0 * log(u1));
        a = 6.283185307179586476925 * u2;
        want = i % 2 ? r * sin(a) : r * cos(a);
        wf = (float)want;
        if (got[i] != wf) {
            /* one ulp of the float, or an absolute 1e-15 near a zero of
               the cosine or sine (libm's angle is rounded, ours exact) */
            ck_assert_msg(fabs(got[i] - want) <= fabsf(nextafterf(wf, 2 * wf) - wf) ||
                              fabs(got[i] - want) < 1e-14,
                          "draw %zu: %.9g, Box-Muller gives %.17g", i, got[i], want);
            bad++;
        }
        if (i % 4099 == 0) { /* the one-draw path at this offset */
            ck_assert_int_eq(regopt_random_normal(seed, i, &one, 1), REGOPT_OK);
            ck_assert_msg(one == got[i], "draw %zu alone: %.9g, in a run: %.9g", i, one, got[i]);
        }
    }
    ck_assert_uint_le(bad, 8);
    free(got);
}
END_TEST

#define NSAMP 200000
static float samples[NSAMP];

START_TEST(uniform_moments)
{
    double mean = 0.0, var = 0.0;
    int i;
    ck_assert_int_eq(regopt_random_uniform(42, 0, samples, NSAMP), REGOPT_OK);
    for (i = 0; i < NSAMP; i++) {
        ck_assert(samples[i] >= 0.0f && samples[i] < 1.0f);
        mean += samples[i];
    }
    mean /= NSAMP;
    for (i = 0; i < NSAMP; i++)
        var += (samples[i] - mean) * (samples[i] - mean);
    var /= NSAMP;
    /* standard errors: 0.00065 for the mean, 0.00019 for the variance */
    ck_assert_double_lt(fabs(mean - 0.5), 0.004);
    ck_assert_double_lt(fabs(var - 1.0 / 12.0), 0.0015);
}
END_TEST

START_TEST(normal_moments)
{
    double mean = 0.0, var = 0.0, kurt = 0.0;
    int i;
    ck_assert_int_eq(regopt_random_normal(43, 0, samples, NSAMP), REGOPT_OK);
    for (i = 0; i < NSAMP; i++) {
        ck_assert(isfinite(samples[i]));
        mean += samples[i];
    }
    mean /= NSAMP;
    for (i = 0; i < NSAMP; i++) {
        double d = samples[i] - mean;
        var += d * d;
        kurt += d * d * d * d;
    }
    var /= NSAMP;
    kurt = kurt / NSAMP / (var * var);
    ck_assert_double_lt(fabs(mean), 0.012);
    ck_assert_double_lt(fabs(var - 1.0), 0.02);
    ck_assert_double_lt(fabs(kurt - 3.0), 0.1);
}
END_TEST

START_TEST(different_seeds_differ)
{
    float a[8], b[8];
    int i, same = 0;
    ck_assert_int_eq(regopt_random_uniform(1, 0, a, 8), REGOPT_OK);
    ck_assert_int_eq(regopt_random_uniform(2, 0, b, 8), REGOPT_OK);
    for (i = 0; i < 8; i++)
        same += a[i] == b[i];
    ck_assert_int_lt(same, 2);
}
END_TEST

START_TEST(null_output)
{
    ck_assert_int_eq(regopt_random_uniform(1, 0, NULL, 3), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_random_normal(1, 0, NULL, 3), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_random_uniform(1, 0, NULL, 0), REGOPT_OK);
}
END_TEST

Suite *suite_rng(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("philox");
    tcase_add_test(tc, philox_known_answers);
    tcase_add_test(tc, uniform_is_the_documented_mapping);
    tcase_add_test(tc, streams_do_not_depend_on_the_split);
    tcase_add_test(tc, uniform_moments);
    tcase_add_test(tc, normal_moments);
    tcase_add_test(tc, normal_is_box_muller);
    tcase_add_test(tc, different_seeds_differ);
    tcase_add_test(tc, null_output);
    suite_add_tcase(s, tc);
    return s;
}
