/* check_status_regularizer.c — the bad inputs of the regularizer handles
 * (1.0): bad kinds, NULL handles, attach refusals, keys of other handles,
 * values out of range, bad term ops. */
#include "tests.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A model that can serve every kind (4 slots, input embeddings). No step is
 * made here: the callbacks only have to exist. */
typedef struct srig {
    float w[4], g[4];
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
} srig;

static int s_forward(const regopt_pass *p, void *user)
{
    size_t i;
    (void)user;
    for (i = 0; i < p->rows * p->output_width; i++)
        p->outputs[i] = 0.0f;
    return 0;
}

static int s_backward(const regopt_pass *p, void *user)
{
    (void)p;
    (void)user;
    return 0;
}

static void rig_open(srig *r)
{
    memset(r, 0, sizeof *r);
    r->m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "w", r->w, r->g, 4, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_set_output_width(r->m, 2));
    MUST(regopt_model_set_input_width(r->m, 2));
    MUST(regopt_model_set_slots(r->m, 4));
    MUST(regopt_model_set_callbacks(r->m, s_forward, s_backward, r, NULL));
    r->o = regopt_optimizer_create(REGOPT_SGD, NULL, NULL);
    ck_assert_ptr_nonnull(r->o);
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
}

static void rig_close(srig *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
}

/* A new regularizer of a built-in kind (freed by the test itself). */
static regopt_regularizer *new_reg(regopt_regularizer_kind kind)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *r = regopt_regularizer_create(kind, NULL, &st);
    ck_assert_msg(r != NULL, "regopt_regularizer_create(%d) -> %s: %s", (int)kind,
                  regopt_status_string(st), regopt_last_error_message());
    return r;
}

static int t_value(const regopt_term_view *view, double *value, void *user)
{
    (void)view;
    (void)user;
    *value = 0.0;
    return 0;
}

static size_t t_state_size(void *user)
{
    (void)user;
    return 0;
}

static void t_count_free(void *user)
{
    ++*(int *)user;
}

static regopt_term_ops term_ops(const char *name)
{
    regopt_term_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = name;
    ops.value = t_value;
    return ops;
}

static regopt_regularizer *new_term(const char *name)
{
    regopt_term_ops ops = term_ops(name);
    regopt_status st = REGOPT_OK;
    regopt_regularizer *r = regopt_regularizer_create_term(&ops, NULL, NULL, NULL, &st);
    ck_assert_msg(r != NULL, "regopt_regularizer_create_term(%s) -> %s: %s", name,
                  regopt_status_string(st), regopt_last_error_message());
    return r;
}

static int count_of(const char *text, const char *word)
{
    int n = 0;
    const char *p = text;
    while ((p = strstr(p, word)) != NULL) {
        n++;
        p += strlen(word);
    }
    return n;
}

START_TEST(regularizer_create_bad_kinds)
{
    static const int bad[] = {0, -1, 99, 42, 1000};
    regopt_allocator no_hooks = {sizeof(regopt_allocator), NULL, NULL, NULL};
    regopt_status st;
    size_t i;
    int k;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char num[16];
        st = REGOPT_OK;
        ck_assert_ptr_null(regopt_regularizer_create((regopt_regularizer_kind)bad[i], NULL, &st));
        ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
        snprintf(num, sizeof num, "%d", bad[i]);
        ck_assert_msg(strstr(regopt_last_error_message(), num) != NULL,
                      "kind %d: message \"%s\"", bad[i], regopt_last_error_message());
    }
    /* a NULL status pointer is allowed */
    ck_assert_ptr_null(regopt_regularizer_create((regopt_regularizer_kind)0, NULL, NULL));
    /* a user term has a definition: it is made by regopt_regularizer_create_term */
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create(REGOPT_REG_TERM, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(regopt_last_error_message(), "create_term") != NULL,
                  "message \"%s\"", regopt_last_error_message());
    /* an allocator without its hooks */
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create(REGOPT_REG_SAM, &no_hooks, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "alloc and free"));
    /* every built-in kind can be made and tells its kind */
    for (k = REGOPT_REG_SAM; k <= REGOPT_REG_BREGMAN; k++) {
        regopt_regularizer *r = new_reg((regopt_regularizer_kind)k);
        ck_assert_int_eq(regopt_regularizer_get_kind(r), k);
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r));
        ck_assert_str_eq(regopt_regularizer_message(r), "");
        regopt_regularizer_free(r);
    }
}
END_TEST

