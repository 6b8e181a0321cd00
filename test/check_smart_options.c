/* check_smart_options.c — SMART and Bregman statistics with everything on,
 * read-only statistics keys, attach errors, and option bounds and defaults
 * (the rig: smart_rig.h, smart_ref.h). */
#include "tests.h"

#include "smart_rig.h"
#include "smart_ref.h"

/* ======================================================================== */
/* 6. Statistics with everything on                                          */
/* ======================================================================== */

static void check_stats(int p, regopt_loss_kind loss)
{
    const size_t d = 2, k = 3, rows = 2, T = 2, count = 2;
    const double lambda = 1.5, mu = 0.7;
    const int mse = loss == REGOPT_LOSS_MSE;
    sm_run *r = sm_open(d, k, 2, loss, 0.3, NULL, NULL);
    sm_set s;
    double W, R = 0.0, D = 0.0, task = 0.0, noise = 0.0, nrows = 0.0;
    size_t mb, i, j;
    int step;
    sm_smart(r, lambda, 0.2, 0.05, 0.5, 2, p, 0);
    sm_bregman(r, mu, 0.5);
    for (step = 0; step < 3; step++) {
        sm_fill(&s, count, rows, T, d, k, 1, 1, 20 + (unsigned)step);
        sm_reset(r);
        sm_step(r, &s);
    }
    W = sm_wsum(&s);
    for (mb = 0; mb < count; mb++) {
        const sm_rec *fq = sm_must_find(&r->h, 0, 0, mb, REGOPT_PASS_TEACHER, 0, 0);
        const sm_rec *fz = sm_must_find(&r->h, 0, 0, mb, REGOPT_PASS_TRAIN, 0, 0);
        const sm_rec *fa = sm_must_find(&r->h, 0, 1, mb, 0, 0, 2);
        ck_assert_uint_eq(fa->input_rows, rows * T);
        for (i = 0; i < rows; i++) {
            double z[SK], a[SK], q[SK], g[SK], rw = sm_rw(&s, mb, i);
            f2d(z, fz->out + i * k, k);
            f2d(a, fa->out + i * k, k);
            f2d(q, fq->out + i * k, k);
            R += rw * ref_ls(a, z, k, mse) / W;
            D += rw * ref_ls(z, q, k, mse) / W;
            task += rw * ref_task(z, k, s.y[mb][i], s.tg[mb] + i * k, mse, g) / W;
        }
        for (j = 0; j < rows * T; j++) { /* every embedding row, padded or not */
            noise += ref_normf(fa->pert + j * d, d, p);
            nrows += 1.0;
        }
    }
    ck_assert(R > 1e-7 && D > 1e-7);
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_RS), R, 1e-5, 1e-9, "stat.smart_rs", p);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_D), D, 1e-5, 1e-9, "stat.bregman_d", p);
    sm_near(sm_get(r->t, REGOPT_STAT_LOSS), task, 1e-5, 1e-9, "stat.loss", p);
    sm_near(rstat(r->smart, REGOPT_STAT_SMART_NOISE_NORM), noise / nrows, 1e-6, 1e-9,
            "stat.smart_noise_norm", p);
    sm_near(rstat(r->breg, REGOPT_STAT_BREGMAN_BETA), 0.5, 1e-7, 1e-9, "stat.bregman_beta", p);
    sm_near(sm_get(r->t, REGOPT_STAT_OBJECTIVE), task + lambda * R + mu * D, 1e-5, 1e-9,
            "stat.objective", p);
    sm_close(r);
}

START_TEST(stats_inf_ce) { check_stats(REGOPT_SMART_NORM_INF, REGOPT_LOSS_SOFTMAX_CE); }
END_TEST
START_TEST(stats_l1_mse) { check_stats(REGOPT_SMART_NORM_L1, REGOPT_LOSS_MSE); }
END_TEST
START_TEST(stats_l2_ce) { check_stats(REGOPT_SMART_NORM_L2, REGOPT_LOSS_SOFTMAX_CE); }
END_TEST

/* Statistics read 0 before the first step (before and after attach) and
 * cannot be set: on their handle they are read-only (REGOPT_ERR_STATE, as
 * for the trainer's statistics), and since 1.0 they are not trainer keys. */
