/* check_trainer.c — the step: call order and flags, seeds, gradient
 * accumulation, allocation, evaluation, frozen tensors and statistics;
 * the rollback guarantee is in check_trainer_rollback.c, every bad input
 * in check_trainer_inputs.c. */
#include "trainer_rig.h"

/* ---- call order, flags, seeds ------------------------------------------ */

START_TEST(one_forward_one_backward_per_micro_batch)
{
    run *r = run_open(REGOPT_SGD, NULL);
    double f = 0, b = 0;
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 3), REGOPT_OK);
    ck_assert_int_eq(r->h.ncalls, 6);
    {
        int i;
        for (i = 0; i < 6; i++) {
            const th_call *c = &r->h.calls[i];
            ck_assert_int_eq(c->backward, i % 2);
            ck_assert_int_eq(c->slot, 0);
            ck_assert_uint_eq(c->micro_batch, (size_t)(i / 2));
            ck_assert_uint_eq(c->rows, N);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
        }
    }
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_FORWARD_CALLS, &f), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_BACKWARD_CALLS, &b), REGOPT_OK);
    ck_assert_double_eq(f, 3.0);
    ck_assert_double_eq(b, 3.0);
    ck_assert_int_eq(steps_of(r), 1);
    run_close(r);
}
END_TEST

START_TEST(gradients_are_zeroed_by_the_library)
{
    run *r = run_open(REGOPT_SGD, NULL);
    size_t i;
    for (i = 0; i < TH_D * TH_K; i++)
        r->h.gw[i] = 1e6f; /* garbage a host may leave behind */
    must_step(r, 0);
    ck_assert_float_eq(r->h.calls[1].grad_at_entry, 0.0f);
    run_close(r);
}
END_TEST

START_TEST(seeds_are_distinct_and_reproducible)
{
    run *a = run_open(REGOPT_SGD, NULL), *b = run_open(REGOPT_SGD, NULL);
    int i, j;
    uint64_t sa[6], sb[6];
    ck_assert_int_eq(regopt_trainer_set_int(a->t, REGOPT_TRAINER_SEED, 1234), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_set_int(b->t, REGOPT_TRAINER_SEED, 1234), REGOPT_OK);
    for (i = 0; i < 3; i++) { /* 3 steps of 2 micro-batches */
        ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 2), REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_step(b->t, b->b, 2), REGOPT_OK);
    }
    for (i = 0; i < 6; i++) {
        sa[i] = a->h.calls[2 * i].seed;
        sb[i] = b->h.calls[2 * i].seed;
        ck_assert(sa[i] == sb[i]);
        for (j = 0; j < i; j++)
            ck_assert_msg(sa[i] != sa[j], "seed of pass %d repeats pass %d", i, j);
    }
    /* another trainer seed, other dropout seeds */
    {
        run *c = run_open(REGOPT_SGD, NULL);
        ck_assert_int_eq(regopt_trainer_set_int(c->t, REGOPT_TRAINER_SEED, 1235), REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_step(c->t, c->b, 2), REGOPT_OK);
        ck_assert(c->h.calls[0].seed != sa[0]);
        run_close(c);
    }
    run_close(a);
    run_close(b);
}
END_TEST

START_TEST(seed_keeps_all_64_bits)
{
    run *r = run_open(REGOPT_SGD, NULL);
    int64_t v = 0;
    double d = 0;
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_SEED, INT64_MIN + 3), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_TRAINER_SEED, &v), REGOPT_OK);
    ck_assert(v == INT64_MIN + 3);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_SEED, 1e18), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_TRAINER_SEED, &d), REGOPT_OK);
    ck_assert_double_eq(d, 1e18);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_SEED, 0.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_SEED, 1e19),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_SEED, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    run_close(r);
}
END_TEST

/* ---- accumulation -------------------------------------------------------- */

START_TEST(micro_batches_equal_one_big_batch)
{
    run *a = run_open(REGOPT_ADAM, NULL), *b = run_open(REGOPT_ADAM, NULL);
    regopt_batch big;
    th_batch hbig;
    double la, lb;
    int s;
    size_t i;
    for (s = 0; s < 3; s++) {
        /* a: two micro-batches of N rows; b: one batch of the same 2N rows */
        ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 2), REGOPT_OK);
        th_batch_of(&big, &hbig, b->x, b->y, 2 * N);
        ck_assert_int_eq(regopt_trainer_step(b->t, &big, 1), REGOPT_OK);
    }
    for (i = 0; i < TH_D * TH_K; i++)
        ck_assert_float_eq_tol(a->h.w[i], b->h.w[i], 1e-6f);
    for (i = 0; i < TH_K; i++)
        ck_assert_float_eq_tol(a->h.b[i], b->h.b[i], 1e-6f);
    ck_assert_int_eq(regopt_trainer_get_double(a->t, REGOPT_STAT_LOSS, &la), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(b->t, REGOPT_STAT_LOSS, &lb), REGOPT_OK);
    ck_assert_double_eq_tol(la, lb, 1e-6);
    run_close(a);
    run_close(b);
}
END_TEST

