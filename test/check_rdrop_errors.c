/* check_rdrop_errors.c — R-Drop's errors, options, rollback and allocation:
 * slots or the doubled batch, option bounds and defaults, capability bits,
 * the rollback of a failed second pass, no allocation after the first step
 * (the rig: rdrop_rig.h). */
#include "tests.h"

#include "rdrop_rig.h"

/* ======================================================================== */
/* 8. Errors, options, rollback                                             */
/* ======================================================================== */

START_TEST(needs_two_slots_or_doubled)
{
    rig *r = rig_open(4, 1, 0, 0, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[1] = {3};
    regopt_status st;
    data_init(&d, 4, 1, rows);
    st = regopt_trainer_attach(r->t, r->rdrop);
    ck_assert_msg(st == REGOPT_ERR_STATE, "1 slot, no capability: %s",
                  regopt_status_string(st));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->rdrop));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    rstep(r, &d); /* still a plain trainer */
    ck_assert_int_eq(r->h.ncalls, 2);
    ck_assert(rstat(r->rdrop, REGOPT_STAT_RDROP_APPLIED) == 0.0);
    rig_close(r);
    r = rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL); /* 1 slot + doubled: fine */
    rstep(r, &d);
    ck_assert_int_eq(r->h.ncalls, 2);
    ck_assert_int_eq(r->h.violations, 0);
    ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), 1);
    st = regopt_trainer_attach(r->t, rig_new(r, REGOPT_REG_RDROP));
    ck_assert(st == REGOPT_ERR_STATE); /* already on: a second R-Drop */
    st = regopt_trainer_attach(r->t, r->rdrop);
    ck_assert(st == REGOPT_ERR_STATE); /* the same handle twice */
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    rig_close(r);
}
END_TEST

/* A 1-slot model with the doubled capability cannot run the two-call mode:
 * rdrop.doubled = 0 must be refused (REGOPT_ERR_STATE when set or at the
 * step) or fall back to the doubled pass; it must never turn into a pass in
 * slot 1, which the model does not have. */
START_TEST(doubled_off_on_one_slot_model)
{
    rig *r = rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[1] = {3};
    regopt_status st;
    float p0[RP];
    data_init(&d, 4, 1, rows);
    memcpy(p0, r->h.p, sizeof p0);
    st = regopt_regularizer_set_int(r->rdrop, REGOPT_RDROP_DOUBLED, 0);
    if (st == REGOPT_OK) {
        st = regopt_trainer_step(r->t, d.b, 1);
        ck_assert_msg(st == REGOPT_ERR_STATE || (st == REGOPT_OK && r->h.violations == 0),
                      "step with rdrop.doubled = 0 on a 1-slot model: %s (%s), host saw %d "
                      "contract violations (slot >= slots)",
                      regopt_status_string(st), regopt_trainer_message(r->t), r->h.violations);
        if (st != REGOPT_OK)
            ck_assert(memcmp(p0, r->h.p, sizeof p0) == 0);
    } else {
        ck_assert_msg(st == REGOPT_ERR_STATE, "%s: %s", regopt_status_string(st),
                      regopt_regularizer_message(r->rdrop));
    }
    ck_assert_int_eq(r->h.violations, 0);
    rig_close(r);

    /* 1.0: the option set before the attach; the attach (or the step) must
       refuse it or fall back, never call slot 1 */
    r = rig_open(4, 1, CAP, 0, REGOPT_SGD, NULL);
    memcpy(p0, r->h.p, sizeof p0);
    RMUST(r->rdrop, regopt_regularizer_set_int(r->rdrop, REGOPT_RDROP_DOUBLED, 0));
    st = regopt_trainer_attach(r->t, r->rdrop);
    if (st == REGOPT_OK) {
        st = regopt_trainer_step(r->t, d.b, 1);
        ck_assert_msg(st == REGOPT_ERR_STATE || (st == REGOPT_OK && r->h.violations == 0),
                      "step with rdrop.doubled = 0 set before the attach on a 1-slot model: "
                      "%s (%s), host saw %d contract violations (slot >= slots)",
                      regopt_status_string(st), regopt_trainer_message(r->t), r->h.violations);
        if (st != REGOPT_OK)
            ck_assert(memcmp(p0, r->h.p, sizeof p0) == 0);
    } else {
        ck_assert_msg(st == REGOPT_ERR_STATE, "attach: %s: %s", regopt_status_string(st),
                      regopt_trainer_message(r->t));
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r->rdrop));
    }
    ck_assert_int_eq(r->h.violations, 0);
    rig_close(r);
}
END_TEST

