/* check_backend.c — a model whose parameter memory is a backend's
 * (regopt_model_set_backend). The registered buffers are mapped PROT_NONE
 * (backend_rig.h): every method a backend serves trains through a backend
 * working on shadow copies, and must give the same bits as the library on
 * ordinary buffers; a backend's failure at any operation fails the step and
 * loses nothing; what a backend cannot serve yet is refused by name. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "backend_rig.h"

#include <stdio.h>

#define STEPS 6

enum {
    M_SAM = 1, M_ASAM = 2, M_RDROP = 4, M_SMART = 8, M_ADV = 16, M_BREG = 32, M_MESA = 64,
    M_EMA = 128, M_SWA = 256
};

typedef struct method {
    const char *name;
    int bits;
    int adv; /* REGOPT_ADV_* with M_ADV */
} method;

static const method methods[] = {
    {"plain", 0, 0},
    {"SAM", M_SAM, 0},
    {"ASAM + SAM-ON", M_SAM | M_ASAM, 0},
    {"R-Drop", M_RDROP, 0},
    {"SMART", M_SMART, 0},
    {"FGM", M_ADV, REGOPT_ADV_FGM},
    {"PGD", M_ADV, REGOPT_ADV_PGD},
    {"FreeLB", M_ADV, REGOPT_ADV_FREELB},
    {"VAT", M_ADV, REGOPT_ADV_VAT},
    {"SAM + R-Drop + SMART", M_SAM | M_RDROP | M_SMART, 0},
    {"SMART + Bregman", M_SMART | M_BREG, 0},
    {"MESA", M_MESA, 0},
    {"SAM + MESA", M_SAM | M_MESA, 0},
    {"EMA average", M_EMA, 0},
    {"SWA average", M_SWA, 0},
    {"MESA + EMA of its decay", M_MESA | M_EMA, 0},
};
#define N_METHODS (sizeof methods / sizeof methods[0])

static const regopt_optimizer_kind kinds[] = {REGOPT_SGD, REGOPT_ADAM, REGOPT_ADAMW,
                                              REGOPT_RADAM};

static void attach(bk_run *r, const method *m)
{
    if (m->bits & M_SAM) {
        regopt_regularizer *s = tu_add(r->t, REGOPT_REG_SAM);
        MUST(regopt_regularizer_set_double(s, REGOPT_SAM_RHO, 0.1));
        if (m->bits & M_ASAM) {
            MUST(regopt_regularizer_set_int(s, REGOPT_SAM_ADAPTIVE, 1));
            MUST(regopt_regularizer_set_double(s, REGOPT_SAM_ASCENT_WEIGHT_DECAY, 1e-2));
            MUST(regopt_regularizer_set_group(s, 1, REGOPT_SAM_GROUP_PERTURB, 0));
        }
    }
    if (m->bits & M_RDROP)
        MUST(regopt_regularizer_set_double(tu_add(r->t, REGOPT_REG_RDROP), REGOPT_RDROP_ALPHA,
                                           0.5));
    if (m->bits & M_SMART)
        (void)tu_add(r->t, REGOPT_REG_SMART);
    if (m->bits & (M_BREG | M_MESA)) {
        regopt_regularizer *b = tu_add(r->t, REGOPT_REG_BREGMAN);
        MUST(regopt_regularizer_set_double(b, REGOPT_BREGMAN_BETA, 0.8));
        if (m->bits & M_EMA) /* one decay: the built-in average shares the buffer */
            MUST(regopt_regularizer_set_double(b, REGOPT_BREGMAN_BETA_LATE, 0.8));
        else
            MUST(regopt_regularizer_set_int(b, REGOPT_BREGMAN_SWITCH_STEP, 3));
        if (m->bits & M_MESA) {
            MUST(regopt_regularizer_set_int(b, REGOPT_BREGMAN_DIVERGENCE,
                                            REGOPT_BREGMAN_KL_TEACHER));
            MUST(regopt_regularizer_set_double(b, REGOPT_BREGMAN_TAU, 2.0));
            MUST(regopt_regularizer_set_int(b, REGOPT_BREGMAN_START_STEP, 1));
        }
    }
    if (m->bits & (M_EMA | M_SWA)) {
        regopt_regularizer *v = tu_add(r->t, REGOPT_REG_AVERAGE);
        if (m->bits & M_SWA) {
            MUST(regopt_regularizer_set_int(v, REGOPT_AVERAGE_MODE, REGOPT_AVERAGE_SWA));
            MUST(regopt_regularizer_set_int(v, REGOPT_AVERAGE_START, 1));
        } else {
            MUST(regopt_regularizer_set_double(v, REGOPT_AVERAGE_DECAY, 0.8));
            if (!(m->bits & M_MESA)) /* with MESA: the teacher's very EMA (shared) */
                MUST(regopt_regularizer_set_int(v, REGOPT_AVERAGE_WARMUP,
                                                REGOPT_AVERAGE_WARMUP_TIMM));
        }
    }
    if (m->bits & M_ADV) {
        regopt_regularizer *a = tu_add(r->t, REGOPT_REG_ADVERSARIAL);
        MUST(regopt_regularizer_set_int(a, REGOPT_ADV_METHOD, m->adv));
        if (m->adv != REGOPT_ADV_FGM && m->adv != REGOPT_ADV_VAT)
            MUST(regopt_regularizer_set_int(a, REGOPT_ADV_STEPS, 2));
    }
}

