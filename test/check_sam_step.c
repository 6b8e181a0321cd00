/* check_sam_step.c — a SAM step: exact restore, call order, flags and
 * seeds (same/fresh seed), rho = 0, every k-th step, m-sharpness, gradient
 * accumulation, zero gradient, frozen and idle tensors, and no allocation
 * in steps (the rig: sam_rig.h). */
#include "tests.h"

#include "sam_rig.h"

/* ======================================================================== */
/* 3. Exact restore                                                         */
/* ======================================================================== */

/* A host that adds a recorded gradient: a plain (no SAM) trainer over it
 * replays "base optimizer from the restored w with the final gradient". */
typedef struct rhost {
    float w[NW], b[TH_K], gw[NW], gb[TH_K];
    float rw[NW], rb[TH_K];
} rhost;

static int r_forward(const regopt_pass *p, void *user)
{
    (void)user;
    p->outputs[0] = 0.0f;
    return 0;
}

static int r_backward(const regopt_pass *p, void *user)
{
    rhost *h = user;
    float d = p->d_outputs[0];
    size_t i;
    for (i = 0; i < NW; i++)
        h->gw[i] += d * h->rw[i];
    for (i = 0; i < TH_K; i++)
        h->gb[i] += d * h->rb[i];
    return 0;
}

static void exact_restore(int adaptive)
{
    lrun *r = lrun_sam(REGOPT_ADAM, 0.05);
    rhost *h = calloc(1, sizeof *h);
    regopt_model *m = regopt_model_create(NULL, NULL);
    regopt_optimizer *o = regopt_optimizer_create(REGOPT_ADAM, NULL, NULL);
    regopt_trainer *t;
    regopt_batch b;
    int s, i;
    memcpy(h->w, r->l.h.w, sizeof h->w);
    memcpy(h->b, r->l.h.b, sizeof h->b);
    MUST(regopt_model_add_param(m, "W", h->w, h->gw, NW, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(m, "b", h->b, h->gb, TH_K, REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(m, 1));
    MUST(regopt_model_set_callbacks(m, r_forward, r_backward, h, NULL));
    MUST(regopt_optimizer_set_double(o, REGOPT_OPT_LR, 0.05));
    t = regopt_trainer_create(m, o, NULL);
    ck_assert_ptr_nonnull(t);
    MUST(regopt_trainer_set_loss_callback(t, q_loss, NULL, NULL));
    regopt_batch_init(&b);
    b.data = h;
    b.rows = 1;
    if (adaptive) {
        lset(r, REGOPT_SAM_ADAPTIVE, 1);
        lset(r, REGOPT_SAM_RHO, 0.5);
    }
    for (s = 0; s < 6; s++) {
        float w_before[NW], b_before[TH_K];
        memcpy(w_before, r->l.h.w, sizeof w_before);
        memcpy(b_before, r->l.h.b, sizeof b_before);
        r->l.nrec = 0;
        lstep(r, 2);
        ck_assert_int_eq(r->l.nrec, 4);
        for (i = 0; i < 4; i++) {
            const lrec *c = &r->l.rec[i];
            int same = memcmp(c->w, w_before, sizeof w_before) == 0 &&
                       memcmp(c->b, b_before, sizeof b_before) == 0;
            if (i < 2) /* clean passes of step s run at the weights step s-1 left */
                ck_assert_msg(same, "step %d: clean forward %d did not see the restored w", s,
                              i);
            else
                ck_assert_msg(!same && (c->flags & REGOPT_PASS_PERTURBED_WEIGHTS),
                              "step %d: perturbed forward %d saw unperturbed weights", s, i);
        }
        /* the update = the base optimizer from w_before with the final gradient */
        memcpy(h->rw, r->l.h.gw, sizeof h->rw);
        memcpy(h->rb, r->l.h.gb, sizeof h->rb);
        TMUST(t, regopt_trainer_step(t, &b, 1));
        ck_assert_msg(memcmp(h->w, r->l.h.w, sizeof h->w) == 0 &&
                          memcmp(h->b, r->l.h.b, sizeof h->b) == 0,
                      "step %d: weights differ from the base update at the restored w", s);
    }
    regopt_trainer_free(t);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    free(h);
    lrun_close(r);
}

START_TEST(restore_is_exact_sam)
{
    exact_restore(0);
}
END_TEST

START_TEST(restore_is_exact_asam)
{
    exact_restore(1);
}
END_TEST

/* ======================================================================== */
/* 4. Call order, flags, seeds                                              */
/* ======================================================================== */

START_TEST(call_order_and_flags)
{
    lrun *r = lrun_sam(REGOPT_SGD, 0.05);
    const th_call *c = r->l.h.calls;
    int i;
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_SAM_SAME_SEED), 1);
    lstep(r, 3);
    ck_assert_int_eq(r->l.h.ncalls, 12);
    for (i = 0; i < 12; i++) {
        int perturbed = i >= 6;
        ck_assert_int_eq(c[i].backward, i % 2);
        ck_assert_int_eq(c[i].slot, 0);
        ck_assert_uint_eq(c[i].micro_batch, (size_t)((i % 6) / 2));
        ck_assert_uint_eq(c[i].rows, N);
        ck_assert_uint_eq(c[i].flags, perturbed ? REGOPT_PASS_TRAIN |
                                                      REGOPT_PASS_PERTURBED_WEIGHTS
                                                : REGOPT_PASS_TRAIN);
    }
    for (i = 0; i < 3; i++) /* same seed: the perturbed pass repeats the clean one */
        ck_assert(c[6 + 2 * i].seed == c[2 * i].seed);
    ck_assert(c[0].seed != c[2].seed && c[2].seed != c[4].seed && c[0].seed != c[4].seed);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 6);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 6);
    lrun_close(r);

    /* fresh seeds */
    r = lrun_sam(REGOPT_SGD, 0.05);
    c = r->l.h.calls;
    lset(r, REGOPT_SAM_SAME_SEED, 0);
    lstep(r, 3);
    ck_assert_int_eq(r->l.h.ncalls, 12);
    {
        int j;
        for (i = 0; i < 3; i++) {
            ck_assert_uint_eq(c[6 + 2 * i].flags,
                              REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
            for (j = 0; j < 6; j++)
                if (j != 3 + i)
                    ck_assert_msg(c[6 + 2 * i].seed != c[2 * j].seed,
                                  "perturbed seed %d repeats forward %d", i, j);
        }
    }
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 6);
    lrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 5. rho = 0 with the same seed is the base optimizer                      */
