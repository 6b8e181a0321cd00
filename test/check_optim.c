/* check_optim.c — the base optimizers (SGD, Adam, AdamW, RAdam), the
 * learning-rate schedules, per-group options, global gradient clipping and
 * the optimizer option bounds.
 *
 * Every trajectory is compared with an independent double-precision
 * reference written in optim_rig.h from the update formulas documented in
 * regopt.h (torch.optim semantics). The library computes in float32, so
 * parameters are compared with a relative tolerance of 1e-5.
 *
 * The host is a diagonal quadratic: two tensors "a" (3 floats, group 0) and
 * "b" (2 floats, group 1), whose backward ADDS g_i = H_i * w_i + C_i computed
 * from the current parameters, so each trajectory depends on the optimizer.
 * The outputs and the loss (a user callback) are identically zero. */
#include "optim_rig.h"

/* ======================================================================== */
/* SGD                                                                      */
/* ======================================================================== */

START_TEST(test_sgd_plain)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_default_lr)
{
    ref_cfg c = cfg_torch(REGOPT_SGD); /* lr 1e-3, nothing else */
    run_compare(&c, 6, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_momentum)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.05;
    c.momentum = 0.9;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* torch starts the buffer at the first gradient itself, not at
 * (1-dampening)*g: with dampening the first step is a full SGD step. */
START_TEST(test_sgd_dampening)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.8;
    c.dampening = 0.5;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_nesterov)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.05;
    c.momentum = 0.9;
    c.nesterov = 1;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.wd = 0.2;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_momentum_weight_decay_nesterov)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.05;
    c.wd = 0.3;
    c.momentum = 0.7;
    c.nesterov = 1;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* Nesterov needs momentum > 0 and dampening 0; the setter accepts the flag
 * alone (cross-key checks are order-free) and the step refuses it without
 * touching anything. */
START_TEST(test_sgd_nesterov_needs_momentum)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    int i;
    c.lr = 0.1;
    c.nesterov = 1; /* momentum 0 */
    rig_init(&r, &c);
    ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
    set_opt(r.opt, REGOPT_OPT_MOMENTUM, 0.9);
    set_opt(r.opt, REGOPT_OPT_DAMPENING, 0.5);
    ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
    for (i = 0; i < NP; i++)
        ck_assert_msg(*host_w(&r.h, i) == (float)W_INIT[i], "element %d changed", i);
    ck_assert_int_eq(stat_step(&r), 0);
    ck_assert_int_eq(r.h.forward_calls, 0);
    /* a valid combination now steps exactly like the reference */
    set_opt(r.opt, REGOPT_OPT_DAMPENING, 0.0);
    r.h.dirty_grad = 0;
    c.momentum = 0.9;
    ref_init(&s);
    step_both(&r, &c, &s, 1);
    step_both(&r, &c, &s, 2);
    rig_free(&r);
}
END_TEST

/* ======================================================================== */
/* Adam, AdamW, RAdam                                                       */
/* ======================================================================== */

START_TEST(test_adam_defaults)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

/* A large eps makes its position (outside sqrt(v)/sqrt(1-b2^t)) visible. */
START_TEST(test_adam_betas_eps)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.beta1 = 0.8;
    c.beta2 = 0.95;
    c.eps = 0.05;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adam_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.wd = 0.3;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adam_amsgrad)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM), plain;
    ref_state with, without;
    int i, differs = 0;
    c.lr = 0.1;
    c.beta2 = 0.6; /* short memory: v falls as |g| shrinks, so max(v) matters */
    c.amsgrad = 1;
    run_compare(&c, 10, NULL, &with);
    plain = c;
    plain.amsgrad = 0;
    ref_run(&plain, 10, &without);
    for (i = 0; i < NP; i++)
        differs |= fabs(with.w[i] - without.w[i]) > 1e-3;
    ck_assert_msg(differs, "the AMSGrad maximum never mattered in this run");
}
END_TEST

/* torch's first Adam step is lr * g/(|g| + eps*sqrt(1-b2)) ~ lr*sign(g),
 * whatever beta2 is: m_hat = g and v_hat = g^2 exactly. A large lr makes
 * the displacement measurable to ~1e-7 relative in float32. */