START_TEST(every_method_same_bits)
{
    const method *m = &methods[_i / 4];
    regopt_optimizer_kind kind = kinds[_i % 4];
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    double la[STEPS], lb[STEPS];
    char what[96];
    int i;
    snprintf(what, sizeof what, "%s, optimizer %d", m->name, (int)kind);
    bk_open(a, 0, kind);
    bk_open(b, 1, kind);
    attach(a, m);
    attach(b, m);
    bk_train(a, STEPS, la);
    bk_train(b, STEPS, lb);
    for (i = 0; i < STEPS; i++)
        ck_assert_msg(memcmp(&la[i], &lb[i], sizeof la[i]) == 0, "%s: loss of step %d: %.17g "
                      "through the backend, %.17g without", what, i, lb[i], la[i]);
    bk_same_weights(a, b, what);
    if (m->bits & (M_EMA | M_SWA | M_MESA)) { /* the averages too, swapped in and out */
        regopt_regularizer *va = tu_reg(a->t, m->bits & (M_EMA | M_SWA) ? REGOPT_REG_AVERAGE
                                                                        : REGOPT_REG_BREGMAN);
        regopt_regularizer *vb = tu_reg(b->t, m->bits & (M_EMA | M_SWA) ? REGOPT_REG_AVERAGE
                                                                        : REGOPT_REG_BREGMAN);
        MUST(regopt_regularizer_swap_average(va));
        MUST(regopt_regularizer_swap_average(vb));
        bk_same_weights(a, b, "the average swapped in");
        ck_assert_int_eq(regopt_trainer_step(b->t, &b->b, 1), REGOPT_ERR_STATE);
        MUST(regopt_regularizer_swap_average(va));
        MUST(regopt_regularizer_swap_average(vb));
        bk_same_weights(a, b, "the average swapped out");
        ck_assert_int_eq(b->s.calls[REGOPT_VOP_SWAP] - (m->bits & M_MESA ? 2 * STEPS : 0), 2);
    }
    /* and the weights moved: the comparison compared something */
    ck_assert(a->h.w[2][7] != bk_uniform(3, 7) * 0.4f);
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_BIND], 1);
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_UPDATE], STEPS);
    if (m->bits & M_SAM)
        ck_assert_int_eq(b->s.calls[REGOPT_VOP_SAM_PERTURB], STEPS);
    bk_close_pair(a, b);
}
END_TEST

