/* check_average.c — weight averaging (REGOPT_REG_AVERAGE): EMA with each
 * warm-up and SWA against recurrences recomputed here over 50 steps, the
 * swap for evaluation (bit-exact, refused steps and checkpoints while
 * swapped), batch-norm recalibration passes, rollback, resume, bad inputs.
 * The host: smart_rig.h's linear model (weights A then b). */
#include "tests.h"

#include "average_rig.h"

#define AV_STEPS 50

static sm_run *av_open(regopt_regularizer **g)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    *g = sm_attach(r, REGOPT_REG_AVERAGE);
    return r;
}

static void av_set_int(regopt_regularizer *g, regopt_key key, int64_t v)
{
    RMUST(g, regopt_regularizer_set_int(g, key, v));
}

/* b_n of the EMA's n-th update (0-based), from METHODS2.md's definitions. */
static double av_ema_decay(int warmup, double decay, double gamma, double power,
                           double min_decay, uint64_t n)
{
    double b;
    switch (warmup) {
    case REGOPT_AVERAGE_WARMUP_TF:
        b = (1.0 + (double)n) / (10.0 + (double)n);
        return fmin(decay, b);
    case REGOPT_AVERAGE_WARMUP_TIMM:
        if (n == 0)
            return 0.0;
        b = 1.0 - pow(1.0 + (double)n / gamma, -power);
        return fmax(fmin(b, decay), min_decay);
    case REGOPT_AVERAGE_WARMUP_FIRST: return n == 0 ? 0.0 : decay;
    default: return decay;
    }
}

/* 50 steps of EMA or SWA; after each, the average against (1) the same
 * recurrence in double rounded to float per step, bit for bit, and (2) the
 * exact double recurrence (no rounding of the state), to 1e-5. */
static void av_run(int mode, int warmup, double decay, int64_t start, int64_t every)
{
    const double gamma = 2.0, power = 0.75, min_decay = 0.2;
    regopt_regularizer *g;
    sm_run *r = av_open(&g);
    float w0[SW], w[SW], got[SW], mirror[SW];
    double exact[SW];
    uint64_t n = 0;
    size_t nw = av_n(r), i;
    int step;
    av_set_int(g, REGOPT_AVERAGE_MODE, mode);
    av_set_int(g, REGOPT_AVERAGE_WARMUP, warmup);
    sm_rset(g, REGOPT_AVERAGE_DECAY, decay);
    sm_rset(g, REGOPT_AVERAGE_WARMUP_GAMMA, gamma);
    sm_rset(g, REGOPT_AVERAGE_WARMUP_POWER, power);
    sm_rset(g, REGOPT_AVERAGE_MIN_DECAY, min_decay);
    av_set_int(g, REGOPT_AVERAGE_START, start);
    av_set_int(g, REGOPT_AVERAGE_EVERY, every);
    for (step = 0; step < AV_STEPS; step++) {
        sm_set s;
        int in = step >= start && (step - start) % every == 0;
        double kept = 1.0;
        av_weights(r, w0);
        sm_fill(&s, 2, 2, 1, 2, 3, step % 2, 0, (unsigned)step);
        sm_step(r, &s);
        av_weights(r, w);
        if (in && mode == REGOPT_AVERAGE_EMA) {
            double b = av_ema_decay(warmup, decay, gamma, power, min_decay, n);
            if (n == 0) /* the EMA starts from the weights before its first update */
                for (i = 0; i < nw; i++)
                    exact[i] = mirror[i] = w0[i];
            for (i = 0; i < nw; i++) {
                mirror[i] = (float)(b * (double)mirror[i] + (1.0 - b) * (double)w[i]);
                exact[i] = b * exact[i] + (1.0 - b) * (double)w[i];
            }
            kept = b;
        } else if (in) { /* SWA: the running mean of the counted weights */
            for (i = 0; i < nw; i++) {
                mirror[i] = n == 0 ? w[i]
                                   : (float)((double)mirror[i] +
                                             ((double)w[i] - (double)mirror[i]) / (double)(n + 1));
                exact[i] = n == 0 ? (double)w[i] : (exact[i] * (double)n + w[i]) / (double)(n + 1);
            }
            kept = (double)n / (double)(n + 1);
        }
        n += in;
        ck_assert_double_eq(rstat(g, REGOPT_STAT_AVERAGE_COUNT), (double)n);
        ck_assert_msg(rstat(g, REGOPT_STAT_AVERAGE_DECAY) == kept,
                      "step %d: average.decay_used %.17g, want %.17g", step,
                      rstat(g, REGOPT_STAT_AVERAGE_DECAY), kept);
        if (n == 0) {
            ck_assert_int_eq(regopt_regularizer_swap_average(g), REGOPT_ERR_STATE);
            continue;
        }
        av_read(r, g, got);
        for (i = 0; i < nw; i++) {
            ck_assert_msg(memcmp(&got[i], &mirror[i], sizeof(float)) == 0,
                          "step %d element %zu: %.9g, recurrence %.9g", step, i, got[i],
                          mirror[i]);
            sm_near(got[i], exact[i], 1e-5, 1e-2, "average vs exact", (int)(100 * step + i));
        }
    }
    /* the run moved the weights: the averages compared were not trivially w */
    ck_assert(memcmp(got, w, nw * sizeof(float)) != 0 || decay == 0.0);
    sm_close(r);
}