START_TEST(test_adam_first_step_is_lr_sign)
{
    static const regopt_optimizer_kind kinds[2] = {REGOPT_ADAM, REGOPT_ADAMW};
    static const double beta2s[3] = {0.9, 0.999, 0.9999};
    int j, b, i;
    for (j = 0; j < 2; j++) {
        for (b = 0; b < 3; b++) {
            ref_cfg c = cfg_torch(kinds[j]);
            rig r;
            c.lr = 0.5;
            c.wd = 0.0;
            c.beta2 = beta2s[b];
            rig_init(&r, &c);
            ck_assert_int_eq(rig_step(&r), REGOPT_OK);
            for (i = 0; i < NP; i++) {
                double g = host_gradient(i, W_INIT[i]);
                double want = c.lr * g / (fabs(g) + c.eps * sqrt(1.0 - c.beta2));
                double got = W_INIT[i] - *host_w(&r.h, i);
                ck_assert_msg(close_to(got, want, 1e-6, 0.0),
                              "kind %d, beta2 %g, element %d: first step moved %.9g, "
                              "expected %.9g (rel %.3g)", (int)kinds[j], c.beta2, i, got,
                              want, (got - want) / want);
            }
            rig_free(&r);
        }
    }
}
END_TEST

/* AdamW's default weight decay is 1e-2 (decoupled). */
START_TEST(test_adamw_defaults)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adamw_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    c.wd = 0.5;
    c.eps = 0.01;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adamw_amsgrad)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.1;
    c.wd = 0.2;
    c.beta2 = 0.6;
    c.amsgrad = 1;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* With beta2 = 0.999, rho_t <= 5 for t <= 5 and > 5 from t = 6 on. */
START_TEST(test_radam_defaults)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    ref_state s;
    c.lr = 0.05;
    run_compare(&c, 10, NULL, &s);
    ck_assert_int_eq(s.unrectified, 5);
    ck_assert_int_eq(s.rectified, 5);
}
END_TEST

START_TEST(test_radam_weight_decay_eps)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    ref_state s;
    c.lr = 0.05;
    c.wd = 0.2;
    c.beta1 = 0.8;
    c.eps = 0.05;
    run_compare(&c, 10, NULL, &s);
    ck_assert_int_gt(s.unrectified, 0);
    ck_assert_int_gt(s.rectified, 0);
}
END_TEST

START_TEST(test_radam_beta2)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    ref_state s;
    c.lr = 0.05;
    c.beta2 = 0.9; /* rho_inf = 19 */
    run_compare(&c, 12, NULL, &s);
    ck_assert_int_gt(s.unrectified, 0);
    ck_assert_int_gt(s.rectified, 0);
}
END_TEST

/* ======================================================================== */
/* The suite                                                                */
/* ======================================================================== */

Suite *suite_optim(void)
{
    Suite *s = suite_create("optim");
    TCase *sgd = tcase_create("sgd");
    TCase *adam = tcase_create("adam");

    tcase_add_test(sgd, test_sgd_plain);
    tcase_add_test(sgd, test_sgd_default_lr);
    tcase_add_test(sgd, test_sgd_momentum);
    tcase_add_test(sgd, test_sgd_dampening);
    tcase_add_test(sgd, test_sgd_nesterov);
    tcase_add_test(sgd, test_sgd_weight_decay);
    tcase_add_test(sgd, test_sgd_momentum_weight_decay_nesterov);
    tcase_add_test(sgd, test_sgd_nesterov_needs_momentum);
    suite_add_tcase(s, sgd);

    tcase_add_test(adam, test_adam_defaults);
    tcase_add_test(adam, test_adam_betas_eps);
    tcase_add_test(adam, test_adam_weight_decay);
    tcase_add_test(adam, test_adam_amsgrad);
    tcase_add_test(adam, test_adam_first_step_is_lr_sign);
    tcase_add_test(adam, test_adamw_defaults);
    tcase_add_test(adam, test_adamw_weight_decay);
    tcase_add_test(adam, test_adamw_amsgrad);
    tcase_add_test(adam, test_radam_defaults);
    tcase_add_test(adam, test_radam_weight_decay_eps);
    tcase_add_test(adam, test_radam_beta2);
    suite_add_tcase(s, adam);

    optim_schedule_tcases(s);
    optim_clip_tcases(s);
    optim_keys_tcases(s);
    optim_nonfinite_tcases(s);
    return s;
}
