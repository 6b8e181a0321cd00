/* check_rdrop_passes.c — R-Drop's passes: call order and seeds, the doubled
 * batch against the two-call mode, statistics against the reference,
 * rdrop.every and composition with SAM (the rig: rdrop_rig.h). */
#include "tests.h"

#include "rdrop_rig.h"

/* ======================================================================== */
/* 4. Call order and seeds (two-call mode)                                  */
/* ======================================================================== */

START_TEST(call_order_and_seeds)
{
    rig *a = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL), *b = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rig *c = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL), *pl = rig_open(4, 1, 0, 0, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2}, i, j, ns = 0;
    uint64_t seen[32];
    int s, mb;
    data_init(&d, 4, 2, rows);
    tset(a, REGOPT_TRAINER_SEED, 1234);
    tset(b, REGOPT_TRAINER_SEED, 1234);
    tset(pl, REGOPT_TRAINER_SEED, 1234);
    tset(c, REGOPT_TRAINER_SEED, 1235);
    for (s = 0; s < 3; s++) {
        a->h.ncalls = b->h.ncalls = c->h.ncalls = pl->h.ncalls = 0;
        rstep(a, &d);
        rstep(b, &d);
        rstep(c, &d);
        rstep(pl, &d);
        ck_assert_int_eq(a->h.ncalls, 8);
        ck_assert_int_eq(pl->h.ncalls, 4);
        ck_assert_int_eq(a->h.violations, 0);
        ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 4);
        ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_BACKWARD_CALLS), 4);
        for (mb = 0; mb < 2; mb++) {
            const rcall *x = &a->h.calls[4 * mb];
            for (i = 0; i < 4; i++) {
                ck_assert_int_eq(x[i].backward, i >= 2);
                ck_assert_int_eq(x[i].slot, (int32_t)(i % 2));
                ck_assert_uint_eq(x[i].flags, REGOPT_PASS_TRAIN);
                ck_assert_uint_eq(x[i].rows, rows[mb]);
                ck_assert_uint_eq(x[i].row_offset, 0);
                ck_assert_uint_eq(x[i].micro_batch, (size_t)mb);
            }
            ck_assert(x[0].seed2 == 0 && x[1].seed2 == 0);
            ck_assert_msg(x[0].seed != x[1].seed, "the two passes share a seed");
            /* reproducible, seed-dependent, and pass 1 = the plain pass's seed */
            ck_assert(b->h.calls[4 * mb].seed == x[0].seed);
            ck_assert(b->h.calls[4 * mb + 1].seed == x[1].seed);
            ck_assert(c->h.calls[4 * mb].seed != x[0].seed);
            ck_assert(c->h.calls[4 * mb + 1].seed != x[1].seed);
            ck_assert_msg(pl->h.calls[2 * mb].seed == x[0].seed,
                          "step %d mb %d: first R-Drop seed %llx, plain seed %llx", s, mb,
                          (unsigned long long)x[0].seed,
                          (unsigned long long)pl->h.calls[2 * mb].seed);
            seen[ns++] = x[0].seed;
            seen[ns++] = x[1].seed;
        }
        for (j = 0; j < RP; j++)
            ck_assert(a->h.p[j] == b->h.p[j]);
    }
    for (i = 0; i < ns; i++)
        for (j = i + 1; j < ns; j++)
            ck_assert_msg(seen[i] != seen[j], "seeds %zu and %zu repeat", i, j);
    rig_close(a);
    rig_close(b);
    rig_close(c);
    rig_close(pl);
}
END_TEST

/* ======================================================================== */
/* 5. Doubled batch = two-call mode                                         */
/* ======================================================================== */

