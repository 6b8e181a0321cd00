/* term_rig.h — the rig of the user-term suites (check_term.c,
 * check_term_inputs.c): test_host.h's linear model with input dropout,
 * R-Drop written as a user term, a probe term with state and faults on
 * demand, and a trainer over the host with one regularizer. */
#ifndef REGOPT_TERM_RIG_H
#define REGOPT_TERM_RIG_H

#include "test_host.h"
#include "test_util.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MB 2      /* micro-batches per step */
#define NR 8      /* rows per micro-batch */
#define DROP 0.25f /* input dropout of the host */
#define ALPHA 2.0 /* R-Drop's alpha (not the default 1, so that it must be read) */
#define ALL (REGOPT_CHECKPOINT_PARAMS | REGOPT_CHECKPOINT_OPTIONS)
#define NW (TH_D * TH_K)

/* ---- the host: test_host.h's linear model with input dropout ---------- */

/* th_host's weights and gradients, with inverted dropout on the inputs
 * drawn from pass->seed (regopt_random_uniform; keep when u >= DROP), so
 * that passes with different seeds give different outputs (test_host.h's
 * forward ignores the seed). Each slot keeps the dropped-out input of its
 * forward for its backward. */
typedef struct dhost {
    th_host th;
    float xd[2][NR * TH_D];
} dhost;

static inline int dh_forward(const regopt_pass *p, void *user)
{
    dhost *h = user;
    const float *x;
    float u[NR * TH_D] = {0}, *xd;
    size_t i, j, k, n = p->rows * TH_D;
    int train = (p->flags & REGOPT_PASS_TRAIN) != 0;
    if (p->slot < 0 || p->slot > 1 || p->rows > NR || p->output_width != TH_K)
        return 5;
    x = ((const th_batch *)p->batch)->x + p->row_offset * TH_D;
    if (train && regopt_random_uniform(p->seed, p->row_offset * TH_D, u, n) != REGOPT_OK)
        return 6;
    xd = h->xd[p->slot];
    for (i = 0; i < n; i++)
        xd[i] = !train ? x[i] : u[i] >= DROP ? x[i] / (1.0f - DROP) : 0.0f;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < TH_K; k++) {
            float z = h->th.b[k];
            for (j = 0; j < TH_D; j++)
                z += xd[i * TH_D + j] * h->th.w[j * TH_K + k];
            p->outputs[i * TH_K + k] = z;
        }
    return 0;
}

static inline int dh_backward(const regopt_pass *p, void *user)
{
    dhost *h = user;
    size_t i, j, k;
    if (p->slot < 0 || p->slot > 1 || !p->d_outputs)
        return 5;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < TH_K; k++) {
            float d = p->d_outputs[i * TH_K + k];
            h->th.gb[k] += d;
            for (j = 0; j < TH_D; j++)
                h->th.gw[j * TH_K + k] += h->xd[p->slot][i * TH_D + j] * d;
        }
    return 0;
}

/* ---- R-Drop as a user term (docs/methods.md §4, §1.6) ------------------ */

/* log softmax of one row, in double */
static inline void log_softmax(const float *z, double *ls)
{
    double mx = z[0], s = 0.0;
    size_t k;
    for (k = 1; k < TH_K; k++)
        mx = z[k] > mx ? z[k] : mx;
    for (k = 0; k < TH_K; k++)
        s += exp(z[k] - mx);
    for (k = 0; k < TH_K; k++)
        ls[k] = z[k] - mx - log(s);
}

/* One fresh-seed pass z2 besides the task pass z1. The task loss already
 * gives CE(z1), so per row the term is CE(z2) + alpha c with
 * c = (KL(P1||P2) + KL(P2||P1)) / 2 (Eq. 2's 1/2 kept), as a weighted mean
 * (inv_weight times the row weights, padding skipped). Gradients:
 * dc/dz1 = 1/2 [P1 (r - KL12) + P1 - P2], dc/dz2 = 1/2 [P2 (-r - KL21) +
 * P2 - P1] with r = log P1 - log P2, and dCE/dz2 = P2 - onehot(y). */
static inline int rdrop_value(const regopt_term_view *v, double *value, void *user)
{
    const double alpha = *(const double *)user;
    const regopt_batch *b = v->batch;
    double sum = 0.0;
    size_t i, k;
    if (v->n_outputs != 2 || v->output_width != TH_K || !b->labels || !v->d_outputs[1])
        return 3;
    for (i = 0; i < v->rows; i++) {
        double l1[TH_K], l2[TH_K], kl12 = 0.0, kl21 = 0.0, a;
        int32_t y = b->labels[i];
        if (b->mask && !b->mask[i])
            continue;
        a = v->inv_weight * (b->weights ? (double)b->weights[i] : 1.0);
        log_softmax(v->outputs[0] + i * TH_K, l1);
        log_softmax(v->outputs[1] + i * TH_K, l2);
        for (k = 0; k < TH_K; k++) {
            kl12 += exp(l1[k]) * (l1[k] - l2[k]);
            kl21 += exp(l2[k]) * (l2[k] - l1[k]);
        }
        sum += a * (-l2[y] + alpha * 0.5 * (kl12 + kl21));
        for (k = 0; k < TH_K; k++) {
            double p = exp(l1[k]), q = exp(l2[k]), r = l1[k] - l2[k];
            v->d_outputs[0][i * TH_K + k] = (float)(a * alpha * 0.5 * (p * (r - kl12) + p - q));
            v->d_outputs[1][i * TH_K + k] =
                (float)(a * (alpha * 0.5 * (q * (-r - kl21) + q - p) + q - (k == (size_t)y)));
        }
    }
    *value = sum;
    return 0;
}

