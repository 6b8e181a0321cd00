/* check_smart.c — SMART (Jiang et al. 2020): the adversarial term R_s's
 * inner loop: the mt-dnn mode and the docs/methods.md §9 reference vector,
 * the paper's projected ascent in inf/L2/L1 norms, and non-finite ascent
 * passes. Gradients and passes: check_smart_passes.c; the Bregman teacher:
 * check_smart_teacher.c; statistics and options: check_smart_options.c;
 * SAM composition and rollback: check_smart_sam.c; allocation:
 * check_smart_memory.c; the rig: smart_rig.h, smart_ref.h.
 *
 * Every expected value below comes from a closed form on the rig's linear
 * model, a finite difference, or a double-precision reference written
 * here -- never from the library's own output. */
#include "tests.h"

#include "smart_rig.h"
#include "smart_ref.h"

/* ======================================================================== */
/* 1. The mt-dnn-compatible reference vector (docs/methods.md §9)           */
/* ======================================================================== */

static const double A_REF[4] = {1.0, 2.0, 3.0, -1.0};
static const float A_REFF[4] = {1.0f, 2.0f, 3.0f, -1.0f};

/* One mt-dnn inner step for the one-row linear model: g = grad of the
 * MSE-mean between A(e + nu) and sg(A e), d = nu + eta g,
 * nu1 = d / (||d||_inf + eps). */
static void ref_mtdnn(const float *A, const double *nu0, double eta, double eps, double *g,
                      double *dd, double *nu1)
{
    double n;
    int j;
    ref_ata(A, 2, 2, nu0, g); /* (2/K) A^T A nu with K = 2 */
    for (j = 0; j < 2; j++)
        dd[j] = nu0[j] + eta * g[j];
    n = ref_norm(dd, 2, REGOPT_SMART_NORM_INF);
    for (j = 0; j < 2; j++)
        nu1[j] = dd[j] / (n + eps);
}

START_TEST(mtdnn_reference_vector)
{
    const float *Af = A_REFF;
    const double nu0[2] = {0.01, -0.02};
    double g[2], dd[2], nu1[2], gfd[2];
    int j;
    /* the docs/methods.md §9 numbers (RV-SMART-MTDNN), from the closed form */
    ref_mtdnn(Af, nu0, 1e-3, 1e-6, g, dd, nu1);
    sm_near(g[0], 0.12, 1e-13, 1.0, "g", 0);
    sm_near(g[1], -0.11, 1e-13, 1.0, "g", 1);
    sm_near(dd[0], 0.01012, 1e-13, 1.0, "d", 0);
    sm_near(dd[1], -0.02011, 1e-13, 1.0, "d", 1);
    sm_near(nu1[0], 0.5032072000397793, 1e-13, 1.0, "nu1", 0);
    sm_near(nu1[1], -0.9999502759683755, 1e-13, 1.0, "nu1", 1);
    /* ... and g really is the gradient of the MSE-mean inner loss */
    for (j = 0; j < 2; j++) {
        double e[2] = {0.5, -1.0}, z[2], ap[2], am[2], np[2], nm[2];
        int c;
        memcpy(np, nu0, sizeof np);
        memcpy(nm, nu0, sizeof nm);
        np[j] += 1e-6;
        nm[j] -= 1e-6;
        for (c = 0; c < 2; c++) {
            z[c] = A_REF[2 * c] * e[0] + A_REF[2 * c + 1] * e[1];
            ap[c] = A_REF[2 * c] * (e[0] + np[0]) + A_REF[2 * c + 1] * (e[1] + np[1]);
            am[c] = A_REF[2 * c] * (e[0] + nm[0]) + A_REF[2 * c + 1] * (e[1] + nm[1]);
        }
        gfd[j] = (ref_ls(ap, z, 2, 1) - ref_ls(am, z, 2, 1)) / 2e-6;
        sm_near(gfd[j], g[j], 1e-7, 1.0, "finite-difference g", j);
    }
}
END_TEST