/* A backend that fails the n-th call of an operation: the step fails with
 * REGOPT_ERR_BACKEND naming it, and nothing is lost -- the run that then
 * goes on gives the same bits as one that never failed. */
static const int failing[] = {REGOPT_VOP_ZERO,        REGOPT_VOP_SUM_SQUARES,
                              REGOPT_VOP_ABS_MAX,     REGOPT_VOP_SAM_SQUARES,
                              REGOPT_VOP_SAM_PERTURB, REGOPT_VOP_COPY,
                              REGOPT_VOP_UPDATE};
static const char *const failing_name[] = {"REGOPT_VOP_ZERO",        "REGOPT_VOP_SUM_SQUARES",
                                           "REGOPT_VOP_ABS_MAX",     "REGOPT_VOP_SAM_SQUARES",
                                           "REGOPT_VOP_SAM_PERTURB", "REGOPT_VOP_COPY",
                                           "REGOPT_VOP_UPDATE"};

START_TEST(failed_operation_loses_nothing)
{
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    const method *m = &methods[1]; /* SAM: every operation a step makes */
    regopt_status st;
    bk_open(a, 0, REGOPT_ADAMW);
    bk_open(b, 1, REGOPT_ADAMW);
    attach(a, m);
    attach(b, m);
    bk_train(a, STEPS, NULL);
    bk_train(b, 3, NULL);
    b->s.fail_code = failing[_i];
    b->s.fail_at = b->s.calls[failing[_i]] + 1;
    st = regopt_trainer_step(b->t, &b->b, 1);
    ck_assert_int_eq(st, REGOPT_ERR_BACKEND);
    ck_assert_msg(strstr(regopt_trainer_message(b->t), failing_name[_i]) != NULL, "%s",
                  regopt_trainer_message(b->t));
    ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), 3);
    bk_train(b, STEPS - 3, NULL);
    bk_same_weights(a, b, failing_name[_i]);
    bk_close_pair(a, b);
}
END_TEST

/* The teacher's swap in, its swap back (retried at the next step) and its
 * EMA: the first two lose nothing; the EMA runs after the update, which
 * stays, and the step is not counted. */
START_TEST(teacher_operations_fail)
{
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    const method *m = &methods[10]; /* SMART + Bregman */
    int code = _i < 2 ? REGOPT_VOP_SWAP : REGOPT_VOP_EMA;
    ck_assert(m->bits & M_BREG);
    bk_open(a, 0, REGOPT_SGD);
    bk_open(b, 1, REGOPT_SGD);
    attach(a, m);
    attach(b, m);
    bk_train(a, STEPS, NULL);
    bk_train(b, 2, NULL);
    b->s.fail_code = code;
    b->s.fail_at = b->s.calls[code] + 1 + (_i == 1);
    ck_assert_int_eq(regopt_trainer_step(b->t, &b->b, 1), REGOPT_ERR_BACKEND);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b->t),
                                 code == REGOPT_VOP_SWAP ? "REGOPT_VOP_SWAP" : "REGOPT_VOP_EMA"));
    ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), 2);
    if (code == REGOPT_VOP_SWAP) {
        bk_train(b, STEPS - 2, NULL);
        bk_same_weights(a, b, _i ? "the swap back failed" : "the swap in failed");
    } else {
        bk_train(b, 1, NULL);
        ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), 3);
    }
    bk_close_pair(a, b);
}
END_TEST

/* A non-finite weight the teacher would take is named, with and without a
 * backend, before anything moves. */
