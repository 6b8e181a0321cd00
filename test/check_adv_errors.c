/* check_adv_errors.c — adversarial training's bad inputs (keys, facets that
 * do not combine, shapes), a failure or a NaN in every pass of every method
 * rolling the step back exactly, and composition: SAM, R-Drop, the Bregman
 * teacher, gradient accumulation, data parallel, threads and resuming from
 * a checkpoint. The methods' numbers: check_adv.c. */
#include "tests.h"

#include "adv_rig.h"

#define D3 3
#define K3 3

static void fill2(sm_set *s, unsigned salt) { sm_fill(s, 1, 2, 2, D3, K3, 1, 0, salt); }

/* The configurations every failure test runs. */
enum { C_FGM, C_PGD, C_FREELB, C_VAT, C_SYM, C_N };

static regopt_regularizer *configure(ad_run *a, int c)
{
    regopt_regularizer *g;
    switch (c) {
    case C_FGM: return ad_adv(a, REGOPT_ADV_FGM, 1.0, 0.5, 0.3, 1);
    case C_PGD: return ad_adv(a, REGOPT_ADV_PGD, 1.0, 0.5, 0.2, 3);
    case C_FREELB:
        g = ad_adv(a, REGOPT_ADV_FREELB, 1.0, 0.4, 0.1, 3);
        sm_rset(g, REGOPT_ADV_INIT_MAG, 0.2);
        return g;
    case C_VAT:
        g = ad_adv(a, REGOPT_ADV_VAT, 1.0, 1.0, 0.0, 2);
        sm_rset(g, REGOPT_ADV_INIT_MAG, 0.1);
        return g;
    default: /* PGD on the symmetric KL, every ascent pass training */
        g = ad_adv(a, REGOPT_ADV_PGD, 0.5, 0.5, 0.2, 2);
        sm_rset(g, REGOPT_ADV_OBJECTIVE, REGOPT_ADV_OBJ_SYM_KL);
        sm_rset(g, REGOPT_ADV_INIT, REGOPT_ADV_INIT_GAUSSIAN);
        sm_rset(g, REGOPT_ADV_INIT_MAG, 0.05);
        sm_rset(g, REGOPT_ADV_PARAM_GRAD, 1);
        return g;
    }
}

/* ======================================================================== */
/* Keys and facets                                                          */
/* ======================================================================== */

START_TEST(keys_refuse_bad_values)
{
    regopt_status st;
    regopt_regularizer *g = regopt_regularizer_create(REGOPT_REG_ADVERSARIAL, NULL, &st);
    static const struct { regopt_key key; double v; } bad[] = {
        {REGOPT_ADV_METHOD, 4},      {REGOPT_ADV_METHOD, -1},    {REGOPT_ADV_STEPS, 0},
        {REGOPT_ADV_STEPS, 101},     {REGOPT_ADV_EPSILON, -1e-3}, {REGOPT_ADV_ALPHA, 2e4},
        {REGOPT_ADV_INIT_MAG, -2},   {REGOPT_ADV_NORM, 2},       {REGOPT_ADV_SCOPE, 3},
        {REGOPT_ADV_SCOPE, -2},      {REGOPT_ADV_OBJECTIVE, 3},  {REGOPT_ADV_INIT, 4},
        {REGOPT_ADV_PARAM_GRAD, 2},  {REGOPT_ADV_CLEAN_PASS, -2}, {REGOPT_ADV_SAME_SEED, 2},
        {REGOPT_ADV_STEP, NAN},      {REGOPT_ADV_EPSILON, INFINITY}, {REGOPT_ADV_STEPS, 1.5},
    };
    size_t i;
    double v;
    int64_t iv;
    ck_assert_ptr_nonnull(g);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double before;
        RMUST(g, regopt_regularizer_get_double(g, bad[i].key, &before));
        ck_assert_int_eq(regopt_regularizer_set_double(g, bad[i].key, bad[i].v),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_msg(strstr(regopt_regularizer_message(g), "adv.") != NULL, "%s",
                      regopt_regularizer_message(g));
        RMUST(g, regopt_regularizer_get_double(g, bad[i].key, &v));
        ck_assert(v == before);
    }
    /* statistics are read-only; other handles' keys are unknown */
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_STAT_ADV_LOSS, 1),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_SMART_LAMBDA, 1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(g, 1513, 1), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_double(g, REGOPT_ADV_ALPHA, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_set_double(NULL, REGOPT_ADV_ALPHA, 1),
                     REGOPT_ERR_NULL_POINTER);
    /* defaults, by name too */
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_ADV_METHOD, &iv));
    ck_assert_int_eq(iv, REGOPT_ADV_FGM);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_ADV_OBJECTIVE, &iv));
    ck_assert_int_eq(iv, -1);
    {
        regopt_key k;
        MUST(regopt_key_from_name("adv.init_mag", &k));
        ck_assert_int_eq(k, REGOPT_ADV_INIT_MAG);
        MUST(regopt_key_from_name("smart.detach_target", &k));
        ck_assert_int_eq(k, REGOPT_SMART_DETACH_TARGET);
    }
    MUST(regopt_regularizer_free(g));
}
END_TEST

