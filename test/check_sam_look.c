/* check_sam_look.c — SAM-ON (sam.group_perturb) and LookSAM
 * (sam.looksam) in suite_sam_variants (the rig: sam_variants_rig.h): first
 * steps against double-precision references, the identities, rollback and
 * resume. */
#include "tests.h"

#include "sam_variants_rig.h"

/* ======================================================================== */
/* 5. SAM-ON: sam.group_perturb                                             */
/* ======================================================================== */

/* Group 1 ("b", elements 3 and 4) out of the ascent: its norm and eps
 * cover "a" only; plain SAM, ASAM (the ASAM-ON recipe: eta 0) and VaSSO. */
static void sam_on_reference(int dir, int adaptive)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, dir, adaptive ? 2.0 : 0.1, 1);
    vref f;
    int k;
    ck_assert_uint_eq(r->q.n0, 3);
    RMUST(r->sam, regopt_regularizer_set_group(r->sam, 1, REGOPT_SAM_GROUP_PERTURB, 0));
    vset(r, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(r, REGOPT_SAM_ETA, 0.0);
    vref_init(&f, 5, dir, adaptive ? 2.0 : 0.1, 0.02);
    f.adaptive = adaptive;
    f.eta = 0.0;
    f.out_from = 3;
    for (k = 0; k < 3; k++) {
        vstep(r);
        vref_step(&f, 1);
        vref_compare(&f, r, 1, "SAM-ON", k);
    }
    vrun_close(r);
}

START_TEST(sam_on_first_steps)
{
    sam_on_reference(0, 0);
    sam_on_reference(0, 1);
    sam_on_reference(2, 0);
}
END_TEST

/* Every group out: no ascent, the base optimizer alone bit for bit (with
 * two passes still: the clean one gives g, the ascent norm is 0). Every
 * group in (the default): SAM. */
