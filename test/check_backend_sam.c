/* check_backend_sam.c — the SAM family's stateful variants through a
 * backend (REGOPT_VOP_AXPBY, REGOPT_VOP_DOT and the SAM ops): m-sharpness,
 * Momentum-SAM, LookSAM, FriendlySAM, VaSSO, GSAM (also with ASAM), WSAM
 * coupled and decoupled train with the registered buffers mapped PROT_NONE
 * (backend_rig.h) and give the same bits, losses and weights, as the
 * library on ordinary buffers; each differs from plain SAM (the variant
 * ran); a backend's failure of a new operation fails the step and loses
 * nothing. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "backend_rig.h"

#include <stdio.h>

#define STEPS 6

typedef struct variant {
    const char *name;
    int64_t m_rows, every;
    int msam, look, direction, gsam, adaptive, wsam;
    double sigma, theta, lr_scale1; /* 0: the defaults; lr_scale1: group 1's */
} variant;

static const variant variants[] = {
    {"plain SAM", 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"m-sharpness", 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"m-sharpness + VaSSO", 2, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0},
    {"m-sharpness + FriendlySAM + GSAM", 2, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0},
    {"m-sharpness + LookSAM", 2, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0},
    {"Momentum-SAM", 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0},
    {"LookSAM", 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0},
    {"FriendlySAM", 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0},
    {"FriendlySAM sigma 0", 0, 1, 0, 0, 1, 0, 0, 0, -1, 0, 0},
    {"VaSSO", 0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0},
    {"VaSSO theta 1", 0, 1, 0, 0, 2, 0, 0, 0, 0, 1, 0},
    {"GSAM", 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0},
    {"ASAM + GSAM", 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0},
    {"WSAM coupled", 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0},
    {"WSAM decoupled", 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0},
    {"WSAM decoupled, group 1 lr 0", 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, -1},
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

static const regopt_optimizer_kind kinds[] = {REGOPT_SGD, REGOPT_ADAM, REGOPT_ADAMW};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

static void open_run(bk_run *r, int backend, regopt_optimizer_kind kind, const variant *v)
{
    regopt_status st;
    regopt_regularizer *s;
    bk_open_model(r, backend);
    r->opt = bk_optimizer(kind);
    if (v->lr_scale1 < 0.0)
        MUST(regopt_optimizer_set_group(r->opt, 1, REGOPT_GROUP_LR_SCALE, 0.0));
    r->t = regopt_trainer_create(r->model, r->opt, &st);
    ck_assert_msg(r->t != NULL, "regopt_trainer_create -> %s", regopt_status_string(st));
    s = tu_add(r->t, REGOPT_REG_SAM);
    MUST(regopt_regularizer_set_double(s, REGOPT_SAM_RHO, 0.1));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_M_ROWS, v->m_rows));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_EVERY, v->every));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_MOMENTUM, v->msam));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_LOOKSAM, v->look));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_DIRECTION, v->direction));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_GSAM, v->gsam));
    MUST(regopt_regularizer_set_int(s, REGOPT_SAM_WSAM, v->wsam));
    if (v->sigma < 0.0)
        MUST(regopt_regularizer_set_double(s, REGOPT_SAM_FRIENDLY_SIGMA, 0.0));
    if (v->theta > 0.0)
        MUST(regopt_regularizer_set_double(s, REGOPT_SAM_VASSO_THETA, v->theta));
    if (v->adaptive) {
        MUST(regopt_regularizer_set_int(s, REGOPT_SAM_ADAPTIVE, 1));
        MUST(regopt_regularizer_set_double(s, REGOPT_SAM_ASCENT_WEIGHT_DECAY, 1e-2));
        MUST(regopt_regularizer_set_group(s, 1, REGOPT_SAM_GROUP_PERTURB, 0));
    }
}

/* The index of the first weight where runs a and b differ, or -1. */
static long first_difference(const bk_run *a, const bk_run *b, size_t *tensor)
{
    size_t k, i;
    for (k = 0; k < BK_T; k++)
        for (i = 0; i < bk_count[k]; i++)
            if (memcmp(&a->h.w[k][i], &b->h.w[k][i], sizeof(float)) != 0) {
                *tensor = k;
                return (long)i;
            }
    return -1;
}

