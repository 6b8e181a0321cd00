/* check_rdrop.c — R-Drop (Liang et al. 2021): the docs/methods.md §9 reference
 * vector, finite differences of the whole objective (CE with label
 * smoothing, MSE, kl_sum), the padding mask, call order and seeds, the
 * doubled batch against the two-call mode, statistics and rdrop.every,
 * composition with SAM, options, rollback and allocation.
 * Expected values come from closed forms or from double-precision
 * references written here, never from the library's own output. */
#include "tests.h"
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

static float rh_factor(const rhost *h, uint64_t seed, size_t r, size_t k, uint32_t flags)
{
    float u = 0.0f;
    if (!(flags & REGOPT_PASS_TRAIN) || h->amp == 0.0f)
        return 1.0f;
    MUST(regopt_random_uniform(seed, r * h->k + k, &u, 1));
    return 1.0f + h->amp * (u - 0.5f);
}

/* Row i of a pass: which pass (q), which global row, which seed. */
static void rh_locate(size_t row0, int32_t slot, uint32_t flags, const uint64_t seeds[2],
                      size_t rows, size_t off, size_t i, int *q, size_t *r, uint64_t *s)
{
    int dbl = (flags & REGOPT_PASS_DOUBLED) != 0;
    size_t n = dbl ? rows / 2 : rows;
    int second = dbl ? i >= n : slot == 1;
    *q = second;
    *r = row0 + off + (dbl && second ? i - n : i);
    *s = dbl && second ? seeds[1] : seeds[0];
}

static void rh_record(rhost *h, const regopt_pass *p, int backward)
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

static int rh_forward(const regopt_pass *p, void *user)
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

static int rh_backward(const regopt_pass *p, void *user)
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
static regopt_regularizer *rig_new(rig *r, regopt_regularizer_kind kind)
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

static void rig_attach(rig *r, regopt_regularizer *g)
{
    TMUST(r->t, regopt_trainer_attach(r->t, g));
    ck_assert_ptr_eq(regopt_regularizer_get_trainer(g), r->t);
}

