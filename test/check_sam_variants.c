/* check_sam_variants.c — the SAM family's second wave (the rig:
 * sam_variants_rig.h): ascent directions with state (sam.direction:
 * FriendlySAM, VaSSO). Their first steps against a double-precision
 * reference written in the rig (never the library's own output), the exact
 * reductions to SAM, ASAM and m-sharpness composition, every-k, threads,
 * rollback on a failing callback in every pass, checkpoint resume, and
 * refused option values; and suite_sam_variants, whose other cases come
 * from check_sam_wsam.c (WSAM), check_sam_look.c (SAM-ON, LookSAM) and
 * check_sam_momentum.c (Momentum-SAM). */
#include "tests.h"

#include "sam_variants_rig.h"

/* ======================================================================== */
/* 1. The first steps against the reference                                 */
/* ======================================================================== */

static void reference_run(int dir, int adaptive, double p1, double p2, int every)
{
    const char *what = dir == 1 ? "FriendlySAM" : "VaSSO";
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, dir, adaptive ? 0.5 : 0.1, 1);
    vref f;
    int k;
    vref_init(&f, 5, dir, adaptive ? 0.5 : 0.1, 0.02);
    f.adaptive = adaptive;
    vset(r, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(r, REGOPT_SAM_EVERY, every);
    if (dir == 1) {
        f.sigma = p1;
        f.lambda = p2;
        vset(r, REGOPT_SAM_FRIENDLY_SIGMA, p1);
        vset(r, REGOPT_SAM_FRIENDLY_LAMBDA, p2);
    } else {
        f.theta = p1;
        vset(r, REGOPT_SAM_VASSO_THETA, p1);
    }
    for (k = 0; k < 3 * every; k++) {
        int due = k % every == 0;
        vstep(r);
        vref_step(&f, due);
        vref_compare(&f, r, due, what, k);
        ck_assert_int_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), due);
    }
    vrun_close(r);
}

START_TEST(friendly_first_steps)
{
    reference_run(1, 0, 1.0, 0.9, 1); /* the class defaults */
    reference_run(1, 0, 0.5, 0.6, 1);
}
END_TEST

START_TEST(vasso_first_steps)
{
    reference_run(2, 0, 0.9, 0.0, 1);
    reference_run(2, 0, 0.3, 0.0, 1);
}
END_TEST

/* FriendlySAM's official code has an adaptive flag (T^2 a / ||T a||, as
 * ASAM); VaSSO's has none: ours applies T to d the same way. */
START_TEST(directions_compose_with_asam)
{
    reference_run(1, 1, 1.0, 0.9, 1);
    reference_run(2, 1, 0.9, 0.0, 1);
}
END_TEST

/* The state moves on SAM steps only (sam.every 2: steps 1, 3, 5 plain). */
START_TEST(directions_with_every_k)
{
    reference_run(1, 0, 1.0, 0.9, 2);
    reference_run(2, 0, 0.9, 0.0, 2);
}
END_TEST

