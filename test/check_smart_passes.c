/* check_smart_passes.c — SMART's and Bregman's gradients against finite
 * differences, and the passes: order, slots, flags, NO_PARAM_GRAD,
 * d_input, R-Drop moving SMART to slot 2, ragged input rows (the rig:
 * smart_rig.h, smart_ref.h). */
#include "tests.h"

#include "smart_rig.h"
#include "smart_ref.h"

/* ======================================================================== */
/* 3. Finite differences of R_s and D_Breg                                  */
/* ======================================================================== */

/* With only SMART on: d_outputs of slot 0 minus the task part is
 * lambda dR/dz, d_outputs of the final adversarial backward is lambda dR/da;
 * R_s, the task loss and the objective as statistics. */
static void check_rs_gradients(regopt_loss_kind loss)
{
    const size_t d = 3, k = 4, rows = 3;
    const double lambda = 2.5;
    const int mse = loss == REGOPT_LOSS_MSE;
    sm_run *r = sm_open(d, k, 2, loss, 0.1, NULL, NULL);
    sm_set s;
    const sm_rec *fz, *fa, *bz, *ba;
    double W, R = 0.0, task = 0.0;
    size_t i, j;
    sm_fill(&s, 1, rows, 1, d, k, 1, 1, 3);
    W = sm_wsum(&s);
    sm_smart(r, lambda, 0.5, 0.2, 0.1, 1, REGOPT_SMART_NORM_L2, 0);
    sm_step(r, &s);
    fz = sm_must_find(&r->h, 0, 0, 0, 0, 0, 0);
    fa = sm_must_find(&r->h, 0, 1, 0, 0, 0, 1);
    bz = sm_must_find(&r->h, 1, 0, 0, 0, 0, 0);
    ba = sm_must_find(&r->h, 1, 1, 0, 0, REGOPT_PASS_NO_PARAM_GRAD, 0);
    for (i = 0; i < rows; i++) {
        double z[SK], a[SK], tgrad[SK], rw = sm_rw(&s, 0, i);
        f2d(z, fz->out + i * k, k);
        f2d(a, fa->out + i * k, k);
        R += rw * ref_ls(a, z, k, mse) / W;
        task += rw * ref_task(z, k, s.y[0][i], s.tg[0] + i * k, mse, tgrad) / W;
        for (j = 0; j < k; j++) {
            int id = (int)(i * k + j);
            double want_a = lambda * rw / W * fd_ls(a, z, k, mse, 0, j);
            double want_z = lambda * rw / W * fd_ls(a, z, k, mse, 1, j);
            sm_near(ba->out[i * k + j], want_a, 1e-4, 1e-5, "lambda dR/da", id);
            sm_near(bz->out[i * k + j] - rw / W * tgrad[j], want_z, 1e-4, 1e-5,
                    "lambda dR/dz", id);
        }
    }
    ck_assert_msg(R > 1e-6, "R_s = %g is too small to test anything", R);
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_RS), R, 1e-5, 1e-9, "stat.smart_rs", 0);
    sm_near(sm_get(r->t, REGOPT_STAT_LOSS), task, 1e-5, 1e-9, "stat.loss", 0);
    sm_near(sm_get(r->t, REGOPT_STAT_OBJECTIVE), task + lambda * R, 1e-5, 1e-9,
            "stat.objective", 0);
    sm_close(r);
}

START_TEST(rs_gradients_classification) { check_rs_gradients(REGOPT_LOSS_SOFTMAX_CE); }
END_TEST
START_TEST(rs_gradients_regression) { check_rs_gradients(REGOPT_LOSS_MSE); }
END_TEST

/* Bregman only: after two steps with beta 0.5 the teacher lags; in the third
 * d_outputs of slot 0 minus the task part is mu dD/dz. */
