/* check_memory.c — the library's own memory per trainable parameter, as
 * README "Memory per method" documents it, against what the allocator sees.
 *
 * The host is a linear softmax model on a few inputs plus one tensor of e
 * elements it registers but never uses (its gradient stays 0): the bytes
 * the library holds after a step, at two values of e, differ by exactly
 * (bytes per parameter) x (the difference in e), plus the per-chunk sums
 * of the parallel loops (8 bytes per 4096 elements). Buffers the size of a
 * batch (SMART's and the adversarial methods' perturbations, the outputs)
 * do not move with e and drop out of the difference. */
#include "tests.h"
#include "test_util.h"

#include <string.h>

/* ---- an allocator that knows the bytes alive ---------------------------- */

typedef struct live_count {
    size_t live;
} live_count;

static void *live_alloc(size_t n, void *user)
{
    unsigned char *p = malloc(n + 16);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    ((live_count *)user)->live += n;
    return p + 16;
}

static void live_free(void *ptr, void *user)
{
    size_t n;
    if (!ptr)
        return;
    memcpy(&n, (unsigned char *)ptr - 16, sizeof n);
    ((live_count *)user)->live -= n;
    free((unsigned char *)ptr - 16);
}

/* ---- the host: logits = (x + delta) W, W d x k --------------------------- */

#define D 6
#define K 3
#define ROWS 4

typedef struct mhost {
    float w[D * K], gw[D * K];
    float *extra, *gextra; /* e elements, unused by the network */
    const float *x;
} mhost;

static int m_forward(const regopt_pass *p, void *user)
{
    const mhost *h = user;
    const float *x = (const float *)p->batch + p->row_offset * D;
    size_t r, i, j;
    for (r = 0; r < p->rows; r++)
        for (j = 0; j < K; j++) {
            float s = 0.0f;
            for (i = 0; i < D; i++) {
                float xi = x[r * D + i];
                if (p->input_perturbation)
                    xi += p->input_perturbation[r * D + i];
                s += xi * h->w[i * K + j];
            }
            p->outputs[r * K + j] = s;
        }
    return 0;
}

static int m_backward(const regopt_pass *p, void *user)
{
    mhost *h = user;
    const float *x = (const float *)p->batch + p->row_offset * D;
    size_t r, i, j;
    for (r = 0; r < p->rows; r++)
        for (i = 0; i < D; i++) {
            float xi = x[r * D + i], di = 0.0f;
            if (p->input_perturbation)
                xi += p->input_perturbation[r * D + i];
            for (j = 0; j < K; j++) {
                if (!(p->flags & REGOPT_PASS_NO_PARAM_GRAD))
                    h->gw[i * K + j] += xi * p->d_outputs[r * K + j];
                di += p->d_outputs[r * K + j] * h->w[i * K + j];
            }
            if (p->d_input)
                p->d_input[r * D + i] = di;
        }
    return 0;
}

static int m_update(uint64_t step, double lr, void *user)
{
    (void)step;
    (void)lr;
    (void)user;
    return 0;
}

/* ---- one configuration --------------------------------------------------- */

typedef struct reg_key {
    regopt_regularizer_kind kind;
    regopt_key key;
    double value;
} reg_key;

#define MAX_KEYS 4

typedef struct config {
    const char *name;
    regopt_optimizer_kind opt;
    regopt_key opt_key; /* 0: none */
    double opt_value;
    regopt_regularizer_kind regs[3];
    int n_regs;
    reg_key keys[MAX_KEYS];
    double per_param; /* README "Memory per method" */
    regopt_dtype extra; /* the unused tensor's type */
} config;

