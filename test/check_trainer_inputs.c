/* check_trainer_inputs.c — suite trainer: every bad input: incomplete models,
 * bad step arguments, trainer options, integer reads, loss user data,
 * padding-only batches, AMSGrad after creation, huge batch sizes. */
#include "trainer_rig.h"

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

TCase *trainer_inputs_tcase(void)
{
    TCase *tc = tcase_create("bad input");
    tcase_add_test(tc, create_needs_a_complete_model);
    tcase_add_test(tc, bad_step_arguments_call_nothing);
    tcase_add_test(tc, trainer_options_are_checked);
    tcase_add_test(tc, amsgrad_after_creation_is_refused);
    tcase_add_test(tc, integer_reads_of_double_values);
    tcase_add_test(tc, loss_user_data_is_released_exactly_once);
    tcase_add_test(tc, evaluate_outputs_of_padding_only);
    tcase_add_test(tc, huge_batch_sizes_are_refused_before_anything);
    return tc;
}
