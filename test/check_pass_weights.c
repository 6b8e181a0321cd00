/* check_pass_weights.c — REGOPT_CAP_PASS_WEIGHTS: a host that reads its
 * weights through pointers is handed the teacher's own buffers in the
 * teacher's passes (Bregman, MESA) instead of having them swapped into its
 * registered buffers. The training must be the same bit for bit as with a
 * host that is swapped (a twin without the capability), the host's
 * buffers must hold the student's weights during the teacher's pass, and
 * models the table cannot describe (a half tensor) fall back to the swap. */
#include "tests.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

#define D 5
#define K 3
#define ROWS 6

/* logits = (x + delta) W + b; W first, b second in registration order */
typedef struct phost {
    float w[D * K], b[K], gw[D * K], gb[K];
    uint16_t half[4], ghalf[4]; /* an unused bf16 tensor, when registered */
    float u[4], gu[4];          /* an unused float32 tensor, when registered */
    const float *x;
    int teacher_passes, given;  /* teacher passes; of them, with pass->weights */
    int buffers_moved;          /* a teacher pass found the teacher in w */
    float student_w0;           /* w[0] at the start of the step */
} phost;

static int p_forward(const regopt_pass *p, void *user)
{
    phost *h = user;
    const float *x = p->batch, *w = h->w, *b = h->b;
    size_t r, i, j;
    if (p->flags & REGOPT_PASS_TEACHER) {
        h->teacher_passes++;
        if (p->weights) {
            h->given++;
            w = p->weights[0];
            b = p->weights[1];
        }
        if (h->w[0] != h->student_w0)
            h->buffers_moved = 1;
    }
    h->x = x;
    for (r = 0; r < p->rows; r++)
        for (j = 0; j < K; j++) {
            float s = b[j];
            for (i = 0; i < D; i++) {
                float xi = x[r * D + i];
                if (p->input_perturbation)
                    xi += p->input_perturbation[r * D + i];
                s += xi * w[i * K + j];
            }
            p->outputs[r * K + j] = s;
        }
    return 0;
}

static int p_backward(const regopt_pass *p, void *user)
{
    phost *h = user;
    const float *x = p->batch;
    size_t r, i, j;
    for (r = 0; r < p->rows; r++)
        for (i = 0; i < D; i++) {
            float xi = x[r * D + i], di = 0.0f;
            if (p->input_perturbation)
                xi += p->input_perturbation[r * D + i];
            for (j = 0; j < K; j++) {
                float d = p->d_outputs[r * K + j];
                if (!(p->flags & REGOPT_PASS_NO_PARAM_GRAD)) {
                    h->gw[i * K + j] += xi * d;
                    if (i == 0)
                        h->gb[j] += d;
                }
                di += d * h->w[i * K + j];
            }
            if (p->d_input)
                p->d_input[r * D + i] = di;
        }
    return 0;
}

typedef struct prun {
    phost h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *regs[3];
    int n_regs;
} prun;

enum { WITH_SAM = 1, WITH_SMART = 2, WITH_HALF = 4, WITH_UNUSED = 8, WITH_SGD = 16,
       WITH_HOST = 32 };

/* The host's own update for WITH_HOST: it leaves the weights alone. */
static int p_update(uint64_t step, double lr, void *user)
{
    (void)step;
    (void)lr;
    (void)user;
    return 0;
}