static void check_bregman_gradients(regopt_loss_kind loss)
{
    const size_t d = 3, k = 4, rows = 3;
    const double mu = 1.7;
    const int mse = loss == REGOPT_LOSS_MSE;
    sm_run *r = sm_open(d, k, 1, loss, 0.5, NULL, NULL);
    sm_set s;
    const sm_rec *fq, *fz, *bz;
    double W, D = 0.0, task = 0.0;
    size_t i, j;
    int step;
    sm_bregman(r, mu, 0.5);
    for (step = 0; step < 3; step++) {
        sm_fill(&s, 1, rows, 1, d, k, 1, 1, 4 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
    }
    W = sm_wsum(&s);
    fq = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TEACHER, 0, 0);
    fz = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TRAIN, 0, 0);
    bz = sm_must_find(&r->h, 1, 0, 0, 0, 0, 0);
    for (i = 0; i < rows; i++) {
        double z[SK], q[SK], tgrad[SK], rw = sm_rw(&s, 0, i);
        f2d(z, fz->out + i * k, k);
        f2d(q, fq->out + i * k, k);
        D += rw * ref_ls(z, q, k, mse) / W;
        task += rw * ref_task(z, k, s.y[0][i], s.tg[0] + i * k, mse, tgrad) / W;
        for (j = 0; j < k; j++)
            sm_near(bz->out[i * k + j] - rw / W * tgrad[j],
                    mu * rw / W * fd_ls(z, q, k, mse, 0, j), 1e-4, 1e-5, "mu dD/dz",
                    (int)(i * k + j));
    }
    ck_assert_msg(D > 1e-6, "D_Breg = %g is too small to test anything", D);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_D), D, 1e-5, 1e-9, "stat.bregman_d", 0);
    sm_near(sm_get(r->t, REGOPT_STAT_OBJECTIVE), task + mu * D, 1e-5, 1e-9, "stat.objective",
            0);
    sm_close(r);
}

START_TEST(bregman_gradients_classification) { check_bregman_gradients(REGOPT_LOSS_SOFTMAX_CE); }
END_TEST
START_TEST(bregman_gradients_regression) { check_bregman_gradients(REGOPT_LOSS_MSE); }
END_TEST

/* ======================================================================== */
/* 4. Passes: order, slots, flags, NO_PARAM_GRAD, d_input                   */
/* ======================================================================== */

static void check_order(int bregman, int K, int same_seed)
{
    const size_t count = 2;
    sm_run *r = sm_open(2, 3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    sm_set s;
    int i = 0, it;
    size_t mb;
    sm_fill(&s, count, 2, 1, 2, 3, 0, 0, 5);
    sm_smart(r, 1.0, 0.1, 0.01, 0.01, K, REGOPT_SMART_NORM_INF, 0);
    RMUST(r->smart, regopt_regularizer_set_int(r->smart, REGOPT_SMART_SAME_SEED, same_seed));
    if (bregman)
        sm_bregman(r, 1.0, 0.9);
    sm_step(r, &s);
    if (bregman)
        for (mb = 0; mb < count; mb++, i++) {
            const sm_rec *c = &r->h.rec[i];
            ck_assert(!c->backward && c->slot == 0 && c->micro_batch == mb && !c->has_pert);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD);
        }
    for (mb = 0; mb < count; mb++) {
        const sm_rec *clean = &r->h.rec[i++], *c;
        ck_assert(!clean->backward && clean->slot == 0 && clean->micro_batch == mb);
        ck_assert_uint_eq(clean->flags, REGOPT_PASS_TRAIN);
        ck_assert(!clean->has_pert);
        ck_assert_uint_eq(clean->input_rows, 2);
        ck_assert_uint_eq(clean->input_width, 2);
        for (it = 0; it <= K; it++) {
            c = &r->h.rec[i++]; /* adversarial forward */
            ck_assert_msg(!c->backward && c->slot == 1 && c->micro_batch == mb,
                          "call %d: backward %d slot %d", i - 1, c->backward, (int)c->slot);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
            ck_assert(c->has_pert);
            if (same_seed)
                ck_assert_uint_eq(c->seed, clean->seed);
            else
                ck_assert_uint_ne(c->seed, clean->seed);
            c = &r->h.rec[i++]; /* its backward */
            ck_assert(c->backward && c->slot == 1 && c->micro_batch == mb);
            if (it < K) {
                ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN | REGOPT_PASS_NO_PARAM_GRAD);
                ck_assert_msg(c->has_din, "ascent backward %d without d_input", it);
            } else {
                ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
                ck_assert_msg(!c->has_din, "final adversarial backward has a d_input");
            }
        }
        c = &r->h.rec[i++]; /* clean backward */
        ck_assert(c->backward && c->slot == 0 && c->micro_batch == mb && !c->has_din);
        ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
    }
    ck_assert_int_eq(i, r->h.nrec);
    ck_assert_int_eq(r->h.forwards, (int)count * (K + 2 + bregman));
    ck_assert_int_eq(r->h.backwards, (int)count * (K + 2));
    ck_assert_int_eq(r->h.npg_backwards, (int)count * K);
    ck_assert_int_eq(r->h.npg_without_din, 0);
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_FORWARD_CALLS), (double)r->h.forwards);
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_BACKWARD_CALLS), (double)r->h.backwards);
    sm_close(r);
}