START_TEST(ema_no_warmup) { av_run(REGOPT_AVERAGE_EMA, REGOPT_AVERAGE_WARMUP_NONE, 0.9, 0, 1); }
END_TEST

START_TEST(ema_tf_warmup) { av_run(REGOPT_AVERAGE_EMA, REGOPT_AVERAGE_WARMUP_TF, 0.95, 0, 1); }
END_TEST

START_TEST(ema_timm_warmup) { av_run(REGOPT_AVERAGE_EMA, REGOPT_AVERAGE_WARMUP_TIMM, 0.9, 0, 1); }
END_TEST

START_TEST(ema_first_copies) { av_run(REGOPT_AVERAGE_EMA, REGOPT_AVERAGE_WARMUP_FIRST, 0.8, 0, 1); }
END_TEST

START_TEST(ema_start_every) { av_run(REGOPT_AVERAGE_EMA, REGOPT_AVERAGE_WARMUP_NONE, 0.7, 4, 3); }
END_TEST

START_TEST(swa_every_step) { av_run(REGOPT_AVERAGE_SWA, 0, 0.9998, 0, 1); }
END_TEST

START_TEST(swa_start_cycle) { av_run(REGOPT_AVERAGE_SWA, 0, 0.9998, 10, 4); }
END_TEST

/* The defaults and key bounds: what include/regopt.h documents. */
START_TEST(keys_and_defaults)
{
    regopt_status st;
    regopt_regularizer *g = regopt_regularizer_create(REGOPT_REG_AVERAGE, NULL, &st);
    double v;
    int64_t iv;
    regopt_key key;
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(regopt_regularizer_get_kind(g), REGOPT_REG_AVERAGE);
    RMUST(g, regopt_regularizer_get_double(g, REGOPT_AVERAGE_DECAY, &v));
    ck_assert_double_eq(v, 0.9998);
    RMUST(g, regopt_regularizer_get_double(g, REGOPT_AVERAGE_WARMUP_POWER, &v));
    ck_assert_double_eq(v, 2.0 / 3.0);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_AVERAGE_MODE, &iv));
    ck_assert_int_eq(iv, REGOPT_AVERAGE_EMA);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_AVERAGE_EVERY, &iv));
    ck_assert_int_eq(iv, 1);
    ck_assert_int_eq(regopt_key_from_name("average.decay", &key), REGOPT_OK);
    ck_assert_int_eq(key, REGOPT_AVERAGE_DECAY);
    ck_assert_int_eq(regopt_key_from_name("average.count", &key), REGOPT_OK);
    ck_assert_int_eq(key, REGOPT_STAT_AVERAGE_COUNT);
    /* out of range, NaN, wrong kind, statistics, wrong type: refused, unchanged */
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_AVERAGE_DECAY, 1.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_AVERAGE_DECAY, NAN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_AVERAGE_DECAY, -0.1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_AVERAGE_WARMUP_GAMMA, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_AVERAGE_WARMUP_POWER, 0.0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_AVERAGE_MODE, 2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_AVERAGE_WARMUP, 4),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_AVERAGE_EVERY, 0),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_AVERAGE_START, -1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_SAM_RHO, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_double(g, (regopt_key)1499, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_regularizer_set_int(g, REGOPT_STAT_AVERAGE_COUNT, 3),
                     REGOPT_ERR_STATE);
    RMUST(g, regopt_regularizer_get_double(g, REGOPT_AVERAGE_DECAY, &v));
    ck_assert_double_eq(v, 0.9998);
    /* swapping needs a trainer */
    ck_assert_int_eq(regopt_regularizer_swap_average(g), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(g), "not attached"));
    ck_assert_int_eq(regopt_regularizer_swap_average(NULL), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_recalibrate(NULL, NULL, 0), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_average_swapped(NULL), 0);
    ck_assert_int_eq(regopt_regularizer_average_swapped(g), 0);
    ck_assert_int_eq(regopt_regularizer_free(g), REGOPT_OK);
}
END_TEST

