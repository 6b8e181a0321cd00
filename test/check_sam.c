/* check_sam.c — the SAM family (SAM, ASAM, GSAM, rho schedule) against the
 * reference vectors of docs/methods.md §9 and closed forms. Restore, call
 * order, every-k, m-sharpness, accumulation and allocation:
 * check_sam_step.c; rollback: check_sam_rollback.c; options:
 * check_sam_options.c; the rig: sam_rig.h.
 * Expected values come from closed forms or from double-precision
 * references written here, never from the library's own output. */
#include "tests.h"

#include "sam_rig.h"

/* ======================================================================== */
/* 1. Reference vectors (docs/methods.md §9)                                */
/* ======================================================================== */

START_TEST(sam_reference_vector)
{
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 1.0, 1.0, 0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_RHO, 0.05);
    qstep(r, 1);
    near(r->q.w[0], 0.8995024814048951, 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], -0.049751859510494434, 1e-6, 1.0, "w1[1]");
    /* the host saw w0 + eps in the perturbed forward */
    ck_assert_int_eq(r->q.forwards, 2);
    ck_assert_int_eq(r->q.backwards, 2);
    ck_assert_uint_eq(r->q.flags[0], REGOPT_PASS_TRAIN);
    ck_assert_uint_eq(r->q.flags[1], REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
    near((double)r->q.seen[0][0], 1.0, 0.0, 1.0, "clean w[0]");
    near((double)r->q.seen[0][1], 1.0, 0.0, 1.0, "clean w[1]");
    near((double)r->q.seen[1][0] - 1.0, 0.004975185951049451, 1e-6, 1.0, "eps[0]");
    near((double)r->q.seen[1][1] - 1.0, 0.04975185951049451, 1e-6, 1.0, "eps[1]");
    /* the final gradient is g_sam */
    near(r->q.g[0], 1.0049751859510494, 1e-6, 1.0, "g_sam[0]");
    near(r->q.g[1], 10.497518595104944, 1e-6, 1.0, "g_sam[1]");
    /* statistics */
    near(rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS), 5.5, 1e-7, 1.0, "sam_clean_loss");
    near(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS), 6.014882394917377, 1e-6, 1.0,
         "sam_perturbed_loss");
    near(rstat(r->sam, REGOPT_STAT_SAM_SHARPNESS), 6.014882394917377 - 5.5, 1e-6, 1.0,
         "sam_sharpness");
    near(rstat(r->sam, REGOPT_STAT_SAM_SHARPNESS),
         rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS) - rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS),
         1e-12, 1.0, "sharpness = perturbed - clean");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), 10.04987562112089, 1e-9, 1.0,
         "sam_ascent_norm");
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.05);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), 1.0);
    near(stat(r->t, REGOPT_STAT_LOSS), 5.5, 1e-7, 1.0, "stat.loss is L(w)");
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 2);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), 1);
    qrun_close(r);
}
END_TEST

/* Ascent L2 term, base weight decay at the restored w, clipping on the final
 * gradient only: w0 = [1, 1], a = g + 0.5 w = [1.5, 10.5], eps = rho a/||a||,
 * g_sam = h (w0 + eps), w1 = w0 - lr (g_sam * clip + 0.2 w0). */
START_TEST(ascent_weight_decay_and_clipping)
{
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 1.0, 1.0, 0);
    double na = sqrt(1.5 * 1.5 + 10.5 * 10.5), e0 = 0.05 * 1.5 / na, e1 = 0.05 * 10.5 / na;
    double g0 = 1.0 + e0, g1 = 10.0 * (1.0 + e1), ng = sqrt(g0 * g0 + g1 * g1);
    double clip = 1.0 / (ng + 1e-6);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_WEIGHT_DECAY, 0.2));
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, 1.0));
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_ASCENT_WEIGHT_DECAY, 0.5);
    qstep(r, 1);
    near((double)r->q.seen[1][0] - 1.0, e0, 1e-6, 1.0, "eps[0]");
    near((double)r->q.seen[1][1] - 1.0, e1, 1e-6, 1.0, "eps[1]");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), na, 1e-7, 1.0, "ascent norm (unclipped)");
    near(stat(r->t, REGOPT_STAT_GRAD_NORM), ng, 1e-6, 1.0, "grad norm of g_sam");
    near(stat(r->t, REGOPT_STAT_CLIP_SCALE), clip, 1e-6, 1.0, "clip scale");
    near(r->q.w[0], 1.0 - 0.1 * (g0 * clip + 0.2), 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], 1.0 - 0.1 * (g1 * clip + 0.2), 1e-6, 1.0, "w1[1]");
    qrun_close(r);
}
END_TEST

