/* check_optim_nonfinite.c — suite optim: updates that would write a
 * non-finite value are refused before writing anything. */
#include "optim_rig.h"

/* ======================================================================== */
/* Updates that would write a non-finite value                             */
/* ======================================================================== */

/* A step whose update would write a non-finite weight or moment fails with
 * REGOPT_ERR_NONFINITE_GRADIENT before writing anything (regopt.h, "A
 * step"); one that stays finite, however close to FLT_MAX, goes through.
 * The host: one tensor "w" of GN elements (vector blocks and a scalar
 * tail), whose backward adds the gradient the test sets, and a zero loss. */

#define GN 37

typedef struct gh_host {
    float w[GN], g[GN];
    float add[GN]; /* what backward adds */
} gh_host;

static int gh_forward(const regopt_pass *p, void *user)
{
    size_t k;
    (void)user;
    for (k = 0; k < p->rows * p->output_width; k++)
        p->outputs[k] = 0.0f;
    return 0;
}

static int gh_backward(const regopt_pass *p, void *user)
{
    gh_host *h = user;
    size_t i;
    (void)p;
    for (i = 0; i < GN; i++)
        h->g[i] += h->add[i];
    return 0;
}

typedef struct gh_rig {
    gh_host h;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *trainer;
    regopt_batch batch;
} gh_rig;

static void gh_open(gh_rig *r, regopt_optimizer_kind kind, double lr)
{
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < GN; i++) {
        r->h.w[i] = 0.25f * (float)((int)(i % 5) - 2) + 0.125f;
        r->h.add[i] = 0.01f * (float)((int)(i % 7) - 3);
    }
    r->model = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(r->model);
    ck_assert_int_eq(regopt_model_add_param(r->model, "w", r->h.w, r->h.g, GN,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(r->model, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(r->model, gh_forward, gh_backward, &r->h,
                                                NULL), REGOPT_OK);
    r->opt = regopt_optimizer_create(kind, NULL, NULL);
    ck_assert_ptr_nonnull(r->opt);
    set_opt(r->opt, REGOPT_OPT_LR, lr);
    r->trainer = regopt_trainer_create(r->model, r->opt, NULL);
    ck_assert_ptr_nonnull(r->trainer);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->trainer, zero_loss, NULL, NULL),
                     REGOPT_OK);
    regopt_batch_init(&r->batch);
    r->batch.rows = 1;
}

static void gh_close(gh_rig *r)
{
    regopt_trainer_free(r->trainer);
    regopt_optimizer_free(r->opt);
    regopt_model_free(r->model);
}

/* The step fails with NONFINITE_GRADIENT, names the tensor and `what`, and
 * leaves the weights and the step count exactly as they were. */
static void gh_refused(gh_rig *r, const char *what)
{
    float before[GN];
    int64_t step = -1, after = -2;
    regopt_status st;
    memcpy(before, r->h.w, sizeof before);
    ck_assert_int_eq(regopt_trainer_get_int(r->trainer, REGOPT_STAT_STEP, &step), REGOPT_OK);
    st = regopt_trainer_step(r->trainer, &r->batch, 1);
    ck_assert_msg(st == REGOPT_ERR_NONFINITE_GRADIENT, "step: %s (%s)",
                  regopt_status_string(st), regopt_trainer_message(r->trainer));
    ck_assert_msg(strstr(regopt_trainer_message(r->trainer), "\"w\"") &&
                  strstr(regopt_trainer_message(r->trainer), what),
                  "message \"%s\" lacks \"%s\"", regopt_trainer_message(r->trainer), what);
    ck_assert(memcmp(before, r->h.w, sizeof before) == 0);
    ck_assert_int_eq(regopt_trainer_get_int(r->trainer, REGOPT_STAT_STEP, &after), REGOPT_OK);
    ck_assert_int_eq(after, step);
}

static void gh_ok(gh_rig *r)
{
    regopt_status st = regopt_trainer_step(r->trainer, &r->batch, 1);
    size_t i;
    ck_assert_msg(st == REGOPT_OK, "step: %s (%s)", regopt_status_string(st),
                  regopt_trainer_message(r->trainer));
    for (i = 0; i < GN; i++)
        ck_assert_msg(isfinite(r->h.w[i]), "w[%zu] = %g", i, (double)r->h.w[i]);
}