START_TEST(stats_read_only)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_key keys[4] = {REGOPT_STAT_SMART_RS, REGOPT_STAT_SMART_NOISE_NORM,
                          REGOPT_STAT_BREGMAN_D, REGOPT_STAT_BREGMAN_BETA};
    regopt_regularizer *smart = sm_new(r, REGOPT_REG_SMART);
    regopt_regularizer *breg = sm_new(r, REGOPT_REG_BREGMAN);
    int i, attached;
    for (attached = 0; attached < 2; attached++) {
        if (attached) {
            SM_TMUST(r->t, regopt_trainer_attach(r->t, smart));
            SM_TMUST(r->t, regopt_trainer_attach(r->t, breg));
        }
        for (i = 0; i < 4; i++) {
            regopt_regularizer *g = i < 2 ? smart : breg;
            regopt_status st;
            ck_assert_double_eq(rstat(g, keys[i]), 0.0);
            st = regopt_regularizer_set_double(g, keys[i], 1.0);
            ck_assert_msg(st == REGOPT_ERR_STATE, "setting statistic %d on its handle: %s",
                          (int)keys[i], regopt_status_string(st));
            ck_assert_double_eq(rstat(g, keys[i]), 0.0);
            ck_assert_int_eq(regopt_trainer_set_double(r->t, keys[i], 0.0),
                             REGOPT_ERR_UNKNOWN_KEY);
        }
    }
    sm_close(r);
}
END_TEST

/* ======================================================================== */
/* 8. Errors and options                                                    */
/* ======================================================================== */

/* attach(g) fails with `want`, and g stays unattached and the trainer's
 * regularizer count is unchanged (on failure nothing changes). */
static void sm_attach_fails(sm_run *r, regopt_regularizer *g, regopt_status want)
{
    size_t n = regopt_trainer_regularizer_count(r->t);
    regopt_trainer *owner = regopt_regularizer_get_trainer(g);
    regopt_status st = regopt_trainer_attach(r->t, g);
    ck_assert_msg(st == want, "attach of kind %d -> %s, want %s (%s)",
                  (int)regopt_regularizer_get_kind(g), regopt_status_string(st),
                  regopt_status_string(want), regopt_trainer_message(r->t));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), n);
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), owner);
}

START_TEST(smart_needs_input_width_and_slots)
{
    sm_run *r = sm_open(0, 3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_regularizer *smart, *breg;
    smart = sm_new(r, REGOPT_REG_SMART);
    sm_attach_fails(r, smart, REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "input width") != NULL, "%s",
                  regopt_trainer_message(r->t));
    sm_attach(r, REGOPT_REG_BREGMAN);
    sm_close(r);

    r = sm_open(2, 3, 1, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    smart = sm_new(r, REGOPT_REG_SMART);
    sm_attach_fails(r, smart, REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "slot") != NULL, "%s",
                  regopt_trainer_message(r->t));
    /* Bregman needs no extra slot */
    breg = sm_attach(r, REGOPT_REG_BREGMAN);
    sm_attach_fails(r, sm_new(r, REGOPT_REG_BREGMAN), REGOPT_ERR_STATE); /* a second one */
    sm_attach_fails(r, breg, REGOPT_ERR_STATE);                          /* the same twice */
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    sm_close(r);

    /* two slots: SMART alone fits, SMART with two-call R-Drop does not */
    r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    smart = sm_attach(r, REGOPT_REG_SMART);
    sm_attach_fails(r, sm_new(r, REGOPT_REG_SMART), REGOPT_ERR_STATE);
    sm_attach_fails(r, sm_new(r, REGOPT_REG_RDROP), REGOPT_ERR_STATE);
    SM_TMUST(r->t, regopt_trainer_detach(r->t, smart));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(smart));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    sm_attach(r, REGOPT_REG_RDROP);
    sm_attach_fails(r, smart, REGOPT_ERR_STATE); /* the detached handle, back: no slot */
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "slot") != NULL, "%s",
                  regopt_trainer_message(r->t));
    sm_close(r);
}
END_TEST

