/* cli.h — strict number parsing for the examples' command lines: the whole
 * argument must be a number inside the given range. */
#ifndef REGOPT_EXAMPLES_CLI_H
#define REGOPT_EXAMPLES_CLI_H

#include <errno.h>
#include <stdlib.h>

static inline int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static inline int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

#endif
