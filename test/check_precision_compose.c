/* check_precision_compose.c — mixed precision with every method: R-Drop,
 * SMART (d_input arrives scaled), the Bregman teacher, and data-parallel
 * replicas agreeing on a skipped step through the all-reduce. Where the
 * loss scale is a power of two and the buffers float32, scaled training
 * must give the bits of unscaled training (scaling by 2^k is exact). */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c11 */
#include "tests.h"
#include "test_util.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define D 4
#define K 3
#define N 8

/* A linear host with input embeddings (the rows of x), float32 or bf16. */
typedef struct host {
    regopt_dtype dt;
    float w[D * K], gw[D * K];
    uint16_t w16[D * K], g16[D * K];
    float x[N * D];
    int32_t y[N];
    int inject_at, backwards;
} host;

static float wv(const host *h, size_t i)
{
    float f;
    if (h->dt == REGOPT_DTYPE_FLOAT32)
        return h->w[i];
    ck_assert_int_eq(regopt_convert(&h->w16[i], h->dt, &f, REGOPT_DTYPE_FLOAT32, 1), REGOPT_OK);
    return f;
}

static void gadd(host *h, size_t i, float v)
{
    if (h->dt == REGOPT_DTYPE_FLOAT32) {
        h->gw[i] += v;
    } else {
        float f;
        ck_assert_int_eq(regopt_convert(&h->g16[i], h->dt, &f, REGOPT_DTYPE_FLOAT32, 1),
                         REGOPT_OK);
        f += v;
        ck_assert_int_eq(regopt_convert(&f, REGOPT_DTYPE_FLOAT32, &h->g16[i], h->dt, 1),
                         REGOPT_OK);
    }
}

static int fwd(const regopt_pass *p, void *user)
{
    host *h = user;
    const float *x = (const float *)p->batch + p->row_offset * D;
    size_t r, j, c;
    for (r = 0; r < p->rows; r++)
        for (c = 0; c < K; c++) {
            float z = 0;
            for (j = 0; j < D; j++) {
                float xi = x[(r % N) * D + j];
                if (p->input_perturbation)
                    xi += p->input_perturbation[r * D + j];
                z += xi * wv(h, j * K + c);
            }
            p->outputs[r * K + c] = z;
        }
    return 0;
}

static int bwd(const regopt_pass *p, void *user)
{
    host *h = user;
    const float *x = (const float *)p->batch + p->row_offset * D;
    size_t r, j, c;
    int call = h->backwards++;
    if (p->d_input)
        for (r = 0; r < p->input_rows; r++)
            for (j = 0; j < D; j++) {
                float s = 0;
                for (c = 0; c < K; c++)
                    s += wv(h, j * K + c) * p->d_outputs[r * K + c];
                p->d_input[r * D + j] = s;
            }
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD) { /* SMART's ascent: d_input only */
        if (call == h->inject_at && p->d_input)
            p->d_input[0] = INFINITY;
        return 0;
    }
    for (j = 0; j < D; j++)
        for (c = 0; c < K; c++) {
            float s = 0;
            for (r = 0; r < p->rows; r++)
                s += x[(r % N) * D + j] * p->d_outputs[r * K + c];
            gadd(h, j * K + c, s);
        }
    if (call == h->inject_at)
        gadd(h, 0, INFINITY);
    return 0;
}

typedef struct run {
    host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_batch b;
} run;

static void open_run(run *r, regopt_dtype dt, int scaling)
{
    regopt_status st;
    size_t i;
    memset(r, 0, sizeof *r);
    r->h.dt = dt;
    r->h.inject_at = -1;
    for (i = 0; i < D * K; i++) {
        r->h.w[i] = (float)((int)(i * 5 % 9) - 4) / 16.0f;
        MUST(regopt_convert(&r->h.w[i], REGOPT_DTYPE_FLOAT32, &r->h.w16[i],
                            REGOPT_DTYPE_BFLOAT16, 1));
    }
    for (i = 0; i < N * D; i++)
        r->h.x[i] = sinf((float)i);
    for (i = 0; i < N; i++)
        r->h.y[i] = (int32_t)(i % K);
    r->m = regopt_model_create(NULL, &st);
    if (dt == REGOPT_DTYPE_FLOAT32)
        MUST(regopt_model_add_param(r->m, "w", r->h.w, r->h.gw, D * K, dt, 0));
    else
        MUST(regopt_model_add_param(r->m, "w", r->h.w16, r->h.g16, D * K, dt, 0));
    MUST(regopt_model_set_output_width(r->m, K));
    MUST(regopt_model_set_input_width(r->m, D));
    MUST(regopt_model_set_slots(r->m, 4));
    MUST(regopt_model_set_capabilities(r->m, REGOPT_CAP_DOUBLED_BATCH));
    MUST(regopt_model_set_callbacks(r->m, fwd, bwd, &r->h, NULL));
    r->o = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.01));
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_ptr_nonnull(r->t);
    if (scaling)
        TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_LOSS_SCALING,
                                           REGOPT_SCALING_DYNAMIC));
    regopt_batch_init(&r->b);
    r->b.data = r->h.x;
    r->b.rows = N;
    r->b.labels = r->h.y;
}