START_TEST(defaults_are_the_papers)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.05, 1);
    double v = -1.0;
    int64_t i = -1;
    RMUST(r->sam, regopt_regularizer_get_int(r->sam, REGOPT_SAM_DIRECTION, &i));
    ck_assert_int_eq(i, REGOPT_SAM_DIRECTION_GRADIENT);
    RMUST(r->sam, regopt_regularizer_get_double(r->sam, REGOPT_SAM_FRIENDLY_SIGMA, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(r->sam, regopt_regularizer_get_double(r->sam, REGOPT_SAM_FRIENDLY_LAMBDA, &v));
    ck_assert_double_eq(v, 0.9);
    RMUST(r->sam, regopt_regularizer_get_double(r->sam, REGOPT_SAM_VASSO_THETA, &v));
    ck_assert_double_eq(v, 0.9);
    {
        static const char *names[] = {"sam.direction", "sam.friendly_sigma",
                                      "sam.friendly_lambda", "sam.vasso_theta"};
        static const regopt_key want[] = {REGOPT_SAM_DIRECTION, REGOPT_SAM_FRIENDLY_SIGMA,
                                          REGOPT_SAM_FRIENDLY_LAMBDA, REGOPT_SAM_VASSO_THETA};
        size_t k;
        for (k = 0; k < 4; k++) {
            regopt_key key = 0;
            MUST(regopt_key_from_name(names[k], &key));
            ck_assert_int_eq(key, want[k]);
        }
    }
    ck_assert_int_eq(REGOPT_SAM_DIRECTION, 1013);
    ck_assert_int_eq(REGOPT_SAM_VASSO_THETA, 1016);
    vrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 2. Exact reductions                                                      */
/* ======================================================================== */

/* Two runs, one with the variant, one plain SAM, the same bits after each
 * of 6 steps (Adam; ASAM and GSAM optionally). */
static void reduces_to_sam(int dir, regopt_key key, double v, int adaptive, int gsam,
                           int m_rows, size_t rows)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, dir, 0.2, rows);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, rows);
    int k;
    vset(a, key, v);
    vset(a, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(b, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(a, REGOPT_SAM_GSAM, gsam);
    vset(b, REGOPT_SAM_GSAM, gsam);
    vset(a, REGOPT_SAM_M_ROWS, m_rows);
    vset(b, REGOPT_SAM_M_ROWS, m_rows);
    for (k = 0; k < 6; k++) {
        vstep(a);
        vstep(b);
        same_w(a, b, dir == 1 ? "FriendlySAM sigma 0 vs SAM" : "VaSSO theta 1 vs SAM");
        ck_assert(rstat(a->sam, REGOPT_STAT_SAM_ASCENT_NORM) ==
                  rstat(b->sam, REGOPT_STAT_SAM_ASCENT_NORM));
    }
    vrun_close(a);
    vrun_close(b);
}

START_TEST(friendly_sigma_zero_is_sam)
{
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 0, 0, 0, 1);
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 1, 0, 0, 1);
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 0, 1, 0, 1);
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 0, 0, 2, 5);
}
END_TEST

START_TEST(vasso_theta_one_is_sam)
{
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 0, 0, 0, 1);
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 1, 0, 0, 1);
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 0, 1, 0, 1);
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 0, 0, 2, 5);
}
END_TEST

/* m-sharpness: every row of the quadratic host has the same gradient, so
 * each chunk's direction (the state weighted by the chunk's share) points
 * where the whole step's does and the average of the chunks' perturbed
 * gradients is the whole step's: the reference holds for 4 rows in chunks
 * of 1 (the state would be 4 times too heavy without the share). */
START_TEST(directions_with_m_sharpness)
{
    int dir, k;
    for (dir = 1; dir <= 2; dir++) {
        vrun *r = vrun_open(5, REGOPT_SGD, 0.02, dir, 0.1, 4);
        vref f;
        vref_init(&f, 5, dir, 0.1, 0.02);
        vset(r, REGOPT_SAM_M_ROWS, 1);
        norm_scale = 0.25; /* each chunk's gradient is a quarter of g */
        for (k = 0; k < 3; k++) {
            vstep(r);
            vref_step(&f, 1);
            vref_compare(&f, r, 1, dir == 1 ? "FriendlySAM m 1" : "VaSSO m 1", k);
        }
        norm_scale = 1.0;
        vrun_close(r);
    }
}
END_TEST

/* The whole step makes the direction, its new state and its ascent norm in
 * one pass; one chunk of m-sharpness covering every row takes the separate
 * passes (begin, make, norm). Both must give the same bits, with sigma and
 * theta away from their reductions, plain and adaptive. */