/* ---- the probe: a small term with state, and faults on demand ---------- */

enum fault { F_FAIL, F_VALUE, F_GRAD0, F_GRAD1 };

typedef struct probe {
    int calls;          /* value calls so far */
    int bad_at;         /* the value call (1-based) that goes wrong, 0 = none */
    enum fault fault;   /* how: return 5, value = bad, d_outputs[0 or 1][0] = bad */
    double bad;
    int saves;          /* save_state calls so far */
    int fail_save_at;   /* the save_state call (1-based) that fails; -1 all, 0 none */
    int fail_load;      /* load_state returns 4 */
    size_t state_bytes; /* the state size this term keeps (and accepts) */
    uint64_t commits;   /* the state: committed steps */
    uint64_t last_step; /* the argument of the last committed call */
} probe;

/* A consistency term between the task pass and one fresh-seed pass:
 * weighted mean of (1/K) sum_k (z0_k - z1_k)^2, gradients into both. */
static inline int probe_value(const regopt_term_view *v, double *value, void *user)
{
    probe *p = user;
    const regopt_batch *b = v->batch;
    double sum = 0.0;
    size_t i, k;
    int bad = ++p->calls == p->bad_at;
    if (bad && p->fault == F_FAIL)
        return 5;
    for (i = 0; i < v->rows; i++) {
        double a = v->inv_weight * (b->weights ? (double)b->weights[i] : 1.0);
        if (b->mask && !b->mask[i])
            continue;
        for (k = 0; k < TH_K; k++) {
            double d = (double)v->outputs[0][i * TH_K + k] - v->outputs[1][i * TH_K + k];
            sum += a * d * d / TH_K;
            v->d_outputs[0][i * TH_K + k] = (float)(2.0 * a * d / TH_K);
            v->d_outputs[1][i * TH_K + k] = (float)(-2.0 * a * d / TH_K);
        }
    }
    if (bad && (p->fault == F_GRAD0 || p->fault == F_GRAD1))
        v->d_outputs[p->fault == F_GRAD1][0] = (float)p->bad;
    *value = bad && p->fault == F_VALUE ? p->bad : sum;
    return 0;
}

static inline size_t probe_size(void *user) { return ((probe *)user)->state_bytes; }

static inline int probe_save(void *buf, size_t size, void *user)
{
    probe *p = user;
    if (++p->saves == p->fail_save_at || p->fail_save_at < 0)
        return 7;
    if (size != p->state_bytes)
        return 1;
    memset(buf, 0, size);
    memcpy(buf, &p->commits, sizeof p->commits);
    return 0;
}

/* Takes the state whole or refuses and keeps its own (the header's rule). */
static inline int probe_load(const void *buf, size_t size, void *user)
{
    probe *p = user;
    if (p->fail_load)
        return 4;
    if (size != p->state_bytes)
        return 3;
    memcpy(&p->commits, buf, sizeof p->commits);
    return 0;
}

static inline void probe_committed(uint64_t step, void *user)
{
    probe *p = user;
    p->commits++;
    p->last_step = step;
}

static inline regopt_term_ops probe_ops(int state)
{
    regopt_term_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "probe";
    ops.passes = 1;
    ops.pass_flags[0] = REGOPT_TERM_PASS_FRESH_SEED;
    ops.value = probe_value;
    if (state) {
        ops.state_size = probe_size;
        ops.save_state = probe_save;
        ops.load_state = probe_load;
    }
    ops.committed = probe_committed;
    return ops;
}

/* ---- a trainer over the host, with one regularizer --------------------- */

enum choice { R_NONE, R_RDROP, R_USER_RDROP, R_PROBE, R_PROBE_STATELESS };

typedef struct rig {
    dhost h;
    regopt_model *m;
    regopt_optimizer *o;
    regopt_trainer *t;
    regopt_regularizer *reg; /* attached; NULL for R_NONE */
    probe pr;                /* user data of the probe */
    double alpha;            /* user data of the R-Drop term */
} rig;

static inline regopt_regularizer *new_term(const regopt_term_ops *ops, void *user)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *g = regopt_regularizer_create_term(ops, user, NULL, NULL, &st);
    ck_assert_msg(g != NULL, "create_term: %s: %s", regopt_status_string(st),
                  regopt_last_error_message());
    return g;
}

/* Adam (moments that a rollback must keep), trainer seed 4242, two slots.
 * init 0 starts from garbage weights (a resumed run must get them from
 * the checkpoint). The rig must not move: callbacks hold its address. */
