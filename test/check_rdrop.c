/* check_rdrop.c — R-Drop (Liang et al. 2021): the docs/methods.md §9 reference
 * vector, finite differences of the whole objective (CE with label
 * smoothing, MSE, kl_sum) and the padding mask. Call order and seeds, the
 * doubled batch, statistics, rdrop.every and SAM: check_rdrop_passes.c;
 * options, rollback and allocation: check_rdrop_errors.c; the rig:
 * rdrop_rig.h.
 * Expected values come from closed forms or from double-precision
 * references written here, never from the library's own output. */
#include "tests.h"

#include "rdrop_rig.h"

/* ======================================================================== */
/* 1. The reference vector of docs/methods.md §9 (RV-RDROP)                 */
/* ======================================================================== */

static const double RV_Z1[3] = {1.0, 2.0, 3.0}, RV_Z2[3] = {1.0, 1.0, 1.0};
static const double RV_C = 0.2876051913022206;
static const double RV_G1[3] = {-0.1925599268863825, -0.11468760987408287,
                                0.30724753676046535};

START_TEST(reference_vector)
{
    int mode, ce;
    double g2[3];
    size_t j;
    /* the reference itself against docs/methods.md §9 (RV-RDROP) */
    near(ref_kl(RV_Z2, RV_Z1, 3), 0.30899367577627057, 1e-14, 0, "KL(P2||P1)");
    near(ref_kl(RV_Z1, RV_Z2, 3), 0.2662167068281707, 1e-14, 0, "KL(P1||P2)");
    near(ref_cons(RV_Z1, RV_Z2, 3), RV_C, 1e-14, 0, "c");
    for (j = 0; j < 3; j++) { /* gradient w.r.t. z1 and z2 by double finite differences */
        double a[3], b[3], h = 1e-6;
        memcpy(a, RV_Z1, sizeof a);
        memcpy(b, RV_Z1, sizeof b);
        a[j] += h;
        b[j] -= h;
        near((ref_cons(a, RV_Z2, 3) - ref_cons(b, RV_Z2, 3)) / (2 * h), RV_G1[j], 1e-8, 1,
             "reference dc/dz1 by differences");
        memcpy(a, RV_Z2, sizeof a);
        memcpy(b, RV_Z2, sizeof b);
        a[j] += h;
        b[j] -= h;
        g2[j] = (ref_cons(RV_Z1, a, 3) - ref_cons(RV_Z1, b, 3)) / (2 * h);
    }
    for (mode = 0; mode < 2; mode++)
        for (ce = 0; ce < 2; ce++) {
            rig *r = mode ? rig_open(3, 1, CAP, 1, REGOPT_SGD, NULL)
                          : rig_open(3, 2, 0, 1, REGOPT_SGD, NULL);
            rdata d;
            size_t rows[1] = {1};
            double lse1 = log(exp(1.0) + exp(2.0) + exp(3.0)), p1[3];
            data_init(&d, 3, 1, rows);
            d.y[0] = 0;
            r->h.amp = 0.0f;
            memset(r->h.p, 0, sizeof r->h.p);
            for (j = 0; j < 3; j++) {
                r->h.bias[0][j] = (float)RV_Z1[j];
                r->h.bias[1][j] = (float)RV_Z2[j];
                p1[j] = exp(RV_Z1[j] - lse1);
            }
            if (!ce)
                rset(r, REGOPT_RDROP_CE_WEIGHT, 0.0);
            rstep(r, &d);
            ck_assert_int_eq(r->h.violations, 0);
            near(rstat(r->rdrop, REGOPT_STAT_RDROP_CONSISTENCY), RV_C, 1e-6, 0, "stat.rdrop_consistency");
            near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS1), lse1 - 1.0, 1e-6, 0, "loss1 = CE([1,2,3], 0)");
            near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS2), log(3.0), 1e-6, 0, "loss2 = log 3");
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), (ce ? lse1 - 1.0 + log(3.0) : 0.0) + RV_C,
                 1e-6, 0, "stat.objective");
            for (j = 0; j < 3; j++) {
                /* pass 1: minus the CE part softmax(z1) - onehot(0) when it is on */
                double ce1 = ce ? p1[j] - (j == 0) : 0.0, ce2 = ce ? 1.0 / 3.0 - (j == 0) : 0.0;
                near(r->h.dout[0][j] - ce1, RV_G1[j], 1e-6, 1, "d_outputs of pass 1 (KL part)");
                near(r->h.dout[1][j] - ce2, g2[j], 1e-6, 1, "d_outputs of pass 2 (KL part)");
            }
            rig_close(r);
        }
}
END_TEST

