/* check_optim_clip.c — suite optim: global gradient-norm clipping and its
 * statistics, against the reference of optim_rig.h. */
#include "optim_rig.h"

/* ======================================================================== */
/* Gradient-norm clipping                                                   */
/* ======================================================================== */

/* The first step's gradient is known in closed form: g = H*W_INIT + C. */
static double initial_grad_norm(void)
{
    double s = 0.0;
    int i;
    for (i = 0; i < NP; i++)
        s += host_gradient(i, W_INIT[i]) * host_gradient(i, W_INIT[i]);
    return sqrt(s);
}

START_TEST(test_clip_first_step_stats)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    double norm = initial_grad_norm(); /* g0 = 1.25, -1.5, 1.125, 1.875, 0.3125 */
    double want_scale = 0.5 / (norm + 1e-6);
    int i;
    ck_assert(close_to(norm, sqrt(8.69140625), 1e-15, 0.0));
    c.lr = 0.1;
    c.clip = 0.5;
    rig_init(&r, &c);
    ck_assert_int_eq(rig_step(&r), REGOPT_OK);
    ck_assert_msg(close_to(stat(&r, REGOPT_STAT_GRAD_NORM), norm, 1e-7, 0.0),
                  "grad_norm %.9g, expected %.9g", stat(&r, REGOPT_STAT_GRAD_NORM), norm);
    ck_assert_msg(close_to(stat(&r, REGOPT_STAT_CLIP_SCALE), want_scale, 1e-7, 0.0),
                  "clip_scale %.9g, expected %.9g", stat(&r, REGOPT_STAT_CLIP_SCALE),
                  want_scale);
    /* w1 = w0 - lr * coef * g0 */
    for (i = 0; i < NP; i++) {
        double want = W_INIT[i] - 0.1 * want_scale * host_gradient(i, W_INIT[i]);
        ck_assert_msg(close_to(*host_w(&r.h, i), want, PARAM_REL, PARAM_ABS),
                      "element %d: %.9g, expected %.9g", i, (double)*host_w(&r.h, i), want);
    }
    rig_free(&r);
}
END_TEST

START_TEST(test_clip_sgd_trajectory)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.5;
    c.clip = 1.0;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* The clipping factor scales the gradient only, not the weight-decay term. */
START_TEST(test_clip_sgd_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.wd = 0.5;
    c.clip = 0.3;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_clip_adam)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.wd = 0.1;
    c.eps = 0.05; /* with a large eps the scaled gradient shows in the step */
    c.clip = 0.2;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_clip_radam)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    c.lr = 0.05;
    c.clip = 0.5;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* A limit above the norm: factor exactly 1 and plain SGD. */
START_TEST(test_clip_inactive)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    int k;
    c.lr = 0.1;
    c.clip = 100.0;
    rig_init(&r, &c);
    ref_init(&s);
    for (k = 1; k <= 6; k++) {
        step_both(&r, &c, &s, k);
        ck_assert(stat(&r, REGOPT_STAT_CLIP_SCALE) == 1.0);
    }
    rig_free(&r);
}
END_TEST

/* No clipping (the default): factor 1, and the norm is still reported. */
START_TEST(test_clip_off_reports_norm)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    rig r;
    ref_state s;
    rig_init(&r, &c);
    ref_init(&s);
    step_both(&r, &c, &s, 1);
    ck_assert(stat(&r, REGOPT_STAT_CLIP_SCALE) == 1.0);
    ck_assert(close_to(stat(&r, REGOPT_STAT_GRAD_NORM), initial_grad_norm(), 1e-7, 0.0));
    rig_free(&r);
}
END_TEST

/* regopt.h: "Before the first step they read 0." */
START_TEST(test_stats_zero_before_first_step)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    rig_init(&r, &c);
    ck_assert_int_eq(stat_step(&r), 0);
    ck_assert_msg(stat(&r, REGOPT_STAT_LR) == 0.0, "stat.lr %g", stat(&r, REGOPT_STAT_LR));
    ck_assert_msg(stat(&r, REGOPT_STAT_GRAD_NORM) == 0.0, "stat.grad_norm %g",
                  stat(&r, REGOPT_STAT_GRAD_NORM));
    ck_assert_msg(stat(&r, REGOPT_STAT_CLIP_SCALE) == 0.0,
                  "stat.clip_scale reads %g before the first step, header says 0",
                  stat(&r, REGOPT_STAT_CLIP_SCALE));
    rig_free(&r);
}
END_TEST

void optim_clip_tcases(Suite *s)
{
    TCase *clip = tcase_create("clip");
    tcase_add_test(clip, test_clip_first_step_stats);
    tcase_add_test(clip, test_clip_sgd_trajectory);
    tcase_add_test(clip, test_clip_sgd_weight_decay);
    tcase_add_test(clip, test_clip_adam);
    tcase_add_test(clip, test_clip_radam);
    tcase_add_test(clip, test_clip_inactive);
    tcase_add_test(clip, test_clip_off_reports_norm);
    tcase_add_test(clip, test_stats_zero_before_first_step);
    suite_add_tcase(s, clip);
}
