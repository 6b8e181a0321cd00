/* check_sam_rollback.c — the rollback of a SAM step whose perturbed pass
 * fails or is not finite, plain, m-sharpness and GSAM (the rig:
 * sam_rig.h). */
#include "tests.h"

#include "sam_rig.h"

/* ======================================================================== */
/* 11. Rollback when a perturbed pass fails                                 */
/* ======================================================================== */

enum fault { F_FORWARD, F_BACKWARD, F_NAN_OUTPUT, F_INF_GRAD, F_HUGE_GRAD };

typedef struct snapshot {
    float w[NW], b[TH_K];
    int64_t step;
    double loss;
} snapshot;

static void snap(const lrun *r, snapshot *s)
{
    memcpy(s->w, r->l.h.w, sizeof s->w);
    memcpy(s->b, r->l.h.b, sizeof s->b);
    s->step = stat_int(r->t, REGOPT_STAT_STEP);
    s->loss = stat(r->t, REGOPT_STAT_LOSS);
}

static void same_bits(const snapshot *a, const snapshot *b, const char *what)
{
    ck_assert_msg(memcmp(a->w, b->w, sizeof a->w) == 0, "%s: W differs", what);
    ck_assert_msg(memcmp(a->b, b->b, sizeof a->b) == 0, "%s: b differs", what);
    ck_assert_int_eq(a->step, b->step);
    ck_assert_msg(memcmp(&a->loss, &b->loss, sizeof a->loss) == 0, "%s: stat.loss differs",
                  what);
}

/* `at` is the 1-based forward (or backward) call within the failing step. */
static void sam_rollback(int m_rows, int gsam, enum fault f, int at, regopt_status want,
                         const char *words)
{
    lrun *bad = lrun_sam(REGOPT_ADAM, 0.05), *good = lrun_sam(REGOPT_ADAM, 0.05);
    snapshot before, after, x, g;
    int i;
    lrun *both[2];
    both[0] = bad;
    both[1] = good;
    for (i = 0; i < 2; i++) {
        lset(both[i], REGOPT_SAM_M_ROWS, m_rows);
        lset(both[i], REGOPT_SAM_GSAM, gsam);
        lset(both[i], REGOPT_SAM_RHO, 0.2);
    }
    for (i = 0; i < 3; i++) {
        lstep(bad, 2);
        lstep(good, 2);
    }
    snap(bad, &before);
    switch (f) {
    case F_FORWARD: bad->l.h.fail_forward = bad->l.h.forwards + at; break;
    case F_BACKWARD: bad->l.h.fail_backward = bad->l.h.backwards + at; break;
    case F_NAN_OUTPUT: bad->l.h.nan_output = bad->l.h.forwards + at; break;
    case F_INF_GRAD: bad->l.h.inf_grad = bad->l.h.backwards + at; break;
    case F_HUGE_GRAD: bad->l.h.huge_grad = bad->l.h.backwards + at; break;
    }
    bad->l.nrec = 0;
    ck_assert_int_eq(regopt_trainer_step(bad->t, bad->b, 2), want);
    ck_assert_msg(strstr(regopt_trainer_message(bad->t), words) != NULL, "message \"%s\"",
                  regopt_trainer_message(bad->t));
    /* the fault did hit a pass at perturbed weights */
    ck_assert(bad->l.nrec >= 2);
    ck_assert(bad->l.rec[bad->l.nrec - 1].flags & REGOPT_PASS_PERTURBED_WEIGHTS);
    ck_assert(memcmp(bad->l.rec[bad->l.nrec - 1].w, before.w, sizeof before.w) != 0);
    snap(bad, &after);
    same_bits(&before, &after, "after the failed step");
    bad->l.h.fail_forward = bad->l.h.fail_backward = bad->l.h.nan_output = 0;
    bad->l.h.inf_grad = bad->l.h.huge_grad = 0;
    for (i = 0; i < 3; i++) {
        lstep(bad, 2);
        lstep(good, 2);
    }
    snap(bad, &x);
    snap(good, &g);
    same_bits(&x, &g, "after continuing");
    lrun_close(bad);
    lrun_close(good);
}

START_TEST(rollback_perturbed_forward)
{
    /* forwards per step: clean 1, 2, perturbed 3, 4 */
    sam_rollback(0, 0, F_FORWARD, 4, REGOPT_ERR_FORWARD, "forward callback returned 7");
    sam_rollback(0, 0, F_FORWARD, 3, REGOPT_ERR_FORWARD, "micro-batch 0");
    /* m-sharpness, 3 chunks per micro-batch: forward 8 = micro-batch 1,
     * chunk 0, perturbed, after three chunks were accumulated */
    sam_rollback(3, 0, F_FORWARD, 8, REGOPT_ERR_FORWARD, "micro-batch 1");
}
END_TEST

START_TEST(rollback_perturbed_backward)
{
    sam_rollback(0, 0, F_BACKWARD, 3, REGOPT_ERR_BACKWARD, "backward callback returned 9");
    sam_rollback(0, 1, F_BACKWARD, 4, REGOPT_ERR_BACKWARD, "micro-batch 1");
    sam_rollback(3, 1, F_BACKWARD, 10, REGOPT_ERR_BACKWARD, "backward callback returned 9");
}
END_TEST

START_TEST(rollback_perturbed_nonfinite)
{
    sam_rollback(0, 0, F_NAN_OUTPUT, 4, REGOPT_ERR_NONFINITE_LOSS, "micro-batch 1");
    sam_rollback(0, 0, F_INF_GRAD, 4, REGOPT_ERR_NONFINITE_GRADIENT, "not finite");
}
END_TEST

/* A finite perturbed gradient that the update cannot take (Adam's second
 * moment would overflow): the failure comes after the perturbed passes, when
 * the update's own pass was to put w back -- the weights are w all the same,
 * not w + eps (issue 25's restore inside the update). */
START_TEST(rollback_update_refused_after_ascent)
{
    sam_rollback(0, 0, F_HUGE_GRAD, 4, REGOPT_ERR_NONFINITE_GRADIENT, "second moment");
    sam_rollback(0, 1, F_HUGE_GRAD, 3, REGOPT_ERR_NONFINITE_GRADIENT, "nothing was updated");
}
END_TEST

Suite *suite_sam_rollback(void)
{
    Suite *s = suite_create("sam_rollback");
    TCase *tc = tcase_create("rollback");
    tcase_add_test(tc, rollback_perturbed_forward);
    tcase_add_test(tc, rollback_perturbed_backward);
    tcase_add_test(tc, rollback_perturbed_nonfinite);
    tcase_add_test(tc, rollback_update_refused_after_ascent);
    suite_add_tcase(s, tc);
    return s;
}
