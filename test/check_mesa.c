/* check_mesa.c — the Bregman term's MESA divergence (bregman.divergence 1:
 * tau^2 KL(softmax(q/tau) || softmax(z/tau)), Du et al. 2022) against a
 * float64 formula written here, its gradient against finite differences of
 * that formula, the window (bregman.start_step, .end_step), and bad inputs
 * (the rig: smart_rig.h). */
#include "tests.h"

#include "smart_rig.h"

#define ME_K 3
#define ME_ROWS 4

/* log softmax(x / tau) of one row, in double */
static void me_log_softmax(const double *x, double tau, double *out)
{
    double m = x[0], s = 0.0;
    int j;
    for (j = 1; j < ME_K; j++)
        m = x[j] > m ? x[j] : m;
    for (j = 0; j < ME_K; j++)
        s += exp((x[j] - m) / tau);
    for (j = 0; j < ME_K; j++)
        out[j] = (x[j] - m) / tau - log(s);
}

/* tau^2 KL(P || S) of one row: P from the teacher's q, S from z. */
static double me_kl(const double *z, const double *q, double tau)
{
    double lp[ME_K], ls[ME_K], kl = 0.0;
    int j;
    me_log_softmax(q, tau, lp);
    me_log_softmax(z, tau, ls);
    for (j = 0; j < ME_K; j++)
        kl += exp(lp[j]) * (lp[j] - ls[j]);
    return tau * tau * kl;
}

/* The objective of one view as a function of its outputs z: weighted mean
 * cross-entropy plus mu times the weighted mean divergence; *d the latter
 * before mu. */
static double me_objective(const double *z, const double *q, const sm_set *s, double W, double mu,
                           double tau, double *d)
{
    double ce = 0.0, kl = 0.0;
    int i;
    for (i = 0; i < ME_ROWS; i++) {
        double ls[ME_K], rw = sm_rw(s, 0, (size_t)i);
        me_log_softmax(z + i * ME_K, 1.0, ls);
        ce -= rw * ls[s->y[0][i]];
        kl += rw * me_kl(z + i * ME_K, q + i * ME_K, tau);
    }
    if (d)
        *d = kl / W;
    return ce / W + mu * kl / W;
}

static sm_run *me_open(double mu, double tau)
{
    sm_run *r = sm_open(2, ME_K, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    sm_bregman(r, mu, 0.5);
    sm_rset(r->breg, REGOPT_BREGMAN_BETA_LATE, 0.5);
    RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_DIVERGENCE,
                                              REGOPT_BREGMAN_KL_TEACHER));
    sm_rset(r->breg, REGOPT_BREGMAN_TAU, tau);
    return r;
}

/* Step 2 (the teacher differs from the student): bregman.d against the
 * formula on the recorded teacher and student outputs, and the d_outputs
 * the host received against central differences of the objective. */
static void me_check(double mu, double tau)
{
    sm_run *r = me_open(mu, tau);
    double z[ME_ROWS * ME_K], q[ME_ROWS * ME_K], W, d = 0.0;
    const sm_rec *tf, *zf, *bw;
    sm_set s;
    int step, i;
    for (step = 0; step < 3; step++) {
        sm_fill(&s, 1, ME_ROWS, 1, 2, ME_K, 1, 0, 7 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
    }
    tf = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TEACHER, 0, 0);
    zf = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TRAIN, REGOPT_PASS_TEACHER, 0);
    bw = sm_must_find(&r->h, 1, 0, 0, 0, 0, 0);
    for (i = 0; i < ME_ROWS * ME_K; i++) {
        z[i] = zf->out[i];
        q[i] = tf->out[i];
    }
    W = sm_wsum(&s);
    (void)me_objective(z, q, &s, W, mu, tau, &d);
    ck_assert_msg(d > 1e-4, "the teacher equals the student (d = %g): nothing tested", d);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_D), d, 1e-6, 1e-9, "bregman.d", 0);
    for (i = 0; i < ME_ROWS * ME_K; i++) {
        const double h = 1e-5;
        double zp[ME_ROWS * ME_K], zm[ME_ROWS * ME_K], fd;
        memcpy(zp, z, sizeof z);
        memcpy(zm, z, sizeof z);
        zp[i] += h;
        zm[i] -= h;
        fd = (me_objective(zp, q, &s, W, mu, tau, NULL) -
              me_objective(zm, q, &s, W, mu, tau, NULL)) / (2.0 * h);
        sm_near(bw->out[i], fd, 2e-5, 1e-2, "d_outputs vs finite differences", i);
    }
    sm_close(r);
}

START_TEST(mesa_preset_term_and_gradient) { me_check(0.3, 5.0); }
END_TEST

START_TEST(kl_teacher_tau_one) { me_check(1.0, 1.0); }
END_TEST

START_TEST(kl_teacher_small_tau) { me_check(2.0, 0.5); }
END_TEST

/* The term applies to steps start_step .. end_step - 1 only; the teacher's
 * forward and its EMA run on every step. */
