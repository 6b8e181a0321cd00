/* precision_rig.h — the IEEE half-precision definitions in double and the
 * bit helpers the mixed-precision tests share (check_precision.c,
 * check_precision_convert.c); computed here, independently of
 * src/core/half.c. */
#ifndef PRECISION_RIG_H
#define PRECISION_RIG_H

#include "tests.h"

#include <math.h>
#include <string.h>

/* ---- the IEEE definitions, in double ------------------------------------ */

/* The value of binary16 bits h (NaN: NAN). */
static inline double f16_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -24);
    else
        v = ldexp((double)(m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

static inline uint32_t fbits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

static inline float bitsf(uint32_t x)
{
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline uint16_t to16(float f, regopt_dtype dt)
{
    uint16_t h;
    ck_assert_int_eq(regopt_convert(&f, REGOPT_DTYPE_FLOAT32, &h, dt, 1), REGOPT_OK);
    return h;
}

static inline float from16(uint16_t h, regopt_dtype dt)
{
    float f;
    ck_assert_int_eq(regopt_convert(&h, dt, &f, REGOPT_DTYPE_FLOAT32, 1), REGOPT_OK);
    return f;
}

/* The conversion tests (check_precision_convert.c), a case of suite_precision. */
TCase *precision_convert_tcase(void);

#endif