/* A step, a checkpoint save or load while swapped is refused with a message
 * that says what to do, and changes nothing; evaluation sees w_bar. */
START_TEST(refused_while_swapped)
{
    regopt_regularizer *g;
    sm_run *r = av_open(&g);
    float w[SW], w2[SW], avg[SW], out_w[SO * SK], out_avg[SO * SK];
    unsigned char buf[8192];
    size_t written = 0, nw = av_n(r);
    double stepc;
    sm_set s;
    int i;
    sm_rset(g, REGOPT_AVERAGE_DECAY, 0.5);
    for (i = 0; i < 3; i++) {
        sm_fill(&s, 1, 2, 1, 2, 3, 0, 0, (unsigned)i);
        sm_step(r, &s);
    }
    av_read(r, g, avg);
    SM_TMUST(r->t, regopt_trainer_evaluate(r->t, &s.b[0], NULL, out_w));
    av_weights(r, w);
    RMUST(g, regopt_regularizer_swap_average(g));
    SM_TMUST(r->t, regopt_trainer_evaluate(r->t, &s.b[0], NULL, out_avg));
    ck_assert(memcmp(out_w, out_avg, 2 * 3 * sizeof(float)) != 0);
    stepc = sm_get(r->t, REGOPT_STAT_STEP);
    ck_assert_int_eq(regopt_trainer_step(r->t, s.b, 1), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "regopt_regularizer_swap_average"));
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "regopt_trainer_step"));
    ck_assert_double_eq(sm_get(r->t, REGOPT_STAT_STEP), stepc);
    ck_assert_int_eq(regopt_trainer_save_buffer(r->t, 0, buf, sizeof buf, &written),
                     REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_load_buffer(r->t, 0, buf, sizeof buf), REGOPT_ERR_STATE);
    ck_assert_int_eq(regopt_trainer_save_file(r->t, 0, "/nonexistent/x.ckpt"), REGOPT_ERR_STATE);
    av_weights(r, w2);
    ck_assert(memcmp(w2, avg, nw * sizeof(float)) == 0); /* still w_bar */
    ck_assert_int_eq(rstat(g, REGOPT_STAT_AVERAGE_COUNT), 3);
    RMUST(g, regopt_regularizer_swap_average(g));
    av_weights(r, w2);
    ck_assert(memcmp(w2, w, nw * sizeof(float)) == 0);
    sm_step(r, &s); /* swapped back: steps again */
    ck_assert_int_eq(rstat(g, REGOPT_STAT_AVERAGE_COUNT), 4);
    sm_close(r);
}
END_TEST

/* Detach (and so freeing the trainer) while swapped puts w back first;
 * other kinds keep no average; two handles cannot both be swapped in. */