static rig *rig_open(size_t k, int32_t slots, uint32_t caps, int rdrop,
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
static void rig_close(rig *r)
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
static void tset(rig *r, regopt_key key, double v)
{
    TMUST(r->t, regopt_trainer_set_double(r->t, key, v));
}

/* An R-Drop key, on the rig's R-Drop handle. */
static void rset(rig *r, regopt_key key, double v)
{
    RMUST(r->rdrop, regopt_regularizer_set_double(r->rdrop, key, v));
}

static int64_t rstat_int(const regopt_regularizer *g, regopt_key key)
{
    int64_t v = -12345;
    MUST(regopt_regularizer_get_int(g, key, &v));
    return v;
}

/* A statistic of the last step from whichever handle owns the key: the
 * SAM handle (1000..1099), the R-Drop handle (1100..1199) or the trainer. */
static double kstat(const rig *r, regopt_key key)
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

static void data_build(rdata *d)
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

static void data_init(rdata *d, size_t k, size_t count, const size_t *rows)
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
static void data_mask_weights(rdata *d, int weights)
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

static void rstep(rig *r, rdata *d)
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

static void log_softmax(const double *z, size_t k, double *ls)
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

static double ref_ce(const double *z, size_t k, int32_t y, double s)
{
    double ls[RK_MAX], l = 0.0;
    size_t j;
    log_softmax(z, k, ls);
    for (j = 0; j < k; j++)
        l -= ((j == (size_t)y ? 1.0 - s : 0.0) + s / (double)k) * ls[j];
    return l;
}

static double ref_kl(const double *a, const double *b, size_t k)
{
    double la[RK_MAX], lb[RK_MAX], s = 0.0;
    size_t j;
    log_softmax(a, k, la);
    log_softmax(b, k, lb);
    for (j = 0; j < k; j++)
        s += exp(la[j]) * (la[j] - lb[j]);
    return s;
}

static double ref_cons(const double *a, const double *b, size_t k)
{
    return 0.5 * (ref_kl(a, b, k) + ref_kl(b, a, k));
}

static double ref_sq(const double *a, const float *t, const double *b, size_t k)
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
static rterms ref_terms(const rcfg *c, const rdata *d, const double *z1, const double *z2)
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
static rterms ref_on_host(const rcfg *c, const rdata *d, const rhost *h)
{
    double z1[RP], z2[RP];
    size_t j;
    for (j = 0; j < d->n * d->k; j++) {
        z1[j] = h->out[0][j];
        z2[j] = h->out[1][j];
    }
    return ref_terms(c, d, z1, z2);
}

static void rig_cfg(rig *r, const rcfg *c)
{
    rset(r, REGOPT_RDROP_ALPHA, c->alpha);
    rset(r, REGOPT_RDROP_CE_WEIGHT, c->ce_w);
    tset(r, REGOPT_TRAINER_LABEL_SMOOTHING, c->smooth);
    rset(r, REGOPT_RDROP_KL_SUM, c->kl_sum);
    tset(r, REGOPT_TRAINER_LOSS, c->mse ? REGOPT_LOSS_MSE : REGOPT_LOSS_SOFTMAX_CE);
}

/* A rig whose outputs are exactly the biases: p = 0 before every step. */
static double objective_at(rig *r, rdata *d)
{
    memset(r->h.p, 0, sizeof r->h.p);
    rstep(r, d);
    return stat(r->t, REGOPT_STAT_OBJECTIVE);
}

#define CAP REGOPT_CAP_DOUBLED_BATCH

/* ======================================================================== */
/* 1. The reference vector of docs/methods.md §9 (RV-RDROP)                 */
/* ======================================================================== */

static const double RV_Z1[3] = {1.0, 2.0, 3.0}, RV_Z2[3] = {1.0, 1.0, 1.0};
static const double RV_C = 0.2876051913022206;
static const double RV_G1[3] = {-0.1925599268863825, -0.11468760987408287,
                                0.30724753676046535};

START_TEST(reference_vector)
{
    int mode, ce;
    double g2[3];
    size_t j;
    /* the reference itself against docs/methods.md §9 (RV-RDROP) */
    near(ref_kl(RV_Z2, RV_Z1, 3), 0.30899367577627057, 1e-14, 0, "KL(P2||P1)");
    near(ref_kl(RV_Z1, RV_Z2, 3), 0.2662167068281707, 1e-14, 0, "KL(P1||P2)");
    near(ref_cons(RV_Z1, RV_Z2, 3), RV_C, 1e-14, 0, "c");
    for (j = 0; j < 3; j++) { /* gradient w.r.t. z1 and z2 by double finite differences */
        double a[3], b[3], h = 1e-6;
        memcpy(a, RV_Z1, sizeof a);
        memcpy(b, RV_Z1, sizeof b);
        a[j] += h;
        b[j] -= h;
        near((ref_cons(a, RV_Z2, 3) - ref_cons(b, RV_Z2, 3)) / (2 * h), RV_G1[j], 1e-8, 1,
             "reference dc/dz1 by differences");
        memcpy(a, RV_Z2, sizeof a);
        memcpy(b, RV_Z2, sizeof b);
        a[j] += h;
        b[j] -= h;
        g2[j] = (ref_cons(RV_Z1, a, 3) - ref_cons(RV_Z1, b, 3)) / (2 * h);
    }
    for (mode = 0; mode < 2; mode++)
        for (ce = 0; ce < 2; ce++) {
            rig *r = mode ? rig_open(3, 1, CAP, 1, REGOPT_SGD, NULL)
                          : rig_open(3, 2, 0, 1, REGOPT_SGD, NULL);
            rdata d;
            size_t rows[1] = {1};
            double lse1 = log(exp(1.0) + exp(2.0) + exp(3.0)), p1[3];
            data_init(&d, 3, 1, rows);
            d.y[0] = 0;
            r->h.amp = 0.0f;
            memset(r->h.p, 0, sizeof r->h.p);
            for (j = 0; j < 3; j++) {
                r->h.bias[0][j] = (float)RV_Z1[j];
                r->h.bias[1][j] = (float)RV_Z2[j];
                p1[j] = exp(RV_Z1[j] - lse1);
            }
            if (!ce)
                rset(r, REGOPT_RDROP_CE_WEIGHT, 0.0);
            rstep(r, &d);
            ck_assert_int_eq(r->h.violations, 0);
            near(rstat(r->rdrop, REGOPT_STAT_RDROP_CONSISTENCY), RV_C, 1e-6, 0, "stat.rdrop_consistency");
            near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS1), lse1 - 1.0, 1e-6, 0, "loss1 = CE([1,2,3], 0)");
            near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS2), log(3.0), 1e-6, 0, "loss2 = log 3");
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), (ce ? lse1 - 1.0 + log(3.0) : 0.0) + RV_C,
                 1e-6, 0, "stat.objective");
            for (j = 0; j < 3; j++) {
                /* pass 1: minus the CE part softmax(z1) - onehot(0) when it is on */
                double ce1 = ce ? p1[j] - (j == 0) : 0.0, ce2 = ce ? 1.0 / 3.0 - (j == 0) : 0.0;
                near(r->h.dout[0][j] - ce1, RV_G1[j], 1e-6, 1, "d_outputs of pass 1 (KL part)");
                near(r->h.dout[1][j] - ce2, g2[j], 1e-6, 1, "d_outputs of pass 2 (KL part)");
            }
            rig_close(r);
        }
}
END_TEST

/* ======================================================================== */
/* 2. Finite differences of the whole objective                             */
/* ======================================================================== */

static void fd_case(const rcfg *c, int doubled, int weights)
{
    rig *r = doubled ? rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL)
                     : rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2}, j, n;
    int q;
    double z[2][RP], obj;
    rterms want;
    char what[96];
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, weights);
    n = d.n * d.k;
    r->h.amp = 0.0f;
    for (q = 0; q < 2; q++)
        for (j = 0; j < n; j++) {
            r->h.bias[q][j] = (float)(1.2 * sin(0.37 * (double)j + 1.3 * q) + 0.2 * q);
            z[q][j] = r->h.bias[q][j];
        }
    rig_cfg(r, c);
    obj = objective_at(r, &d);
    ck_assert_int_eq(r->h.violations, 0);
    want = ref_terms(c, &d, z[0], z[1]);
    near(obj, want.obj, 1e-6, 1e-2, "stat.objective vs reference");
    near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS1), want.l1, 1e-6, 1e-2, "loss1");
    near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS2), want.l2, 1e-6, 1e-2, "loss2");
    near(rstat(r->rdrop, REGOPT_STAT_RDROP_CONSISTENCY), want.c, 1e-6, 1e-2, "consistency");
    {
        float dout[2][RP];
        memcpy(dout, r->h.dout, sizeof dout);
        for (q = 0; q < 2; q++)
            for (j = 0; j < n; j++) {
                double h = 1e-6, up, dn, fd, lup, ldn, lfd;
                float b0 = r->h.bias[q][j], bu, bd;
                z[q][j] += h;
                up = ref_terms(c, &d, z[0], z[1]).obj;
                z[q][j] -= 2 * h;
                dn = ref_terms(c, &d, z[0], z[1]).obj;
                z[q][j] += h;
                fd = (up - dn) / (2 * h);
                snprintf(what, sizeof what, "%s%s%s pass %d row %zu class %zu: d_outputs vs "
                         "differences of the reference", c->mse ? "mse" : "ce",
                         c->kl_sum ? " kl_sum" : "", doubled ? " doubled" : "", q + 1,
                         j / d.k, j % d.k);
                near(dout[q][j], fd, 1e-5, 0.1, what);
                if (j / d.k == 2) /* the padding row */
                    ck_assert_msg(dout[q][j] == 0.0f, "padding row d_outputs %g", dout[q][j]);
                /* and differences of the library's own objective */
                bu = r->h.bias[q][j] = b0 + 4e-3f;
                lup = objective_at(r, &d);
                bd = r->h.bias[q][j] = b0 - 4e-3f;
                ldn = objective_at(r, &d);
                r->h.bias[q][j] = b0;
                lfd = (lup - ldn) / ((double)bu - (double)bd);
                near(lfd, fd, 2e-3, 0.1, "differences of stat.objective");
            }
    }
    rig_close(r);
}

