/* rdrop_rig.h — the rig of the R-Drop suites (check_rdrop.c,
 * check_rdrop_passes.c, check_rdrop_errors.c): a host whose parameters are
 * its outputs, a trainer over it, global rows cut into micro-batches, and
 * the double-precision reference of the R-Drop objective. */
#ifndef REGOPT_RDROP_RIG_H
#define REGOPT_RDROP_RIG_H

#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* The host: its parameters ARE the outputs. Row r (global: batch row0 +     */
/* row_offset + i), class k of pass q (0 = first, 1 = second):               */
/*   z = p[r*K+k] * f(seed_q, r*K+k) + bias[q][r*K+k],                       */
/*   f = 1 + amp * (u - 1/2), u = regopt_random_uniform(seed_q, r*K+k)      */
/* so two passes with different seeds differ (a dropout-like multiplier),    */
/* and bias lets a test put any value (even NaN) into any output.            */
/* ======================================================================== */

#define RK_MAX 4
#define RROWS 8
#define RCALLS 96
#define RP (RROWS * RK_MAX)

typedef struct rcall {
    int backward;
    int32_t slot;
    uint32_t flags;
    uint64_t seed, seed2;
    size_t rows, row_offset, micro_batch;
    double psum; /* sum of the parameters when called */
} rcall;

typedef struct rhost {
    size_t k;
    int32_t slots;
    uint32_t caps;
    float amp;
    float p[RP], g[RP];
    float bias[2][RP];
    float out[2][RP], dout[2][RP]; /* last outputs / d_outputs per pass and global row */
    uint64_t held_seed[2][2];      /* per slot: seed, seed2 of its forward */
    uint32_t held_flags[2];
    size_t held_rows[2], held_off[2];
    int forwards, backwards, fail_forward, fail_backward, violations;
    int ncalls;
    rcall calls[RCALLS];
} rhost;

typedef struct rbatch {
    size_t row0; /* global row of the batch's first row */
} rbatch;

static inline float rh_factor(const rhost *h, uint64_t seed, size_t r, size_t k, uint32_t flags)
{
    float u = 0.0f;
    if (!(flags & REGOPT_PASS_TRAIN) || h->amp == 0.0f)
        return 1.0f;
    MUST(regopt_random_uniform(seed, r * h->k + k, &u, 1));
    return 1.0f + h->amp * (u - 0.5f);
}

/* Row i of a pass: which pass (q), which global row, which seed. */
static inline void rh_locate(size_t row0, int32_t slot, uint32_t flags, const uint64_t seeds[2],
                      size_t rows, size_t off, size_t i, int *q, size_t *r, uint64_t *s)
{
    int dbl = (flags & REGOPT_PASS_DOUBLED) != 0;
    size_t n = dbl ? rows / 2 : rows;
    int second = dbl ? i >= n : slot == 1;
    *q = second;
    *r = row0 + off + (dbl && second ? i - n : i);
    *s = dbl && second ? seeds[1] : seeds[0];
}

static inline void rh_record(rhost *h, const regopt_pass *p, int backward)
{
    rcall *c;
    size_t j;
    if (h->ncalls >= RCALLS)
        return;
    c = &h->calls[h->ncalls++];
    memset(c, 0, sizeof *c);
    c->backward = backward;
    c->slot = p->slot;
    c->flags = p->flags;
    c->seed = p->seed;
    c->seed2 = p->seed2;
    c->rows = p->rows;
    c->row_offset = p->row_offset;
    c->micro_batch = p->micro_batch;
    for (j = 0; j < RP; j++)
        c->psum += h->p[j];
}

