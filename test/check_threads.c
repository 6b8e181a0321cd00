/* check_threads.c — independent trainers in parallel threads. The library
 * keeps no shared mutable state (only the per-thread failure message), so
 * each trainer's run must be bit-identical whether it runs alone or next to
 * others, and each thread must read back its own failure message. */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c11 */
#include "tests.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define D 5        /* inputs */
#define K 3        /* classes */
#define ROWS 16    /* rows per micro-batch */
#define STEPS 40
#define CONFIGS 4  /* distinct configurations */
#define COPIES 2   /* threads per configuration in the parallel run */
#define ROUNDS 3   /* parallel runs: races show up by chance, so try more than once */

/* A linear classifier whose inputs go through dropout drawn from the pass
 * seed, so the trainer's seed stream is part of what must be reproduced. */
typedef struct host {
    float w[D * K], b[K], gw[D * K], gb[K];
    float xin[2 * ROWS * D]; /* dropped-out inputs of the last forward */
} host;

typedef struct data {
    float x[ROWS * D];
    int32_t y[ROWS];
} data;

static int forward(const regopt_pass *p, void *user)
{
    host *h = user;
    const data *dt = p->batch;
    float u[ROWS * D];
    size_t i, j, k, n = p->rows * D;
    if (p->rows > ROWS || regopt_random_uniform(p->seed, 0, u, n) != REGOPT_OK)
        return 1;
    for (i = 0; i < n; i++) {
        float x = dt->x[p->row_offset * D + i];
        h->xin[i] = (p->flags & REGOPT_PASS_TRAIN) ? (u[i] < 0.2f ? 0.0f : x / 0.8f) : x;
    }
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < K; k++) {
            float z = h->b[k];
            for (j = 0; j < D; j++)
                z += h->xin[i * D + j] * h->w[j * K + k];
            p->outputs[i * K + k] = z;
        }
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i, j, k;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < K; k++) {
            float d = p->d_outputs[i * K + k];
            h->gb[k] += d;
            for (j = 0; j < D; j++)
                h->gw[j * K + k] += h->xin[i * D + j] * d;
        }
    return 0;
}

/* What a run leaves behind: weights and every step's loss, compared as bits. */
typedef struct result {
    float w[D * K], b[K];
    double loss[STEPS];
    regopt_status st;
    int line; /* where it failed, 0 = ok */
} result;

typedef struct job {
    int config;
    result r;
} job;

#define TRY(r, call)                                   \
    do {                                               \
        if (((r)->st = (call)) != REGOPT_OK) {         \
            (r)->line = __LINE__;                      \
            goto done;                                 \
        }                                              \
    } while (0)

/* One full training run of configuration c; no Check assertions here, as
 * they must not fire outside the test's own thread. */
