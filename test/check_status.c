/* check_status.c — versions, status codes, messages, the key table. */
#include "tests.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

START_TEST(version_matches_header)
{
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", REGOPT_VERSION_MAJOR, REGOPT_VERSION_MINOR,
             REGOPT_VERSION_PATCH);
    ck_assert_uint_eq(regopt_version_number(), REGOPT_VERSION_NUMBER);
    ck_assert_uint_eq(REGOPT_VERSION_NUMBER, REGOPT_VERSION_MAJOR * 10000u +
                                                 REGOPT_VERSION_MINOR * 100u +
                                                 REGOPT_VERSION_PATCH);
    ck_assert_str_eq(regopt_version_string(), expect);
    ck_assert_str_eq(REGOPT_VERSION_STRING, expect);
}
END_TEST

START_TEST(status_codes_are_fixed_and_named)
{
    /* values are ABI: they must never move */
    static const struct { regopt_status st; int value; const char *name; } codes[] = {
        {REGOPT_OK, 0, "REGOPT_OK"},
        {REGOPT_ERR_NULL_POINTER, -1, "REGOPT_ERR_NULL_POINTER"},
        {REGOPT_ERR_INVALID_ARGUMENT, -2, "REGOPT_ERR_INVALID_ARGUMENT"},
        {REGOPT_ERR_OUT_OF_RANGE, -3, "REGOPT_ERR_OUT_OF_RANGE"},
        {REGOPT_ERR_UNKNOWN_KEY, -4, "REGOPT_ERR_UNKNOWN_KEY"},
        {REGOPT_ERR_UNSUPPORTED, -5, "REGOPT_ERR_UNSUPPORTED"},
        {REGOPT_ERR_NO_MEMORY, -6, "REGOPT_ERR_NO_MEMORY"},
        {REGOPT_ERR_STATE, -7, "REGOPT_ERR_STATE"},
        {REGOPT_ERR_FORWARD, -8, "REGOPT_ERR_FORWARD"},
        {REGOPT_ERR_BACKWARD, -9, "REGOPT_ERR_BACKWARD"},
        {REGOPT_ERR_LOSS_CALLBACK, -10, "REGOPT_ERR_LOSS_CALLBACK"},
        {REGOPT_ERR_NONFINITE_LOSS, -11, "REGOPT_ERR_NONFINITE_LOSS"},
        {REGOPT_ERR_NONFINITE_GRADIENT, -12, "REGOPT_ERR_NONFINITE_GRADIENT"},
        {REGOPT_ERR_ALLREDUCE, -13, "REGOPT_ERR_ALLREDUCE"},
    };
    size_t i;
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = regopt_status_string(codes[i].st);
        ck_assert_int_eq((int)codes[i].st, codes[i].value);
        ck_assert_ptr_nonnull(s);
        ck_assert_msg(strncmp(s, codes[i].name, strlen(codes[i].name)) == 0 &&
                          s[strlen(codes[i].name)] == ':',
                      "status %d is named \"%s\"", codes[i].value, s);
    }
    ck_assert_str_eq(regopt_status_string((regopt_status)-999), "unknown status");
    ck_assert_str_eq(regopt_status_string((regopt_status)5), "unknown status");
}
END_TEST

START_TEST(thread_message_after_failed_create)
{
    regopt_status st = REGOPT_OK;
    regopt_optimizer *o = regopt_optimizer_create((regopt_optimizer_kind)42, NULL, &st);
    ck_assert_ptr_null(o);
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "42"));
    /* a NULL status pointer is allowed */
    ck_assert_ptr_null(regopt_optimizer_create((regopt_optimizer_kind)0, NULL, NULL));
}
END_TEST

START_TEST(allocator_needs_both_hooks)
{
    regopt_allocator a = {sizeof(regopt_allocator), NULL, NULL, NULL};
    regopt_status st = REGOPT_OK;
    ck_assert_ptr_null(regopt_model_create(&a, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "alloc and free"));
    a.size = 0; /* forgot to set the size */
    ck_assert_ptr_null(regopt_optimizer_create(REGOPT_SGD, &a, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "sizeof(regopt_allocator)"));
}
END_TEST