START_TEST(teacher_refuses_nonfinite_weight)
{
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    bk_run *runs[2] = {a, b};
    int i;
    for (i = 0; i < 2; i++) {
        bk_open(runs[i], i, REGOPT_ADAM);
        attach(runs[i], &methods[10]);
        bk_train(runs[i], 2, NULL);
        runs[i]->h.w[2][5] = NAN;
        ck_assert_int_eq(regopt_trainer_step(runs[i]->t, &runs[i]->b, 1),
                         REGOPT_ERR_NONFINITE_GRADIENT);
        ck_assert_msg(strstr(regopt_trainer_message(runs[i]->t), "\"W2\" holds a non-finite "
                             "weight") != NULL, "%s", regopt_trainer_message(runs[i]->t));
    }
    a->h.w[2][5] = b->h.w[2][5] = 0.0f; /* NaN != NaN: compare the rest */
    bk_same_weights(a, b, "a non-finite weight refused");
    bk_close_pair(a, b);
}
END_TEST

/* A non-finite gradient is named as without a backend, and nothing moves. */
START_TEST(nonfinite_gradient_named)
{
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    bk_open(a, 0, REGOPT_SGD);
    bk_open(b, 1, REGOPT_SGD);
    bk_train(a, 2, NULL);
    bk_train(b, 2, NULL);
    b->h.nan_grad = 1;
    ck_assert_int_eq(regopt_trainer_step(b->t, &b->b, 1), REGOPT_ERR_NONFINITE_GRADIENT);
    ck_assert_msg(strstr(regopt_trainer_message(b->t), "\"b1\"") != NULL, "%s",
                  regopt_trainer_message(b->t));
    bk_same_weights(a, b, "after a non-finite gradient");
    bk_close(a);
    bk_close(b);
    free(a);
    free(b);
}
END_TEST

/* An update that would overflow is caught by the backend's exact check
 * (the bounds cannot prove it finite), named, and writes nothing. */
START_TEST(update_check_refuses)
{
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    bk_run *runs[2] = {a, b};
    char msg[2][256];
    size_t len;
    int i;
    for (i = 0; i < 2; i++) {
        bk_run *r = runs[i];
        regopt_status st;
        bk_open_model(r, i);
        r->h.w[2][11] = 3e38f; /* W2: the SGD step below overflows it */
        r->opt = bk_optimizer(REGOPT_SGD);
        MUST(regopt_optimizer_set_double(r->opt, REGOPT_OPT_LR, 1e3));
        MUST(regopt_optimizer_set_double(r->opt, REGOPT_OPT_CLIP_NORM, 0.0));
        MUST(regopt_optimizer_set_double(r->opt, REGOPT_OPT_MOMENTUM, 0.0));
        MUST(regopt_optimizer_set_int(r->opt, REGOPT_OPT_NESTEROV, 0));
        r->t = regopt_trainer_create(r->model, r->opt, &st);
        ck_assert_ptr_nonnull(r->t);
        ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_NONFINITE_GRADIENT);
        snprintf(msg[i], sizeof msg[i], "%s", regopt_trainer_message(r->t));
    }
    /* the same tensor, element and value named (the library alone can
       quote the gradient) */
    len = strcspn(msg[0], "(;");
    while (len > 0 && msg[0][len - 1] == ' ')
        len--;
    ck_assert_msg(len > 20 && strncmp(msg[0], msg[1], len) == 0, "without: %s; through the "
                  "backend: %s", msg[0], msg[1]);
    ck_assert_ptr_nonnull(strstr(msg[1], "would make the weight non-finite at element"));
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_UPDATE_CHECK], 1);
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_UPDATE], 0);
    bk_same_weights(a, b, "after a refused update");
    bk_close(a);
    bk_close(b);
    free(a);
    free(b);
}
END_TEST

static int never(void *user, regopt_vop *op)
{
    (void)user;
    (void)op;
    return 0;
}