/* ======================================================================== */

START_TEST(rho_zero_equals_base_optimizer)
{
    lrun *a = lrun_sam(REGOPT_ADAM, 0.05), *b = lrun_open(REGOPT_ADAM, 0.05, NULL, 0);
    lrun *c = lrun_sam(REGOPT_ADAM, 0.05);
    int s;
    a->l.drop = b->l.drop = c->l.drop = 0.3f;
    lset(a, REGOPT_SAM_RHO, 0.0);
    lset(c, REGOPT_SAM_RHO, 0.0);
    lset(c, REGOPT_SAM_SAME_SEED, 0);
    for (s = 0; s < 4; s++) {
        lstep(a, 2);
        lstep(b, 2);
        lstep(c, 2);
        ck_assert_msg(same_weights(a, b), "step %d: SAM with rho 0 differs from Adam", s);
        ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 4);
        ck_assert(memcmp(&(double){stat(a->t, REGOPT_STAT_LOSS)},
                         &(double){stat(b->t, REGOPT_STAT_LOSS)}, sizeof(double)) == 0);
    }
    /* the host's dropout really depends on the seed: fresh seeds differ */
    ck_assert(!same_weights(a, c));
    lrun_close(a);
    lrun_close(b);
    lrun_close(c);
}
END_TEST

/* ======================================================================== */
/* 6. SAM every k-th step                                                   */
/* ======================================================================== */