START_TEST(asam_reference_vector)
{
    /* eta = 0 (davda54 adaptive=True); options set on the handle BEFORE attach */
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 2.0, 0.5, 0);
    qset(r, REGOPT_SAM_ADAPTIVE, 1);
    qset(r, REGOPT_SAM_ETA, 0.0);
    qset(r, REGOPT_SAM_RHO, 0.5);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_RHO), 0.5);
    qstep(r, 1);
    near(r->q.w[0], 1.7152001695995092, 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], -0.13249973500076706, 1e-6, 1.0, "w1[1]");
    near((double)r->q.seen[1][0] - 2.0, 0.8479983040049083, 1e-6, 1.0, "eps[0]");
    near((double)r->q.seen[1][1] - 0.5, 0.13249973500076692, 1e-6, 1.0, "eps[1]");
    /* ||T g|| = ||[2*2, 0.5*5]|| = sqrt(22.25) */
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), sqrt(22.25), 1e-9, 1.0, "ascent norm");
    ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.5);
    qrun_close(r);

    /* eta = 0.01, the default */
    r = qrun_open(REGOPT_SGD, 0.1, 2.0, 0.5, 0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_ETA), 0.01);
    qset(r, REGOPT_SAM_ADAPTIVE, 1);
    qset(r, REGOPT_SAM_RHO, 0.5);
    qstep(r, 1);
    ck_assert_uint_eq(r->q.flags[1], REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
    near((double)r->q.seen[1][0] - 2.0, 0.8486612518176859, 1e-6, 1.0, "eps[0], eta 0.01");
    near((double)r->q.seen[1][1] - 0.5, 0.13659116828654005, 1e-6, 1.0, "eps[1], eta 0.01");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), sqrt(4.02 * 4.02 + 2.55 * 2.55), 1e-7, 1.0,
         "ascent norm, eta 0.01");
    qrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 2. GSAM and rho following the learning rate                              */
/* ======================================================================== */

static qrun *gsam_run(double alpha)
{
    qrun *r = qrun_open(REGOPT_SGD, 1.0, 0.5, -0.25, 0);
    r->q.constant = 1;
    r->q.gc[0] = 1.0f;
    r->q.gc[1] = 10.0f;
    r->q.gp[0] = 3.0f;
    r->q.gp[1] = 9.0f;
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_GSAM, 1);
    qset(r, REGOPT_SAM_GSAM_ALPHA, alpha);
    return r;
}

START_TEST(gsam_reference_vector)
{
    qrun *r = gsam_run(0.4);
    qstep(r, 1);
    /* g_perp = [-2.1, 0.7]; direction g_p - 0.4 g_perp = [3.84, 8.72] */
    near(r->q.g[0], 3.84, 1e-6, 1.0, "direction[0]");
    near(r->q.g[1], 8.72, 1e-6, 1.0, "direction[1]");
    near(r->q.w[0], 0.5 - 3.84, 1e-6, 1.0, "w1[0]");
    near(r->q.w[1], -0.25 - 8.72, 1e-6, 1.0, "w1[1]");
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    qrun_close(r);
    /* alpha = 0 is plain SAM: the update is g_p */
    r = gsam_run(0.0);
    qstep(r, 1);
    near(r->q.w[0], 0.5 - 3.0, 1e-6, 1.0, "alpha 0: w1[0]");
    near(r->q.w[1], -0.25 - 9.0, 1e-6, 1.0, "alpha 0: w1[1]");
    qrun_close(r);
    /* the default alpha is 0.4 */
    r = qrun_open(REGOPT_SGD, 1.0, 0.0, 0.0, 0);
    ck_assert_double_eq(rstat(r->sam, REGOPT_SAM_GSAM_ALPHA), 0.4);
    qrun_close(r);
}
END_TEST

