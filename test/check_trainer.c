/* check_trainer.c — the step: call order and flags, seeds, gradient
 * accumulation, the rollback guarantee, allocation, and every bad input. */
#include "tests.h"

#include "test_host.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

#define N 8

typedef struct run {
    th_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    float x[4 * N * TH_D];
    int32_t y[4 * N];
    th_batch hb[4];
    regopt_batch b[4];
} run;

static run *run_open(regopt_optimizer_kind kind, const regopt_allocator *a)
{
    run *r = calloc(1, sizeof *r);
    int i;
    th_init(&r->h);
    r->m = regopt_model_create(a, NULL);
    ck_assert_int_eq(regopt_model_add_param(r->m, "W", r->h.w, r->h.gw, TH_D * TH_K,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, TH_K,
                                            REGOPT_DTYPE_FLOAT32, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(r->m, TH_K), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(r->m, th_forward, th_backward, &r->h, NULL),
                     REGOPT_OK);
    r->o = regopt_optimizer_create(kind, a, NULL);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.05), REGOPT_OK);
    if (kind == REGOPT_SGD)
        ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9),
                         REGOPT_OK);
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    th_data(r->x, r->y, 4 * N, 0);
    for (i = 0; i < 4; i++)
        th_batch_of(&r->b[i], &r->hb[i], r->x + i * N * TH_D, r->y + i * N, N);
    return r;
}

static void run_close(run *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

static void must_step(run *r, int which)
{
    regopt_status st = regopt_trainer_step(r->t, &r->b[which % 4], 1);
    ck_assert_msg(st == REGOPT_OK, "step: %s", regopt_trainer_message(r->t));
}

static int64_t steps_of(run *r)
{
    int64_t s = -1;
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_STAT_STEP, &s), REGOPT_OK);
    return s;
}

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

/* ---- rollback ------------------------------------------------------------ */

typedef struct snapshot {
    float w[TH_D * TH_K], b[TH_K];
    int64_t step;
    double loss;
} snapshot;

static void snap(run *r, snapshot *s)
{
    memcpy(s->w, r->h.w, sizeof s->w);
    memcpy(s->b, r->h.b, sizeof s->b);
    s->step = steps_of(r);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_LOSS, &s->loss), REGOPT_OK);
}

static void same_bits(const snapshot *a, const snapshot *b)
{
    ck_assert_int_eq(memcmp(a->w, b->w, sizeof a->w), 0);
    ck_assert_int_eq(memcmp(a->b, b->b, sizeof a->b), 0);
    ck_assert_int_eq(a->step, b->step);
    ck_assert_int_eq(memcmp(&a->loss, &b->loss, sizeof a->loss), 0);
}

enum fault { F_FORWARD, F_BACKWARD, F_NAN_OUTPUT, F_INF_GRAD };

/* Train 3 steps, make step 4 fail in the given way, then train 3 more: the
 * failed step must leave every bit as it was, and the run must continue
 * exactly as a run that never failed (so the optimizer moments, the step
 * count and the RNG position were untouched too). */
static void check_rollback(regopt_optimizer_kind kind, enum fault fault, regopt_status want,
                           const char *words)
{
    run *bad = run_open(kind, NULL), *good = run_open(kind, NULL);
    snapshot before, after, g, x;
    int i;
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_step(good->t, good->b, 2), REGOPT_OK);
    }
    snap(bad, &before);
    /* the fault hits the second micro-batch of the 4th step */
    switch (fault) {
    case F_FORWARD: bad->h.fail_forward = bad->h.forwards + 2; break;
    case F_BACKWARD: bad->h.fail_backward = bad->h.backwards + 2; break;
    case F_NAN_OUTPUT: bad->h.nan_output = bad->h.forwards + 2; break;
    case F_INF_GRAD: bad->h.inf_grad = bad->h.backwards + 2; break;
    }
    ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), want);
    ck_assert_msg(strstr(regopt_trainer_message(bad->t), words) != NULL, "message \"%s\"",
                  regopt_trainer_message(bad->t));
    snap(bad, &after);
    same_bits(&before, &after);
    bad->h.fail_forward = bad->h.fail_backward = bad->h.nan_output = bad->h.inf_grad = 0;
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_step(good->t, good->b, 2), REGOPT_OK);
    }
    snap(bad, &x);
    snap(good, &g);
    same_bits(&x, &g);
    /* the dropout seeds of the retried step are the ones it would have had */
    ck_assert(bad->h.calls[bad->h.ncalls - 2].seed == good->h.calls[good->h.ncalls - 2].seed);
    run_close(bad);
    run_close(good);
}