START_TEST(mtdnn_library_follows_the_update)
{
    sm_run *r = sm_open(2, 2, 3, REGOPT_LOSS_MSE, 1e-3, A_REF, NULL);
    static const float e[2] = {0.5f, -1.0f}, tg[2] = {0.25f, -0.5f};
    sm_data hd = {e};
    regopt_batch b;
    const sm_rec *f0, *bk, *f1;
    double nu0[2], g[2], dd[2], nu1[2], an[2];
    int j;
    regopt_batch_init(&b);
    b.data = &hd;
    b.rows = 1;
    b.targets = tg;
    sm_smart(r, 1.0, 1e-6, 0.01, 1e-3, 1, REGOPT_SMART_NORM_INF, 1);
    SM_TMUST(r->t, regopt_trainer_step(r->t, &b, 1));
    ck_assert_int_eq(r->h.bad, 0);
    f0 = sm_must_find(&r->h, 0, 1, 0, 0, 0, 0);
    bk = sm_must_find(&r->h, 1, 1, 0, REGOPT_PASS_NO_PARAM_GRAD, 0, 0);
    f1 = sm_must_find(&r->h, 0, 1, 0, 0, 0, 1);
    ck_assert(f0->has_pert && f1->has_pert && bk->has_din);
    ck_assert_ptr_null(sm_find(&r->h, 0, 1, 0, 0, 0, 2));
    /* nu0 is sigma times a standard normal draw */
    f2d(nu0, f0->pert, 2);
    ck_assert_msg(fabs(nu0[0]) + fabs(nu0[1]) > 0.0 && fabs(nu0[0]) < 0.08 &&
                      fabs(nu0[1]) < 0.08,
                  "nu0 = [%g, %g] is not N(0, 0.01^2)-sized", nu0[0], nu0[1]);
    ref_mtdnn(A_REFF, nu0, 1e-3, 1e-6, g, dd, nu1); /* A before the update */
    /* d_outputs of the ascent backward: (2/K)(A nu) with K = 2, one row */
    for (j = 0; j < 2; j++) {
        an[j] = A_REF[2 * j] * nu0[0] + A_REF[2 * j + 1] * nu0[1];
        sm_near(bk->out[j], an[j], 1e-4, 1e-3, "ascent d_outputs", j);
        sm_near(bk->din[j], g[j], 1e-4, 1e-3, "g = A^T A nu0", j);
        sm_near(f1->pert[j], nu1[j], 1e-6, 1.0, "nu1 = d/(|d|_inf + eps)", j);
    }
    /* unit inf-norm perturbation (up to eps) */
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), ref_norm(nu1, 2, 0), 1e-6, 1.0,
            "noise norm", 0);
    sm_close(r);
}
END_TEST

/* sigma scales a standard normal draw of the library's generator: the same
 * trainer seed with twice the sigma gives twice the noise; sigma 0 gives 0. */
START_TEST(noise_scales_with_sigma)
{
    float first[3][SR * SD];
    double sig[3] = {0.01, 0.02, 0.0};
    sm_set s;
    int v;
    size_t i, n;
    sm_fill(&s, 1, 3, 1, 3, 2, 0, 0, 1);
    n = 3 * 3;
    for (v = 0; v < 3; v++) {
        sm_run *r = sm_open(3, 2, 2, REGOPT_LOSS_MSE, 0.1, NULL, NULL);
        sm_smart(r, 1.0, 0.5, sig[v], 1e-3, 1, REGOPT_SMART_NORM_L2, 0);
        sm_step(r, &s);
        memcpy(first[v], sm_must_find(&r->h, 0, 1, 0, 0, 0, 0)->pert, n * sizeof(float));
        if (v == 2) {
            /* zero noise: zero gradient, g^ = 0, nothing moves, R_s = 0 */
            const sm_rec *fin = sm_must_find(&r->h, 0, 1, 0, 0, 0, 1);
            for (i = 0; i < n; i++)
                ck_assert_float_eq(fin->pert[i], 0.0f);
            ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_RS), 0.0);
            ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), 0.0);
        }
        sm_close(r);
    }
    for (i = 0; i < n; i++) {
        ck_assert_msg(first[0][i] != 0.0f && fabsf(first[0][i]) < 0.06f, "nu0[%zu] = %g", i,
                      (double)first[0][i]);
        sm_near(first[1][i], 2.0 * first[0][i], 1e-6, 1e-9, "nu0(2 sigma)", (int)i);
        ck_assert_float_eq(first[2][i], 0.0f);
    }
}
END_TEST