START_TEST(doubled_equals_two_calls)
{
    int mse;
    for (mse = 0; mse < 2; mse++) {
        rig *a = rig_open(4, 1, CAP, 1, REGOPT_ADAM, NULL), *b = rig_open(4, 2, CAP, 1, REGOPT_ADAM, NULL);
        rdata d;
        size_t rows[2] = {3, 2}, j;
        rcfg c = {0.7, 0.5, mse ? 0.0 : 0.1, 0, mse};
        int s, mb;
        static const regopt_key keys[] = {
            REGOPT_STAT_LOSS, REGOPT_STAT_OBJECTIVE, REGOPT_STAT_GRAD_NORM, REGOPT_STAT_WEIGHT,
            REGOPT_STAT_RDROP_LOSS1, REGOPT_STAT_RDROP_LOSS2, REGOPT_STAT_RDROP_CONSISTENCY,
            REGOPT_STAT_RDROP_APPLIED};
        data_init(&d, 4, 2, rows);
        data_mask_weights(&d, 1);
        rig_cfg(a, &c);
        rig_cfg(b, &c);
        rset(b, REGOPT_RDROP_DOUBLED, 0);
        tset(a, REGOPT_TRAINER_SEED, 77);
        tset(b, REGOPT_TRAINER_SEED, 77);
        for (s = 0; s < 4; s++) {
            a->h.ncalls = b->h.ncalls = 0;
            rstep(a, &d);
            rstep(b, &d);
            ck_assert_int_eq(a->h.violations + b->h.violations, 0);
            ck_assert_int_eq(a->h.ncalls, 4);
            ck_assert_int_eq(b->h.ncalls, 8);
            ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 2);
            for (mb = 0; mb < 2; mb++) {
                const rcall *x = &a->h.calls[2 * mb], *y = &b->h.calls[4 * mb];
                ck_assert_int_eq(x[0].backward, 0);
                ck_assert_int_eq(x[1].backward, 1);
                ck_assert_int_eq(x[0].slot, 0);
                ck_assert_int_eq(x[1].slot, 0);
                ck_assert_uint_eq(x[0].rows, 2 * rows[mb]);
                ck_assert_uint_eq(x[1].rows, 2 * rows[mb]);
                ck_assert_uint_eq(x[0].flags, REGOPT_PASS_TRAIN | REGOPT_PASS_DOUBLED);
                ck_assert_msg(x[0].seed == y[0].seed && x[0].seed2 == y[1].seed,
                              "doubled seeds differ from the two-call seeds");
                ck_assert_uint_eq(y[0].flags, REGOPT_PASS_TRAIN);
            }
            for (j = 0; j < sizeof keys / sizeof keys[0]; j++) {
                char what[64];
                snprintf(what, sizeof what, "mse %d step %d key %d", mse, s, (int)keys[j]);
                near(kstat(a, keys[j]), kstat(b, keys[j]), 1e-6, 1e-3, what);
            }
            for (j = 0; j < d.n * d.k; j++) {
                near(a->h.dout[0][j], b->h.dout[0][j], 1e-6, 0.1, "d_outputs pass 1");
                near(a->h.dout[1][j], b->h.dout[1][j], 1e-6, 0.1, "d_outputs pass 2");
            }
        }
        for (j = 0; j < RP; j++)
            near(a->h.p[j], b->h.p[j], 1e-6, 1, "parameters after 4 steps");
        rig_close(a);
        rig_close(b);
    }
}
END_TEST

/* ======================================================================== */
/* 6. Statistics, rdrop.every                                               */
/* ======================================================================== */

START_TEST(statistics_match_reference)
{
    rig *r = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2};
    rcfg c = {1.5, 0.5, 0.05, 0, 0};
    rterms t;
    int s;
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    rig_cfg(r, &c);
    ck_assert(rstat(r->rdrop, REGOPT_STAT_RDROP_APPLIED) == 0.0); /* before the first step */
    for (s = 0; s < 3; s++) {
        double z1[RP], z2[RP];
        size_t j;
        rstep(r, &d);
        /* the outputs of this step, from the parameters it started from */
        for (j = 0; j < d.n * d.k; j++) {
            z1[j] = r->h.out[0][j];
            z2[j] = r->h.out[1][j];
        }
        t = ref_terms(&c, &d, z1, z2);
        ck_assert(t.l1 != t.l2); /* the passes really differ */
        near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS1), t.l1, 1e-6, 1e-2, "stat.rdrop_loss1");
        near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS2), t.l2, 1e-6, 1e-2, "stat.rdrop_loss2");
        near(stat(r->t, REGOPT_STAT_LOSS), 0.5 * (t.l1 + t.l2), 1e-6, 1e-2, "stat.loss");
        near(rstat(r->rdrop, REGOPT_STAT_RDROP_CONSISTENCY), t.c, 1e-6, 1e-3, "consistency");
        near(stat(r->t, REGOPT_STAT_OBJECTIVE), t.obj, 1e-6, 1e-2, "stat.objective");
        near(stat(r->t, REGOPT_STAT_WEIGHT), t.weight, 1e-12, 1, "stat.weight");
        ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), 1);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), s + 1);
    }
    rig_close(r);
}
END_TEST