START_TEST(sam_every_k_steps)
{
    lrun *r = lrun_sam(REGOPT_SGD, 0.05);
    int s;
    lset(r, REGOPT_SAM_EVERY, 3);
    for (s = 0; s < 7; s++) {
        int before = r->l.h.forwards, due = s % 3 == 0, i;
        r->l.nrec = 0;
        lstep(r, 2);
        ck_assert_int_eq(r->l.h.forwards - before, due ? 4 : 2);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), due ? 4 : 2);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), due ? 4 : 2);
        ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), due);
        for (i = 0; i < r->l.nrec; i++)
            ck_assert_uint_eq(r->l.rec[i].flags & REGOPT_PASS_PERTURBED_WEIGHTS,
                              due && i >= 2 ? REGOPT_PASS_PERTURBED_WEIGHTS : 0u);
    }
    lrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 7. m-sharpness                                                           */
/* ======================================================================== */

START_TEST(m_sharpness_chunks_and_gradient)
{
    const size_t m = 3, count = 2;
    const double rho = 0.5;
    lrun *r = lrun_sam(REGOPT_SGD, 0.05);
    float wt[2 * N];
    double p0[NW + TH_K], total[NW + TH_K] = {0}, inv, wsum = 0.0, clean_loss = 0.0;
    size_t i, bi, r0, k = 0;
    for (i = 0; i < 2 * N; i++) {
        wt[i] = 0.5f + 0.25f * (float)(i % 5);
        wsum += wt[i];
    }
    r->b[0].weights = wt;
    r->b[1].weights = wt + N;
    inv = 1.0 / wsum;
    lset(r, REGOPT_SAM_M_ROWS, (double)m);
    lset(r, REGOPT_SAM_RHO, rho);
    params_of(r, p0);
    /* reference: every chunk ascends with its own gradient, the perturbed
     * gradients (each weighted as in the step loss) are summed */
    for (bi = 0; bi < count; bi++)
        for (r0 = 0; r0 < N; r0 += m) {
            size_t n = N - r0 < m ? N - r0 : m;
            const float *x = r->x + bi * N * TH_D;
            const int32_t *y = r->y + bi * N;
            double g[NW + TH_K] = {0}, pe[NW + TH_K], nrm;
            clean_loss += ref_grad(p0, x, y, wt + bi * N, r0, n, inv, g);
            nrm = norm16(g);
            for (i = 0; i < NW + TH_K; i++)
                pe[i] = p0[i] + rho * g[i] / (nrm + 1e-12);
            ref_grad(pe, x, y, wt + bi * N, r0, n, inv, total);
        }
    lstep(r, count);
    /* 3 chunks (3, 3, 2 rows) per micro-batch, clean then perturbed each */
    ck_assert_int_eq(r->l.nrec, 12);
    for (bi = 0; bi < count; bi++)
        for (r0 = 0; r0 < N; r0 += m, k += 2) {
            size_t n = N - r0 < m ? N - r0 : m;
            const lrec *c = &r->l.rec[k], *pc = &r->l.rec[k + 1];
            ck_assert_uint_eq(c->mb, bi);
            ck_assert_uint_eq(c->row_offset, r0);
            ck_assert_uint_eq(c->rows, n);
            ck_assert_uint_eq(c->flags, REGOPT_PASS_TRAIN);
            ck_assert_uint_eq(pc->mb, bi);
            ck_assert_uint_eq(pc->row_offset, r0);
            ck_assert_uint_eq(pc->rows, n);
            ck_assert_uint_eq(pc->flags, REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS);
            ck_assert(pc->seed == c->seed); /* same_seed default */
        }
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 12);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 12);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    near(rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS), clean_loss, 1e-6, 1.0, "clean loss");
    for (i = 0; i < NW; i++)
        near(r->l.h.gw[i], total[i], 1e-5, 0.1, "final gradient W");
    for (i = 0; i < TH_K; i++)
        near(r->l.h.gb[i], total[NW + i], 1e-5, 0.1, "final gradient b");
    /* and the update used it: w1 = w0 - lr * g */
    for (i = 0; i < NW; i++)
        near(r->l.h.w[i], p0[i] - 0.05 * total[i], 1e-6, 1.0, "w1");
    lrun_close(r);
}
END_TEST

