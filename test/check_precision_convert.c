/* check_precision_convert.c — the fp16/bf16 conversions against the IEEE
 * definitions: every fp16 value, ties to even, the compiler's _Float16 where
 * it has one, bf16 sampled against a reference computed in double, and the
 * bad inputs of regopt_convert. A case of suite_precision. */
#include "precision_rig.h"
#include "test_util.h"

#include <float.h>
#include <stdlib.h>

START_TEST(fp16_every_value)
{
    uint32_t h;
    for (h = 0; h < 65536; h++) {
        double v = f16_value((uint16_t)h);
        float f = from16((uint16_t)h, REGOPT_DTYPE_FLOAT16);
        if (isnan(v)) {
            ck_assert(isnan(f));
            ck_assert_int_eq(signbit(f) != 0, (h & 0x8000) != 0);
            /* back: quiet bit set, payload kept */
            ck_assert_uint_eq(to16(f, REGOPT_DTYPE_FLOAT16), h | 0x200);
            continue;
        }
        ck_assert_msg((double)f == v, "fp16 %04x widened to %a, want %a", h, (double)f, v);
        ck_assert_int_eq(signbit(f) != 0, (h & 0x8000) != 0);
        ck_assert_uint_eq(to16(f, REGOPT_DTYPE_FLOAT16), h); /* exact values round to themselves */
    }
}
END_TEST

/* Between consecutive positive fp16 values a < b: the midpoint goes to the
 * one with an even significand, anything below it to a, above to b. */