static const regopt_key all_keys[] = {
    REGOPT_OPT_LR, REGOPT_OPT_WEIGHT_DECAY, REGOPT_OPT_MOMENTUM, REGOPT_OPT_DAMPENING,
    REGOPT_OPT_NESTEROV, REGOPT_OPT_BETA1, REGOPT_OPT_BETA2, REGOPT_OPT_EPS,
    REGOPT_OPT_AMSGRAD, REGOPT_OPT_SCHEDULE, REGOPT_OPT_WARMUP_STEPS, REGOPT_OPT_TOTAL_STEPS,
    REGOPT_OPT_MIN_LR_RATIO, REGOPT_OPT_CLIP_NORM, REGOPT_GROUP_LR_SCALE,
    REGOPT_GROUP_WEIGHT_DECAY, REGOPT_TRAINER_LOSS, REGOPT_TRAINER_LABEL_SMOOTHING,
    REGOPT_TRAINER_SEED, REGOPT_STAT_LOSS, REGOPT_STAT_OBJECTIVE, REGOPT_STAT_GRAD_NORM,
    REGOPT_STAT_CLIP_SCALE, REGOPT_STAT_LR, REGOPT_STAT_STEP, REGOPT_STAT_WEIGHT,
    REGOPT_STAT_FORWARD_CALLS, REGOPT_STAT_BACKWARD_CALLS, REGOPT_GROUP_SAM_ADAPTIVE,
    REGOPT_SAM_RHO, REGOPT_SAM_DELTA, REGOPT_SAM_ADAPTIVE, REGOPT_SAM_ETA, REGOPT_SAM_GSAM,
    REGOPT_SAM_GSAM_ALPHA, REGOPT_SAM_RHO_MIN, REGOPT_SAM_RHO_FOLLOWS_LR, REGOPT_SAM_EVERY,
    REGOPT_SAM_M_ROWS, REGOPT_SAM_SAME_SEED, REGOPT_SAM_ASCENT_WEIGHT_DECAY,
    REGOPT_SAM_SYNC_ASCENT, REGOPT_STAT_SAM_CLEAN_LOSS, REGOPT_STAT_SAM_PERTURBED_LOSS,
    REGOPT_STAT_SAM_SHARPNESS, REGOPT_STAT_SAM_ASCENT_NORM, REGOPT_STAT_SAM_RHO,
    REGOPT_STAT_SAM_APPLIED};

START_TEST(key_values_are_fixed)
{
    ck_assert_int_eq(REGOPT_OPT_LR, 100);
    ck_assert_int_eq(REGOPT_OPT_CLIP_NORM, 130);
    ck_assert_int_eq(REGOPT_GROUP_LR_SCALE, 150);
    ck_assert_int_eq(REGOPT_TRAINER_LOSS, 300);
    ck_assert_int_eq(REGOPT_TRAINER_SEED, 302);
    ck_assert_int_eq(REGOPT_STAT_LOSS, 900);
    ck_assert_int_eq(REGOPT_STAT_BACKWARD_CALLS, 908);
    ck_assert_int_eq(REGOPT_SAM_RHO, 1000);
    ck_assert_int_eq(REGOPT_SAM_SYNC_ASCENT, 1012);
    ck_assert_int_eq(REGOPT_STAT_SAM_APPLIED, 914);
    ck_assert_int_eq(REGOPT_REG_SAM, 1);
    ck_assert_int_eq(REGOPT_PASS_NO_PARAM_GRAD, 0x10);
    ck_assert_int_eq(REGOPT_DTYPE_FLOAT32, 1);
    ck_assert_int_eq(REGOPT_RADAM, 4);
}
END_TEST