START_TEST(attach_needs_input_width)
{
    sm_run *r = sm_open(0, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, NULL);
    regopt_regularizer *g = sm_new(r, REGOPT_REG_ADVERSARIAL);
    ck_assert_int_eq(regopt_trainer_attach(r->t, g), REGOPT_ERR_STATE);
    ck_assert(strstr(regopt_trainer_message(r->t), "input") != NULL);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(g));
    sm_close(r);
}
END_TEST

/* A step that cannot run fails before any callback and changes nothing. */
static void refused(ad_run *a, const sm_set *s, regopt_status want, const char *words)
{
    float A[SK * SD], b[SK];
    regopt_status st;
    memcpy(A, a->s.h.A, sizeof A);
    memcpy(b, a->s.h.b, sizeof b);
    sm_reset(&a->s);
    st = regopt_trainer_step(a->s.t, s->b, s->count);
    ck_assert_msg(st == want, "step -> %s (%s)", regopt_status_string(st),
                  regopt_trainer_message(a->s.t));
    ck_assert_msg(strstr(regopt_trainer_message(a->s.t), words) != NULL, "message: %s",
                  regopt_trainer_message(a->s.t));
    ck_assert_int_eq(a->s.h.forwards, 0);
    ck_assert(memcmp(A, a->s.h.A, sizeof A) == 0 && memcmp(b, a->s.h.b, sizeof b) == 0);
}

START_TEST(facets_that_do_not_combine)
{
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g = ad_adv(a, REGOPT_ADV_FREELB, 1, 0, 0.1, 2);
    sm_set s;
    fill2(&s, 1);
    sm_rset(g, REGOPT_ADV_OBJECTIVE, REGOPT_ADV_OBJ_KL);
    refused(a, &s, REGOPT_ERR_STATE, "adv.clean_pass 0");
    sm_rset(g, REGOPT_ADV_OBJECTIVE, -1);
    sm_rset(g, REGOPT_ADV_PARAM_GRAD, 0);
    refused(a, &s, REGOPT_ERR_STATE, "adv.param_grad 1");
    sm_rset(g, REGOPT_ADV_PARAM_GRAD, -1);
    /* per example needs whole examples: 3 embedding rows for 2 rows */
    s.b[0].input_rows = 3;
    refused(a, &s, REGOPT_ERR_INVALID_ARGUMENT, "multiple of rows");
    sm_rset(g, REGOPT_ADV_SCOPE, REGOPT_ADV_SCOPE_BATCH); /* fine per batch */
    s.b[0].input_rows = 4;
    sm_step(&a->s, &s);
    sm_close(&a->s);
}
END_TEST

/* FGM/PGD's first direction and FreeLB's first pass need the first task
 * pass to be a pass of its own: R-Drop's doubled pass is refused, the
 * two-call mode works. */
START_TEST(doubled_rdrop_is_refused)
{
    int c;
    for (c = 0; c < 2; c++) {
        ad_run *a = ad_open_caps(D3, K3, 3, REGOPT_LOSS_SOFTMAX_CE, 0.1,
                                 REGOPT_CAP_DOUBLED_BATCH);
        regopt_regularizer *rd = sm_attach(&a->s, REGOPT_REG_RDROP);
        sm_set s;
        fill2(&s, 2);
        (void)configure(a, c == 0 ? C_FGM : C_FREELB);
        sm_reset(&a->s);
        ck_assert_int_eq(regopt_trainer_step(a->s.t, s.b, 1), REGOPT_ERR_STATE);
        ck_assert(strstr(regopt_trainer_message(a->s.t), "rdrop.doubled 0") != NULL);
        ck_assert_int_eq(a->s.h.forwards, 0);
        sm_rset(rd, REGOPT_RDROP_DOUBLED, 0);
        sm_step(&a->s, &s);
        sm_close(&a->s);
    }
}
END_TEST