START_TEST(set_backend_errors)
{
    regopt_status st;
    regopt_model *m = regopt_model_create(NULL, &st);
    regopt_backend b = {sizeof b, never, NULL}, small = {sizeof(size_t), never, NULL};
    regopt_backend no_run = {sizeof b, NULL, NULL};
    float w[4], g[4];
    ck_assert_int_eq(regopt_model_set_backend(NULL, &b), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_model_set_backend(m, NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_model_set_backend(m, &no_run), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_model_set_backend(m, &small), REGOPT_ERR_INVALID_ARGUMENT);
    MUST(regopt_model_add_param(m, "w", w, g, 4, REGOPT_DTYPE_FLOAT32, 0));
    ck_assert_int_eq(regopt_model_set_backend(m, &b), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_model_message(m), "before registering"));
    MUST(regopt_model_free(m));
    m = regopt_model_create(NULL, &st);
    MUST(regopt_model_set_backend(m, &b));
    ck_assert_int_eq(regopt_model_add_param(m, "h", w, g, 4, REGOPT_DTYPE_FLOAT16, 0),
                     REGOPT_ERR_UNSUPPORTED);
    /* handles are opaque: even overlapping ones are taken */
    MUST(regopt_model_add_param(m, "a", w, g, 4, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(m, "b", w + 1, g + 1, 2, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_free(m));
    ck_assert_int_eq(regopt_backend_cpu_create(NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_backend_cpu_free(&b), REGOPT_ERR_INVALID_ARGUMENT);
    MUST(regopt_backend_cpu_free(NULL));
}
END_TEST

/* A trainer whose BIND or ALLOC fails is not made. */
START_TEST(create_fails_cleanly)
{
    int code;
    for (code = REGOPT_VOP_BIND; code <= REGOPT_VOP_ALLOC; code++) {
        bk_run *r = calloc(1, sizeof *r);
        regopt_status st;
        bk_open_model(r, 1);
        r->opt = bk_optimizer(REGOPT_ADAM);
        r->s.fail_code = code;
        r->s.fail_at = code == REGOPT_VOP_ALLOC ? 2 : 1; /* the second moment's */
        r->t = regopt_trainer_create(r->model, r->opt, &st);
        ck_assert_ptr_null(r->t);
        ck_assert_int_eq(st, REGOPT_ERR_BACKEND);
        ck_assert_ptr_nonnull(strstr(regopt_last_error_message(), "REGOPT_VOP_"));
        /* the first moment's buffer was given back */
        ck_assert_int_eq(r->s.calls[REGOPT_VOP_FREE], code == REGOPT_VOP_ALLOC ? 1 : 0);
        bk_close(r);
        free(r);
    }
}
END_TEST

static int reduce(float *x, size_t n, void *user)
{
    (void)x;
    (void)n;
    (void)user;
    return 0;
}

/* What a backend cannot serve yet is refused by name, before anything
 * reads the PROT_NONE buffers. */
START_TEST(unsupported_refused)
{
    bk_run *r = calloc(1, sizeof *r);
    regopt_regularizer *x;
    unsigned char buf[64];
    size_t size = 0;
    long allocs;
    bk_open(r, 1, REGOPT_ADAM);
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_CHECK_HOST, 1),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS_SCALING,
                                            REGOPT_SCALING_FIXED),
                     REGOPT_ERR_UNSUPPORTED);
    ck_assert_int_eq(regopt_trainer_set_allreduce(r->t, reduce, NULL, NULL),
                     REGOPT_ERR_UNSUPPORTED);
    /* checkpoints run (check_backend_checkpoint.c): a size query asks the
       backend nothing, a buffer too small is refused before any READ, a
       damaged checkpoint before any WRITE */
    MUST(regopt_trainer_checkpoint_size(r->t, REGOPT_CHECKPOINT_PARAMS, &size));
    ck_assert_uint_gt(size, 4 * (BK_H * BK_D + BK_H + BK_C * BK_H + 2 * BK_C) * 3);
    ck_assert_int_eq(regopt_trainer_save_buffer(r->t, 0, buf, sizeof buf, &size),
                     REGOPT_ERR_INVALID_ARGUMENT);
    memset(buf, 0, sizeof buf);
    ck_assert_int_eq(regopt_trainer_load_buffer(r->t, 0, buf, sizeof buf), REGOPT_ERR_CORRUPT);
    ck_assert_int_eq(r->s.calls[REGOPT_VOP_READ] + r->s.calls[REGOPT_VOP_WRITE], 0);
    /* SAM's stateful variants run (check_backend_sam.c): switched on after
       the attach, each takes its buffers from the backend then */
    x = tu_add(r->t, REGOPT_REG_SAM);
    allocs = r->s.calls[REGOPT_VOP_ALLOC];
    MUST(regopt_regularizer_set_int(x, REGOPT_SAM_LOOKSAM, 1));
    TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1));
    MUST(regopt_regularizer_set_int(x, REGOPT_SAM_LOOKSAM, 0));
    MUST(regopt_regularizer_set_int(x, REGOPT_SAM_M_ROWS, 2));
    TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1));
    ck_assert_int_eq(r->s.calls[REGOPT_VOP_ALLOC], allocs + 4); /* clean, g_v twice, accum */
    bk_close(r);
    tu_free_regs();
    free(r);
}
END_TEST

