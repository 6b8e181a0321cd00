/* check_model.c — registering a host network, and every way to get it wrong. */
#include "tests.h"

#include "test_host.h"
#include "test_util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    /* FLOAT16 and BFLOAT16 are supported since 1.0 (check_precision.c) */
    ck_assert_int_eq(ADD(m, "a", data, grad, 1, REGOPT_DTYPE_FLOAT64, 0),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "dtype 4"));
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

/* ---- overlapping buffers (issue 16, defect 2) --------------------------- */

/* A refused registration: the status, a message naming both tensors and the
 * buffers, and nothing registered (counts unchanged, the name still free). */
static void expect_overlap(regopt_model *m, const char *name, float *d, float *g, size_t n,
                           const char *other, const char *what)
{
    size_t params = regopt_model_param_count(m), elements = regopt_model_element_count(m);
    char quoted[80];
    const char *msg;
    ck_assert_int_eq(ADD(m, name, d, g, n, REGOPT_DTYPE_FLOAT32, 0), REGOPT_ERR_INVALID_ARGUMENT);
    msg = regopt_model_message(m);
    snprintf(quoted, sizeof quoted, "\"%s\"", name);
    ck_assert_msg(strstr(msg, quoted) != NULL, "message does not name %s: %s", quoted, msg);
    snprintf(quoted, sizeof quoted, "\"%s\"", other);
    ck_assert_msg(strstr(msg, quoted) != NULL, "message does not name %s: %s", quoted, msg);
    ck_assert_msg(strstr(msg, what) != NULL, "message does not say \"%s\": %s", what, msg);
    ck_assert_uint_eq(regopt_model_param_count(m), params);
    ck_assert_uint_eq(regopt_model_element_count(m), elements);
}

START_TEST(overlapping_data_is_refused)
{
    static float w[16], g1[16], g2[16];
    regopt_model *m = regopt_model_create(NULL, NULL);
    MUST(ADD(m, "a", w, g1, 8, REGOPT_DTYPE_FLOAT32, 0));
    /* tied weights registered twice, with their own gradients */
    expect_overlap(m, "tied", w, g2, 8, "a", "data overlaps the data of");
    /* a view into the middle, and one that starts before and ends inside */
    expect_overlap(m, "view", w + 4, g2, 2, "a", "data overlaps the data of");
    expect_overlap(m, "tail", w + 7, g2, 4, "a", "data overlaps the data of");
    /* one float in common is enough */
    MUST(ADD(m, "c", w + 8, g2, 8, REGOPT_DTYPE_FLOAT32, 0));
    expect_overlap(m, "d", w + 15, g2 + 8, 1, "c", "data overlaps the data of");
    /* a name refused above was never registered */
    ck_assert_uint_eq(regopt_model_param_count(m), 2);
    ck_assert_uint_eq(regopt_model_element_count(m), 16);
    regopt_model_free(m);
}
END_TEST

START_TEST(gradient_inside_other_buffers_is_refused)
{
    static float buf[64];
    regopt_model *m = regopt_model_create(NULL, NULL);
    float *w = buf, *g = buf + 8, *w2 = buf + 16, *g2 = buf + 24, *spare = buf + 32;
    MUST(ADD(m, "a", w, g, 8, REGOPT_DTYPE_FLOAT32, 0));
    /* zeroing b's gradient would zero a's weights */
    expect_overlap(m, "b", w2, w + 2, 4, "a", "grad overlaps the data of");
    /* b's weights inside a's gradient: zeroing a's gradient zeroes them */
    expect_overlap(m, "b", g + 4, g2, 4, "a", "data overlaps the grad of");
    /* two tensors sharing one gradient buffer, fully or in part */
    expect_overlap(m, "b", w2, g, 8, "a", "grad overlaps the grad of");
    expect_overlap(m, "b", w2 + 4, g + 7, 4, "a", "grad overlaps the grad of");
    /* its own data and grad, as before */
    ck_assert_int_eq(ADD(m, "b", w2, w2 + 2, 4, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "overlap"));
    /* a frozen tensor over a gradient would be zeroed every step */
    expect_overlap(m, "frozen", g + 2, NULL, 2, "a", "data overlaps the grad of");
    /* and a gradient over a frozen tensor likewise */
    MUST(ADD(m, "frozen", spare, NULL, 8, REGOPT_DTYPE_FLOAT32, 0));
    expect_overlap(m, "b", w2, spare + 4, 8, "frozen", "grad overlaps the data of");
    ck_assert_uint_eq(regopt_model_param_count(m), 2);
    MUST(ADD(m, "b", w2, g2, 8, REGOPT_DTYPE_FLOAT32, 0));
    ck_assert_uint_eq(regopt_model_element_count(m), 24);
    regopt_model_free(m);
}
END_TEST

