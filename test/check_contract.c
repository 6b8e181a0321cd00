/* check_contract.c — trainer.check_host (issue 16, host contract mistakes
 * that passed silently): a forward that leaves outputs unwritten or writes
 * past them, a backward that adds no gradient, parameters changed behind
 * the library's back. Each breach fails the step with a message saying
 * which rule, nothing changes, and the same host with the option off is
 * not stopped (what the option adds). */
#include "tests.h"
#include "test_host.h"
#include "test_util.h"

#include <string.h>

enum { OK_HOST, SKIP_ROW, WIDER, NO_GRAD_ADD };

typedef struct ch {
    th_host h;   /* first: th_* callbacks get &c->h */
    int fault;
    int width;   /* floats the host writes per row (WIDER: TH_K + 1) */
} ch;

static int ch_forward(const regopt_pass *p, void *user)
{
    ch *c = user;
    size_t i;
    int rc = th_forward(p, &c->h);
    if (c->fault == SKIP_ROW) /* the host "forgets" its last row: restore the mark */
        memcpy(p->outputs + (p->rows - 1) * TH_K, p->outputs + p->rows * TH_K,
               TH_K * sizeof(float));
    if (c->fault == WIDER) /* a host that thinks there are TH_K + 1 outputs */
        for (i = 0; i < p->rows; i++)
            p->outputs[p->rows * TH_K + i] = 0.5f; /* the row-major tail it writes */
    return rc;
}

static int ch_backward(const regopt_pass *p, void *user)
{
    ch *c = user;
    if (c->fault == NO_GRAD_ADD) { /* returns 0, adds nothing */
        c->h.backwards++;
        return 0;
    }
    return th_backward(p, &c->h);
}

typedef struct rigc {
    ch c;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    float x[8 * TH_D];
    int32_t y[8];
    th_batch hb;
    regopt_batch b;
} rigc;

static void rigc_open(rigc *r, int check)
{
    regopt_status st;
    memset(r, 0, sizeof *r);
    th_init(&r->c.h);
    r->m = regopt_model_create(NULL, NULL);
    MUST(regopt_model_add_param(r->m, "W", r->c.h.w, r->c.h.gw, TH_D * TH_K,
                                REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(r->m, "b", r->c.h.b, r->c.h.gb, TH_K, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(r->m, TH_K));
    MUST(regopt_model_set_callbacks(r->m, ch_forward, ch_backward, &r->c, NULL));
    r->o = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_ptr_nonnull(r->t);
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_CHECK_HOST, check));
    th_data(r->x, r->y, 8, 0);
    th_batch_of(&r->b, &r->hb, r->x, r->y, 8);
}

static void rigc_close(rigc *r)
{
    regopt_trainer_free(r->t);
    regopt_model_free(r->m);
    regopt_optimizer_free(r->o);
}

/* One step with `fault`: with the check on it fails with `want` and a
 * message holding `needle`, the weights unchanged; with it off it passes. */
static void breach(int fault, regopt_status want, const char *needle)
{
    rigc on, off;
    float w[TH_D * TH_K];
    regopt_status st;
    rigc_open(&on, 1);
    rigc_open(&off, 0);
    TMUST(on.t, regopt_trainer_step(on.t, &on.b, 1)); /* a good step first */
    TMUST(off.t, regopt_trainer_step(off.t, &off.b, 1));
    memcpy(w, on.c.h.w, sizeof w);
    on.c.fault = off.c.fault = fault;
    st = regopt_trainer_step(on.t, &on.b, 1);
    ck_assert_msg(st == want, "fault %d: got %s (%s)", fault, regopt_status_string(st),
                  regopt_trainer_message(on.t));
    ck_assert_msg(strstr(regopt_trainer_message(on.t), needle) != NULL, "message \"%s\"",
                  regopt_trainer_message(on.t));
    ck_assert_mem_eq(on.c.h.w, w, sizeof w);
    ck_assert_int_eq(stat_int(on.t, REGOPT_STAT_STEP), 1);
    TMUST(off.t, regopt_trainer_step(off.t, &off.b, 1)); /* unchecked: not seen */
    on.c.fault = OK_HOST; /* and the checked trainer goes on once the host is fixed */
    TMUST(on.t, regopt_trainer_step(on.t, &on.b, 1));
    rigc_close(&on);
    rigc_close(&off);
}

