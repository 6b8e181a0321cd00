/* check_average_share.c — an EMA average and a Bregman/MESA teacher of one
 * decay hold one buffer (src/reg/average.c): while they do, and after the
 * sharing ends (a decay changes, the teacher is detached, a checkpoint
 * loads), each must follow its own recurrence, recomputed here in double
 * and rounded per step (the library's EMA, src/reg/ema.c), bit for bit.
 * The bytes saved: check_memory.c. ASan catches a buffer used after the
 * teacher that owned it went. */
#include "tests.h"

#include "average_rig.h"

#define DECAY 0.75

typedef struct share_run {
    sm_run *r;
    regopt_regularizer *avg;
    float mirror[SW], tmirror[SW]; /* the average's and the teacher's recurrences */
    double decay, beta;            /* what each applies now */
    int step;
} share_run;

/* A 4 x 4 model (a whole vector block), MESA's teacher and an average of
 * one decay, attached together; `late`: the average attached after that
 * many steps instead (so it starts from other weights than the teacher). */
static void share_open(share_run *s, int late)
{
    sm_set b;
    memset(s, 0, sizeof *s);
    s->r = sm_open(4, 4, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    sm_bregman(s->r, 0.3, DECAY);
    sm_rset(s->r->breg, REGOPT_BREGMAN_BETA_LATE, DECAY);
    RMUST(s->r->breg, regopt_regularizer_set_int(s->r->breg, REGOPT_BREGMAN_DIVERGENCE,
                                                 REGOPT_BREGMAN_KL_TEACHER));
    s->decay = s->beta = DECAY;
    for (; s->step < late; s->step++) {
        sm_fill(&b, 2, 2, 1, 4, 4, 0, 0, 300 + (unsigned)s->step);
        sm_step(s->r, &b);
    }
    s->avg = sm_attach(s->r, REGOPT_REG_AVERAGE);
    sm_rset(s->avg, REGOPT_AVERAGE_DECAY, DECAY);
    av_weights(s->r, s->mirror);
    if (!late)
        memcpy(s->tmirror, s->mirror, sizeof s->mirror);
    else
        av_read(s->r, s->r->breg, s->tmirror);
}

/* n steps; after each, both buffers against their recurrences (the
 * teacher's only while it is attached). */
static void share_steps(share_run *s, int n)
{
    float w[SW], got[SW];
    size_t nw = av_n(s->r), i;
    sm_set b;
    for (; n > 0; n--, s->step++) {
        sm_fill(&b, 2, 2, 1, 4, 4, 0, 0, 300 + (unsigned)s->step);
        sm_step(s->r, &b);
        av_weights(s->r, w);
        for (i = 0; i < nw; i++) {
            s->mirror[i] = (float)(s->decay * (double)s->mirror[i] +
                                   (1.0 - s->decay) * (double)w[i]);
            s->tmirror[i] = (float)(s->beta * (double)s->tmirror[i] +
                                    (1.0 - s->beta) * (double)w[i]);
        }
        av_read(s->r, s->avg, got);
        ck_assert_msg(memcmp(got, s->mirror, nw * sizeof(float)) == 0,
                      "step %d: the average is not its recurrence", s->step);
        if (s->r->breg && regopt_regularizer_get_trainer(s->r->breg)) {
            av_read(s->r, s->r->breg, got);
            ck_assert_msg(memcmp(got, s->tmirror, nw * sizeof(float)) == 0,
                          "step %d: the teacher is not its recurrence", s->step);
        }
    }
}

/* The teacher's decay changes while shared: from the next step each keeps
 * its own EMA (the average copies the shared weights before the update). */
START_TEST(teacher_decay_changes)
{
    share_run s;
    share_open(&s, 0);
    share_steps(&s, 6);
    sm_rset(s.r->breg, REGOPT_BREGMAN_BETA, 0.5);
    sm_rset(s.r->breg, REGOPT_BREGMAN_BETA_LATE, 0.5);
    s.beta = 0.5;
    share_steps(&s, 6);
    sm_close(s.r);
}
END_TEST

/* The average's decay changes while shared: the same, the other way. */
START_TEST(average_decay_changes)
{
    share_run s;
    share_open(&s, 0);
    share_steps(&s, 6);
    sm_rset(s.avg, REGOPT_AVERAGE_DECAY, 0.6);
    s.decay = 0.6;
    share_steps(&s, 6);
    /* and back: the buffers differ now, so each keeps its own */
    sm_rset(s.avg, REGOPT_AVERAGE_DECAY, DECAY);
    s.decay = DECAY;
    share_steps(&s, 4);
    sm_close(s.r);
}
END_TEST

/* The teacher detached (and freed) while shared: the average keeps the
 * buffer and its EMA; swapping it in and out still works. Detached while
 * the average is swapped in, too (_i 1). */
START_TEST(teacher_detached)
{
    share_run s;
    regopt_regularizer *t;
    share_open(&s, 0);
    share_steps(&s, 5);
    t = s.r->breg;
    if (_i)
        RMUST(s.avg, regopt_regularizer_swap_average(s.avg));
    SM_TMUST(s.r->t, regopt_trainer_detach(s.r->t, t));
    SM_MUST(regopt_regularizer_free(t));
    s.r->breg = NULL;
    s.r->nregs = 0; /* sm_close frees the average itself below */
    if (_i)
        RMUST(s.avg, regopt_regularizer_swap_average(s.avg));
    share_steps(&s, 5);
    SM_MUST(regopt_trainer_free(s.r->t));
    s.r->t = NULL;
    SM_MUST(regopt_regularizer_free(s.avg));
    sm_close(s.r);
}
END_TEST

/* Resume: a checkpoint of a shared pair, loaded into a fresh shared pair,
 * continues both bit for bit; so does one of an average that started later
 * than its teacher (never shared: the loaded average must keep its own
 * weights, not the teacher's). _i: 0 shared, 1 late. */
START_TEST(resume)
{
    share_run a, b;
    static unsigned char buf[16384];
    size_t written = 0;
    share_open(&a, _i ? 3 : 0);
    share_steps(&a, 5);
    SM_TMUST(a.r->t, regopt_trainer_save_buffer(a.r->t, REGOPT_CHECKPOINT_PARAMS |
                                                            REGOPT_CHECKPOINT_OPTIONS,
                                                buf, sizeof buf, &written));
    share_open(&b, 0);
    share_steps(&b, 2); /* shared now, and other weights than the checkpoint's */
    SM_TMUST(b.r->t, regopt_trainer_load_buffer(b.r->t, REGOPT_CHECKPOINT_PARAMS |
                                                            REGOPT_CHECKPOINT_OPTIONS,
                                                buf, written));
    memcpy(b.mirror, a.mirror, sizeof a.mirror);
    memcpy(b.tmirror, a.tmirror, sizeof a.tmirror);
    b.step = a.step;
    share_steps(&a, 5);
    share_steps(&b, 5);
    sm_close(a.r);
    sm_close(b.r);
}
END_TEST

Suite *suite_average_share(void)
{
    Suite *s = suite_create("average_share");
    TCase *tc = tcase_create("share");
    tcase_add_test(tc, teacher_decay_changes);
    tcase_add_test(tc, average_decay_changes);
    tcase_add_loop_test(tc, teacher_detached, 0, 2);
    tcase_add_loop_test(tc, resume, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
