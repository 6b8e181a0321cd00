/* check_adv_mask.c — the per-row task mask (regopt_batch.task_mask):
 * unlabelled rows take no task loss and have no label read, keep their
 * weight in the normaliser, and still take the consistency terms (VAT,
 * R-Drop); an older host's smaller descriptor never has it read; a
 * labelled row without labels is refused. The reference is adv_rig.h's. */
#include "tests.h"

#include "adv_rig.h"

#include <stddef.h>

#define D3 3
#define K3 3

/* No regularizer: the gradient is sum over labelled rows of rw dl/dz, over
 * the weight of EVERY kept row; an unlabelled row's label is never read
 * (here: out of range). */
START_TEST(task_loss_skips_unlabelled_rows)
{
    ad_run *a = ad_open(D3, K3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set s;
    ad_ref R;
    uint8_t tm[3] = {1, 0, 7}; /* any non-zero value is labelled */
    double z[SO * SK], dz[SO * SK] = {0}, gA[SW] = {0}, gb[SK] = {0}, L;
    sm_fill(&s, 1, 3, 2, D3, K3, 1, 0, 3);
    s.b[0].task_mask = tm;
    s.y[0][1] = -5;
    ad_ref_of(&R, &a->s, &s, 0);
    ck_assert(R.lab[0] && !R.lab[1] && R.lab[2]);
    ad_ref_out(&R, NULL, z);
    L = ad_ref_ce(&R, z, 1.0, dz);
    ad_ref_pgrad(&R, NULL, dz, gA, gb);
    sm_step(&a->s, &s);
    ad_check_grads(&a->s, gA, gb, "task mask");
    sm_near(stat(a->s.t, REGOPT_STAT_LOSS), L, 1e-6, 1e-3, "loss", 0);
    sm_near(stat(a->s.t, REGOPT_STAT_WEIGHT), R.W, 1e-7, 1.0, "weight", 0);
    /* the row really was left out: labelled, it would fail the step */
    s.b[0].task_mask = NULL;
    ck_assert_int_eq(regopt_trainer_step(a->s.t, s.b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(regopt_trainer_message(a->s.t), "row 1") != NULL);
    sm_close(&a->s);
}
END_TEST

/* A host built against the header before task_mask passes a smaller size:
 * whatever lies where the field would be is never read. */
START_TEST(older_descriptor_never_reads_the_field)
{
    ad_run *a = ad_open(D3, K3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *b = ad_open(D3, K3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set s;
    regopt_batch old;
    sm_fill(&s, 1, 2, 2, D3, K3, 1, 0, 4);
    old = s.b[0];
    old.size = offsetof(regopt_batch, task_mask);
    old.task_mask = (const uint8_t *)(uintptr_t)1; /* would crash if read */
    TMUST(a->s.t, regopt_trainer_step(a->s.t, &old, 1));
    sm_step(&b->s, &s);
    ck_assert(memcmp(a->s.h.A, b->s.h.A, sizeof a->s.h.A) == 0);
    sm_close(&a->s);
    sm_close(&b->s);
}
END_TEST

/* Labels may be NULL only when no kept row is labelled. */
START_TEST(labelled_row_without_labels_is_refused)
{
    ad_run *a = ad_open(D3, K3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set s;
    uint8_t tm[2] = {0, 1}, none[2] = {0, 0};
    float A[SK * SD];
    sm_fill(&s, 1, 2, 2, D3, K3, 0, 0, 5);
    s.b[0].labels = NULL;
    s.b[0].task_mask = tm;
    memcpy(A, a->s.h.A, sizeof A);
    ck_assert_int_eq(regopt_trainer_step(a->s.t, s.b, 1), REGOPT_ERR_NULL_POINTER);
    ck_assert(strstr(regopt_trainer_message(a->s.t), "row 1 is labelled") != NULL);
    ck_assert(memcmp(A, a->s.h.A, sizeof A) == 0);
    /* every row unlabelled and nothing else attached: a zero gradient */
    s.b[0].task_mask = none;
    sm_step(&a->s, &s);
    ck_assert(stat(a->s.t, REGOPT_STAT_LOSS) == 0.0);
    ck_assert(memcmp(A, a->s.h.A, sizeof A) == 0);
    sm_close(&a->s);
}
END_TEST

/* Semi-supervised VAT: labelled rows take CE + KL, unlabelled rows KL only;
 * checked against the same step with the unlabelled row's CE removed by
 * hand: the difference of the two runs' gradients is exactly that row's CE
 * gradient over W. */
START_TEST(vat_semi_supervised_mixes_both)
{
    ad_run *m = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *f = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *gm, *gf;
    sm_set s;
    ad_ref R;
    uint8_t tm[2] = {1, 0};
    double z[SO * SK], dz[SO * SK] = {0}, gA[SW] = {0}, gb[SK] = {0}, want_A[SW], want_b[SK];
    size_t i;
    gm = ad_adv(m, REGOPT_ADV_VAT, 1.0, 1.0, 0.0, 1);
    gf = ad_adv(f, REGOPT_ADV_VAT, 1.0, 1.0, 0.0, 1);
    sm_rset(gm, REGOPT_ADV_INIT_MAG, 0.1);
    sm_rset(gf, REGOPT_ADV_INIT_MAG, 0.1);
    sm_fill(&s, 1, 2, 2, D3, K3, 1, 0, 6);
    sm_step(&f->s, &s); /* every row labelled */
    s.b[0].task_mask = tm;
    sm_step(&m->s, &s);
    /* the unlabelled row's CE gradient, from the reference */
    sm_fill(&s, 1, 2, 2, D3, K3, 1, 0, 6);
    ad_ref_of(&R, &f->s, &s, 0);
    for (i = 0; i < K3 * D3; i++) /* the weights before the step */
        R.A[i] = (double)m->s.h.A[i] + 0.1 * m->s.h.gA[i];
    for (i = 0; i < K3; i++)
        R.b[i] = (double)m->s.h.b[i] + 0.1 * m->s.h.gb[i];
    R.lab[0] = 0;
    ad_ref_out(&R, NULL, z);
    (void)ad_ref_ce(&R, z, 1.0, dz);
    ad_ref_pgrad(&R, NULL, dz, gA, gb);
    for (i = 0; i < K3 * D3; i++)
        want_A[i] = f->s.h.gA[i] - gA[i];
    for (i = 0; i < K3; i++)
        want_b[i] = f->s.h.gb[i] - gb[i];
    ad_check_grads(&m->s, want_A, want_b, "semi-supervised VAT");
    ck_assert(ad_stat(gm, REGOPT_STAT_ADV_LOSS) == ad_stat(gf, REGOPT_STAT_ADV_LOSS));
    sm_close(&m->s);
    sm_close(&f->s);
}
END_TEST

/* A loss callback's values on unlabelled rows are ignored: a callback that
 * computes softmax CE (and writes garbage on rows whose label is invalid)
 * gives the built-in loss's step. */
static int ce_callback(const regopt_batch *b, const float *z, size_t rows, size_t k,
                       float *row_loss, float *dz, void *user)
{
    size_t i, j;
    (void)user;
    for (i = 0; i < rows; i++) {
        int32_t y = b->labels[i];
        double m = z[i * k], s = 0.0;
        if (y < 0 || (size_t)y >= k) { /* unlabelled: anything finite */
            row_loss[i] = 1e3f;
            for (j = 0; j < k; j++)
                dz[i * k + j] = 7.0f;
            continue;
        }
        for (j = 1; j < k; j++)
            m = z[i * k + j] > m ? z[i * k + j] : m;
        for (j = 0; j < k; j++)
            s += exp(z[i * k + j] - m);
        row_loss[i] = (float)(m + log(s) - z[i * k + y]);
        for (j = 0; j < k; j++)
            dz[i * k + j] = (float)(exp(z[i * k + j] - m) / s - (j == (size_t)y));
    }
    return 0;
}

START_TEST(loss_callback_ignores_unlabelled_rows)
{
    ad_run *a = ad_open(D3, K3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *c = ad_open(D3, K3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set s;
    uint8_t tm[3] = {1, 0, 1};
    size_t i;
    TMUST(c->s.t, regopt_trainer_set_loss_callback(c->s.t, ce_callback, NULL, NULL));
    TMUST(c->s.t, regopt_trainer_set_int(c->s.t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_CALLBACK));
    sm_fill(&s, 1, 3, 2, D3, K3, 1, 0, 8);
    s.b[0].task_mask = tm;
    s.y[0][1] = -1;
    sm_step(&a->s, &s);
    sm_step(&c->s, &s);
    for (i = 0; i < K3 * D3; i++)
        sm_near(c->s.h.gA[i], a->s.h.gA[i], 1e-5, 1e-3, "callback gA", (int)i);
    sm_near(stat(c->s.t, REGOPT_STAT_LOSS), stat(a->s.t, REGOPT_STAT_LOSS), 1e-6, 1e-3, "loss",
            0);
    sm_close(&a->s);
    sm_close(&c->s);
}
END_TEST

Suite *suite_adv_mask(void)
{
    Suite *s = suite_create("adv_mask");
    TCase *tc = tcase_create("task_mask");
    tcase_add_test(tc, task_loss_skips_unlabelled_rows);
    tcase_add_test(tc, older_descriptor_never_reads_the_field);
    tcase_add_test(tc, labelled_row_without_labels_is_refused);
    tcase_add_test(tc, vat_semi_supervised_mixes_both);
    tcase_add_test(tc, loss_callback_ignores_unlabelled_rows);
    suite_add_tcase(s, tc);
    return s;
}