static inline int rh_forward(const regopt_pass *p, void *user)
{
    rhost *h = user;
    const rbatch *b = p->batch;
    int dbl = (p->flags & REGOPT_PASS_DOUBLED) != 0;
    size_t i, k, n = dbl ? p->rows / 2 : p->rows;
    rh_record(h, p, 0);
    h->forwards++;
    if (p->slot < 0 || p->slot >= h->slots || p->slot > 1 || p->output_width != h->k ||
        (dbl && (!(h->caps & REGOPT_CAP_DOUBLED_BATCH) || p->rows % 2)) ||
        b->row0 + p->row_offset + n > RROWS) {
        h->violations++;
        return 5;
    }
    if (h->forwards == h->fail_forward)
        return 7;
    h->held_seed[p->slot][0] = p->seed;
    h->held_seed[p->slot][1] = p->seed2;
    h->held_flags[p->slot] = p->flags;
    h->held_rows[p->slot] = p->rows;
    h->held_off[p->slot] = p->row_offset;
    for (i = 0; i < p->rows; i++) {
        int q;
        size_t r;
        uint64_t s;
        rh_locate(b->row0, p->slot, p->flags, h->held_seed[p->slot], p->rows, p->row_offset, i,
                  &q, &r, &s);
        for (k = 0; k < h->k; k++) {
            float z = h->p[r * h->k + k] * rh_factor(h, s, r, k, p->flags) +
                      h->bias[q][r * h->k + k];
            p->outputs[i * h->k + k] = z;
            h->out[q][r * h->k + k] = z;
        }
    }
    return 0;
}

static inline int rh_backward(const regopt_pass *p, void *user)
{
    rhost *h = user;
    const rbatch *b = p->batch;
    size_t i, k;
    int32_t sl = p->slot;
    rh_record(h, p, 1);
    h->backwards++;
    if (sl < 0 || sl > 1 || sl >= h->slots || p->rows != h->held_rows[sl] ||
        p->row_offset != h->held_off[sl] || !p->d_outputs) {
        h->violations++;
        return 5;
    }
    if (h->backwards == h->fail_backward)
        return 9;
    for (i = 0; i < p->rows; i++) {
        int q;
        size_t r;
        uint64_t s;
        rh_locate(b->row0, sl, h->held_flags[sl], h->held_seed[sl], p->rows, p->row_offset, i,
                  &q, &r, &s);
        for (k = 0; k < h->k; k++) {
            float d = p->d_outputs[i * h->k + k];
            h->dout[q][r * h->k + k] = d;
            h->g[r * h->k + k] += d * rh_factor(h, s, r, k, h->held_flags[sl]);
        }
    }
    return 0;
}

#define RIG_MAX_REGS 6

typedef struct rig {
    rhost h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_allocator al; /* the rig's allocator (has_al), for its regularizers too */
    int has_al;
    regopt_regularizer *rdrop; /* always made; attached when rig_open's rdrop is 1 */
    regopt_regularizer *sam;   /* when a test attaches SAM */
    regopt_regularizer *regs[RIG_MAX_REGS]; /* every handle rig_new made */
    int nregs;
} rig;

/* A new regularizer from the rig's allocator, freed by rig_close. */
static inline regopt_regularizer *rig_new(rig *r, regopt_regularizer_kind kind)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *g = regopt_regularizer_create(kind, r->has_al ? &r->al : NULL, &st);
    ck_assert_msg(g != NULL, "regopt_regularizer_create(%d) -> %s: %s", (int)kind,
                  regopt_status_string(st), regopt_last_error_message());
    ck_assert_int_lt(r->nregs, RIG_MAX_REGS);
    r->regs[r->nregs++] = g;
    ck_assert_int_eq(regopt_regularizer_get_kind(g), kind);
    return g;
}

static inline void rig_attach(rig *r, regopt_regularizer *g)
{
    TMUST(r->t, regopt_trainer_attach(r->t, g));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), r->t);
}

static inline rig *rig_open(size_t k, int32_t slots, uint32_t caps, int rdrop,
                     regopt_optimizer_kind kind, const regopt_allocator *a)
{
    rig *r = calloc(1, sizeof *r);
    regopt_status st = REGOPT_OK;
    size_t j;
    ck_assert_ptr_nonnull(r);
    if (a) {
        r->al = *a;
        r->has_al = 1;
    }
    r->h.k = k;
    r->h.slots = slots;
    r->h.caps = caps;
    r->h.amp = 0.2f;
    for (j = 0; j < RP; j++)
        r->h.p[j] = (float)(0.8 * sin(1.3 * (double)j + 0.4));
    r->m = regopt_model_create(a, &st);
    ck_assert_msg(r->m != NULL, "model: %s", regopt_status_string(st));
    MUST(regopt_model_add_param(r->m, "z", r->h.p, r->h.g, RROWS * k, REGOPT_DTYPE_FLOAT32, 0));
    MUST(regopt_model_set_output_width(r->m, k));
    MUST(regopt_model_set_slots(r->m, slots));
    MUST(regopt_model_set_capabilities(r->m, caps));
    MUST(regopt_model_set_callbacks(r->m, rh_forward, rh_backward, &r->h, NULL));
    r->o = regopt_optimizer_create(kind, a, &st);
    ck_assert_msg(r->o != NULL, "optimizer: %s", regopt_status_string(st));
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.1));
    r->t = regopt_trainer_create(r->m, r->o, &st);
    ck_assert_msg(r->t != NULL, "trainer: %s", regopt_status_string(st));
    r->rdrop = rig_new(r, REGOPT_REG_RDROP);
    if (rdrop)
        rig_attach(r, r->rdrop);
    return r;
}