START_TEST(every_variant_same_bits)
{
    const variant *v = &variants[_i / N_KINDS];
    regopt_optimizer_kind kind = kinds[_i % N_KINDS];
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b), *p = calloc(1, sizeof *p);
    double la[STEPS], lb[STEPS];
    char what[128];
    size_t k;
    int i;
    snprintf(what, sizeof what, "%s, optimizer %d", v->name, (int)kind);
    open_run(a, 0, kind, v);
    open_run(b, 1, kind, v);
    bk_train(a, STEPS, la);
    bk_train(b, STEPS, lb);
    for (i = 0; i < STEPS; i++)
        ck_assert_msg(memcmp(&la[i], &lb[i], sizeof la[i]) == 0, "%s: loss of step %d: %.17g "
                      "through the backend, %.17g without", what, i, lb[i], la[i]);
    bk_same_weights(a, b, what);
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_UPDATE], STEPS);
    if (_i >= (int)N_KINDS) {
        /* the variant ran: the weights are not plain SAM's -- but FriendlySAM
           with sigma 0 and VaSSO with theta 1 ascend along g: SAM's bits */
        int as_sam = v->sigma < 0.0 || v->theta == 1.0;
        open_run(p, 0, kind, &variants[0]);
        bk_train(p, STEPS, NULL);
        ck_assert_msg((first_difference(a, p, &k) < 0) == as_sam, "%s: %s weights as plain SAM",
                      what, as_sam ? "not the same" : "the same");
        bk_close(p);
        /* and it ran through the new operations (Momentum-SAM's move too) */
        ck_assert_msg(b->s.calls[REGOPT_VOP_AXPBY] > 0, "%s: no REGOPT_VOP_AXPBY", what);
    }
    if (v->gsam || v->look)
        ck_assert_msg(b->s.calls[REGOPT_VOP_DOT] > 0, "%s: no REGOPT_VOP_DOT", what);
    bk_close_pair(a, b);
    free(p);
}
END_TEST

/* The new operations fail at step 3 (LookSAM's: a reuse step): the step
 * fails with REGOPT_ERR_BACKEND naming the operation, and the run that goes
 * on gives the same bits as one that never failed. */
typedef struct failure {
    int variant, code;
    const char *name;
} failure;

static const failure failures[] = {
    {1, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"},  /* m-sharpness: the sum of the chunks */
    {2, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"},  /* VaSSO's direction, chunk by chunk */
    {5, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"},  /* Momentum-SAM's move */
    {6, REGOPT_VOP_DOT, "REGOPT_VOP_DOT"},      /* LookSAM's reuse */
    {6, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"},
    {7, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"},  /* FriendlySAM */
    {11, REGOPT_VOP_DOT, "REGOPT_VOP_DOT"},     /* GSAM's sums */
    {11, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"}, /* GSAM's combination */
    {14, REGOPT_VOP_AXPBY, "REGOPT_VOP_AXPBY"}, /* WSAM's split (before the update) */
};

START_TEST(failed_operation_loses_nothing)
{
    const failure *f = &failures[_i];
    const variant *v = &variants[f->variant];
    bk_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    char what[128];
    regopt_status st;
    snprintf(what, sizeof what, "%s failing %s", v->name, f->name);
    open_run(a, 0, REGOPT_ADAMW, v);
    open_run(b, 1, REGOPT_ADAMW, v);
    bk_train(a, STEPS, NULL);
    bk_train(b, 3, NULL);
    b->s.fail_code = f->code;
    b->s.fail_at = b->s.calls[f->code] + 1;
    st = regopt_trainer_step(b->t, &b->b, 1);
    ck_assert_msg(st == REGOPT_ERR_BACKEND, "%s: %s", what, regopt_status_string(st));
    ck_assert_msg(strstr(regopt_trainer_message(b->t), f->name) != NULL, "%s: %s", what,
                  regopt_trainer_message(b->t));
    ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), 3);
    bk_train(b, STEPS - 3, NULL);
    bk_same_weights(a, b, what);
    bk_close_pair(a, b);
}
END_TEST

/* Decoupled WSAM's raw step runs after the update: its failure fails the
 * step with REGOPT_ERR_BACKEND naming the operation (the update made, as
 * the header says of a failed update), the step is not counted, and the
 * trainer goes on. */
START_TEST(wsam_raw_step_failure)
{
    bk_run *b = calloc(1, sizeof *b);
    regopt_status st;
    open_run(b, 1, REGOPT_ADAMW, &variants[14]);
    bk_train(b, 3, NULL);
    b->s.fail_code = REGOPT_VOP_AXPBY;
    b->s.fail_at = b->s.calls[REGOPT_VOP_AXPBY] + 2; /* the split's, then the raw step's */
    st = regopt_trainer_step(b->t, &b->b, 1);
    ck_assert_int_eq(st, REGOPT_ERR_BACKEND);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b->t), "REGOPT_VOP_AXPBY"));
    ck_assert_int_eq(b->s.calls[REGOPT_VOP_UPDATE], 4); /* it came after the update */
    ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), 3);
    bk_train(b, 1, NULL);
    ck_assert_int_eq(stat_int(b->t, REGOPT_STAT_STEP), 4);
    bk_close(b);
    tu_free_regs();
    free(b);
}
END_TEST