START_TEST(regularizer_null_handles)
{
    srig a;
    regopt_regularizer *sam;
    regopt_status st = REGOPT_OK;
    double v = -1.0;
    int64_t iv = -1;
    rig_open(&a);
    sam = new_reg(REGOPT_REG_SAM);
    ck_assert_int_eq(regopt_regularizer_set_double(NULL, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_set_int(NULL, REGOPT_SAM_EVERY, 2),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_double(NULL, REGOPT_SAM_RHO, &v),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_int(NULL, REGOPT_SAM_EVERY, &iv),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_double(sam, REGOPT_SAM_RHO, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_int(sam, REGOPT_SAM_EVERY, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_set_group(NULL, 0, REGOPT_SAM_GROUP_ADAPTIVE, 0.0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_group(NULL, 0, REGOPT_SAM_GROUP_ADAPTIVE, &v),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_get_group(sam, 0, REGOPT_SAM_GROUP_ADAPTIVE, NULL),
                     REGOPT_ERR_NULL_POINTER);
    regopt_regularizer_free(NULL);
    ck_assert_int_eq(regopt_regularizer_get_kind(NULL), 0);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(NULL));
    ck_assert_ptr_nonnull(regopt_regularizer_message(NULL));
    ck_assert_int_eq(regopt_regularizer_kind_info(0, NULL, NULL, NULL), REGOPT_OK);
    ck_assert_ptr_null(regopt_regularizer_create_term(NULL, NULL, NULL, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_attach(NULL, sam), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_attach(a.t, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_detach(NULL, sam), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_detach(a.t, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(NULL), 0);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(NULL, 0));
    /* nothing changed */
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(a.t), 0);
    RMUST(sam, regopt_regularizer_get_double(sam, REGOPT_SAM_RHO, &v));
    ck_assert_double_eq(v, 0.05);
    rig_close(&a);
    regopt_regularizer_free(sam);
}
END_TEST

START_TEST(regularizer_attach_refusals)
{
    srig a, b;
    regopt_regularizer *sam, *sam2, *rd, *rd2, *sm, *sm2, *br, *br2, *loose, *t1, *t2;
    size_t i, n, at_rd = 99, at_br = 99, at_sm = 99;
    rig_open(&a);
    rig_open(&b);
    sam = new_reg(REGOPT_REG_SAM);
    sam2 = new_reg(REGOPT_REG_SAM);
    rd = new_reg(REGOPT_REG_RDROP);
    rd2 = new_reg(REGOPT_REG_RDROP);
    sm = new_reg(REGOPT_REG_SMART);
    sm2 = new_reg(REGOPT_REG_SMART);
    br = new_reg(REGOPT_REG_BREGMAN);
    br2 = new_reg(REGOPT_REG_BREGMAN);
    loose = new_reg(REGOPT_REG_SAM);
    t1 = new_term("t1");
    t2 = new_term("t2");

    TMUST(a.t, regopt_trainer_attach(a.t, sam));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(sam), a.t);
    /* the same handle twice */
    ck_assert_int_eq(regopt_trainer_attach(a.t, sam), REGOPT_ERR_STATE);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(a.t), 1);
    /* one handle on two trainers */
    ck_assert_int_eq(regopt_trainer_attach(b.t, sam), REGOPT_ERR_STATE);
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(sam), a.t);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(b.t), 0);
    /* a second weight-side regularizer: the message names both */
    ck_assert_int_eq(regopt_trainer_attach(a.t, sam2), REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(a.t), "weight-side") != NULL &&
                      count_of(regopt_trainer_message(a.t), "sam") >= 2,
                  "message \"%s\"", regopt_trainer_message(a.t));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam2));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(a.t), 1);
    /* R-Drop, SMART and Bregman: once each */
    TMUST(a.t, regopt_trainer_attach(a.t, rd));
    TMUST(a.t, regopt_trainer_attach(a.t, sm));
    TMUST(a.t, regopt_trainer_attach(a.t, br));
    ck_assert_int_eq(regopt_trainer_attach(a.t, rd2), REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(a.t), "rdrop") != NULL, "message \"%s\"",
                  regopt_trainer_message(a.t));
    ck_assert_int_eq(regopt_trainer_attach(a.t, sm2), REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(a.t), "smart") != NULL, "message \"%s\"",
                  regopt_trainer_message(a.t));
    ck_assert_int_eq(regopt_trainer_attach(a.t, br2), REGOPT_ERR_STATE);
    ck_assert_msg(strstr(regopt_trainer_message(a.t), "bregman") != NULL, "message \"%s\"",
                  regopt_trainer_message(a.t));
    n = regopt_trainer_regularizer_count(a.t);
    ck_assert_uint_eq(n, 4);
    /* listed once each, loss-side ones in step order: R-Drop, Bregman, SMART */
    for (i = 0; i < n; i++) {
        regopt_regularizer *r = regopt_trainer_regularizer_at(a.t, i);
        size_t j;
        for (j = 0; j < i; j++)
            ck_assert_ptr_ne(regopt_trainer_regularizer_at(a.t, j), r);
        ck_assert(r == sam || r == rd || r == sm || r == br);
        if (r == rd)
            at_rd = i;
        else if (r == br)
            at_br = i;
        else if (r == sm)
            at_sm = i;
    }
    ck_assert_msg(at_rd < at_br && at_br < at_sm, "step order rdrop %zu, bregman %zu, smart %zu",
                  at_rd, at_br, at_sm);
    ck_assert_ptr_null(regopt_trainer_regularizer_at(a.t, n));
    /* the second trainer takes the second of each */
    TMUST(b.t, regopt_trainer_attach(b.t, sam2));
    TMUST(b.t, regopt_trainer_attach(b.t, rd2));
    TMUST(b.t, regopt_trainer_attach(b.t, sm2));
    TMUST(b.t, regopt_trainer_attach(b.t, br2));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(b.t), 4);
    /* detaching what is not attached here */
    ck_assert_int_eq(regopt_trainer_detach(a.t, loose), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_detach(a.t, sam2), REGOPT_ERR_STATE);
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(sam2), b.t);
    TMUST(a.t, regopt_trainer_detach(a.t, rd));
    ck_assert_int_eq(regopt_trainer_detach(a.t, rd), REGOPT_ERR_STATE);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(rd));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(a.t), 3);
    /* user terms: as many as wanted, after the built-in terms, in attach order */
    TMUST(a.t, regopt_trainer_attach(a.t, t1));
    TMUST(a.t, regopt_trainer_attach(a.t, t2));
    ck_assert_int_eq(regopt_trainer_attach(a.t, t2), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_attach(b.t, t1), REGOPT_ERR_STATE);
    n = regopt_trainer_regularizer_count(a.t);
    ck_assert_uint_eq(n, 5);
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(a.t, n - 2), t1);
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(a.t, n - 1), t2);
    /* freeing a trainer detaches everything it holds */
    rig_close(&a);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sm));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(br));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(t1));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(t2));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(sam2), b.t);
    rig_close(&b);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam2));
    regopt_regularizer_free(sam);
    regopt_regularizer_free(sam2);
    regopt_regularizer_free(rd);
    regopt_regularizer_free(rd2);
    regopt_regularizer_free(sm);
    regopt_regularizer_free(sm2);
    regopt_regularizer_free(br);
    regopt_regularizer_free(br2);
    regopt_regularizer_free(loose);
    regopt_regularizer_free(t1);
    regopt_regularizer_free(t2);
}
END_TEST