START_TEST(swap_rules)
{
    regopt_regularizer *g, *breg, *sam;
    sm_run *r = av_open(&g);
    float w[SW], w2[SW];
    size_t nw = av_n(r);
    sm_set s;
    ck_assert_int_eq(regopt_regularizer_swap_average(g), REGOPT_ERR_STATE); /* nothing yet */
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(g), "nothing to swap"));
    sm_bregman(r, 0.5, 0.5);
    breg = r->breg;
    sam = sm_attach(r, REGOPT_REG_SAM);
    ck_assert_int_eq(regopt_regularizer_swap_average(sam), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(regopt_trainer_attach(r->t, sm_new(r, REGOPT_REG_AVERAGE)),
                     REGOPT_ERR_STATE); /* one average per trainer */
    sm_fill(&s, 1, 2, 1, 2, 3, 0, 0, 1);
    sm_step(r, &s);
    sm_step(r, &s);
    av_weights(r, w);
    RMUST(g, regopt_regularizer_swap_average(g));
    ck_assert_int_eq(regopt_regularizer_swap_average(breg), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(breg), "swapped in already"));
    ck_assert_int_eq(regopt_regularizer_average_swapped(breg), 0);
    SM_TMUST(r->t, regopt_trainer_detach(r->t, g));
    ck_assert_int_eq(regopt_regularizer_average_swapped(g), 0);
    av_weights(r, w2);
    ck_assert(memcmp(w, w2, nw * sizeof(float)) == 0);
    /* attached again: the average starts over */
    SM_TMUST(r->t, regopt_trainer_attach(r->t, g));
    ck_assert_int_eq(regopt_regularizer_swap_average(g), REGOPT_ERR_STATE);
    sm_step(r, &s);
    av_weights(r, w);
    RMUST(g, regopt_regularizer_swap_average(g));
    av_weights(r, w2);
    ck_assert(memcmp(w, w2, nw * sizeof(float)) != 0);
    ck_assert_int_eq(regopt_trainer_free(r->t), REGOPT_OK); /* swaps back, then frees */
    r->t = NULL;
    av_weights(r, w2);
    ck_assert(memcmp(w, w2, nw * sizeof(float)) == 0);
    ck_assert_int_eq(regopt_regularizer_average_swapped(g), 0);
    sm_close(r);
}
END_TEST

/* The Bregman teacher is an EMA too: swapping the Bregman handle puts in
 * the weights its next teacher forward will see (one buffer for MESA's
 * teacher and its evaluation). */
START_TEST(bregman_teacher_swaps)
{
    sm_run *r = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    float tw[SW], w[SW], w2[SW];
    size_t nw = av_n(r);
    const sm_rec *c;
    sm_set s;
    sm_bregman(r, 1.0, 0.6);
    ck_assert_int_eq(regopt_regularizer_swap_average(r->breg), REGOPT_ERR_STATE);
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 3);
    sm_step(r, &s);
    sm_step(r, &s);
    av_weights(r, w);
    RMUST(r->breg, regopt_regularizer_swap_average(r->breg));
    av_weights(r, tw);
    RMUST(r->breg, regopt_regularizer_swap_average(r->breg));
    av_weights(r, w2);
    ck_assert(memcmp(w, w2, nw * sizeof(float)) == 0);
    ck_assert(memcmp(w, tw, nw * sizeof(float)) != 0);
    sm_reset(r);
    sm_step(r, &s);
    c = sm_must_find(&r->h, 0, 0, 0, REGOPT_PASS_TEACHER, 0, 0);
    ck_assert(memcmp(c->w, tw, r->h.k * r->h.d * sizeof(float)) == 0);
    ck_assert(memcmp(c->w + SK * SD, tw + r->h.k * r->h.d, r->h.k * sizeof(float)) == 0);
    sm_close(r);
}
END_TEST

/* One recurrence (src/reg/ema.c): MESA's teacher and an EMA average of the
 * same decay, no warm-up, hold the same bits after every step -- so a MESA
 * user evaluates the teacher and needs no second buffer -- and both equal
 * the average's recurrence recomputed here in double, rounded per step. */