static inline void rig_open(rig *r, enum choice c, int init)
{
    size_t i;
    memset(r, 0, sizeof *r);
    th_init(&r->h.th);
    for (i = 0; !init && i < NW; i++)
        r->h.th.w[i] = 9.0f;
    r->m = th_model(&r->h.th);
    ck_assert_ptr_nonnull(r->m);
    MUST(regopt_model_set_callbacks(r->m, dh_forward, dh_backward, &r->h, NULL));
    MUST(regopt_model_set_slots(r->m, 2));
    r->o = regopt_optimizer_create(REGOPT_ADAM, NULL, NULL);
    ck_assert_ptr_nonnull(r->o);
    MUST(regopt_optimizer_set_double(r->o, REGOPT_OPT_LR, 0.02));
    r->t = regopt_trainer_create(r->m, r->o, NULL);
    ck_assert_ptr_nonnull(r->t);
    TMUST(r->t, regopt_trainer_set_int(r->t, REGOPT_TRAINER_SEED, 4242));
    r->alpha = ALPHA;
    r->pr.state_bytes = 8;
    if (c == R_RDROP) {
        r->reg = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, NULL);
        ck_assert_ptr_nonnull(r->reg);
        RMUST(r->reg, regopt_regularizer_set_double(r->reg, REGOPT_RDROP_ALPHA, ALPHA));
    } else if (c == R_USER_RDROP) {
        regopt_term_ops ops = probe_ops(0);
        ops.name = "user_rdrop";
        ops.value = rdrop_value;
        ops.committed = NULL;
        r->reg = new_term(&ops, &r->alpha);
    } else if (c == R_PROBE || c == R_PROBE_STATELESS) {
        regopt_term_ops ops = probe_ops(c == R_PROBE);
        r->reg = new_term(&ops, &r->pr);
    }
    if (r->reg)
        TMUST(r->t, regopt_trainer_attach(r->t, r->reg));
}

/* The trainer first (it detaches the regularizer), then the rest. */
static inline void rig_close(rig *r)
{
    regopt_trainer_free(r->t);
    regopt_regularizer_free(r->reg);
    regopt_optimizer_free(r->o);
    regopt_model_free(r->m);
}

typedef struct feed {
    float x[MB * NR * TH_D], w[MB * NR];
    int32_t y[MB * NR];
    uint8_t mask[MB * NR];
    th_batch hb[MB];
    regopt_batch b[MB];
} feed;

/* The micro-batches of step s: new rows every step, one padded row per
 * micro-batch and uneven row weights (so the weighted-mean convention of
 * inv_weight is exercised). */
static inline void feed_fill(feed *f, int s)
{
    size_t i;
    th_data(f->x, f->y, MB * NR, (size_t)s * MB * NR);
    for (i = 0; i < MB * NR; i++) {
        f->mask[i] = i % NR != 5;
        f->w[i] = 0.5f + 0.5f * (float)(i % 3);
    }
    for (i = 0; i < MB; i++) {
        th_batch_of(&f->b[i], &f->hb[i], f->x + i * NR * TH_D, f->y + i * NR, NR);
        f->b[i].mask = f->mask + i * NR;
        f->b[i].weights = f->w + i * NR;
    }
}

static inline regopt_status rig_try(rig *r, int s)
{
    feed f;
    feed_fill(&f, s);
    return regopt_trainer_step(r->t, f.b, MB);
}

static inline void rig_step(rig *r, int s) { TMUST(r->t, rig_try(r, s)); }

/* The whole training state as checkpoint bytes: step, seed, moments,
 * statistics, options, the host's parameters and the term's state. */
static inline unsigned char *ckpt(const rig *r, size_t *n)
{
    size_t need = 0;
    unsigned char *p;
    TMUST(r->t, regopt_trainer_checkpoint_size(r->t, ALL, &need));
    p = malloc(need);
    ck_assert_ptr_nonnull(p);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, ALL, p, need, n));
    ck_assert_uint_eq(*n, need);
    return p;
}

static inline void same_ckpt(const rig *r, const unsigned char *want, size_t n, const char *what)
{
    size_t m = 0;
    unsigned char *got = ckpt(r, &m);
    ck_assert_msg(m == n && memcmp(got, want, n) == 0, "%s: the training state changed", what);
    free(got);
}

/* max_i |a_i - b_i| / max_i |b_i| over W and b together: a ratio of max
 * norms, so that an element near 0 cannot inflate it. */
static inline double param_diff(const rig *a, const rig *b)
{
    double d = 0.0, m = 1e-30;
    size_t i;
    for (i = 0; i < NW + TH_K; i++) {
        double x = i < NW ? a->h.th.w[i] : a->h.th.b[i - NW];
        double y = i < NW ? b->h.th.w[i] : b->h.th.b[i - NW];
        d = fabs(x - y) > d ? fabs(x - y) : d;
        m = fabs(y) > m ? fabs(y) : m;
    }
    return d / m;
}

#endif
