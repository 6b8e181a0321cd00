/* check_term_inputs.c — the bad inputs of regopt_regularizer_create_term
 * and term.weight: refused ops, sizes and memory, weight and attach (the
 * rig: term_rig.h). */
#include "tests.h"

#include "term_rig.h"

/* ---- 5. bad inputs ------------------------------------------------------ */

static void count_free(void *user) { ++*(int *)user; }

/* create_term refuses ops with `want` and a message holding `word`; it
 * neither calls free_user nor leaks. */
static void refused(const regopt_term_ops *ops, regopt_status want, const char *word)
{
    counting c = {0, 0, 0};
    regopt_allocator al = COUNTING_ALLOCATOR(&c);
    regopt_status st = REGOPT_OK;
    int freed = 0;
    ck_assert_ptr_null(regopt_regularizer_create_term(ops, &freed, count_free, &al, &st));
    ck_assert_msg(st == want, "%s: got %s (%s)", word, regopt_status_string(st),
                  regopt_last_error_message());
    ck_assert_msg(strstr(regopt_last_error_message(), word), "message \"%s\" lacks \"%s\"",
                  regopt_last_error_message(), word);
    ck_assert_int_eq(freed, 0);
    ck_assert_int_eq(c.allocs, c.frees);
}

START_TEST(create_term_bad_inputs)
{
    regopt_term_ops ops;
    refused(NULL, REGOPT_ERR_NULL_POINTER, "ops is NULL");
    ops = probe_ops(1);
    ops.size = 0;
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "too small");
    ops.size = offsetof(regopt_term_ops, value); /* value itself not covered */
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "too small");
    ops = probe_ops(1);
    ops.passes = REGOPT_TERM_MAX_PASSES + 1;
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "9 passes");
    ops = probe_ops(1);
    ops.value = NULL;
    refused(&ops, REGOPT_ERR_NULL_POINTER, "value");
    ops = probe_ops(1);
    ops.passes = 2;
    ops.pass_flags[1] = REGOPT_TERM_PASS_NO_GRAD | 0x10u; /* a flag no version defines yet */
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "0x10");
    ops = probe_ops(1);
    ops.state_size = NULL; /* state callbacks: all three or none */
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "together");
    ops = probe_ops(0);
    ops.load_state = probe_load;
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "together");
}
END_TEST

/* An older, smaller regopt_term_ops (up to value) is accepted and the
 * fields past its size are not read (a stray state_size there would be
 * refused by the all-three rule); an allocation failure neither leaks nor
 * calls free_user; a good term calls free_user once, when freed. */
START_TEST(create_term_sizes_and_memory)
{
    counting c = {0, 0, 0};
    regopt_allocator al = COUNTING_ALLOCATOR(&c);
    regopt_term_ops ops = probe_ops(0);
    regopt_regularizer *g;
    regopt_status st = REGOPT_OK;
    int freed = 0;
    ops.size = offsetof(regopt_term_ops, state_size);
    ops.state_size = probe_size;
    g = regopt_regularizer_create_term(&ops, &freed, count_free, &al, &st);
    ck_assert_msg(g != NULL, "%s: %s", regopt_status_string(st), regopt_last_error_message());
    regopt_regularizer_free(g);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(c.allocs, c.frees);
    ops = probe_ops(1);
    c.fail_at = c.allocs + 1;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, count_free, &al, &st));
    ck_assert_int_eq(st, REGOPT_ERR_NO_MEMORY);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(c.allocs, c.frees + 1); /* the failed allocation has nothing to free */
}
END_TEST

/* term.weight is in [0, 1e4]: NaN, infinities, negatives and too large are
 * refused and leave it as it was; a term needing more slots than the model
 * has is refused at attach and stays unattached. */
START_TEST(term_weight_and_attach)
{
    static const double bad[] = {NAN, INFINITY, -INFINITY, -1.0, -1e-300, 1e4 * (1 + 1e-15)};
    regopt_term_ops ops = probe_ops(1);
    probe pr;
    regopt_regularizer *g;
    double v = -1.0;
    size_t i;
    rig r;
    memset(&pr, 0, sizeof pr);
    g = new_term(&ops, &pr);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_TERM_WEIGHT, bad[i]),
                         REGOPT_ERR_OUT_OF_RANGE);
        RMUST(g, regopt_regularizer_get_double(g, REGOPT_TERM_WEIGHT, &v));
        ck_assert_msg(v == 1.0, "term.weight %g after setting %g", v, bad[i]);
    }
    RMUST(g, regopt_regularizer_set_double(g, REGOPT_TERM_WEIGHT, 0.0));
    RMUST(g, regopt_regularizer_set_double(g, REGOPT_TERM_WEIGHT, 1e4));
    regopt_regularizer_free(g);
    ops.passes = 2; /* the model has 2 slots, this needs 3 */
    g = new_term(&ops, &pr);
    rig_open(&r, R_NONE, 1);
    ck_assert_int_ne(regopt_trainer_attach(r.t, g), REGOPT_OK);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "slots"));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(g));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r.t), 0);
    rig_step(&r, 0);
    rig_close(&r);
    regopt_regularizer_free(g);
}
END_TEST

Suite *suite_term_inputs(void)
{
    Suite *s = suite_create("term_inputs");
    TCase *tc = tcase_create("inputs");
    tcase_add_test(tc, create_term_bad_inputs);
    tcase_add_test(tc, create_term_sizes_and_memory);
    tcase_add_test(tc, term_weight_and_attach);
    suite_add_tcase(s, tc);
    return s;
}