START_TEST(adjacent_and_frozen_views_are_accepted)
{
    static float buf[40];
    regopt_model *m = regopt_model_create(NULL, NULL);
    /* data, grad, data, grad back to back: touching is not overlapping */
    MUST(ADD(m, "a", buf, buf + 4, 4, REGOPT_DTYPE_FLOAT32, 0));
    MUST(ADD(m, "b", buf + 8, buf + 12, 4, REGOPT_DTYPE_FLOAT32, 0));
    MUST(ADD(m, "c", buf + 20, buf + 16, 4, REGOPT_DTYPE_FLOAT32, 0));
    MUST(ADD(m, "d", buf + 24, NULL, 4, REGOPT_DTYPE_FLOAT32, 0));
    /* frozen tensors are read-only to the library: a frozen view of a
       weight or of another frozen tensor is allowed (documented) */
    MUST(ADD(m, "view_of_a", buf + 1, NULL, 2, REGOPT_DTYPE_FLOAT32, 0));
    MUST(ADD(m, "view_of_d", buf + 24, NULL, 4, REGOPT_DTYPE_FLOAT32, 0));
    /* in either order: a trainable tensor over frozen ones */
    MUST(ADD(m, "e", buf + 26, buf + 32, 4, REGOPT_DTYPE_FLOAT32, 0));
    /* but never over a gradient, nor two trainable tensors over each other */
    expect_overlap(m, "f", buf + 36, buf + 29, 1, "e", "grad overlaps the data of");
    expect_overlap(m, "f", buf + 27, buf + 36, 1, "e", "data overlaps the data of");
    ck_assert_uint_eq(regopt_model_param_count(m), 7);
    regopt_model_free(m);
}
END_TEST

/* 20000 tensors in an order that is neither increasing nor decreasing:
 * registration stays O(log n) per tensor (names and ranges), and the last
 * checks still find an overlap anywhere among them. */
START_TEST(many_tensors_register_quickly)
{
    enum { N = 20000 };
    static float spare[1];
    float *w = calloc(N, sizeof(float)), *g = calloc(N, sizeof(float));
    regopt_model *m = regopt_model_create(NULL, NULL);
    clock_t t0;
    double seconds;
    size_t i;
    char name[32];
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(g);
    t0 = clock();
    for (i = 0; i < N; i++) {
        size_t j = (i * 7919) % N; /* 7919 is prime: a permutation */
        snprintf(name, sizeof name, "layer.%zu.weight", j);
        /* grads in reverse order of the data */
        ck_assert_int_eq(ADD(m, name, w + j, g + (N - 1 - j), 1, REGOPT_DTYPE_FLOAT32, 0),
                         REGOPT_OK);
    }
    seconds = (double)(clock() - t0) / CLOCKS_PER_SEC;
    ck_assert_msg(seconds < 2.0, "%d registrations took %.2f s", N, seconds);
    ck_assert_uint_eq(regopt_model_param_count(m), N);
    ck_assert_uint_eq(regopt_model_element_count(m), N);
    expect_overlap(m, "late", w + 12345, spare, 1, "layer.12345.weight",
                   "data overlaps the data of");
    ck_assert_int_eq(ADD(m, "late", g + 100, NULL, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "\"layer.19899.weight\""));
    ck_assert_int_eq(ADD(m, "layer.777.weight", w, g, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "already registered"));
    ck_assert_uint_eq(regopt_model_param_count(m), N);
    regopt_model_free(m);
    free(w);
    free(g);
}
END_TEST

/* A range that runs past the top of the address space can only be a wrong
 * pointer or count; it is refused before any range arithmetic wraps. Fake
 * addresses: registration never dereferences them. */
START_TEST(range_past_the_address_space_is_refused)
{
    static float g[8];
    float *top = (float *)(uintptr_t)(UINTPTR_MAX - 15); /* the last 16 bytes */
    regopt_model *m = regopt_model_create(NULL, NULL);
    ck_assert_int_eq(ADD(m, "top", top, NULL, 8, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "\"top\""));
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "data"));
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "address space"));
    ck_assert_int_eq(ADD(m, "top", g, top, 8, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "grad"));
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "address space"));
    ck_assert_uint_eq(regopt_model_param_count(m), 0);
    ck_assert_uint_eq(regopt_model_element_count(m), 0);
    /* three floats still fit below the top */
    MUST(ADD(m, "top", top, NULL, 3, REGOPT_DTYPE_FLOAT32, 0));
    ck_assert_uint_eq(regopt_model_element_count(m), 3);
    regopt_model_free(m);
}
END_TEST

