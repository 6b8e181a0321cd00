/* check_model.c — registering a host network, and every way to get it wrong. */
#include "tests.h"

#include "test_host.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

static float data[16], grad[16];

static int noop_pass(const regopt_pass *p, void *user)
{
    (void)p;
    (void)user;
    return 0;
}

static int freed_count;
static void count_free(void *user)
{
    (void)user;
    freed_count++;
}

#define ADD(m, name, d, g, n, dt, grp) regopt_model_add_param(m, name, d, g, n, dt, grp)

START_TEST(register_and_count)
{
    regopt_status st = REGOPT_ERR_STATE;
    regopt_model *m = regopt_model_create(NULL, &st);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(st, REGOPT_OK);
    ck_assert_int_eq(ADD(m, "a", data, grad, 10, REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(ADD(m, "b", data + 10, NULL, 6, REGOPT_DTYPE_FLOAT32, 63), REGOPT_OK);
    ck_assert_uint_eq(regopt_model_param_count(m), 2);
    ck_assert_uint_eq(regopt_model_element_count(m), 16);
    ck_assert_int_eq(regopt_model_set_output_width(m, 3), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_input_width(m, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_input_width(m, 8), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_slots(m, 16), REGOPT_OK);
    regopt_model_free(m);
}
END_TEST

START_TEST(bad_parameters)
{
    regopt_model *m = regopt_model_create(NULL, NULL);
    char longname[REGOPT_MAX_NAME + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ck_assert_int_eq(ADD(NULL, "a", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "model is NULL"));
    ck_assert_int_eq(ADD(m, NULL, data, grad, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "name"));
    ck_assert_int_eq(ADD(m, "a", NULL, grad, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "data"));
    ck_assert_int_eq(ADD(m, "", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ADD(m, longname, data, grad, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ADD(m, "a", data, grad, 0, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "element count"));
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT16, 0),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "dtype 2"));
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_BFLOAT16, 0),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT64, 0),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, (regopt_dtype)0, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, (regopt_dtype)99, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT32, -1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT32, REGOPT_MAX_GROUPS),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "group"));
    ck_assert_int_eq(ADD(m, "a", data, data + 4, 8, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "overlap"));
    /* nothing above registered anything */
    ck_assert_uint_eq(regopt_model_param_count(m), 0);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(ADD(m, "a", data + 1, grad + 1, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "already registered"));
    ck_assert_uint_eq(regopt_model_param_count(m), 1);
    regopt_model_free(m);
}
END_TEST

START_TEST(bad_widths_slots_callbacks)
{
    regopt_model *m = regopt_model_create(NULL, NULL);
    ck_assert_int_eq(regopt_model_set_output_width(m, 0), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "got 0"));
    ck_assert_int_eq(regopt_model_set_output_width(NULL, 3), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_model_set_input_width(m, ((size_t)1 << 30) + 1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_model_set_slots(m, 0), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_model_set_slots(m, 17), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_model_set_slots(NULL, 1), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_model_set_callbacks(m, NULL, noop_pass, NULL, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "forward"));
    ck_assert_int_eq(regopt_model_set_callbacks(m, noop_pass, NULL, NULL, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "backward"));
    ck_assert_int_eq(regopt_model_set_callbacks(NULL, noop_pass, noop_pass, NULL, NULL),
                     REGOPT_ERR_NULL_POINTER);
    regopt_model_free(m);
}
END_TEST