typedef struct sm_key {
    regopt_key key;
    const char *name;
    int type;
    double min, max, def;
    uint32_t flags;
    regopt_regularizer_kind kind; /* the handle the key belongs to */
} sm_key;

#define KD REGOPT_TYPE_DOUBLE
#define KI REGOPT_TYPE_INT
#define RS REGOPT_REG_SMART
#define RB REGOPT_REG_BREGMAN
/* from the header's comments */
static const sm_key SM_KEYS[] = {
    {REGOPT_SMART_LAMBDA, "smart.lambda", KD, 0, 1e4, 1, 0, RS},
    {REGOPT_SMART_EPSILON, "smart.epsilon", KD, 0, 1e3, 1e-5, REGOPT_KEY_MIN_EXCLUSIVE, RS},
    {REGOPT_SMART_SIGMA, "smart.sigma", KD, 0, 1e3, 1e-5, 0, RS},
    {REGOPT_SMART_ETA, "smart.eta", KD, 0, 1e3, 1e-3, 0, RS},
    {REGOPT_SMART_STEPS, "smart.steps", KI, 1, 100, 1, 0, RS},
    {REGOPT_SMART_NORM, "smart.norm", KI, 0, 2, REGOPT_SMART_NORM_INF, 0, RS},
    {REGOPT_SMART_MTDNN, "smart.mtdnn", KI, 0, 1, 0, 0, RS},
    {REGOPT_SMART_STABLE_KL, "smart.stable_kl", KI, 0, 1, 0, 0, RS},
    {REGOPT_SMART_SAME_SEED, "smart.same_seed", KI, 0, 1, 1, 0, RS},
    {REGOPT_BREGMAN_MU, "bregman.mu", KD, 0, 1e4, 1, 0, RB},
    {REGOPT_BREGMAN_BETA, "bregman.beta", KD, 0, 1, 0.99, REGOPT_KEY_MAX_EXCLUSIVE, RB},
    {REGOPT_BREGMAN_BETA_LATE, "bregman.beta_late", KD, 0, 1, 0.999, REGOPT_KEY_MAX_EXCLUSIVE,
     RB},
    {REGOPT_BREGMAN_SWITCH, "bregman.switch", KD, 0, 1, 0.1, 0, RB},
    {REGOPT_BREGMAN_SWITCH_STEP, "bregman.switch_step", KI, -1, 2147483648.0, -1, 0, RB},
};

static void expect_out_of_range(regopt_regularizer *g, const sm_key *k, double v)
{
    double before = rstat(g, k->key);
    regopt_status st = regopt_regularizer_set_double(g, k->key, v);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %g -> %s", k->name, v,
                  regopt_status_string(st));
    ck_assert_msg(strstr(regopt_regularizer_message(g), k->name) != NULL,
                  "message of %s = %g does not name the key: %s", k->name, v,
                  regopt_regularizer_message(g));
    ck_assert_double_eq(rstat(g, k->key), before);
}

static void expect_accepted(regopt_regularizer *g, const sm_key *k, double v)
{
    regopt_status st = regopt_regularizer_set_double(g, k->key, v);
    ck_assert_msg(st == REGOPT_OK, "%s = %.17g -> %s: %s", k->name, v, regopt_status_string(st),
                  regopt_regularizer_message(g));
    ck_assert_double_eq(rstat(g, k->key), v);
}

/* The smallest integral double above an integer x (x + 1 rounds to x from
 * 2^53 on). */
static double int_above(double x)
{
    return x + 1.0 > x ? x + 1.0 : nextafter(x, HUGE_VAL);
}