START_TEST(weight_is_pooled_across_micro_batches)
{
    /* one micro-batch fully masked but the step still has weight: fine, and
     * the loss is that of the other micro-batch alone */
    run *a = run_open(REGOPT_SGD, NULL), *b = run_open(REGOPT_SGD, NULL);
    uint8_t none[N] = {0};
    double la, lb, wa;
    a->b[1].mask = none;
    ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 2), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(b->t, b->b, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(a->t, REGOPT_STAT_LOSS, &la), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(b->t, REGOPT_STAT_LOSS, &lb), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(a->t, REGOPT_STAT_WEIGHT, &wa), REGOPT_OK);
    ck_assert_double_eq_tol(la, lb, 1e-9);
    ck_assert_double_eq(wa, (double)N);
    ck_assert_float_eq_tol(a->h.w[0], b->h.w[0], 1e-7f);
    run_close(a);
    run_close(b);
}
END_TEST

/* regopt_pass.task_scale: each micro-batch's share of the step's row weight
 * times the task loss's coefficient, the same in forward and backward. */
START_TEST(task_scale_is_the_task_loss_weight)
{
    run *r = run_open(REGOPT_SGD, NULL);
    float w[N] = {3.0f, 1, 1, 1, 1, 1, 1, 1};
    uint8_t m[2] = {1, 0};
    regopt_regularizer *reg;
    int i;
    r->b[0].weights = w;   /* W_0 = 10 */
    r->b[1].rows = 2;
    r->b[1].mask = m;      /* W_1 = 1 */
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 2), REGOPT_OK);
    ck_assert_int_eq(r->h.ncalls, 4);
    for (i = 0; i < 4; i++)
        ck_assert_double_eq_tol(r->h.calls[i].task_scale, i < 2 ? 10.0 / 11.0 : 1.0 / 11.0,
                                1e-15);
    /* SAM: both evaluations differentiate the task loss with weight 1 */
    reg = regopt_regularizer_create(REGOPT_REG_SAM, NULL, NULL);
    ck_assert_int_eq(regopt_trainer_attach(r->t, reg), REGOPT_OK);
    r->h.ncalls = 0;
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b[2], 1), REGOPT_OK);
    ck_assert_int_eq(r->h.ncalls, 4);
    for (i = 0; i < 4; i++)
        ck_assert_double_eq(r->h.calls[i].task_scale, 1.0);
    ck_assert_int_eq(regopt_trainer_detach(r->t, reg), REGOPT_OK);
    regopt_regularizer_free(reg);
    /* R-Drop, two calls: each copy's task loss weighs rdrop.ce_weight */
    ck_assert_int_eq(regopt_trainer_free(r->t), REGOPT_OK); /* slots are set unbound */
    ck_assert_int_eq(regopt_model_set_slots(r->m, 2), REGOPT_OK);
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    reg = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, NULL);
    ck_assert_int_eq(regopt_regularizer_set_int(reg, REGOPT_RDROP_DOUBLED, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_regularizer_set_double(reg, REGOPT_RDROP_CE_WEIGHT, 0.5),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_attach(r->t, reg), REGOPT_OK);
    r->h.ncalls = 0;
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b[2], 2), REGOPT_OK);
    ck_assert_int_eq(r->h.ncalls, 8);
    for (i = 0; i < 8; i++)
        ck_assert_double_eq(r->h.calls[i].task_scale, 0.25);
    run_close(r);
    regopt_regularizer_free(reg);
}
END_TEST

/* ---- allocation ---------------------------------------------------------- */

START_TEST(no_allocation_after_the_first_step)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    run *r = run_open(REGOPT_ADAMW, &a);
    long before;
    int i;
    must_step(r, 0);
    before = c.allocs;
    for (i = 0; i < 20; i++)
        ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 1 + i % 4), REGOPT_OK);
    ck_assert_int_eq(c.allocs, before);
    run_close(r);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

START_TEST(reserve_makes_even_the_first_step_allocation_free)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    run *r = run_open(REGOPT_SGD, &a);
    long before;
    ck_assert_int_eq(regopt_trainer_reserve(r->t, N), REGOPT_OK);
    before = c.allocs;
    must_step(r, 0);
    ck_assert_int_eq(c.allocs, before);
    ck_assert_int_eq(regopt_trainer_reserve(r->t, 0), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_reserve(NULL, 4), REGOPT_ERR_NULL_POINTER);
    run_close(r);
}
END_TEST

/* ---- evaluation ---------------------------------------------------------- */