START_TEST(rollback_on_forward_failure)
{
    check_rollback(REGOPT_ADAM, F_FORWARD, REGOPT_ERR_FORWARD, "forward callback returned 7");
    check_rollback(REGOPT_SGD, F_FORWARD, REGOPT_ERR_FORWARD, "micro-batch 1");
}
END_TEST

START_TEST(rollback_on_backward_failure)
{
    check_rollback(REGOPT_ADAMW, F_BACKWARD, REGOPT_ERR_BACKWARD,
                   "backward callback returned 9");
    check_rollback(REGOPT_SGD, F_BACKWARD, REGOPT_ERR_BACKWARD, "micro-batch 1");
}
END_TEST

START_TEST(rollback_on_nonfinite_loss)
{
    check_rollback(REGOPT_RADAM, F_NAN_OUTPUT, REGOPT_ERR_NONFINITE_LOSS, "micro-batch 1");
}
END_TEST

START_TEST(rollback_on_nonfinite_gradient)
{
    check_rollback(REGOPT_ADAM, F_INF_GRAD, REGOPT_ERR_NONFINITE_GRADIENT, "\"b\"");
    check_rollback(REGOPT_SGD, F_INF_GRAD, REGOPT_ERR_NONFINITE_GRADIENT, "not finite");
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

/* ---- bad input ------------------------------------------------------------ */

START_TEST(create_needs_a_complete_model)
{
    float w[2], g[2];
    regopt_status st = REGOPT_OK;
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_SGD, NULL, NULL);
    regopt_model *m = regopt_model_create(NULL, NULL);
    th_host h;
    ck_assert_ptr_null(regopt_trainer_create(NULL, o, &st));
    ck_assert_int_eq(st, REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_null(regopt_trainer_create(m, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_null(regopt_trainer_create(m, o, &st));
    ck_assert_int_eq(st, REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "callbacks"));
    ck_assert_int_eq(regopt_model_set_callbacks(m, th_forward, th_backward, &h, NULL),
                     REGOPT_OK);
    ck_assert_ptr_null(regopt_trainer_create(m, o, &st));
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "output width"));
    ck_assert_int_eq(regopt_model_set_output_width(m, 2), REGOPT_OK);
    ck_assert_ptr_null(regopt_trainer_create(m, o, &st));
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "no parameter"));
    ck_assert_int_eq(regopt_model_add_param(m, "frozen", w, NULL, 2, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_OK);
    ck_assert_ptr_null(regopt_trainer_create(m, o, &st));
    ck_assert_int_eq(regopt_model_add_param(m, "w", w, g, 2, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_OK);
    /* handles of the wrong kind */
    ck_assert_ptr_null(regopt_trainer_create((regopt_model *)(void *)o, o, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(regopt_trainer_create(m, (regopt_optimizer *)(void *)m, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    {
        regopt_trainer *t = regopt_trainer_create(m, o, &st);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(st, REGOPT_OK);
        regopt_trainer_free(t);
    }
    regopt_model_free(m);
    regopt_optimizer_free(o);
}
END_TEST

START_TEST(bad_step_arguments_call_nothing)
{
    run *r = run_open(REGOPT_SGD, NULL);
    regopt_batch b = r->b[0];
    double l;
    ck_assert_int_eq(regopt_trainer_step(NULL, r->b, 1), REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "trainer is NULL"));
    ck_assert_int_eq(regopt_trainer_step(r->t, NULL, 1), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 0), REGOPT_ERR_INVALID_ARGUMENT);
    b.size = 8;
    ck_assert_int_eq(regopt_trainer_step(r->t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "regopt_batch_init"));
    b.size = 5000;
    ck_assert_int_eq(regopt_trainer_step(r->t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    {
        /* from a newer, larger header: fine while the unknown fields are unset */
        struct { regopt_batch b; unsigned char extra[64]; } newer;
        memset(&newer, 0, sizeof newer);
        newer.b = r->b[0];
        newer.b.size = sizeof newer;
        r->h.fail_forward = 1;
        ck_assert_int_eq(regopt_trainer_step(r->t, &newer.b, 1), REGOPT_ERR_FORWARD);
        r->h.fail_forward = 0;
        r->h.forwards = 0;
        r->h.ncalls = 0;
        newer.extra[10] = 1;
        ck_assert_int_eq(regopt_trainer_step(r->t, &newer.b, 1), REGOPT_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "newer than this library"));
    }
    b = r->b[0];
    b.rows = 0;
    ck_assert_int_eq(regopt_trainer_step(r->t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "rows is 0"));
    /* a bad second micro-batch stops the step before any callback */
    r->b[1].rows = 0;
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 2), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "batch 1"));
    r->b[1].rows = N;
    /* one array, one stride: a later descriptor claiming a larger size would
       make the library read past it (found by fuzz/fuzz_batch.c) */
    r->b[1].size = sizeof(regopt_batch) + 64;
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 2), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "batch 1: size field"));
    r->b[1].size = sizeof(regopt_batch);
    ck_assert_int_eq(regopt_trainer_evaluate(NULL, r->b, &l, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_evaluate(r->t, NULL, &l, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(r->h.ncalls, 0);
    ck_assert_int_eq(steps_of(r), 0);
    run_close(r);
}
END_TEST

START_TEST(trainer_options_are_checked)
{
    run *r = run_open(REGOPT_SGD, NULL);
    double v;
    int64_t i;
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_LABEL_SMOOTHING, 1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t),
                                 "trainer.label_smoothing must be in [0, 1), got 1"));
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_LABEL_SMOOTHING, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_LABEL_SMOOTHING, -0.1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_TRAINER_LABEL_SMOOTHING, &v),
                     REGOPT_OK);
    ck_assert_double_eq(v, 0.0);
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_TRAINER_LOSS, 0.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_CALLBACK),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_TRAINER_LOSS, &i), REGOPT_OK);
    ck_assert_int_eq(i, REGOPT_LOSS_SOFTMAX_CE);
    /* statistics are read-only, optimizer keys belong elsewhere */
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_STAT_LOSS, 1.0), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "stat.loss"));
    ck_assert_int_eq(regopt_trainer_set_double(r->t, REGOPT_OPT_LR, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_OPT_LR, &v), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, (regopt_key)777, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_LOSS, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_STAT_STEP, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_set_double(NULL, REGOPT_TRAINER_SEED, 1.0),
                     REGOPT_ERR_NULL_POINTER);
    /* statistics before any step */
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_CLIP_SCALE, &v), REGOPT_OK);
    ck_assert_double_eq(v, 0.0);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_LOSS, &v), REGOPT_OK);
    ck_assert_double_eq(v, 0.0);
    run_close(r);
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