/* ======================================================================== */
/* 2. Paper mode: projected ascent                                          */
/* ======================================================================== */

static void check_paper_mode(int p)
{
    const size_t d = 3, k = 2, rows = 3;
    const double eps = 0.05, eta = 1.0;
    const int K = 3;
    sm_run *r = sm_open(d, k, 2, REGOPT_LOSS_MSE, 0.1, NULL, NULL);
    sm_set s;
    double noise = 0.0;
    int it;
    size_t i, j;
    sm_fill(&s, 1, rows, 1, d, k, 0, 0, 2);
    float A0[SK * SD];
    sm_smart(r, 1.0, eps, 0.03, eta, K, p, 0);
    memcpy(A0, r->h.A, sizeof A0); /* the weights of the step, before its update */
    sm_step(r, &s);
    for (it = 0; it < K; it++) {
        const sm_rec *f = sm_must_find(&r->h, 0, 1, 0, 0, 0, it);
        const sm_rec *bk = sm_must_find(&r->h, 1, 1, 0, REGOPT_PASS_NO_PARAM_GRAD, 0, it);
        const sm_rec *fn = sm_must_find(&r->h, 0, 1, 0, 0, 0, it + 1);
        for (i = 0; i < rows; i++) {
            double nu[SD], g[SD], gn, want[SD];
            f2d(nu, f->pert + i * d, d);
            ref_ata(A0, d, k, nu, g);
            /* the host's d_input is (2/(K W)) A^T A nu, W = rows */
            for (j = 0; j < d; j++)
                sm_near(bk->din[i * d + j], 2.0 / (double)(k * rows) * g[j], 1e-4, 1e-4,
                        "d_input", (int)(100 * it + i * d + j));
            gn = ref_norm(g, d, p);
            for (j = 0; j < d; j++)
                want[j] = nu[j] + eta * g[j] / gn;
            ref_project(want, d, p, eps);
            for (j = 0; j < d; j++)
                sm_near(fn->pert[i * d + j], want[j], 2e-5, eps, "projected nu",
                        (int)(100 * it + i * d + j));
            /* the projection is active and the result is on the ball */
            ck_assert_msg(ref_normf(fn->pert + i * d, d, p) <= eps * (1.0 + 1e-5),
                          "norm %d of row %zu after step %d: %.9g > %g", p, i, it,
                          ref_normf(fn->pert + i * d, d, p), eps);
            sm_near(ref_normf(fn->pert + i * d, d, p), eps, 1e-5, eps, "on the ball",
                    (int)i);
            if (it == K - 1)
                noise += ref_normf(fn->pert + i * d, d, p);
        }
    }
    ck_assert_ptr_null(sm_find(&r->h, 0, 1, 0, 0, 0, K + 1));
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), noise / (double)rows, 1e-6, 1e-9,
            "stat.smart_noise_norm", p);
    sm_close(r);
}

START_TEST(paper_mode_inf) { check_paper_mode(REGOPT_SMART_NORM_INF); }
END_TEST
START_TEST(paper_mode_l2) { check_paper_mode(REGOPT_SMART_NORM_L2); }
END_TEST
START_TEST(paper_mode_l1) { check_paper_mode(REGOPT_SMART_NORM_L1); }
END_TEST