START_TEST(finite_differences_ce)
{
    rcfg c = {0.7, 0.6, 0.1, 0, 0};
    fd_case(&c, 0, 1);
    fd_case(&c, 1, 1);
}
END_TEST

START_TEST(finite_differences_mse)
{
    rcfg c = {1.7, 0.8, 0.0, 0, 1};
    fd_case(&c, 0, 1);
    fd_case(&c, 1, 1);
}
END_TEST

START_TEST(finite_differences_kl_sum)
{
    rcfg c = {0.7, 0.6, 0.1, 1, 0}, m = {0.9, 1.3, 0.0, 1, 1};
    /* summed over rows: mask only (how row weights enter a sum is not documented) */
    fd_case(&c, 0, 0);
    fd_case(&c, 1, 0);
    fd_case(&m, 0, 0);
}
END_TEST

/* ======================================================================== */
/* 3. The padding mask                                                      */
/* ======================================================================== */

START_TEST(mask_padding_contributes_nothing)
{
    int mode, mse;
    for (mode = 0; mode < 2; mode++)
        for (mse = 0; mse < 2; mse++) {
            rig *r = mode ? rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL)
                          : rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
            rig *ok = mode ? rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL)
                           : rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
            rdata d, e;
            size_t rows[1] = {4}, j, k;
            rcfg c = {1.3, 0.8, mse ? 0.0 : 0.1, 0, mse};
            rterms want;
            float p0[RP];
            data_init(&d, 4, 1, rows);
            d.use_mask = 1;
            d.mask[1] = d.mask[3] = 0;
            data_build(&d);
            e = d;
            data_build(&e);
            /* garbage on padding rows: labels -100, NaN targets, NaN/inf outputs */
            d.y[1] = d.y[3] = -100;
            for (k = 0; k < 4; k++) {
                d.tg[1 * 4 + k] = NAN;
                d.tg[3 * 4 + k] = INFINITY;
                r->h.bias[0][1 * 4 + k] = NAN;
                r->h.bias[1][1 * 4 + k] = INFINITY;
                r->h.bias[0][3 * 4 + k] = -INFINITY;
                r->h.bias[1][3 * 4 + k] = k % 2 ? NAN : INFINITY;
            }
            rig_cfg(r, &c);
            rig_cfg(ok, &c);
            tset(r, REGOPT_TRAINER_SEED, 42);
            tset(ok, REGOPT_TRAINER_SEED, 42);
            memcpy(p0, r->h.p, sizeof p0);
            rstep(r, &d);
            rstep(ok, &e);
            ck_assert_int_eq(r->h.violations, 0);
            want = ref_on_host(&c, &d, &r->h);
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), want.obj, 1e-6, 1e-2, "masked objective");
            near(stat(r->t, REGOPT_STAT_WEIGHT), 2.0, 0, 1, "stat.weight");
            ck_assert(stat(r->t, REGOPT_STAT_OBJECTIVE) == stat(ok->t, REGOPT_STAT_OBJECTIVE));
            for (j = 0; j < 4; j++) {
                int pad = j == 1 || j == 3;
                for (k = 0; k < 4; k++) {
                    size_t i = j * 4 + k;
                    if (pad) {
                        ck_assert_msg(r->h.dout[0][i] == 0.0f && r->h.dout[1][i] == 0.0f,
                                      "mode %d mse %d: padding row %zu d_outputs %g %g", mode,
                                      mse, j, r->h.dout[0][i], r->h.dout[1][i]);
                        ck_assert(r->h.p[i] == p0[i]);
                    } else {
                        ck_assert(r->h.p[i] == ok->h.p[i]);
                        ck_assert(r->h.dout[0][i] == ok->h.dout[0][i]);
                        ck_assert(r->h.dout[1][i] == ok->h.dout[1][i]);
                    }
                }
            }
            rig_close(r);
            rig_close(ok);
        }
}
END_TEST

/* ======================================================================== */
/* 4. Call order and seeds (two-call mode)                                  */
/* ======================================================================== */