START_TEST(option_bounds_and_defaults)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_regularizer *smart = sm_new(r, REGOPT_REG_SMART);
    regopt_regularizer *breg = sm_new(r, REGOPT_REG_BREGMAN);
    size_t i;
    int attached;
    /* options work before the attach and after it */
    for (attached = 0; attached < 2; attached++) {
        if (attached) {
            SM_TMUST(r->t, regopt_trainer_attach(r->t, smart));
            SM_TMUST(r->t, regopt_trainer_attach(r->t, breg));
        }
        for (i = 0; i < sizeof SM_KEYS / sizeof SM_KEYS[0]; i++) {
            const sm_key *k = &SM_KEYS[i];
            regopt_regularizer *g = k->kind == RS ? smart : breg;
            regopt_regularizer *other = k->kind == RS ? breg : smart;
            const char *name = NULL;
            int type = 0;
            double mn = -1, mx = -1, def = -1, v = -1;
            uint32_t flags = 99;
            regopt_key found = (regopt_key)0;
            SM_MUST(regopt_key_info(k->key, &name, &type, &mn, &mx, &def, &flags));
            ck_assert_str_eq(name, k->name);
            ck_assert_int_eq(type, k->type);
            ck_assert_msg(mn == k->min && mx == k->max, "%s: [%g, %g]", k->name, mn, mx);
            ck_assert_msg(def == k->def, "%s: key_info default %g, header %g", k->name, def,
                          k->def);
            ck_assert_uint_eq(flags, k->flags);
            SM_MUST(regopt_key_from_name(k->name, &found));
            ck_assert_int_eq(found, k->key);
            /* a new regularizer holds the default */
            ck_assert_msg(rstat(g, k->key) == k->def, "%s: regularizer default %g (attached %d)",
                          k->name, rstat(g, k->key), attached);
            /* edges */
            if (k->flags & REGOPT_KEY_MIN_EXCLUSIVE) {
                expect_out_of_range(g, k, k->min);
                expect_accepted(g, k, nextafter(k->min, HUGE_VAL));
            } else {
                expect_accepted(g, k, k->min);
                expect_out_of_range(g, k,
                                    k->type == KI ? k->min - 1 : nextafter(k->min, -HUGE_VAL));
            }
            if (k->flags & REGOPT_KEY_MAX_EXCLUSIVE) {
                expect_out_of_range(g, k, k->max);
                expect_accepted(g, k, nextafter(k->max, -HUGE_VAL));
            } else {
                expect_accepted(g, k, k->max);
                expect_out_of_range(g, k,
                                    k->type == KI ? int_above(k->max) : nextafter(k->max, HUGE_VAL));
            }
            expect_out_of_range(g, k, NAN);
            expect_out_of_range(g, k, HUGE_VAL);
            expect_out_of_range(g, k, -HUGE_VAL);
            if (k->type == KI) {
                int64_t iv = -12345;
                expect_out_of_range(g, k, k->min + 0.5);
                ck_assert_int_eq(regopt_regularizer_set_int(g, k->key, (int64_t)k->max + 1),
                                 REGOPT_ERR_OUT_OF_RANGE);
                ck_assert_int_eq(regopt_regularizer_set_int(g, k->key, (int64_t)k->min - 1),
                                 REGOPT_ERR_OUT_OF_RANGE);
                RMUST(g, regopt_regularizer_set_int(g, k->key, (int64_t)k->min));
                RMUST(g, regopt_regularizer_get_int(g, k->key, &iv));
                ck_assert_int_eq(iv, (int64_t)k->min);
            }
            /* back to the default */
            expect_accepted(g, k, k->def);
            /* a key of one kind: not a key of the other kind, nor of the
               trainer (since 1.0) or the optimizer */
            ck_assert_int_eq(regopt_regularizer_set_double(other, k->key, k->def),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_regularizer_get_double(other, k->key, &v),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_trainer_set_double(r->t, k->key, k->def),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_optimizer_set_double(r->o, k->key, k->def),
                             REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_double_eq(rstat(g, k->key), k->def);
        }
    }
    sm_close(r);
}
END_TEST

Suite *suite_smart_options(void)
{
    Suite *s = suite_create("smart_options");
    TCase *tc = tcase_create("statistics");
    tcase_add_test(tc, stats_inf_ce);
    tcase_add_test(tc, stats_l1_mse);
    tcase_add_test(tc, stats_l2_ce);
    tcase_add_test(tc, stats_read_only);
    suite_add_tcase(s, tc);
    tc = tcase_create("options");
    tcase_add_test(tc, smart_needs_input_width_and_slots);
    tcase_add_test(tc, option_bounds_and_defaults);
    suite_add_tcase(s, tc);
    return s;
}