START_TEST(integer_reads_of_double_values)
{
    run *r = run_open(REGOPT_SGD, NULL);
    int64_t v = 42;
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.7), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(r->o, REGOPT_OPT_LR, &v), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_optimizer_message(r->o), "optimizer.lr is 0.7"));
    ck_assert_int_eq(v, 42);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, 1e30), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(r->o, REGOPT_OPT_CLIP_NORM, &v),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, 3.0), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(r->o, REGOPT_OPT_CLIP_NORM, &v), REGOPT_OK);
    ck_assert_int_eq(v, 3);
    must_step(r, 0);
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_STAT_LOSS, &v), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_STAT_FORWARD_CALLS, &v), REGOPT_OK);
    ck_assert_int_eq(v, 1);
    /* group weight decay: -1 inherits, other negatives are errors */
    ck_assert_int_eq(regopt_optimizer_set_group(r->o, 1, REGOPT_GROUP_WEIGHT_DECAY, -0.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_group(r->o, 1, REGOPT_GROUP_WEIGHT_DECAY, -1.0),
                     REGOPT_OK);
    run_close(r);
}
END_TEST

static int zero_loss(const regopt_batch *b, const float *z, size_t rows, size_t k,
                     float *row_loss, float *dz, void *user)
{
    (void)b; (void)z; (void)user;
    memset(row_loss, 0, rows * sizeof *row_loss);
    memset(dz, 0, rows * k * sizeof *dz);
    return 0;
}

