/* check_sam_variants.c — the SAM family's second wave: ascent directions
 * with state (sam.direction: FriendlySAM, VaSSO), WSAM (sam.wsam), SAM-ON
 * (sam.group_perturb), LookSAM (sam.looksam) and Momentum-SAM (sam.momentum). Each variant's first
 * steps against a double-precision reference written here (never the
 * library's own output), the exact reductions to SAM, ASAM and m-sharpness
 * composition, every-k, threads, rollback on a failing callback in every
 * pass, checkpoint resume, and refused option values. */
#include "tests.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* Quadratic host: L = 1/2 sum h_i w_i^2 over n elements in two tensors     */
/* ("a": group 0, "b": group 1); every output row is L, so each row's       */
/* gradient is h w. Can fail a chosen forward or backward call.             */
/* ======================================================================== */

typedef struct vhost {
    size_t n, n0; /* elements, of which n0 in "a" */
    float *w, *g, *h;
    int forwards, backwards;
    int fail_forward, fail_backward; /* 1-based call numbers, 0 = never */
} vhost;

static int v_forward(const regopt_pass *p, void *user)
{
    vhost *q = user;
    double L = 0.0;
    size_t i;
    if (++q->forwards == q->fail_forward)
        return 7;
    for (i = 0; i < q->n; i++)
        L += 0.5 * (double)q->h[i] * q->w[i] * q->w[i];
    for (i = 0; i < p->rows; i++)
        p->outputs[i] = (float)L;
    return 0;
}

static int v_backward(const regopt_pass *p, void *user)
{
    vhost *q = user;
    size_t i, k;
    if (++q->backwards == q->fail_backward)
        return 9;
    for (i = 0; i < p->rows; i++) {
        float d = p->d_outputs[i];
        for (k = 0; k < q->n; k++)
            q->g[k] += d * (q->h[k] * q->w[k]);
    }
    return 0;
}

/* row_loss = z, d row_loss / dz = 1 */
static int v_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
                  float *row_loss, float *dz, void *user)
{
    size_t i;
    (void)b;
    (void)user;
    for (i = 0; i < rows * width; i++) {
        row_loss[i] = z[i];
        dz[i] = 1.0f;
    }
    return 0;
}

typedef struct vrun {
    vhost q;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *sam; /* attached */
    regopt_batch b;
} vrun;

/* The allocator of the next vrun_open's model and optimizer (NULL: malloc). */
static const regopt_allocator *v_alloc;

static float h_of(size_t i) { return 1.0f + (float)(i * 7 % 13); }
static float w0_of(size_t i) { return (float)sin(0.3 * (double)i + 0.1); }

/* A trainer over n elements with SGD (lr, momentum mom) and SAM attached
 * with direction dir, rho, and the batch of `rows` rows. */
static vrun *vrun_open(size_t n, regopt_optimizer_kind kind, double lr, int dir, double rho,
                       size_t rows)
{
    vrun *r = calloc(1, sizeof *r);
    size_t i;
    ck_assert_ptr_nonnull(r);
    r->q.n = n;
    r->q.n0 = n / 2 + 1;
    r->q.w = calloc(n, sizeof(float));
    r->q.g = calloc(n, sizeof(float));
    r->q.h = calloc(n, sizeof(float));
    ck_assert(r->q.w && r->q.g && r->q.h);
    for (i = 0; i < n; i++) {
        r->q.w[i] = w0_of(i);
        r->q.h[i] = h_of(i);
    }
    r->m = regopt_model_create(v_alloc, NULL);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_add_param(r->m, "a", r->q.w, r->q.g, r->q.n0, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_add_param(r->m, "b", r->q.w + r->q.n0, r->q.g + r->q.n0, n - r->q.n0,
                                REGOPT_DTYPE_FLOAT32, 1));
    MUST(regopt_model_set_output_width(r->m, 1));
    MUST(regopt_model_set_callbacks(r->m, v_forward, v_backward, &r->q, NULL));
    r->o = regopt_optimizer_create(kind, v_alloc, NULL);
    ck_assert_ptr_nonnull(r->o);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, lr));
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    MUST(regopt_trainer_set_loss_callback(r->t, v_loss, NULL, NULL));
    r->sam = tu_add(r->t, REGOPT_REG_SAM);
    RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_DIRECTION, dir));
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, REGOPT_SAM_RHO, rho));
    regopt_batch_init(&r->b);
    r->b.data = &r->q;
    r->b.rows = rows;
    return r;
}

static void vrun_close(vrun *r)
{
    regopt_trainer_free(r->t);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r->q.w);
    free(r->q.g);
    free(r->q.h);
    free(r);
    tu_free_regs();
}

static void vset(vrun *r, regopt_key key, double v)
{
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, key, v));
}

static void vstep(vrun *r) { TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1)); }

static void same_w(const vrun *a, const vrun *b, const char *what)
{
    ck_assert_msg(memcmp(a->q.w, b->q.w, a->q.n * sizeof(float)) == 0, "%s: weights differ",
                  what);
}

/* ======================================================================== */
/* The double-precision reference: SGD without momentum, sam.direction,    */
/* ASAM optional (T = |w| + eta on every tensor).                           */
/* ======================================================================== */

typedef struct vref {
    size_t n;
    int dir, adaptive, held;
    size_t out_from; /* SAM-ON: elements from here (group 1, "b") are not perturbed */
    double rho, delta, eta, sigma, lambda, theta, lr;
    double w[8], m[8];
    double norm, clean, pert; /* of the last step */
} vref;

static void vref_init(vref *f, size_t n, int dir, double rho, double lr)
{
    size_t i;
    memset(f, 0, sizeof *f);
    ck_assert_uint_le(n, 8);
    f->n = n;
    f->dir = dir;
    f->rho = rho;
    f->lr = lr;
    f->delta = 1e-12;
    f->eta = 0.01;
    f->sigma = 1.0;
    f->lambda = 0.9;
    f->theta = 0.9;
    f->out_from = n;
    for (i = 0; i < n; i++)
        f->w[i] = w0_of(i);
}

static double vref_loss(const vref *f, const double *w)
{
    double L = 0.0;
    size_t i;
    for (i = 0; i < f->n; i++)
        L += 0.5 * h_of(i) * w[i] * w[i];
    return L;
}