START_TEST(fp16_rounds_to_nearest_even)
{
    uint32_t h;
    for (h = 0; h < 0x7c00; h++) {
        double a = f16_value((uint16_t)h);
        double b = h + 1 == 0x7c00 ? 65536.0 : f16_value((uint16_t)(h + 1)); /* 65536: the
                                                   "next" value of the overflow rule */
        float mid = (float)((a + b) / 2); /* exact: 12 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        ck_assert((double)mid == (a + b) / 2);
        ck_assert_uint_eq(to16(mid, REGOPT_DTYPE_FLOAT16), even);
        ck_assert_uint_eq(to16(nextafterf(mid, 0.0f), REGOPT_DTYPE_FLOAT16), h);
        ck_assert_uint_eq(to16(nextafterf(mid, INFINITY), REGOPT_DTYPE_FLOAT16), h + 1);
        ck_assert_uint_eq(to16(-mid, REGOPT_DTYPE_FLOAT16), even | 0x8000);
    }
    ck_assert_uint_eq(to16(65519.99f, REGOPT_DTYPE_FLOAT16), 0x7bff);
    ck_assert_uint_eq(to16(65520.0f, REGOPT_DTYPE_FLOAT16), 0x7c00);
    ck_assert_uint_eq(to16(INFINITY, REGOPT_DTYPE_FLOAT16), 0x7c00);
    ck_assert_uint_eq(to16(-INFINITY, REGOPT_DTYPE_FLOAT16), 0xfc00);
    ck_assert_uint_eq(to16(FLT_MAX, REGOPT_DTYPE_FLOAT16), 0x7c00);
    ck_assert_uint_eq(to16(1e-30f, REGOPT_DTYPE_FLOAT16), 0);
    ck_assert_uint_eq(to16(-0.0f, REGOPT_DTYPE_FLOAT16), 0x8000);
    ck_assert_uint_eq(to16(bitsf(1), REGOPT_DTYPE_FLOAT16), 0); /* float subnormal */
}
END_TEST

#ifdef __FLT16_MAX__
/* The compiler's own _Float16 conversion (GCC 12 on x86-64: software
 * round-to-nearest-even) as a second reference, on random floats. */
START_TEST(fp16_matches_the_compiler)
{
    uint32_t s = 12345u, i;
    for (i = 0; i < 2000000u; i++) {
        __extension__ _Float16 c;
        uint16_t ref;
        float f;
        s = s * 1664525u + 1013904223u;
        f = bitsf(s);
        if (isnan(f))
            continue;
        c = f; /* the conversion by assignment: the compiler's rounding */
        memcpy(&ref, &c, 2);
        ck_assert_msg(to16(f, REGOPT_DTYPE_FLOAT16) == ref, "%a: %04x, compiler %04x",
                      (double)f, to16(f, REGOPT_DTYPE_FLOAT16), ref);
    }
}
END_TEST
#endif

/* bf16 reference: the two bf16 neighbours of x and the nearer in double. */
static uint16_t bf16_reference(float x)
{
    uint32_t b = fbits(x), lo = b >> 16, hi = lo + 1;
    double v = fabs((double)x), a, c;
    if (isnan(x))
        return (uint16_t)(lo | 0x40);
    if ((b & 0xffffu) == 0)
        return (uint16_t)lo;
    a = fabs((double)bitsf(lo << 16));
    c = (hi & 0x7fffu) == 0x7f80u ? ldexp(1.0, 128) : fabs((double)bitsf(hi << 16));
    if (v - a < c - v)
        return (uint16_t)lo;
    if (v - a > c - v)
        return (uint16_t)hi;
    return (uint16_t)((lo & 1u) ? hi : lo);
}

START_TEST(bf16_sampled)
{
    uint32_t s = 987654321u, i;
    for (i = 0; i < 4000000u; i++) {
        float f;
        uint16_t got, want;
        s = s * 1664525u + 1013904223u;
        /* every 4th sample a near-tie: low half 0x8000 +- 1 */
        f = bitsf((i & 3) ? s : ((s & 0xffff0000u) | (0x7fffu + (s & 3u) % 3u)));
        got = to16(f, REGOPT_DTYPE_BFLOAT16);
        want = bf16_reference(f);
        ck_assert_msg(got == want, "%08x: bf16 %04x, want %04x", fbits(f), got, want);
        if (!isnan(f))
            ck_assert(from16(got, REGOPT_DTYPE_BFLOAT16) == bitsf((uint32_t)got << 16));
    }
    for (i = 0; i < 65536; i++) { /* every bf16 value widens and narrows back */
        float f = from16((uint16_t)i, REGOPT_DTYPE_BFLOAT16);
        ck_assert_uint_eq(fbits(f), i << 16);
        if (!isnan(f))
            ck_assert_uint_eq(to16(f, REGOPT_DTYPE_BFLOAT16), i);
    }
    ck_assert_uint_eq(to16(FLT_MAX, REGOPT_DTYPE_BFLOAT16), 0x7f80); /* overflow: inf */
}
END_TEST

/* The tensor loops convert blocks of 16 without branches (vectorized, an
 * AVX2 copy for fp16 narrowing) and the rest one by one (the functions the
 * tests above check against the IEEE definitions): whole arrays, at every
 * offset and length around a block, must give exactly the one-by-one bits.
 * The floats: every fp16 value widened, the midpoint to the next one (a
 * tie), random bit patterns and subnormal halves. */
START_TEST(arrays_equal_one_by_one)
{
    enum { N = 65536 * 4 + 37 };
    float *f = malloc(N * sizeof *f), *back = malloc(N * sizeof *back);
    uint16_t *h = malloc(N * sizeof *h), *hs = malloc(N * sizeof *hs);
    regopt_dtype dts[2] = {REGOPT_DTYPE_FLOAT16, REGOPT_DTYPE_BFLOAT16};
    uint32_t s = 2468u, i;
    int d;
    ck_assert(f && back && h && hs);
    for (i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        switch (i & 3u) {
        case 0: f[i] = from16((uint16_t)(i >> 2), REGOPT_DTYPE_FLOAT16); break;
        case 1: { /* the midpoint to the next half up (exact in float): a tie */
            uint16_t a = (uint16_t)(i >> 2);
            f[i] = (a & 0x7fffu) < 0x7bffu
                       ? (from16(a, REGOPT_DTYPE_FLOAT16) + from16((uint16_t)(a + 1),
                                                                 REGOPT_DTYPE_FLOAT16)) / 2
                       : nextafterf(from16(a, REGOPT_DTYPE_FLOAT16), INFINITY);
            break;
        }
        case 2: f[i] = bitsf(s); break;
        default: f[i] = bitsf((s & 0x807fffffu) | ((100u + s % 14u) << 23)); /* subnormal halves */
        }
    }
    for (d = 0; d < 2; d++) {
        size_t off, len;
        for (i = 0; i < N; i++)
            hs[i] = to16(f[i], dts[d]);
        ck_assert_int_eq(regopt_convert(f, REGOPT_DTYPE_FLOAT32, h, dts[d], N), REGOPT_OK);
        for (i = 0; i < N; i++)
            ck_assert_msg(h[i] == hs[i], "dtype %d, %08x: array %04x, one by one %04x",
                          (int)dts[d], fbits(f[i]), h[i], hs[i]);
        ck_assert_int_eq(regopt_convert(h, dts[d], back, REGOPT_DTYPE_FLOAT32, N), REGOPT_OK);
        for (i = 0; i < N; i++) {
            float one = from16(h[i], dts[d]);
            ck_assert_msg(fbits(back[i]) == fbits(one), "dtype %d, %04x: array %08x, one by "
                          "one %08x", (int)dts[d], h[i], fbits(back[i]), fbits(one));
        }
        for (i = 0; i < 65536; i++) /* every half, signalling NaNs included */
            hs[i] = (uint16_t)i;
        ck_assert_int_eq(regopt_convert(hs, dts[d], back, REGOPT_DTYPE_FLOAT32, 65536),
                         REGOPT_OK);
        for (i = 0; i < 65536; i++) {
            float one = from16((uint16_t)i, dts[d]);
            ck_assert_msg(fbits(back[i]) == fbits(one), "dtype %d, %04x: array %08x, one by "
                          "one %08x", (int)dts[d], i, fbits(back[i]), fbits(one));
        }
        for (i = 0; i < N; i++)
            hs[i] = to16(f[i], dts[d]);
        for (off = 0; off < 19; off++) /* every alignment and tail */
            for (len = 0; len < 40; len++) {
                memset(h, 0xee, 64 * sizeof *h);
                ck_assert_int_eq(regopt_convert(f + off, REGOPT_DTYPE_FLOAT32, h, dts[d], len),
                                 REGOPT_OK);
                for (i = 0; i < len; i++)
                    ck_assert_uint_eq(h[i], hs[off + i]);
                ck_assert_uint_eq(h[len], 0xeeee); /* nothing past the end */
            }
    }
    free(f);
    free(back);
    free(h);
    free(hs);
}
END_TEST

START_TEST(convert_bad_input)
{
    float f[2] = {1, 2};
    uint16_t h[2];
    double d[2];
    ck_assert_int_eq(regopt_convert(NULL, REGOPT_DTYPE_FLOAT32, h, REGOPT_DTYPE_FLOAT16, 2),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_convert(f, REGOPT_DTYPE_FLOAT32, NULL, REGOPT_DTYPE_FLOAT16, 2),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_convert(NULL, REGOPT_DTYPE_FLOAT32, NULL, REGOPT_DTYPE_FLOAT16, 0),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_convert(f, REGOPT_DTYPE_FLOAT32, d, REGOPT_DTYPE_FLOAT64, 2),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert(strstr(regopt_last_error_message(), "dtype 1 to dtype 4") != NULL);
    ck_assert_int_eq(regopt_convert(h, REGOPT_DTYPE_FLOAT16, h, REGOPT_DTYPE_BFLOAT16, 2),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(regopt_convert(f, (regopt_dtype)9, h, REGOPT_DTYPE_FLOAT16, 2),
                     REGOPT_ERR_INVALID_ARGUMENT);
}
END_TEST

TCase *precision_convert_tcase(void)
{
    TCase *c = tcase_create("conversions");
    tcase_set_timeout(c, 120);
    tcase_add_test(c, fp16_every_value);
    tcase_add_test(c, arrays_equal_one_by_one);
    tcase_add_test(c, fp16_rounds_to_nearest_even);
#ifdef __FLT16_MAX__
    tcase_add_test(c, fp16_matches_the_compiler);
#endif
    tcase_add_test(c, bf16_sampled);
    tcase_add_test(c, convert_bad_input);
    return c;
}