static int loss_user_freed;
static void free_loss_user(void *u)
{
    (void)u;
    loss_user_freed++;
}

START_TEST(loss_user_data_is_released_exactly_once)
{
    run *r = run_open(REGOPT_SGD, NULL);
    int a;
    loss_user_freed = 0;
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->t, zero_loss, &a, free_loss_user),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->t, zero_loss, &a, free_loss_user),
                     REGOPT_OK);
    ck_assert_int_eq(loss_user_freed, 0);
    /* switching the loss callback off releases its user data */
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->t, NULL, &a, NULL), REGOPT_OK);
    ck_assert_int_eq(loss_user_freed, 1);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->t, zero_loss, &a, free_loss_user),
                     REGOPT_OK);
    run_close(r);
    ck_assert_int_eq(loss_user_freed, 2);
}
END_TEST

START_TEST(evaluate_outputs_of_padding_only)
{
    run *r = run_open(REGOPT_SGD, NULL);
    uint8_t none[N] = {0};
    float out[N * TH_K];
    double l;
    r->b[0].mask = none;
    ck_assert_int_eq(regopt_trainer_evaluate(r->t, &r->b[0], NULL, out), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_evaluate(r->t, &r->b[0], &l, out),
                     REGOPT_ERR_INVALID_ARGUMENT);
    run_close(r);
}
END_TEST

START_TEST(amsgrad_after_creation_is_refused)
{
    run *r = run_open(REGOPT_ADAM, NULL);
    ck_assert_int_eq(regopt_optimizer_set_int(r->o, REGOPT_OPT_AMSGRAD, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, 1), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "amsgrad"));
    ck_assert_int_eq(r->h.ncalls, 0);
    run_close(r);
}
END_TEST

/* ---- sizes (issue 16, defect 9) ----------------------------------------- */

/* run_open's model with an input width, over allocator a. */
static run *run_open_wide(size_t input_width, const regopt_allocator *a)
{
    run *r = calloc(1, sizeof *r);
    int i;
    ck_assert_ptr_nonnull(r);
    th_init(&r->h);
    r->m = regopt_model_create(a, NULL);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "W", r->h.w, r->h.gw, TH_D * TH_K, REGOPT_DTYPE_FLOAT32,
                                0));
    MUST(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, TH_K, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(r->m, TH_K));
    MUST(regopt_model_set_input_width(r->m, input_width));
    MUST(regopt_model_set_callbacks(r->m, th_forward, th_backward, &r->h, NULL));
    r->o = regopt_optimizer_create(REGOPT_SGD, a, NULL);
    ck_assert_ptr_nonnull(r->o);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    th_data(r->x, r->y, 4 * N, 0);
    for (i = 0; i < 4; i++)
        th_batch_of(&r->b[i], &r->hb[i], r->x + i * N * TH_D, r->y + i * N, N);
    return r;
}

/* input_rows x input_width is bounded (2^36 floats, the size of each of
 * SMART's buffers) and may not wrap; a batch count whose descriptors
 * cannot exist is refused before the first is read past; rows x output
 * width stays bounded. All before any allocation or callback, nothing
 * changed. */
