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

/* ---- regularizers (1.0 handles) ----------------------------------------- */

/* Regularizers created by tu_add stay reachable here (so LeakSanitizer does
 * not count them) and are freed by tu_free_regs. */
#define TU_MAX_REGS 256
static regopt_regularizer *tu_regs_[TU_MAX_REGS];
static size_t tu_n_regs_;

/* A new regularizer of `kind` with its defaults (the test fails otherwise). */
static inline regopt_regularizer *tu_new(regopt_regularizer_kind kind)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *r = regopt_regularizer_create(kind, NULL, &st);
    ck_assert_msg(r != NULL, "regopt_regularizer_create(%d) -> %s: %s", (int)kind,
                  regopt_status_string(st), regopt_last_error_message());
    if (tu_n_regs_ < TU_MAX_REGS)
        tu_regs_[tu_n_regs_++] = r;
    return r;
}

/* Create a regularizer of `kind` and attach it (the test fails otherwise). */
static inline regopt_regularizer *tu_add(regopt_trainer *t, regopt_regularizer_kind kind)
{
    regopt_regularizer *r = tu_new(kind);
    TMUST(t, regopt_trainer_attach(t, r));
    return r;
}

/* The attached regularizer of `kind` (NULL if none). */
static inline regopt_regularizer *tu_reg(const regopt_trainer *t, regopt_regularizer_kind kind)
{
    size_t i, n = regopt_trainer_regularizer_count(t);
    for (i = 0; i < n; i++) {
        regopt_regularizer *r = regopt_trainer_regularizer_at(t, i);
        if (regopt_regularizer_get_kind(r) == kind)
            return r;
    }
    return NULL;
}

/* Free every regularizer tu_new made that is not attached any more (call
 * it after freeing the trainers). */
static inline void tu_free_regs(void)
{
    size_t i, kept = 0;
    for (i = 0; i < tu_n_regs_; i++) {
        if (regopt_regularizer_get_trainer(tu_regs_[i]) != NULL)
            tu_regs_[kept++] = tu_regs_[i];
        else
            regopt_regularizer_free(tu_regs_[i]);
    }
    tu_n_regs_ = kept;
}

/* Like TMUST, with the regularizer's message. */
#define RMUST(r, call)                                                                     \
    do {                                                                                   \
        regopt_status st_ = (call);                                                        \
        ck_assert_msg(st_ == REGOPT_OK, "%s -> %s: %s", #call, regopt_status_string(st_),  \
                      regopt_regularizer_message(r));                                      \
    } while (0)

/* A statistic of a regularizer (the test fails if it cannot be read). */
static inline double rstat(const regopt_regularizer *r, regopt_key key)
{
    double v = -12345.0;
    MUST(regopt_regularizer_get_double(r, key, &v));
    return v;
}

#endif