/* Adam's first step writes v = fl(fl((1-b2) g) g): the largest gradient
 * for which that is finite goes through (the exact check, not the quick
 * bound, decides), the next float up is refused. */
START_TEST(test_nonfinite_adam_second_moment_edge)
{
    const volatile float a2 = (float)(1.0 - 0.999);
    float g = (float)sqrt((double)FLT_MAX / a2), p;
    volatile float v;
    int k;
    /* the largest g with a finite v */
    for (k = 0; k < 64; k++) {
        p = a2 * g;
        v = p * g;
        if (isfinite(v))
            break;
        g = nextafterf(g, 0.0f);
    }
    ck_assert(k < 64 && g > 5e20f && g < 6e20f);
    for (k = 0; k < 64; k++) {
        float up = nextafterf(g, INFINITY);
        p = a2 * up;
        v = p * up;
        if (!isfinite(v))
            break;
        g = up;
    }
    ck_assert(k < 64);
    {
        gh_rig r;
        gh_open(&r, _i ? REGOPT_ADAMW : REGOPT_ADAM, 1e-3);
        r.h.add[GN - 2] = nextafterf(g, INFINITY); /* in the scalar tail */
        gh_refused(&r, "second moment non-finite at element 35");
        r.h.add[GN - 2] = -g;
        gh_ok(&r);
        gh_close(&r);
    }
}
END_TEST

/* Every rule refuses a gradient whose square overflows, and the step after
 * it, with a sane gradient, goes on from the untouched state. */
START_TEST(test_nonfinite_every_rule)
{
    static const regopt_optimizer_kind kinds[] = {REGOPT_ADAM, REGOPT_ADAM, REGOPT_ADAMW,
                                                  REGOPT_RADAM, REGOPT_RADAM};
    gh_rig r;
    int i;
    gh_open(&r, kinds[_i], 1e-3);
    if (_i == 1)
        set_opt(r.opt, REGOPT_OPT_AMSGRAD, 1.0);
    regopt_trainer_free(r.trainer); /* amsgrad is fixed when the trainer is made */
    r.trainer = regopt_trainer_create(r.model, r.opt, NULL);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r.trainer, zero_loss, NULL, NULL),
                     REGOPT_OK);
    /* RAdam: unrectified for its first steps (rho_t <= 5), rectified later */
    for (i = 0; i < (_i == 4 ? 8 : 2); i++)
        gh_ok(&r);
    r.h.add[3] = 1e30f;
    gh_refused(&r, "second moment non-finite at element 3");
    r.h.add[3] = 0.5f;
    gh_ok(&r);
    gh_close(&r);
}
END_TEST

/* SGD: a momentum buffer that would overflow, and weights that would. */
START_TEST(test_nonfinite_sgd)
{
    gh_rig r;
    int i;
    gh_open(&r, REGOPT_SGD, 1e-3);
    set_opt(r.opt, REGOPT_OPT_MOMENTUM, 0.9);
    if (_i)
        set_opt(r.opt, REGOPT_OPT_NESTEROV, 1.0);
    /* b = d on the first step, then 0.9 b + d: 1e38, 1.9e38, 2.71e38, inf;
       Nesterov's d + 0.9 b overflows one step earlier, in the weight */
    r.h.add[0] = 1e38f;
    for (i = 0; i < 3 - _i; i++)
        gh_ok(&r);
    gh_refused(&r, _i ? "the weight non-finite at element 0"
                      : "the momentum buffer non-finite at element 0");
    gh_close(&r);

    /* no momentum: w - lr g overflows from w = 3e38 */
    gh_open(&r, REGOPT_SGD, 1.0);
    r.h.w[20] = 3e38f;
    r.h.add[20] = -1e37f;
    gh_ok(&r);
    r.h.add[20] = -1e38f;
    gh_refused(&r, "weight non-finite at element 20");
    gh_close(&r);
}
END_TEST

