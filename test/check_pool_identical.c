/* check_pool_identical.c — the "identical" case of suite pool: the same
 * bits on every thread count, for every optimizer and regularizer, the
 * small model, the most threads, and workers taking part (the rig:
 * pool_rig.h, pool_os.h; the host: check_pool.c). */
#define _POSIX_C_SOURCE 200809L /* pthreads, nanosleep under -std=c11 */
#include "tests.h"

#include "pool_rig.h"
#include "pool_os.h"

/* ======================================================================== */
/* 2. The same bits on every thread count                                   */
/* ======================================================================== */

static const int pl_counts[] = {2, 3, 7, 16};

/* Run c on `threads` threads; the snapshot and trace of the result. */
static void pl_train(const pl_cfg *c, int threads, pl_snap *s, pl_trace *tr)
{
    pl_run *r = pl_open(c, NULL, 0);
    int i, base = pl_os_base();
    if (threads != 1)
        pl_threads(r, threads);
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base + threads - 1), base + threads - 1);
    for (i = 0; i < c->steps; i++) {
        pl_must_step(r, i);
        pl_record(r, tr, i);
    }
    pl_take(r, s);
    pl_close(r);
}

/* The reference run did what the configuration says, so the comparison is
 * not between runs that skipped the code under test: every chunk of every
 * trainable tensor moved, the frozen tensor did not, and each regularizer
 * was active. */
static void pl_sanity(const pl_cfg *c, const pl_snap *s, const pl_trace *tr)
{
    const pl_spec *spec = c->small ? small_model : big_model;
    size_t nt = c->small ? PL_SMALL_T : PL_BIG_T, t, e, off = 0;
    int i;
    for (t = 0; t < nt; t++) {
        const unsigned char *p = s->bytes + off;
        for (e = 0; e < spec[t].count; e++) {
            float w, w0 = pl_init(t, e);
            memcpy(&w, p + e * sizeof(float), sizeof w);
            if (!spec[t].trainable)
                ck_assert_msg(memcmp(&w, &w0, sizeof w) == 0, "frozen %s[%zu] changed",
                              spec[t].name, e);
            ck_assert_msg(isfinite(w), "%s[%zu] = %g", spec[t].name, e, (double)w);
        }
        if (spec[t].trainable) {
            size_t j0;
            for (j0 = 0; j0 < spec[t].count; j0 += PL_CHUNK) {
                size_t j1 = j0 + PL_CHUNK < spec[t].count ? j0 + PL_CHUNK : spec[t].count;
                size_t moved = 0;
                for (e = j0; e < j1; e++) {
                    float w, w0 = pl_init(t, e);
                    memcpy(&w, p + e * sizeof(float), sizeof w);
                    moved += memcmp(&w, &w0, sizeof w) != 0;
                }
                ck_assert_msg(moved * 2 > j1 - j0, "%s: only %zu of [%zu, %zu) moved",
                              spec[t].name, moved, j0, j1);
            }
        }
        off += spec[t].count * sizeof(float);
    }
    for (i = 0; i < c->steps; i++) {
        ck_assert_msg(isfinite(tr->loss[i]) && tr->norm[i] > 0.0, "step %d: loss %g norm %g",
                      i, tr->loss[i], tr->norm[i]);
        if (c->clip > 0.0)
            ck_assert_msg(tr->clip[i] < 1.0, "step %d does not clip (norm %g)", i,
                          tr->norm[i]);
        if (c->sam)
            ck_assert_msg(tr->sam_applied[i] == 1.0 && tr->ascent[i] > 0.0,
                          "step %d made no ascent", i);
        if (c->rdrop)
            ck_assert_msg(tr->rdrop_applied[i] == 1.0, "step %d ran no R-Drop", i);
        if (c->smart)
            ck_assert_msg(tr->smart_rs[i] > 0.0, "step %d: R_s = %g", i, tr->smart_rs[i]);
        if (c->bregman && i > 0)
            ck_assert_msg(tr->bregman_d[i] > 0.0, "step %d: D_Breg = %g", i, tr->bregman_d[i]);
        if (c->average)
            ck_assert_msg(tr->average_count[i] == (double)(i + 1), "step %d: average.count %g",
                          i, tr->average_count[i]);
    }
}

static void pl_identity_counts(const pl_cfg *c, const int *counts, size_t n)
{
    pl_snap ref, got;
    pl_trace tref, tgot;
    size_t k;
    memset(&tref, 0, sizeof tref);
    pl_train(c, 1, &ref, &tref);
    pl_sanity(c, &ref, &tref);
    for (k = 0; k < n; k++) {
        memset(&tgot, 0, sizeof tgot);
        pl_train(c, counts[k], &got, &tgot);
        pl_same(&got, &ref, "parameters and checkpoint against one thread", counts[k]);
        ck_assert_msg(memcmp(&tgot, &tref, sizeof tref) == 0,
                      "%d threads: the step statistics differ from one thread's", counts[k]);
        pl_drop(&got);
    }
    pl_drop(&ref);
}

static void pl_identity(const pl_cfg *c)
{
    pl_identity_counts(c, pl_counts, sizeof pl_counts / sizeof pl_counts[0]);
}

