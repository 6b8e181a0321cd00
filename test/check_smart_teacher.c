/* check_smart_teacher.c — the momentum Bregman proximal point term's EMA
 * teacher against a double reference: beta, beta_late, bregman.switch and
 * bregman.switch_step (the rig: smart_rig.h). */
#include "tests.h"

#include "smart_rig.h"
#include "smart_ref.h"

/* ======================================================================== */
/* 5. The Bregman teacher                                                   */
/* ======================================================================== */

/* bregman.switch_step left at its default (not set at all) */
#define SW_UNSET INT64_MIN

/* EMA of the weights against a double reference: w~_0 = w_0, and after the
 * update that makes step u (1-based), w~ = beta_u w~ + (1 - beta_u) w_u with
 * beta_u = beta for u <= switch * total_steps, beta_late after -- or, with
 * bregman.switch_step = n >= 0, beta for u <= n (the updates of steps
 * 0 .. n-1), beta_late after, whatever total_steps is. switch_step -1 is set
 * explicitly (after 2, to see that -1 really restores the fraction rule). */
static void check_teacher_at(double beta, double beta_late, double sw, int64_t total,
                             int with_smart, int64_t switch_step)
{
    const size_t d = 2, k = 3, count = 2, nw = k * d + k;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    double ema[SW];
    float before[SW];
    sm_set s;
    int step;
    size_t i;
    sm_bregman(r, 1.0, beta);
    sm_rset(r->breg, REGOPT_BREGMAN_BETA_LATE, beta_late);
    sm_rset(r->breg, REGOPT_BREGMAN_SWITCH, sw);
    if (switch_step != SW_UNSET) {
        int64_t v = -12345;
        if (switch_step == -1)
            RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_SWITCH_STEP, 2));
        RMUST(r->breg,
              regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_SWITCH_STEP, switch_step));
        RMUST(r->breg, regopt_regularizer_get_int(r->breg, REGOPT_BREGMAN_SWITCH_STEP, &v));
        ck_assert_int_eq(v, switch_step);
    }
    SM_MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_TOTAL_STEPS, total));
    if (with_smart)
        sm_smart(r, 1.0, 0.1, 0.01, 0.01, 1, REGOPT_SMART_NORM_INF, 0);
    for (step = 0; step < 7; step++) {
        double bu;
        int late;
        memcpy(before, r->h.A, sizeof(float) * k * d);
        memcpy(before + k * d, r->h.b, sizeof(float) * k);
        if (step == 0)
            for (i = 0; i < nw; i++)
                ema[i] = before[i];
        sm_fill(&s, count, 2, 1, d, k, 0, 0, 10 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
        /* the teacher forwards come first, once per micro-batch, and see
           the EMA weights; the student's are back bit-exactly after them */
        for (i = 0; i < (size_t)r->h.nrec; i++) {
            const sm_rec *c = &r->h.rec[i];
            size_t j;
            if (i < count) {
                ck_assert(!c->backward && c->slot == 0 && c->micro_batch == i);
                ck_assert_uint_eq(c->flags, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD);
                for (j = 0; j < k * d; j++)
                    sm_near(c->w[j], ema[j], 2e-6, 1.0, "teacher A", (int)(10 * step + j));
                for (j = 0; j < k; j++)
                    sm_near(c->w[SK * SD + j], ema[k * d + j], 2e-6, 1.0, "teacher b",
                            (int)(10 * step + j));
                if (step == 0 || beta == 0.0) /* the teacher is the student itself */
                    ck_assert_msg(memcmp(c->w, before, sizeof(float) * k * d) == 0,
                                  "step %d: teacher differs from w", step);
            } else {
                ck_assert_msg(!(c->flags & REGOPT_PASS_TEACHER), "teacher pass at call %zu", i);
                if (!c->backward && !(c->flags & REGOPT_PASS_NO_GRAD))
                    ck_assert_msg(memcmp(c->w, before, sizeof(float) * k * d) == 0 &&
                                      memcmp(c->w + SK * SD, before + k * d,
                                             sizeof(float) * k) == 0,
                                  "step %d call %zu: student weights not restored", step, i);
            }
        }
        if (beta == 0.0 || step == 0)
            ck_assert_double_eq(rstat(r->breg, REGOPT_STAT_BREGMAN_D), 0.0);
        if (switch_step != SW_UNSET && switch_step >= 0)
            late = step >= switch_step;
        else
            late = total > 0 && (double)step >= sw * (double)total;
        bu = late ? beta_late : beta;
        sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_BETA), bu, 1e-7, 1e-9, "stat.bregman_beta",
                step);
        if (switch_step != SW_UNSET) /* the beta in force, exactly (the EMA runs in double) */
            ck_assert_msg(rstat(r->breg, REGOPT_STAT_BREGMAN_BETA) == bu,
                          "switch_step %lld, step %d: bregman.beta_used %.17g, want %s %.17g",
                          (long long)switch_step, step, rstat(r->breg, REGOPT_STAT_BREGMAN_BETA),
                          late ? "beta_late" : "beta", bu);
        for (i = 0; i < k * d; i++)
            ema[i] = bu * ema[i] + (1.0 - bu) * r->h.A[i];
        for (i = 0; i < k; i++)
            ema[k * d + i] = bu * ema[k * d + i] + (1.0 - bu) * r->h.b[i];
    }
    sm_close(r);
}