START_TEST(huge_batch_sizes_are_refused_before_anything)
{
    static const size_t bad_in[] = {((size_t)1 << 16) + 1, (size_t)1 << 40,
                                    SIZE_MAX / 2 + 1 /* x 2^20 wraps to 0 */, SIZE_MAX};
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    run *r = run_open_wide((size_t)1 << 20, &a); /* 2^20 x 2^16 = 2^36 */
    float w0[TH_D * TH_K], b0[TH_K];
    regopt_batch b;
    double l;
    long allocs;
    size_t i;
    memcpy(w0, r->h.w, sizeof w0);
    memcpy(b0, r->h.b, sizeof b0);
    allocs = c.allocs;
    for (i = 0; i < sizeof bad_in / sizeof bad_in[0]; i++) {
        b = r->b[0];
        b.input_rows = bad_in[i];
        ck_assert_int_eq(regopt_trainer_step(r->t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "batch 0"));
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "input rows"));
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "2^36"));
        ck_assert_int_eq(regopt_trainer_evaluate(r->t, &b, &l, NULL),
                         REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "input rows"));
    }
    /* descriptors of 64 bytes: SIZE_MAX of them cannot be an array */
    ck_assert_int_eq(regopt_trainer_step(r->t, r->b, SIZE_MAX), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "batch count"));
    b = r->b[0];
    b.rows = SIZE_MAX;
    ck_assert_int_eq(regopt_trainer_step(r->t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "rows is too many"));
    ck_assert_int_eq(c.allocs, allocs);
    ck_assert_int_eq(r->h.ncalls, 0);
    ck_assert_int_eq(steps_of(r), 0);
    ck_assert_int_eq(memcmp(w0, r->h.w, sizeof w0), 0);
    ck_assert_int_eq(memcmp(b0, r->h.b, sizeof b0), 0);
    /* at the bound: accepted (nothing here is sized by input rows) */
    b = r->b[0];
    b.input_rows = (size_t)1 << 16;
    ck_assert_msg(regopt_trainer_step(r->t, &b, 1) == REGOPT_OK, "%s",
                  regopt_trainer_message(r->t));
    ck_assert_int_eq(steps_of(r), 1);
    run_close(r);
}
END_TEST

/* ---- an update that would write a non-finite value ---------------------- */

/* A user term that only counts committed updates. */
static int count_value(const regopt_term_view *v, double *value, void *user)
{
    (void)v, (void)user;
    *value = 0.0;
    return 0;
}

static void count_committed(uint64_t step, void *user)
{
    (void)step;
    ++*(int *)user;
}

static regopt_regularizer *counting_term(regopt_trainer *t, int *commits)
{
    regopt_term_ops ops;
    regopt_regularizer *r;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "counter";
    ops.value = count_value;
    ops.committed = count_committed;
    r = regopt_regularizer_create_term(&ops, commits, NULL, NULL, NULL);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(regopt_trainer_attach(t, r), REGOPT_OK);
    return r;
}

/* Every statistic of the trainer, bit for bit. */
static void stats_of(run *r, double *out)
{
    regopt_key k;
    for (k = REGOPT_STAT_LOSS; k <= REGOPT_STAT_BACKWARD_CALLS; k++)
        ck_assert_int_eq(regopt_trainer_get_double(r->t, k, &out[k - REGOPT_STAT_LOSS]),
                         REGOPT_OK);
}

/* Inputs of about 3e37 give finite logits, loss and gradient, but Adam's
 * v = (1 - b2) g^2 would overflow: the 4th step is refused with
 * NONFINITE_GRADIENT (SGD's momentum: check_optim.c, check_checkpoint.c,
 * where the host's weights do not feed its outputs). Nothing
 * changes -- weights, statistics, step count, RNG position, the user term's
 * committed() count -- and the run then continues exactly as one that never
 * tried that step. */
