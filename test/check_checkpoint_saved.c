/* check_checkpoint_saved.c — suite checkpoint: whatever a save writes, a load
 * accepts (huge gradients, non-finite weights, a teacher at FLT_MAX). */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
#include "checkpoint_rig.h"

/* ---- whatever a save writes, a load accepts ------------------------------
 * Steps with huge but finite gradients: Adam's v = g^2 overflows first, then
 * SGD's momentum buffer, then weights (and with them a Bregman teacher).
 * Each step either fails with REGOPT_ERR_NONFINITE_GRADIENT and changes
 * nothing -- a checkpoint saved after it is byte for byte the one saved
 * before, weights included -- or succeeds, and then its checkpoint loads
 * into the trainer itself and into a fresh one, which saves the same bytes.
 * The host: "w" (group 0) and "b" (group 1) whose backward adds scale times
 * a fixed pattern; outputs and loss are zero. */

#define HG_N 21

typedef struct hg_host {
    float w[HG_N], gw[HG_N], b[3], gb[3];
    float scale;
} hg_host;

static int hg_forward(const regopt_pass *p, void *user)
{
    size_t k;
    (void)user;
    for (k = 0; k < p->rows * p->output_width; k++)
        p->outputs[k] = 0.0f;
    return 0;
}

static int hg_backward(const regopt_pass *p, void *user)
{
    hg_host *h = user;
    size_t i;
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 0;
    for (i = 0; i < HG_N; i++)
        h->gw[i] += h->scale * (float)((int)(i % 5) - 2);
    for (i = 0; i < 3; i++)
        h->gb[i] += h->scale * 0.5f;
    return 0;
}

enum { HG_SGD, HG_NESTEROV, HG_PLAIN, HG_ADAM, HG_AMSGRAD, HG_ADAMW, HG_RADAM, HG_SGD_BREGMAN,
       HG_ADAM_BREGMAN, HG_N_CONFIGS };

typedef struct hg_rig {
    hg_host h;
    float target;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_batch batch;
} hg_rig;

static void hg_open(hg_rig *r, int config)
{
    static const regopt_optimizer_kind kind[HG_N_CONFIGS] = {
        REGOPT_SGD, REGOPT_SGD, REGOPT_SGD, REGOPT_ADAM, REGOPT_ADAM, REGOPT_ADAMW,
        REGOPT_RADAM, REGOPT_SGD, REGOPT_ADAM};
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < HG_N; i++)
        r->h.w[i] = 0.1f * (float)((int)(i % 7) - 3);
    r->h.scale = 1.0f;
    r->m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "w", r->h.w, r->h.gw, HG_N, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, 3, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(r->m, 1));
    MUST(regopt_model_set_callbacks(r->m, hg_forward, hg_backward, &r->h, NULL));
    r->o = regopt_optimizer_create(kind[config], NULL, NULL);
    ck_assert_ptr_nonnull(r->o);
    if (kind[config] == REGOPT_SGD) {
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.5));
        if (config != HG_PLAIN)
            MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
        if (config == HG_NESTEROV)
            MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_NESTEROV, 1));
    } else if (config == HG_AMSGRAD) {
        MUST(regopt_optimizer_set_int(r->o, REGOPT_OPT_AMSGRAD, 1));
    }
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE));
    if (config == HG_SGD_BREGMAN || config == HG_ADAM_BREGMAN)
        (void)tu_add(r->t, REGOPT_REG_BREGMAN);
    regopt_batch_init(&r->batch);
    r->batch.rows = 1;
    r->batch.targets = &r->target;
}

static void hg_close(hg_rig *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    tu_free_regs();
}

static unsigned char *hg_save(hg_rig *r, size_t *n)
{
    unsigned char *ck;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, ALL, n));
    ck = malloc(*n);
    ck_assert_ptr_nonnull(ck);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, ALL, ck, *n, NULL));
    return ck;
}

/* One step of the invariant; returns 1 if it went through. */
/* The message of hg_step's last refused step (the save after it clears the
 * trainer's own: a handle's message is about its last call). */
static char hg_msg[512];

