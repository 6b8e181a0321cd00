/* check_parallel.c — data-parallel steps: replicas in threads, summing
 * through a shared buffer, must agree bit for bit with each other and with
 * one process that sees the whole batch. */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c11 */
#include "tests.h"

#include "test_host.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define R 2        /* replicas */
#define ROWS 12    /* global batch */
#define COMM_MAX 4096 /* floats: the gradients plus the library's few extras */

/* An in-process all-reduce over R threads: each adds its buffer into the
 * shared sum (in replica order, so every run sums identically), then copies
 * the total back. */
typedef struct comm {
    pthread_barrier_t bar;
    float *sum;
    size_t count;
    int fail_rank; /* this rank's callback returns 4; -1 = none */
    int calls[R];
} comm;

typedef struct replica {
    comm *c;
    int rank;
    th_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    float x[ROWS * TH_D];
    int32_t y[ROWS];
    size_t first, rows; /* this replica's shard of the global batch */
    int steps;
    regopt_status last;
} replica;

static int allreduce(float *buf, size_t n, void *user)
{
    replica *r = user;
    comm *c = r->c;
    int k;
    size_t i;
    c->calls[r->rank]++;
    if (n > COMM_MAX)
        return 99;
    for (k = 0; k < R; k++) { /* take turns: deterministic summation order */
        if (k == r->rank) {
            if (k == 0)
                memset(c->sum, 0, n * sizeof(float));
            for (i = 0; i < n; i++)
                c->sum[i] += buf[i];
        }
        pthread_barrier_wait(&c->bar);
    }
    memcpy(buf, c->sum, n * sizeof(float));
    pthread_barrier_wait(&c->bar);
    return r->rank == c->fail_rank ? 4 : 0;
}

static void replica_open(replica *r, comm *c, int rank, size_t first, size_t rows)
{
    memset(r, 0, sizeof *r);
    r->c = c;
    r->rank = rank;
    r->first = first;
    r->rows = rows;
    th_init(&r->h);
    r->m = th_model(&r->h);
    r->o = regopt_optimizer_create(REGOPT_ADAM, NULL, NULL);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.01), REGOPT_OK);
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    if (c)
        ck_assert_int_eq(regopt_trainer_set_allreduce(r->t, allreduce, r, NULL), REGOPT_OK);
    th_data(r->x, r->y, rows, first);
}

static void replica_close(replica *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
}

static void *replica_run(void *arg)
{
    replica *r = arg;
    th_batch hb;
    regopt_batch b;
    int s;
    th_batch_of(&b, &hb, r->x, r->y, r->rows);
    for (s = 0; s < r->steps; s++) {
        r->last = regopt_trainer_step(r->t, &b, 1);
        if (r->last != REGOPT_OK)
            break;
    }
    return NULL;
}

static void run_replicas(replica *rs, int steps)
{
    pthread_t th[R];
    int k;
    for (k = 0; k < R; k++) {
        rs[k].steps = steps;
        ck_assert_int_eq(pthread_create(&th[k], NULL, replica_run, &rs[k]), 0);
    }
    for (k = 0; k < R; k++)
        pthread_join(th[k], NULL);
}

static void comm_open(comm *c)
{
    memset(c, 0, sizeof *c);
    pthread_barrier_init(&c->bar, NULL, R);
    c->sum = calloc(COMM_MAX, sizeof(float));
    c->fail_rank = -1;
}

static void comm_close(comm *c)
{
    pthread_barrier_destroy(&c->bar);
    free(c->sum);
}

/* Shards of unequal size (5 + 7 rows) still give the global mean. */
START_TEST(replicas_agree_with_one_process)
{
    comm c;
    replica rs[R], one;
    size_t i;
    double l0, l1, lone;
    comm_open(&c);
    replica_open(&rs[0], &c, 0, 0, 5);
    replica_open(&rs[1], &c, 1, 5, ROWS - 5);
    replica_open(&one, NULL, 0, 0, ROWS);
    run_replicas(rs, 4);
    ck_assert_int_eq(rs[0].last, REGOPT_OK);
    ck_assert_int_eq(rs[1].last, REGOPT_OK);
    ck_assert_int_eq(c.calls[0], 4);
    one.steps = 4;
    replica_run(&one);
    ck_assert_int_eq(one.last, REGOPT_OK);
    ck_assert_int_eq(memcmp(rs[0].h.w, rs[1].h.w, sizeof rs[0].h.w), 0);
    ck_assert_int_eq(memcmp(rs[0].h.b, rs[1].h.b, sizeof rs[0].h.b), 0);
    for (i = 0; i < TH_D * TH_K; i++)
        ck_assert_float_eq_tol(rs[0].h.w[i], one.h.w[i], 1e-5f);
    ck_assert_int_eq(regopt_trainer_get_double(rs[0].t, REGOPT_STAT_LOSS, &l0), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(rs[1].t, REGOPT_STAT_LOSS, &l1), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_double(one.t, REGOPT_STAT_LOSS, &lone), REGOPT_OK);
    ck_assert_double_eq(l0, l1);
    ck_assert_double_eq_tol(l0, lone, 1e-5);
    replica_close(&rs[0]);
    replica_close(&rs[1]);
    replica_close(&one);
    comm_close(&c);
}
END_TEST

/* One replica's forward fails: it still joins the all-reduce, so its peer
 * does not hang, and both roll back. */