/* One SAM step (sam_step 0: a plain step, the state untouched). */
static void vref_step(vref *f, int sam_step)
{
    double g[8], a[8], mn[8], t[8], wp[8], s2 = 0.0, c;
    size_t i;
    f->clean = vref_loss(f, f->w);
    for (i = 0; i < f->n; i++)
        g[i] = h_of(i) * f->w[i];
    if (!sam_step) {
        for (i = 0; i < f->n; i++)
            f->w[i] -= f->lr * g[i];
        f->pert = f->clean;
        return;
    }
    for (i = 0; i < f->n; i++) {
        if (!f->held || f->dir == 0) {
            a[i] = g[i];
            mn[i] = g[i];
        } else if (f->dir == 1) { /* FriendlySAM */
            a[i] = g[i] - f->sigma * f->m[i];
            mn[i] = f->lambda * f->m[i] + (1.0 - f->lambda) * g[i];
        } else { /* VaSSO */
            mn[i] = (1.0 - f->theta) * f->m[i] + f->theta * g[i];
            a[i] = mn[i];
        }
        t[i] = i >= f->out_from ? 0.0 : f->adaptive ? fabs(f->w[i]) + f->eta : 1.0;
        s2 += t[i] * a[i] * t[i] * a[i];
    }
    f->norm = sqrt(s2);
    c = f->rho / (f->norm + f->delta);
    for (i = 0; i < f->n; i++)
        wp[i] = f->w[i] + c * t[i] * t[i] * a[i];
    f->pert = vref_loss(f, wp);
    for (i = 0; i < f->n; i++) {
        f->w[i] -= f->lr * h_of(i) * wp[i];
        f->m[i] = mn[i];
    }
    f->held = 1;
}

/* norm_scale: the ascent norm statistic is the reference's times it (the
 * mean over m-sharpness chunks, each with its share of the gradient). */
static double norm_scale = 1.0;

static void vref_compare(const vref *f, const vrun *r, int applied, const char *what, int k)
{
    char buf[96];
    size_t i;
    for (i = 0; i < f->n; i++) {
        snprintf(buf, sizeof buf, "%s step %d w[%zu]", what, k, i);
        near(r->q.w[i], f->w[i], 2e-6, 1.0, buf);
    }
    snprintf(buf, sizeof buf, "%s step %d clean loss", what, k);
    near(rstat(r->sam, REGOPT_STAT_SAM_CLEAN_LOSS), f->clean, 2e-6, 1.0, buf);
    snprintf(buf, sizeof buf, "%s step %d perturbed loss", what, k);
    near(rstat(r->sam, REGOPT_STAT_SAM_PERTURBED_LOSS), f->pert, 2e-6, 1.0, buf);
    if (applied) {
        snprintf(buf, sizeof buf, "%s step %d ascent norm", what, k);
        near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), f->norm * norm_scale, 2e-6, 1.0, buf);
    }
}

/* ======================================================================== */
/* 1. The first steps against the reference                                 */
/* ======================================================================== */

static void reference_run(int dir, int adaptive, double p1, double p2, int every)
{
    const char *what = dir == 1 ? "FriendlySAM" : "VaSSO";
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, dir, adaptive ? 0.5 : 0.1, 1);
    vref f;
    int k;
    vref_init(&f, 5, dir, adaptive ? 0.5 : 0.1, 0.02);
    f.adaptive = adaptive;
    vset(r, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(r, REGOPT_SAM_EVERY, every);
    if (dir == 1) {
        f.sigma = p1;
        f.lambda = p2;
        vset(r, REGOPT_SAM_FRIENDLY_SIGMA, p1);
        vset(r, REGOPT_SAM_FRIENDLY_LAMBDA, p2);
    } else {
        f.theta = p1;
        vset(r, REGOPT_SAM_VASSO_THETA, p1);
    }
    for (k = 0; k < 3 * every; k++) {
        int due = k % every == 0;
        vstep(r);
        vref_step(&f, due);
        vref_compare(&f, r, due, what, k);
        ck_assert_int_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), due);
    }
    vrun_close(r);
}

START_TEST(friendly_first_steps)
{
    reference_run(1, 0, 1.0, 0.9, 1); /* the class defaults */
    reference_run(1, 0, 0.5, 0.6, 1);
}
END_TEST

START_TEST(vasso_first_steps)
{
    reference_run(2, 0, 0.9, 0.0, 1);
    reference_run(2, 0, 0.3, 0.0, 1);
}
END_TEST

/* FriendlySAM's official code has an adaptive flag (T^2 a / ||T a||, as
 * ASAM); VaSSO's has none: ours applies T to d the same way. */
START_TEST(directions_compose_with_asam)
{
    reference_run(1, 1, 1.0, 0.9, 1);
    reference_run(2, 1, 0.9, 0.0, 1);
}
END_TEST

/* The state moves on SAM steps only (sam.every 2: steps 1, 3, 5 plain). */
START_TEST(directions_with_every_k)
{
    reference_run(1, 0, 1.0, 0.9, 2);
    reference_run(2, 0, 0.9, 0.0, 2);
}
END_TEST

START_TEST(defaults_are_the_papers)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.05, 1);
    double v = -1.0;
    int64_t i = -1;
    RMUST(r->sam, regopt_regularizer_get_int(r->sam, REGOPT_SAM_DIRECTION, &i));
    ck_assert_int_eq(i, REGOPT_SAM_DIRECTION_GRADIENT);
    RMUST(r->sam, regopt_regularizer_get_double(r->sam, REGOPT_SAM_FRIENDLY_SIGMA, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(r->sam, regopt_regularizer_get_double(r->sam, REGOPT_SAM_FRIENDLY_LAMBDA, &v));
    ck_assert_double_eq(v, 0.9);
    RMUST(r->sam, regopt_regularizer_get_double(r->sam, REGOPT_SAM_VASSO_THETA, &v));
    ck_assert_double_eq(v, 0.9);
    {
        static const char *names[] = {"sam.direction", "sam.friendly_sigma",
                                      "sam.friendly_lambda", "sam.vasso_theta"};
        static const regopt_key want[] = {REGOPT_SAM_DIRECTION, REGOPT_SAM_FRIENDLY_SIGMA,
                                          REGOPT_SAM_FRIENDLY_LAMBDA, REGOPT_SAM_VASSO_THETA};
        size_t k;
        for (k = 0; k < 4; k++) {
            regopt_key key = 0;
            MUST(regopt_key_from_name(names[k], &key));
            ck_assert_int_eq(key, want[k]);
        }
    }
    ck_assert_int_eq(REGOPT_SAM_DIRECTION, 1013);
    ck_assert_int_eq(REGOPT_SAM_VASSO_THETA, 1016);
    vrun_close(r);
}
END_TEST

/* ======================================================================== */
/* 2. Exact reductions                                                      */
/* ======================================================================== */

/* Two runs, one with the variant, one plain SAM, the same bits after each
 * of 6 steps (Adam; ASAM and GSAM optionally). */
static void reduces_to_sam(int dir, regopt_key key, double v, int adaptive, int gsam,
                           int m_rows, size_t rows)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, dir, 0.2, rows);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, rows);
    int k;
    vset(a, key, v);
    vset(a, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(b, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(a, REGOPT_SAM_GSAM, gsam);
    vset(b, REGOPT_SAM_GSAM, gsam);
    vset(a, REGOPT_SAM_M_ROWS, m_rows);
    vset(b, REGOPT_SAM_M_ROWS, m_rows);
    for (k = 0; k < 6; k++) {
        vstep(a);
        vstep(b);
        same_w(a, b, dir == 1 ? "FriendlySAM sigma 0 vs SAM" : "VaSSO theta 1 vs SAM");
        ck_assert(rstat(a->sam, REGOPT_STAT_SAM_ASCENT_NORM) ==
                  rstat(b->sam, REGOPT_STAT_SAM_ASCENT_NORM));
    }
    vrun_close(a);
    vrun_close(b);
}

START_TEST(friendly_sigma_zero_is_sam)
{
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 0, 0, 0, 1);
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 1, 0, 0, 1);
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 0, 1, 0, 1);
    reduces_to_sam(1, REGOPT_SAM_FRIENDLY_SIGMA, 0.0, 0, 0, 2, 5);
}
END_TEST

