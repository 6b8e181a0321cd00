/* check_optim_host.c — suite optim_host: REGOPT_HOST, the host's own update.
 * Expected numbers come from the built-in path: a host callback that makes
 * plain SGD's update (w -= lr g) must give the built-in SGD's trajectory
 * bit for bit, SAM and clipping included (the gradient it receives is the
 * final one); the step numbers and learning rates it receives are the
 * schedule's (stat.lr of the built-in run). Bad input and a failing update
 * leave the library's state as before. */
#include "trainer_rig.h"

#include <setjmp.h>

typedef struct host_opt {
    run *r;
    int calls, fail_at, write_then_fail, freed;
    int nan_at; /* the call (1-based) whose update writes a NaN into w[1] */
    uint64_t steps[64];
    double lrs[64];
    regopt_status inside_set, inside_step; /* calls back into the library */
    int try_inside;
} host_opt;

/* plain SGD over the rig's tensors, in the registered buffers */
static int host_sgd(uint64_t step, double lr, void *user)
{
    host_opt *h = user;
    run *r = h->r;
    const float l = (float)lr;
    size_t i;
    if (h->calls < 64) {
        h->steps[h->calls] = step;
        h->lrs[h->calls] = lr;
    }
    h->calls++;
    if (h->try_inside) {
        h->inside_set = regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.5);
        h->inside_step = regopt_trainer_step(r->t, r->b, 1);
    }
    if (h->fail_at == h->calls && !h->write_then_fail)
        return 3;
    for (i = 0; i < TH_D * TH_K; i++)
        r->h.w[i] -= l * r->h.gw[i];
    for (i = 0; i < TH_K; i++)
        r->h.b[i] -= l * r->h.gb[i];
    if (h->nan_at == h->calls)
        r->h.w[1] = NAN;
    return h->fail_at == h->calls ? 4 : 0;
}

/* an update that never returns (a C++ exception, a longjmp) */
static jmp_buf jump;
static int host_jump(uint64_t step, double lr, void *user)
{
    (void)step;
    (void)lr;
    (void)user;
    longjmp(jump, 1);
}

static void host_free(void *user) { ((host_opt *)user)->freed++; }

static run *open_host(host_opt *h)
{
    run *r = run_open(REGOPT_HOST, NULL);
    memset(h, 0, sizeof *h);
    h->r = r;
    ck_assert_int_eq(regopt_optimizer_set_host_update(r->o, host_sgd, h, host_free), REGOPT_OK);
    return r;
}

static regopt_regularizer *attach_sam(run *r, double rho)
{
    regopt_regularizer *sam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, NULL);
    ck_assert_ptr_nonnull(sam);
    ck_assert_int_eq(regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, rho), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_attach(r->t, sam), REGOPT_OK);
    return sam;
}

/* Both runs with a linear schedule, warmup and clipping. */
static void schedule_and_clip(run *r)
{
    ck_assert_int_eq(regopt_optimizer_set_int(r->o, REGOPT_OPT_SCHEDULE,
                                              REGOPT_SCHEDULE_LINEAR), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_set_int(r->o, REGOPT_OPT_WARMUP_STEPS, 3), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_set_int(r->o, REGOPT_OPT_TOTAL_STEPS, 40), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_CLIP_NORM, 0.3), REGOPT_OK);
}