START_TEST(fused_direction_is_the_separate_passes)
{
    int dir, ad, k;
    for (dir = 1; dir <= 2; dir++)
        for (ad = 0; ad <= 1; ad++) {
            vrun *a = vrun_open(1000, REGOPT_ADAM, 0.01, dir, 0.1, 1);
            vrun *b = vrun_open(1000, REGOPT_ADAM, 0.01, dir, 0.1, 1);
            vset(a, REGOPT_SAM_ADAPTIVE, ad);
            vset(b, REGOPT_SAM_ADAPTIVE, ad);
            vset(b, REGOPT_SAM_M_ROWS, 1);
            for (k = 0; k < 4; k++) {
                vstep(a);
                vstep(b);
                same_w(a, b, "whole step vs one chunk");
                ck_assert(rstat(a->sam, REGOPT_STAT_SAM_ASCENT_NORM) ==
                          rstat(b->sam, REGOPT_STAT_SAM_ASCENT_NORM));
            }
            vrun_close(a);
            vrun_close(b);
        }
}
END_TEST

/* trainer.threads changes nothing (ro_each_piece / ro_sum_pieces). */
START_TEST(directions_same_bits_on_threads)
{
    int dir, k;
    for (dir = 1; dir <= 2; dir++) {
        vrun *a = vrun_open(300000, REGOPT_SGD, 1e-3, dir, 0.05, 1);
        vrun *b = vrun_open(300000, REGOPT_SGD, 1e-3, dir, 0.05, 1);
        MUST(regopt_trainer_set_int(b->t, REGOPT_TRAINER_THREADS, 3));
        for (k = 0; k < 3; k++) {
            vstep(a);
            vstep(b);
            same_w(a, b, "threads 1 vs 3");
        }
        vrun_close(a);
        vrun_close(b);
    }
}
END_TEST

/* ======================================================================== */
/* 3. Rollback, checkpoints, options                                        */
/* ======================================================================== */

/* A failing callback in each pass of a step (forwards and backwards: 1
 * clean, 2 perturbed; with sam.m_rows 1 over 2 rows, 1 and 3 clean, 2 and
 * 4 perturbed) leaves the checkpoint bytes as they were; then the run
 * continues as one that never failed. */
static void rollback_each_pass(int dir, int m_rows, size_t rows, int wsam, int perturb1)
{
    int calls = m_rows ? 4 : 2, c, back;
    for (back = 0; back < 2; back++)
        for (c = 1; c <= calls; c++) {
            vrun *bad = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, rows);
            vrun *good = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, rows);
            unsigned char *before, *after;
            size_t n1, n2;
            int k;
            vset(bad, REGOPT_SAM_M_ROWS, m_rows);
            vset(good, REGOPT_SAM_M_ROWS, m_rows);
            vset(bad, REGOPT_SAM_WSAM, wsam);
            vset(good, REGOPT_SAM_WSAM, wsam);
            RMUST(bad->sam, regopt_regularizer_set_group(bad->sam, 1, REGOPT_SAM_GROUP_PERTURB,
                                                         perturb1));
            RMUST(good->sam, regopt_regularizer_set_group(good->sam, 1,
                                                          REGOPT_SAM_GROUP_PERTURB, perturb1));
            for (k = 0; k < 2; k++) {
                vstep(bad);
                vstep(good);
            }
            before = save_all(bad, &n1);
            if (back)
                bad->q.fail_backward = bad->q.backwards + c;
            else
                bad->q.fail_forward = bad->q.forwards + c;
            ck_assert_int_eq(regopt_trainer_step(bad->t, &bad->b, 1),
                             back ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD);
            after = save_all(bad, &n2);
            ck_assert_uint_eq(n1, n2);
            ck_assert_msg(memcmp(before, after, n1) == 0,
                          "direction %d, %s call %d: the checkpoint changed", dir,
                          back ? "backward" : "forward", c);
            for (k = 0; k < 3; k++) {
                vstep(bad);
                vstep(good);
            }
            same_w(bad, good, "after continuing");
            free(before);
            free(after);
            vrun_close(bad);
            vrun_close(good);
        }
}