START_TEST(call_order_and_seeds)
{
    rig *a = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL), *b = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rig *c = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL), *pl = rig_open(4, 1, 0, 0, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2}, i, j, ns = 0;
    uint64_t seen[32];
    int s, mb;
    data_init(&d, 4, 2, rows);
    tset(a, REGOPT_TRAINER_SEED, 1234);
    tset(b, REGOPT_TRAINER_SEED, 1234);
    tset(pl, REGOPT_TRAINER_SEED, 1234);
    tset(c, REGOPT_TRAINER_SEED, 1235);
    for (s = 0; s < 3; s++) {
        a->h.ncalls = b->h.ncalls = c->h.ncalls = pl->h.ncalls = 0;
        rstep(a, &d);
        rstep(b, &d);
        rstep(c, &d);
        rstep(pl, &d);
        ck_assert_int_eq(a->h.ncalls, 8);
        ck_assert_int_eq(pl->h.ncalls, 4);
        ck_assert_int_eq(a->h.violations, 0);
        ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 4);
        ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_BACKWARD_CALLS), 4);
        for (mb = 0; mb < 2; mb++) {
            const rcall *x = &a->h.calls[4 * mb];
            for (i = 0; i < 4; i++) {
                ck_assert_int_eq(x[i].backward, i >= 2);
                ck_assert_int_eq(x[i].slot, (int32_t)(i % 2));
                ck_assert_uint_eq(x[i].flags, REGOPT_PASS_TRAIN);
                ck_assert_uint_eq(x[i].rows, rows[mb]);
                ck_assert_uint_eq(x[i].row_offset, 0);
                ck_assert_uint_eq(x[i].micro_batch, (size_t)mb);
            }
            ck_assert(x[0].seed2 == 0 && x[1].seed2 == 0);
            ck_assert_msg(x[0].seed != x[1].seed, "the two passes share a seed");
            /* reproducible, seed-dependent, and pass 1 = the plain pass's seed */
            ck_assert(b->h.calls[4 * mb].seed == x[0].seed);
            ck_assert(b->h.calls[4 * mb + 1].seed == x[1].seed);
            ck_assert(c->h.calls[4 * mb].seed != x[0].seed);
            ck_assert(c->h.calls[4 * mb + 1].seed != x[1].seed);
            ck_assert_msg(pl->h.calls[2 * mb].seed == x[0].seed,
                          "step %d mb %d: first R-Drop seed %llx, plain seed %llx", s, mb,
                          (unsigned long long)x[0].seed,
                          (unsigned long long)pl->h.calls[2 * mb].seed);
            seen[ns++] = x[0].seed;
            seen[ns++] = x[1].seed;
        }
        for (j = 0; j < RP; j++)
            ck_assert(a->h.p[j] == b->h.p[j]);
    }
    for (i = 0; i < ns; i++)
        for (j = i + 1; j < ns; j++)
            ck_assert_msg(seen[i] != seen[j], "seeds %zu and %zu repeat", i, j);
    rig_close(a);
    rig_close(b);
    rig_close(c);
    rig_close(pl);
}
END_TEST

/* ======================================================================== */
/* 5. Doubled batch = two-call mode                                         */
/* ======================================================================== */

START_TEST(doubled_equals_two_calls)
{
    int mse;
    for (mse = 0; mse < 2; mse++) {
        rig *a = rig_open(4, 1, CAP, 1, REGOPT_ADAM, NULL), *b = rig_open(4, 2, CAP, 1, REGOPT_ADAM, NULL);
        rdata d;
        size_t rows[2] = {3, 2}, j;
        rcfg c = {0.7, 0.5, mse ? 0.0 : 0.1, 0, mse};
        int s, mb;
        static const regopt_key keys[] = {
            REGOPT_STAT_LOSS, REGOPT_STAT_OBJECTIVE, REGOPT_STAT_GRAD_NORM, REGOPT_STAT_WEIGHT,
            REGOPT_STAT_RDROP_LOSS1, REGOPT_STAT_RDROP_LOSS2, REGOPT_STAT_RDROP_CONSISTENCY,
            REGOPT_STAT_RDROP_APPLIED};
        data_init(&d, 4, 2, rows);
        data_mask_weights(&d, 1);
        rig_cfg(a, &c);
        rig_cfg(b, &c);
        rset(b, REGOPT_RDROP_DOUBLED, 0);
        tset(a, REGOPT_TRAINER_SEED, 77);
        tset(b, REGOPT_TRAINER_SEED, 77);
        for (s = 0; s < 4; s++) {
            a->h.ncalls = b->h.ncalls = 0;
            rstep(a, &d);
            rstep(b, &d);
            ck_assert_int_eq(a->h.violations + b->h.violations, 0);
            ck_assert_int_eq(a->h.ncalls, 4);
            ck_assert_int_eq(b->h.ncalls, 8);
            ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_FORWARD_CALLS), 2);
            for (mb = 0; mb < 2; mb++) {
                const rcall *x = &a->h.calls[2 * mb], *y = &b->h.calls[4 * mb];
                ck_assert_int_eq(x[0].backward, 0);
                ck_assert_int_eq(x[1].backward, 1);
                ck_assert_int_eq(x[0].slot, 0);
                ck_assert_int_eq(x[1].slot, 0);
                ck_assert_uint_eq(x[0].rows, 2 * rows[mb]);
                ck_assert_uint_eq(x[1].rows, 2 * rows[mb]);
                ck_assert_uint_eq(x[0].flags, REGOPT_PASS_TRAIN | REGOPT_PASS_DOUBLED);
                ck_assert_msg(x[0].seed == y[0].seed && x[0].seed2 == y[1].seed,
                              "doubled seeds differ from the two-call seeds");
                ck_assert_uint_eq(y[0].flags, REGOPT_PASS_TRAIN);
            }
            for (j = 0; j < sizeof keys / sizeof keys[0]; j++) {
                char what[64];
                snprintf(what, sizeof what, "mse %d step %d key %d", mse, s, (int)keys[j]);
                near(kstat(a, keys[j]), kstat(b, keys[j]), 1e-6, 1e-3, what);
            }
            for (j = 0; j < d.n * d.k; j++) {
                near(a->h.dout[0][j], b->h.dout[0][j], 1e-6, 0.1, "d_outputs pass 1");
                near(a->h.dout[1][j], b->h.dout[1][j], 1e-6, 0.1, "d_outputs pass 2");
            }
        }
        for (j = 0; j < RP; j++)
            near(a->h.p[j], b->h.p[j], 1e-6, 1, "parameters after 4 steps");
        rig_close(a);
        rig_close(b);
    }
}
END_TEST