static int hg_step(hg_rig *r, int config)
{
    size_t na, nb;
    unsigned char *a = hg_save(r, &na), *b;
    hg_host keep = r->h;
    regopt_status st = regopt_trainer_step(r->t, &r->batch, 1);
    if (st != REGOPT_OK) {
        ck_assert_msg(st == REGOPT_ERR_NONFINITE_GRADIENT, "%s: %s",
                      regopt_status_string(st), regopt_trainer_message(r->t));
        snprintf(hg_msg, sizeof hg_msg, "%s", regopt_trainer_message(r->t));
        b = hg_save(r, &nb);
        ck_assert_msg(na == nb && memcmp(a, b, na) == 0, "a failed step changed the state");
        ck_assert(memcmp(keep.w, r->h.w, sizeof keep.w) == 0);
        ck_assert(memcmp(keep.b, r->h.b, sizeof keep.b) == 0);
    } else {
        hg_rig fresh;
        unsigned char *c;
        size_t nc;
        b = hg_save(r, &nb);
        TMUST(r->t, regopt_trainer_load_buffer(r->t, ALL, b, nb));
        hg_open(&fresh, config);
        TMUST(fresh.t, regopt_trainer_load_buffer(fresh.t, ALL, b, nb));
        c = hg_save(&fresh, &nc);
        ck_assert(nc == nb && memcmp(b, c, nb) == 0);
        free(c);
        hg_close(&fresh);
    }
    free(a);
    free(b);
    return st == REGOPT_OK;
}

START_TEST(huge_gradients_save_load)
{
    static const float scales[] = {1.0f, 1e10f, 1e19f, 1e21f, 1e25f, 1e30f, 1.0f, 3e38f,
                                   3e38f, 3e38f, 3e38f, 1.0f, 1e38f, 1e38f, 1e38f,
                                   1e38f, -3e38f, -3e38f, -3e38f, 1.0f};
    hg_rig r;
    int i, ok = 0, failed = 0;
    hg_open(&r, _i);
    for (i = 0; i < (int)(sizeof scales / sizeof scales[0]); i++) {
        r.h.scale = scales[i];
        if (hg_step(&r, _i))
            ok++;
        else
            failed++;
    }
    /* the first and the sane steps go through; the huge ones overflow
       something in every configuration */
    ck_assert_msg(ok >= 4 && failed >= 1, "config %d: %d steps, %d refused", _i, ok, failed);
    hg_close(&r);
}
END_TEST

/* Weights that are already NaN: SGD without momentum keeps them (nothing
 * else takes them, and a checkpoint with them loads); with a Bregman
 * teacher, which would take them, the step is refused. */
START_TEST(nonfinite_weight_and_teacher)
{
    hg_rig r;
    hg_open(&r, _i ? HG_SGD_BREGMAN : HG_PLAIN);
    if (_i)
        MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_MOMENTUM, 0.0));
    ck_assert(hg_step(&r, _i ? HG_SGD_BREGMAN : HG_PLAIN)); /* the teacher holds weights */
    r.h.w[4] = NAN;
    if (!_i) {
        ck_assert(hg_step(&r, HG_PLAIN));
        ck_assert(isnan(r.h.w[4]));
    } else {
        ck_assert(!hg_step(&r, HG_SGD_BREGMAN));
        ck_assert_msg(strstr(hg_msg, "\"w\" holds a non-finite weight at "
                             "element 4, which the Bregman teacher") != NULL, "%s", hg_msg);
        r.h.w[4] = 0.0f;
        ck_assert(hg_step(&r, HG_SGD_BREGMAN));
    }
    hg_close(&r);
}
END_TEST

/* Weights at +-FLT_MAX: the update (SGD, a tiny step) and the Bregman EMA
 * of them stay finite (beta 0.99 and 0.3: fl(beta) above and below 1/2,
 * the two cases of the argument in bregman.c), and what is saved loads. */
START_TEST(teacher_at_flt_max)
{
    hg_rig r;
    size_t i;
    hg_open(&r, HG_SGD_BREGMAN);
    MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_MOMENTUM, 0.0));
    MUST(regopt_optimizer_set_double(r.o, REGOPT_OPT_LR, 1e-30));
    RMUST(tu_reg(r.t, REGOPT_REG_BREGMAN),
          regopt_regularizer_set_double(tu_reg(r.t, REGOPT_REG_BREGMAN), REGOPT_BREGMAN_BETA,
                                        _i ? 0.3 : 0.99));
    for (i = 0; i < HG_N; i++)
        r.h.w[i] = i % 2 ? FLT_MAX : -FLT_MAX;
    r.h.scale = 0.0f;
    for (i = 0; i < 3; i++)
        ck_assert(hg_step(&r, HG_SGD_BREGMAN));
    ck_assert(r.h.w[0] == -FLT_MAX && r.h.w[1] == FLT_MAX);
    hg_close(&r);
}
END_TEST

void checkpoint_saved_tests(TCase *tc)
{
    tcase_add_loop_test(tc, huge_gradients_save_load, 0, HG_N_CONFIGS);
    tcase_add_loop_test(tc, nonfinite_weight_and_teacher, 0, 2);
    tcase_add_loop_test(tc, teacher_at_flt_max, 0, 2);
}