/* The trainer first (it detaches everything), then the regularizers. */
static inline void rig_close(rig *r)
{
    int i;
    regopt_trainer_free(r->t);
    for (i = 0; i < r->nregs; i++) {
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r->regs[i]));
        regopt_regularizer_free(r->regs[i]);
    }
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
    free(r);
}

/* A trainer key. */
static inline void tset(rig *r, regopt_key key, double v)
{
    TMUST(r->t, regopt_trainer_set_double(r->t, key, v));
}

/* An R-Drop key, on the rig's R-Drop handle. */
static inline void rset(rig *r, regopt_key key, double v)
{
    RMUST(r->rdrop, regopt_regularizer_set_double(r->rdrop, key, v));
}

static inline int64_t rstat_int(const regopt_regularizer *g, regopt_key key)
{
    int64_t v = -12345;
    MUST(regopt_regularizer_get_int(g, key, &v));
    return v;
}

/* A statistic of the last step from whichever handle owns the key: the
 * SAM handle (1000..1099), the R-Drop handle (1100..1199) or the trainer. */
static inline double kstat(const rig *r, regopt_key key)
{
    if (key >= 1000 && key < 1100)
        return rstat(r->sam, key);
    if (key >= 1100 && key < 1200)
        return rstat(r->rdrop, key);
    return stat(r->t, key);
}

/* ---- data: global rows, cut into micro-batches --------------------------- */

typedef struct rdata {
    size_t n, k, count;
    int32_t y[RROWS];
    float tg[RP];
    uint8_t mask[RROWS];
    float w[RROWS];
    int use_mask, use_w;
    size_t rows[4];
    rbatch hb[4];
    regopt_batch b[4];
} rdata;

static inline void data_build(rdata *d)
{
    size_t i, r0 = 0;
    for (i = 0; i < d->count; i++) {
        d->hb[i].row0 = r0;
        regopt_batch_init(&d->b[i]);
        d->b[i].data = &d->hb[i];
        d->b[i].rows = d->rows[i];
        d->b[i].labels = d->y + r0;
        d->b[i].targets = d->tg + r0 * d->k;
        d->b[i].mask = d->use_mask ? d->mask + r0 : NULL;
        d->b[i].weights = d->use_w ? d->w + r0 : NULL;
        r0 += d->rows[i];
    }
    d->n = r0;
}

static inline void data_init(rdata *d, size_t k, size_t count, const size_t *rows)
{
    size_t i, j;
    memset(d, 0, sizeof *d);
    d->k = k;
    d->count = count;
    for (i = 0; i < count; i++)
        d->rows[i] = rows[i];
    for (i = 0; i < RROWS; i++) {
        d->y[i] = (int32_t)((3 * i + 1) % k);
        d->mask[i] = 1;
        d->w[i] = 1.0f;
        for (j = 0; j < k; j++)
            d->tg[i * k + j] = (float)(0.5 * cos(0.7 * (double)i + 1.1 * (double)j));
    }
    data_build(d);
}

/* Mask {1,1,0,1,1,...} and weights {0.5,1,2,1.5,0.25,...} on rows 0..4. */
static inline void data_mask_weights(rdata *d, int weights)
{
    static const float w[5] = {0.5f, 1.0f, 2.0f, 1.5f, 0.25f};
    size_t i;
    d->use_mask = 1;
    d->use_w = weights;
    for (i = 0; i < 5; i++) {
        d->mask[i] = i != 2;
        d->w[i] = w[i];
    }
    data_build(d);
}

static inline void rstep(rig *r, rdata *d)
{
    TMUST(r->t, regopt_trainer_step(r->t, d->b, d->count));
}

/* ---- double-precision reference ------------------------------------------ */

typedef struct rcfg {
    double alpha, ce_w, smooth;
    int kl_sum, mse;
} rcfg;

