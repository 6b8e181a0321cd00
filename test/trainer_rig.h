/* trainer_rig.h — the rig of suite trainer (check_trainer*.c): a run of
 * the test host (test_host.h) with any optimizer and allocator, and bitwise
 * snapshots of everything a step may change. */
#ifndef REGOPT_TRAINER_RIG_H
#define REGOPT_TRAINER_RIG_H

#include "tests.h"

#include "test_host.h"
#include "test_util.h"

#include <stdlib.h>
#include <string.h>

#define N 8

typedef struct run {
    th_host h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    float x[4 * N * TH_D];
    int32_t y[4 * N];
    th_batch hb[4];
    regopt_batch b[4];
} run;

static inline run *run_open(regopt_optimizer_kind kind, const regopt_allocator *a)
{
    run *r = calloc(1, sizeof *r);
    int i;
    th_init(&r->h);
    r->m = regopt_model_create(a, NULL);
    ck_assert_int_eq(regopt_model_add_param(r->m, "W", r->h.w, r->h.gw, TH_D * TH_K,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_add_param(r->m, "b", r->h.b, r->h.gb, TH_K,
                                            REGOPT_DTYPE_FLOAT32, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(r->m, TH_K), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(r->m, th_forward, th_backward, &r->h, NULL),
                     REGOPT_OK);
    r->o = regopt_optimizer_create(kind, a, NULL);
    ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.05), REGOPT_OK);
    if (kind == REGOPT_SGD)
        ck_assert_int_eq(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9),
                         REGOPT_OK);
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    th_data(r->x, r->y, 4 * N, 0);
    for (i = 0; i < 4; i++)
        th_batch_of(&r->b[i], &r->hb[i], r->x + i * N * TH_D, r->y + i * N, N);
    return r;
}

static inline void run_close(run *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

static inline void must_step(run *r, int which)
{
    regopt_status st = regopt_trainer_step(r->t, &r->b[which % 4], 1);
    ck_assert_msg(st == REGOPT_OK, "step: %s", regopt_trainer_message(r->t));
}

static inline int64_t steps_of(run *r)
{
    int64_t s = -1;
    ck_assert_int_eq(regopt_trainer_get_int(r->t, REGOPT_STAT_STEP, &s), REGOPT_OK);
    return s;
}
/* ---- snapshots ---------------------------------------------------------- */

typedef struct snapshot {
    float w[TH_D * TH_K], b[TH_K];
    int64_t step;
    double loss;
} snapshot;

static inline void snap(run *r, snapshot *s)
{
    memcpy(s->w, r->h.w, sizeof s->w);
    memcpy(s->b, r->h.b, sizeof s->b);
    s->step = steps_of(r);
    ck_assert_int_eq(regopt_trainer_get_double(r->t, REGOPT_STAT_LOSS, &s->loss), REGOPT_OK);
}

static inline void same_bits(const snapshot *a, const snapshot *b)
{
    ck_assert_int_eq(memcmp(a->w, b->w, sizeof a->w), 0);
    ck_assert_int_eq(memcmp(a->b, b->b, sizeof a->b), 0);
    ck_assert_int_eq(a->step, b->step);
    ck_assert_int_eq(memcmp(&a->loss, &b->loss, sizeof a->loss), 0);
}

enum fault { F_FORWARD, F_BACKWARD, F_NAN_OUTPUT, F_INF_GRAD };

/* Train 3 steps, make step 4 fail in the given way, then train 3 more: the
 * failed step must leave every bit as it was, and the run must continue
 * exactly as a run that never failed (so the optimizer moments, the step
 * count and the RNG position were untouched too). */
/* The test cases past the step and memory, in their files. */
TCase *trainer_rollback_tcase(void); /* check_trainer_rollback.c */
TCase *trainer_inputs_tcase(void);   /* check_trainer_inputs.c */

#endif