START_TEST(teacher_is_the_average)
{
    /* 4 x 4: A is one whole 16-element block (the vector path), b a tail */
    sm_run *r = sm_open(4, 4, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    regopt_regularizer *g = sm_attach(r, REGOPT_REG_AVERAGE);
    float tw[SW], avg[SW], w[SW], mirror[SW];
    size_t nw = av_n(r), i;
    const double decay = 0.75;
    sm_set s;
    int step;
    sm_bregman(r, 0.3, decay);
    sm_rset(r->breg, REGOPT_BREGMAN_BETA_LATE, decay);
    RMUST(r->breg, regopt_regularizer_set_int(r->breg, REGOPT_BREGMAN_DIVERGENCE,
                                              REGOPT_BREGMAN_KL_TEACHER));
    sm_rset(r->breg, REGOPT_BREGMAN_TAU, 2.0);
    sm_rset(g, REGOPT_AVERAGE_DECAY, decay);
    av_weights(r, mirror);
    for (step = 0; step < AV_STEPS; step++) {
        sm_fill(&s, 2, 2, 1, 4, 4, 0, 0, 200 + (unsigned)step);
        sm_step(r, &s);
        av_weights(r, w);
        for (i = 0; i < nw; i++)
            mirror[i] = (float)(decay * (double)mirror[i] + (1.0 - decay) * (double)w[i]);
        av_read(r, g, avg);
        av_read(r, r->breg, tw);
        ck_assert_msg(memcmp(avg, tw, nw * sizeof(float)) == 0,
                      "step %d: the teacher and the average differ", step);
        ck_assert_msg(memcmp(avg, mirror, nw * sizeof(float)) == 0,
                      "step %d: the average is not the recurrence", step);
    }
    ck_assert(memcmp(avg, w, nw * sizeof(float)) != 0);
    sm_close(r);
}
END_TEST

/* A weight the host made non-finite between steps, under SGD without
 * momentum (whose update would keep it as it is): the step is refused
 * (here by its loss, which the weight makes NaN first; a weight that does
 * not reach the loss is refused by name: RO_REG_TAKES_WEIGHTS, as the
 * Bregman teacher), and the average and its count are as before. */
START_TEST(nonfinite_weight_refused)
{
    regopt_regularizer *g;
    sm_run *r = av_open(&g);
    float avg0[SW], avg1[SW];
    size_t nw = av_n(r);
    int64_t n0 = -1, n1 = -1;
    sm_set s;
    SM_MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.0));
    sm_rset(g, REGOPT_AVERAGE_DECAY, 0.5);
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 7);
    sm_step(r, &s);
    sm_step(r, &s);
    av_read(r, g, avg0);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_STAT_AVERAGE_COUNT, &n0));
    r->h.A[1] = NAN;
    ck_assert_int_eq(regopt_trainer_step(r->t, s.b, 2), REGOPT_ERR_NONFINITE_LOSS);
    ck_assert(isnan(r->h.A[1]));
    r->h.A[1] = 0.5f;
    av_read(r, g, avg1);
    ck_assert(memcmp(avg0, avg1, nw * sizeof(float)) == 0);
    RMUST(g, regopt_regularizer_get_int(g, REGOPT_STAT_AVERAGE_COUNT, &n1));
    ck_assert_int_eq(n0, n1);
    sm_close(r);
}
END_TEST

/* Recalibration: one TRAIN | NO_GRAD | RECALIBRATE forward per batch, in
 * order, on the averaged weights; only while swapped; failures reported. */
