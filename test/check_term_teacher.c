/* check_term_teacher.c — a user term's teacher pass (REGOPT_TERM_PASS_TEACHER):
 * outputs[p] are the Bregman regularizer's EMA-teacher outputs. Checked by
 * writing SMART's Bregman proximal term (docs/methods.md, Bregman: the
 * symmetric KL of student and detached teacher, KL(P||Q) + KL(Q||P) per
 * row) as a user term over a Bregman regularizer with mu = 0, against the
 * built-in one with mu = 1: the same trajectory. */
#include "tests.h"
#include "test_host.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

#define NB 8

typedef struct trig {
    th_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *bregman, *term;
} trig;

static float tx[NB * TH_D];
static int32_t ty[NB];
static th_batch thb;
static regopt_batch tb;

/* softmax of k logits into p (double), returning nothing */
static void softmax(const float *z, size_t k, double *p)
{
    double m = z[0], s = 0.0;
    size_t j;
    for (j = 1; j < k; j++)
        m = z[j] > m ? z[j] : m;
    for (j = 0; j < k; j++)
        s += (p[j] = exp((double)z[j] - m));
    for (j = 0; j < k; j++)
        p[j] /= s;
}

/* value = inv_weight * sum_i w_i (KL(P_i||Q_i) + KL(Q_i||P_i)), P from the
 * clean outputs, Q from the teacher's (detached): d/dz_i = inv_weight w_i
 * (P (r - KL(P||Q)) + P - Q), r = log P - log Q. Written here from the
 * definition, in double. */
static int bregman_as_term(const regopt_term_view *v, double *value, void *user)
{
    const float *z = v->outputs[0], *q = v->outputs[1];
    size_t i, j, k = v->output_width;
    double sum = 0.0;
    (void)user;
    ck_assert_ptr_null(v->d_outputs[1]); /* no gradient into the teacher */
    for (i = 0; i < v->rows; i++) {
        double P[TH_K], Q[TH_K], kpq = 0.0, kqp = 0.0;
        double w = v->batch->weights ? v->batch->weights[i] : 1.0;
        if (v->batch->mask && !v->batch->mask[i])
            continue;
        softmax(z + i * k, k, P);
        softmax(q + i * k, k, Q);
        for (j = 0; j < k; j++) {
            kpq += P[j] * (log(P[j]) - log(Q[j]));
            kqp += Q[j] * (log(Q[j]) - log(P[j]));
        }
        sum += w * (kpq + kqp);
        for (j = 0; j < k; j++) {
            double r = log(P[j]) - log(Q[j]);
            v->d_outputs[0][i * k + j] =
                (float)(v->inv_weight * w * (P[j] * (r - kpq) + P[j] - Q[j]));
        }
    }
    *value = v->inv_weight * sum;
    return 0;
}

static regopt_regularizer *teacher_term(uint32_t flags)
{
    regopt_term_ops ops;
    regopt_status st;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "bregman_again";
    ops.passes = 1;
    ops.pass_flags[0] = flags;
    ops.value = bregman_as_term;
    return regopt_regularizer_create_term(&ops, NULL, NULL, NULL, &st);
}

/* mu < 0: no Bregman; with_term: the user term too. */
static void trig_open(trig *r, double mu, int with_term)
{
    regopt_status st;
    memset(r, 0, sizeof *r);
    th_init(&r->h);
    r->m = th_model(&r->h);
    MUST(regopt_model_set_slots(r->m, 4));
    r->o = regopt_optimizer_create(REGOPT_ADAM, NULL, &st);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.05));
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_ptr_nonnull(r->t);
    if (mu >= 0.0) {
        r->bregman = tu_add(r->t, REGOPT_REG_BREGMAN);
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_MU, mu));
        RMUST(r->bregman, regopt_regularizer_set_double(r->bregman, REGOPT_BREGMAN_BETA, 0.7));
    }
    if (with_term) {
        r->term = teacher_term(REGOPT_TERM_PASS_TEACHER);
        ck_assert_ptr_nonnull(r->term);
        TMUST(r->t, regopt_trainer_attach(r->t, r->term));
    }
    th_data(tx, ty, NB, 0);
    th_batch_of(&tb, &thb, tx, ty, NB);
}