START_TEST(every_k_steps)
{
    rig *r = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL), *pl = rig_open(4, 1, 0, 0, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2};
    rcfg c = {1.0, 1.0, 0.0, 0, 0};
    int s;
    data_init(&d, 4, 2, rows);
    rset(r, REGOPT_RDROP_EVERY, 3);
    tset(r, REGOPT_TRAINER_SEED, 9);
    tset(pl, REGOPT_TRAINER_SEED, 9);
    for (s = 0; s < 7; s++) {
        int on = s % 3 == 0, i;
        r->h.ncalls = pl->h.ncalls = 0;
        rstep(r, &d);
        rstep(pl, &d);
        ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), on);
        ck_assert_int_eq(r->h.ncalls, on ? 8 : 4);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), on ? 4 : 2);
        if (on) {
            rterms t = ref_on_host(&c, &d, &r->h);
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), t.obj, 1e-6, 1e-2, "R-Drop step objective");
            continue;
        }
        for (i = 0; i < 4; i++) {
            const rcall *x = &r->h.calls[i];
            ck_assert_int_eq(x->backward, i % 2);
            ck_assert_int_eq(x->slot, 0);
            ck_assert_uint_eq(x->flags, REGOPT_PASS_TRAIN);
            ck_assert(x->seed == pl->h.calls[i].seed);
        }
        {
            double z[RP], l = 0.0, w = 0.0;
            size_t j;
            for (j = 0; j < d.n * d.k; j++)
                z[j] = r->h.out[0][j];
            for (j = 0; j < d.n; j++) {
                l += ref_ce(z + j * 4, 4, d.y[j], 0.0);
                w += 1.0;
            }
            near(stat(r->t, REGOPT_STAT_LOSS), l / w, 1e-6, 1e-2, "plain step loss");
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), l / w, 1e-6, 1e-2, "plain step objective");
        }
    }
    rig_close(r);
    rig_close(pl);
}
END_TEST

/* ======================================================================== */
/* 7. With SAM                                                              */
/* ======================================================================== */

START_TEST(composes_with_sam)
{
    rig *r = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2}, j;
    float p0[RP];
    int i, s;
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    r->sam = rig_new(r, REGOPT_REG_SAM);
    rig_attach(r, r->sam);
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, REGOPT_SAM_RHO, 0.1));
    /* lr scale 0: the update is w - 0*g, so w after the step = restored w */
    MUST(regopt_optimizer_set_group(r->o, 0, REGOPT_GROUP_LR_SCALE, 0.0));
    memcpy(p0, r->h.p, sizeof p0);
    rstep(r, &d);
    ck_assert_int_eq(r->h.violations, 0);
    ck_assert_int_eq(r->h.ncalls, 16);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 8);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 8);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    for (i = 0; i < 16; i++) {
        const rcall *x = &r->h.calls[i];
        int pert = i >= 8, k = i % 4;
        ck_assert_int_eq(x->backward, k >= 2);
        ck_assert_int_eq(x->slot, k % 2);
        ck_assert_uint_eq(x->micro_batch, (size_t)((i % 8) / 4));
        ck_assert_uint_eq(x->flags, pert ? REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS
                                         : REGOPT_PASS_TRAIN);
        if (pert) {
            ck_assert_msg(x->psum != r->h.calls[0].psum, "call %d saw unperturbed weights", i);
            if (k < 2) /* sam.same_seed = 1: the perturbed passes repeat their seeds */
                ck_assert(x->seed == r->h.calls[i - 8].seed);
        } else {
            ck_assert(x->psum == r->h.calls[0].psum);
        }
    }
    ck_assert(r->h.calls[0].seed != r->h.calls[1].seed);
    ck_assert_msg(memcmp(p0, r->h.p, sizeof p0) == 0, "weights not restored exactly");
    /* real updates: finite, both regularizers applied */
    MUST(regopt_optimizer_set_group(r->o, 0, REGOPT_GROUP_LR_SCALE, 1.0));
    for (s = 0; s < 10; s++) {
        static const regopt_key keys[] = {REGOPT_STAT_LOSS, REGOPT_STAT_OBJECTIVE,
                                          REGOPT_STAT_GRAD_NORM, REGOPT_STAT_SAM_SHARPNESS,
                                          REGOPT_STAT_RDROP_CONSISTENCY};
        rstep(r, &d);
        for (j = 0; j < sizeof keys / sizeof keys[0]; j++)
            ck_assert(isfinite(kstat(r, keys[j])));
        ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
        ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), 1);
    }
    for (j = 0; j < RP; j++)
        ck_assert(isfinite(r->h.p[j]));
    ck_assert(memcmp(p0, r->h.p, sizeof p0) != 0);
    rig_close(r);
}
END_TEST

Suite *suite_rdrop_passes(void)
{
    Suite *s = suite_create("rdrop_passes");
    TCase *tc = tcase_create("passes");
    tcase_add_test(tc, call_order_and_seeds);
    tcase_add_test(tc, doubled_equals_two_calls);
    tcase_add_test(tc, statistics_match_reference);
    tcase_add_test(tc, every_k_steps);
    tcase_add_test(tc, composes_with_sam);
    suite_add_tcase(s, tc);
    return s;
}