/* The bytes the library holds after one step with `e` extra elements. */
static size_t held(const config *c, size_t e)
{
    live_count lc = {0};
    regopt_allocator a = {sizeof(regopt_allocator), live_alloc, live_free, &lc};
    mhost h;
    float x[ROWS * D];
    int32_t y[ROWS];
    regopt_regularizer *regs[3];
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_status st;
    regopt_batch b;
    size_t i, bytes;
    int k, q;
    memset(&h, 0, sizeof h);
    for (i = 0; i < D * K; i++)
        h.w[i] = 0.1f * (float)((int)(i % 7) - 3);
    for (i = 0; i < ROWS * D; i++)
        x[i] = 0.25f * (float)((int)(i % 5) - 2);
    for (i = 0; i < ROWS; i++)
        y[i] = (int32_t)(i % K);
    h.extra = calloc(e, sizeof(float)); /* also room for e halves */
    h.gextra = calloc(e, sizeof(float));
    ck_assert_ptr_nonnull(h.extra);
    ck_assert_ptr_nonnull(h.gextra);
    m = regopt_model_create(&a, &st);
    ck_assert_ptr_nonnull(m);
    MUST(regopt_model_add_param(m, "w", h.w, h.gw, D * K, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(m, "extra", h.extra, h.gextra, e,
                                c->extra, 0));
    MUST(regopt_model_set_output_width(m, K));
    MUST(regopt_model_set_input_width(m, D));
    MUST(regopt_model_set_slots(m, 3));
    MUST(regopt_model_set_callbacks(m, m_forward, m_backward, &h, NULL));
    o = regopt_optimizer_create(c->opt, &a, &st);
    ck_assert_ptr_nonnull(o);
    if (c->opt_key)
        MUST(regopt_optimizer_set_double(o, c->opt_key, c->opt_value));
    if (c->opt == REGOPT_HOST)
        MUST(regopt_optimizer_set_host_update(o, m_update, NULL, NULL));
    t = regopt_trainer_create(m, o, &st);
    ck_assert_msg(t != NULL, "%s: %s", c->name, regopt_last_error_message());
    for (k = 0; k < c->n_regs; k++) {
        regs[k] = regopt_regularizer_create(c->regs[k], &a, &st);
        ck_assert_ptr_nonnull(regs[k]);
        for (q = 0; q < MAX_KEYS; q++)
            if (c->keys[q].key && c->keys[q].kind == c->regs[k])
                ck_assert_msg(regopt_regularizer_set_double(regs[k], c->keys[q].key,
                                                            c->keys[q].value) == REGOPT_OK,
                              "%s: %s", c->name, regopt_regularizer_message(regs[k]));
        ck_assert_msg(regopt_trainer_attach(t, regs[k]) == REGOPT_OK, "%s: %s", c->name,
                      regopt_trainer_message(t));
    }
    regopt_batch_init(&b);
    b.data = x;
    b.rows = ROWS;
    b.labels = y;
    b.input_rows = ROWS;
    ck_assert_msg(regopt_trainer_step(t, &b, 1) == REGOPT_OK, "%s: %s", c->name,
                  regopt_trainer_message(t));
    bytes = lc.live;
    MUST(regopt_trainer_free(t));
    for (k = 0; k < c->n_regs; k++)
        MUST(regopt_regularizer_free(regs[k]));
    MUST(regopt_optimizer_free(o));
    MUST(regopt_model_free(m));
    ck_assert_uint_eq(lc.live, 0);
    free(h.extra);
    free(h.gextra);
    return bytes;
}

#define SAM REGOPT_REG_SAM
#define NOKEYS {{0, 0, 0}}
#define F32 REGOPT_DTYPE_FLOAT32

/* README "Memory per method": bytes per trainable parameter, keep in step. */
static const config configs[] = {
    {"AdamW", REGOPT_ADAMW, 0, 0, {0}, 0, NOKEYS, 8, F32},
    {"Adam AMSGrad", REGOPT_ADAM, REGOPT_OPT_AMSGRAD, 1, {0}, 0, NOKEYS, 12, F32},
    {"RAdam", REGOPT_RADAM, 0, 0, {0}, 0, NOKEYS, 8, F32},
    {"SGD momentum", REGOPT_SGD, REGOPT_OPT_MOMENTUM, 0.9, {0}, 0, NOKEYS, 4, F32},
    {"host update", REGOPT_HOST, 0, 0, {0}, 0, NOKEYS, 0, F32},
    {"SAM", REGOPT_ADAMW, 0, 0, {SAM}, 1, NOKEYS, 12, F32},
    {"ASAM", REGOPT_ADAMW, 0, 0, {SAM}, 1, {{SAM, REGOPT_SAM_ADAPTIVE, 1}}, 12, F32},
    {"GSAM", REGOPT_ADAMW, 0, 0, {SAM}, 1, {{SAM, REGOPT_SAM_GSAM, 1}}, 16, F32},
    {"Momentum-SAM", REGOPT_ADAMW, 0, 0, {SAM}, 1, {{SAM, REGOPT_SAM_MOMENTUM, 1}}, 12, F32},
    {"LookSAM", REGOPT_ADAMW, 0, 0, {SAM}, 1, {{SAM, REGOPT_SAM_LOOKSAM, 1}}, 24, F32},
    {"FriendlySAM", REGOPT_ADAMW, 0, 0, {SAM}, 1,
     {{SAM, REGOPT_SAM_DIRECTION, REGOPT_SAM_DIRECTION_FRIENDLY}}, 24, F32},
    {"VaSSO", REGOPT_ADAMW, 0, 0, {SAM}, 1,
     {{SAM, REGOPT_SAM_DIRECTION, REGOPT_SAM_DIRECTION_VASSO}}, 24, F32},
    {"WSAM", REGOPT_ADAMW, 0, 0, {SAM}, 1, {{SAM, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED}},
     20, F32},
    {"R-Drop", REGOPT_ADAMW, 0, 0, {REGOPT_REG_RDROP}, 1, NOKEYS, 8, F32},
    {"SMART", REGOPT_ADAMW, 0, 0, {REGOPT_REG_SMART}, 1, NOKEYS, 8, F32},
    {"SMART + Bregman", REGOPT_ADAMW, 0, 0, {REGOPT_REG_SMART, REGOPT_REG_BREGMAN}, 2, NOKEYS,
     12, F32},
    {"MESA", REGOPT_ADAMW, 0, 0, {REGOPT_REG_BREGMAN}, 1,
     {{REGOPT_REG_BREGMAN, REGOPT_BREGMAN_DIVERGENCE, REGOPT_BREGMAN_KL_TEACHER}}, 12, F32},
    {"EMA", REGOPT_ADAMW, 0, 0, {REGOPT_REG_AVERAGE}, 1, NOKEYS, 12, F32},
    /* one buffer for the teacher and an EMA of its decay (average.c) */
    {"MESA + EMA, one decay", REGOPT_ADAMW, 0, 0, {REGOPT_REG_BREGMAN, REGOPT_REG_AVERAGE}, 2,
     {{REGOPT_REG_BREGMAN, REGOPT_BREGMAN_BETA, 0.9998},
      {REGOPT_REG_BREGMAN, REGOPT_BREGMAN_BETA_LATE, 0.9998}}, 12, F32},
    {"MESA + EMA, two decays", REGOPT_ADAMW, 0, 0, {REGOPT_REG_BREGMAN, REGOPT_REG_AVERAGE}, 2,
     NOKEYS, 16, F32},
    {"FreeLB", REGOPT_ADAMW, 0, 0, {REGOPT_REG_ADVERSARIAL}, 1,
     {{REGOPT_REG_ADVERSARIAL, REGOPT_ADV_METHOD, REGOPT_ADV_FREELB}}, 8, F32},
    {"SAM + SMART + Bregman", REGOPT_ADAMW, 0, 0,
     {SAM, REGOPT_REG_SMART, REGOPT_REG_BREGMAN}, 3, NOKEYS, 16, F32},
    /* half tensors: the fp32 master weights and the fp32 gradient sum */
    {"AdamW, bf16 tensors", REGOPT_ADAMW, 0, 0, {0}, 0, NOKEYS, 16, REGOPT_DTYPE_BFLOAT16},
    {"SAM, fp16 tensors", REGOPT_ADAMW, 0, 0, {SAM}, 1, NOKEYS, 20, REGOPT_DTYPE_FLOAT16},
};

START_TEST(documented_bytes_per_parameter)
{
    const config *c = &configs[_i];
    const size_t e1 = 4096, e2 = 4096 + 8 * 4096; /* the second: 8 more chunks */
    size_t b1 = held(c, e1), b2 = held(c, e2);
    double expect = c->per_param * (double)(e2 - e1) + 8.0 * 8.0; /* + the chunk sums */
    ck_assert_msg((double)(b2 - b1) == expect,
                  "%s: %zu more bytes for %zu more parameters (%.4f per parameter), README "
                  "says %.0f", c->name, b2 - b1, e2 - e1,
                  (double)(b2 - b1 - 64) / (double)(e2 - e1), c->per_param);
}
END_TEST

Suite *suite_memory(void)
{
    Suite *s = suite_create("memory");
    TCase *tc = tcase_create("per_parameter");
    tcase_add_loop_test(tc, documented_bytes_per_parameter, 0,
                        (int)(sizeof configs / sizeof *configs));
    suite_add_tcase(s, tc);
    return s;
}