START_TEST(sam_on_identities)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    double v = -1.0;
    int k;
    RMUST(b->sam, regopt_regularizer_get_group(b->sam, 1, REGOPT_SAM_GROUP_PERTURB, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(a->sam, regopt_regularizer_set_group(a->sam, 0, REGOPT_SAM_GROUP_PERTURB, 0));
    RMUST(a->sam, regopt_regularizer_set_group(a->sam, 1, REGOPT_SAM_GROUP_PERTURB, 0));
    TMUST(b->t, regopt_trainer_detach(b->t, b->sam));
    for (k = 0; k < 4; k++) {
        vstep(a);
        vstep(b);
        same_w(a, b, "no group perturbed vs the base optimizer");
        ck_assert_int_eq(rstat(a->sam, REGOPT_STAT_SAM_APPLIED), 0);
    }
    ck_assert_int_ne(regopt_regularizer_set_group(a->sam, 1, REGOPT_SAM_GROUP_PERTURB, 2),
                     REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_group(a->sam, 64, REGOPT_SAM_GROUP_PERTURB, 1),
                     REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_group(a->sam, -1, REGOPT_SAM_GROUP_PERTURB, 1),
                     REGOPT_OK);
    RMUST(a->sam, regopt_regularizer_get_group(a->sam, 1, REGOPT_SAM_GROUP_PERTURB, &v));
    ck_assert_double_eq(v, 0.0);
    vrun_close(a);
    vrun_close(b);
}
END_TEST

/* The flag goes through checkpoints' options: resume bit for bit. */
START_TEST(sam_on_resume_is_exact)
{
    vrun *a = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
    vrun *b = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
    vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    unsigned char *buf;
    size_t n;
    double v = -1.0;
    int k;
    RMUST(a->sam, regopt_regularizer_set_group(a->sam, 0, REGOPT_SAM_GROUP_PERTURB, 0));
    RMUST(b->sam, regopt_regularizer_set_group(b->sam, 0, REGOPT_SAM_GROUP_PERTURB, 0));
    for (k = 0; k < 5; k++)
        vstep(a);
    vstep(b);
    vstep(b);
    buf = save_all(b, &n);
    TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
    RMUST(c->sam, regopt_regularizer_get_group(c->sam, 0, REGOPT_SAM_GROUP_PERTURB, &v));
    ck_assert_double_eq(v, 0.0);
    for (k = 0; k < 3; k++)
        vstep(c);
    same_w(a, c, "SAM-ON resumed");
    free(buf);
    vrun_close(a);
    vrun_close(b);
    vrun_close(c);
}
END_TEST

/* ======================================================================== */
/* 6. LookSAM (sam.looksam)                                                 */
/* ======================================================================== */

/* Double-precision LookSAM with SGD on the quadratic host: SAM steps every
 * k-th step store g_v per tensor ("a" = [0, n0), "b" = [n0, n)). */
static void look_ref_step(double *w, double *gv, size_t n, size_t n0, int sam_step,
                          double rho, double lr, double alpha)
{
    double g[8], gs[8], s2 = 0.0, c;
    size_t i, t;
    for (i = 0; i < n; i++) {
        g[i] = h_of(i) * w[i];
        s2 += g[i] * g[i];
    }
    if (sam_step) {
        c = rho / (sqrt(s2) + 1e-12);
        for (i = 0; i < n; i++)
            gs[i] = h_of(i) * (w[i] + c * g[i]);
        for (t = 0; t < 2; t++) {
            size_t lo = t ? n0 : 0, hi = t ? n : n0;
            double d = 0.0, n2 = 0.0;
            for (i = lo; i < hi; i++) {
                d += g[i] * gs[i];
                n2 += g[i] * g[i];
            }
            for (i = lo; i < hi; i++)
                gv[i] = gs[i] - (n2 > 0.0 ? d / n2 : 0.0) * g[i];
        }
        for (i = 0; i < n; i++)
            w[i] -= lr * gs[i];
        return;
    }
    for (t = 0; t < 2; t++) {
        size_t lo = t ? n0 : 0, hi = t ? n : n0;
        double ng = 0.0, nv = 0.0;
        for (i = lo; i < hi; i++) {
            ng += g[i] * g[i];
            nv += gv[i] * gv[i];
        }
        c = alpha * sqrt(ng) / (sqrt(nv) + 1e-8);
        for (i = lo; i < hi; i++)
            w[i] -= lr * (g[i] + c * gv[i]);
    }
}

START_TEST(looksam_first_steps)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.1, 1);
    double w[8], gv[8] = {0};
    char what[64];
    size_t i;
    int k;
    vset(r, REGOPT_SAM_LOOKSAM, 1);
    vset(r, REGOPT_SAM_EVERY, 3);
    for (i = 0; i < 5; i++)
        w[i] = w0_of(i);
    for (k = 0; k < 7; k++) { /* SAM steps 0, 3, 6 */
        vstep(r);
        look_ref_step(w, gv, 5, r->q.n0, k % 3 == 0, 0.1, 0.02, 0.7);
        for (i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "LookSAM step %d w[%zu]", k, i);
            near(r->q.w[i], w[i], 2e-6, 1.0, what);
        }
        ck_assert_int_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), k % 3 == 0);
        if (k % 3 != 0)
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.0);
    }
    /* one pass per reuse step, two per SAM step: 3 SAM + 4 reuse */
    ck_assert_int_eq(r->q.forwards, 3 * 2 + 4);
    vrun_close(r);
}
END_TEST

/* k = 1: every step is a SAM step: SAM bit for bit (also with FriendlySAM
 * and m-sharpness); looksam with sam.gsam or sam.wsam is refused. */
START_TEST(looksam_identities)
{
    int dir;
    for (dir = 0; dir <= 1; dir++) {
        vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, dir, 0.2, 4);
        vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, dir, 0.2, 4);
        int k;
        vset(a, REGOPT_SAM_LOOKSAM, 1);
        vset(a, REGOPT_SAM_M_ROWS, dir ? 2 : 0);
        vset(b, REGOPT_SAM_M_ROWS, dir ? 2 : 0);
        for (k = 0; k < 5; k++) {
            vstep(a);
            vstep(b);
            same_w(a, b, "LookSAM k 1 vs SAM");
        }
        vset(a, REGOPT_SAM_GSAM, 1);
        ck_assert_int_eq(regopt_trainer_step(a->t, &a->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        vset(a, REGOPT_SAM_GSAM, 0);
        vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
        ck_assert_int_eq(regopt_trainer_step(a->t, &a->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(a->t), "sam.looksam"));
        vrun_close(a);
        vrun_close(b);
    }
}
END_TEST