static void check_teacher(double beta, double beta_late, double sw, int64_t total,
                          int with_smart)
{
    check_teacher_at(beta, beta_late, sw, total, with_smart, SW_UNSET);
}

START_TEST(teacher_ema) { check_teacher(0.6, 0.6, 0.1, 0, 0); }
END_TEST
START_TEST(teacher_beta_switch) { check_teacher(0.6, 0.2, 0.3, 10, 1); }
END_TEST
START_TEST(teacher_beta_switch_default_fraction) { check_teacher(0.5, 0.9, 0.1, 20, 0); }
END_TEST
START_TEST(teacher_beta_zero_is_previous_weights) { check_teacher(0.0, 0.0, 0.1, 0, 1); }
END_TEST

/* bregman.switch_step: with total_steps 0 (where the fraction rule never
 * switches) steps 0..2 use beta and steps 3.. beta_late. */
START_TEST(teacher_switch_step_without_total_steps)
{
    check_teacher_at(0.6, 0.2, 0.1, 0, 0, 3);
    check_teacher_at(0.5, 0.9, 0.1, 0, 1, 3); /* with SMART, beta_late > beta */
}
END_TEST

/* switch_step 0: beta_late from the first update on. */
START_TEST(teacher_switch_step_zero) { check_teacher_at(0.6, 0.2, 0.1, 0, 0, 0); }
END_TEST

/* switch_step wins over the fraction: total 10, switch 0.5 would switch at
 * step 5; switch_step 2 switches at step 2 (and 6 would at 6). */
START_TEST(teacher_switch_step_overrides_fraction)
{
    check_teacher_at(0.6, 0.2, 0.5, 10, 0, 2);
    check_teacher_at(0.6, 0.2, 0.3, 10, 0, 6);
}
END_TEST

/* switch_step -1 (the default, here set back after 2): the fraction rule,
 * switching at 0.5 * 10 = step 5; with total_steps 0, never. */
START_TEST(teacher_switch_step_minus_one_is_fraction_rule)
{
    check_teacher_at(0.6, 0.2, 0.5, 10, 0, -1);
    check_teacher_at(0.6, 0.2, 0.5, 0, 0, -1);
}
END_TEST

Suite *suite_smart_teacher(void)
{
    Suite *s = suite_create("smart_teacher");
    TCase *tc = tcase_create("teacher");
    tcase_add_test(tc, teacher_ema);
    tcase_add_test(tc, teacher_beta_switch);
    tcase_add_test(tc, teacher_beta_switch_default_fraction);
    tcase_add_test(tc, teacher_beta_zero_is_previous_weights);
    tcase_add_test(tc, teacher_switch_step_without_total_steps);
    tcase_add_test(tc, teacher_switch_step_zero);
    tcase_add_test(tc, teacher_switch_step_overrides_fraction);
    tcase_add_test(tc, teacher_switch_step_minus_one_is_fraction_rule);
    suite_add_tcase(s, tc);
    return s;
}