/* ======================================================================== */
/* 6. Statistics, rdrop.every                                               */
/* ======================================================================== */

START_TEST(statistics_match_reference)
{
    rig *r = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2};
    rcfg c = {1.5, 0.5, 0.05, 0, 0};
    rterms t;
    int s;
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    rig_cfg(r, &c);
    ck_assert(rstat(r->rdrop, REGOPT_STAT_RDROP_APPLIED) == 0.0); /* before the first step */
    for (s = 0; s < 3; s++) {
        double z1[RP], z2[RP];
        size_t j;
        rstep(r, &d);
        /* the outputs of this step, from the parameters it started from */
        for (j = 0; j < d.n * d.k; j++) {
            z1[j] = r->h.out[0][j];
            z2[j] = r->h.out[1][j];
        }
        t = ref_terms(&c, &d, z1, z2);
        ck_assert(t.l1 != t.l2); /* the passes really differ */
        near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS1), t.l1, 1e-6, 1e-2, "stat.rdrop_loss1");
        near(rstat(r->rdrop, REGOPT_STAT_RDROP_LOSS2), t.l2, 1e-6, 1e-2, "stat.rdrop_loss2");
        near(stat(r->t, REGOPT_STAT_LOSS), 0.5 * (t.l1 + t.l2), 1e-6, 1e-2, "stat.loss");
        near(rstat(r->rdrop, REGOPT_STAT_RDROP_CONSISTENCY), t.c, 1e-6, 1e-3, "consistency");
        near(stat(r->t, REGOPT_STAT_OBJECTIVE), t.obj, 1e-6, 1e-2, "stat.objective");
        near(stat(r->t, REGOPT_STAT_WEIGHT), t.weight, 1e-12, 1, "stat.weight");
        ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), 1);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_STEP), s + 1);
    }
    rig_close(r);
}
END_TEST

START_TEST(every_k_steps)
{
    rig *r = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL), *pl = rig_open(4, 1, 0, 0, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2};
    rcfg c = {1.0, 1.0, 0.0, 0, 0};
    int s;
    data_init(&d, 4, 2, rows);
    rset(r, REGOPT_RDROP_EVERY, 3);
    tset(r, REGOPT_TRAINER_SEED, 9);
    tset(pl, REGOPT_TRAINER_SEED, 9);
    for (s = 0; s < 7; s++) {
        int on = s % 3 == 0, i;
        r->h.ncalls = pl->h.ncalls = 0;
        rstep(r, &d);
        rstep(pl, &d);
        ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), on);
        ck_assert_int_eq(r->h.ncalls, on ? 8 : 4);
        ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), on ? 4 : 2);
        if (on) {
            rterms t = ref_on_host(&c, &d, &r->h);
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), t.obj, 1e-6, 1e-2, "R-Drop step objective");
            continue;
        }
        for (i = 0; i < 4; i++) {
            const rcall *x = &r->h.calls[i];
            ck_assert_int_eq(x->backward, i % 2);
            ck_assert_int_eq(x->slot, 0);
            ck_assert_uint_eq(x->flags, REGOPT_PASS_TRAIN);
            ck_assert(x->seed == pl->h.calls[i].seed);
        }
        {
            double z[RP], l = 0.0, w = 0.0;
            size_t j;
            for (j = 0; j < d.n * d.k; j++)
                z[j] = r->h.out[0][j];
            for (j = 0; j < d.n; j++) {
                l += ref_ce(z + j * 4, 4, d.y[j], 0.0);
                w += 1.0;
            }
            near(stat(r->t, REGOPT_STAT_LOSS), l / w, 1e-6, 1e-2, "plain step loss");
            near(stat(r->t, REGOPT_STAT_OBJECTIVE), l / w, 1e-6, 1e-2, "plain step objective");
        }
    }
    rig_close(r);
    rig_close(pl);
}
END_TEST

/* ======================================================================== */
/* 7. With SAM                                                              */
/* ======================================================================== */

START_TEST(composes_with_sam)
{
    rig *r = rig_open(4, 2, 0, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[2] = {3, 2}, j;
    float p0[RP];
    int i, s;
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    r->sam = rig_new(r, REGOPT_REG_SAM);
    rig_attach(r, r->sam);
    RMUST(r->sam, regopt_regularizer_set_double(r->sam, REGOPT_SAM_RHO, 0.1));
    /* lr scale 0: the update is w - 0*g, so w after the step = restored w */
    MUST(regopt_optimizer_set_group(r->o, 0, REGOPT_GROUP_LR_SCALE, 0.0));
    memcpy(p0, r->h.p, sizeof p0);
    rstep(r, &d);
    ck_assert_int_eq(r->h.violations, 0);
    ck_assert_int_eq(r->h.ncalls, 16);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_FORWARD_CALLS), 8);
    ck_assert_int_eq(stat_int(r->t, REGOPT_STAT_BACKWARD_CALLS), 8);
    ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
    for (i = 0; i < 16; i++) {
        const rcall *x = &r->h.calls[i];
        int pert = i >= 8, k = i % 4;
        ck_assert_int_eq(x->backward, k >= 2);
        ck_assert_int_eq(x->slot, k % 2);
        ck_assert_uint_eq(x->micro_batch, (size_t)((i % 8) / 4));
        ck_assert_uint_eq(x->flags, pert ? REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS
                                         : REGOPT_PASS_TRAIN);
        if (pert) {
            ck_assert_msg(x->psum != r->h.calls[0].psum, "call %d saw unperturbed weights", i);
            if (k < 2) /* sam.same_seed = 1: the perturbed passes repeat their seeds */
                ck_assert(x->seed == r->h.calls[i - 8].seed);
        } else {
            ck_assert(x->psum == r->h.calls[0].psum);
        }
    }
    ck_assert(r->h.calls[0].seed != r->h.calls[1].seed);
    ck_assert_msg(memcmp(p0, r->h.p, sizeof p0) == 0, "weights not restored exactly");
    /* real updates: finite, both regularizers applied */
    MUST(regopt_optimizer_set_group(r->o, 0, REGOPT_GROUP_LR_SCALE, 1.0));
    for (s = 0; s < 10; s++) {
        static const regopt_key keys[] = {REGOPT_STAT_LOSS, REGOPT_STAT_OBJECTIVE,
                                          REGOPT_STAT_GRAD_NORM, REGOPT_STAT_SAM_SHARPNESS,
                                          REGOPT_STAT_RDROP_CONSISTENCY};
        rstep(r, &d);
        for (j = 0; j < sizeof keys / sizeof keys[0]; j++)
            ck_assert(isfinite(kstat(r, keys[j])));
        ck_assert_int_eq(rstat_int(r->sam, REGOPT_STAT_SAM_APPLIED), 1);
        ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), 1);
    }
    for (j = 0; j < RP; j++)
        ck_assert(isfinite(r->h.p[j]));
    ck_assert(memcmp(p0, r->h.p, sizeof p0) != 0);
    rig_close(r);
}
END_TEST