START_TEST(vasso_theta_one_is_sam)
{
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 0, 0, 0, 1);
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 1, 0, 0, 1);
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 0, 1, 0, 1);
    reduces_to_sam(2, REGOPT_SAM_VASSO_THETA, 1.0, 0, 0, 2, 5);
}
END_TEST

/* m-sharpness: every row of the quadratic host has the same gradient, so
 * each chunk's direction (the state weighted by the chunk's share) points
 * where the whole step's does and the average of the chunks' perturbed
 * gradients is the whole step's: the reference holds for 4 rows in chunks
 * of 1 (the state would be 4 times too heavy without the share). */
START_TEST(directions_with_m_sharpness)
{
    int dir, k;
    for (dir = 1; dir <= 2; dir++) {
        vrun *r = vrun_open(5, REGOPT_SGD, 0.02, dir, 0.1, 4);
        vref f;
        vref_init(&f, 5, dir, 0.1, 0.02);
        vset(r, REGOPT_SAM_M_ROWS, 1);
        norm_scale = 0.25; /* each chunk's gradient is a quarter of g */
        for (k = 0; k < 3; k++) {
            vstep(r);
            vref_step(&f, 1);
            vref_compare(&f, r, 1, dir == 1 ? "FriendlySAM m 1" : "VaSSO m 1", k);
        }
        norm_scale = 1.0;
        vrun_close(r);
    }
}
END_TEST

/* trainer.threads changes nothing (ro_each_piece / ro_sum_pieces). */
START_TEST(directions_same_bits_on_threads)
{
    int dir, k;
    for (dir = 1; dir <= 2; dir++) {
        vrun *a = vrun_open(300000, REGOPT_SGD, 1e-3, dir, 0.05, 1);
        vrun *b = vrun_open(300000, REGOPT_SGD, 1e-3, dir, 0.05, 1);
        MUST(regopt_trainer_set_int(b->t, REGOPT_TRAINER_THREADS, 3));
        for (k = 0; k < 3; k++) {
            vstep(a);
            vstep(b);
            same_w(a, b, "threads 1 vs 3");
        }
        vrun_close(a);
        vrun_close(b);
    }
}
END_TEST

/* ======================================================================== */
/* 3. Rollback, checkpoints, options                                        */
/* ======================================================================== */

#define CK_ALL (REGOPT_CHECKPOINT_OPTIONS | REGOPT_CHECKPOINT_PARAMS)

static unsigned char *save_all(const vrun *r, size_t *size)
{
    unsigned char *buf;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, CK_ALL, size));
    buf = malloc(*size);
    ck_assert_ptr_nonnull(buf);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, CK_ALL, buf, *size, NULL));
    return buf;
}

/* A failing callback in each pass of a step (forwards and backwards: 1
 * clean, 2 perturbed; with sam.m_rows 1 over 2 rows, 1 and 3 clean, 2 and
 * 4 perturbed) leaves the checkpoint bytes as they were; then the run
 * continues as one that never failed. */
static void rollback_each_pass(int dir, int m_rows, size_t rows, int wsam, int perturb1)
{
    int calls = m_rows ? 4 : 2, c, back;
    for (back = 0; back < 2; back++)
        for (c = 1; c <= calls; c++) {
            vrun *bad = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, rows);
            vrun *good = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, rows);
            unsigned char *before, *after;
            size_t n1, n2;
            int k;
            vset(bad, REGOPT_SAM_M_ROWS, m_rows);
            vset(good, REGOPT_SAM_M_ROWS, m_rows);
            vset(bad, REGOPT_SAM_WSAM, wsam);
            vset(good, REGOPT_SAM_WSAM, wsam);
            RMUST(bad->sam, regopt_regularizer_set_group(bad->sam, 1, REGOPT_SAM_GROUP_PERTURB,
                                                         perturb1));
            RMUST(good->sam, regopt_regularizer_set_group(good->sam, 1,
                                                          REGOPT_SAM_GROUP_PERTURB, perturb1));
            for (k = 0; k < 2; k++) {
                vstep(bad);
                vstep(good);
            }
            before = save_all(bad, &n1);
            if (back)
                bad->q.fail_backward = bad->q.backwards + c;
            else
                bad->q.fail_forward = bad->q.forwards + c;
            ck_assert_int_eq(regopt_trainer_step(bad->t, &bad->b, 1),
                             back ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD);
            after = save_all(bad, &n2);
            ck_assert_uint_eq(n1, n2);
            ck_assert_msg(memcmp(before, after, n1) == 0,
                          "direction %d, %s call %d: the checkpoint changed", dir,
                          back ? "backward" : "forward", c);
            for (k = 0; k < 3; k++) {
                vstep(bad);
                vstep(good);
            }
            same_w(bad, good, "after continuing");
            free(before);
            free(after);
            vrun_close(bad);
            vrun_close(good);
        }
}

START_TEST(rollback_in_every_pass)
{
    rollback_each_pass(1, 0, 1, 0, 1);
    rollback_each_pass(2, 0, 1, 0, 1);
    rollback_each_pass(1, 1, 2, 0, 1);
    rollback_each_pass(2, 1, 2, 0, 1);
    rollback_each_pass(0, 0, 1, REGOPT_SAM_WSAM_DECOUPLED, 1);
    rollback_each_pass(0, 0, 1, REGOPT_SAM_WSAM_COUPLED, 1);
    rollback_each_pass(1, 1, 2, REGOPT_SAM_WSAM_DECOUPLED, 1);
    rollback_each_pass(0, 0, 1, 0, 0); /* SAM-ON */
    rollback_each_pass(2, 1, 2, REGOPT_SAM_WSAM_COUPLED, 0);
}
END_TEST

/* Resume: 2 steps, save, a new trainer loads (options and params), 3 more
 * steps: the same bits as 5 uninterrupted steps. The new trainer's SAM is
 * created plain: the options bring sam.direction. */