static void close_run(run *r)
{
    MUST(regopt_trainer_free(r->t));
    tu_free_regs();
    MUST(regopt_optimizer_free(r->o));
    MUST(regopt_model_free(r->m));
}

static void step(run *r)
{
    ck_assert_msg(regopt_trainer_step(r->t, &r->b, 1) == REGOPT_OK, "%s",
                  regopt_trainer_message(r->t));
}

/* Each method, scaled (2^16, growing every 2 steps) and unscaled, float32
 * buffers: the same bits. */
static void same_bits_with(regopt_regularizer_kind k1, regopt_regularizer_kind k2)
{
    run a, b;
    int i;
    open_run(&a, REGOPT_DTYPE_FLOAT32, 0);
    open_run(&b, REGOPT_DTYPE_FLOAT32, 1);
    TMUST(b.t, regopt_trainer_set_int(b.t, REGOPT_TRAINER_SCALE_INTERVAL, 2));
    tu_add(a.t, k1);
    tu_add(b.t, k1);
    if (k2) {
        tu_add(a.t, k2);
        tu_add(b.t, k2);
    }
    for (i = 0; i < 5; i++) {
        step(&a);
        step(&b);
        ck_assert_msg(memcmp(a.h.w, b.h.w, sizeof a.h.w) == 0, "step %d", i);
        ck_assert_double_eq(stat(a.t, REGOPT_STAT_OBJECTIVE), stat(b.t, REGOPT_STAT_OBJECTIVE));
    }
    ck_assert_double_eq(stat(b.t, REGOPT_STAT_LOSS_SCALE), 65536.0 * 4);
    close_run(&a);
    close_run(&b);
}

START_TEST(rdrop_scaled_is_unscaled) { same_bits_with(REGOPT_REG_RDROP, 0); }
END_TEST

START_TEST(smart_scaled_is_unscaled) { same_bits_with(REGOPT_REG_SMART, REGOPT_REG_BREGMAN); }
END_TEST

START_TEST(smart_sam_scaled_is_unscaled) { same_bits_with(REGOPT_REG_SMART, REGOPT_REG_SAM); }
END_TEST

/* bf16 with the teacher and SMART: an overflow in any backward (SMART's
 * d_input-only ones included) skips the step and leaves the teacher as
 * it was: the checkpoints before and after differ only in the scale. */
START_TEST(teacher_and_smart_skip_in_every_backward)
{
    int at;
    for (at = 0; at < 3; at++) { /* a step makes 3 backward calls */
        run r;
        size_t n1, n2;
        unsigned char *c1, *c2;
        uint16_t w0[D * K];
        open_run(&r, REGOPT_DTYPE_BFLOAT16, 1);
        tu_add(r.t, REGOPT_REG_SMART);
        tu_add(r.t, REGOPT_REG_BREGMAN);
        step(&r);
        memcpy(w0, r.h.w16, sizeof w0);
        MUST(regopt_trainer_checkpoint_size(r.t, 1, &n1));
        c1 = malloc(n1);
        MUST(regopt_trainer_save_buffer(r.t, 1, c1, n1, NULL));
        r.h.inject_at = r.h.backwards + at;
        step(&r);
        ck_assert_msg(stat_int(r.t, REGOPT_STAT_SKIPPED) == 1, "backward %d of %g", at,
                      stat(r.t, REGOPT_STAT_BACKWARD_CALLS));
        ck_assert(memcmp(w0, r.h.w16, sizeof w0) == 0);
        MUST(regopt_trainer_checkpoint_size(r.t, 1, &n2));
        ck_assert_uint_eq(n1, n2);
        c2 = malloc(n2);
        MUST(regopt_trainer_save_buffer(r.t, 1, c2, n2, NULL));
        { /* every byte but the scale, counter and skip count, and the CRCs */
            size_t i, diff = 0;
            for (i = 32; i < n1; i++)
                diff += c1[i] != c2[i];
            ck_assert_uint_le(diff, 24 + 8); /* the 24 bytes + one section CRC */
        }
        free(c1);
        free(c2);
        close_run(&r);
    }
}
END_TEST