/* ======================================================================== */
/* 8. Errors, options, rollback                                             */
/* ======================================================================== */

START_TEST(needs_two_slots_or_doubled)
{
    rig *r = rig_open(4, 1, 0, 0, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[1] = {3};
    regopt_status st;
    data_init(&d, 4, 1, rows);
    st = regopt_trainer_attach(r->t, r->rdrop);
    ck_assert_msg(st == REGOPT_ERR_STATE, "1 slot, no capability: %s",
                  regopt_status_string(st));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(r->rdrop));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 0);
    rstep(r, &d); /* still a plain trainer */
    ck_assert_int_eq(r->h.ncalls, 2);
    ck_assert(rstat(r->rdrop, REGOPT_STAT_RDROP_APPLIED) == 0.0);
    rig_close(r);
    r = rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL); /* 1 slot + doubled: fine */
    rstep(r, &d);
    ck_assert_int_eq(r->h.ncalls, 2);
    ck_assert_int_eq(r->h.violations, 0);
    ck_assert_int_eq(rstat_int(r->rdrop, REGOPT_STAT_RDROP_APPLIED), 1);
    st = regopt_trainer_attach(r->t, rig_new(r, REGOPT_REG_RDROP));
    ck_assert(st == REGOPT_ERR_STATE); /* already on: a second R-Drop */
    st = regopt_trainer_attach(r->t, r->rdrop);
    ck_assert(st == REGOPT_ERR_STATE); /* the same handle twice */
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r->t), 1);
    rig_close(r);
}
END_TEST

/* A 1-slot model with the doubled capability cannot run the two-call mode:
 * rdrop.doubled = 0 must be refused (REGOPT_ERR_STATE when set or at the
 * step) or fall back to the doubled pass; it must never turn into a pass in
 * slot 1, which the model does not have. */
START_TEST(doubled_off_on_one_slot_model)
{
    rig *r = rig_open(4, 1, CAP, 1, REGOPT_SGD, NULL);
    rdata d;
    size_t rows[1] = {3};
    regopt_status st;
    float p0[RP];
    data_init(&d, 4, 1, rows);
    memcpy(p0, r->h.p, sizeof p0);
    st = regopt_regularizer_set_int(r->rdrop, REGOPT_RDROP_DOUBLED, 0);
    if (st == REGOPT_OK) {
        st = regopt_trainer_step(r->t, d.b, 1);
        ck_assert_msg(st == REGOPT_ERR_STATE || (st == REGOPT_OK && r->h.violations == 0),
                      "step with rdrop.doubled = 0 on a 1-slot model: %s (%s), host saw %d "
                      "contract violations (slot >= slots)",
                      regopt_status_string(st), regopt_trainer_message(r->t), r->h.violations);
        if (st != REGOPT_OK)
            ck_assert(memcmp(p0, r->h.p, sizeof p0) == 0);
    } else {
        ck_assert_msg(st == REGOPT_ERR_STATE, "%s: %s", regopt_status_string(st),
                      regopt_regularizer_message(r->rdrop));
    }
    ck_assert_int_eq(r->h.violations, 0);
    rig_close(r);

    /* 1.0: the option set before the attach; the attach (or the step) must
       refuse it or fall back, never call slot 1 */
    r = rig_open(4, 1, CAP, 0, REGOPT_SGD, NULL);
    memcpy(p0, r->h.p, sizeof p0);
    RMUST(r->rdrop, regopt_regularizer_set_int(r->rdrop, REGOPT_RDROP_DOUBLED, 0));
    st = regopt_trainer_attach(r->t, r->rdrop);
    if (st == REGOPT_OK) {
        st = regopt_trainer_step(r->t, d.b, 1);
        ck_assert_msg(st == REGOPT_ERR_STATE || (st == REGOPT_OK && r->h.violations == 0),
                      "step with rdrop.doubled = 0 set before the attach on a 1-slot model: "
                      "%s (%s), host saw %d contract violations (slot >= slots)",
                      regopt_status_string(st), regopt_trainer_message(r->t), r->h.violations);
        if (st != REGOPT_OK)
            ck_assert(memcmp(p0, r->h.p, sizeof p0) == 0);
    } else {
        ck_assert_msg(st == REGOPT_ERR_STATE, "attach: %s: %s", regopt_status_string(st),
                      regopt_trainer_message(r->t));
        ck_assert_ptr_null(regopt_regularizer_get_trainer(r->rdrop));
    }
    ck_assert_int_eq(r->h.violations, 0);
    rig_close(r);
}
END_TEST

