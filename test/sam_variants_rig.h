/* sam_variants_rig.h — the rig of the SAM variants' suite
 * (check_sam_variants.c: FriendlySAM, VaSSO; check_sam_wsam.c: WSAM;
 * check_sam_look.c: SAM-ON, LookSAM; check_sam_momentum.c: Momentum-SAM):
 * the quadratic host, runs over it, the double-precision reference of
 * sam.direction, checkpoint saving, and the test cases each file adds to
 * suite_sam_variants. */
#ifndef REGOPT_SAM_VARIANTS_RIG_H
#define REGOPT_SAM_VARIANTS_RIG_H

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

static inline int v_forward(const regopt_pass *p, void *user)
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

static inline int v_backward(const regopt_pass *p, void *user)
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
static inline int v_loss(const regopt_batch *b, const float *z, size_t rows, size_t width,
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

static inline float h_of(size_t i) { return 1.0f + (float)(i * 7 % 13); }
static inline float w0_of(size_t i) { return (float)sin(0.3 * (double)i + 0.1); }

/* A trainer over n elements with SGD (lr, momentum mom) and SAM attached
 * with direction dir, rho, and the batch of `rows` rows. */
static inline vrun *vrun_open(size_t n, regopt_optimizer_kind kind, double lr, int dir, double rho,
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

static inline void vrun_close(vrun *r)
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

static inline void vset(vrun *r, regopt_key key, double v)
{
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, key, v));
}

static inline void vstep(vrun *r) { TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1)); }

static inline void same_w(const vrun *a, const vrun *b, const char *what)
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

static inline void vref_init(vref *f, size_t n, int dir, double rho, double lr)
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

static inline double vref_loss(const vref *f, const double *w)
{
    double L = 0.0;
    size_t i;
    for (i = 0; i < f->n; i++)
        L += 0.5 * h_of(i) * w[i] * w[i];
    return L;
}

/* One SAM step (sam_step 0: a plain step, the state untouched). */
static inline void vref_step(vref *f, int sam_step)
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

static inline void vref_compare(const vref *f, const vrun *r, int applied, const char *what, int k)
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

#define CK_ALL (REGOPT_CHECKPOINT_OPTIONS | REGOPT_CHECKPOINT_PARAMS)

static inline unsigned char *save_all(const vrun *r, size_t *size)
{
    unsigned char *buf;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, CK_ALL, size));
    buf = malloc(*size);
    ck_assert_ptr_nonnull(buf);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, CK_ALL, buf, *size, NULL));
    return buf;
}

/* The test cases of suite_sam_variants, in its order. */
TCase *sam_wsam_tcase(void);    /* check_sam_wsam.c */
TCase *sam_on_tcase(void);      /* check_sam_look.c */
TCase *sam_looksam_tcase(void); /* check_sam_look.c */
TCase *sam_momentum_tcase(void); /* check_sam_momentum.c */

#endif