START_TEST(host_equals_builtin_sgd)
{
    /* _i: 0 no regularizer, 1 SAM */
    host_opt h;
    run *a = open_host(&h), *b = run_open(REGOPT_SGD, NULL);
    regopt_regularizer *sa = NULL, *sb = NULL;
    int k;
    ck_assert_int_eq(regopt_optimizer_set_double(b->o, REGOPT_OPT_MOMENTUM, 0.0), REGOPT_OK);
    schedule_and_clip(a);
    schedule_and_clip(b);
    if (_i) {
        sa = attach_sam(a, 0.2);
        sb = attach_sam(b, 0.2);
    }
    for (k = 0; k < 30; k++) {
        double lr_b, clip_b, clip_a;
        ck_assert_msg(regopt_trainer_step(a->t, &a->b[k % 4], 1) == REGOPT_OK, "%s",
                      regopt_trainer_message(a->t));
        must_step(b, k);
        ck_assert_int_eq(memcmp(a->h.w, b->h.w, sizeof a->h.w), 0);
        ck_assert_int_eq(memcmp(a->h.b, b->h.b, sizeof a->h.b), 0);
        /* what the host received: the step it makes and the built-in lr */
        ck_assert_uint_eq(h.steps[k], (uint64_t)k + 1);
        ck_assert_int_eq(regopt_trainer_get_double(b->t, REGOPT_STAT_LR, &lr_b), REGOPT_OK);
        ck_assert(h.lrs[k] == lr_b);
        ck_assert_int_eq(regopt_trainer_get_double(a->t, REGOPT_STAT_CLIP_SCALE, &clip_a), 0);
        ck_assert_int_eq(regopt_trainer_get_double(b->t, REGOPT_STAT_CLIP_SCALE, &clip_b), 0);
        ck_assert(clip_a == clip_b);
    }
    ck_assert(h.lrs[0] == 0.0); /* warmup: the first update uses lr 0 */
    ck_assert_int_eq(steps_of(a), 30);
    run_close(a);
    run_close(b);
    ck_assert_int_eq(h.freed, 1); /* the optimizer's free released the user pointer */
    regopt_regularizer_free(sa);
    regopt_regularizer_free(sb);
}
END_TEST

/* The update fails (before or after writing): REGOPT_ERR_HOST_UPDATE, the
 * library's state (step count, SAM's statistics, seeds) as before; a run
 * whose update failed before writing continues exactly as one that never
 * failed. */
START_TEST(host_update_fails)
{
    host_opt h, g;
    run *a = open_host(&h), *b = open_host(&g);
    regopt_regularizer *sa = attach_sam(a, 0.1), *sb = attach_sam(b, 0.1);
    snapshot before, after;
    double sharp0, sharp1;
    int k;
    for (k = 0; k < 3; k++) {
        must_step(a, k);
        must_step(b, k);
    }
    snap(a, &before);
    ck_assert_int_eq(regopt_regularizer_get_double(sa, REGOPT_STAT_SAM_SHARPNESS, &sharp0), 0);
    h.fail_at = h.calls + 1;
    ck_assert_int_eq(regopt_trainer_step(a->t, &a->b[3], 1), REGOPT_ERR_HOST_UPDATE);
    ck_assert_msg(strstr(regopt_trainer_message(a->t), "host's update callback returned 3"),
                  "%s", regopt_trainer_message(a->t));
    snap(a, &after);
    same_bits(&before, &after);
    ck_assert_int_eq(regopt_regularizer_get_double(sa, REGOPT_STAT_SAM_SHARPNESS, &sharp1), 0);
    ck_assert(sharp0 == sharp1);
    for (k = 3; k < 8; k++) {
        must_step(a, k);
        must_step(b, k);
    }
    ck_assert_int_eq(memcmp(a->h.w, b->h.w, sizeof a->h.w), 0);
    ck_assert_int_eq(memcmp(a->h.b, b->h.b, sizeof a->h.b), 0);
    ck_assert_int_eq(steps_of(a), steps_of(b));
    /* it wrote, then failed: the library says so and keeps its step count;
       trainer.check_host accepts what the host left */
    ck_assert_int_eq(regopt_trainer_set_int(a->t, REGOPT_TRAINER_CHECK_HOST, 1), REGOPT_OK);
    must_step(a, 0);
    h.fail_at = h.calls + 1;
    h.write_then_fail = 1;
    ck_assert_int_eq(regopt_trainer_step(a->t, &a->b[1], 1), REGOPT_ERR_HOST_UPDATE);
    ck_assert_int_eq(steps_of(a), 9);
    h.write_then_fail = 0;
    must_step(a, 1);
    ck_assert_int_eq(steps_of(a), 10);
    run_close(a);
    run_close(b);
    regopt_regularizer_free(sa);
    regopt_regularizer_free(sb);
}
END_TEST

/* A host update that writes a NaN weight while an average would take the
 * updated weights: REGOPT_ERR_HOST_UPDATE naming the tensor, element and
 * the average, which stays as it was (its count too); without an average
 * the library takes the host's weights as they are. _i: 0 EMA, 1 the
 * Bregman teacher. */