START_TEST(evaluate_changes_nothing)
{
    run *r = run_open(REGOPT_ADAM, NULL);
    snapshot s0, s1;
    float out[N * TH_K];
    double loss = -1.0, manual = 0.0;
    size_t i, k;
    must_step(r, 0);
    snap(r, &s0);
    ck_assert_int_eq(regopt_trainer_evaluate(r->t, &r->b[1], &loss, out), REGOPT_OK);
    snap(r, &s1);
    same_bits(&s0, &s1);
    ck_assert_uint_eq(r->h.calls[r->h.ncalls - 1].flags, REGOPT_PASS_NO_GRAD);
    ck_assert_int_eq(r->h.calls[r->h.ncalls - 1].backward, 0);
    /* outputs are the host's z = x W + b, and the loss is their mean CE */
    for (i = 0; i < N; i++) {
        double mx = -1e30, se = 0.0;
        const float *x = r->x + (N + i) * TH_D;
        for (k = 0; k < TH_K; k++) {
            double z = r->h.b[k];
            size_t j;
            for (j = 0; j < TH_D; j++)
                z += x[j] * r->h.w[j * TH_K + k];
            ck_assert_double_eq_tol(out[i * TH_K + k], z, 1e-5);
            mx = z > mx ? z : mx;
        }
        for (k = 0; k < TH_K; k++)
            se += exp(out[i * TH_K + k] - mx);
        manual += mx + log(se) - out[i * TH_K + (size_t)r->y[N + i]];
    }
    ck_assert_double_eq_tol(loss, manual / N, 1e-5);
    run_close(r);
}
END_TEST

/* ---- frozen parameters ---------------------------------------------------- */

START_TEST(frozen_tensor_is_never_touched)
{
    th_host h;
    float frozen[3] = {1.5f, -2.0f, 0.25f}, copy[3];
    regopt_model *m;
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    regopt_trainer *t;
    regopt_batch b;
    th_batch hb;
    float x[N * TH_D];
    int32_t y[N];
    int i;
    th_init(&h);
    m = th_model(&h);
    memcpy(copy, frozen, sizeof copy);
    ck_assert_int_eq(regopt_model_add_param(m, "frozen", frozen, NULL, 3,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    t = regopt_trainer_create(m, o, NULL);
    th_data(x, y, N, 0);
    th_batch_of(&b, &hb, x, y, N);
    for (i = 0; i < 3; i++)
        ck_assert_int_eq(regopt_trainer_step(t, &b, 1), REGOPT_OK);
    ck_assert_int_eq(memcmp(frozen, copy, sizeof copy), 0);
    regopt_trainer_free(t);
    regopt_optimizer_free(o);
    regopt_model_free(m);
}
END_TEST

START_TEST(step_statistics)
{
    run *r = run_open(REGOPT_SGD, NULL);
    double loss, norm, lr, w, manual = 0.0;
    size_t i;
    must_step(r, 0);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_LOSS, &loss), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_GRAD_NORM, &norm), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_LR, &lr), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_WEIGHT, &w), REGOPT_OK);
    for (i = 0; i < TH_D * TH_K; i++)
        manual += (double)r->h.gw[i] * r->h.gw[i];
    for (i = 0; i < TH_K; i++)
        manual += (double)r->h.gb[i] * r->h.gb[i];
    ck_assert_double_eq_tol(norm, sqrt(manual), 1e-12);
    ck_assert_double_eq(lr, 0.05);
    ck_assert_double_eq(w, (double)N);
    ck_assert(loss > 0.0 && isfinite(loss));
    {
        double obj;
        ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_OBJECTIVE, &obj), REGOPT_OK);
        ck_assert_double_eq(obj, loss);
    }
    run_close(r);
}
END_TEST

Suite *suite_trainer(void)
{
    Suite *s = suite_create("trainer");
    TCase *tc = tcase_create("step");
    tcase_add_test(tc, one_forward_one_backward_per_micro_batch);
    tcase_add_test(tc, gradients_are_zeroed_by_the_library);
    tcase_add_test(tc, seeds_are_distinct_and_reproducible);
    tcase_add_test(tc, seed_keeps_all_64_bits);
    tcase_add_test(tc, micro_batches_equal_one_big_batch);
    tcase_add_test(tc, weight_is_pooled_across_micro_batches);
    tcase_add_test(tc, evaluate_changes_nothing);
    tcase_add_test(tc, frozen_tensor_is_never_touched);
    tcase_add_test(tc, step_statistics);
    tcase_add_test(tc, task_scale_is_the_task_loss_weight);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, trainer_rollback_tcase());
    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_after_the_first_step);
    tcase_add_test(tc, reserve_makes_even_the_first_step_allocation_free);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, trainer_inputs_tcase());
    return s;
}
