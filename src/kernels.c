/* kernels.c — memory-bound loops shared by the step. */
#include "internal.h"

#include <string.h>

/* Sum of squares in double: a float accumulator loses digits long before
 * 10^7 elements. Four independent partial sums keep the adds pipelined. */
double ro_sum_squares(const float *x, size_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    size_t i = 0;
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