START_TEST(host_update_nonfinite_weight)
{
    host_opt h;
    run *r = open_host(&h);
    regopt_regularizer *avg =
        regopt_regularizer_create(_i ? REGOPT_REG_BREGMAN : REGOPT_REG_AVERAGE, NULL, NULL);
    float before[TH_D * TH_K + TH_K], after[TH_D * TH_K + TH_K];
    int64_t count0 = -1, count1 = -1;
    int k;
    ck_assert_ptr_nonnull(avg);
    if (!_i)
        ck_assert_int_eq(regopt_regularizer_set_double(avg, REGOPT_AVERAGE_DECAY, 0.5), 0);
    ck_assert_int_eq(regopt_trainer_attach(r->t, avg), REGOPT_OK);
    for (k = 0; k < 3; k++)
        must_step(r, k);
    ck_assert_int_eq(regopt_regularizer_swap_average(avg), REGOPT_OK);
    memcpy(before, r->h.w, sizeof r->h.w);
    memcpy(before + TH_D * TH_K, r->h.b, sizeof r->h.b);
    ck_assert_int_eq(regopt_regularizer_swap_average(avg), REGOPT_OK);
    if (!_i)
        ck_assert_int_eq(regopt_regularizer_get_int(avg, REGOPT_STAT_AVERAGE_COUNT, &count0), 0);
    h.nan_at = h.calls + 1;
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b[3], 1), REGOPT_ERR_HOST_UPDATE);
    ck_assert_msg(strstr(regopt_trainer_message(r->t), "non-finite weight to parameter \"W\" "
                                                       "at element 1 at step 4"),
                  "%s", regopt_trainer_message(r->t));
    ck_assert_msg(strstr(regopt_trainer_message(r->t), _i ? "Bregman" : "weight average"), "%s",
                  regopt_trainer_message(r->t));
    ck_assert_int_eq(steps_of(r), 3);
    r->h.w[1] = 0.25f; /* the host repairs its weight; the average is as before */
    ck_assert_int_eq(regopt_regularizer_swap_average(avg), REGOPT_OK);
    memcpy(after, r->h.w, sizeof r->h.w);
    memcpy(after + TH_D * TH_K, r->h.b, sizeof r->h.b);
    ck_assert_int_eq(regopt_regularizer_swap_average(avg), REGOPT_OK);
    ck_assert_int_eq(memcmp(before, after, sizeof before), 0);
    if (!_i) {
        ck_assert_int_eq(regopt_regularizer_get_int(avg, REGOPT_STAT_AVERAGE_COUNT, &count1), 0);
        ck_assert_int_eq(count0, count1);
    }
    must_step(r, 4);
    ck_assert_int_eq(steps_of(r), 4);
    /* no average: the host's NaN is the host's business */
    ck_assert_int_eq(regopt_trainer_detach(r->t, avg), REGOPT_OK);
    h.nan_at = h.calls + 1;
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b[0], 1), REGOPT_OK);
    ck_assert(isnan(r->h.w[1]));
    run_close(r);
    regopt_regularizer_free(avg);
}
END_TEST