/* ======================================================================== */
/* 2. Finite differences of the whole objective                             */
/* ======================================================================== */

static void fd_case(const rcfg *c, int doubled, int weights)
{
    rig *r = doubled ? rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL)
                     : rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2}, j, n;
    int q;
    double z[2][RP], obj;
    rterms want;
    char what[96];
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, weights);
    n = d.n * d.k;
    r->h.amp = 0.0f;
    for (q = 0; q < 2; q++)
        for (j = 0; j < n; j++) {
            r->h.bias[q][j] = (float)(1.2 * sin(0.37 * (double)j + 1.3 * q) + 0.2 * q);
            z[q][j] = r->h.bias[q][j];
        }
    rig_cfg(r, c);
    obj = objective_at(r, &d);
    ck_assert_int_eq(r->h.violations, 0);
    want = ref_terms(c, &d, z[0], z[1]);
    near(obj, want.obj, 1e-6, 1e-2, "stat.objective vs reference");
    near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS1), want.l1, 1e-6, 1e-2, "loss1");
    near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS2), want.l2, 1e-6, 1e-2, "loss2");
    near(rstat(r->rdrop, REGOPT_STAT_RDROP_CONSISTENCY), want.c, 1e-6, 1e-2, "consistency");
    {
        float dout[2][RP];
        memcpy(dout, r->h.dout, sizeof dout);
        for (q = 0; q < 2; q++)
            for (j = 0; j < n; j++) {
                double h = 1e-6, up, dn, fd, lup, ldn, lfd;
                float b0 = r->h.bias[q][j], bu, bd;
                z[q][j] += h;
                up = ref_terms(c, &d, z[0], z[1]).obj;
                z[q][j] -= 2 * h;
                dn = ref_terms(c, &d, z[0], z[1]).obj;
                z[q][j] += h;
                fd = (up - dn) / (2 * h);
                snprintf(what, sizeof what, "%s%s%s pass %d row %zu class %zu: d_outputs vs "
                         "differences of the reference", c->mse ? "mse" : "ce",
                         c->kl_sum ? " kl_sum" : "", doubled ? " doubled" : "", q + 1,
                         j / d.k, j % d.k);
                near(dout[q][j], fd, 1e-5, 0.1, what);
                if (j / d.k == 2) /* the padding row */
                    ck_assert_msg(dout[q][j] == 0.0f, "padding row d_outputs %g", dout[q][j]);
                /* and differences of the library's own objective */
                bu = r->h.bias[q][j] = b0 + 4e-3f;
                lup = objective_at(r, &d);
                bd = r->h.bias[q][j] = b0 - 4e-3f;
                ldn = objective_at(r, &d);
                r->h.bias[q][j] = b0;
                lfd = (lup - ldn) / ((double)bu - (double)bd);
                near(lfd, fd, 2e-3, 0.1, "differences of stat.objective");
            }
    }
    rig_close(r);
}

START_TEST(finite_differences_ce)
{
    rcfg c = {0.7, 0.6, 0.1, 0, 0};
    fd_case(&c, 0, 1);
    fd_case(&c, 1, 1);
}
END_TEST

START_TEST(finite_differences_mse)
{
    rcfg c = {1.7, 0.8, 0.0, 0, 1};
    fd_case(&c, 0, 1);
    fd_case(&c, 1, 1);
}
END_TEST