START_TEST(m_at_least_rows_is_plain_sam)
{
    static const double ms[2] = {N, 1000};
    int k, s;
    for (k = 0; k < 2; k++) {
        lrun *a = lrun_sam(REGOPT_ADAM, 0.05), *b = lrun_sam(REGOPT_ADAM, 0.05);
        lset(a, REGOPT_SAM_M_ROWS, ms[k]);
        for (s = 0; s < 3; s++) {
            TMUST(a->t, regopt_trainer_step(a->t, &a->b[s], 1));
            TMUST(b->t, regopt_trainer_step(b->t, &b->b[s], 1));
            ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 2);
            ck_assert_msg(same_weights(a, b), "m = %g, step %d: differs from plain SAM", ms[k],
                          s);
        }
        ck_assert_uint_eq(a->l.rec[1].row_offset, 0);
        ck_assert_uint_eq(a->l.rec[1].rows, N);
        lrun_close(a);
        lrun_close(b);
    }
}
END_TEST

/* ======================================================================== */
/* 8. Gradient accumulation                                                 */
/* ======================================================================== */

START_TEST(accumulation_equals_one_big_batch)
{
    lrun *a = lrun_sam(REGOPT_ADAM, 0.05), *b = lrun_sam(REGOPT_ADAM, 0.05);
    regopt_batch big;
    th_batch hbig;
    int s;
    size_t i;
    th_batch_of(&big, &hbig, b->x, b->y, 2 * N);
    for (s = 0; s < 3; s++) {
        lstep(a, 2);
        TMUST(b->t, regopt_trainer_step(b->t, &big, 1));
        near(rstat(a->sam, REGOPT_STAT_SAM_CLEAN_LOSS), rstat(b->sam, REGOPT_STAT_SAM_CLEAN_LOSS),
             1e-6, 1.0, "clean loss");
        near(rstat(a->sam, REGOPT_STAT_SAM_PERTURBED_LOSS),
             rstat(b->sam, REGOPT_STAT_SAM_PERTURBED_LOSS), 1e-6, 1.0, "perturbed loss");
        near(rstat(a->sam, REGOPT_STAT_SAM_ASCENT_NORM), rstat(b->sam, REGOPT_STAT_SAM_ASCENT_NORM),
             1e-5, 1.0, "ascent norm");
    }
    for (i = 0; i < NW; i++)
        near(a->l.h.w[i], b->l.h.w[i], 1e-6, 1.0, "W");
    for (i = 0; i < TH_K; i++)
        near(a->l.h.b[i], b->l.h.b[i], 1e-6, 1.0, "b");
    lrun_close(a);
    lrun_close(b);
}
END_TEST

/* ======================================================================== */
/* 9. Zero gradient                                                         */
/* ======================================================================== */

START_TEST(zero_gradient_is_a_plain_step)
{
    int variant, s, i;
    for (variant = 0; variant < 3; variant++) {
        qrun *r = qrun_open(REGOPT_SGD, 0.1, 1.5, -2.0, 0);
        double w[2] = {1.5, -2.0};
        r->q.constant = 1; /* gc = gp = 0 */
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_WEIGHT_DECAY, 0.1));
        TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
        qset(r, REGOPT_SAM_DELTA, 0.0); /* 0/0 would be NaN */
        if (variant == 1) {
            qset(r, REGOPT_SAM_ADAPTIVE, 1);
            qset(r, REGOPT_SAM_ETA, 0.0);
        } else if (variant == 2) {
            qset(r, REGOPT_SAM_GSAM, 1);
        }
        for (s = 0; s < 3; s++) {
            int before = r->q.forwards;
            qstep(r, 2);
            ck_assert_int_eq(r->q.forwards - before, 2);
            for (i = before; i < r->q.forwards; i++)
                ck_assert_uint_eq(r->q.flags[i], REGOPT_PASS_TRAIN);
            ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 0);
            ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 2);
            ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 2);
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), 0.0);
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_SHARPNESS), 0.0);
            ck_assert(isfinite(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS)));
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS),
                                rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS));
            for (i = 0; i < 2; i++) { /* only weight decay: w -= lr * wd * w */
                w[i] -= 0.1 * 0.1 * w[i];
                ck_assert(isfinite(r->q.w[i]));
                near(r->q.w[i], w[i], 1e-6, 1.0, "weight decay only");
            }
        }
        qrun_close(r);
    }
}
END_TEST