START_TEST(window)
{
    sm_run *r = me_open(0.3, 5.0);
    sm_set s;
    int step;
    RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_START_STEP, 2));
    RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_END_STEP, 4));
    for (step = 0; step < 6; step++) {
        const sm_rec *zf, *bw;
        double dz_ce[ME_ROWS * ME_K], W;
        int i, j, differs = 0;
        sm_fill(&s, 1, ME_ROWS, 1, 2, ME_K, 1, 0, 3 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
        ck_assert_ptr_nonnull(sm_find(&r->h, 0, 0, 0, REGOPT_PASS_TEACHER, 0, 0));
        zf = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TRAIN, REGOPT_PASS_TEACHER, 0);
        bw = sm_must_find(&r->h, 1, 0, 0, 0, 0, 0);
        W = sm_wsum(&s);
        for (i = 0; i < ME_ROWS; i++) {
            double z[ME_K], ls[ME_K];
            for (j = 0; j < ME_K; j++)
                z[j] = zf->out[i * ME_K + j];
            me_log_softmax(z, 1.0, ls);
            for (j = 0; j < ME_K; j++)
                dz_ce[i * ME_K + j] =
                    sm_rw(&s, 0, (size_t)i) * (exp(ls[j]) - (j == s.y[0][i])) / W;
        }
        for (i = 0; i < ME_ROWS * ME_K; i++)
            differs |= fabs(bw->out[i] - dz_ce[i]) > 1e-6;
        if (step >= 2 && step < 4) {
            ck_assert_msg(rstat(r->breg, REGOPT_STAT_BREGMAN_D) > 0.0, "step %d", step);
            ck_assert_msg(differs, "step %d: no term in the gradient", step);
        } else {
            ck_assert_msg(rstat(r->breg, REGOPT_STAT_BREGMAN_D) == 0.0, "step %d", step);
            ck_assert_msg(!differs, "step %d: a term outside the window", step);
        }
    }
    sm_close(r);
}
END_TEST

/* MESA's divergence with the MSE loss: refused, nothing changed. */
START_TEST(mse_refused)
{
    sm_run *r = sm_open(2, ME_K, 2, REGOPT_LOSS_MSE, 0.5, NULL, NULL);
    float A[SK * SD];
    sm_set s;
    sm_bregman(r, 0.3, 0.5);
    RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_DIVERGENCE,
                                              REGOPT_BREGMAN_KL_TEACHER));
    sm_fill(&s, 1, ME_ROWS, 1, 2, ME_K, 0, 0, 1);
    memcpy(A, r->h.A, sizeof A);
    ck_assert_int_eq(regopt_trainer_step(r->t, s.b, 1), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "bregman.divergence"));
    ck_assert(memcmp(A, r->h.A, sizeof A) == 0);
    ck_assert_int_eq(r->h.forwards, 0);
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_STEP), 0.0);
    RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_DIVERGENCE,
                                              REGOPT_BREGMAN_SYM_KL));
    sm_step(r, &s);
    sm_close(r);
}
END_TEST

START_TEST(keys)
{
    regopt_status st;
    regopt_regularizer *g = regopt_regularizer_create(REGOPT_REG_BREGMAN, NULL, &st);
    double v;
    int64_t iv;
    regopt_key key;
    ck_assert_ptr_nonnull(g);
    RMUST(g, regopt_regularizer_get_double(g, REGOPT_BREGMAN_TAU, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_BREGMAN_DIVERGENCE, &iv));
    ck_assert_int_eq(iv, REGOPT_BREGMAN_SYM_KL);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_BREGMAN_END_STEP, &iv));
    ck_assert_int_eq(iv, -1);
    ck_assert_int_eq(regopt_key_from_name("bregman.tau", &key), REGOPT_OK);
    ck_assert_int_eq(key, REGOPT_BREGMAN_TAU);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_BREGMAN_TAU, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_BREGMAN_TAU, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_BREGMAN_TAU, 1e4),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_BREGMAN_DIVERGENCE, 2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_BREGMAN_START_STEP, -1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_BREGMAN_END_STEP, -2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_AVERAGE_DECAY, 0.5),
                     REGOPT_ERR_UNKNOWN_KEY);
    RMUST(g, regopt_regularizer_get_double(g, REGOPT_BREGMAN_TAU, &v));
    ck_assert_double_eq(v, 1.0);
    ck_assert_int_eq(regopt_regularizer_free(g), REGOPT_OK);
}
END_TEST

Suite *suite_mesa(void)
{
    Suite *s = suite_create("mesa");
    TCase *tc = tcase_create("kl_teacher");
    tcase_add_test(tc, mesa_preset_term_and_gradient);
    tcase_add_test(tc, kl_teacher_tau_one);
    tcase_add_test(tc, kl_teacher_small_tau);
    tcase_add_test(tc, window);
    tcase_add_test(tc, mse_refused);
    tcase_add_test(tc, keys);
    suite_add_tcase(s, tc);
    return s;
}