START_TEST(checkpoint_resume_is_exact)
{
    int dir;
    for (dir = 1; dir <= 2; dir++) {
        vrun *a = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *b = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.2, 1);
        unsigned char *buf;
        size_t n, n0;
        int k;
        vset(a, REGOPT_SAM_FRIENDLY_LAMBDA, 0.6);
        vset(b, REGOPT_SAM_FRIENDLY_LAMBDA, 0.6);
        vset(a, REGOPT_SAM_VASSO_THETA, 0.4);
        vset(b, REGOPT_SAM_VASSO_THETA, 0.4);
        TMUST(b->t, regopt_trainer_checkpoint_size(b->t, CK_ALL, &n0));
        for (k = 0; k < 5; k++)
            vstep(a);
        vstep(b);
        vstep(b);
        buf = save_all(b, &n);
        /* the state: 16 bytes and E floats */
        ck_assert_uint_eq(n, n0 + 16 + 4 * 6);
        TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
        for (k = 0; k < 3; k++)
            vstep(c);
        same_w(a, c, "resumed");
        /* and what the load accepted, it saves again */
        free(buf);
        buf = save_all(c, &n);
        free(buf);
        vrun_close(a);
        vrun_close(b);
        vrun_close(c);
    }
}
END_TEST

/* A checkpoint without the state (plain SAM, or before the first SAM step)
 * loads into a FriendlySAM trainer, which then starts afresh: its next
 * step is the first one (m = g). */
START_TEST(checkpoint_without_state_loads)
{
    vrun *plain = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.1, 1);
    vrun *fs = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    vrun *fresh = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    unsigned char *buf;
    size_t n;
    int k;
    vstep(fs); /* fs holds a state, which the load drops */
    buf = save_all(plain, &n);
    TMUST(fs->t, regopt_trainer_load_buffer(fs->t, REGOPT_CHECKPOINT_PARAMS, buf, n));
    for (k = 0; k < 3; k++) {
        vstep(fs);
        vstep(fresh);
        same_w(fs, fresh, "after a load without state");
    }
    free(buf);
    vrun_close(plain);
    vrun_close(fs);
    vrun_close(fresh);
}
END_TEST

/* Switching the direction mid-run: the other mode's state is not used. */
START_TEST(direction_switch_starts_afresh)
{
    vrun *a = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    vref f;
    int k;
    vref_init(&f, 5, 2, 0.1, 0.02);
    vstep(a);
    vset(a, REGOPT_SAM_DIRECTION, 0); /* plain SAM for a step */
    vstep(a);
    vset(a, REGOPT_SAM_DIRECTION, 2);
    /* the reference: a FriendlySAM step, a SAM step, then VaSSO afresh */
    f.dir = 1;
    vref_step(&f, 1);
    f.dir = 0;
    vref_step(&f, 1);
    f.dir = 2;
    f.held = 0;
    for (k = 0; k < 3; k++) {
        vstep(a);
        vref_step(&f, 1);
        vref_compare(&f, a, 1, "switched to VaSSO", k);
    }
    vrun_close(a);
}
END_TEST

START_TEST(bad_values_are_refused)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 1, 0.1, 1);
    static const struct {
        regopt_key key;
        double v;
    } bad[] = {{REGOPT_SAM_DIRECTION, 3},        {REGOPT_SAM_DIRECTION, -1},
               {REGOPT_SAM_FRIENDLY_SIGMA, -0.1}, {REGOPT_SAM_FRIENDLY_SIGMA, 1e4},
               {REGOPT_SAM_FRIENDLY_LAMBDA, -0.1}, {REGOPT_SAM_FRIENDLY_LAMBDA, 1.5},
               {REGOPT_SAM_VASSO_THETA, -0.1},    {REGOPT_SAM_VASSO_THETA, 1.01},
               {REGOPT_SAM_FRIENDLY_SIGMA, NAN},  {REGOPT_SAM_VASSO_THETA, NAN}};
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double before = -1.0, after = -2.0;
        RMUST(r->sam, regopt_regularizer_get_double(r->sam, bad[i].key, &before));
        ck_assert_int_ne(regopt_regularizer_set_double(r->sam, bad[i].key, bad[i].v), REGOPT_OK);
        RMUST(r->sam, regopt_regularizer_get_double(r->sam, bad[i].key, &after));
        ck_assert_double_eq(before, after);
    }
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_DIRECTION, 1.5),
                     REGOPT_OK);
    ck_assert_int_eq(regopt_regularizer_set_double(r->sam, REGOPT_SAM_DIRECTION, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    vstep(r);
    vrun_close(r);
}
END_TEST

/* Out of memory for the direction's buffers: the option is refused and
 * stays as it was. */
START_TEST(direction_buffers_out_of_memory)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    vrun *r;
    regopt_regularizer *s;
    regopt_status st = REGOPT_OK;
    int64_t v = -1;
    long i;
    v_alloc = &a;
    r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.1, 1);
    v_alloc = NULL;
    TMUST(r->t, regopt_trainer_detach(r->t, r->sam));
    for (i = 1; i <= 3; i++) {
        c.fail_at = 0;
        s = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st);
        ck_assert_ptr_nonnull(s);
        TMUST(r->t, regopt_trainer_attach(r->t, s));
        c.fail_at = c.allocs + i;
        ck_assert_int_eq(regopt_regularizer_set_int(s, REGOPT_SAM_DIRECTION, 2),
                         REGOPT_ERR_NO_MEMORY);
        RMUST(s, regopt_regularizer_get_int(s, REGOPT_SAM_DIRECTION, &v));
        ck_assert_int_eq(v, 0);
        c.fail_at = 0;
        RMUST(s, regopt_regularizer_set_int(s, REGOPT_SAM_DIRECTION, 2));
        TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1));
        TMUST(r->t, regopt_trainer_detach(r->t, s));
        MUST(regopt_regularizer_free(s));
    }
    vrun_close(r);
    ck_assert_int_eq(c.allocs, c.frees + 3); /* the three refused allocations */
}
END_TEST

/* ======================================================================== */
/* 4. WSAM (sam.wsam)                                                       */
/* ======================================================================== */

/* Double-precision WSAM with SGD (momentum mu, torch's buffer: the first
 * step copies the gradient) on the quadratic host, plain SAM ascent. */
typedef struct wref {
    size_t n;
    int mode, first;
    double rho, gamma, lr, mu;
    double w[8], buf[8];
} wref;

static void wref_init(wref *f, size_t n, int mode, double gamma, double rho, double lr,
                      double mu)
{
    size_t i;
    memset(f, 0, sizeof *f);
    f->n = n;
    f->mode = mode;
    f->gamma = gamma;
    f->rho = rho;
    f->lr = lr;
    f->mu = mu;
    f->first = 1;
    for (i = 0; i < n; i++)
        f->w[i] = w0_of(i);
}

static void wref_step(wref *f)
{
    double g[8], gp[8], d[8], s2 = 0.0, c, alpha = f->gamma / (1.0 - f->gamma);
    size_t i;
    for (i = 0; i < f->n; i++) {
        g[i] = h_of(i) * f->w[i];
        s2 += g[i] * g[i];
    }
    c = f->rho / (sqrt(s2) + 1e-12);
    for (i = 0; i < f->n; i++) {
        gp[i] = h_of(i) * (f->w[i] + c * g[i]);
        d[i] = f->mode == REGOPT_SAM_WSAM_COUPLED ? alpha * gp[i] + (1.0 - alpha) * g[i] : g[i];
        f->buf[i] = f->first || f->mu == 0.0 ? d[i] : f->mu * f->buf[i] + d[i];
        f->w[i] -= f->lr * f->buf[i];
        if (f->mode == REGOPT_SAM_WSAM_DECOUPLED)
            f->w[i] -= f->lr * alpha * (gp[i] - g[i]);
    }
    f->first = 0;
}