/* The independent L1 projection itself: a known answer. */
START_TEST(l1_projection_reference)
{
    double x[3] = {0.5, -0.2, 0.05};
    ref_project_l1(x, 3, 0.4); /* theta = 0.15: [0.35, -0.05, 0] */
    sm_near(x[0], 0.35, 1e-12, 1.0, "x", 0);
    sm_near(x[1], -0.05, 1e-12, 1.0, "x", 1);
    sm_near(x[2], 0.0, 1e-12, 1.0, "x", 2);
}
END_TEST

/* ======================================================================== */
/* Non-finite ascent passes (issue 16, defect 8)                            */
/* ======================================================================== */

/* A NaN d_input or a non-finite adversarial output in an ascent pass fails
 * the step with the status the final adversarial pass gives (the loss is not
 * finite), a message naming the pass, and nothing changed -- in paper mode
 * with every norm (where `n > 0` and the inf-norm's max used to drop NaN and
 * make a successful step) and in mt-dnn mode alike. */
static void check_nonfinite_ascent(int norm, int mtdnn, int poison, regopt_loss_kind loss)
{
    sm_run *r = sm_open(3, 2, 2, loss, 0.1, NULL, NULL);
    float A0[SK * SD], b0[SK];
    double rs0, noise0;
    const char *msg, *pass = poison <= SM_POISON_NAN_DIN_ONE ? "ascent backward"
                                                             : "ascent forward";
    sm_set s;
    regopt_status st;
    sm_fill(&s, 2, 3, 1, 3, 2, 1, 0, 7);
    sm_smart(r, 1.0, 0.05, 0.03, 1.0, 2, norm, mtdnn);
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    sm_step(r, &s); /* a good step first: momentum and statistics to keep */
    memcpy(A0, r->h.A, sizeof A0);
    memcpy(b0, r->h.b, sizeof b0);
    rs0 = rstat(r->smart, REGOPT_STAT_SMART_RS);
    noise0 = rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM);
    r->h.poison = poison;
    st = regopt_trainer_step(r->t, s.b, s.count);
    msg = regopt_trainer_message(r->t);
    ck_assert_msg(st == REGOPT_ERR_NONFINITE_LOSS,
                  "norm %d mtdnn %d poison %d: step -> %s (%s)", norm, mtdnn, poison,
                  regopt_status_string(st), msg);
    ck_assert_int_eq(r->h.poison, 0); /* the poisoned pass ran */
    ck_assert_msg(strstr(msg, "SMART") && strstr(msg, pass) && strstr(msg, "micro-batch 0"),
                  "norm %d mtdnn %d poison %d: the message does not name the %s: %s", norm,
                  mtdnn, poison, pass, msg);
    ck_assert_msg(memcmp(A0, r->h.A, sizeof A0) == 0 && memcmp(b0, r->h.b, sizeof b0) == 0,
                  "norm %d mtdnn %d poison %d: weights changed by a failed step", norm, mtdnn,
                  poison);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 1);
    ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_RS), rs0);
    ck_assert_double_eq(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), noise0);
    /* the same step again, unspoiled, succeeds */
    sm_step(r, &s);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 2);
    ck_assert(isfinite(rstat(r->smart, REGOPT_STAT_SMART_RS)));
    sm_close(r);
}

static void check_nonfinite_ascent_all(int mtdnn)
{
    static const int norms[3] = {REGOPT_SMART_NORM_INF, REGOPT_SMART_NORM_L1,
                                 REGOPT_SMART_NORM_L2};
    int i, poison;
    for (i = 0; i < 3; i++)
        for (poison = SM_POISON_NAN_DIN; poison <= SM_POISON_INF_OUT_ALL; poison++) {
            check_nonfinite_ascent(norms[i], mtdnn, poison, REGOPT_LOSS_SOFTMAX_CE);
            check_nonfinite_ascent(norms[i], mtdnn, poison, REGOPT_LOSS_MSE);
        }
}

