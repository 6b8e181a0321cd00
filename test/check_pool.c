/* check_pool.c — REGOPT_TRAINER_THREADS: the trainer's worker threads.
 * This file: the option, and suite pool, whose "identical" case is in
 * check_pool_identical.c and "lifecycle" case in check_pool_lifecycle.c
 * (the rig: pool_rig.h, pool_os.h).
 *
 * The option runs the library's own loops over the parameters (optimizer
 * update, gradient zeroing and norm, SAM's perturb/restore and ascent norm,
 * the Bregman teacher's swap, copy and EMA) on a pool of threads, and
 * promises the same bits for every thread count. This suite checks that
 * promise by training the same model from the same weights on 1, 2, 3, 7
 * and 16 threads and comparing every byte of the
 * parameters and of a full checkpoint (optimizer moments, teacher, step,
 * statistics, options), and checks what comes with it: the option's bounds,
 * callbacks on the caller's thread, no allocation in steps, rollback of a
 * failed step, checkpoints that do not carry the option, changing the
 * thread count between steps, and workers joined at free.
 *
 * Every expectation is a comparison between runs, a count of calls or of
 * operating-system threads, or a value computed here -- never a number the
 * library reports about itself. The suite uses the public API only.
 *
 * Host: z_i = bias + W_eff x_i, where x_i = (e_i + input_perturbation_i) *
 * dropout mask (drawn from the pass seed) and W_eff (PL_K x PL_D) is a fixed
 * random projection of EVERY element of every non-bias tensor, frozen one
 * included: W_eff[c] = sum over elements e mapped to cell c of w[e] u[e].
 * So every parameter moves the outputs and gets its own gradient
 * u[e] * dL/dW_eff[c], and one pass costs a few operations per element. */
#define _POSIX_C_SOURCE 200809L /* pthreads, nanosleep under -std=c11 */
#include "tests.h"

#include "pool_rig.h"
#include "pool_os.h"

/* ======================================================================== */
/* 1. The option                                                            */
/* ======================================================================== */

START_TEST(threads_option)
{
    pl_run *r = pl_open(&cfg_adamw, NULL, 0);
    regopt_key key = (regopt_key)0;
    const char *name = NULL;
    int type = 0;
    double lo = 0, hi = 0, def = 0, dv = 0;
    uint32_t flags = 99;
    int64_t v = -1;
    const int64_t bad[] = {0, 257, -1, 1000, INT64_MIN, INT64_MAX};
    const int64_t good[] = {2, 3, 256, 1};
    size_t i;
    int base = pl_os_base();

    /* the key */
    MUST(regopt_key_from_name("trainer.threads", &key));
    ck_assert_int_eq(key, 303);
    ck_assert_int_eq(REGOPT_TRAINER_THREADS, 303);
    MUST(regopt_key_info(REGOPT_TRAINER_THREADS, &name, &type, &lo, &hi, &def, &flags));
    ck_assert_str_eq(name, "trainer.threads");
    ck_assert_int_eq(type, REGOPT_TYPE_INT);
    ck_assert(lo == 1.0 && hi == 256.0 && def == 1.0);
    ck_assert_uint_eq(flags, 0);

    /* default */
    MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 1);
    MUST(regopt_trainer_get_double(r->t, REGOPT_TRAINER_THREADS, &dv));
    ck_assert(dv == 1.0);

    /* out of range: refused, named, nothing changed */
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, bad[i]),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_msg(strstr(regopt_trainer_message(r->t), "trainer.threads") != NULL,
                      "%lld: \"%s\"", (long long)bad[i], regopt_trainer_message(r->t));
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, 1);
    }
    {
        const double dbad[] = {2.5, 0.0, 256.5, 257.0, -3.0, NAN, INFINITY};
        for (i = 0; i < sizeof dbad / sizeof dbad[0]; i++) {
            ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_THREADS, dbad[i]),
                             REGOPT_ERR_OUT_OF_RANGE);
            ck_assert_msg(strstr(regopt_trainer_message(r->t), "trainer.threads") != NULL,
                          "%g: \"%s\"", dbad[i], regopt_trainer_message(r->t));
            MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
            ck_assert_int_eq(v, 1);
        }
    }
    ck_assert_int_eq(pl_os_threads_settle(base), base);

    /* in range: taken, read back, and the workers exist right away */
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, good[i]));
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, good[i]);
        if (base > 0)
            ck_assert_int_eq(pl_os_threads_settle(base + (int)good[i] - 1),
                             base + (int)good[i] - 1);
    }
    /* a failed set keeps a value other than the default too */
    MUST(regopt_trainer_set_double(r->t, REGOPT_TRAINER_THREADS, 2.0));
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_THREADS, 2.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 0),
                     REGOPT_ERR_OUT_OF_RANGE);
    MUST(regopt_trainer_get_double(r->t, REGOPT_TRAINER_THREADS, &dv));
    ck_assert(dv == 2.0);
    ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    /* the same value again: nothing to do */
    MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 2));
    ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 1));
    MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(pl_os_threads_settle(base), base);

    /* a trainer key only */
    ck_assert_int_eq(regopt_optimizer_set_int(r->o, REGOPT_TRAINER_THREADS, 2),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_set_int(NULL, REGOPT_TRAINER_THREADS, 2),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_get_int(NULL, REGOPT_TRAINER_THREADS, &v),
                     REGOPT_ERR_NULL_POINTER);
    {
        /* nor a regularizer's, attached or not */
        regopt_regularizer *sam = tu_new(REGOPT_REG_SAM);
        ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_TRAINER_THREADS, 2),
                         REGOPT_ERR_UNKNOWN_KEY);
        TMUST(r->t, regopt_trainer_attach(r->t, sam));
        ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_TRAINER_THREADS, 2),
                         REGOPT_ERR_UNKNOWN_KEY);
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, 1);
    }
    pl_close(r);
    tu_free_regs();
}
END_TEST

Suite *suite_pool(void)
{
    Suite *s = suite_create("pool");
    TCase *opt = tcase_create("option");
    TCase *same = pool_identical_tcase();
    TCase *life = pool_lifecycle_tcase();
    tcase_set_timeout(opt, 300); /* sanitizers and valgrind are slow */
    tcase_add_test(opt, threads_option);
    suite_add_tcase(s, opt);
    suite_add_tcase(s, same);
    suite_add_tcase(s, life);
    return s;
}
