/* check_smart_sam.c — SMART + Bregman + SAM: pass counts and restore, and
 * the rollback of a step failing in a perturbed adversarial or teacher
 * forward (the rig: smart_rig.h). */
#include "tests.h"

#include "smart_rig.h"
#include "smart_ref.h"

/* ======================================================================== */
/* 7. SMART + Bregman + SAM                                                 */
/* ======================================================================== */

START_TEST(sam_counts_and_restores)
{
    const size_t d = 2, k = 3, count = 2, nw = k * d;
    const int K = 2;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_SOFTMAX_CE, 0.25, NULL, NULL);
    float A0[SK * SD], b0[SK];
    sm_set s;
    int i, pert_adv = 0, pert_npg = 0, clean_seen = 0;
    size_t j;
    sm_smart(r, 1.0, 0.1, 0.01, 0.1, K, REGOPT_SMART_NORM_INF, 0);
    sm_bregman(r, 1.0, 0.5);
    sm_sam(r);
    sm_fill(&s, count, 2, 1, d, k, 0, 0, 30);
    sm_step(r, &s); /* first step: teacher = w */
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    sm_fill(&s, count, 2, 1, d, k, 0, 0, 31);
    sm_reset(r);
    sm_step(r, &s);
    ck_assert_int_eq(r->h.forwards, (int)count * (1 + 2 * (K + 2)));
    ck_assert_int_eq(r->h.backwards, (int)count * 2 * (K + 2));
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_FORWARD_CALLS), (double)r->h.forwards);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 1.0);
    for (i = 0; i < r->h.nrec; i++) {
        const sm_rec *c = &r->h.rec[i];
        if (i < (int)count) {
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD);
            continue;
        }
        if (c->flags & REGOPT_PASS_PERTURBED_WEIGHTS) {
            ck_assert_msg(memcmp(c->w, A0, sizeof(float) * nw) != 0,
                          "perturbed pass at unperturbed weights");
            if (!c->backward && c->slot == 1)
                pert_adv++;
            if (c->backward && (c->flags & REGOPT_PASS_NO_PARAM_GRAD))
                pert_npg++;
        } else if (!c->backward) {
            ck_assert_msg(memcmp(c->w, A0, sizeof(float) * nw) == 0, "clean pass at w + eps");
            clean_seen++;
        }
    }
    ck_assert_int_eq(pert_adv, (int)count * (K + 1));
    ck_assert_int_eq(pert_npg, (int)count * K);
    ck_assert_int_eq(clean_seen, (int)count * (K + 2));
    /* restored bit-exactly before the update: w_new = w - lr g (SGD) where g
       is the gradient left in the buffers */
    for (j = 0; j < nw; j++)
        sm_near(r->h.A[j], (double)A0[j] - 0.25 * r->h.gA[j], 1e-6, 1.0, "A", (int)j);
    for (j = 0; j < k; j++)
        sm_near(r->h.b[j], (double)b0[j] - 0.25 * r->h.gb[j], 1e-6, 1.0, "b", (int)j);
    /* the SMART statistics are those of the clean evaluation */
    ck_assert(rstat(r->smart, REGOPT_STAT_SMART_RS) > 0.0);
    sm_close(r);
}
END_TEST

static sm_run *rollback_run(void)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.25, NULL, NULL);
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    sm_smart(r, 1.0, 0.1, 0.01, 0.1, 2, REGOPT_SMART_NORM_L2, 0);
    sm_bregman(r, 1.0, 0.5);
    sm_sam(r);
    return r;
}

/* A run that fails in the adversarial forward of the perturbed evaluation
 * at step `fail_at`, retries and continues, ends bit-identical to a run that
 * never failed: parameters, step count, momentum, teacher and noise. */
static void check_rollback(int fail_at)
{
    sm_run *a = rollback_run(), *b = rollback_run();
    sm_set s;
    int step, i;
    for (step = 0; step < 5; step++) {
        sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 40 + (unsigned)step);
        if (step == fail_at) {
            float A0[SK * SD], b0[SK];
            regopt_status st;
            int64_t n = -1;
            memcpy(A0, a->h.A, sizeof A0);
            memcpy(b0, a->h.b, sizeof b0);
            a->h.fail_perturbed_adv = 1;
            st = regopt_trainer_step(a->t, s.b, s.count);
            ck_assert_int_eq(st, REGOPT_ERR_FORWARD);
            ck_assert_int_eq(a->h.fail_perturbed_adv, 0);
            ck_assert_msg(memcmp(A0, a->h.A, sizeof A0) == 0 && memcmp(b0, a->h.b, sizeof b0) == 0,
                          "weights changed by a failed step");
            SM_MUST(regopt_trainer_get_int(a->t, REGOPT_STAT_STEP, &n));
            ck_assert_int_eq(n, step);
        }
        sm_reset(a);
        sm_reset(b);
        sm_step(a, &s);
        sm_step(b, &s);
        ck_assert_int_eq(a->h.nrec, b->h.nrec);
        for (i = 0; i < a->h.nrec; i++) {
            const sm_rec *x = &a->h.rec[i], *y = &b->h.rec[i];
            ck_assert_msg(x->flags == y->flags && x->seed == y->seed &&
                              memcmp(x->w, y->w, sizeof x->w) == 0 &&
                              memcmp(x->pert, y->pert, sizeof x->pert) == 0,
                          "step %d call %d differs from the run that never failed", step, i);
        }
        ck_assert_msg(memcmp(a->h.A, b->h.A, sizeof a->h.A) == 0 &&
                          memcmp(a->h.b, b->h.b, sizeof a->h.b) == 0,
                      "weights differ after step %d", step);
    }
    sm_close(a);
    sm_close(b);
}

START_TEST(rollback_in_perturbed_adversarial_forward) { check_rollback(2); }
END_TEST
START_TEST(rollback_in_first_step) { check_rollback(0); }
END_TEST

/* A failure in the teacher forward itself leaves the student in place. */
START_TEST(rollback_in_teacher_forward)
{
    sm_run *r = rollback_run();
    float A0[SK * SD], b0[SK];
    sm_set s;
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 50);
    sm_step(r, &s);
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    sm_reset(r);
    r->h.fail_forward = 2; /* the second teacher forward */
    ck_assert_int_eq(regopt_trainer_step(r->t, s.b, s.count), REGOPT_ERR_FORWARD);
    ck_assert_msg(memcmp(A0, r->h.A, sizeof A0) == 0 && memcmp(b0, r->h.b, sizeof b0) == 0,
                  "student weights not restored after a failed teacher pass");
    r->h.fail_forward = 0;
    sm_step(r, &s);
    sm_close(r);
}
END_TEST

Suite *suite_smart_sam(void)
{
    Suite *s = suite_create("smart_sam");
    TCase *tc = tcase_create("sam");
    tcase_add_test(tc, sam_counts_and_restores);
    tcase_add_test(tc, rollback_in_perturbed_adversarial_forward);
    tcase_add_test(tc, rollback_in_first_step);
    tcase_add_test(tc, rollback_in_teacher_forward);
    suite_add_tcase(s, tc);
    return s;
}