START_TEST(host_bad_input)
{
    host_opt h;
    run *a = run_open(REGOPT_HOST, NULL), *s = run_open(REGOPT_SGD, NULL);
    regopt_regularizer *msam;
    double v;
    memset(&h, 0, sizeof h);
    h.r = a;
    /* no callback yet: the step refuses before any pass */
    ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 1), REGOPT_ERR_STATE);
    ck_assert(strstr(regopt_trainer_message(a->t), "regopt_optimizer_set_host_update"));
    ck_assert_int_eq(a->h.forwards, 0);
    ck_assert_int_eq(regopt_optimizer_set_host_update(NULL, host_sgd, &h, host_free),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_set_host_update(a->o, NULL, &h, host_free),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_set_host_update(s->o, host_sgd, &h, host_free),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert(strstr(regopt_optimizer_message(s->o), "REGOPT_HOST"));
    ck_assert_int_eq(h.freed, 0); /* a failed set never calls free_user */
    /* the keys of the host's optimizer are not the library's */
    ck_assert_int_eq(regopt_optimizer_set_double(a->o, REGOPT_OPT_WEIGHT_DECAY, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(a->o, REGOPT_OPT_MOMENTUM, 0.9),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_group(a->o, 0, REGOPT_GROUP_LR_SCALE, 2.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_group(a->o, 0, REGOPT_GROUP_LR_SCALE, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(a->o, REGOPT_OPT_CLIP_NORM, 1.0), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_kind(a->o), REGOPT_HOST);
    ck_assert_ptr_null(regopt_optimizer_create((regopt_optimizer_kind)6, NULL, NULL));
    /* replacing the callback releases the old user pointer */
    ck_assert_int_eq(regopt_optimizer_set_host_update(a->o, host_sgd, &h, host_free), 0);
    ck_assert_int_eq(regopt_optimizer_set_host_update(a->o, host_sgd, &h, host_free), 0);
    ck_assert_int_eq(h.freed, 1);
    /* Momentum-SAM reads the library's momentum, which HOST does not keep */
    msam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, NULL);
    ck_assert_int_eq(regopt_regularizer_set_int(msam, REGOPT_SAM_MOMENTUM, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_attach(a->t, msam), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 1), REGOPT_ERR_STATE);
    ck_assert(strstr(regopt_trainer_message(a->t), "sam.momentum"));
    ck_assert_int_eq(h.calls, 0);
    ck_assert_int_eq(steps_of(a), 0);
    ck_assert_int_eq(regopt_trainer_detach(a->t, msam), REGOPT_OK);
    /* loss scaling keeps the gradient in the library's own fp32 sums (the
       host's buffers are zeroed after each backward): refused, nothing run */
    ck_assert_int_eq(regopt_trainer_set_int(a->t, REGOPT_TRAINER_LOSS_SCALING,
                                            REGOPT_SCALING_DYNAMIC), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 1), REGOPT_ERR_UNSUPPORTED);
    ck_assert(strstr(regopt_trainer_message(a->t), "loss scaling"));
    ck_assert_int_eq(a->h.forwards, 0);
    ck_assert_int_eq(h.calls, 0);
    ck_assert_int_eq(regopt_trainer_set_int(a->t, REGOPT_TRAINER_LOSS_SCALING,
                                            REGOPT_SCALING_OFF), REGOPT_OK);
    /* from inside the update: the optimizer and the trainer refuse */
    h.try_inside = 1;
    must_step(a, 0);
    ck_assert_int_eq(h.inside_set, REGOPT_ERR_STATE);
    ck_assert_int_eq(h.inside_step, REGOPT_ERR_STATE);
    ck_assert_int_eq(steps_of(a), 1);
    ck_assert_str_eq(regopt_status_string(REGOPT_ERR_HOST_UPDATE),
                     "REGOPT_ERR_HOST_UPDATE: the host's update callback failed");
    run_close(a);
    run_close(s);
    regopt_regularizer_free(msam);
    ck_assert_int_eq(h.freed, 2);
}
END_TEST

static int zero_forward(const regopt_pass *p, void *user)
{
    (void)user;
    memset(p->outputs, 0, p->rows * p->output_width * sizeof(float));
    return 0;
}

static int no_backward(const regopt_pass *p, void *user)
{
    (void)p;
    (void)user;
    return 0;
}

/* Half tensors live in the library's fp32 masters and gradient sums: a
 * host's update would read its own zeroed buffers and be overwritten by the
 * next publish. Refused before any pass. */
START_TEST(host_refuses_half_tensors)
{
    uint16_t w[8] = {0}, g[8] = {0};
    float target[2] = {0.0f, 0.0f}, x = 0.0f;
    host_opt h;
    regopt_status st;
    regopt_batch b;
    regopt_model *m = regopt_model_create(NULL, &st);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_HOST, NULL, &st);
    regopt_trainer *t;
    int calls = 0;
    memset(&h, 0, sizeof h);
    MUST(regopt_model_add_param(m, "w", w, g, 8, REGOPT_DTYPE_BFLOAT16, 0));
    MUST(regopt_model_set_output_width(m, 2));
    MUST(regopt_model_set_callbacks(m, zero_forward, no_backward, &calls, NULL));
    MUST(regopt_optimizer_set_host_update(o, host_sgd, &h, NULL));
    t = regopt_trainer_create(m, o, &st);
    ck_assert_ptr_nonnull(t);
    MUST(regopt_trainer_set_int(t, REGOPT_TRAINER_LOSS, REGOPT_LOSS_MSE));
    regopt_batch_init(&b);
    b.data = &x;
    b.rows = 1;
    b.targets = target;
    ck_assert_int_eq(regopt_trainer_step(t, &b, 1), REGOPT_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(regopt_trainer_message(t), "bfloat16") != NULL, "%s",
                  regopt_trainer_message(t));
    ck_assert_int_eq(h.calls, 0);
    MUST(regopt_trainer_free(t));
    MUST(regopt_optimizer_free(o));
    MUST(regopt_model_free(m));
}
END_TEST