/* ======================================================================== */
/* 10. Frozen and idle tensors                                              */
/* ======================================================================== */

START_TEST(frozen_and_idle_tensors_are_not_perturbed)
{
    int adaptive, s, i;
    for (adaptive = 0; adaptive < 2; adaptive++) {
        lrun *r = lrun_open(REGOPT_SGD, 0.05, NULL, 1);
        float orig[5];
        memcpy(orig, r->extra, sizeof orig);
        TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
        if (adaptive) {
            lset(r, REGOPT_SAM_ADAPTIVE, 1);
            lset(r, REGOPT_SAM_RHO, 0.5);
        }
        for (s = 0; s < 3; s++) {
            double p[NW + TH_K], g[NW + TH_K] = {0};
            params_of(r, p);
            ref_grad(p, r->x, r->y, NULL, 0, N, 1.0 / N, g);
            r->l.nrec = 0;
            lstep(r, 1);
            ck_assert_int_eq(r->l.nrec, 2);
            ck_assert(memcmp(r->l.rec[1].w, r->l.rec[0].w, sizeof r->l.rec[0].w) != 0);
            for (i = 0; i < 2; i++)
                ck_assert_msg(memcmp(r->l.rec[i].watch, orig, sizeof orig) == 0,
                              "adaptive %d step %d: frozen/idle tensor moved in forward %d",
                              adaptive, s, i);
            if (!adaptive) /* the frozen and idle tensors add nothing to the norm */
                near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), norm16(g), 1e-5, 0.0,
                     "ascent norm over W and b only");
        }
        ck_assert(memcmp(r->extra, orig, sizeof orig) == 0);
        ck_assert_float_eq(r->idle_g[0], 0.0f);
        ck_assert_float_eq(r->idle_g[1], 0.0f);
        lrun_close(r);
    }
}
END_TEST

/* ======================================================================== */
/* 13. No allocation in steps                                               */
/* ======================================================================== */

START_TEST(no_allocation_in_sam_steps)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    lrun *r = lrun_open(REGOPT_ADAM, 0.05, &a, 0);
    long before;
    int i;
    TMUST(r->t, regopt_trainer_attach(r->t, r->sam));
    lset(r, REGOPT_SAM_M_ROWS, 3);
    lset(r, REGOPT_SAM_GSAM, 1);
    lset(r, REGOPT_SAM_ADAPTIVE, 1);
    lstep(r, 4);
    before = c.allocs;
    for (i = 0; i < 12; i++)
        lstep(r, (size_t)(1 + i % 4));
    ck_assert_int_eq(c.allocs, before);
    /* whole-step SAM with every 2 */
    lset(r, REGOPT_SAM_M_ROWS, 0);
    lset(r, REGOPT_SAM_GSAM, 0);
    lset(r, REGOPT_SAM_EVERY, 2);
    before = c.allocs;
    for (i = 0; i < 8; i++)
        lstep(r, (size_t)(1 + i % 4));
    ck_assert_int_eq(c.allocs, before);
    lrun_close(r);
    ck_assert_int_eq(c.allocs, c.frees);
}
END_TEST

Suite *suite_sam_step(void)
{
    Suite *s = suite_create("sam_step");
    TCase *tc = tcase_create("step");
    tcase_add_test(tc, restore_is_exact_sam);
    tcase_add_test(tc, restore_is_exact_asam);
    tcase_add_test(tc, call_order_and_flags);
    tcase_add_test(tc, rho_zero_equals_base_optimizer);
    tcase_add_test(tc, sam_every_k_steps);
    tcase_add_test(tc, m_sharpness_chunks_and_gradient);
    tcase_add_test(tc, m_at_least_rows_is_plain_sam);
    tcase_add_test(tc, accumulation_equals_one_big_batch);
    tcase_add_test(tc, zero_gradient_is_a_plain_step);
    tcase_add_test(tc, frozen_and_idle_tensors_are_not_perturbed);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_in_sam_steps);
    suite_add_tcase(s, tc);
    return s;
}