static void wsam_reference(int mode, double gamma, double mu)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
    wref f;
    char what[96];
    size_t i;
    int k;
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, mu));
    vset(r, REGOPT_SAM_WSAM, mode);
    vset(r, REGOPT_SAM_WSAM_GAMMA, gamma);
    wref_init(&f, 5, mode, gamma, 0.1, 0.01, mu);
    for (k = 0; k < 3; k++) {
        vstep(r);
        wref_step(&f);
        for (i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "WSAM %s gamma %g step %d w[%zu]",
                     mode == REGOPT_SAM_WSAM_COUPLED ? "coupled" : "decoupled", gamma, k, i);
            near(r->q.w[i], f.w[i], 2e-6, 1.0, what);
        }
    }
    vrun_close(r);
}

START_TEST(wsam_first_steps)
{
    wsam_reference(REGOPT_SAM_WSAM_DECOUPLED, 0.9, 0.9); /* the paper's defaults */
    wsam_reference(REGOPT_SAM_WSAM_COUPLED, 0.9, 0.9);
    wsam_reference(REGOPT_SAM_WSAM_DECOUPLED, 0.7, 0.0);
    wsam_reference(REGOPT_SAM_WSAM_COUPLED, 0.3, 0.0);
}
END_TEST

/* The identities: coupled with gamma 1/2 (alpha 1) is SAM, decoupled with
 * gamma 0 (alpha 0) is the base optimizer alone, bit for bit; with SGD
 * without momentum or decay, decoupled and coupled are the same update
 * w - lr (alpha g_p + (1 - alpha) g) up to rounding. */
START_TEST(wsam_identities)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *c = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *d = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *e = vrun_open(7, REGOPT_SGD, 0.01, 0, 0.2, 1);
    vrun *f = vrun_open(7, REGOPT_SGD, 0.01, 0, 0.2, 1);
    size_t i;
    int k;
    vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
    vset(a, REGOPT_SAM_WSAM_GAMMA, 0.5);
    vset(c, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(c, REGOPT_SAM_WSAM_GAMMA, 0.0);
    TMUST(d->t, regopt_trainer_detach(d->t, d->sam)); /* no SAM at all */
    vset(e, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(f, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
    for (k = 0; k < 5; k++) {
        vstep(a);
        vstep(b);
        vstep(c);
        vstep(d);
        vstep(e);
        vstep(f);
        same_w(a, b, "coupled WSAM gamma 1/2 vs SAM");
        same_w(c, d, "decoupled WSAM gamma 0 vs the base optimizer");
        for (i = 0; i < 7; i++)
            near(e->q.w[i], f->q.w[i], 1e-6, 1.0, "decoupled vs coupled with plain SGD");
    }
    ck_assert_int_eq(c->q.forwards, 2 * d->q.forwards); /* the ascent was made */
    vrun_close(a);
    vrun_close(b);
    vrun_close(c);
    vrun_close(d);
    vrun_close(e);
    vrun_close(f);
}
END_TEST

/* WSAM composes with FriendlySAM's direction and m-sharpness: coupled
 * gamma 1/2 changes nothing there either. */
START_TEST(wsam_composes)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, 1, 0.2, 4);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 1, 0.2, 4);
    int k;
    vset(a, REGOPT_SAM_M_ROWS, 2);
    vset(b, REGOPT_SAM_M_ROWS, 2);
    vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
    vset(a, REGOPT_SAM_WSAM_GAMMA, 0.5);
    for (k = 0; k < 4; k++) {
        vstep(a);
        vstep(b);
        same_w(a, b, "FriendlySAM + m-sharpness + coupled WSAM gamma 1/2");
    }
    vrun_close(a);
    vrun_close(b);
}
END_TEST

/* WSAM with GSAM is refused at the step, which changes nothing. */
START_TEST(wsam_refuses_gsam)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
    float w[5];
    vset(r, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(r, REGOPT_SAM_GSAM, 1);
    memcpy(w, r->q.w, sizeof w);
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r->t), "sam.gsam"));
    ck_assert(memcmp(w, r->q.w, sizeof w) == 0);
    ck_assert_int_eq(r->q.forwards, 0);
    vset(r, REGOPT_SAM_GSAM, 0);
    vstep(r);
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_WSAM, 3), REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_WSAM_GAMMA, 1.0),
                     REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_double(r->sam, REGOPT_SAM_WSAM_GAMMA, -0.1),
                     REGOPT_OK);
    vrun_close(r);
}
END_TEST

/* Data parallel on one replica (an all-reduce that sums one buffer: the
 * identity): decoupled WSAM makes two all-reduces per SAM step (g_p - g,
 * then the gradient) and matches the reference; coupled one. A failing
 * all-reduce in either leaves the checkpoint bytes as they were. */
static int ar_calls, ar_fail_at;

static int identity_allreduce(float *buf, size_t n, void *user)
{
    (void)buf;
    (void)n;
    (void)user;
    return ++ar_calls == ar_fail_at ? 5 : 0;
}

START_TEST(wsam_data_parallel)
{
    int mode, k;
    for (mode = 1; mode <= 2; mode++) {
        vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
        wref f;
        unsigned char *before, *after;
        size_t n1, n2, i;
        MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
        vset(r, REGOPT_SAM_WSAM, mode);
        TMUST(r->t, regopt_trainer_set_allreduce(r->t, identity_allreduce, NULL, NULL));
        wref_init(&f, 5, mode, 0.9, 0.1, 0.01, 0.9);
        ar_calls = 0;
        ar_fail_at = 0;
        for (k = 0; k < 3; k++) {
            vstep(r);
            wref_step(&f);
            for (i = 0; i < 5; i++)
                near(r->q.w[i], f.w[i], 2e-6, 1.0, "WSAM with an all-reduce");
        }
        ck_assert_int_eq(ar_calls, mode == REGOPT_SAM_WSAM_DECOUPLED ? 6 : 3);
        for (k = 1; k <= (mode == REGOPT_SAM_WSAM_DECOUPLED ? 2 : 1); k++) {
            before = save_all(r, &n1);
            ar_fail_at = ar_calls + k;
            ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_ALLREDUCE);
            after = save_all(r, &n2);
            ck_assert_uint_eq(n1, n2);
            ck_assert_msg(memcmp(before, after, n1) == 0, "a failed all-reduce %d changed "
                          "the checkpoint", k);
            free(before);
            free(after);
        }
        vrun_close(r);
    }
}
END_TEST

/* The raw step moves the weights after the update: trainer.check_host
 * records them after it, so the next step does not take it for the host
 * writing behind the library's back. */