START_TEST(order_k1) { check_order(0, 1, 1); }
END_TEST
START_TEST(order_k3_fresh_seed) { check_order(0, 3, 0); }
END_TEST
START_TEST(order_k2_bregman) { check_order(1, 2, 1); }
END_TEST

/* The parameter gradient is exactly task + lambda R_s through both passes
 * at the final nu: the ascent backwards add nothing (SGD, lr 1, so the
 * weight change is the gradient). */
START_TEST(parameter_gradient_excludes_ascent_passes)
{
    const size_t d = 3, k = 2, rows = 3;
    const double lambda = 3.0;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_MSE, 1.0, NULL, NULL);
    float A0[SK * SD], b0[SK];
    double gA[SK * SD] = {0}, gb[SK] = {0}, W;
    const sm_rec *fa;
    sm_set s;
    size_t i, j, c;
    sm_fill(&s, 1, rows, 1, d, k, 1, 0, 6);
    W = sm_wsum(&s);
    sm_smart(r, lambda, 0.1, 0.05, 1.0, 3, REGOPT_SMART_NORM_INF, 0);
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    sm_step(r, &s);
    fa = sm_must_find(&r->h, 0, 1, 0, 0, 0, 3);
    for (i = 0; i < rows; i++) {
        double rw = sm_rw(&s, 0, i), z[SK], a[SK], dz[SK], da[SK];
        for (c = 0; c < k; c++) { /* outputs from the closed form, not the records */
            z[c] = b0[c];
            a[c] = b0[c];
            for (j = 0; j < d; j++) {
                z[c] += (double)A0[c * d + j] * s.e[0][i * d + j];
                a[c] += (double)A0[c * d + j] * ((double)s.e[0][i * d + j] + fa->pert[i * d + j]);
            }
        }
        ref_task(z, k, 0, s.tg[0] + i * k, 1, dz);
        for (c = 0; c < k; c++) {
            double dr = 2.0 * (a[c] - z[c]) / (double)k;
            da[c] = lambda * rw / W * dr;
            dz[c] = rw / W * dz[c] - da[c];
            gb[c] += dz[c] + da[c];
            for (j = 0; j < d; j++)
                gA[c * d + j] += dz[c] * s.e[0][i * d + j] +
                                 da[c] * ((double)s.e[0][i * d + j] + fa->pert[i * d + j]);
        }
    }
    for (i = 0; i < k * d; i++)
        sm_near((double)A0[i] - r->h.A[i], gA[i], 1e-5, 1e-3, "dA", (int)i);
    for (i = 0; i < k; i++)
        sm_near((double)b0[i] - r->h.b[i], gb[i], 1e-5, 1e-3, "db", (int)i);
    sm_close(r);
}
END_TEST