START_TEST(option_bounds_and_defaults)
{
    static const struct {
        regopt_key key;
        const char *name;
        double lo, hi, below, above, mid;
        int is_int;
    } o[] = {
        {REGOPT_RDROP_ALPHA, "rdrop.alpha", 0.0, 1e4, -1e-300, 10000.000000001, 0.3, 0},
        {REGOPT_RDROP_CE_WEIGHT, "rdrop.ce_weight", 0.0, 1e3, -1e-300, 1000.0000000001, 0.5, 0},
        {REGOPT_RDROP_KL_SUM, "rdrop.kl_sum", 0, 1, -1, 2, 1, 1},
        {REGOPT_RDROP_EVERY, "rdrop.every", 1, 2147483648.0, 0, 2147483649.0, 5, 1},
        {REGOPT_RDROP_DOUBLED, "rdrop.doubled", 0, 1, -1, 2, 0, 1},
    };
    static const double defaults[] = {1.0, 1.0, 0.0, 1.0, 1.0};
    rig *r = rig_open(4, 2, 0, 0, REGOPT_SGD, NULL);
    regopt_regularizer *g = r->rdrop, *sam = rig_new(r, REGOPT_REG_SAM);
    size_t i, b;
    for (i = 0; i < sizeof o / sizeof o[0]; i++) {
        const char *name = NULL;
        int type = 0;
        double mn, mx, def;
        uint32_t flags = 0;
        regopt_key kk;
        double bad[4];
        MUST(regopt_key_info(o[i].key, &name, &type, &mn, &mx, &def, &flags));
        ck_assert_str_eq(name, o[i].name);
        MUST(regopt_key_from_name(o[i].name, &kk));
        ck_assert_int_eq(kk, o[i].key);
        ck_assert_int_eq(type, o[i].is_int ? REGOPT_TYPE_INT : REGOPT_TYPE_DOUBLE);
        ck_assert(mn == o[i].lo && mx == o[i].hi && flags == 0);
        ck_assert_msg(def == defaults[i], "%s default %g", name, def);
        ck_assert(rstat(g, o[i].key) == def); /* before attaching R-Drop */
        if (i == 0)
            rig_attach(r, g);
        ck_assert(rstat(g, o[i].key) == def);
        rset(r, o[i].key, o[i].lo);
        ck_assert(rstat(g, o[i].key) == o[i].lo);
        rset(r, o[i].key, o[i].hi);
        ck_assert(rstat(g, o[i].key) == o[i].hi);
        rset(r, o[i].key, o[i].mid);
        bad[0] = o[i].below;
        bad[1] = o[i].above;
        bad[2] = NAN;
        bad[3] = INFINITY;
        for (b = 0; b < 4; b++) {
            regopt_status st = regopt_regularizer_set_double(g, o[i].key, bad[b]);
            ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s = %g: %s", name, bad[b],
                          regopt_status_string(st));
            ck_assert_msg(strstr(regopt_regularizer_message(g), name) != NULL,
                          "message \"%s\" does not name %s", regopt_regularizer_message(g),
                          name);
            ck_assert(rstat(g, o[i].key) == o[i].mid);
        }
        if (o[i].is_int) {
            ck_assert(regopt_regularizer_set_double(g, o[i].key, o[i].lo + 0.5) ==
                      REGOPT_ERR_OUT_OF_RANGE);
            ck_assert(regopt_regularizer_set_int(g, o[i].key, (int64_t)o[i].above) ==
                      REGOPT_ERR_OUT_OF_RANGE);
            RMUST(g, regopt_regularizer_set_int(g, o[i].key, (int64_t)o[i].lo));
            ck_assert(rstat_int(g, o[i].key) == (int64_t)o[i].lo);
        }
        /* since 1.0 not a trainer key, nor a key of another kind */
        ck_assert_int_eq(regopt_trainer_set_double(r->t, o[i].key, o[i].mid),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert_int_eq(regopt_regularizer_set_double(sam, o[i].key, o[i].mid),
                         REGOPT_ERR_UNKNOWN_KEY);
        ck_assert(rstat(g, o[i].key) == (o[i].is_int ? o[i].lo : o[i].mid));
    }
    rig_close(r);
}
END_TEST

START_TEST(unknown_capability_bits)
{
    regopt_model *m = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert(regopt_model_set_capabilities(m, 0x2u) == REGOPT_ERR_INVALID_ARGUMENT);
    ck_assert(regopt_model_set_capabilities(m, 0x80000000u | REGOPT_CAP_DOUBLED_BATCH) ==
              REGOPT_ERR_INVALID_ARGUMENT);
    MUST(regopt_model_set_capabilities(m, REGOPT_CAP_DOUBLED_BATCH));
    MUST(regopt_model_set_capabilities(m, 0));
    regopt_model_free(m);
}
END_TEST

/* The nth forward (or backward) of step 3 fails; the step is rolled back and
 * the run continues exactly like one that never failed. */