/* ======================================================================== */
/* Rollback: a failure or a NaN in every pass                                */
/* ======================================================================== */

typedef struct snap {
    float A[SK * SD], b[SK];
    double loss, adv_loss;
} snap;

static void take(const ad_run *a, const regopt_regularizer *g, snap *s)
{
    memcpy(s->A, a->s.h.A, sizeof s->A);
    memcpy(s->b, a->s.h.b, sizeof s->b);
    s->loss = stat(a->s.t, REGOPT_STAT_OBJECTIVE);
    s->adv_loss = ad_stat(g, REGOPT_STAT_ADV_LOSS);
}

static int same(const snap *x, const snap *y)
{
    return memcmp(x->A, y->A, sizeof x->A) == 0 && memcmp(x->b, y->b, sizeof x->b) == 0 &&
           x->loss == y->loss && x->adv_loss == y->adv_loss;
}

enum { F_FORWARD, F_BACKWARD, F_NAN_OUT, F_NAN_DIN, F_KINDS };

/* For configuration c: one good step, then step 2 failed at call n of the
 * kind; the parameters and statistics are those of step 1, bit for bit, and
 * a retry gives exactly what a run that never failed gives. */
START_TEST(every_pass_rolls_back)
{
    int c = _i / F_KINDS, kind = _i % F_KINDS, n, calls, fails = 0;
    ad_run *ref = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *gr = configure(ref, c);
    sm_set s1, s2;
    snap want1, want2;
    fill2(&s1, 1);
    fill2(&s2, 2);
    sm_step(&ref->s, &s1);
    take(ref, gr, &want1);
    ref->nf = ref->nb = 0;
    sm_step(&ref->s, &s2);
    take(ref, gr, &want2);
    calls = kind == F_BACKWARD || kind == F_NAN_DIN ? ref->nb : ref->nf;
    ck_assert_int_ge(calls, 2);
    for (n = 1; n <= calls; n++) {
        ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
        regopt_regularizer *g = configure(a, c);
        regopt_status st, want = kind <= F_BACKWARD
                                     ? (kind == F_FORWARD ? REGOPT_ERR_FORWARD
                                                          : REGOPT_ERR_BACKWARD)
                                     : REGOPT_ERR_NONFINITE_LOSS;
        snap now;
        sm_step(&a->s, &s1);
        a->nf = a->nb = 0;
        if (kind == F_FORWARD)
            a->fail_f = n;
        else if (kind == F_BACKWARD)
            a->fail_b = n;
        else if (kind == F_NAN_OUT)
            a->nan_out_f = n;
        else
            a->nan_din_b = n;
        st = regopt_trainer_step(a->s.t, s2.b, 1);
        take(a, g, &now);
        if (st == REGOPT_OK) { /* a NaN d_input the pass did not ask for */
            ck_assert_int_eq(kind, F_NAN_DIN);
            ck_assert(same(&now, &want2));
        } else {
            fails++;
            ck_assert_msg(st == want, "config %d, kind %d, call %d: %s (%s)", c, kind, n,
                          regopt_status_string(st), regopt_trainer_message(a->s.t));
            ck_assert_msg(same(&now, &want1), "config %d, kind %d, call %d: state moved", c,
                          kind, n);
            a->fail_f = a->fail_b = a->nan_out_f = a->nan_din_b = 0;
            sm_step(&a->s, &s2);
            take(a, g, &now);
            ck_assert_msg(same(&now, &want2), "config %d, kind %d, call %d: retry differs", c,
                          kind, n);
        }
        sm_close(&a->s);
    }
    /* every call fails the step, but for backwards that write no d_input */
    if (kind != F_NAN_DIN)
        ck_assert_int_eq(fails, calls);
    else
        ck_assert_int_ge(fails, 1);
    sm_close(&ref->s);
}
END_TEST

/* ======================================================================== */
/* Composition                                                              */
/* ======================================================================== */

/* SAM evaluates the adversarial objective at w and at w + eps: the passes
 * twice, the second time flagged PERTURBED_WEIGHTS; the statistics are
 * those at w. */
START_TEST(with_sam)
{
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *b = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    regopt_regularizer *g = configure(a, C_FGM), *gb = configure(b, C_FGM);
    sm_set s;
    fill2(&s, 3);
    sm_sam(&a->s);
    sm_step(&a->s, &s);
    sm_step(&b->s, &s);
    ck_assert_int_eq(a->s.h.forwards, 4);
    ck_assert_int_eq(a->s.h.backwards, 4);
    ck_assert_ptr_nonnull(sm_find(&a->s.h, 0, 1, 0, REGOPT_PASS_PERTURBED_WEIGHTS, 0, 0));
    ck_assert(ad_stat(g, REGOPT_STAT_ADV_LOSS) == ad_stat(gb, REGOPT_STAT_ADV_LOSS));
    ck_assert(isfinite(a->s.h.A[0]) && memcmp(a->s.h.A, b->s.h.A, sizeof a->s.h.A) != 0);
    sm_close(&a->s);
    sm_close(&b->s);
}
END_TEST