/* With two-call R-Drop the adversarial slot is 2 (3 slots needed). */
START_TEST(rdrop_moves_smart_to_slot_2)
{
    sm_run *r = sm_open(2, 3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    sm_set s;
    int i, adv = 0;
    sm_fill(&s, 1, 2, 1, 2, 3, 0, 0, 7);
    r->rdrop = sm_attach(r, REGOPT_REG_RDROP);
    sm_smart(r, 1.0, 0.1, 0.01, 0.01, 2, REGOPT_SMART_NORM_INF, 0);
    sm_step(r, &s);
    for (i = 0; i < r->h.nrec; i++)
        if (r->h.rec[i].has_pert || r->h.rec[i].has_din) {
            ck_assert_int_eq(r->h.rec[i].slot, 2);
            adv++;
        }
    ck_assert_int_eq(adv, 3 + 2); /* K+1 forwards, K ascent backwards */
    ck_assert_int_eq(r->h.forwards, 2 + 2 + 1);
    sm_close(r);
}
END_TEST

/* Regression: a batch whose embedding-row count is not a multiple of its
 * rows (token-level inputs of varied lengths) keeps that count in every
 * pass; once it was rounded down to a multiple, so the host and the noise
 * buffers disagreed. Host: z_i = a . (sum of all embedding rows) + b_i. */
typedef struct ragged {
    float a[2], b[2], ga[2], gb[2];
    const float *e;
    float sum[2];
    size_t seen_rows[16];
    int passes, perturbed;
} ragged;

static int ragged_forward(const regopt_pass *p, void *user)
{
    ragged *r = user;
    size_t i, j;
    if (r->passes < 16)
        r->seen_rows[r->passes] = p->input_rows;
    r->passes++;
    r->perturbed += p->input_perturbation != NULL;
    r->sum[0] = r->sum[1] = 0.0f;
    for (i = 0; i < p->input_rows; i++)
        for (j = 0; j < 2; j++)
            r->sum[j] += r->e[i * 2 + j] +
                         (p->input_perturbation ? p->input_perturbation[i * 2 + j] : 0.0f);
    for (i = 0; i < p->rows; i++)
        p->outputs[i * 2 + 0] = r->a[0] * r->sum[0] + r->b[0],
        p->outputs[i * 2 + 1] = r->a[1] * r->sum[1] + r->b[1];
    return 0;
}

static int ragged_backward(const regopt_pass *p, void *user)
{
    ragged *r = user;
    size_t i;
    float d0 = 0.0f, d1 = 0.0f;
    for (i = 0; i < p->rows; i++)
        d0 += p->d_outputs[i * 2], d1 += p->d_outputs[i * 2 + 1];
    if (p->d_input)
        for (i = 0; i < p->input_rows; i++)
            p->d_input[i * 2] = r->a[0] * d0, p->d_input[i * 2 + 1] = r->a[1] * d1;
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 0;
    r->ga[0] += d0 * r->sum[0], r->ga[1] += d1 * r->sum[1];
    r->gb[0] += d0, r->gb[1] += d1;
    return 0;
}

START_TEST(ragged_input_rows_kept)
{
    static const float e[5 * 2] = {0.1f, -0.2f, 0.3f, 0.4f, -0.5f, 0.6f, 0.7f, -0.8f, 0.9f, 1.0f};
    static const int32_t y[2] = {0, 1};
    ragged r;
    regopt_model *m = regopt_model_create(NULL, NULL);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    regopt_trainer *t;
    regopt_regularizer *smart;
    regopt_batch b;
    int i;
    memset(&r, 0, sizeof r);
    r.a[0] = 0.5f, r.a[1] = -0.25f;
    r.e = e;
    SM_MUST(regopt_model_add_param(m, "a", r.a, r.ga, 2, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_add_param(m, "b", r.b, r.gb, 2, REGOPT_DTYPE_FLOAT32, 0));
    SM_MUST(regopt_model_set_output_width(m, 2));
    SM_MUST(regopt_model_set_input_width(m, 2));
    SM_MUST(regopt_model_set_slots(m, 2));
    SM_MUST(regopt_model_set_callbacks(m, ragged_forward, ragged_backward, &r, NULL));
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    smart = tu_add(t, REGOPT_REG_SMART);
    RMUST(smart, regopt_regularizer_set_int(smart, REGOPT_SMART_STEPS, 2));
    regopt_batch_init(&b);
    b.rows = 2;
    b.input_rows = 5; /* 2 + 3 tokens: not a multiple of 2 */
    b.labels = y;
    SM_TMUST(t, regopt_trainer_step(t, &b, 1));
    ck_assert_int_ge(r.perturbed, 3); /* noise pass, 2 ascent steps... */
    for (i = 0; i < r.passes && i < 16; i++)
        ck_assert_msg(r.seen_rows[i] == 5, "pass %d saw %zu embedding rows, want 5", i,
                      r.seen_rows[i]);
    regopt_trainer_free(t);
    tu_free_regs();
    regopt_optimizer_free(o);
    regopt_model_free(m);
}
END_TEST

Suite *suite_smart_passes(void)
{
    Suite *s = suite_create("smart_passes");
    TCase *tc = tcase_create("gradients");
    tcase_add_test(tc, rs_gradients_classification);
    tcase_add_test(tc, rs_gradients_regression);
    tcase_add_test(tc, bregman_gradients_classification);
    tcase_add_test(tc, bregman_gradients_regression);
    tcase_add_test(tc, parameter_gradient_excludes_ascent_passes);
    suite_add_tcase(s, tc);
    tc = tcase_create("passes");
    tcase_add_test(tc, order_k1);
    tcase_add_test(tc, order_k3_fresh_seed);
    tcase_add_test(tc, order_k2_bregman);
    tcase_add_test(tc, rdrop_moves_smart_to_slot_2);
    tcase_add_test(tc, ragged_input_rows_kept);
    suite_add_tcase(s, tc);
    return s;
}