/* ---- sizes (issue 16, defect 9) ----------------------------------------- */

/* The element counts of the tensors are summed with a bound, never modulo
 * 2^64: 32 frozen tensors of 2^59 elements plus 4 used to report 4. The
 * data pointers are fake (registration never dereferences them); frozen
 * tensors may share bytes, so only the count can refuse them. */
START_TEST(element_counts_never_wrap)
{
    const size_t big = (size_t)1 << 59, limit = SIZE_MAX / 16;
    float *fake = (float *)(uintptr_t)16;
    regopt_model *m = regopt_model_create(NULL, NULL);
    char name[16];
    int i;
    for (i = 0; i < 32; i++) {
        regopt_status st;
        snprintf(name, sizeof name, "big%d", i);
        st = ADD(m, name, fake, NULL, big, REGOPT_DTYPE_FLOAT32, 0);
        if (i == 0) {
            ck_assert_int_eq(st, REGOPT_OK);
            continue;
        }
        ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_model_message(m), name));
        ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "elements in all"));
        ck_assert_uint_eq(regopt_model_param_count(m), 1);
        ck_assert_uint_eq(regopt_model_element_count(m), big);
    }
    MUST(ADD(m, "four", fake, NULL, 4, REGOPT_DTYPE_FLOAT32, 0));
    ck_assert_uint_eq(regopt_model_element_count(m), big + 4);
    /* up to the limit exactly, then not one more */
    MUST(ADD(m, "rest", fake, NULL, limit - big - 4, REGOPT_DTYPE_FLOAT32, 0));
    ck_assert_uint_eq(regopt_model_element_count(m), limit);
    ck_assert_int_eq(ADD(m, "one", fake, NULL, 1, REGOPT_DTYPE_FLOAT32, 0),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "elements in all"));
    ck_assert_uint_eq(regopt_model_element_count(m), limit);
    ck_assert_uint_eq(regopt_model_param_count(m), 3);
    regopt_model_free(m);
}
END_TEST

/* One tensor: count * sizeof(float) (and the trainer's 4 floats per
 * element) must fit a size_t; the refused counts allocate nothing. */
START_TEST(huge_tensor_counts_are_refused)
{
    static const size_t bad[] = {SIZE_MAX / 16 + 1, SIZE_MAX / 4 + 1, SIZE_MAX / 2, SIZE_MAX};
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    float *fake = (float *)(uintptr_t)16, *fake_grad = (float *)(uintptr_t)((uintptr_t)1 << 63);
    regopt_model *m = regopt_model_create(&a, NULL);
    long allocs = c.allocs;
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(ADD(m, "huge", fake, fake_grad, bad[i], REGOPT_DTYPE_FLOAT32, 0),
                         REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "\"huge\""));
        ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "too large"));
    }
    ck_assert_int_eq(c.allocs, allocs);
    ck_assert_uint_eq(regopt_model_param_count(m), 0);
    ck_assert_uint_eq(regopt_model_element_count(m), 0);
    /* the largest single tensor fits, with its gradient below the top */
    MUST(ADD(m, "huge", fake, fake_grad, SIZE_MAX / 16, REGOPT_DTYPE_FLOAT32, 0));
    ck_assert_uint_eq(regopt_model_element_count(m), SIZE_MAX / 16);
    regopt_model_free(m);
    ck_assert_int_eq(c.allocs, c.frees);
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
    tc = tcase_create("overlap");
    tcase_add_test(tc, overlapping_data_is_refused);
    tcase_add_test(tc, gradient_inside_other_buffers_is_refused);
    tcase_add_test(tc, adjacent_and_frozen_views_are_accepted);
    tcase_add_test(tc, many_tensors_register_quickly);
    tcase_add_test(tc, range_past_the_address_space_is_refused);
    suite_add_tcase(s, tc);
    tc = tcase_create("sizes");
    tcase_add_test(tc, element_counts_never_wrap);
    tcase_add_test(tc, huge_tensor_counts_are_refused);
    suite_add_tcase(s, tc);
    return s;
}