START_TEST(regularizer_free_attached_is_refused)
{
    srig a;
    regopt_regularizer *sam;
    double v = -1.0;
    rig_open(&a);
    sam = new_reg(REGOPT_REG_SAM);
    TMUST(a.t, regopt_trainer_attach(a.t, sam));
    regopt_regularizer_free(sam); /* refused */
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(sam), a.t);
    ck_assert_msg(strstr(regopt_last_error_message(), "attached") != NULL, "message \"%s\"",
                  regopt_last_error_message());
    /* the handle still works */
    ck_assert_int_eq(regopt_regularizer_get_kind(sam), REGOPT_REG_SAM);
    RMUST(sam, regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, 0.1));
    RMUST(sam, regopt_regularizer_get_double(sam, REGOPT_SAM_RHO, &v));
    ck_assert_double_eq(v, 0.1);
    ck_assert_uint_eq(regopt_trainer_regularizer_count(a.t), 1);
    ck_assert_ptr_eq(regopt_trainer_regularizer_at(a.t, 0), sam);
    TMUST(a.t, regopt_trainer_detach(a.t, sam));
    regopt_regularizer_free(sam); /* now it goes */
    /* and after the trainer is freed */
    sam = new_reg(REGOPT_REG_SAM);
    TMUST(a.t, regopt_trainer_attach(a.t, sam));
    rig_close(&a);
    ck_assert_ptr_null(regopt_regularizer_get_trainer(sam));
    regopt_regularizer_free(sam);
}
END_TEST