START_TEST(wsam_with_check_host)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.01, 0, 0.1, 1);
    int k;
    MUST(regopt_trainer_set_int(r->t, REGOPT_TRAINER_CHECK_HOST, 1));
    vset(r, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    for (k = 0; k < 3; k++)
        vstep(r);
    r->q.w[0] += 1.0f; /* and a real write is still seen */
    ck_assert_int_eq(regopt_trainer_step(r->t, &r->b, 1), REGOPT_ERR_STATE);
    vrun_close(r);
}
END_TEST

/* Resume with decoupled WSAM and momentum: bit for bit (WSAM keeps no
 * state: the options and the optimizer's moments are enough). */
START_TEST(wsam_resume_is_exact)
{
    vrun *a = vrun_open(6, REGOPT_SGD, 0.01, 0, 0.2, 1);
    vrun *b = vrun_open(6, REGOPT_SGD, 0.01, 0, 0.2, 1);
    vrun *c = vrun_open(6, REGOPT_SGD, 0.01, 0, 0.2, 1);
    unsigned char *buf;
    size_t n;
    int k;
    MUST(regopt_optimizer_set_double(a->o, REGOPT_OPT_MOMENTUM, 0.9));
    MUST(regopt_optimizer_set_double(b->o, REGOPT_OPT_MOMENTUM, 0.9));
    vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    vset(b, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_DECOUPLED);
    for (k = 0; k < 5; k++)
        vstep(a);
    vstep(b);
    vstep(b);
    buf = save_all(b, &n);
    TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
    for (k = 0; k < 3; k++)
        vstep(c);
    same_w(a, c, "WSAM resumed");
    free(buf);
    vrun_close(a);
    vrun_close(b);
    vrun_close(c);
}
END_TEST

/* ======================================================================== */
/* 5. SAM-ON: sam.group_perturb                                             */
/* ======================================================================== */

/* Group 1 ("b", elements 3 and 4) out of the ascent: its norm and eps
 * cover "a" only; plain SAM, ASAM (the ASAM-ON recipe: eta 0) and VaSSO. */
static void sam_on_reference(int dir, int adaptive)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, dir, adaptive ? 2.0 : 0.1, 1);
    vref f;
    int k;
    ck_assert_uint_eq(r->q.n0, 3);
    RMUST(r->sam, regopt_regularizer_set_group(r->sam, 1, REGOPT_SAM_GROUP_PERTURB, 0));
    vset(r, REGOPT_SAM_ADAPTIVE, adaptive);
    vset(r, REGOPT_SAM_ETA, 0.0);
    vref_init(&f, 5, dir, adaptive ? 2.0 : 0.1, 0.02);
    f.adaptive = adaptive;
    f.eta = 0.0;
    f.out_from = 3;
    for (k = 0; k < 3; k++) {
        vstep(r);
        vref_step(&f, 1);
        vref_compare(&f, r, 1, "SAM-ON", k);
    }
    vrun_close(r);
}

START_TEST(sam_on_first_steps)
{
    sam_on_reference(0, 0);
    sam_on_reference(0, 1);
    sam_on_reference(2, 0);
}
END_TEST

/* Every group out: no ascent, the base optimizer alone bit for bit (with
 * two passes still: the clean one gives g, the ascent norm is 0). Every
 * group in (the default): SAM. */
START_TEST(sam_on_identities)
{
    vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    double v = -1.0;
    int k;
    RMUST(b->sam, regopt_regularizer_get_group(b->sam, 1, REGOPT_SAM_GROUP_PERTURB, &v));
    ck_assert_double_eq(v, 1.0);
    RMUST(a->sam, regopt_regularizer_set_group(a->sam, 0, REGOPT_SAM_GROUP_PERTURB, 0));
    RMUST(a->sam, regopt_regularizer_set_group(a->sam, 1, REGOPT_SAM_GROUP_PERTURB, 0));
    TMUST(b->t, regopt_trainer_detach(b->t, b->sam));
    for (k = 0; k < 4; k++) {
        vstep(a);
        vstep(b);
        same_w(a, b, "no group perturbed vs the base optimizer");
        ck_assert_int_eq(rstat(a->sam, REGOPT_STAT_SAM_APPLIED), 0);
    }
    ck_assert_int_ne(regopt_regularizer_set_group(a->sam, 1, REGOPT_SAM_GROUP_PERTURB, 2),
                     REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_group(a->sam, 64, REGOPT_SAM_GROUP_PERTURB, 1),
                     REGOPT_OK);
    ck_assert_int_ne(regopt_regularizer_set_group(a->sam, -1, REGOPT_SAM_GROUP_PERTURB, 1),
                     REGOPT_OK);
    RMUST(a->sam, regopt_regularizer_get_group(a->sam, 1, REGOPT_SAM_GROUP_PERTURB, &v));
    ck_assert_double_eq(v, 0.0);
    vrun_close(a);
    vrun_close(b);
}
END_TEST

/* The flag goes through checkpoints' options: resume bit for bit. */
START_TEST(sam_on_resume_is_exact)
{
    vrun *a = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
    vrun *b = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
    vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.2, 1);
    unsigned char *buf;
    size_t n;
    double v = -1.0;
    int k;
    RMUST(a->sam, regopt_regularizer_set_group(a->sam, 0, REGOPT_SAM_GROUP_PERTURB, 0));
    RMUST(b->sam, regopt_regularizer_set_group(b->sam, 0, REGOPT_SAM_GROUP_PERTURB, 0));
    for (k = 0; k < 5; k++)
        vstep(a);
    vstep(b);
    vstep(b);
    buf = save_all(b, &n);
    TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
    RMUST(c->sam, regopt_regularizer_get_group(c->sam, 0, REGOPT_SAM_GROUP_PERTURB, &v));
    ck_assert_double_eq(v, 0.0);
    for (k = 0; k < 3; k++)
        vstep(c);
    same_w(a, c, "SAM-ON resumed");
    free(buf);
    vrun_close(a);
    vrun_close(b);
    vrun_close(c);
}
END_TEST

/* ======================================================================== */
/* 6. LookSAM (sam.looksam)                                                 */
/* ======================================================================== */

/* Double-precision LookSAM with SGD on the quadratic host: SAM steps every
 * k-th step store g_v per tensor ("a" = [0, n0), "b" = [n0, n)). */
