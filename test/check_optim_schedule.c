/* check_optim_schedule.c — suite optim: the learning-rate schedules (warmup,
 * linear, cosine), a learning rate changed between steps, and per-group
 * options, each trajectory against the reference of optim_rig.h. */
#include "optim_rig.h"

/* ======================================================================== */
/* Schedules                                                                */
/* ======================================================================== */

/* W = 3: f = 0, 1/3, 2/3, then 1. */
START_TEST(test_schedule_constant_warmup)
{
    static const double f[8] = {0.0, 1.0 / 3.0, 2.0 / 3.0, 1, 1, 1, 1, 1};
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.warmup = 3;
    run_compare(&c, 8, f, NULL);
}
END_TEST

/* W = 2, T = 8, r = 0.1: f(t) = t/2 for t < 2, then 0.1 + 0.9*(8-t)/6,
 * held at the floor 0.1 after T. */
START_TEST(test_schedule_linear_warmup)
{
    static const double f[10] = {0.0, 0.5, 1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1, 0.1};
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.5;
    c.schedule = REGOPT_SCHEDULE_LINEAR;
    c.warmup = 2;
    c.total = 8;
    c.min_lr_ratio = 0.1;
    run_compare(&c, 10, f, NULL);
}
END_TEST

/* W = 0, T = 4, r = 0: the first update uses the full lr, and after T the
 * lr is 0, so plain SGD stops moving. */
START_TEST(test_schedule_linear_no_warmup)
{
    static const double f[6] = {1.0, 0.75, 0.5, 0.25, 0.0, 0.0};
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.2;
    c.schedule = REGOPT_SCHEDULE_LINEAR;
    c.total = 4;
    run_compare(&c, 6, f, NULL);
}
END_TEST

/* W = 2, T = 8, r = 0.2: f = 0, 0.5, then 0.2 + 0.8*0.5*(1 + cos(pi*(t-2)/6)),
 * held at 0.2 after T. Through Adam, so the moments see lr-free updates. */
START_TEST(test_schedule_cosine_warmup)
{
    double f[11];
    int t;
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    f[0] = 0.0;
    f[1] = 0.5;
    for (t = 2; t <= 8; t++)
        f[t] = 0.2 + 0.8 * 0.5 * (1.0 + cos(PI * (t - 2) / 6.0));
    f[9] = f[10] = 0.2;
    ck_assert(close_to(f[5], 0.6, 1e-15, 0.0)); /* halfway: midpoint of [r, 1] */
    c.lr = 0.05;
    c.schedule = REGOPT_SCHEDULE_COSINE;
    c.warmup = 2;
    c.total = 8;
    c.min_lr_ratio = 0.2;
    run_compare(&c, 11, f, NULL);
}
END_TEST

START_TEST(test_schedule_cosine_no_warmup_radam)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    c.lr = 0.05;
    c.schedule = REGOPT_SCHEDULE_COSINE;
    c.total = 7;
    run_compare(&c, 9, NULL, NULL);
}
END_TEST

/* With W > 0 the first update uses lr 0: the parameters do not move at all
 * (the Adam moments still advance, which the next steps reveal). */
START_TEST(test_schedule_warmup_first_update_is_zero)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    rig r;
    ref_state s;
    int i, k;
    c.lr = 0.05;
    c.warmup = 4;
    rig_init(&r, &c);
    ref_init(&s);
    step_both(&r, &c, &s, 1);
    ck_assert(stat(&r, REGOPT_STAT_LR) == 0.0);
    for (i = 0; i < NP; i++)
        ck_assert_msg(*host_w(&r.h, i) == (float)W_INIT[i], "element %d moved", i);
    for (k = 2; k <= 7; k++)
        step_both(&r, &c, &s, k);
    expect_host_protocol(&r, 7);
    rig_free(&r);
}
END_TEST

/* LINEAR and COSINE need total_steps > 0: the step fails before any pass
 * and changes nothing; after a successful step as well. */
START_TEST(test_schedule_needs_total_steps)
{
    static const int kinds[2] = {REGOPT_SCHEDULE_LINEAR, REGOPT_SCHEDULE_COSINE};
    int j, i;
    for (j = 0; j < 2; j++) {
        ref_cfg c = cfg_torch(REGOPT_SGD);
        rig r;
        ref_state s;
        float before[NP];
        c.lr = 0.1;
        rig_init(&r, &c);
        ref_init(&s);
        step_both(&r, &c, &s, 1); /* CONSTANT: fine */
        set_opt(r.opt, REGOPT_OPT_SCHEDULE, kinds[j]);
        for (i = 0; i < NP; i++)
            before[i] = *host_w(&r.h, i);
        ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
        for (i = 0; i < NP; i++)
            ck_assert_msg(*host_w(&r.h, i) == before[i], "schedule %d: element %d changed",
                          kinds[j], i);
        ck_assert_int_eq(stat_step(&r), 1);
        ck_assert_int_eq(r.h.forward_calls, 1);
        ck_assert_int_eq(r.h.backward_calls, 1);
        /* with total_steps the same trainer goes on (t = 1 completed) */
        set_opt(r.opt, REGOPT_OPT_TOTAL_STEPS, 5);
        c.schedule = kinds[j];
        c.total = 5;
        step_both(&r, &c, &s, 2);
        step_both(&r, &c, &s, 3);
        rig_free(&r);
    }
}
END_TEST