START_TEST(rollback_in_every_pass)
{
    rollback_each_pass(1, 0, 1, 0, 1);
    rollback_each_pass(2, 0, 1, 0, 1);
    rollback_each_pass(1, 1, 2, 0, 1);
    rollback_each_pass(2, 1, 2, 0, 1);
    rollback_each_pass(0, 0, 1, REGOPT_SAM_WSAM_DECOUPLED, 1);
    rollback_each_pass(0, 0, 1, REGOPT_SAM_WSAM_COUPLED, 1);
    rollback_each_pass(1, 1, 2, REGOPT_SAM_WSAM_DECOUPLED, 1);
    rollback_each_pass(0, 0, 1, 0, 0); /* SAM-ON */
    rollback_each_pass(2, 1, 2, REGOPT_SAM_WSAM_COUPLED, 0);
}
END_TEST

/* Resume: 2 steps, save, a new trainer loads (options and params), 3 more
 * steps: the same bits as 5 uninterrupted steps. The new trainer's SAM is
 * created plain: the options bring sam.direction. */
START_TEST(checkpoint_resume_is_exact)
{
    int dir;
    for (dir = 1; dir <= 2; dir++) {
        vrun *a = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *b = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.2, 1);
        unsigned char *buf;
        size_t n, n0;
        int k;
        vset(a, REGOPT_SAM_FRIENDLY_LAMBDA, 0.6);
        vset(b, REGOPT_SAM_FRIENDLY_LAMBDA, 0.6);
        vset(a, REGOPT_SAM_VASSO_THETA, 0.4);
        vset(b, REGOPT_SAM_VASSO_THETA, 0.4);
        TMUST(b->t, regopt_trainer_checkpoint_size(b->t, CK_ALL, &n0));
        for (k = 0; k < 5; k++)
            vstep(a);
        vstep(b);
        vstep(b);
        buf = save_all(b, &n);
        /* the state: 16 bytes and E floats */
        ck_assert_uint_eq(n, n0 + 16 + 4 * 6);
        TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
        for (k = 0; k < 3; k++)
            vstep(c);
        same_w(a, c, "resumed");
        /* and what the load accepted, it saves again */
        free(buf);
        buf = save_all(c, &n);
        free(buf);
        vrun_close(a);
        vrun_close(b);
        vrun_close(c);
    }
}
END_TEST

/* A checkpoint without the state (plain SAM, or before the first SAM step)
 * loads into a FriendlySAM trainer, which then starts afresh: its next
 * step is the first one (m = g). */
START_TEST(checkpoint_without_state_loads)
{
    vrun *plain = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.1, 1);
    vrun *fs = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    vrun *fresh = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    unsigned char *buf;
    size_t n;
    int k;
    vstep(fs); /* fs holds a state, which the load drops */
    buf = save_all(plain, &n);
    TMUST(fs->t, regopt_trainer_load_buffer(fs->t, REGOPT_CHECKPOINT_PARAMS, buf, n));
    for (k = 0; k < 3; k++) {
        vstep(fs);
        vstep(fresh);
        same_w(fs, fresh, "after a load without state");
    }
    free(buf);
    vrun_close(plain);
    vrun_close(fs);
    vrun_close(fresh);
}
END_TEST

/* Switching the direction mid-run: the other mode's state is not used. */
START_TEST(direction_switch_starts_afresh)
{
    vrun *a = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    vref f;
    int k;
    vref_init(&f, 5, 2, 0.1, 0.02);
    vstep(a);
    vset(a, REGOPT_SAM_DIRECTION, 0); /* plain SAM for a step */
    vstep(a);
    vset(a, REGOPT_SAM_DIRECTION, 2);
    /* the reference: a FriendlySAM step, a SAM step, then VaSSO afresh */
    f.dir = 1;
    vref_step(&f, 1);
    f.dir = 0;
    vref_step(&f, 1);
    f.dir = 2;
    f.held = 0;
    for (k = 0; k < 3; k++) {
        vstep(a);
        vref_step(&f, 1);
        vref_compare(&f, a, 1, "switched to VaSSO", k);
    }
    vrun_close(a);
}
END_TEST