static void p_open(prun *r, uint32_t caps, int what)
{
    regopt_status st;
    regopt_regularizer *br;
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < D * K; i++)
        r->h.w[i] = 0.2f * (float)((int)(i * 7 % 11) - 5);
    r->m = regopt_model_create(NULL, &st);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "w", r->h.w, r->h.gw, D * K, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, K, REGOPT_DTYPE_FLOAT32, 0));
    if (what & WITH_HALF)
        MUST(regopt_model_add_param(r->m, "h", r->h.half, r->h.ghalf, 4,
                                    REGOPT_DTYPE_BFLOAT16, 0));
    if (what & WITH_UNUSED)
        MUST(regopt_model_add_param(r->m, "u", r->h.u, r->h.gu, 4, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_set_output_width(r->m, K));
    MUST(regopt_model_set_input_width(r->m, D));
    MUST(regopt_model_set_slots(r->m, 2));
    MUST(regopt_model_set_capabilities(r->m, caps));
    MUST(regopt_model_set_callbacks(r->m, p_forward, p_backward, &r->h, NULL));
    r->o = regopt_optimizer_create(what & WITH_HOST  ? REGOPT_HOST
                                   : what & WITH_SGD ? REGOPT_SGD
                                                     : REGOPT_ADAMW,
                                   NULL, &st);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.05));
    if (what & WITH_HOST)
        MUST(regopt_optimizer_set_host_update(r->o, p_update, NULL, NULL));
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_ptr_nonnull(r->t);
    if (what & WITH_SAM) {
        r->regs[r->n_regs] = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st);
        MUST(regopt_trainer_attach(r->t, r->regs[r->n_regs++]));
    }
    if (what & WITH_SMART) {
        r->regs[r->n_regs] = regopt_regularizer_create(REGOPT_REG_SMART, NULL, &st);
        MUST(regopt_trainer_attach(r->t, r->regs[r->n_regs++]));
    }
    br = r->regs[r->n_regs++] = regopt_regularizer_create(REGOPT_REG_BREGMAN, NULL, &st);
    ck_assert_ptr_nonnull(br);
    /* a fast teacher, so that it differs from the student from step 1 */
    MUST(regopt_regularizer_set_double(br, REGOPT_BREGMAN_BETA, 0.5));
    MUST(regopt_regularizer_set_double(br, REGOPT_BREGMAN_BETA_LATE, 0.5));
    if (!(what & WITH_SMART)) { /* MESA's divergence */
        MUST(regopt_regularizer_set_int(br, REGOPT_BREGMAN_DIVERGENCE,
                                        REGOPT_BREGMAN_KL_TEACHER));
        MUST(regopt_regularizer_set_double(br, REGOPT_BREGMAN_TAU, 2.0));
    }
    MUST(regopt_trainer_attach(r->t, br));
}

static regopt_status p_try(prun *r, int step)
{
    float x[ROWS * D];
    int32_t y[ROWS];
    regopt_batch b;
    int i;
    for (i = 0; i < ROWS * D; i++)
        x[i] = 0.3f * (float)((i * 5 + step * 3) % 9 - 4);
    for (i = 0; i < ROWS; i++)
        y[i] = (i + step) % K;
    regopt_batch_init(&b);
    b.data = x;
    b.rows = ROWS;
    b.labels = y;
    r->h.student_w0 = r->h.w[0];
    return regopt_trainer_step(r->t, &b, 1);
}

static void p_step(prun *r, int step)
{
    ck_assert_msg(p_try(r, step) == REGOPT_OK, "%s", regopt_trainer_message(r->t));
}

static void p_close(prun *r)
{
    int i;
    MUST(regopt_trainer_free(r->t));
    for (i = 0; i < r->n_regs; i++)
        MUST(regopt_regularizer_free(r->regs[i]));
    MUST(regopt_optimizer_free(r->o));
    MUST(regopt_model_free(r->m));
}

/* The same checkpoint bytes (weights, moments, the teacher) after every
 * step, with the teacher handed by pointer and swapped in. */
static void same_training(int what)
{
    static prun a, b; /* static: the hosts' addresses stay put */
    int step;
    p_open(&a, REGOPT_CAP_PASS_WEIGHTS, what);
    p_open(&b, 0, what);
    for (step = 0; step < 8; step++) {
        size_t na, nb;
        unsigned char *ba, *bb;
        p_step(&a, step);
        p_step(&b, step);
        MUST(regopt_trainer_checkpoint_size(a.t, REGOPT_CHECKPOINT_PARAMS, &na));
        MUST(regopt_trainer_checkpoint_size(b.t, REGOPT_CHECKPOINT_PARAMS, &nb));
        ck_assert_uint_eq(na, nb);
        ba = malloc(na);
        bb = malloc(nb);
        MUST(regopt_trainer_save_buffer(a.t, REGOPT_CHECKPOINT_PARAMS, ba, na, NULL));
        MUST(regopt_trainer_save_buffer(b.t, REGOPT_CHECKPOINT_PARAMS, bb, nb, NULL));
        ck_assert_msg(memcmp(ba, bb, na) == 0, "step %d: the runs differ", step);
        free(ba);
        free(bb);
    }
    ck_assert_int_eq(a.h.teacher_passes, 8);
    ck_assert_int_eq(a.h.given, 8);          /* every teacher pass had the table */
    ck_assert_int_eq(a.h.buffers_moved, 0);  /* and found the student in w */
    ck_assert_int_eq(b.h.given, 0);
    ck_assert_int_eq(b.h.buffers_moved, 1);  /* the twin was swapped (and it shows) */
    p_close(&a);
    p_close(&b);
}