START_TEST(recalibrate_passes)
{
    regopt_regularizer *g;
    sm_run *r = av_open(&g);
    float avg[SW];
    size_t nw = av_n(r), kd = r->h.k * r->h.d;
    sm_set s;
    int i;
    sm_rset(g, REGOPT_AVERAGE_DECAY, 0.5);
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 4);
    for (i = 0; i < 3; i++)
        sm_step(r, &s);
    ck_assert_int_eq(regopt_regularizer_recalibrate(g, s.b, 2), REGOPT_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(regopt_regularizer_message(g), "not swapped in"));
    av_read(r, g, avg);
    RMUST(g, regopt_regularizer_swap_average(g));
    ck_assert_int_eq(regopt_regularizer_recalibrate(g, NULL, 2), REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_regularizer_recalibrate(g, s.b, 0), REGOPT_ERR_INVALID_ARGUMENT);
    sm_reset(r);
    RMUST(g, regopt_regularizer_recalibrate(g, s.b, 2));
    ck_assert_int_eq(r->h.nrec, 2);
    ck_assert_int_eq(r->h.backwards, 0);
    for (i = 0; i < 2; i++) {
        const sm_rec *c = &r->h.rec[i];
        ck_assert(!c->backward);
        ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN | REGOPT_PASS_NO_GRAD |
                                        REGOPT_PASS_RECALIBRATE);
        ck_assert_uint_eq(c->micro_batch, (size_t)i);
        ck_assert_int_eq(c->slot, 0);
        ck_assert(memcmp(c->w, avg, kd * sizeof(float)) == 0);
        ck_assert(memcmp(c->w + SK * SD, avg + kd, (nw - kd) * sizeof(float)) == 0);
    }
    /* a failing forward: the status names it; still swapped */
    sm_reset(r);
    r->h.fail_forward = 2;
    ck_assert_int_ne(regopt_regularizer_recalibrate(g, s.b, 2), REGOPT_OK);
    ck_assert_str_ne(regopt_regularizer_message(g), "");
    ck_assert_int_eq(regopt_regularizer_average_swapped(g), 1);
    r->h.fail_forward = 0;
    RMUST(g, regopt_regularizer_swap_average(g));
    sm_step(r, &s);
    sm_close(r);
}
END_TEST

/* A step that fails (a forward callback, before the first counted update
 * and later) leaves the average and its count exactly as they were. */
START_TEST(rollback_keeps_average)
{
    regopt_regularizer *g;
    sm_run *r = av_open(&g);
    float w0[SW], before[SW], after[SW];
    size_t nw = av_n(r), i;
    sm_set s;
    int step;
    sm_rset(g, REGOPT_AVERAGE_DECAY, 0.5);
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 5);
    /* the first step fails after the EMA's starting copy was made */
    av_weights(r, w0);
    r->h.fail_forward = 2;
    ck_assert_int_ne(regopt_trainer_step(r->t, s.b, 2), REGOPT_OK);
    r->h.fail_forward = 0;
    ck_assert_int_eq(regopt_regularizer_swap_average(g), REGOPT_ERR_STATE);
    /* fresh weights, then the first step for real: starts from those */
    r->h.A[0] += 0.25f;
    av_weights(r, w0);
    sm_reset(r);
    sm_step(r, &s);
    av_weights(r, after);
    av_read(r, g, before);
    for (i = 0; i < nw; i++)
        ck_assert(before[i] == (float)(0.5 * (double)w0[i] + 0.5 * (double)after[i]));
    for (step = 0; step < 3; step++) {
        sm_step(r, &s);
        av_read(r, g, before);
        sm_reset(r);
        r->h.fail_forward = 1 + step % 2; /* two forwards a step */
        ck_assert_int_ne(regopt_trainer_step(r->t, s.b, 2), REGOPT_OK);
        r->h.fail_forward = 0;
        av_read(r, g, after);
        ck_assert(memcmp(before, after, nw * sizeof(float)) == 0);
        ck_assert_int_eq(rstat(g, REGOPT_STAT_AVERAGE_COUNT), 2 + step);
    }
    sm_close(r);
}
END_TEST

/* Resume: save after 10 steps, run 10 more; a fresh trainer loading the
 * checkpoint and running the same 10 steps ends with the same average, bit
 * for bit (the average and its count are in the checkpoint). */