/* A checkpoint holds the library's part (no moments): it resumes a HOST run
 * exactly (plain SGD keeps no state of its own) and is refused by a trainer
 * with a built-in optimizer. */
#define ALL (REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS)

START_TEST(host_checkpoint)
{
    host_opt h, g;
    run *a = open_host(&h), *b = open_host(&g), *s = run_open(REGOPT_SGD, NULL);
    regopt_regularizer *sa = attach_sam(a, 0.1), *sb = attach_sam(b, 0.1);
    unsigned char buf[8192];
    size_t n = 0;
    int k;
    schedule_and_clip(a);
    schedule_and_clip(b);
    for (k = 0; k < 4; k++)
        must_step(a, k);
    ck_assert_int_eq(regopt_trainer_save_buffer(a->t, ALL, buf, sizeof buf, &n), REGOPT_OK);
    ck_assert_msg(regopt_trainer_load_buffer(b->t, ALL, buf, n) == REGOPT_OK, "%s",
                  regopt_trainer_message(b->t));
    ck_assert_int_eq(steps_of(b), 4);
    for (k = 4; k < 10; k++) {
        must_step(a, k);
        must_step(b, k);
    }
    ck_assert_int_eq(memcmp(a->h.w, b->h.w, sizeof a->h.w), 0);
    ck_assert_int_eq(memcmp(a->h.b, b->h.b, sizeof a->h.b), 0);
    ck_assert(g.lrs[g.calls - 1] == h.lrs[h.calls - 1]);
    ck_assert_int_eq(regopt_trainer_load_buffer(s->t, ALL, buf, n), REGOPT_ERR_MISMATCH);
    ck_assert_msg(strstr(regopt_trainer_message(s->t), "host"), "%s",
                  regopt_trainer_message(s->t));
    run_close(a);
    run_close(b);
    run_close(s);
    regopt_regularizer_free(sa);
    regopt_regularizer_free(sb);
}
END_TEST

/* regopt_trainer_recover after an update that did not return says whose
 * state is what, and the trainer trains again. */
START_TEST(host_update_abandoned)
{
    host_opt h;
    run *a = open_host(&h);
    volatile int jumped = 0;
    must_step(a, 0);
    ck_assert_int_eq(regopt_optimizer_set_host_update(a->o, host_jump, NULL, NULL), REGOPT_OK);
    if (setjmp(jump) == 0)
        ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 1), -1000); /* never returns */
    else
        jumped = 1;
    ck_assert(jumped);
    ck_assert_int_eq(regopt_trainer_step(a->t, a->b, 1), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_optimizer_set_double(a->o, REGOPT_OPT_LR, 0.1), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_recover(a->t), REGOPT_OK);
    ck_assert_msg(strstr(regopt_trainer_message(a->t), "host's update did not return"), "%s",
                  regopt_trainer_message(a->t));
    ck_assert_int_eq(steps_of(a), 1);
    ck_assert_int_eq(regopt_optimizer_set_host_update(a->o, host_sgd, &h, NULL), REGOPT_OK);
    must_step(a, 1);
    ck_assert_int_eq(steps_of(a), 2);
    run_close(a);
}
END_TEST

Suite *suite_optim_host(void)
{
    Suite *s = suite_create("optim_host");
    TCase *tc = tcase_create("host");
    tcase_add_loop_test(tc, host_equals_builtin_sgd, 0, 2);
    tcase_add_test(tc, host_update_fails);
    tcase_add_loop_test(tc, host_update_nonfinite_weight, 0, 2);
    tcase_add_test(tc, host_bad_input);
    tcase_add_test(tc, host_refuses_half_tensors);
    tcase_add_test(tc, host_checkpoint);
    tcase_add_test(tc, host_update_abandoned);
    suite_add_tcase(s, tc);
    return s;
}