START_TEST(unwritten_outputs)
{
    breach(SKIP_ROW, REGOPT_ERR_FORWARD, "unwritten");
}
END_TEST

START_TEST(outputs_overrun)
{
    breach(WIDER, REGOPT_ERR_FORWARD, "wrote past");
}
END_TEST

START_TEST(gradients_not_added)
{
    breach(NO_GRAD_ADD, REGOPT_ERR_BACKWARD, "added nothing");
}
END_TEST

/* A fully masked batch gives d_outputs = 0: adding nothing is then right. */
START_TEST(zero_gradient_is_fine)
{
    rigc r;
    uint8_t mask[8] = {0};
    rigc_open(&r, 1);
    r.b.mask = mask;
    mask[0] = 1;
    r.b.weights = NULL;
    TMUST(r.t, regopt_trainer_step(r.t, &r.b, 1));
    rigc_close(&r);
}
END_TEST

START_TEST(parameters_changed_between_steps)
{
    rigc r;
    unsigned char ck[8192];
    size_t n = 0;
    float keep;
    rigc_open(&r, 1);
    TMUST(r.t, regopt_trainer_step(r.t, &r.b, 1));
    TMUST(r.t, regopt_trainer_save_buffer(r.t, REGOPT_CHECKPOINT_PARAMS, ck, sizeof ck, &n));
    keep = r.c.h.b[TH_K - 1];
    r.c.h.b[TH_K - 1] += 1.0f; /* the host writes into a registered tensor */
    ck_assert_int_eq(regopt_trainer_step(r.t, &r.b, 1), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "\"b\" changed"));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "last element"));
    ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 1);
    /* through the library, a load with parameters, it is fine */
    TMUST(r.t, regopt_trainer_load_buffer(r.t, REGOPT_CHECKPOINT_PARAMS, ck, n));
    ck_assert(r.c.h.b[TH_K - 1] == keep);
    TMUST(r.t, regopt_trainer_step(r.t, &r.b, 1));
    /* a load without parameters forgets the reference: the host restores its own */
    TMUST(r.t, regopt_trainer_load_buffer(r.t, 0, ck, n));
    r.c.h.w[0] += 1.0f;
    TMUST(r.t, regopt_trainer_step(r.t, &r.b, 1));
    /* off: not checked */
    TMUST(r.t, regopt_trainer_set_int(r.t, REGOPT_TRAINER_CHECK_HOST, 0));
    r.c.h.w[0] += 1.0f;
    TMUST(r.t, regopt_trainer_step(r.t, &r.b, 1));
    rigc_close(&r);
}
END_TEST

START_TEST(the_option)
{
    rigc r;
    int64_t v = -1;
    unsigned char ck[8192];
    size_t n = 0;
    rigc_open(&r, 1);
    TMUST(r.t, regopt_trainer_get_int(r.t, REGOPT_TRAINER_CHECK_HOST, &v));
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(regopt_trainer_set_int(r.t, REGOPT_TRAINER_CHECK_HOST, 2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_trainer_set_double(r.t, REGOPT_TRAINER_CHECK_HOST, 0.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    TMUST(r.t, regopt_trainer_get_int(r.t, REGOPT_TRAINER_CHECK_HOST, &v));
    ck_assert_int_eq(v, 1);
    /* not part of a checkpoint's options: loading keeps the trainer's own */
    TMUST(r.t, regopt_trainer_save_buffer(r.t, REGOPT_CHECKPOINT_OPTIONS, ck, sizeof ck, &n));
    TMUST(r.t, regopt_trainer_set_int(r.t, REGOPT_TRAINER_CHECK_HOST, 0));
    TMUST(r.t, regopt_trainer_load_buffer(r.t, REGOPT_CHECKPOINT_OPTIONS, ck, n));
    TMUST(r.t, regopt_trainer_get_int(r.t, REGOPT_TRAINER_CHECK_HOST, &v));
    ck_assert_int_eq(v, 0);
    rigc_close(&r);
}
END_TEST

Suite *suite_contract(void)
{
    Suite *s = suite_create("contract");
    TCase *tc = tcase_create("check_host");
    tcase_add_test(tc, unwritten_outputs);
    tcase_add_test(tc, outputs_overrun);
    tcase_add_test(tc, gradients_not_added);
    tcase_add_test(tc, zero_gradient_is_fine);
    tcase_add_test(tc, parameters_changed_between_steps);
    tcase_add_test(tc, the_option);
    suite_add_tcase(s, tc);
    return s;
}
