/* check_checkpoint_options.c — suite checkpoint: the options a load applies (and
 * puts back when one is refused), a fresh checkpoint into a trained
 * trainer, and the mismatches between checkpoint and trainer refused. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink, lstat */
#include "checkpoint_rig.h"

/* An option refused after others were applied: those are put back. */
static int ck_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
                   float *row_loss, float *dz, void *user)
{
    size_t i;
    (void)b, (void)z, (void)user;
    for (i = 0; i < rows; i++)
        row_loss[i] = 0.0f;
    for (i = 0; i < rows * width; i++)
        dz[i] = 0.0f;
    return 0;
}

START_TEST(options_rollback)
{
    rig a, b;
    unsigned char *ck;
    size_t n;
    double lr, wd;
    int64_t schedule;
    rig_make(&a, C_ADAMW, 1, 1);
    TMUST(a.t, regopt_trainer_set_loss_callback(a.t, ck_loss, NULL, NULL));
    ck = rig_save(&a, ALL, &n);
    rig_free(&a);
    rig_make(&b, C_ADAMW, 1, 0); /* defaults, and no loss callback */
    ck_assert_int_eq(regopt_trainer_load_buffer(b.t, ALL, ck, n), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b.t), "callback"));
    MUST(regopt_optimizer_get_double(b.o, REGOPT_OPT_LR, &lr));
    MUST(regopt_optimizer_get_int(b.o, REGOPT_OPT_SCHEDULE, &schedule));
    MUST(regopt_optimizer_get_group(b.o, 1, REGOPT_GROUP_WEIGHT_DECAY, &wd));
    ck_assert(lr == 1e-3 && schedule == REGOPT_SCHEDULE_CONSTANT && wd == -1.0);
    /* with the callback set, the same checkpoint loads */
    TMUST(b.t, regopt_trainer_set_loss_callback(b.t, ck_loss, NULL, NULL));
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, ck, n));
    MUST(regopt_optimizer_get_double(b.o, REGOPT_OPT_LR, &lr));
    ck_assert(lr == 0.05);
    rig_free(&b);
    free(ck);
}
END_TEST

START_TEST(options_group_weight_decay)
{
    victim v;
    section s[16];
    size_t n, size;
    unsigned char *b;
    victim_make(&v, ALL);
    n = split(v.ck, s);
    /* inside the key's [-1, 1e3], but only -1 is special */
    forge_option(s, n, REGOPT_GROUP_WEIGHT_DECAY, 2, -0.5);
    b = join(v.ck, s, n, FORMAT, &size);
    expect(&v, b, size, REGOPT_ERR_OUT_OF_RANGE, "group.weight_decay of group 2", "wd -0.5");
    free(b);
    victim_free(&v);
}
END_TEST

/* A step-0 checkpoint loaded into a trained trainer resets everything:
 * momentum no longer primed, teacher no longer holding weights. */
START_TEST(load_fresh_into_trained)
{
    static const int configs[2] = {C_SGD, C_SMART};
    int config = configs[_i];
    rig a, b;
    unsigned char *fresh, *now;
    size_t nf, nn;
    rig_make(&a, config, 1, 1);
    fresh = rig_save(&a, ALL, &nf);
    rig_free(&a);
    rig_make(&b, config, 1, 1);
    rig_step(&b, 0);
    rig_step(&b, 1);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, fresh, nf));
    now = rig_save(&b, ALL, &nn);
    same_bytes(fresh, nf, now, nn, config_name[config]);
    free(fresh);
    free(now);
    rig_free(&b);
}
END_TEST

START_TEST(amsgrad_mismatch)
{
    victim v;
    rig r;
    victim_make(&v, ALL);
    memset(&r, 0, sizeof r);
    r.m = ck_model(&r.h, "b", 1, NULL);
    r.o = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    MUST(regopt_optimizer_set_int(r.o, REGOPT_OPT_AMSGRAD, 1));
    r.t = regopt_trainer_create(r.m, r.o, NULL);
    ck_assert_ptr_nonnull(r.t);
    rig_attach(&r, C_SMART);
    ck_assert_int_eq(regopt_trainer_load_buffer(r.t, ALL, v.ck, v.n), REGOPT_ERR_MISMATCH);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "amsgrad"));
    rig_free(&r);
    victim_free(&v);
}
END_TEST

/* Saving reads every option without leaving a failure in any message. */
START_TEST(save_leaves_messages_alone)
{
    victim v;
    size_t n;
    unsigned char *b;
    victim_make(&v, ALL);
    ck_assert_str_eq(regopt_optimizer_message(v.r.o), "");
    b = rig_save(&v.r, ALL, &n);
    ck_assert_str_eq(regopt_optimizer_message(v.r.o), "");
    ck_assert_str_eq(regopt_trainer_message(v.r.t), "");
    free(b);
    victim_free(&v);
}
END_TEST