START_TEST(rollback_on_nonfinite_update)
{
    static const regopt_optimizer_kind kinds[] = {REGOPT_ADAM, REGOPT_RADAM, REGOPT_ADAMW};
    run *bad = run_open(kinds[_i], NULL), *good = run_open(kinds[_i], NULL);
    regopt_regularizer *tb, *tg;
    double st_before[REGOPT_STAT_BACKWARD_CALLS - REGOPT_STAT_LOSS + 1];
    double st_after[REGOPT_STAT_BACKWARD_CALLS - REGOPT_STAT_LOSS + 1];
    float keep[N * TH_D];
    snapshot before, after, g, x;
    int commits_bad = 0, commits_good = 0, i, tries;
    regopt_status st = REGOPT_OK;
    tb = counting_term(bad->t, &commits_bad);
    tg = counting_term(good->t, &commits_good);
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_step(good->t, good->b, 2), REGOPT_OK);
    }
    /* huge inputs in micro-batch 0 until the update refuses (at once here;
       the good run would take any step that went through) */
    memcpy(keep, bad->x, sizeof keep);
    for (tries = 0; tries < 8; tries++) {
        for (i = 0; i < N * TH_D; i++) {
            bad->x[i] = keep[i] * 3e37f;
            good->x[i] = keep[i] * 3e37f;
        }
        snap(bad, &before);
        stats_of(bad, st_before);
        i = commits_bad;
        st = regopt_trainer_step(bad->t, bad->b, 2);
        if (st != REGOPT_OK)
            break;
        ck_assert_int_eq(regopt_trainer_step(good->t, good->b, 2), REGOPT_OK);
    }
    ck_assert_msg(st == REGOPT_ERR_NONFINITE_GRADIENT, "%s: %s", regopt_status_string(st),
                  regopt_trainer_message(bad->t));
    ck_assert_msg(strstr(regopt_trainer_message(bad->t), "\"W\"") != NULL &&
                  strstr(regopt_trainer_message(bad->t), "nothing was updated") != NULL,
                  "message \"%s\"", regopt_trainer_message(bad->t));
    snap(bad, &after);
    same_bits(&before, &after);
    stats_of(bad, st_after);
    ck_assert(memcmp(st_before, st_after, sizeof st_before) == 0);
    ck_assert_int_eq(commits_bad, i);
    memcpy(bad->x, keep, sizeof keep);
    memcpy(good->x, keep, sizeof keep);
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_step(good->t, good->b, 2), REGOPT_OK);
    }
    snap(bad, &x);
    snap(good, &g);
    same_bits(&x, &g);
    ck_assert_int_eq(commits_bad, commits_good);
    ck_assert(bad->h.calls[bad->h.ncalls - 2].seed == good->h.calls[good->h.ncalls - 2].seed);
    run_close(bad);
    run_close(good);
    regopt_regularizer_free(tb);
    regopt_regularizer_free(tg);
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
    suite_add_tcase(s, tc);
    tc = tcase_create("rollback");
    tcase_add_test(tc, rollback_on_forward_failure);
    tcase_add_test(tc, rollback_on_backward_failure);
    tcase_add_test(tc, rollback_on_nonfinite_loss);
    tcase_add_test(tc, rollback_on_nonfinite_gradient);
    tcase_add_loop_test(tc, rollback_on_nonfinite_update, 0, 3);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_after_the_first_step);
    tcase_add_test(tc, reserve_makes_even_the_first_step_allocation_free);
    suite_add_tcase(s, tc);
    tc = tcase_create("bad input");
    tcase_add_test(tc, create_needs_a_complete_model);
    tcase_add_test(tc, bad_step_arguments_call_nothing);
    tcase_add_test(tc, trainer_options_are_checked);
    tcase_add_test(tc, amsgrad_after_creation_is_refused);
    tcase_add_test(tc, integer_reads_of_double_values);
    tcase_add_test(tc, loss_user_data_is_released_exactly_once);
    tcase_add_test(tc, evaluate_outputs_of_padding_only);
    tcase_add_test(tc, huge_batch_sizes_are_refused_before_anything);
    suite_add_tcase(s, tc);
    return s;
}