/* A huge but finite d_input: the paper's update divides by its norm and
 * stays finite; mt-dnn's nu + eta g overflows a float, which fails the step
 * naming the update instead of feeding inf/inf = NaN to the host. */
START_TEST(huge_d_input_overflows_only_mtdnn)
{
    int mtdnn;
    for (mtdnn = 0; mtdnn <= 1; mtdnn++) {
        sm_run *r = sm_open(3, 2, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
        float A0[SK * SD];
        regopt_status st;
        sm_set s;
        sm_fill(&s, 1, 3, 1, 3, 2, 0, 0, 9);
        sm_smart(r, 1.0, 0.05, 0.03, 1000.0, 1, REGOPT_SMART_NORM_L2, mtdnn);
        memcpy(A0, r->h.A, sizeof A0);
        r->h.poison = SM_POISON_HUGE_DIN;
        st = regopt_trainer_step(r->t, s.b, s.count);
        ck_assert_int_eq(r->h.poison, 0);
        if (!mtdnn) {
            ck_assert_msg(st == REGOPT_OK, "paper mode: %s", regopt_trainer_message(r->t));
        } else {
            ck_assert_int_eq(st, REGOPT_ERR_NONFINITE_LOSS);
            ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "ascent update"));
            ck_assert_int_eq(memcmp(A0, r->h.A, sizeof A0), 0);
            ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 0);
        }
        sm_close(r);
    }
}
END_TEST

/* The Bregman term has no ascent to swallow a NaN: a NaN teacher output
 * makes D, and so the step's loss, NaN, and the step fails unchanged. */
START_TEST(bregman_reports_nonfinite_teacher)
{
    int mse;
    for (mse = 0; mse <= 1; mse++) {
        sm_run *r = sm_open(3, 2, 1, mse ? REGOPT_LOSS_MSE : REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL,
                            NULL);
        float A0[SK * SD], b0[SK];
        sm_set s;
        sm_fill(&s, 2, 3, 1, 3, 2, 1, 0, 11);
        sm_bregman(r, 1.0, 0.5);
        sm_step(r, &s);
        memcpy(A0, r->h.A, sizeof A0);
        memcpy(b0, r->h.b, sizeof b0);
        r->h.poison = SM_POISON_NAN_TEACHER;
        ck_assert_int_eq(regopt_trainer_step(r->t, s.b, s.count), REGOPT_ERR_NONFINITE_LOSS);
        ck_assert_int_eq(r->h.poison, 0);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "micro-batch 0"));
        ck_assert_int_eq(memcmp(A0, r->h.A, sizeof A0), 0);
        ck_assert_int_eq(memcmp(b0, r->h.b, sizeof b0), 0);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 1);
        sm_step(r, &s);
        sm_close(r);
    }
}
END_TEST

START_TEST(paper_mode_reports_nonfinite_ascent) { check_nonfinite_ascent_all(0); }
END_TEST
START_TEST(mtdnn_mode_reports_nonfinite_ascent) { check_nonfinite_ascent_all(1); }
END_TEST

Suite *suite_smart(void)
{
    Suite *s = suite_create("smart");
    TCase *tc = tcase_create("inner loop");
    tcase_add_test(tc, mtdnn_reference_vector);
    tcase_add_test(tc, mtdnn_library_follows_the_update);
    tcase_add_test(tc, noise_scales_with_sigma);
    tcase_add_test(tc, l1_projection_reference);
    tcase_add_test(tc, paper_mode_inf);
    tcase_add_test(tc, paper_mode_l2);
    tcase_add_test(tc, paper_mode_l1);
    tcase_add_test(tc, paper_mode_reports_nonfinite_ascent);
    tcase_add_test(tc, mtdnn_mode_reports_nonfinite_ascent);
    tcase_add_test(tc, huge_d_input_overflows_only_mtdnn);
    tcase_add_test(tc, bregman_reports_nonfinite_teacher);
    suite_add_tcase(s, tc);
    return s;
}