static void av_resume(int mode)
{
    regopt_regularizer *g, *g2;
    sm_run *r = av_open(&g), *r2;
    static unsigned char buf[16384];
    float a1[SW], a2[SW];
    size_t written = 0, nw;
    sm_set s;
    int i;
    av_set_int(g, REGOPT_AVERAGE_MODE, mode);
    av_set_int(g, REGOPT_AVERAGE_WARMUP, REGOPT_AVERAGE_WARMUP_TF);
    sm_rset(g, REGOPT_AVERAGE_DECAY, 0.9);
    for (i = 0; i < 10; i++) {
        sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, (unsigned)i);
        sm_step(r, &s);
    }
    SM_TMUST(r->t, regopt_trainer_save_buffer(r->t, REGOPT_CHECKPOINT_PARAMS |
                                                        REGOPT_CHECKPOINT_OPTIONS,
                                              buf, sizeof buf, &written));
    for (; i < 20; i++) {
        sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, (unsigned)i);
        sm_step(r, &s);
    }
    av_read(r, g, a1);
    nw = av_n(r);
    r2 = av_open(&g2);
    SM_TMUST(r2->t, regopt_trainer_load_buffer(r2->t, REGOPT_CHECKPOINT_PARAMS |
                                                          REGOPT_CHECKPOINT_OPTIONS,
                                               buf, written));
    ck_assert_int_eq(rstat(g2, REGOPT_STAT_AVERAGE_COUNT), 10);
    for (i = 10; i < 20; i++) {
        sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, (unsigned)i);
        sm_step(r2, &s);
    }
    av_read(r2, g2, a2);
    ck_assert(memcmp(a1, a2, nw * sizeof(float)) == 0);
    ck_assert_double_eq(rstat(g2, REGOPT_STAT_AVERAGE_DECAY), rstat(g, REGOPT_STAT_AVERAGE_DECAY));
    sm_close(r);
    sm_close(r2);
}

START_TEST(resume_ema) { av_resume(REGOPT_AVERAGE_EMA); }
END_TEST

START_TEST(resume_swa) { av_resume(REGOPT_AVERAGE_SWA); }
END_TEST

/* A checkpoint that needs the average is refused by a trainer without one. */
START_TEST(checkpoint_without_average_refused)
{
    regopt_regularizer *g;
    sm_run *r = av_open(&g), *r2;
    static unsigned char buf[16384];
    size_t written = 0;
    sm_set s;
    sm_fill(&s, 2, 2, 1, 2, 3, 0, 0, 1);
    sm_step(r, &s);
    SM_TMUST(r->t, regopt_trainer_save_buffer(r->t, 0, buf, sizeof buf, &written));
    r2 = sm_open(2, 3, 2, REGOPT_LOSS_SOFTMAX_CE, 0.5, NULL, NULL);
    ck_assert_int_ne(regopt_trainer_load_buffer(r2->t, 0, buf, written), REGOPT_OK);
    sm_close(r);
    sm_close(r2);
}
END_TEST

Suite *suite_average(void)
{
    Suite *s = suite_create("average");
    TCase *rec = tcase_create("recurrences"), *sw = tcase_create("swap"),
          *st = tcase_create("state");
    tcase_add_test(rec, ema_no_warmup);
    tcase_add_test(rec, ema_tf_warmup);
    tcase_add_test(rec, ema_timm_warmup);
    tcase_add_test(rec, ema_first_copies);
    tcase_add_test(rec, ema_start_every);
    tcase_add_test(rec, swa_every_step);
    tcase_add_test(rec, swa_start_cycle);
    tcase_add_test(rec, keys_and_defaults);
    tcase_add_test(sw, refused_while_swapped);
    tcase_add_test(sw, swap_rules);
    tcase_add_test(sw, bregman_teacher_swaps);
    tcase_add_test(sw, teacher_is_the_average);
    tcase_add_test(sw, nonfinite_weight_refused);
    tcase_add_test(sw, recalibrate_passes);
    tcase_add_test(st, rollback_keeps_average);
    tcase_add_test(st, resume_ema);
    tcase_add_test(st, resume_swa);
    tcase_add_test(st, checkpoint_without_average_refused);
    suite_add_tcase(s, rec);
    suite_add_tcase(s, sw);
    suite_add_tcase(s, st);
    return s;
}