/* The host's own update (plain SGD on the tensors where the host keeps
 * them), after the library's clipping through REGOPT_VOP_SCALE, with an
 * EMA average taking the weights: the same bits; a non-finite weight it
 * writes is named before the average takes it. */
static int host_sgd(uint64_t step, double lr, void *user)
{
    bk_host *h = user;
    size_t k, i;
    (void)step;
    for (k = 0; k < 4; k++)
        for (i = 0; i < bk_count[k]; i++)
            h->w[k][i] = h->w[k][i] - (float)lr * h->g[k][i];
    if (h->nan_weight)
        h->w[3][1] = NAN;
    return 0;
}

START_TEST(host_optimizer_same_bits)
{
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    bk_run *runs[2] = {a, b};
    int i;
    for (i = 0; i < 2; i++) {
        bk_run *r = runs[i];
        regopt_status st;
        bk_open_model(r, i);
        r->opt = regopt_optimizer_create(REGOPT_HOST, NULL, &st);
        ck_assert_ptr_nonnull(r->opt);
        MUST(regopt_optimizer_set_double(r->opt, REGOPT_OPT_LR, 0.05));
        MUST(regopt_optimizer_set_double(r->opt, REGOPT_OPT_CLIP_NORM, 0.3));
        MUST(regopt_optimizer_set_host_update(r->opt, host_sgd, &r->h, NULL));
        r->t = regopt_trainer_create(r->model, r->opt, &st);
        ck_assert_ptr_nonnull(r->t);
        attach(r, &methods[1]); /* SAM */
        attach(r, &methods[13]); /* an EMA average */
        bk_train(r, STEPS, NULL);
        ck_assert(stat(r->t, REGOPT_STAT_CLIP_SCALE) < 1.0);
    }
    bk_same_weights(a, b, "a host's update");
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_SCALE], STEPS);
    b->h.nan_weight = 1;
    ck_assert_int_eq(regopt_trainer_step(b->t, &b->b, 1), REGOPT_ERR_HOST_UPDATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b->t), "\"b2\""));
    ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), STEPS);
    bk_close_pair(a, b);
}
END_TEST

Suite *suite_backend(void)
{
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("backend");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, every_method_same_bits, 0, (int)(4 * N_METHODS));
    tcase_add_loop_test(tc, failed_operation_loses_nothing, 0,
                        (int)(sizeof failing / sizeof failing[0]));
    tcase_add_loop_test(tc, teacher_operations_fail, 0, 3);
    tcase_add_test(tc, teacher_refuses_nonfinite_weight);
    tcase_add_test(tc, nonfinite_gradient_named);
    tcase_add_test(tc, update_check_refuses);
    tcase_add_test(tc, set_backend_errors);
    tcase_add_test(tc, create_fails_cleanly);
    tcase_add_test(tc, unsupported_refused);
    tcase_add_test(tc, host_optimizer_same_bits);
    suite_add_tcase(s, tc);
    return s;
}