/* R-Drop (two calls), the Bregman teacher and SMART with each method: slots
 * in the fixed order (R-Drop 1, SMART 2, adversarial 3), every pass count
 * as documented, finite results. */
START_TEST(with_rdrop_bregman_smart)
{
    int c = _i;
    ad_run *a = ad_open(D3, K3, 4, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set s;
    regopt_regularizer *sm;
    int k = c == C_PGD ? 3 : c == C_FREELB ? 3 : c == C_VAT ? 2 : c == C_SYM ? 2 : 1;
    int adv_f = c == C_FGM ? 1 : c == C_PGD ? k : c == C_FREELB ? k - 1 : c == C_VAT ? k + 1 : k;
    fill2(&s, 4);
    (void)sm_attach(&a->s, REGOPT_REG_RDROP);
    sm_bregman(&a->s, 0.5, 0.9);
    sm = sm_attach(&a->s, REGOPT_REG_SMART);
    sm_rset(sm, REGOPT_SMART_SIGMA, 1e-3);
    (void)configure(a, c);
    sm_step(&a->s, &s);
    /* teacher 1, task 2, SMART 1 + 1, adversarial adv_f */
    ck_assert_int_eq(a->s.h.forwards, 1 + 2 + 2 + adv_f);
    ck_assert_ptr_nonnull(sm_find(&a->s.h, 0, 3, 0, 0, 0, 0));
    ck_assert_ptr_null(sm_find(&a->s.h, 0, 4, 0, 0, 0, 0));
    ck_assert(isfinite(stat(a->s.t, REGOPT_STAT_OBJECTIVE)));
    sm_close(&a->s);
}
END_TEST

/* Two micro-batches accumulate what one batch of both gives (per example
 * norms; the same rows), and a data-parallel run with one replica matches a
 * run without the all-reduce. */
static int identity_allreduce(float *buf, size_t n, void *user)
{
    (void)buf;
    (void)n;
    (void)user;
    return 0;
}

START_TEST(accumulation_and_data_parallel)
{
    int c = _i;
    ad_run *one = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *two = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *dp = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set whole, halves;
    size_t i, j, m;
    if (c == C_VAT || c == C_FREELB || c == C_SYM) /* random starts differ by micro-batch */
        c = C_PGD;
    (void)configure(one, c);
    (void)configure(two, c);
    (void)configure(dp, c);
    TMUST(dp->s.t, regopt_trainer_set_allreduce(dp->s.t, identity_allreduce, NULL, NULL));
    sm_fill(&halves, 2, 2, 2, D3, K3, 1, 0, 5);
    sm_fill(&whole, 1, 4, 2, D3, K3, 1, 0, 5);
    for (m = 0; m < 2; m++) /* whole = the two halves, in order */
        for (i = 0; i < 2; i++) {
            whole.y[0][m * 2 + i] = halves.y[m][i];
            whole.wt[0][m * 2 + i] = halves.wt[m][i];
            for (j = 0; j < 2 * D3; j++)
                whole.e[0][(m * 2 + i) * 2 * D3 + j] = halves.e[m][i * 2 * D3 + j];
        }
    sm_step(&one->s, &whole);
    sm_step(&two->s, &halves);
    sm_step(&dp->s, &whole);
    for (i = 0; i < K3 * D3; i++) {
        sm_near(two->s.h.A[i], one->s.h.A[i], 1e-6, 1.0, "accumulated A", (int)i);
        sm_near(dp->s.h.A[i], one->s.h.A[i], 1e-6, 1.0, "data-parallel A", (int)i);
    }
    sm_close(&one->s);
    sm_close(&two->s);
    sm_close(&dp->s);
}
END_TEST

START_TEST(threads_give_the_same_bits)
{
    int c = _i;
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *b = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    sm_set s;
    int step;
    (void)configure(a, c);
    (void)configure(b, c);
    TMUST(b->s.t, regopt_trainer_set_int(b->s.t, REGOPT_TRAINER_THREADS, 3));
    for (step = 0; step < 3; step++) {
        fill2(&s, (unsigned)step);
        sm_step(&a->s, &s);
        sm_step(&b->s, &s);
    }
    ck_assert(memcmp(a->s.h.A, b->s.h.A, sizeof a->s.h.A) == 0);
    ck_assert(memcmp(a->s.h.b, b->s.h.b, sizeof a->s.h.b) == 0);
    sm_close(&a->s);
    sm_close(&b->s);
}
END_TEST

/* Two steps, save, two more; a new trainer loading the save makes the same
 * two steps, bit for bit (the draws depend on the step count only). */
START_TEST(resume_from_checkpoint)
{
    int c = _i, step;
    ad_run *a = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    ad_run *b = ad_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1);
    static unsigned char buf[1 << 16];
    size_t size = 0;
    sm_set s;
    regopt_regularizer *gb;
    (void)configure(a, c);
    gb = sm_attach(&b->s, REGOPT_REG_ADVERSARIAL); /* options come from the checkpoint */
    for (step = 0; step < 2; step++) {
        fill2(&s, (unsigned)step);
        sm_step(&a->s, &s);
    }
    TMUST(a->s.t, regopt_trainer_save_buffer(a->s.t, REGOPT_CHECKPOINT_PARAMS |
                                             REGOPT_CHECKPOINT_OPTIONS, buf, sizeof buf, &size));
    TMUST(b->s.t, regopt_trainer_load_buffer(b->s.t, REGOPT_CHECKPOINT_PARAMS |
                                             REGOPT_CHECKPOINT_OPTIONS, buf, size));
    ck_assert(ad_stat(gb, REGOPT_STAT_ADV_LOSS) ==
              ad_stat(regopt_trainer_regularizer_at(a->s.t, 0), REGOPT_STAT_ADV_LOSS));
    for (step = 2; step < 4; step++) {
        fill2(&s, (unsigned)step);
        sm_step(&a->s, &s);
        sm_step(&b->s, &s);
    }
    ck_assert(memcmp(a->s.h.A, b->s.h.A, sizeof a->s.h.A) == 0);
    ck_assert(memcmp(a->s.h.b, b->s.h.b, sizeof a->s.h.b) == 0);
    sm_close(&a->s);
    sm_close(&b->s);
}
END_TEST