typedef struct rterms {
    double l1, l2, c, obj, weight;
} rterms;

static inline void log_softmax(const double *z, size_t k, double *ls)
{
    double m = z[0], s = 0.0;
    size_t j;
    for (j = 1; j < k; j++)
        m = z[j] > m ? z[j] : m;
    for (j = 0; j < k; j++)
        s += exp(z[j] - m);
    for (j = 0; j < k; j++)
        ls[j] = z[j] - m - log(s);
}

static inline double ref_ce(const double *z, size_t k, int32_t y, double s)
{
    double ls[RK_MAX], l = 0.0;
    size_t j;
    log_softmax(z, k, ls);
    for (j = 0; j < k; j++)
        l -= ((j == (size_t)y ? 1.0 - s : 0.0) + s / (double)k) * ls[j];
    return l;
}

static inline double ref_kl(const double *a, const double *b, size_t k)
{
    double la[RK_MAX], lb[RK_MAX], s = 0.0;
    size_t j;
    log_softmax(a, k, la);
    log_softmax(b, k, lb);
    for (j = 0; j < k; j++)
        s += exp(la[j]) * (la[j] - lb[j]);
    return s;
}

static inline double ref_cons(const double *a, const double *b, size_t k)
{
    return 0.5 * (ref_kl(a, b, k) + ref_kl(b, a, k));
}

static inline double ref_sq(const double *a, const float *t, const double *b, size_t k)
{
    double s = 0.0;
    size_t j;
    for (j = 0; j < k; j++) {
        double d = a[j] - (t ? (double)t[j] : b[j]);
        s += d * d;
    }
    return s / (double)k;
}

/* The R-Drop terms over the global rows of d, z1/z2 in global-row layout. */
static inline rterms ref_terms(const rcfg *c, const rdata *d, const double *z1, const double *z2)
{
    rterms t;
    size_t i, k = d->k;
    double sc = 0.0;
    memset(&t, 0, sizeof t);
    for (i = 0; i < d->n; i++) {
        double mw = (d->use_mask && !d->mask[i]) ? 0.0 : (d->use_w ? (double)d->w[i] : 1.0);
        const double *a = z1 + i * k, *b = z2 + i * k;
        if (mw == 0.0)
            continue;
        t.weight += mw;
        if (c->mse) {
            t.l1 += mw * ref_sq(a, d->tg + i * k, NULL, k);
            t.l2 += mw * ref_sq(b, d->tg + i * k, NULL, k);
            sc += mw * ref_sq(a, NULL, b, k);
        } else {
            t.l1 += mw * ref_ce(a, k, d->y[i], c->smooth);
            t.l2 += mw * ref_ce(b, k, d->y[i], c->smooth);
            sc += mw * ref_cons(a, b, k);
        }
    }
    t.l1 /= t.weight;
    t.l2 /= t.weight;
    t.c = c->kl_sum ? sc : sc / t.weight;
    t.obj = c->ce_w * (t.l1 + t.l2) + c->alpha * t.c;
    return t;
}

/* The reference on the outputs the host last produced. */
static inline rterms ref_on_host(const rcfg *c, const rdata *d, const rhost *h)
{
    double z1[RP], z2[RP];
    size_t j;
    for (j = 0; j < d->n * d->k; j++) {
        z1[j] = h->out[0][j];
        z2[j] = h->out[1][j];
    }
    return ref_terms(c, d, z1, z2);
}

static inline void rig_cfg(rig *r, const rcfg *c)
{
    rset(r, REGOPT_RDROP_ALPHA, c->alpha);
    rset(r, REGOPT_RDROP_CE_WEIGHT, c->ce_w);
    tset(r, REGOPT_TRAINER_LABEL_SMOOTHING, c->smooth);
    rset(r, REGOPT_RDROP_KL_SUM, c->kl_sum);
    tset(r, REGOPT_TRAINER_LOSS, c->mse ? REGOPT_LOSS_MSE : REGOPT_LOSS_SOFTMAX_CE);
}

/* A rig whose outputs are exactly the biases: p = 0 before every step. */
static inline double objective_at(rig *r, rdata *d)
{
    memset(r->h.p, 0, sizeof r->h.p);
    rstep(r, d);
    return stat(r->t, REGOPT_STAT_OBJECTIVE);
}

#define CAP REGOPT_CAP_DOUBLED_BATCH

#endif