/* ---- data parallel: an overflow on one replica skips the step on all ---- */

typedef struct comm {
    pthread_barrier_t bar;
    float sum[256];
} comm;

typedef struct rep {
    comm *c;
    int rank;
    run r;
    regopt_status st[3];
} rep;

static int allreduce(float *buf, size_t n, void *user)
{
    rep *p = user;
    size_t i;
    int k;
    if (n > 256)
        return 99;
    for (k = 0; k < 2; k++) {
        if (k == p->rank) {
            if (k == 0)
                memset(p->c->sum, 0, n * sizeof(float));
            for (i = 0; i < n; i++)
                p->c->sum[i] += buf[i];
        }
        pthread_barrier_wait(&p->c->bar);
    }
    memcpy(buf, p->c->sum, n * sizeof(float));
    pthread_barrier_wait(&p->c->bar);
    return 0;
}

static void *replica_main(void *arg)
{
    rep *p = arg;
    int s;
    for (s = 0; s < 3; s++) {
        if (s == 1 && p->rank == 1)
            p->r.h.inject_at = p->r.h.backwards + 1; /* SAM's second pass, one replica */
        p->st[s] = regopt_trainer_step(p->r.t, &p->r.b, 1);
    }
    return NULL;
}

START_TEST(replicas_agree_on_a_skip)
{
    comm c;
    rep p[2];
    pthread_t th[2];
    int i;
    pthread_barrier_init(&c.bar, NULL, 2);
    for (i = 0; i < 2; i++) {
        p[i].c = &c;
        p[i].rank = i;
        open_run(&p[i].r, REGOPT_DTYPE_BFLOAT16, 1);
        p[i].r.b.data = p[i].r.h.x + i * (N / 2) * D;
        p[i].r.b.rows = N / 2;
        p[i].r.b.labels = p[i].r.h.y + i * (N / 2);
        MUST(regopt_trainer_set_allreduce(p[i].r.t, allreduce, &p[i], NULL));
        tu_add(p[i].r.t, REGOPT_REG_SAM);
    }
    for (i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, replica_main, &p[i]);
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < 2; i++) {
        ck_assert_int_eq(p[i].st[0], REGOPT_OK);
        ck_assert_int_eq(p[i].st[1], REGOPT_OK);
        ck_assert_int_eq(p[i].st[2], REGOPT_OK);
        ck_assert_int_eq(stat_int(p[i].r.t, REGOPT_STAT_SKIPPED_STEPS), 1);
        ck_assert_int_eq(stat_int(p[i].r.t, REGOPT_STAT_STEP), 2);
        ck_assert_double_eq(stat(p[i].r.t, REGOPT_STAT_LOSS_SCALE), 32768.0);
    }
    ck_assert(memcmp(p[0].r.h.w16, p[1].r.h.w16, sizeof p[0].r.h.w16) == 0);
    for (i = 0; i < 2; i++)
        close_run(&p[i].r);
    pthread_barrier_destroy(&c.bar);
}
END_TEST

Suite *suite_precision_compose(void)
{
    Suite *s = suite_create("precision_compose");
    TCase *c = tcase_create("methods");
    tcase_set_timeout(c, 60);
    tcase_add_test(c, rdrop_scaled_is_unscaled);
    tcase_add_test(c, smart_scaled_is_unscaled);
    tcase_add_test(c, smart_sam_scaled_is_unscaled);
    tcase_add_test(c, teacher_and_smart_skip_in_every_backward);
    tcase_add_test(c, replicas_agree_on_a_skip);
    suite_add_tcase(s, c);
    return s;
}
