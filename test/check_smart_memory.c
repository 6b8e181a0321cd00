/* check_smart_memory.c — SMART's allocation: none after the first step,
 * none in the first step after reserve, and bounded noise sizes (the rig:
 * smart_rig.h). */
#include "tests.h"

#include "smart_rig.h"
#include "smart_ref.h"

/* ======================================================================== */
/* 9. Allocation                                                            */
/* ======================================================================== */

static sm_run *alloc_run(const regopt_allocator *a, int sam)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, a);
    sm_smart(r, 1.0, 0.1, 0.01, 0.1, 2, REGOPT_SMART_NORM_L1, 0);
    sm_bregman(r, 1.0, 0.5);
    if (sam)
        sm_sam(r);
    return r;
}

START_TEST(no_allocation_after_the_first_step)
{
    int sam;
    for (sam = 0; sam < 2; sam++) {
        counting c = {0, 0, 0};
        regopt_allocator a = {sizeof(regopt_allocator), count_alloc, count_release, &c};
        sm_run *r = alloc_run(&a, sam);
        sm_set s;
        long before;
        int step;
        sm_fill(&s, 2, 3, 2, 2, 3, 1, 1, 60);
        sm_step(r, &s);
        before = c.allocs;
        for (step = 0; step < 6; step++) {
            sm_fill(&s, 1 + (size_t)(step % 2), 3 - (size_t)(step % 3 == 1), 2, 2, 3, 1, 0,
                    61 + (unsigned)step);
            sm_reset(r);
            sm_step(r, &s);
        }
        ck_assert_msg(c.allocs == before, "SMART/Bregman%s steps allocated %ld times",
                      sam ? "/SAM" : "", c.allocs - before);
        sm_close(r);
        ck_assert_int_eq(c.allocs, c.frees);
    }
}
END_TEST

/* The header: regularizers allocate their buffers when added, "never in a
 * step", and regopt_trainer_reserve makes "not even the first step"
 * allocate. */
START_TEST(reserve_makes_the_first_smart_step_allocation_free)
{
    counting c = {0, 0, 0};
    regopt_allocator a = {sizeof(regopt_allocator), count_alloc, count_release, &c};
    sm_run *r = alloc_run(&a, 1);
    sm_set s;
    long before;
    sm_fill(&s, 2, 3, 1, 2, 3, 0, 0, 70);
    SM_TMUST(r->t, regopt_trainer_reserve(r->t, 8));
    before = c.allocs;
    sm_step(r, &s);
    before = c.allocs - before;
    sm_close(r); /* first, so that a failure below leaks nothing */
    ck_assert_msg(before == 0, "the first step after reserve allocated %ld times", before);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST
/* ---- sizes (issue 16, defect 9) ------------------------------------------ */

/* An allocator that remembers the largest request and refuses any over
 * 1 GiB (so an unfixed library fails cleanly instead of paging). */
typedef struct capped {
    size_t biggest;
    long allocs;
} capped;

static void *capped_alloc(size_t n, void *user)
{
    capped *c = user;
    c->allocs++;
    if (n > c->biggest)
        c->biggest = n;
    return n > ((size_t)1 << 30) ? NULL : malloc(n);
}

static void capped_free(void *p, void *user)
{
    (void)user;
    free(p);
}

static int wide_pass(const regopt_pass *p, void *user)
{
    (void)p;
    ++*(int *)user;
    return 0;
}

/* SMART's two noise buffers are input_rows x input_width floats each: a
 * reserve or a batch asking for more than 2^36 floats (or for a count whose
 * byte size wraps) is refused with a message, before any allocation of
 * that size, and nothing changes. */
START_TEST(smart_noise_size_is_bounded)
{
    static const size_t bad_in[] = {(size_t)1 << 17, SIZE_MAX / 2 + 1, SIZE_MAX};
    static float w[2] = {0.5f, -0.25f}, gw[2];
    const size_t d = (size_t)1 << 20; /* 2^20 x 2^16 = 2^36 floats */
    capped c = {0, 0};
    regopt_allocator a = {sizeof(regopt_allocator), capped_alloc, capped_free, &c};
    regopt_model *m = regopt_model_create(&a, NULL);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_SGD, &a, NULL);
    regopt_trainer *t;
    regopt_regularizer *smart;
    regopt_batch b;
    int32_t y[4] = {0, 1, 0, 1};
    int calls = 0;
    int64_t steps = -1;
    size_t i;
    SM_MUST(regopt_model_add_param(m, "w", w, gw, 2, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_set_output_width(m, 2));
    SM_MUST(regopt_model_set_input_width(m, d));
    SM_MUST(regopt_model_set_slots(m, 2));
    SM_MUST(regopt_model_set_callbacks(m, wide_pass, wide_pass, &calls, NULL));
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    smart = tu_add(t, REGOPT_REG_SMART);
    ck_assert_ptr_nonnull(smart);
    c.biggest = 0;
    /* regopt_trainer_reserve sizes the noise for as many embedding rows */
    ck_assert_int_eq(regopt_trainer_reserve(t, (size_t)1 << 17), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "SMART"));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "2^36"));
    ck_assert_msg(c.biggest <= ((size_t)1 << 26), "an allocation of %zu bytes was tried",
                  c.biggest);
    /* a batch's embedding rows likewise, and before any pass */
    regopt_batch_init(&b);
    b.rows = 4;
    b.labels = y;
    for (i = 0; i < sizeof bad_in / sizeof bad_in[0]; i++) {
        b.input_rows = bad_in[i];
        ck_assert_int_eq(regopt_trainer_step(t, &b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "input rows"));
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(t), "2^36"));
    }
    ck_assert_msg(c.biggest <= ((size_t)1 << 26), "an allocation of %zu bytes was tried",
                  c.biggest);
    ck_assert_int_eq(calls, 0);
    ck_assert_float_eq(w[0], 0.5f);
    ck_assert_float_eq(w[1], -0.25f);
    SM_MUST(regopt_trainer_get_int(t, REGOPT_STAT_STEP, &steps));
    ck_assert_int_eq(steps, 0);
    /* small sizes still work */
    SM_TMUST(t, regopt_trainer_reserve(t, 4));
    regopt_trainer_free(t);
    tu_free_regs();
    regopt_optimizer_free(o);
    regopt_model_free(m);
}
END_TEST

Suite *suite_smart_memory(void)
{
    Suite *s = suite_create("smart_memory");
    TCase *tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_after_the_first_step);
    tcase_add_test(tc, reserve_makes_the_first_smart_step_allocation_free);
    tcase_add_test(tc, smart_noise_size_is_bounded);
    suite_add_tcase(s, tc);
    return s;
}