START_TEST(mesa_by_pointer_equals_swap) { same_training(0); }
END_TEST

START_TEST(smart_sam_by_pointer_equals_swap) { same_training(WITH_SMART | WITH_SAM); }
END_TEST

/* A bf16 tensor: the teacher is float32, the host would read halves: the
 * library swaps, whatever the host declared. */
START_TEST(half_tensor_falls_back_to_swap)
{
    static prun a;
    int step;
    p_open(&a, REGOPT_CAP_PASS_WEIGHTS, WITH_HALF);
    for (step = 0; step < 3; step++)
        p_step(&a, step);
    ck_assert_int_eq(a.h.teacher_passes, 3);
    ck_assert_int_eq(a.h.given, 0);
    p_close(&a);
}
END_TEST

/* A non-finite weight the teacher would take (here in a tensor the loss
 * does not use, under SGD without momentum, whose update keeps it as it is
 * and so lets it pass): the swapped twin refuses the step before any pass;
 * handed by pointer, the step must be refused all the same -- the EMA
 * would make the teacher non-finite for good, and the checkpoints saved
 * from then on would not load. */
START_TEST(nonfinite_weight_refused_by_pointer)
{
    static prun a;
    static unsigned char before[8192], after[8192];
    size_t nb = 0, na = 0;
    uint32_t caps[2] = {REGOPT_CAP_PASS_WEIGHTS, 0};
    int k, step;
    for (k = 0; k < 4; k++) { /* SGD, then a host's update, which has no guard */
        regopt_status st;
        p_open(&a, caps[k % 2], WITH_UNUSED | (k < 2 ? WITH_SGD : WITH_HOST));
        for (step = 0; step < 2; step++)
            p_step(&a, step);
        MUST(regopt_trainer_save_buffer(a.t, REGOPT_CHECKPOINT_PARAMS, before, sizeof before,
                                        &nb));
        a.h.u[1] = NAN;
        st = p_try(&a, 2);
        ck_assert_msg(st == REGOPT_ERR_NONFINITE_GRADIENT, "caps 0x%x: %s: %s", caps[k % 2],
                      regopt_status_string(st), regopt_trainer_message(a.t));
        ck_assert_msg(strstr(regopt_trainer_message(a.t), "\"u\"") != NULL, "%s",
                      regopt_trainer_message(a.t));
        a.h.u[1] = 0.0f; /* as it was */
        MUST(regopt_trainer_save_buffer(a.t, REGOPT_CHECKPOINT_PARAMS, after, sizeof after,
                                        &na));
        ck_assert_uint_eq(na, nb);
        ck_assert_msg(memcmp(before, after, nb) == 0, "caps 0x%x: the failed step changed "
                      "the state", caps[k % 2]);
        p_step(&a, 2);
        MUST(regopt_trainer_save_buffer(a.t, REGOPT_CHECKPOINT_PARAMS, after, sizeof after,
                                        &na));
        MUST(regopt_trainer_load_buffer(a.t, REGOPT_CHECKPOINT_PARAMS, after, na));
        p_close(&a);
    }
}
END_TEST

START_TEST(unknown_capability_refused)
{
    regopt_status st;
    regopt_model *m = regopt_model_create(NULL, &st);
    ck_assert_int_eq(regopt_model_set_capabilities(m, REGOPT_CAP_PASS_WEIGHTS | 0x4u),
                     REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(regopt_model_message(m), "0x4") != NULL, "%s",
                  regopt_model_message(m));
    MUST(regopt_model_set_capabilities(m, REGOPT_CAP_PASS_WEIGHTS | REGOPT_CAP_DOUBLED_BATCH));
    MUST(regopt_model_free(m));
}
END_TEST

Suite *suite_pass_weights(void)
{
    Suite *s = suite_create("pass_weights");
    TCase *tc = tcase_create("teacher");
    tcase_add_test(tc, mesa_by_pointer_equals_swap);
    tcase_add_test(tc, smart_sam_by_pointer_equals_swap);
    tcase_add_test(tc, half_tensor_falls_back_to_swap);
    tcase_add_test(tc, nonfinite_weight_refused_by_pointer);
    tcase_add_test(tc, unknown_capability_refused);
    suite_add_tcase(s, tc);
    return s;
}