static void look_ref_step(double *w, double *gv, size_t n, size_t n0, int sam_step,
                          double rho, double lr, double alpha)
{
    double g[8], gs[8], s2 = 0.0, c;
    size_t i, t;
    for (i = 0; i < n; i++) {
        g[i] = h_of(i) * w[i];
        s2 += g[i] * g[i];
    }
    if (sam_step) {
        c = rho / (sqrt(s2) + 1e-12);
        for (i = 0; i < n; i++)
            gs[i] = h_of(i) * (w[i] + c * g[i]);
        for (t = 0; t < 2; t++) {
            size_t lo = t ? n0 : 0, hi = t ? n : n0;
            double d = 0.0, n2 = 0.0;
            for (i = lo; i < hi; i++) {
                d += g[i] * gs[i];
                n2 += g[i] * g[i];
            }
            for (i = lo; i < hi; i++)
                gv[i] = gs[i] - (n2 > 0.0 ? d / n2 : 0.0) * g[i];
        }
        for (i = 0; i < n; i++)
            w[i] -= lr * gs[i];
        return;
    }
    for (t = 0; t < 2; t++) {
        size_t lo = t ? n0 : 0, hi = t ? n : n0;
        double ng = 0.0, nv = 0.0;
        for (i = lo; i < hi; i++) {
            ng += g[i] * g[i];
            nv += gv[i] * gv[i];
        }
        c = alpha * sqrt(ng) / (sqrt(nv) + 1e-8);
        for (i = lo; i < hi; i++)
            w[i] -= lr * (g[i] + c * gv[i]);
    }
}

START_TEST(looksam_first_steps)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.1, 1);
    double w[8], gv[8] = {0};
    char what[64];
    size_t i;
    int k;
    vset(r, REGOPT_SAM_LOOKSAM, 1);
    vset(r, REGOPT_SAM_EVERY, 3);
    for (i = 0; i < 5; i++)
        w[i] = w0_of(i);
    for (k = 0; k < 7; k++) { /* SAM steps 0, 3, 6 */
        vstep(r);
        look_ref_step(w, gv, 5, r->q.n0, k % 3 == 0, 0.1, 0.02, 0.7);
        for (i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "LookSAM step %d w[%zu]", k, i);
            near(r->q.w[i], w[i], 2e-6, 1.0, what);
        }
        ck_assert_int_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), k % 3 == 0);
        if (k % 3 != 0)
            ck_assert_double_eq(rstat(r->sam, REGOPT_STAT_SAM_RHO), 0.0);
    }
    /* one pass per reuse step, two per SAM step: 3 SAM + 4 reuse */
    ck_assert_int_eq(r->q.forwards, 3 * 2 + 4);
    vrun_close(r);
}
END_TEST

/* k = 1: every step is a SAM step: SAM bit for bit (also with FriendlySAM
 * and m-sharpness); looksam with sam.gsam or sam.wsam is refused. */
START_TEST(looksam_identities)
{
    int dir;
    for (dir = 0; dir <= 1; dir++) {
        vrun *a = vrun_open(7, REGOPT_ADAM, 0.01, dir, 0.2, 4);
        vrun *b = vrun_open(7, REGOPT_ADAM, 0.01, dir, 0.2, 4);
        int k;
        vset(a, REGOPT_SAM_LOOKSAM, 1);
        vset(a, REGOPT_SAM_M_ROWS, dir ? 2 : 0);
        vset(b, REGOPT_SAM_M_ROWS, dir ? 2 : 0);
        for (k = 0; k < 5; k++) {
            vstep(a);
            vstep(b);
            same_w(a, b, "LookSAM k 1 vs SAM");
        }
        vset(a, REGOPT_SAM_GSAM, 1);
        ck_assert_int_eq(regopt_trainer_step(a->t, &a->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        vset(a, REGOPT_SAM_GSAM, 0);
        vset(a, REGOPT_SAM_WSAM, REGOPT_SAM_WSAM_COUPLED);
        ck_assert_int_eq(regopt_trainer_step(a->t, &a->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(a->t), "sam.looksam"));
        vrun_close(a);
        vrun_close(b);
    }
}
END_TEST

/* A failing callback in each pass of a SAM step and of a reuse step
 * leaves the checkpoint bytes (g_v and FriendlySAM's m included) as they
 * were; the run then continues as one that never failed. */
START_TEST(looksam_rollback)
{
    int at, c, back;
    for (at = 2; at <= 3; at++) /* k 2: step 2 is a SAM step, step 3 a reuse step */
        for (back = 0; back < 2; back++)
            for (c = 1; c <= (at == 2 ? 2 : 1); c++) {
                vrun *bad = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
                vrun *good = vrun_open(6, REGOPT_ADAM, 0.01, 1, 0.2, 1);
                unsigned char *before, *after;
                size_t n1, n2;
                int k;
                vset(bad, REGOPT_SAM_LOOKSAM, 1);
                vset(good, REGOPT_SAM_LOOKSAM, 1);
                vset(bad, REGOPT_SAM_EVERY, 2);
                vset(good, REGOPT_SAM_EVERY, 2);
                for (k = 0; k < at; k++) {
                    vstep(bad);
                    vstep(good);
                }
                before = save_all(bad, &n1);
                if (back)
                    bad->q.fail_backward = bad->q.backwards + c;
                else
                    bad->q.fail_forward = bad->q.forwards + c;
                ck_assert_int_eq(regopt_trainer_step(bad->t, &bad->b, 1),
                                 back ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD);
                after = save_all(bad, &n2);
                ck_assert_uint_eq(n1, n2);
                ck_assert_msg(memcmp(before, after, n1) == 0, "LookSAM step %d, %s %d: the "
                              "checkpoint changed", at, back ? "backward" : "forward", c);
                for (k = 0; k < 4; k++) {
                    vstep(bad);
                    vstep(good);
                }
                same_w(bad, good, "after continuing");
                free(before);
                free(after);
                vrun_close(bad);
                vrun_close(good);
            }
}
END_TEST

/* Resume between SAM steps (g_v held, FriendlySAM's m too): bit for bit;
 * the state holds both records. */
START_TEST(looksam_resume_is_exact)
{
    int dir;
    for (dir = 0; dir <= 1; dir++) {
        vrun *a = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *b = vrun_open(6, REGOPT_ADAM, 0.01, dir, 0.2, 1);
        vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.2, 1);
        unsigned char *buf;
        size_t n, n0;
        int k;
        vset(a, REGOPT_SAM_LOOKSAM, 1);
        vset(b, REGOPT_SAM_LOOKSAM, 1);
        vset(a, REGOPT_SAM_EVERY, 3);
        vset(b, REGOPT_SAM_EVERY, 3);
        TMUST(b->t, regopt_trainer_checkpoint_size(b->t, CK_ALL, &n0));
        for (k = 0; k < 8; k++)
            vstep(a);
        for (k = 0; k < 4; k++)
            vstep(b);
        buf = save_all(b, &n);
        ck_assert_uint_eq(n, n0 + (size_t)(dir ? 2 : 1) * (16 + 4 * 6));
        TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, buf, n));
        for (k = 0; k < 4; k++)
            vstep(c);
        same_w(a, c, "LookSAM resumed");
        free(buf);
        vrun_close(a);
        vrun_close(b);
        vrun_close(c);
    }
}
END_TEST

/* ======================================================================== */
/* 7. Momentum-SAM (sam.momentum)                                           */
/* ======================================================================== */

/* SGD with momentum 0.9 against the double-precision reference: step 0 at
 * w (v = 0), then one pass at w - rho v/||v||, v the momentum buffer. */