static void run(int c, result *r)
{
    host h;
    data dt[2];
    regopt_model *m = NULL;
    regopt_optimizer *o = NULL;
    regopt_trainer *t = NULL;
    regopt_regularizer *sam = NULL, *rdrop = NULL;
    static const regopt_optimizer_kind kinds[CONFIGS] = {REGOPT_ADAMW, REGOPT_SGD, REGOPT_ADAM,
                                                         REGOPT_RADAM};
    size_t i;
    int s;

    memset(r, 0, sizeof *r);
    memset(&h, 0, sizeof h);
    for (i = 0; i < D * K; i++)
        h.w[i] = 0.05f * (float)((int)(i * 5 % 9) - 4);
    if (!(m = regopt_model_create(NULL, &r->st))) {
        r->line = __LINE__;
        goto done;
    }
    TRY(r, regopt_model_add_param(m, "w", h.w, h.gw, D * K, REGOPT_DTYPE_FLOAT32, 0));
    TRY(r, regopt_model_add_param(m, "b", h.b, h.gb, K, REGOPT_DTYPE_FLOAT32, 1));
    TRY(r, regopt_model_set_output_width(m, K));
    TRY(r, regopt_model_set_slots(m, 2)); /* R-Drop's second pass */
    TRY(r, regopt_model_set_callbacks(m, forward, backward, &h, NULL));
    if (!(o = regopt_optimizer_create(kinds[c], NULL, &r->st))) {
        r->line = __LINE__;
        goto done;
    }
    TRY(r, regopt_optimizer_set_double(o, REGOPT_OPT_LR, c == 1 ? 0.1 : 0.02));
    if (c == 1)
        TRY(r, regopt_optimizer_set_double(o, REGOPT_OPT_MOMENTUM, 0.9));
    if (c == 3) {
        TRY(r, regopt_optimizer_set_int(o, REGOPT_OPT_SCHEDULE, REGOPT_SCHEDULE_COSINE));
        TRY(r, regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, 5));
        TRY(r, regopt_optimizer_set_int(o, REGOPT_OPT_TOTAL_STEPS, STEPS));
        TRY(r, regopt_optimizer_set_double(o, REGOPT_OPT_CLIP_NORM, 0.5));
    }
    if (!(t = regopt_trainer_create(m, o, &r->st))) {
        r->line = __LINE__;
        goto done;
    }
    TRY(r, regopt_trainer_set_int(t, REGOPT_TRAINER_SEED, 1000 + c));
    if (c == 1) { /* ASAM */
        if (!(sam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &r->st))) {
            r->line = __LINE__;
            goto done;
        }
        TRY(r, regopt_trainer_attach(t, sam));
        TRY(r, regopt_regularizer_set_int(sam, REGOPT_SAM_ADAPTIVE, 1));
        TRY(r, regopt_regularizer_set_double(sam, REGOPT_SAM_RHO, 0.2));
    } else if (c == 2) {
        if (!(rdrop = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, &r->st))) {
            r->line = __LINE__;
            goto done;
        }
        TRY(r, regopt_trainer_attach(t, rdrop));
        TRY(r, regopt_regularizer_set_double(rdrop, REGOPT_RDROP_ALPHA, 1.0));
    } else if (c == 3) { /* GSAM with R-Drop, two micro-batches a step */
        if (!(sam = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &r->st))) {
            r->line = __LINE__;
            goto done;
        }
        TRY(r, regopt_trainer_attach(t, sam));
        TRY(r, regopt_regularizer_set_int(sam, REGOPT_SAM_GSAM, 1));
        TRY(r, regopt_regularizer_set_int(sam, REGOPT_SAM_RHO_FOLLOWS_LR, 1));
        if (!(rdrop = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, &r->st))) {
            r->line = __LINE__;
            goto done;
        }
        TRY(r, regopt_trainer_attach(t, rdrop));
    }
    for (s = 0; s < STEPS; s++) {
        regopt_batch b[2];
        size_t n = c == 3 ? 2 : 1, mb, j;
        for (mb = 0; mb < n; mb++) {
            for (i = 0; i < ROWS; i++) {
                size_t row = ((size_t)s * n + mb) * ROWS + i;
                size_t q = row * 7 % 11; /* the class follows x[0]: learnable */
                for (j = 0; j < D; j++)
                    dt[mb].x[i * D + j] = (float)((double)((q + j * 3) % 11) / 5.0 - 1.0);
                dt[mb].y[i] = q < 4 ? 0 : q < 8 ? 1 : 2;
            }
            regopt_batch_init(&b[mb]);
            b[mb].data = &dt[mb];
            b[mb].rows = ROWS;
            b[mb].labels = dt[mb].y;
        }
        TRY(r, regopt_trainer_step(t, b, n));
        TRY(r, regopt_trainer_get_double(t, REGOPT_STAT_LOSS, &r->loss[s]));
    }
    memcpy(r->w, h.w, sizeof h.w);
    memcpy(r->b, h.b, sizeof h.b);
done:
    regopt_trainer_free(t); /* detaches the regularizers, then they can go */
    regopt_regularizer_free(sam);
    regopt_regularizer_free(rdrop);
    regopt_optimizer_free(o);
    regopt_model_free(m);
}