START_TEST(test_schedule_fresh_trainer_needs_total_steps)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    rig r;
    int i;
    c.schedule = REGOPT_SCHEDULE_COSINE;
    c.warmup = 2; /* warmup alone is not enough */
    rig_init(&r, &c);
    ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
    for (i = 0; i < NP; i++)
        ck_assert(*host_w(&r.h, i) == (float)W_INIT[i]);
    ck_assert_int_eq(stat_step(&r), 0);
    ck_assert_int_eq(r.h.forward_calls, 0);
    rig_free(&r);
}
END_TEST

/* A learning rate changed between steps applies from the next step. */
START_TEST(test_lr_change_between_steps)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    int k;
    c.lr = 0.1;
    c.momentum = 0.5;
    rig_init(&r, &c);
    ref_init(&s);
    for (k = 1; k <= 3; k++)
        step_both(&r, &c, &s, k);
    c.lr = 0.02;
    set_opt(r.opt, REGOPT_OPT_LR, c.lr);
    for (k = 4; k <= 6; k++)
        step_both(&r, &c, &s, k);
    rig_free(&r);
}
END_TEST

/* ======================================================================== */
/* Per-group options                                                        */
/* ======================================================================== */

START_TEST(test_group_lr_scale_sgd)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.9;
    c.lr_scale[1] = 0.25;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

/* Global decay 0.2; group 1 opts out with 0 (biases). */
START_TEST(test_group_no_decay_sgd)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.wd = 0.2;
    c.group_wd[1] = 0.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_decay_override_sgd)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.5;
    c.wd = 0.05;
    c.group_wd[1] = 0.8;
    c.lr_scale[1] = 2.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_adam)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.wd = 0.3;
    c.group_wd[1] = 0.0;
    c.lr_scale[1] = 2.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

/* AdamW's decoupled decay uses the group's lr (lr*lr_scale) and wd. */
START_TEST(test_group_adamw)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    c.wd = 0.4;
    c.lr_scale[0] = 0.5;
    c.group_wd[1] = 0.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_adamw_decay_scaled)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    c.wd = 0.1;
    c.group_wd[1] = 0.9;
    c.lr_scale[1] = 3.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_radam)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    c.lr = 0.05;
    c.lr_scale[1] = 0.5;
    c.group_wd[1] = 0.2;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* lr_scale 0 freezes a group exactly, even under AdamW decay. */
START_TEST(test_group_lr_scale_zero_freezes)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    rig r;
    ref_state s;
    int i, k;
    c.lr = 0.05;
    c.wd = 0.5;
    c.lr_scale[1] = 0.0;
    rig_init(&r, &c);
    ref_init(&s);
    for (k = 1; k <= 6; k++)
        step_both(&r, &c, &s, k);
    for (i = NA; i < NP; i++)
        ck_assert_msg(*host_w(&r.h, i) == (float)W_INIT[i], "frozen element %d moved", i);
    for (i = 0; i < NA; i++)
        ck_assert_msg(*host_w(&r.h, i) != (float)W_INIT[i], "element %d did not move", i);
    rig_free(&r);
}
END_TEST

/* Setting a group's decay back to -1 inherits the optimizer's again. */
START_TEST(test_group_decay_back_to_inherit)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    double v = 0.0;
    int k;
    c.lr = 0.1;
    c.wd = 0.25;
    rig_init(&r, &c);
    set_group(r.opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.7);
    set_group(r.opt, 1, REGOPT_GROUP_WEIGHT_DECAY, -1.0);
    ck_assert_int_eq(regopt_optimizer_get_group(r.opt, 1, REGOPT_GROUP_WEIGHT_DECAY, &v),
                     REGOPT_OK);
    ck_assert(v == -1.0);
    ref_init(&s);
    for (k = 1; k <= 5; k++)
        step_both(&r, &c, &s, k);
    rig_free(&r);
}
END_TEST

void optim_schedule_tcases(Suite *s)
{
    TCase *sched = tcase_create("schedule");
    TCase *groups = tcase_create("groups");
    tcase_add_test(sched, test_schedule_constant_warmup);
    tcase_add_test(sched, test_schedule_linear_warmup);
    tcase_add_test(sched, test_schedule_linear_no_warmup);
    tcase_add_test(sched, test_schedule_cosine_warmup);
    tcase_add_test(sched, test_schedule_cosine_no_warmup_radam);
    tcase_add_test(sched, test_schedule_warmup_first_update_is_zero);
    tcase_add_test(sched, test_schedule_needs_total_steps);
    tcase_add_test(sched, test_schedule_fresh_trainer_needs_total_steps);
    tcase_add_test(sched, test_lr_change_between_steps);
    suite_add_tcase(s, sched);

    tcase_add_test(groups, test_group_lr_scale_sgd);
    tcase_add_test(groups, test_group_no_decay_sgd);
    tcase_add_test(groups, test_group_decay_override_sgd);
    tcase_add_test(groups, test_group_adam);
    tcase_add_test(groups, test_group_adamw);
    tcase_add_test(groups, test_group_adamw_decay_scaled);
    tcase_add_test(groups, test_group_radam);
    tcase_add_test(groups, test_group_lr_scale_zero_freezes);
    tcase_add_test(groups, test_group_decay_back_to_inherit);
    suite_add_tcase(s, groups);
}