START_TEST(finite_differences_kl_sum)
{
    rcfg c = {0.7, 0.6, 0.1, 1, 0}, m = {0.9, 1.3, 0.0, 1, 1};
    /* summed over rows: mask only (how row weights enter a sum is not documented) */
    fd_case(&c, 0, 0);
    fd_case(&c, 1, 0);
    fd_case(&m, 0, 0);
}
END_TEST

/* ======================================================================== */
/* 3. The padding mask                                                      */
/* ======================================================================== */

START_TEST(mask_padding_contributes_nothing)
{
    int mode, mse;
    for (mode = 0; mode < 2; mode++)
        for (mse = 0; mse < 2; mse++) {
            rig *r = mode ? rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL)
                          : rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
            rig *ok = mode ? rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL)
                           : rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
            rdata d, e;
            size_t rows[1] = {4}, j, k;
            rcfg c = {1.3, 0.8, mse ? 0.0 : 0.1, 0, mse};
            rterms want;
            float p0[RP];
            data_init(&d, 4, 1, rows);
            d.use_mask = 1;
            d.mask[1] = d.mask[3] = 0;
            data_build(&d);
            e = d;
            data_build(&e);
            /* garbage on padding rows: labels -100, NaN targets, NaN/inf outputs */
            d.y[1] = d.y[3] = -100;
            for (k = 0; k < 4; k++) {
                d.tg[1 * 4 + k] = NAN;
                d.tg[3 * 4 + k] = INFINITY;
                r->h.bias[0][1 * 4 + k] = NAN;
                r->h.bias[1][1 * 4 + k] = INFINITY;
                r->h.bias[0][3 * 4 + k] = -INFINITY;
                r->h.bias[1][3 * 4 + k] = k % 2 ? NAN : INFINITY;
            }
            rig_cfg(r, &c);
            rig_cfg(ok, &c);
            tset(r, REGOPT_TRAINER_SEED, 42);
            tset(ok, REGOPT_TRAINER_SEED, 42);
            memcpy(p0, r->h.p, sizeof p0);
            rstep(r, &d);
            rstep(ok, &e);
            ck_assert_int_eq(r->h.violations, 0);
            want = ref_on_host(&c, &d, &r->h);
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), want.obj, 1e-6, 1e-2, "masked objective");
            near(stat(r->t, REGOPT_STAT_WEIGHT), 2.0, 0, 1, "stat.weight");
            ck_assert(stat(r->t, REGOPT_STAT_OBJECTIVE) == stat(ok->t, REGOPT_STAT_OBJECTIVE));
            for (j = 0; j < 4; j++) {
                int pad = j == 1 || j == 3;
                for (k = 0; k < 4; k++) {
                    size_t i = j * 4 + k;
                    if (pad) {
                        ck_assert_msg(r->h.dout[0][i] == 0.0f && r->h.dout[1][i] == 0.0f,
                                      "mode %d mse %d: padding row %zu d_outputs %g %g", mode,
                                      mse, j, r->h.dout[0][i], r->h.dout[1][i]);
                        ck_assert(r->h.p[i] == p0[i]);
                    } else {
                        ck_assert(r->h.p[i] == ok->h.p[i]);
                        ck_assert(r->h.dout[0][i] == ok->h.dout[0][i]);
                        ck_assert(r->h.dout[1][i] == ok->h.dout[1][i]);
                    }
                }
            }
            rig_close(r);
            rig_close(ok);
        }
}
END_TEST

Suite *suite_rdrop(void)
{
    Suite *s = suite_create("rdrop");
    TCase *tc = tcase_create("loss");
    tcase_add_test(tc, reference_vector);
    tcase_add_test(tc, finite_differences_ce);
    tcase_add_test(tc, finite_differences_mse);
    tcase_add_test(tc, finite_differences_kl_sum);
    tcase_add_test(tc, mask_padding_contributes_nothing);
    suite_add_tcase(s, tc);
    return s;
}