/* Buffers come at attach and when a step sees more rows than before: once
 * the batch size has been seen, no step allocates (every method). */
START_TEST(no_allocation_after_the_first_step)
{
    int c = _i, step;
    counting cnt = {0, 0, 0};
    regopt_allocator al = COUNTING_ALLOCATOR(&cnt);
    sm_run *r = sm_open(D3, K3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.1, NULL, &al);
    regopt_regularizer *g = sm_attach(r, REGOPT_REG_ADVERSARIAL);
    sm_set s;
    long before;
    sm_rset(g, REGOPT_ADV_METHOD, c);
    sm_rset(g, REGOPT_ADV_STEPS, 2);
    sm_rset(g, REGOPT_ADV_INIT_MAG, 0.1);
    fill2(&s, 1);
    sm_step(r, &s);
    before = cnt.allocs;
    for (step = 0; step < 3; step++) {
        fill2(&s, (unsigned)step + 2);
        sm_step(r, &s);
    }
    ck_assert_int_eq(cnt.allocs, before);
    sm_close(r);
    ck_assert_int_eq(cnt.allocs, cnt.frees);
}
END_TEST

Suite *suite_adv_errors(void)
{
    Suite *s = suite_create("adv_errors");
    TCase *tc = tcase_create("inputs");
    TCase *rb = tcase_create("rollback");
    TCase *co = tcase_create("composition");
    tcase_add_test(tc, keys_refuse_bad_values);
    tcase_add_test(tc, attach_needs_input_width);
    tcase_add_test(tc, facets_that_do_not_combine);
    tcase_add_test(tc, doubled_rdrop_is_refused);
    tcase_add_loop_test(rb, every_pass_rolls_back, 0, C_N * F_KINDS);
    tcase_set_timeout(rb, 60);
    tcase_add_test(co, with_sam);
    tcase_add_loop_test(co, with_rdrop_bregman_smart, 0, C_N);
    tcase_add_loop_test(co, accumulation_and_data_parallel, 0, C_N);
    tcase_add_loop_test(co, threads_give_the_same_bits, 0, C_N);
    tcase_add_loop_test(co, resume_from_checkpoint, 0, C_N);
    tcase_add_loop_test(co, no_allocation_after_the_first_step, 0, 4);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, rb);
    suite_add_tcase(s, co);
    return s;
}