START_TEST(option_bounds_and_defaults)
{
    static const struct {
        regopt_key key;
        const char *name;
        double lo, hi, below, above, mid;
        int is_int;
    } o[] = {
        {REGOPT_RDROP_ALPHA, "rdrop.alpha", 0.0, 1e4, -1e-300, 10000.000000001, 0.3, 0},
        {REGOPT_RDROP_CE_WEIGHT, "rdrop.ce_weight", 0.0, 1e3, -1e-300, 1000.0000000001, 0.5, 0},
        {REGOPT_RDROP_KL_SUM, "rdrop.kl_sum", 0, 1, -1, 2, 1, 1},
        {REGOPT_RDROP_EVERY, "rdrop.every", 1, 2147483648.0, 0, 2147483649.0, 5, 1},
        {REGOPT_RDROP_DOUBLED, "rdrop.doubled", 0, 1, -1, 2, 0, 1},
    };
    static const double defaults[] = {1.0, 1.0, 0.0, 1.0, 1.0};
    rig *r = rig_open(4, 2, 0, 0, REGOPT_SGD, NULL);
    regopt_regularizer *g = r->rdrop, *sam = rig_new(r, REGOPT_REG_SAM);
    size_t i, b;
    for (i = 0; i < sizeof o / sizeof o[0]; i++) {
        const char *name = NULL;
        int type = 0;
        double mn, mx, def;
        uint32_t flags = 0;
        regopt_key kk;
        double bad[4];
        MUST(regopt_key_info(o[i].key, &name, &type, &mn, &mx, &def, &flags));
        ck_assert_str_eq(name, o[i].name);
        MUST(regopt_key_from_name(o[i].name, &kk));
        ck_assert_int_eq(kk, o[i].key);
        ck_assert_int_eq(type, o[i].is_int ? REGOPT_TYPE_INT : REGOPT_TYPE_DOUBLE);
        ck_assert(mn == o[i].lo && mx == o[i].hi && flags == 0);
        ck_assert_msg(def == defaults[i], "%s default %g", name, def);
        ck_assert(rstat(g, o[i].key) == def); /* before attaching R-Drop */
        if (i == 0)
            rig_attach(r, g);
        ck_assert(rstat(g, o[i].key) == def);
        rset(r, o[i].key, o[i].lo);
        ck_assert(rstat(g, o[i].key) == o[i].lo);
        rset(r, o[i].key, o[i].hi);
        ck_assert(rstat(g, o[i].key) == o[i].hi);
        rset(r, o[i].key, o[i].mid);
        bad[0] = o[i].below;
        bad[1] = o[i].above;
        bad[2] = NAN;
        bad[3] = INFINITY;
        for (b = 0; b < 4; b++) {
            regopt_status st = regopt_regularizer_set_double(g, o[i].key, bad[b]);
            ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %g: %s", name, bad[b],
                          regopt_status_string(st));
            ck_assert_msg(strstr(regopt_regularizer_message(g), name) != NULL,
                          "message \"%s\" does not name %s", regopt_regularizer_message(g),
                          name);
            ck_assert(rstat(g, o[i].key) == o[i].mid);
        }
        if (o[i].is_int) {
            ck_assert(regopt_regularizer_set_double(g, o[i].key, o[i].lo + 0.5) ==
                      REGOPT_ERR_OUT_OF_RANGE);
            ck_assert(regopt_regularizer_set_int(g, o[i].key, (int64_t)o[i].above) ==
                      REGOPT_ERR_OUT_OF_RANGE);
            RMUST(g, regopt_regularizer_set_int(g, o[i].key, (int64_t)o[i].lo));
            ck_assert(rstat_int(g, o[i].key) == (int64_t)o[i].lo);
        }
        /* since 1.0 not a trainer key, nor a key of another kind */
        ck_assert_int_eq(regopt_trainer_set_double(r->t, o[i].key, o[i].mid),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_regularizer_set_double(sam, o[i].key, o[i].mid),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert(rstat(g, o[i].key) == (o[i].is_int ? o[i].lo : o[i].mid));
    }
    rig_close(r);
}
END_TEST