START_TEST(msam_first_steps)
{
    vrun *r = vrun_open(5, REGOPT_SGD, 0.02, 0, 0.3, 1);
    double w[5], buf[5] = {0}, s2, c, gp;
    char what[64];
    size_t i;
    int k;
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_MOMENTUM, 0.9));
    vset(r, REGOPT_SAM_MOMENTUM, 1);
    for (i = 0; i < 5; i++)
        w[i] = w0_of(i);
    for (k = 0; k < 4; k++) {
        vstep(r);
        for (s2 = 0.0, i = 0; i < 5; i++)
            s2 += buf[i] * buf[i];
        c = k ? -0.3 / (sqrt(s2) + 1e-12) : 0.0;
        for (i = 0; i < 5; i++) {
            gp = h_of(i) * (w[i] + c * buf[i]);
            buf[i] = k ? 0.9 * buf[i] + gp : gp;
            w[i] -= 0.02 * buf[i];
        }
        for (i = 0; i < 5; i++) {
            snprintf(what, sizeof what, "Momentum-SAM step %d w[%zu]", k, i);
            near(r->q.w[i], w[i], 2e-6, 1.0, what);
        }
        ck_assert_int_eq(rstat(r->sam, REGOPT_STAT_SAM_APPLIED), k > 0);
        if (k > 0)
            near(rstat(r->sam, REGOPT_STAT_SAM_ASCENT_NORM), sqrt(s2), 2e-6, 1.0, "||v||");
    }
    ck_assert_int_eq(r->q.forwards, 4); /* one pass per step */
    ck_assert_int_eq(r->q.backwards, 4);
    vrun_close(r);
}
END_TEST

/* rho 0 (Adam) and SGD without momentum (v stays 0): the base optimizer
 * alone, bit for bit; with the other SAM variants: refused. */
START_TEST(msam_identities)
{
    int k, which;
    for (which = 0; which < 2; which++) {
        vrun *a = vrun_open(7, which ? REGOPT_SGD : REGOPT_ADAM, 0.01, 0, which ? 0.3 : 0.0, 1);
        vrun *b = vrun_open(7, which ? REGOPT_SGD : REGOPT_ADAM, 0.01, 0, 0.2, 1);
        vset(a, REGOPT_SAM_MOMENTUM, 1);
        TMUST(b->t, regopt_trainer_detach(b->t, b->sam));
        for (k = 0; k < 5; k++) {
            vstep(a);
            vstep(b);
            same_w(a, b, "Momentum-SAM with v = 0 or rho 0 vs the base optimizer");
        }
        vset(a, REGOPT_SAM_ADAPTIVE, 1);
        ck_assert_int_eq(regopt_trainer_step(a->t, &a->b, 1), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_ptr_nonnull(strstr(regopt_trainer_message(a->t), "sam.momentum"));
        vrun_close(a);
        vrun_close(b);
    }
}
END_TEST

/* A failing forward or backward in the one (perturbed) pass: the
 * checkpoint bytes (weights included) as they were; then as a good run. */
START_TEST(msam_rollback_and_resume)
{
    int back;
    for (back = 0; back < 2; back++) {
        vrun *bad = vrun_open(6, REGOPT_ADAM, 0.01, 0, 1.0, 1);
        vrun *good = vrun_open(6, REGOPT_ADAM, 0.01, 0, 1.0, 1);
        vrun *c = vrun_open(6, REGOPT_ADAM, 0.01, 0, 0.05, 1);
        unsigned char *before, *after;
        size_t n1, n2;
        int k;
        vset(bad, REGOPT_SAM_MOMENTUM, 1);
        vset(good, REGOPT_SAM_MOMENTUM, 1);
        for (k = 0; k < 2; k++) {
            vstep(bad);
            vstep(good);
        }
        before = save_all(bad, &n1);
        if (back)
            bad->q.fail_backward = bad->q.backwards + 1;
        else
            bad->q.fail_forward = bad->q.forwards + 1;
        ck_assert_int_eq(regopt_trainer_step(bad->t, &bad->b, 1),
                         back ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD);
        after = save_all(bad, &n2);
        ck_assert_uint_eq(n1, n2);
        ck_assert_msg(memcmp(before, after, n1) == 0, "Momentum-SAM: the checkpoint changed");
        /* resume from the bytes before the failure, in a fresh trainer */
        TMUST(c->t, regopt_trainer_load_buffer(c->t, CK_ALL, before, n1));
        for (k = 0; k < 3; k++) {
            vstep(bad);
            vstep(good);
            vstep(c);
        }
        same_w(bad, good, "after continuing");
        same_w(c, good, "resumed");
        free(before);
        free(after);
        vrun_close(bad);
        vrun_close(good);
        vrun_close(c);
    }
}
END_TEST

Suite *suite_sam_variants(void)
{
    Suite *s = suite_create("sam_variants");
    TCase *tc = tcase_create("directions");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, friendly_first_steps);
    tcase_add_test(tc, vasso_first_steps);
    tcase_add_test(tc, directions_compose_with_asam);
    tcase_add_test(tc, directions_with_every_k);
    tcase_add_test(tc, defaults_are_the_papers);
    tcase_add_test(tc, friendly_sigma_zero_is_sam);
    tcase_add_test(tc, vasso_theta_one_is_sam);
    tcase_add_test(tc, directions_with_m_sharpness);
    tcase_add_test(tc, directions_same_bits_on_threads);
    tcase_add_test(tc, rollback_in_every_pass);
    tcase_add_test(tc, checkpoint_resume_is_exact);
    tcase_add_test(tc, checkpoint_without_state_loads);
    tcase_add_test(tc, direction_switch_starts_afresh);
    tcase_add_test(tc, bad_values_are_refused);
    tcase_add_test(tc, direction_buffers_out_of_memory);
    suite_add_tcase(s, tc);
    tc = tcase_create("wsam");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, wsam_first_steps);
    tcase_add_test(tc, wsam_identities);
    tcase_add_test(tc, wsam_composes);
    tcase_add_test(tc, wsam_refuses_gsam);
    tcase_add_test(tc, wsam_data_parallel);
    tcase_add_test(tc, wsam_resume_is_exact);
    tcase_add_test(tc, wsam_with_check_host);
    suite_add_tcase(s, tc);
    tc = tcase_create("sam_on");
    tcase_add_test(tc, sam_on_first_steps);
    tcase_add_test(tc, sam_on_identities);
    tcase_add_test(tc, sam_on_resume_is_exact);
    suite_add_tcase(s, tc);
    tc = tcase_create("looksam");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, looksam_first_steps);
    tcase_add_test(tc, looksam_identities);
    tcase_add_test(tc, looksam_rollback);
    tcase_add_test(tc, looksam_resume_is_exact);
    suite_add_tcase(s, tc);
    tc = tcase_create("momentum_sam");
    tcase_add_test(tc, msam_first_steps);
    tcase_add_test(tc, msam_identities);
    tcase_add_test(tc, msam_rollback_and_resume);
    suite_add_tcase(s, tc);
    return s;
}