/* The CPU backend's new operations on their own, against numbers worked
 * here: AXPBY's forms (shared and per-tensor scalars, skipped tensors, z
 * none), DOT's two orders. */
START_TEST(cpu_ops_direct)
{
    regopt_backend cpu;
    float w0[3] = {1, 2, 3}, w1[2] = {4, 5}, g0[3] = {0.5f, -1, 2}, g1[2] = {3, -2};
    void *data[2] = {w0, w1}, *grad[2] = {g0, g1};
    size_t counts[2] = {3, 2};
    double pt[4] = {1.0, -0.5, 2.0, 0.25};
    int32_t flags[2] = {1, 0};
    regopt_vop op;
    MUST(regopt_backend_cpu_create(&cpu));
    memset(&op, 0, sizeof op);
    op.size = sizeof op;
    op.code = REGOPT_VOP_BIND;
    op.tensors = 2;
    op.data = data;
    op.grad = grad;
    op.counts = counts;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    /* x = 2 w + 3 g on every tensor */
    op.code = REGOPT_VOP_AXPBY;
    op.x = REGOPT_VEC_WEIGHTS;
    op.y = REGOPT_VEC_WEIGHTS;
    op.z = REGOPT_VEC_GRADS;
    op.s[0] = 2.0;
    op.s[1] = 3.0;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert(w0[0] == 3.5f && w0[1] == 1.0f && w0[2] == 12.0f && w1[0] == 17.0f &&
              w1[1] == 4.0f);
    /* per tensor (1, -0.5) on tensor 0 only: w0 - 0.5 g0 */
    op.per_tensor = pt;
    op.flags = flags;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert(w0[0] == 3.25f && w0[1] == 1.5f && w0[2] == 11.0f && w1[0] == 17.0f &&
              w1[1] == 4.0f);
    /* z none: g = a w per tensor (2 on tensor 1) */
    op.flags = NULL;
    op.x = REGOPT_VEC_GRADS;
    op.z = REGOPT_VEC_NONE;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert(g0[0] == 3.25f && g1[0] == 34.0f && g1[1] == 8.0f);
    /* DOT, w . g: 3.25^2 + 1.5^2 + 11^2 + 17 * 34 + 4 * 8 = 743.8125 */
    memset(&op, 0, sizeof op);
    op.size = sizeof op;
    op.code = REGOPT_VOP_DOT;
    op.tensors = 2;
    op.tensor = SIZE_MAX;
    op.x = REGOPT_VEC_WEIGHTS;
    op.y = REGOPT_VEC_GRADS;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert(op.out[0] == 743.8125);
    op.variant = 1;
    op.tensor = 1;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert(op.out[0] == 610.0);
    op.variant = 2; /* unknown */
    ck_assert_int_ne(cpu.run(cpu.user, &op), 0);
    MUST(regopt_backend_cpu_free(&cpu));
}
END_TEST