START_TEST(unknown_capability_bits)
{
    regopt_model *m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert(regopt_model_set_capabilities(m, 0x4u) == REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert(regopt_model_set_capabilities(m, 0x80000000u | REGOPT_CAP_DOUBLED_BATCH) ==
              REGOPT_ERR_INVALID_ARGUMENT);
    MUST(regopt_model_set_capabilities(m, REGOPT_CAP_DOUBLED_BATCH));
    MUST(regopt_model_set_capabilities(m, 0));
    regopt_model_free(m);
}
END_TEST

/* The nth forward (or backward) of step 3 fails; the step is rolled back and
 * the run continues exactly like one that never failed. */
static void rollback_case(int backward, int nth, int doubled)
{
    rig *a = doubled ? rig_open(4, 1, CAP, 1, REGOPT_ADAM, NULL)
                     : rig_open(4, 2, 0, 1, REGOPT_ADAM, NULL);
    rig *b = doubled ? rig_open(4, 1, CAP, 1, REGOPT_ADAM, NULL)
                     : rig_open(4, 2, 0, 1, REGOPT_ADAM, NULL);
    rdata d;
    size_t rows[2] = {3, 2};
    rcfg c = {0.8, 1.0, 0.1, 0, 0};
    float p0[RP];
    regopt_status st;
    int s;
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    rig_cfg(a, &c);
    rig_cfg(b, &c);
    tset(a, REGOPT_TRAINER_SEED, 5);
    tset(b, REGOPT_TRAINER_SEED, 5);
    for (s = 0; s < 2; s++) {
        rstep(a, &d);
        rstep(b, &d);
    }
    memcpy(p0, a->h.p, sizeof p0);
    if (backward)
        a->h.fail_backward = a->h.backwards + nth;
    else
        a->h.fail_forward = a->h.forwards + nth;
    st = regopt_trainer_step(a->t, d.b, d.count);
    ck_assert_msg(st == (backward ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD), "got %s",
                  regopt_status_string(st));
    ck_assert(strstr(regopt_trainer_message(a->t), backward ? "backward" : "forward") != NULL);
    ck_assert_msg(memcmp(p0, a->h.p, sizeof p0) == 0, "parameters changed by a failed step");
    ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_STEP), 2);
    a->h.fail_backward = a->h.fail_forward = 0;
    for (s = 0; s < 3; s++) {
        rstep(a, &d);
        rstep(b, &d);
        ck_assert_msg(memcmp(a->h.p, b->h.p, sizeof a->h.p) == 0,
                      "after the rollback the run differs (step %d)", s);
        ck_assert(stat(a->t, REGOPT_STAT_OBJECTIVE) == stat(b->t, REGOPT_STAT_OBJECTIVE));
    }
    ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_STEP), 5);
    ck_assert_int_eq(a->h.violations + b->h.violations, 0);
    rig_close(a);
    rig_close(b);
}

START_TEST(rollback_second_forward)
{
    rollback_case(0, 2, 0); /* slot 1 of micro-batch 0 */
    rollback_case(0, 4, 0); /* slot 1 of micro-batch 1, after gradients accumulated */
    rollback_case(0, 2, 1); /* the doubled forward of micro-batch 1 */
}
END_TEST

START_TEST(rollback_second_backward)
{
    rollback_case(1, 2, 0);
    rollback_case(1, 4, 0);
    rollback_case(1, 2, 1);
}
END_TEST

/* ======================================================================== */
/* 9. Allocation                                                            */
/* ======================================================================== */

static void alloc_case(int doubled, int reserve)
{
    counting cn = {0, 0, 0};
    regopt_allocator al;
    rig *r;
    rdata d, one;
    size_t rows[2] = {3, 2}, rows1[1] = {2};
    long after;
    int s;
    al.size = sizeof al;
    al.alloc = count_alloc;
    al.free = count_release;
    al.user = &cn;
    r = doubled ? rig_open(4, 1, CAP, 0, REGOPT_ADAM, &al) : rig_open(4, 2, 0, 0, REGOPT_ADAM, &al);
    if (reserve == 1)
        TMUST(r->t, regopt_trainer_reserve(r->t, 3));
    rig_attach(r, r->rdrop);
    if (reserve == 2)
        TMUST(r->t, regopt_trainer_reserve(r->t, 3));
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    data_init(&one, 4, 1, rows1);
    after = cn.allocs;
    rstep(r, &d);
    if (reserve)
        ck_assert_msg(cn.allocs == after, "reserve %d: the first step allocated %ld times",
                      reserve, cn.allocs - after);
    after = cn.allocs;
    for (s = 0; s < 6; s++)
        rstep(r, s % 2 ? &one : &d);
    rset(r, REGOPT_RDROP_EVERY, 2);
    for (s = 0; s < 3; s++)
        rstep(r, &d);
    ck_assert_msg(cn.allocs == after, "doubled %d: R-Drop steps allocated %ld times", doubled,
                  cn.allocs - after);
    ck_assert_int_eq(r->h.violations, 0);
    rig_close(r);
    ck_assert_msg(cn.allocs == cn.frees, "allocs %ld, frees %ld", cn.allocs, cn.frees);
}

START_TEST(no_allocation_after_first_step)
{
    int doubled, reserve;
    for (doubled = 0; doubled < 2; doubled++)
        for (reserve = 0; reserve < 3; reserve++)
            alloc_case(doubled, reserve);
}
END_TEST

Suite *suite_rdrop_errors(void)
{
    Suite *s = suite_create("rdrop_errors");
    TCase *tc = tcase_create("errors");
    tcase_add_test(tc, needs_two_slots_or_doubled);
    tcase_add_test(tc, doubled_off_on_one_slot_model);
    tcase_add_test(tc, option_bounds_and_defaults);
    tcase_add_test(tc, unknown_capability_bits);
    tcase_add_test(tc, rollback_second_forward);
    tcase_add_test(tc, rollback_second_backward);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_after_first_step);
    suite_add_tcase(s, tc);
    return s;
}