START_TEST(regularizer_keys_of_other_handles)
{
    srig a;
    regopt_regularizer *sam, *rd, *sm, *br, *term;
    double v = -1.0;
    int64_t iv = -1;
    rig_open(&a);
    sam = new_reg(REGOPT_REG_SAM);
    rd = new_reg(REGOPT_REG_RDROP);
    sm = new_reg(REGOPT_REG_SMART);
    br = new_reg(REGOPT_REG_BREGMAN);
    term = new_term("keys");
    /* keys of another kind */
    ck_assert_int_eq(regopt_regularizer_set_double(sam, REGOPT_RDROP_ALPHA, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_str_ne(regopt_regularizer_message(sam), "");
    ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_RDROP_KL_SUM, 1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_double(sam, REGOPT_RDROP_ALPHA, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_int(sam, REGOPT_RDROP_EVERY, &iv),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_double(sam, REGOPT_STAT_RDROP_LOSS1, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(rd, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_group(rd, 0, REGOPT_SAM_GROUP_ADAPTIVE, 0.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(sm, REGOPT_BREGMAN_MU, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(br, REGOPT_SMART_LAMBDA, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(sam, REGOPT_TERM_WEIGHT, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(term, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    RMUST(term, regopt_regularizer_set_double(term, REGOPT_TERM_WEIGHT, 2.0));
    /* optimizer and trainer keys on a regularizer, and unknown numbers */
    ck_assert_int_eq(regopt_regularizer_set_double(sam, REGOPT_TRAINER_SEED, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_TRAINER_SEED, 1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(sam, REGOPT_OPT_LR, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_double(sam, REGOPT_STAT_LOSS, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_group(sam, 0, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(sam, (regopt_key)12345, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_get_double(sam, (regopt_key)-1, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    /* method keys on the trainer and the optimizer, with or without SAM */
    ck_assert_int_eq(regopt_trainer_set_double(a.t, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_set_int(a.t, REGOPT_RDROP_EVERY, 2), REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_get_double(a.t, REGOPT_STAT_SAM_SHARPNESS, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(a.o, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    TMUST(a.t, regopt_trainer_attach(a.t, sam));
    ck_assert_int_eq(regopt_trainer_set_double(a.t, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_trainer_get_double(a.t, REGOPT_SAM_RHO, &v), REGOPT_ERR_UNKNOWN_KEY);
    /* statistics are read-only */
    ck_assert_int_eq(regopt_regularizer_set_double(sam, REGOPT_STAT_SAM_SHARPNESS, 1.0),
                     REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(sam), "sam.sharpness"));
    ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_STAT_SAM_APPLIED, 1),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_regularizer_set_double(rd, REGOPT_STAT_RDROP_LOSS1, 1.0),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_regularizer_set_double(sm, REGOPT_STAT_SMART_RS, 1.0),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_regularizer_set_double(br, REGOPT_STAT_BREGMAN_D, 1.0),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_regularizer_set_double(term, REGOPT_STAT_TERM_VALUE, 1.0),
                     REGOPT_ERR_STATE);
    RMUST(sam, regopt_regularizer_get_double(sam, REGOPT_STAT_SAM_SHARPNESS, &v));
    ck_assert_double_eq(v, 0.0);
    /* nothing changed */
    RMUST(sam, regopt_regularizer_get_double(sam, REGOPT_SAM_RHO, &v));
    ck_assert_double_eq(v, 0.05);
    RMUST(term, regopt_regularizer_get_double(term, REGOPT_TERM_WEIGHT, &v));
    ck_assert_double_eq(v, 2.0);
    rig_close(&a);
    regopt_regularizer_free(sam);
    regopt_regularizer_free(rd);
    regopt_regularizer_free(sm);
    regopt_regularizer_free(br);
    regopt_regularizer_free(term);
}
END_TEST

/* set must fail with OUT_OF_RANGE and a message naming the key and `range`
 * (NULL: not checked), and the value must stay `keep`. */
static void out_of_range(regopt_regularizer *r, regopt_key key, double value, double keep,
                         const char *range)
{
    const char *name = NULL;
    double v = -1.0;
    regopt_status st;
    MUST(regopt_key_info(key, &name, NULL, NULL, NULL, NULL, NULL));
    st = regopt_regularizer_set_double(r, key, value);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %g: %s", name, value,
                  regopt_status_string(st));
    ck_assert_msg(strstr(regopt_regularizer_message(r), name) != NULL,
                  "%s = %g: message \"%s\" does not name the key", name, value,
                  regopt_regularizer_message(r));
    if (range)
        ck_assert_msg(strstr(regopt_regularizer_message(r), range) != NULL,
                      "%s = %g: message \"%s\" does not name the range %s", name, value,
                      regopt_regularizer_message(r), range);
    RMUST(r, regopt_regularizer_get_double(r, key, &v));
    ck_assert_double_eq(v, keep);
}

START_TEST(regularizer_values_out_of_range)
{
    srig a;
    regopt_regularizer *sam, *rd, *sm, *br, *term;
    double v = -1.0;
    rig_open(&a);
    sam = new_reg(REGOPT_REG_SAM);
    rd = new_reg(REGOPT_REG_RDROP);
    sm = new_reg(REGOPT_REG_SMART);
    br = new_reg(REGOPT_REG_BREGMAN);
    term = new_term("range");
    out_of_range(sam, REGOPT_SAM_RHO, -1.0, 0.05, "[0, 1000]");
    out_of_range(sam, REGOPT_SAM_RHO, 1001.0, 0.05, "[0, 1000]");
    out_of_range(sam, REGOPT_SAM_RHO, NAN, 0.05, "[0, 1000]");
    out_of_range(sam, REGOPT_SAM_RHO, INFINITY, 0.05, NULL);
    out_of_range(sam, REGOPT_SAM_EVERY, 0.0, 1.0, "[1, 2147483648]");
    out_of_range(sam, REGOPT_SAM_ADAPTIVE, 0.5, 0.0, NULL); /* not an integer */
    ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_SAM_EVERY, 0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(sam, REGOPT_SAM_ADAPTIVE, 2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_group(sam, 0, REGOPT_SAM_GROUP_ADAPTIVE, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(sam), "sam.group_adaptive"));
    out_of_range(rd, REGOPT_RDROP_ALPHA, -0.1, 1.0, "[0, 10000]");
    out_of_range(rd, REGOPT_RDROP_ALPHA, NAN, 1.0, "[0, 10000]");
    out_of_range(sm, REGOPT_SMART_EPSILON, 0.0, 1e-5, "(0, 1000]"); /* min excluded */
    out_of_range(sm, REGOPT_SMART_STEPS, 0.0, 1.0, "[1, 100]");
    out_of_range(sm, REGOPT_SMART_STEPS, 101.0, 1.0, "[1, 100]");
    ck_assert_int_eq(regopt_regularizer_set_int(sm, REGOPT_SMART_NORM, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    out_of_range(br, REGOPT_BREGMAN_BETA, 1.0, 0.99, "[0, 1)"); /* max excluded */
    out_of_range(br, REGOPT_BREGMAN_SWITCH_STEP, -2.0, -1.0, NULL);
    out_of_range(br, REGOPT_BREGMAN_MU, -INFINITY, 1.0, NULL);
    out_of_range(term, REGOPT_TERM_WEIGHT, -1.0, 1.0, "[0, 10000]");
    out_of_range(term, REGOPT_TERM_WEIGHT, NAN, 1.0, NULL);
    /* attached: the same refusals, in the regularizer's message, not the trainer's */
    TMUST(a.t, regopt_trainer_attach(a.t, sam));
    TMUST(a.t, regopt_trainer_attach(a.t, br));
    out_of_range(sam, REGOPT_SAM_RHO, -1.0, 0.05, "[0, 1000]");
    out_of_range(br, REGOPT_BREGMAN_BETA_LATE, 1.0, 0.999, "[0, 1)");
    ck_assert_ptr_null(strstr(regopt_trainer_message(a.t), "sam.rho"));
    ck_assert_ptr_null(strstr(regopt_trainer_message(a.t), "bregman.beta_late"));
    /* the bounds themselves are taken */
    RMUST(sam, regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, 1000.0));
    RMUST(br, regopt_regularizer_set_int(br, REGOPT_BREGMAN_SWITCH_STEP, -1));
    RMUST(br, regopt_regularizer_set_int(br, REGOPT_BREGMAN_SWITCH_STEP, 0));
    RMUST(br, regopt_regularizer_get_double(br, REGOPT_BREGMAN_SWITCH_STEP, &v));
    ck_assert_double_eq(v, 0.0);
    rig_close(&a);
    regopt_regularizer_free(sam);
    regopt_regularizer_free(rd);
    regopt_regularizer_free(sm);
    regopt_regularizer_free(br);
    regopt_regularizer_free(term);
}
END_TEST

START_TEST(term_create_bad_inputs)
{
    static const char *bad_names[] = {"", "abcdefghijklmnopqrstuvwx" /* 24 */, "has space",
                                      "a/b", "t\xc3\xa9rm"};
    regopt_term_ops ops;
    regopt_regularizer *r;
    regopt_status st;
    int freed = 0;
    size_t i;
    double v = -1.0;
    /* a good one: free_user is called once, when it is freed */
    ops = term_ops("abcdefghijklmnopqrstuvw"); /* 23 bytes */
    st = REGOPT_ERR_STATE;
    r = regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st);
    ck_assert_msg(r != NULL, "%s: %s", regopt_status_string(st), regopt_last_error_message());
    ck_assert_int_eq(st, REGOPT_OK);
    ck_assert_int_eq(regopt_regularizer_get_kind(r), REGOPT_REG_TERM);
    RMUST(r, regopt_regularizer_get_double(r, REGOPT_TERM_WEIGHT, &v));
    ck_assert_double_eq(v, 1.0);
    ck_assert_int_eq(freed, 0);
    regopt_regularizer_free(r);
    ck_assert_int_eq(freed, 1);
    /* refused definitions: free_user is not called */
    for (i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        ops = term_ops(bad_names[i]);
        st = REGOPT_OK;
        ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st));
        ck_assert_msg(st == REGOPT_ERR_INVALID_ARGUMENT, "name \"%s\": %s", bad_names[i],
                      regopt_status_string(st));
    }
    ops = term_ops(NULL);
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st));
    ck_assert(st == REGOPT_ERR_NULL_POINTER || st == REGOPT_ERR_INVALID_ARGUMENT);
    ops = term_ops("novalue");
    ops.value = NULL;
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st));
    ck_assert(st == REGOPT_ERR_NULL_POINTER || st == REGOPT_ERR_INVALID_ARGUMENT);
    ops = term_ops("passes");
    ops.passes = REGOPT_TERM_MAX_PASSES + 1;
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ops = term_ops("state");
    ops.state_size = t_state_size; /* all three or none */
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    ops = term_ops("size");
    ops.size = 0;
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, t_count_free, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_INVALID_ARGUMENT);
    st = REGOPT_OK;
    ck_assert_ptr_null(regopt_regularizer_create_term(NULL, &freed, t_count_free, NULL, &st));
    ck_assert_int_eq(st, REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(freed, 1);
}
END_TEST

Suite *suite_status_regularizer(void)
{
    Suite *s = suite_create("status_regularizer");
    TCase *tc = tcase_create("regularizers");
    tcase_add_test(tc, regularizer_create_bad_kinds);
    tcase_add_test(tc, regularizer_null_handles);
    tcase_add_test(tc, regularizer_attach_refusals);
    tcase_add_test(tc, regularizer_free_attached_is_refused);
    tcase_add_test(tc, regularizer_keys_of_other_handles);
    tcase_add_test(tc, regularizer_values_out_of_range);
    tcase_add_test(tc, term_create_bad_inputs);
    suite_add_tcase(s, tc);
    return s;
}