/* ---- mismatches -------------------------------------------------------- */

/* Load ck into a trained rig of `config` (tweaked); the load must fail with
 * `want`, its message hold needle and needle2 (when not NULL), and leave the
 * trainer as it was. */
static void load_into(int config, int tweak, const unsigned char *ck, size_t n,
                      regopt_status want, const char *needle, const char *needle2)
{
    rig r;
    size_t nb, na;
    unsigned char *before, *after;
    rig_make(&r, config, 0, 1);
    if (tweak == 3) /* config's optimizer with the victim's regularizers */
        rig_attach(&r, C_SMART);
    if (tweak == 1 || tweak == 2) { /* a differently named bias (1), or the bias in group 0 (2) */
        regopt_trainer_free(r.t);
        regopt_model_free(r.m);
        r.m = ck_model(&r.h, tweak == 1 ? "bias" : "b", tweak == 1 ? 1 : 0, NULL);
        r.t = regopt_trainer_create(r.m, r.o, NULL);
        ck_assert_ptr_nonnull(r.t);
        /* freeing the first trainer detached them: they attach again */
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r.smart));
        TMUST(r.t, regopt_trainer_attach(r.t, r.smart));
        TMUST(r.t, regopt_trainer_attach(r.t, r.bregman));
    }
    rig_step(&r, 5);
    before = rig_save(&r, ALL, &nb);
    {
        regopt_status st = regopt_trainer_load_buffer(r.t, ALL, ck, n);
        ck_assert_msg(st == want, "got %s (%s)", regopt_status_string(st),
                      regopt_trainer_message(r.t));
        ck_assert_msg(strstr(regopt_trainer_message(r.t), needle) != NULL,
                      "message \"%s\" lacks \"%s\"", regopt_trainer_message(r.t), needle);
        if (needle2)
            ck_assert_msg(strstr(regopt_trainer_message(r.t), needle2) != NULL,
                          "message \"%s\" lacks \"%s\"", regopt_trainer_message(r.t), needle2);
    }
    after = rig_save(&r, ALL, &na);
    same_bytes(before, nb, after, na, "after a refused load");
    free(before);
    free(after);
    rig_free(&r);
}

START_TEST(mismatches_refused)
{
    victim v;
    victim_make(&v, ALL);
    load_into(C_SGD, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "optimizer adamw", NULL);
    /* another optimizer and the same regularizers: only the optimizer differs */
    load_into(C_SGD, 3, v.ck, v.n, REGOPT_ERR_MISMATCH, "optimizer adamw", NULL);
    /* another set of regularizers: both lists named */
    load_into(C_SAM, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "bregman", "sam");
    load_into(C_ADAMW, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "regularizers", "bregman");
    load_into(C_BREGMAN, 0, v.ck, v.n, REGOPT_ERR_MISMATCH, "smart", "bregman");
    load_into(C_SMART, 1, v.ck, v.n, REGOPT_ERR_MISMATCH, "\"bias\"", NULL);
    load_into(C_SMART, 2, v.ck, v.n, REGOPT_ERR_MISMATCH, "group", NULL);
    victim_free(&v);
}
END_TEST

START_TEST(flags_not_saved)
{
    victim v;
    victim_make(&v, 0); /* neither params nor options */
    {
        regopt_status st = regopt_trainer_load_buffer(v.r.t, REGOPT_CHECKPOINT_PARAMS, v.ck, v.n);
        ck_assert_int_eq(st, REGOPT_ERR_MISMATCH);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "no parameters"));
        st = regopt_trainer_load_buffer(v.r.t, REGOPT_CHECKPOINT_OPTIONS, v.ck, v.n);
        ck_assert_int_eq(st, REGOPT_ERR_MISMATCH);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(v.r.t), "no options"));
    }
    victim_untouched(&v, "flags not saved");
    TMUST(v.r.t, regopt_trainer_load_buffer(v.r.t, 0, v.ck, v.n));
    victim_free(&v);
}
END_TEST

void checkpoint_options_tests(TCase *tc)
{
    tcase_add_test(tc, mismatches_refused);
    tcase_add_test(tc, flags_not_saved);
    tcase_add_test(tc, options_rollback);
    tcase_add_test(tc, options_group_weight_decay);
    tcase_add_loop_test(tc, load_fresh_into_trained, 0, 2);
    tcase_add_test(tc, amsgrad_mismatch);
    tcase_add_test(tc, save_leaves_messages_alone);
}