START_TEST(free_user_called_once_per_user)
{
    int a = 0, b = 0;
    regopt_model *m = regopt_model_create(NULL, NULL);
    freed_count = 0;
    ck_assert_int_eq(regopt_model_set_callbacks(m, noop_pass, noop_pass, &a, count_free),
                     REGOPT_OK);
    /* the same user again: not released */
    ck_assert_int_eq(regopt_model_set_callbacks(m, noop_pass, noop_pass, &a, count_free),
                     REGOPT_OK);
    ck_assert_int_eq(freed_count, 0);
    /* replaced: the old one is released */
    ck_assert_int_eq(regopt_model_set_callbacks(m, noop_pass, noop_pass, &b, count_free),
                     REGOPT_OK);
    ck_assert_int_eq(freed_count, 1);
    /* a failing call releases nothing */
    ck_assert_int_eq(regopt_model_set_callbacks(m, NULL, noop_pass, &a, count_free),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(freed_count, 1);
    regopt_model_free(m);
    ck_assert_int_eq(freed_count, 2);
}
END_TEST

START_TEST(wrong_handle_kind_is_caught)
{
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_SGD, NULL, NULL);
    /* what a ctypes user can do by mistake: every handle is a void pointer */
    regopt_model *fake = (regopt_model *)(void *)o;
    ck_assert_int_eq(regopt_model_set_output_width(fake, 3), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "not a live regopt_model"));
    ck_assert_uint_eq(regopt_model_param_count(fake), 0);
    ck_assert_str_eq(regopt_model_message(fake), "invalid regopt_model handle");
    regopt_model_free(fake); /* ignored: not a model */
    ck_assert_int_eq(regopt_optimizer_get_kind(o), REGOPT_SGD);
    regopt_optimizer_free(o);
}
END_TEST

START_TEST(bound_model_is_frozen)
{
    th_host h;
    regopt_model *m;
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_SGD, NULL, NULL);
    regopt_trainer *t;
    th_init(&h);
    m = th_model(&h);
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ADD(m, "c", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "bound to a trainer"));
    ck_assert_int_eq(regopt_model_set_output_width(m, 2), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_model_set_slots(m, 2), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_model_set_callbacks(m, noop_pass, noop_pass, NULL, NULL),
                     REGOPT_ERR_STATE);
    /* freeing a bound model or optimizer is refused, not a crash later */
    regopt_model_free(m);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "still bound"));
    ck_assert_int_eq(h.freed, 0);
    regopt_optimizer_free(o);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "still bound"));
    ck_assert_int_eq(regopt_optimizer_get_kind(o), REGOPT_SGD);
    regopt_trainer_free(t);
    /* unbound again */
    ck_assert_int_eq(ADD(m, "c", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    regopt_model_free(m);
    ck_assert_int_eq(h.freed, 1);
    regopt_optimizer_free(o);
}
END_TEST


START_TEST(allocator_hooks_see_everything)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    regopt_model *m = regopt_model_create(&a, NULL);
    int i;
    char name[8];
    ck_assert_ptr_nonnull(m);
    for (i = 0; i < 12; i++) { /* forces the parameter table to grow */
        name[0] = 'p';
        name[1] = (char)('a' + i);
        name[2] = '\0';
        ck_assert_int_eq(ADD(m, name, data + i, grad + i, 1, REGOPT_DTYPE_FLOAT32, 0),
                         REGOPT_OK);
    }
    ck_assert_int_gt(c.allocs, 12);
    regopt_model_free(m);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

START_TEST(out_of_memory_is_reported)
{
    counting c = {0, 0, 1};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    regopt_status st = REGOPT_OK;
    regopt_model *m = regopt_model_create(&a, &st);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(st, REGOPT_ERR_NO_MEMORY);
    c.allocs = 0;
    c.fail_at = 2; /* the parameter table */
    m = regopt_model_create(&a, &st);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0), REGOPT_ERR_NO_MEMORY);
    ck_assert_uint_eq(regopt_model_param_count(m), 0);
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    regopt_model_free(m);
    ck_assert_int_eq(c.allocs - 1, c.frees); /* the failed one was never freed */
}
END_TEST

Suite *suite_model(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("register");
    tcase_add_test(tc, register_and_count);
    tcase_add_test(tc, bad_parameters);
    tcase_add_test(tc, bad_widths_slots_callbacks);
    tcase_add_test(tc, free_user_called_once_per_user);
    tcase_add_test(tc, wrong_handle_kind_is_caught);
    tcase_add_test(tc, bound_model_is_frozen);
    tcase_add_test(tc, allocator_hooks_see_everything);
    tcase_add_test(tc, out_of_memory_is_reported);
    suite_add_tcase(s, tc);
    return s;
}