static void *run_job(void *arg)
{
    job *j = arg;
    run(j->config, &j->r);
    return NULL;
}

static void check_same(const result *got, const result *want, int config, const char *when)
{
    ck_assert_msg(got->line == 0, "config %d %s: %s at check_threads.c:%d", config, when,
                  regopt_status_string(got->st), got->line);
    ck_assert_msg(memcmp(got->w, want->w, sizeof got->w) == 0 &&
                      memcmp(got->b, want->b, sizeof got->b) == 0,
                  "config %d %s: weights differ from the run alone", config, when);
    ck_assert_msg(memcmp(got->loss, want->loss, sizeof got->loss) == 0,
                  "config %d %s: losses differ from the run alone", config, when);
}

START_TEST(parallel_trainers_match_sequential)
{
    result alone[CONFIGS];
    job jobs[CONFIGS * COPIES];
    pthread_t th[CONFIGS * COPIES];
    int c, i, round;

    for (c = 0; c < CONFIGS; c++) {
        run(c, &alone[c]);
        ck_assert_msg(alone[c].line == 0, "config %d alone: %s at check_threads.c:%d", c,
                      regopt_status_string(alone[c].st), alone[c].line);
        double first = 0, last = 0;
        for (i = 0; i < 5; i++) {
            first += alone[c].loss[i];
            last += alone[c].loss[STEPS - 1 - i];
        }
        ck_assert_msg(last < first, "config %d does not train: loss %g -> %g (5-step sums)",
                      c, first, last);
    }
    for (round = 0; round < ROUNDS; round++) {
        for (i = 0; i < CONFIGS * COPIES; i++) {
            jobs[i].config = i % CONFIGS;
            ck_assert_int_eq(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
        }
        for (i = 0; i < CONFIGS * COPIES; i++)
            ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        for (i = 0; i < CONFIGS * COPIES; i++)
            check_same(&jobs[i].r, &alone[jobs[i].config], jobs[i].config, "in a thread");
    }
}
END_TEST

/* regopt_last_error_message is per thread: every thread fails with its own
 * key at the same moment and must read back its own message. */
#define MSG_THREADS 6

typedef struct msg_job {
    pthread_barrier_t *bar;
    int id;
    char got[256];
    regopt_status st;
} msg_job;

static void *fail_and_read(void *arg)
{
    msg_job *j = arg;
    const char *name = NULL;
    pthread_barrier_wait(j->bar);
    j->st = regopt_key_info((regopt_key)(777000 + j->id), &name, NULL, NULL, NULL, NULL,
                            NULL);
    pthread_barrier_wait(j->bar); /* every thread has failed before any reads */
    snprintf(j->got, sizeof j->got, "%s", regopt_last_error_message());
    return NULL;
}

START_TEST(failure_messages_are_per_thread)
{
    pthread_barrier_t bar;
    msg_job jobs[MSG_THREADS];
    pthread_t th[MSG_THREADS];
    int i;
    ck_assert_int_eq(pthread_barrier_init(&bar, NULL, MSG_THREADS), 0);
    for (i = 0; i < MSG_THREADS; i++) {
        jobs[i].bar = &bar;
        jobs[i].id = i;
        ck_assert_int_eq(pthread_create(&th[i], NULL, fail_and_read, &jobs[i]), 0);
    }
    for (i = 0; i < MSG_THREADS; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&bar);
    for (i = 0; i < MSG_THREADS; i++) {
        char want[32];
        snprintf(want, sizeof want, "%d", 777000 + i);
        ck_assert_int_eq(jobs[i].st, REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_msg(strstr(jobs[i].got, want) != NULL, "thread %d read \"%s\"", i,
                      jobs[i].got);
    }
}
END_TEST

Suite *suite_threads(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("threads");
    tcase_set_timeout(tc, 120); /* valgrind and sanitizers are slow */
    tcase_add_test(tc, parallel_trainers_match_sequential);
    tcase_add_test(tc, failure_messages_are_per_thread);
    suite_add_tcase(s, tc);
    return s;
}