START_TEST(a_failing_replica_stops_every_replica)
{
    comm c;
    replica rs[R];
    float w0[TH_D * TH_K], w1[TH_D * TH_K];
    int64_t s0, s1;
    comm_open(&c);
    replica_open(&rs[0], &c, 0, 0, 6);
    replica_open(&rs[1], &c, 1, 6, 6);
    run_replicas(rs, 2);
    memcpy(w0, rs[0].h.w, sizeof w0);
    memcpy(w1, rs[1].h.w, sizeof w1);
    rs[1].h.fail_forward = rs[1].h.forwards + 1;
    run_replicas(rs, 1);
    ck_assert_int_eq(rs[1].last, REGOPT_ERR_FORWARD);
    ck_assert_int_eq(rs[0].last, REGOPT_ERR_ALLREDUCE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(rs[0].t), "other replica"));
    ck_assert_int_eq(memcmp(w0, rs[0].h.w, sizeof w0), 0);
    ck_assert_int_eq(memcmp(w1, rs[1].h.w, sizeof w1), 0);
    ck_assert_int_eq(regopt_trainer_get_int(rs[0].t, REGOPT_STAT_STEP, &s0), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_get_int(rs[1].t, REGOPT_STAT_STEP, &s1), REGOPT_OK);
    ck_assert_int_eq(s0, 2);
    ck_assert_int_eq(s1, 2);
    /* and training goes on together */
    run_replicas(rs, 1);
    ck_assert_int_eq(rs[0].last, REGOPT_OK);
    ck_assert_int_eq(rs[1].last, REGOPT_OK);
    ck_assert_int_eq(memcmp(rs[0].h.w, rs[1].h.w, sizeof w0), 0);
    replica_close(&rs[0]);
    replica_close(&rs[1]);
    comm_close(&c);
}
END_TEST

/* A replica whose batch fails validation (a label out of range in its
 * shard only) joins the all-reduce anyway: no peer hangs. */
START_TEST(a_replica_with_a_bad_batch_does_not_hang_its_peers)
{
    comm c;
    replica rs[R];
    float w0[TH_D * TH_K];
    comm_open(&c);
    replica_open(&rs[0], &c, 0, 0, 6);
    replica_open(&rs[1], &c, 1, 6, 6);
    memcpy(w0, rs[0].h.w, sizeof w0);
    rs[1].y[2] = TH_K; /* out of range */
    run_replicas(rs, 1);
    ck_assert_int_eq(rs[1].last, REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(rs[0].last, REGOPT_ERR_ALLREDUCE);
    ck_assert_int_eq(c.calls[0], 1);
    ck_assert_int_eq(c.calls[1], 1);
    ck_assert_int_eq(memcmp(w0, rs[0].h.w, sizeof w0), 0);
    replica_close(&rs[0]);
    replica_close(&rs[1]);
    comm_close(&c);
}
END_TEST

START_TEST(a_failing_allreduce_is_reported)
{
    comm c;
    replica rs[R];
    float w0[TH_D * TH_K];
    comm_open(&c);
    replica_open(&rs[0], &c, 0, 0, 6);
    replica_open(&rs[1], &c, 1, 6, 6);
    memcpy(w0, rs[0].h.w, sizeof w0);
    c.fail_rank = 0;
    run_replicas(rs, 1);
    ck_assert_int_eq(rs[0].last, REGOPT_ERR_ALLREDUCE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(rs[0].t), "returned 4"));
    ck_assert_int_eq(memcmp(w0, rs[0].h.w, sizeof w0), 0);
    /* its own callback succeeded: the replicas now disagree, which is why the
       header calls a failing all-reduce callback fatal for the job */
    ck_assert_int_eq(rs[1].last, REGOPT_OK);
    replica_close(&rs[0]);
    replica_close(&rs[1]);
    comm_close(&c);
}
END_TEST

/* A replica holding only padding contributes nothing, and nothing fails. */
static int identity_reduce(float *buf, size_t n, void *user)
{
    (void)buf;
    (void)n;
    (void)user;
    return 0;
}

START_TEST(padding_only_shard_and_world_of_one)
{
    replica a, b;
    th_batch hb;
    regopt_batch batch;
    uint8_t none[ROWS] = {0};
    size_t i;
    replica_open(&a, NULL, 0, 0, ROWS);
    replica_open(&b, NULL, 0, 0, ROWS);
    ck_assert_int_eq(regopt_trainer_set_allreduce(b.t, identity_reduce, NULL, NULL), REGOPT_OK);
    a.steps = b.steps = 3;
    replica_run(&a);
    replica_run(&b);
    ck_assert_int_eq(b.last, REGOPT_OK);
    for (i = 0; i < TH_D * TH_K; i++) /* world of one = no all-reduce */
        ck_assert_float_eq_tol(a.h.w[i], b.h.w[i], 1e-6f);
    /* all padding in a world of one: no weight anywhere is an error */
    th_batch_of(&batch, &hb, b.x, b.y, ROWS);
    batch.mask = none;
    ck_assert_int_eq(regopt_trainer_step(b.t, &batch, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b.t), "all replicas"));
    ck_assert_int_eq(regopt_trainer_set_allreduce(NULL, identity_reduce, NULL, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_trainer_set_allreduce(b.t, NULL, NULL, NULL), REGOPT_OK);
    ck_assert_int_eq(regopt_trainer_step(b.t, &batch, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(b.t), "no weight"));
    replica_close(&a);
    replica_close(&b);
}
END_TEST

Suite *suite_parallel(void)
{
    Suite *s = suite_create("parallel");
    TCase *tc = tcase_create("allreduce");
    tcase_add_test(tc, replicas_agree_with_one_process);
    tcase_add_test(tc, a_failing_replica_stops_every_replica);
    tcase_add_test(tc, a_replica_with_a_bad_batch_does_not_hang_its_peers);
    tcase_add_test(tc, a_failing_allreduce_is_reported);
    tcase_add_test(tc, padding_only_shard_and_world_of_one);
    suite_add_tcase(s, tc);
    return s;
}
