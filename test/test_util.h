/* test_util.h — small helpers shared by the Check suites. */
#ifndef REGOPT_TEST_UTIL_H
#define REGOPT_TEST_UTIL_H

#include <check.h>
#include <regopt.h>

#include <math.h>
#include <stdlib.h>

/* A regopt_allocator that counts, and fails the fail_at-th allocation
 * (0 = never). */
typedef struct counting {
    long allocs, frees, fail_at;
} counting;

static inline void *count_alloc(size_t n, void *user)
{
    counting *c = user;
    if (++c->allocs == c->fail_at)
        return NULL;
    return malloc(n);
}

static inline void count_release(void *p, void *user)
{
    if (p)
        ((counting *)user)->frees++;
    free(p);
}

#define COUNTING_ALLOCATOR(c) {sizeof(regopt_allocator), count_alloc, count_release, (c)}

#define MUST(call)                                                                         \
    do {                                                                                   \
        regopt_status st_ = (call);                                                        \
        ck_assert_msg(st_ == REGOPT_OK, "%s -> %s", #call, regopt_status_string(st_));     \
    } while (0)

#define TMUST(t, call)                                                                     \
    do {                                                                                   \
        regopt_status st_ = (call);                                                        \
        ck_assert_msg(st_ == REGOPT_OK, "%s -> %s: %s", #call, regopt_status_string(st_),  \
                      regopt_trainer_message(t));                                          \
    } while (0)

/* A statistic of the last step (the test fails if it cannot be read). */
static inline double stat(const regopt_trainer *t, regopt_key key)
{
    double v = -12345.0;
    MUST(regopt_trainer_get_double(t, key, &v));
    return v;
}

static inline int64_t stat_int(const regopt_trainer *t, regopt_key key)
{
    int64_t v = -12345;
    MUST(regopt_trainer_get_int(t, key, &v));
    return v;
}

/* |got - want| <= tol * max(|want|, scale) */
static inline void near(double got, double want, double tol, double scale, const char *what)
{
    double m = fabs(want) > scale ? fabs(want) : scale;
    ck_assert_msg(fabs(got - want) <= tol * m, "%s: got %.17g, want %.17g (tol %g)", what, got,
                  want, tol * m);
}

#endif