START_TEST(identical_adamw) { pl_identity(&cfg_adamw); }
END_TEST
START_TEST(identical_adam_amsgrad) { pl_identity(&cfg_adam_ams); }
END_TEST
START_TEST(identical_sgd_momentum_nesterov) { pl_identity(&cfg_sgd_nesterov); }
END_TEST
START_TEST(identical_sgd_plain) { pl_identity(&cfg_sgd_plain); }
END_TEST
START_TEST(identical_radam) { pl_identity(&cfg_radam); }
END_TEST
START_TEST(identical_clipping)
{
    pl_identity(&cfg_clip);
    pl_identity(&cfg_clip_sgd);
}
END_TEST
START_TEST(identical_sam) { pl_identity(&cfg_sam); }
END_TEST
START_TEST(identical_asam) { pl_identity(&cfg_asam); }
END_TEST
START_TEST(identical_gsam) { pl_identity(&cfg_gsam); }
END_TEST
START_TEST(identical_sam_m_sharpness) { pl_identity(&cfg_sam_m); }
END_TEST
START_TEST(identical_smart_bregman) { pl_identity(&cfg_smart_bregman); }
END_TEST
START_TEST(identical_rdrop) { pl_identity(&cfg_rdrop); }
END_TEST
START_TEST(identical_everything) { pl_identity(&cfg_everything); }
END_TEST

START_TEST(identical_average_mesa) { pl_identity(&cfg_average_mesa); }
END_TEST

START_TEST(identical_average_swa) { pl_identity(&cfg_average_swa); }
END_TEST

/* Below PL_PAR_MIN trainable elements the loops stay on one thread; the
 * result is the same whatever the option says. */
START_TEST(identical_small_model)
{
    static const int four[] = {4};
    pl_identity_counts(&cfg_small, four, 1);
    pl_identity_counts(&cfg_small_sgd, four, 1);
}
END_TEST

/* The largest pool: more threads than the model's 74 chunks. */
START_TEST(identical_max_threads)
{
    static const int most[] = {256};
    pl_cfg c = cfg_sam;
    c.steps = 2;
    c.bregman = 1;
    pl_identity_counts(&c, most, 1);
}
END_TEST

/* The comparisons above would also pass if the workers never ran: check
 * that they do work in the steps of a big model, and none in those of a
 * model below PL_PAR_MIN trainable elements. Measured as the workers' run
 * time (Linux schedstat; skipped where it cannot be read). */
START_TEST(workers_take_part)
{
    struct timespec settle = {0, 100000000L}; /* idle workers go to sleep */
    long w[8];
    size_t n;
    long long t0, t1;
    int i;
    pl_run *r = pl_open(&cfg_sam, NULL, 0);
    n = pl_new_workers(r, 2, w, 8);
    if (n == 0 || pl_workers_runtime(w, n) < 0) {
        pl_close(r);
        return; /* no /proc/self/task/N/schedstat here */
    }
    ck_assert_uint_eq(n, 1);
    pl_must_step(r, 0);
    nanosleep(&settle, NULL);
    t0 = pl_workers_runtime(w, n);
    for (i = 1; i < 4; i++)
        pl_must_step(r, i);
    t1 = pl_workers_runtime(w, n);
    ck_assert_msg(t1 > t0, "the worker did not run during the steps (%lld ns -> %lld ns)", t0,
                  t1);
    pl_close(r);

    r = pl_open(&cfg_small, NULL, 0);
    n = pl_new_workers(r, 4, w, 8);
    ck_assert_uint_eq(n, 3);
    pl_must_step(r, 0);
    nanosleep(&settle, NULL);
    t0 = pl_workers_runtime(w, n);
    for (i = 1; i < 4; i++)
        pl_must_step(r, i);
    t1 = pl_workers_runtime(w, n);
    ck_assert_msg(t1 == t0, "workers ran for a model below %d elements (%lld ns -> %lld ns)",
                  PL_PAR_MIN, t0, t1);
    pl_close(r);
}
END_TEST

TCase *pool_identical_tcase(void)
{
    TCase *same = tcase_create("identical");
    tcase_set_timeout(same, 300); /* sanitizers and valgrind are slow */
    tcase_add_test(same, identical_adamw);
    tcase_add_test(same, identical_adam_amsgrad);
    tcase_add_test(same, identical_sgd_momentum_nesterov);
    tcase_add_test(same, identical_sgd_plain);
    tcase_add_test(same, identical_radam);
    tcase_add_test(same, identical_clipping);
    tcase_add_test(same, identical_sam);
    tcase_add_test(same, identical_asam);
    tcase_add_test(same, identical_gsam);
    tcase_add_test(same, identical_sam_m_sharpness);
    tcase_add_test(same, identical_smart_bregman);
    tcase_add_test(same, identical_rdrop);
    tcase_add_test(same, identical_everything);
    tcase_add_test(same, identical_average_mesa);
    tcase_add_test(same, identical_average_swa);
    tcase_add_test(same, identical_small_model);
    tcase_add_test(same, identical_max_threads);
    tcase_add_test(same, workers_take_part);
    return same;
}