static void trig_close(trig *r)
{
    regopt_trainer_free(r->t);
    if (r->term)
        MUST(regopt_regularizer_free(r->term));
    tu_free_regs();
    regopt_model_free(r->m);
    regopt_optimizer_free(r->o);
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double d = 0.0, m = 1e-30;
    size_t i;
    for (i = 0; i < n; i++) {
        d = fabs((double)a[i] - b[i]) > d ? fabs((double)a[i] - b[i]) : d;
        m = fabs((double)b[i]) > m ? fabs((double)b[i]) : m;
    }
    return d / m;
}

START_TEST(term_reads_the_teacher)
{
    trig builtin, user, plain;
    int s;
    trig_open(&builtin, 1.0, 0);
    trig_open(&user, 0.0, 1);
    trig_open(&plain, 0.0, 0);
    for (s = 0; s < 40; s++) {
        TMUST(builtin.t, regopt_trainer_step(builtin.t, &tb, 1));
        TMUST(user.t, regopt_trainer_step(user.t, &tb, 1));
        TMUST(plain.t, regopt_trainer_step(plain.t, &tb, 1));
        if (s == 1) /* the term's value is the built-in's D (before mu) */
            near(rstat(user.term, REGOPT_STAT_TERM_VALUE),
                 rstat(builtin.bregman, REGOPT_STAT_BREGMAN_D), 1e-6, 1e-6, "D at step 2");
    }
    /* the term is the definition in double, the built-in its float-coefficient
       form: 40 Adam steps at lr 0.05 leave 1.4e-7 (W) and 1.4e-6 (b) */
    ck_assert_msg(max_rel(user.h.w, builtin.h.w, TH_D * TH_K) <= 1e-5, "W differs by %g",
                  max_rel(user.h.w, builtin.h.w, TH_D * TH_K));
    ck_assert_msg(max_rel(user.h.b, builtin.h.b, TH_K) <= 1e-5, "b differs by %g",
                  max_rel(user.h.b, builtin.h.b, TH_K));
    /* and the term is not idle: without it the run is elsewhere */
    ck_assert_msg(max_rel(plain.h.w, builtin.h.w, TH_D * TH_K) > 1e-3, "the term did nothing");
    trig_close(&builtin);
    trig_close(&user);
    trig_close(&plain);
}
END_TEST

START_TEST(teacher_needs_bregman)
{
    trig r;
    float w[TH_D * TH_K];
    trig_open(&r, -1.0, 1);
    memcpy(w, r.h.w, sizeof w);
    ck_assert_int_eq(regopt_trainer_step(r.t, &tb, 1), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "teacher pass"));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "Bregman"));
    ck_assert_mem_eq(r.h.w, w, sizeof w);
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 0);
    /* attaching one makes the same trainer work */
    r.bregman = tu_add(r.t, REGOPT_REG_BREGMAN);
    TMUST(r.t, regopt_trainer_step(r.t, &tb, 1));
    trig_close(&r);
}
END_TEST

START_TEST(teacher_takes_no_other_flag)
{
    uint32_t other[3] = {REGOPT_TERM_PASS_FRESH_SEED, REGOPT_TERM_PASS_EVAL,
                         REGOPT_TERM_PASS_NO_GRAD};
    int i;
    for (i = 0; i < 3; i++) {
        ck_assert_ptr_null(teacher_term(REGOPT_TERM_PASS_TEACHER | other[i]));
        ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "teacher pass"));
    }
}
END_TEST

Suite *suite_term_teacher(void)
{
    Suite *s = suite_create("term_teacher");
    TCase *tc = tcase_create("teacher");
    tcase_add_test(tc, term_reads_the_teacher);
    tcase_add_test(tc, teacher_needs_bregman);
    tcase_add_test(tc, teacher_takes_no_other_flag);
    suite_add_tcase(s, tc);
    return s;
}