/* REGOPT_VOP_DOT's two orders as the header words them, worked here on
 * data of mixed magnitudes (where the orders give different bits), against
 * the CPU backend. */
static double lanes16(const float *x, const float *y, size_t n)
{
    double s[16] = {0};
    size_t i = 0, l;
    for (; i + 16 <= n; i += 16)
        for (l = 0; l < 16; l++)
            s[l] += (double)x[i + l] * (double)y[i + l];
    for (l = 0; i < n; i++, l++)
        s[l] += (double)x[i] * (double)y[i];
    for (l = 0; l < 8; l++)
        s[l] += s[l + 8];
    for (l = 0; l < 4; l++)
        s[l] += s[l + 4];
    s[0] += s[2];
    s[1] += s[3];
    return s[0] + s[1];
}

START_TEST(dot_orders)
{
    enum { N0 = 1031, N1 = 37 };
    static float x0[N0], y0[N0], x1[N1], y1[N1];
    float *xs[2] = {x0, x1}, *ys[2] = {y0, y1};
    void *data[2] = {x0, x1}, *grad[2] = {y0, y1};
    size_t counts[2] = {N0, N1}, k, i;
    double lanes = 0.0, seq = 0.0;
    regopt_backend cpu;
    regopt_vop op;
    for (k = 0; k < 2; k++)
        for (i = 0; i < counts[k]; i++) {
            xs[k][i] = bk_uniform(10 + k, i) * (float)(1 << (i % 13)) * 1e-3f;
            ys[k][i] = bk_uniform(20 + k, i) * (float)(1 << (i % 7)) + 1.0f / 3.0f;
        }
    for (k = 0; k < 2; k++) {
        lanes += lanes16(xs[k], ys[k], counts[k]);
        for (i = 0; i < counts[k]; i++)
            seq += (double)xs[k][i] * (double)ys[k][i];
    }
    ck_assert_msg(lanes != seq, "the data does not tell the orders apart");
    MUST(regopt_backend_cpu_create(&cpu));
    memset(&op, 0, sizeof op);
    op.size = sizeof op;
    op.code = REGOPT_VOP_BIND;
    op.tensors = 2;
    op.data = data;
    op.grad = grad;
    op.counts = counts;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    op.code = REGOPT_VOP_DOT;
    op.x = REGOPT_VEC_WEIGHTS;
    op.y = REGOPT_VEC_GRADS;
    op.tensor = SIZE_MAX;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert_msg(op.out[0] == lanes, "lanes: %.17g, worked here %.17g", op.out[0], lanes);
    op.variant = 1;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert_msg(op.out[0] == seq, "in order: %.17g, worked here %.17g", op.out[0], seq);
    /* one tensor, and x . x as ro_sum_squares' order */
    op.variant = 0;
    op.tensor = 0;
    op.y = REGOPT_VEC_WEIGHTS;
    ck_assert_int_eq(cpu.run(cpu.user, &op), 0);
    ck_assert(op.out[0] == lanes16(x0, x0, N0));
    MUST(regopt_backend_cpu_free(&cpu));
}
END_TEST

Suite *suite_backend_sam(void)
{
    Suite *s = suite_create("backend_sam");
    TCase *tc = tcase_create("backend_sam");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, every_variant_same_bits, 0, (int)(N_KINDS * N_VARIANTS));
    tcase_add_loop_test(tc, failed_operation_loses_nothing, 0,
                        (int)(sizeof failures / sizeof failures[0]));
    tcase_add_test(tc, cpu_ops_direct);
    tcase_add_test(tc, dot_orders);
    tcase_add_test(tc, wsam_raw_step_failure);
    suite_add_tcase(s, tc);
    return s;
}