START_TEST(rho_follows_linear_schedule)
{
    /* lr 0.1, LINEAR, W = 2, T = 6, r = 0.1; rho 0.05, rho_min 0.01 */
    const double lr = 0.1, W = 2.0, T = 6.0, ratio = 0.1, rho = 0.05, rho_min = 0.01;
    qrun *r = qrun_open(REGOPT_SGD, lr, 1.0, 1.0, 0);
    int s;
    r->q.constant = 1;
    r->q.gc[0] = 1.0f;
    r->q.gc[1] = 10.0f;
    r->q.gp[0] = 0.5f;
    r->q.gp[1] = -0.5f;
    MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_SCHEDULE, REGOPT_SCHEDULE_LINEAR));
    MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_WARMUP_STEPS, 2));
    MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_TOTAL_STEPS, 6));
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MIN_LR_RATIO, ratio));
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_RHO, rho);
    qset(r, REGOPT_SAM_RHO_MIN, rho_min);
    qset(r, REGOPT_SAM_RHO_FOLLOWS_LR, 1);
    for (s = 0; s < 8; s++) {
        double t = s, f, lr_t, want, dx, dy;
        char what[64];
        if (t < W)
            f = t / W;
        else
            f = ratio + (1.0 - ratio) * fmax(0.0, (T - t) / (T - W));
        lr_t = lr * f;
        want = rho_min + (rho - rho_min) * (lr_t - lr * ratio) / (lr - lr * ratio);
        want = fmin(rho, fmax(rho_min, want)); /* clamped: warm-up has lr_t < lr_min */
        qstep(r, 1);
        snprintf(what, sizeof what, "sam_rho at step %d", s);
        near(rstat(r->sam, REGOPT_STAT_SAM_RHO), want, 1e-12, 1e-3, what);
        near(stat(r->t, REGOPT_STAT_LR), lr_t, 1e-12, 1e-3, "stat.lr");
        /* and the perturbation actually has that radius: eps = rho_t g/||g|| */
        dx = (double)r->q.seen[2 * s + 1][0] - r->q.seen[2 * s][0];
        dy = (double)r->q.seen[2 * s + 1][1] - r->q.seen[2 * s][1];
        snprintf(what, sizeof what, "||eps|| at step %d", s);
        near(sqrt(dx * dx + dy * dy), want, 1e-5, 1.0, what);
    }
    qrun_close(r);
}
END_TEST

START_TEST(asam_skips_non_adaptive_groups)
{
    /* "a" = 2 in group 0 (adaptive), "b" = 0.5 in group 1 (not): g = [2, 5],
     * T = [2.01, 1], ||T g|| = ||[4.02, 5]||, eps = rho T^2 g / ||T g|| */
    qrun *r = qrun_open(REGOPT_SGD, 0.1, 2.0, 0.5, 1);
    double nrm = sqrt(4.02 * 4.02 + 25.0);
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    qset(r, REGOPT_SAM_ADAPTIVE, 1);
    qset(r, REGOPT_SAM_RHO, 0.5);
    RMUST(r->sam, regopt_regularizer_set_group(r->sam, 1, REGOPT_SAM_GROUP_ADAPTIVE, 0.0));
    qstep(r, 1);
    near((double)r->q.seen[1][0] - 2.0, 0.5 * 2.01 * 2.01 * 2.0 / nrm, 1e-6, 1.0, "eps a");
    near((double)r->q.seen[1][1] - 0.5, 0.5 * 5.0 / nrm, 1e-6, 1.0, "eps b (unscaled)");
    near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), nrm, 1e-7, 1.0, "ascent norm");
    qrun_close(r);
}
END_TEST

Suite *suite_sam(void)
{
    Suite *s = suite_create("sam");
    TCase *tc = tcase_create("reference");
    tcase_add_test(tc, sam_reference_vector);
    tcase_add_test(tc, asam_reference_vector);
    tcase_add_test(tc, ascent_weight_decay_and_clipping);
    tcase_add_test(tc, gsam_reference_vector);
    tcase_add_test(tc, rho_follows_linear_schedule);
    tcase_add_test(tc, asam_skips_non_adaptive_groups);
    suite_add_tcase(s, tc);
    return s;
}