START_TEST(bad_values_are_refused)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    static const struct {
        regopt_key key;
        double v;
    } bad[] = {{REGOPT_SAM_DIRECTION, 3},        {REGOPT_SAM_DIRECTION, -1},
               {REGOPT_SAM_FRIENDLY_SIGMA, -0.1}, {REGOPT_SAM_FRIENDLY_SIGMA, 1e4},
               {REGOPT_SAM_FRIENDLY_LAMBDA, -0.1}, {REGOPT_SAM_FRIENDLY_LAMBDA, 1.5},
               {REGOPT_SAM_VASSO_THETA, -0.1},    {REGOPT_SAM_VASSO_THETA, 1.01},
               {REGOPT_SAM_FRIENDLY_SIGMA, NAN},  {REGOPT_SAM_VASSO_THETA, NAN}};
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double before = -1.0, after = -2.0;
        RMUST(r->sam, regopt_regularizer_get_double(r->sam, bad[i].key, &before));
        ck_assert_int_ne(regopt_regularizer_set_double(r->sam, bad[i].key, bad[i].v), REGOPT_OK);
        RMUST(r->sam, regopt_regularizer_get_double(r->sam, bad[i].key, &after));
        ck_assert_double_eq(before, after);
    }
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_DIRECTION, 1.5),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_regularizer_set_double(r->sam, REGOPT_SAM_DIRECTION, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    vstep(r);
    vrun_close(r);
}
END_TEST

/* Out of memory for the direction's buffers: the option is refused and
 * stays as it was. */
START_TEST(direction_buffers_out_of_memory)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    vrun *r;
    regopt_regularizer *s;
    regopt_status st = REGOPT_OK;
    int64_t v = -1;
    long i;
    v_alloc = &a;
    r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.1, 1);
    v_alloc = NULL;
    TMUST(r->t, regopt_trainer_detach(r->t, r->sam));
    for (i = 1; i <= 3; i++) {
        c.fail_at = 0;
        s = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st);
        ck_assert_ptr_nonnull(s);
        TMUST(r->t, regopt_trainer_attach(r->t, s));
        c.fail_at = c.allocs + i;
        ck_assert_int_eq(regopt_regularizer_set_int(s, REGOPT_SAM_DIRECTION, 2),
                         REGOPT_ERR_NO_MEMORY);
        RMUST(s, regopt_regularizer_get_int(s, REGOPT_SAM_DIRECTION, &v));
        ck_assert_int_eq(v, 0);
        c.fail_at = 0;
        RMUST(s, regopt_regularizer_set_int(s, REGOPT_SAM_DIRECTION, 2));
        TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1));
        TMUST(r->t, regopt_trainer_detach(r->t, s));
        MUST(regopt_regularizer_free(s));
    }
    vrun_close(r);
    ck_assert_int_eq(c.allocs, c.frees + 3); /* the three refused allocations */
}
END_TEST

Suite *suite_sam_variants(void)
{
    Suite *s = suite_create("sam_variants");
    TCase *tc = tcase_create("directions");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, friendly_first_steps);
    tcase_add_test(tc, vasso_first_steps);
    tcase_add_test(tc, directions_compose_with_asam);
    tcase_add_test(tc, directions_with_every_k);
    tcase_add_test(tc, defaults_are_the_papers);
    tcase_add_test(tc, friendly_sigma_zero_is_sam);
    tcase_add_test(tc, vasso_theta_one_is_sam);
    tcase_add_test(tc, directions_with_m_sharpness);
    tcase_add_test(tc, directions_same_bits_on_threads);
    tcase_add_test(tc, fused_direction_is_the_separate_passes);
    tcase_add_test(tc, rollback_in_every_pass);
    tcase_add_test(tc, checkpoint_resume_is_exact);
    tcase_add_test(tc, checkpoint_without_state_loads);
    tcase_add_test(tc, direction_switch_starts_afresh);
    tcase_add_test(tc, bad_values_are_refused);
    tcase_add_test(tc, direction_buffers_out_of_memory);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, sam_wsam_tcase());
    suite_add_tcase(s, sam_on_tcase());
    suite_add_tcase(s, sam_looksam_tcase());
    suite_add_tcase(s, sam_momentum_tcase());
    return s;
}