START_TEST(every_key_has_a_name_that_round_trips)
{
    size_t i;
    for (i = 0; i < sizeof all_keys / sizeof all_keys[0]; i++) {
        const char *name = NULL;
        int type = 0;
        double lo = NAN, hi = NAN, def = NAN;
        uint32_t flags = 99;
        regopt_key back = (regopt_key)0;
        ck_assert_int_eq(regopt_key_info(all_keys[i], &name, &type, &lo, &hi, &def, &flags),
                         REGOPT_OK);
        ck_assert_ptr_nonnull(name);
        ck_assert(type == REGOPT_TYPE_DOUBLE || type == REGOPT_TYPE_INT);
        ck_assert_msg(lo <= def && def <= hi, "%s default %g outside [%g, %g]", name, def,
                      lo, hi);
        ck_assert_int_eq(regopt_key_from_name(name, &back), REGOPT_OK);
        ck_assert_int_eq(back, all_keys[i]);
        ck_assert_int_eq(!!(flags & REGOPT_KEY_READ_ONLY),
                         all_keys[i] >= 900 && all_keys[i] < 1000);
        ck_assert_int_eq(!!(flags & REGOPT_KEY_GROUP),
                         all_keys[i] >= 150 && all_keys[i] < 200);
    }
    /* out pointers are optional */
    ck_assert_int_eq(regopt_key_info(REGOPT_OPT_LR, NULL, NULL, NULL, NULL, NULL, NULL),
                     REGOPT_OK);
}
END_TEST

START_TEST(lr_bounds_are_documented_ones)
{
    double lo, hi, def;
    uint32_t flags;
    const char *name;
    ck_assert_int_eq(regopt_key_info(REGOPT_OPT_LR, &name, NULL, &lo, &hi, &def, &flags),
                     REGOPT_OK);
    ck_assert_str_eq(name, "optimizer.lr");
    ck_assert_double_eq(lo, 0.0);
    ck_assert_double_eq(hi, 1e3);
    ck_assert_double_eq(def, 1e-3);
    ck_assert_uint_eq(flags, REGOPT_KEY_MIN_EXCLUSIVE);
}
END_TEST

START_TEST(unknown_keys_and_names)
{
    regopt_key k = REGOPT_OPT_LR;
    ck_assert_int_eq(regopt_key_info((regopt_key)12345, NULL, NULL, NULL, NULL, NULL, NULL),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "12345"));
    ck_assert_int_eq(regopt_key_from_name("optimizer.nope", &k), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(k, REGOPT_OPT_LR);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "optimizer.nope"));
    ck_assert_int_eq(regopt_key_from_name(NULL, &k), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_key_from_name("optimizer.lr", NULL), REGOPT_ERR_NULL_POINTER);
}
END_TEST

START_TEST(struct_sizes_for_bindings)
{
    regopt_batch b;
    memset(&b, 0xab, sizeof b);
    regopt_batch_init(&b);
    ck_assert_uint_eq(b.size, sizeof(regopt_batch));
    ck_assert_ptr_null(b.labels);
    ck_assert_uint_eq(b.rows, 0);
    regopt_batch_init(NULL);
    ck_assert_uint_eq(regopt_sizeof_batch(), sizeof(regopt_batch));
    ck_assert_uint_eq(regopt_sizeof_pass(), sizeof(regopt_pass));
    ck_assert_uint_eq(regopt_sizeof_allocator(), sizeof(regopt_allocator));
}
END_TEST

START_TEST(free_null_is_a_noop)
{
    regopt_model_free(NULL);
    regopt_optimizer_free(NULL);
    regopt_trainer_free(NULL);
    ck_assert_str_eq(regopt_model_message(NULL), "invalid regopt_model handle");
    ck_assert_str_eq(regopt_optimizer_message(NULL), "invalid regopt_optimizer handle");
    ck_assert_str_eq(regopt_trainer_message(NULL), "invalid regopt_trainer handle");
    ck_assert_uint_eq(regopt_model_param_count(NULL), 0);
    ck_assert_uint_eq(regopt_model_element_count(NULL), 0);
    ck_assert_int_eq(regopt_optimizer_get_kind(NULL), 0);
}
END_TEST

Suite *suite_status(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, version_matches_header);
    tcase_add_test(tc, status_codes_are_fixed_and_named);
    tcase_add_test(tc, thread_message_after_failed_create);
    tcase_add_test(tc, allocator_needs_both_hooks);
    tcase_add_test(tc, free_null_is_a_noop);
    suite_add_tcase(s, tc);
    tc = tcase_create("keys");
    tcase_add_test(tc, key_values_are_fixed);
    tcase_add_test(tc, every_key_has_a_name_that_round_trips);
    tcase_add_test(tc, lr_bounds_are_documented_ones);
    tcase_add_test(tc, unknown_keys_and_names);
    tcase_add_test(tc, struct_sizes_for_bindings);
    suite_add_tcase(s, tc);
    return s;
}
