/* check_trainer_rollback.c — suite trainer: the rollback guarantee: a failed
 * forward or backward, a non-finite loss, gradient or update leaves every
 * bit as it was. */
#include "trainer_rig.h"

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

TCase *trainer_rollback_tcase(void)
{
    TCase *tc = tcase_create("rollback");
    tcase_add_test(tc, rollback_on_forward_failure);
    tcase_add_test(tc, rollback_on_backward_failure);
    tcase_add_test(tc, rollback_on_nonfinite_loss);
    tcase_add_test(tc, rollback_on_nonfinite_gradient);
    tcase_add_loop_test(tc, rollback_on_nonfinite_update, 0, 3);
    return tc;
}