static void rollback_case(int backward, int nth, int doubled)
{
    rig *a = doubled ? rig_open(4, 1, CAP, 1, REGOPT_ADAM, NULL)
                     : rig_open(4, 2, 0, 1, REGOPT_ADAM, NULL);
    rig *b = doubled ? rig_open(4, 1, CAP, 1, REGOPT_ADAM, NULL)
                     : rig_open(4, 2, 0, 1, REGOPT_ADAM, NULL);
    rdata d;
    size_t rows[2] = {3, 2};
    rcfg c = {0.8, 1.0, 0.1, 0, 0};
    float p0[RP];
    regopt_status st;
    int s;
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    rig_cfg(a, &c);
    rig_cfg(b, &c);
    tset(a, REGOPT_TRAINER_SEED, 5);
    tset(b, REGOPT_TRAINER_SEED, 5);
    for (s = 0; s < 2; s++) {
        rstep(a, &d);
        rstep(b, &d);
    }
    memcpy(p0, a->h.p, sizeof p0);
    if (backward)
        a->h.fail_backward = a->h.backwards + nth;
    else
        a->h.fail_forward = a->h.forwards + nth;
    st = regopt_trainer_step(a->t, d.b, d.count);
    ck_assert_msg(st == (backward ? REGOPT_ERR_BACKWARD : REGOPT_ERR_FORWARD), "got %s",
                  regopt_status_string(st));
    ck_assert(strstr(regopt_trainer_message(a->t), backward ? "backward" : "forward") != NULL);
    ck_assert_msg(memcmp(p0, a->h.p, sizeof p0) == 0, "parameters changed by a failed step");
    ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_STEP), 2);
    a->h.fail_backward = a->h.fail_forward = 0;
    for (s = 0; s < 3; s++) {
        rstep(a, &d);
        rstep(b, &d);
        ck_assert_msg(memcmp(a->h.p, b->h.p, sizeof a->h.p) == 0,
                      "after the rollback the run differs (step %d)", s);
        ck_assert(stat(a->t, REGOPT_STAT_OBJECTIVE) == stat(b->t, REGOPT_STAT_OBJECTIVE));
    }
    ck_assert_int_eq(stat_int(a->t, REGOPT_STAT_STEP), 5);
    ck_assert_int_eq(a->h.violations + b->h.violations, 0);
    rig_close(a);
    rig_close(b);
}

START_TEST(rollback_second_forward)
{
    rollback_case(0, 2, 0); /* slot 1 of micro-batch 0 */
    rollback_case(0, 4, 0); /* slot 1 of micro-batch 1, after gradients accumulated */
    rollback_case(0, 2, 1); /* the doubled forward of micro-batch 1 */
}
END_TEST

START_TEST(rollback_second_backward)
{
    rollback_case(1, 2, 0);
    rollback_case(1, 4, 0);
    rollback_case(1, 2, 1);
}
END_TEST

/* ======================================================================== */
/* 9. Allocation                                                            */
/* ======================================================================== */


static void alloc_case(int doubled, int reserve)
{
    counting cn = {0, 0, 0};
    regopt_allocator al;
    rig *r;
    rdata d, one;
    size_t rows[2] = {3, 2}, rows1[1] = {2};
    long after;
    int s;
    al.size = sizeof al;
    al.alloc = count_alloc;
    al.free = count_release;
    al.user = &cn;
    r = doubled ? rig_open(4, 1, CAP, 0, REGOPT_ADAM, &al) : rig_open(4, 2, 0, 0, REGOPT_ADAM, &al);
    if (reserve == 1)
        TMUST(r->t, regopt_trainer_reserve(r->t, 3));
    rig_attach(r, r->rdrop);
    if (reserve == 2)
        TMUST(r->t, regopt_trainer_reserve(r->t, 3));
    data_init(&d, 4, 2, rows);
    data_mask_weights(&d, 1);
    data_init(&one, 4, 1, rows1);
    after = cn.allocs;
    rstep(r, &d);
    if (reserve)
        ck_assert_msg(cn.allocs == after, "reserve %d: the first step allocated %ld times",
                      reserve, cn.allocs - after);
    after = cn.allocs;
    for (s = 0; s < 6; s++)
        rstep(r, s % 2 ? &one : &d);
    rset(r, REGOPT_RDROP_EVERY, 2);
    for (s = 0; s < 3; s++)
        rstep(r, &d);
    ck_assert_msg(cn.allocs == after, "doubled %d: R-Drop steps allocated %ld times", doubled,
                  cn.allocs - after);
    ck_assert_int_eq(r->h.violations, 0);
    rig_close(r);
    ck_assert_msg(cn.allocs == cn.frees, "allocs %ld, frees %ld", cn.allocs, cn.frees);
}

START_TEST(no_allocation_after_first_step)
{
    int doubled, reserve;
    for (doubled = 0; doubled < 2; doubled++)
        for (reserve = 0; reserve < 3; reserve++)
            alloc_case(doubled, reserve);
}
END_TEST

Suite *suite_rdrop(void)
{
    Suite *s = suite_create("rdrop");
    TCase *tc = tcase_create("loss");
    tcase_add_test(tc, reference_vector);
    tcase_add_test(tc, finite_differences_ce);
    tcase_add_test(tc, finite_differences_mse);
    tcase_add_test(tc, finite_differences_kl_sum);
    tcase_add_test(tc, mask_padding_contributes_nothing);
    suite_add_tcase(s, tc);
    tc = tcase_create("passes");
    tcase_add_test(tc, call_order_and_seeds);
    tcase_add_test(tc, doubled_equals_two_calls);
    tcase_add_test(tc, statistics_match_reference);
    tcase_add_test(tc, every_k_steps);
    tcase_add_test(tc, composes_with_sam);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_test(tc, needs_two_slots_or_doubled);
    tcase_add_test(tc, doubled_off_on_one_slot_model);
    tcase_add_test(tc, option_bounds_and_defaults);
    tcase_add_test(tc, unknown_capability_bits);
    tcase_add_test(tc, rollback_second_forward);
    tcase_add_test(tc, rollback_second_backward);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_add_test(tc, no_allocation_after_first_step);
    suite_add_tcase(s, tc);
    return s;
}
