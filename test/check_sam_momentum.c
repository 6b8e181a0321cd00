/* check_sam_momentum.c — Momentum-SAM (sam.momentum) in
 * suite_sam_variants (the rig: sam_variants_rig.h): the first steps against
 * a double-precision reference, the identities, rollback and resume. */
#include "tests.h"

#include "sam_variants_rig.h"

/* ======================================================================== */
/* 7. Momentum-SAM (sam.momentum)                                           */
/* ======================================================================== */

/* SGD with momentum 0.9 against the double-precision reference: step 0 at
 * w (v = 0), then one pass at w - rho v/||v||, v the momentum buffer. */
START_TEST(msam_first_steps)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.3, 1);
    double w[5], buf[5] = {0}, s2, c, gp;
    char what[64];
    size_t i;
    int k;
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    vset(r, REGOPT_SAM_MOMENTUM, 1);
    for (i = 0; i < 5; i++)
        w[i] = w0_of(i);
    for (k = 0; k < 4; k++) {
        vstep(r);
        for (s2 = 0.0, i = 0; i < 5; i++)
            s2 += buf[i] * buf[i];
        c = k ? -0.3 / (sqrt(s2) + 1e-12) : 0.0;
        for (i = 0; i < 5; i++) {
            gp = h_of(i) * (w[i] + c * buf[i]);
            buf[i] = k ? 0.9 * buf[i] + gp : gp;
            w[i] -= 0.02 * buf[i];
        }
        for (i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "Momentum-SAM step %d w[%zu]", k, i);
            near(r->q.w[i], w[i], 2e-6, 1.0, what);
        }
        ck_assert_int_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), k > 0);
        if (k > 0)
            near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), sqrt(s2), 2e-6, 1.0, "||v||");
    }
    ck_assert_int_eq(r->q.forwards, 4); /* one pass per step */
    ck_assert_int_eq(r->q.backwards, 4);
    vrun_close(r);
}
END_TEST

/* rho 0 (Adam) and SGD without momentum (v stays 0): the base optimizer
 * alone, bit for bit; with the other SAM variants: refused. */
START_TEST(msam_identities)
{
    int k, which;
    for (which = 0; which < 2; which++) {
        vrun *a = vrun_open(7, which ? REGOPT_SGD : REGOPT_ADAM, 0.01, 0, which ? 0.3 : 0.0, 1);
        vrun *b = vrun_open(7, which ? REGOPT_SGD : REGOPT_ADAM, 0.01, 0, 0.2, 1);
        vset(a, REGOPT_SAM_MOMENTUM, 1);
        TMUST(b->t, regopt_trainer_detach(b->t, b->sam));
        for (k = 0; k < 5; k++) {
            vstep(a);
            vstep(b);
            same_w(a, b, "Momentum-SAM with v = 0 or rho 0 vs the base optimizer");
        }
        vset(a, REGOPT_SAM_ADAPTIVE, 1);
        ck_assert_int_eq(regopt_trainer_step(a->t, &a->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(a->t), "sam.momentum"));
        vrun_close(a);
        vrun_close(b);
    }
}
END_TEST

/* A failing forward or backward in the one (perturbed) pass: the
 * checkpoint bytes (weights included) as they were; then as a good run. */
START_TEST(msam_rollback_and_resume)
{
    int back;
    for (back = 0; back < 2; back++) {
        vrun *bad = vrun_open(6, REGOPT_ADAM, 0.01, 0, 1.0, 1);
        vrun *good = vrun_open(6, REGOPT_ADAM, 0.01, 0, 1.0, 1);
        vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.05, 1);
        unsigned char *before, *after;
        size_t n1, n2;
        int k;
        vset(bad, REGOPT_SAM_MOMENTUM, 1);
        vset(good, REGOPT_SAM_MOMENTUM, 1);
        for (k = 0; k < 2; k++) {
            vstep(bad);
            vstep(good);
        }
        before = save_all(bad, &n1);
        if (back)
            bad->q.fail_backward = bad->q.backwards + 1;
        else
            bad->q.fail_forward = bad->q.forwards + 1;
        ck_assert_int_eq(regopt_trainer_step(bad->t, &bad->b, 1),
                         back ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD);
        after = save_all(bad, &n2);
        ck_assert_uint_eq(n1, n2);
        ck_assert_msg(memcmp(before, after, n1) == 0, "Momentum-SAM: the checkpoint changed");
        /* resume from the bytes before the failure, in a fresh trainer */
        TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, before, n1));
        for (k = 0; k < 3; k++) {
            vstep(bad);
            vstep(good);
            vstep(c);
        }
        same_w(bad, good, "after continuing");
        same_w(c, good, "resumed");
        free(before);
        free(after);
        vrun_close(bad);
        vrun_close(good);
        vrun_close(c);
    }
}
END_TEST

TCase *sam_momentum_tcase(void)
{
    TCase *tc = tcase_create("momentum_sam");
    tcase_add_test(tc, msam_first_steps);
    tcase_add_test(tc, msam_identities);
    tcase_add_test(tc, msam_rollback_and_resume);
    return tc;
}