/* A weight that is already NaN or infinite: SGD without momentum leaves it
 * so (no optimizer state would take it); any state would, so the step is
 * refused. */
START_TEST(test_nonfinite_weight_before)
{
    gh_rig r;
    gh_open(&r, REGOPT_SGD, 0.1);
    r.h.w[5] = NAN;
    r.h.w[6] = -INFINITY;
    ck_assert_int_eq(regopt_trainer_step(r.trainer, &r.batch, 1), REGOPT_OK);
    ck_assert(isnan(r.h.w[5]) && !isfinite(r.h.w[6]) && isfinite(r.h.w[7]));
    gh_close(&r);

    gh_open(&r, _i ? REGOPT_ADAMW : REGOPT_SGD, 0.1);
    if (!_i)
        set_opt(r.opt, REGOPT_OPT_MOMENTUM, 0.5);
    gh_ok(&r);
    r.h.w[5] = NAN;
    gh_refused(&r, "holds a non-finite weight at element 5");
    r.h.w[5] = 0.0f;
    gh_ok(&r);
    gh_close(&r);
}
END_TEST

/* On the trainer's threads the answer is the same: a tensor large enough to
 * be cut among threads, one offending element near its end. */
START_TEST(test_nonfinite_threads)
{
    enum { BIG = 300000 };
    float *w = malloc(BIG * sizeof *w), *g = malloc(BIG * sizeof *g);
    float *keep = malloc(BIG * sizeof *keep);
    gh_rig r;
    size_t i;
    int threads;
    ck_assert(w && g && keep);
    for (threads = 1; threads <= 2; threads++) {
        gh_open(&r, REGOPT_ADAM, 1e-3);
        regopt_trainer_free(r.trainer);
        regopt_model_free(r.model);
        r.model = regopt_model_create(NULL, NULL);
        for (i = 0; i < BIG; i++)
            w[i] = 0.001f * (float)(i % 1000);
        ck_assert_int_eq(regopt_model_add_param(r.model, "w", w, g, BIG, REGOPT_DTYPE_FLOAT32,
                                                0), REGOPT_OK);
        ck_assert_int_eq(regopt_model_add_param(r.model, "small", r.h.w, r.h.g, GN,
                                                REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
        ck_assert_int_eq(regopt_model_set_output_width(r.model, 1), REGOPT_OK);
        ck_assert_int_eq(regopt_model_set_callbacks(r.model, gh_forward, gh_backward, &r.h,
                                                    NULL), REGOPT_OK);
        r.trainer = regopt_trainer_create(r.model, r.opt, NULL);
        ck_assert_ptr_nonnull(r.trainer);
        ck_assert_int_eq(regopt_trainer_set_loss_callback(r.trainer, zero_loss, NULL, NULL),
                         REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_set_int(r.trainer, REGOPT_TRAINER_THREADS, threads),
                         REGOPT_OK);
        gh_ok(&r);
        w[BIG - 10] = NAN;
        memcpy(keep, w, BIG * sizeof *w);
        ck_assert_int_eq(regopt_trainer_step(r.trainer, &r.batch, 1),
                         REGOPT_ERR_NONFINITE_GRADIENT);
        ck_assert_msg(strstr(regopt_trainer_message(r.trainer),
                             "\"w\" holds a non-finite weight at element 299990") != NULL,
                      "%s", regopt_trainer_message(r.trainer));
        ck_assert(memcmp(keep, w, BIG * sizeof *w) == 0);
        gh_close(&r);
    }
    free(w);
    free(g);
    free(keep);
}
END_TEST

void optim_nonfinite_tcases(Suite *s)
{
    TCase *nf = tcase_create("nonfinite");
    tcase_add_loop_test(nf, test_nonfinite_adam_second_moment_edge, 0, 2);
    tcase_add_loop_test(nf, test_nonfinite_every_rule, 0, 5);
    tcase_add_loop_test(nf, test_nonfinite_sgd, 0, 2);
    tcase_add_loop_test(nf, test_nonfinite_weight_before, 0, 2);
    tcase_add_test(nf, test_nonfinite_threads);
    suite_add_tcase(s, nf);
}