/* A failing callback in each pass of a SAM step and of a reuse step
 * leaves the checkpoint bytes (g_v and FriendlySAM's m included) as they
 * were; the run then continues as one that never failed. */
START_TEST(looksam_rollback)
{
    int at, c, back;
    for (at = 2; at <= 3; at++) /* k 2: step 2 is a SAM step, step 3 a reuse step */
        for (back = 0; back < 2; back++)
            for (c = 1; c <= (at == 2 ? 2 : 1); c++) {
                vrun *bad = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
                vrun *good = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
                unsigned char *before, *after;
                size_t n1, n2;
                int k;
                vset(bad, REGOPT_SAM_LOOKSAM, 1);
                vset(good, REGOPT_SAM_LOOKSAM, 1);
                vset(bad, REGOPT_SAM_EVERY, 2);
                vset(good, REGOPT_SAM_EVERY, 2);
                for (k = 0; k < at; k++) {
                    vstep(bad);
                    vstep(good);
                }
                before = save_all(bad, &n1);
                if (back)
                    bad->q.fail_backward = bad->q.backwards + c;
                else
                    bad->q.fail_forward = bad->q.forwards + c;
                ck_assert_int_eq(regopt_trainer_step(bad->t, &bad->b, 1),
                                 back ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD);
                after = save_all(bad, &n2);
                ck_assert_uint_eq(n1, n2);
                ck_assert_msg(memcmp(before, after, n1) == 0, "LookSAM step %d, %s %d: the "
                              "checkpoint changed", at, back ? "backward" : "forward", c);
                for (k = 0; k < 4; k++) {
                    vstep(bad);
                    vstep(good);
                }
                same_w(bad, good, "after continuing");
                free(before);
                free(after);
                vrun_close(bad);
                vrun_close(good);
            }
}
END_TEST

/* Resume between SAM steps (g_v held, FriendlySAM's m too): bit for bit;
 * the state holds both records. */
START_TEST(looksam_resume_is_exact)
{
    int dir;
    for (dir = 0; dir <= 1; dir++) {
        vrun *a = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *b = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.2, 1);
        unsigned char *buf;
        size_t n, n0;
        int k;
        vset(a, REGOPT_SAM_LOOKSAM, 1);
        vset(b, REGOPT_SAM_LOOKSAM, 1);
        vset(a, REGOPT_SAM_EVERY, 3);
        vset(b, REGOPT_SAM_EVERY, 3);
        TMUST(b->t, regopt_trainer_checkpoint_size(b->t, CK_ALL, &n0));
        for (k = 0; k < 8; k++)
            vstep(a);
        for (k = 0; k < 4; k++)
            vstep(b);
        buf = save_all(b, &n);
        ck_assert_uint_eq(n, n0 + (size_t)(dir ? 2 : 1) * (16 + 4 * 6));
        TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
        for (k = 0; k < 4; k++)
            vstep(c);
        same_w(a, c, "LookSAM resumed");
        free(buf);
        vrun_close(a);
        vrun_close(b);
        vrun_close(c);
    }
}
END_TEST

TCase *sam_on_tcase(void)
{
    TCase *tc = tcase_create("sam_on");
    tcase_add_test(tc, sam_on_first_steps);
    tcase_add_test(tc, sam_on_identities);
    tcase_add_test(tc, sam_on_resume_is_exact);
    return tc;
}

TCase *sam_looksam_tcase(void)
{
    TCase *tc = tcase_create("looksam");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, looksam_first_steps);
    tcase_add_test(tc, looksam_identities);
    tcase_add_test(tc, looksam_rollback);
    tcase_add_test(tc, looksam_resume_is_exact);
    return tc;
}
