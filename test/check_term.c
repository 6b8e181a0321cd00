/* check_term.c — user-defined loss-side terms (REGOPT_REG_TERM): R-Drop
 * written as a term against the built-in R-Drop, the rollback of a step
 * whose term fails or is not finite, a term's state in checkpoints, and
 * the bad inputs of regopt_regularizer_create_term and term.weight.
 * Expected values come from a second, independent path (the built-in
 * method, a twin run that never failed, the checkpoint bytes taken before
 * the call), never from the library's output for the call under test. */
#include "tests.h"

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

static int dh_forward(const regopt_pass *p, void *user)
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

static int dh_backward(const regopt_pass *p, void *user)
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
static void log_softmax(const float *z, double *ls)
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
static int rdrop_value(const regopt_term_view *v, double *value, void *user)
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
static int probe_value(const regopt_term_view *v, double *value, void *user)
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

static size_t probe_size(void *user) { return ((probe *)user)->state_bytes; }

static int probe_save(void *buf, size_t size, void *user)
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
static int probe_load(const void *buf, size_t size, void *user)
{
    probe *p = user;
    if (p->fail_load)
        return 4;
    if (size != p->state_bytes)
        return 3;
    memcpy(&p->commits, buf, sizeof p->commits);
    return 0;
}

static void probe_committed(uint64_t step, void *user)
{
    probe *p = user;
    p->commits++;
    p->last_step = step;
}

static regopt_term_ops probe_ops(int state)
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

static regopt_regularizer *new_term(const regopt_term_ops *ops, void *user)
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
static void rig_open(rig *r, enum choice c, int init)
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
static void rig_close(rig *r)
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
static void feed_fill(feed *f, int s)
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

static regopt_status rig_try(rig *r, int s)
{
    feed f;
    feed_fill(&f, s);
    return regopt_trainer_step(r->t, f.b, MB);
}

static void rig_step(rig *r, int s) { TMUST(r->t, rig_try(r, s)); }

/* The whole training state as checkpoint bytes: step, seed, moments,
 * statistics, options, the host's parameters and the term's state. */
static unsigned char *ckpt(const rig *r, size_t *n)
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

static void same_ckpt(const rig *r, const unsigned char *want, size_t n, const char *what)
{
    size_t m = 0;
    unsigned char *got = ckpt(r, &m);
    ck_assert_msg(m == n && memcmp(got, want, n) == 0, "%s: the training state changed", what);
    free(got);
}

/* max_i |a_i - b_i| / max_i |b_i| over W and b together: a ratio of max
 * norms, so that an element near 0 cannot inflate it. */
static double param_diff(const rig *a, const rig *b)
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

/* ---- 1. R-Drop as a user term equals the built-in ---------------------- */

/* Same init, seed and batches; the user term's fresh copy is copy 0, the
 * seed of R-Drop's second pass (methods.md §7.3), so both runs minimise the
 * same objective with the same masks and differ by rounding only. A run
 * without any regularizer must be far from both, or the test could pass
 * with the term ignored. */
START_TEST(user_rdrop_matches_builtin)
{
    rig bi, us, plain;
    double d_user, d_plain, cons;
    int s;
    rig_open(&bi, R_RDROP, 1);
    rig_open(&us, R_USER_RDROP, 1);
    rig_open(&plain, R_NONE, 1);
    for (s = 0; s < 100; s++) {
        rig_step(&bi, s);
        rig_step(&us, s);
        rig_step(&plain, s);
    }
    d_user = param_diff(&us, &bi);
    d_plain = param_diff(&plain, &bi);
    ck_assert_msg(d_user <= 1e-6, "user term vs built-in: max rel diff %.3e", d_user);
    ck_assert_msg(d_plain > 1e-2, "no regularizer vs built-in: max rel diff only %.3e",
                  d_plain);
    /* the dropout copies still differ (R-Drop has pulled them to ~7e-4 by
       now), and the objectives agree */
    cons = rstat(bi.reg, REGOPT_STAT_RDROP_CONSISTENCY);
    ck_assert_msg(cons > 1e-4, "consistency %g: the two passes are (nearly) equal", cons);
    near(rstat(us.reg, REGOPT_STAT_TERM_VALUE),
         rstat(bi.reg, REGOPT_STAT_RDROP_LOSS2) + ALPHA * cons, 1e-5, 1e-3, "term value");
    near(stat(us.t, REGOPT_STAT_OBJECTIVE), stat(bi.t, REGOPT_STAT_OBJECTIVE), 1e-5, 1e-3,
         "objective");
    ck_assert_int_eq(stat_int(us.t, REGOPT_STAT_FORWARD_CALLS), 2 * MB);
    ck_assert_int_eq(stat_int(us.t, REGOPT_STAT_BACKWARD_CALLS), 2 * MB);
    rig_close(&bi);
    rig_close(&us);
    rig_close(&plain);
}
END_TEST

/* ---- 2, 3. a failing or non-finite term rolls the step back ------------ */

/* Three good steps; step 3 goes wrong in the term of its second
 * micro-batch; then three more. The failed step must leave the whole
 * training state (checkpoint bytes) as it was and not call committed, and
 * the run must then go on bit for bit like a twin that never failed. */
static void check_rollback(enum fault f, double bad, regopt_status want, const char *w1,
                           const char *w2)
{
    rig r, twin;
    unsigned char *before = NULL, *end;
    size_t nb = 0, ne;
    regopt_status st;
    const char *msg;
    int s, calls;
    rig_open(&r, R_PROBE, 1);
    rig_open(&twin, R_PROBE, 1);
    for (s = 0; s < 6; s++) {
        if (s == 3) {
            before = ckpt(&r, &nb);
            calls = r.pr.calls;
            r.pr.bad_at = calls + 2;
            r.pr.fault = f;
            r.pr.bad = bad;
            st = rig_try(&r, 3);
            msg = regopt_trainer_message(r.t);
            ck_assert_msg(st == want, "got %s (%s)", regopt_status_string(st), msg);
            ck_assert_msg(strstr(msg, w1) && strstr(msg, w2), "message \"%s\"", msg);
            ck_assert_int_eq(r.pr.calls, calls + 2);
            ck_assert_uint_eq(r.pr.commits, 3);
            ck_assert_int_eq(stat_int(r.t, REGOPT_STAT_STEP), 3);
            same_ckpt(&r, before, nb, "after the failed step");
            r.pr.bad_at = 0;
        }
        rig_step(&r, s);
        rig_step(&twin, s);
    }
    end = ckpt(&twin, &ne);
    same_ckpt(&r, end, ne, "against the twin");
    ck_assert_uint_eq(r.pr.commits, 6);
    free(before);
    free(end);
    rig_close(&r);
    rig_close(&twin);
}

/* The value callback fails; the value is NaN or infinite; a d_outputs
 * element is NaN or infinite (it reaches the host's gradients through the
 * task pass's backward for [0], the term's own pass for [1], and the norm
 * check refuses the step, naming the tensor). */
START_TEST(failing_term_rolls_back)
{
    check_rollback(F_FAIL, 0.0, REGOPT_ERR_LOSS_CALLBACK, "\"probe\" returned 5",
                   "micro-batch 1");
    check_rollback(F_VALUE, NAN, REGOPT_ERR_NONFINITE_LOSS, "\"probe\"", "nan");
    check_rollback(F_VALUE, -INFINITY, REGOPT_ERR_NONFINITE_LOSS, "\"probe\"", "inf");
    check_rollback(F_GRAD0, NAN, REGOPT_ERR_NONFINITE_GRADIENT, "gradient", "not finite");
    check_rollback(F_GRAD1, INFINITY, REGOPT_ERR_NONFINITE_GRADIENT, "gradient", "not finite");
}
END_TEST

/* ---- save_state failures ----------------------------------------------- */

typedef struct sink {
    unsigned char p[16384];
    size_t used;
} sink;

static int sink_write(const void *data, size_t n, void *user)
{
    sink *s = user;
    if (n > sizeof s->p - s->used)
        return 1;
    memcpy(s->p + s->used, data, n);
    s->used += n;
    return 0;
}

/* save_state fails on call `nth` of one save (-1: on every call). A save
 * calls it more than once (the size, then the bytes; save_buffer asks for
 * the size first). The save must fail with REGOPT_ERR_IO and a message
 * naming the term, or write a checkpoint that loads: never OK on damaged
 * or mis-sized bytes. Either way the trainer is unchanged. */
static void check_save_failure(int through_buffer, int nth)
{
    rig r, fresh;
    unsigned char *before;
    size_t nb, k;
    sink out = {{0}, 0};
    regopt_status st;
    const char *how = through_buffer ? "save_buffer" : "save";
    rig_open(&r, R_PROBE, 1);
    rig_step(&r, 0);
    before = ckpt(&r, &nb);
    r.pr.fail_save_at = nth < 0 ? -1 : r.pr.saves + nth;
    st = through_buffer ? regopt_trainer_save_buffer(r.t, ALL, out.p, sizeof out.p, &out.used)
                        : regopt_trainer_save(r.t, ALL, sink_write, &out);
    if (st == REGOPT_OK && r.pr.saves < r.pr.fail_save_at) { /* the call never came */
        rig_open(&fresh, R_PROBE, 0);
        TMUST(fresh.t, regopt_trainer_load_buffer(fresh.t, ALL, out.p, out.used));
        ck_assert_uint_eq(fresh.pr.commits, 1);
        rig_close(&fresh);
    } else {
        ck_assert_msg(st == REGOPT_ERR_IO, "%s, save_state call %d failing: %s", how, nth,
                      regopt_status_string(st));
        ck_assert_msg(strstr(regopt_trainer_message(r.t), "term \"probe\" returned 7"),
                      "%s, call %d: message \"%s\"", how, nth, regopt_trainer_message(r.t));
    }
    if (nth < 0) { /* a size query asks state_size only: save_state is not called */
        int saves = r.pr.saves;
        TMUST(r.t, regopt_trainer_checkpoint_size(r.t, ALL, &k));
        ck_assert_uint_eq(k, nb);
        ck_assert_int_eq(r.pr.saves, saves);
    }
    r.pr.fail_save_at = 0;
    same_ckpt(&r, before, nb, how);
    ck_assert_uint_eq(r.pr.commits, 1);
    free(before);
    rig_close(&r);
}

START_TEST(save_state_failure)
{
    int nth;
    for (nth = -1; nth <= 3; nth++) {
        if (nth == 0)
            continue;
        check_save_failure(0, nth);
        check_save_failure(1, nth);
    }
}
END_TEST

/* ---- 4. a term's state in checkpoints ---------------------------------- */

/* Resume: a fresh trainer and a fresh term handle (commits 0, garbage
 * weights) loaded from the checkpoint continue exactly like the original,
 * and the term's committed count comes back with it. */
START_TEST(term_state_resumes)
{
    rig a, b;
    float w[5][NW], bias[5][TH_K];
    unsigned char *mid;
    size_t n;
    int s;
    rig_open(&a, R_PROBE, 1);
    for (s = 0; s < 4; s++) {
        rig_step(&a, s);
        ck_assert_uint_eq(a.pr.last_step, a.pr.commits); /* committed(new step count) */
    }
    mid = ckpt(&a, &n);
    for (s = 4; s < 9; s++) {
        rig_step(&a, s);
        memcpy(w[s - 4], a.h.th.w, sizeof w[0]);
        memcpy(bias[s - 4], a.h.th.b, sizeof bias[0]);
    }
    rig_open(&b, R_PROBE, 0);
    TMUST(b.t, regopt_trainer_load_buffer(b.t, ALL, mid, n));
    ck_assert_uint_eq(b.pr.commits, 4);
    ck_assert_int_eq(stat_int(b.t, REGOPT_STAT_STEP), 4);
    for (s = 4; s < 9; s++) {
        rig_step(&b, s);
        ck_assert_msg(memcmp(w[s - 4], b.h.th.w, sizeof w[0]) == 0 &&
                      memcmp(bias[s - 4], b.h.th.b, sizeof bias[0]) == 0,
                      "resumed run differs after step %d", s);
    }
    ck_assert_uint_eq(b.pr.commits, 9);
    ck_assert_uint_eq(b.pr.last_step, 9);
    free(mid);
    rig_close(&a);
    rig_close(&b);
}
END_TEST

/* Load `ck` into r, expecting status `want` with `word` in the message,
 * and nothing changed: checkpoint bytes and the term's state. */
static void refused_load(rig *r, const unsigned char *ck, size_t n, regopt_status want,
                         const char *word, const char *what)
{
    unsigned char *before;
    size_t nb;
    uint64_t commits = r->pr.commits;
    regopt_status st;
    before = ckpt(r, &nb);
    st = regopt_trainer_load_buffer(r->t, ALL, ck, n);
    ck_assert_msg(st == want, "%s: got %s (%s)", what, regopt_status_string(st),
                  regopt_trainer_message(r->t));
    ck_assert_msg(strstr(regopt_trainer_message(r->t), word), "%s: message \"%s\"", what,
                  regopt_trainer_message(r->t));
    ck_assert_uint_eq(r->pr.commits, commits);
    same_ckpt(r, before, nb, what);
    free(before);
}

START_TEST(term_state_refused)
{
    rig a, c, d;
    unsigned char *mid, *plain;
    size_t n, np;
    int s;
    rig_open(&a, R_PROBE, 1);
    for (s = 0; s < 4; s++)
        rig_step(&a, s);
    mid = ckpt(&a, &n);
    rig_open(&c, R_PROBE, 1);
    rig_step(&c, 0); /* c has a state of its own: 1 commit */
    c.pr.fail_load = 1;
    refused_load(&c, mid, n, REGOPT_ERR_CORRUPT, "\"probe\"", "load_state refuses");
    c.pr.fail_load = 0;
    c.pr.state_bytes = 16; /* a term that keeps 16 bytes gets 8 */
    refused_load(&c, mid, n, REGOPT_ERR_CORRUPT, "\"probe\"", "state of another size");
    c.pr.state_bytes = 8;
    /* a stateless term of the same name: the saved state has no taker */
    rig_open(&d, R_PROBE_STATELESS, 1);
    rig_step(&d, 0);
    refused_load(&d, mid, n, REGOPT_ERR_MISMATCH, "\"probe\"", "no load_state");
    /* the other way round: no state saved, load_state gets 0 bytes */
    plain = ckpt(&d, &np);
    refused_load(&c, plain, np, REGOPT_ERR_CORRUPT, "\"probe\"", "0 bytes of state");
    /* and the good checkpoint still loads */
    TMUST(c.t, regopt_trainer_load_buffer(c.t, ALL, mid, n));
    ck_assert_uint_eq(c.pr.commits, 4);
    free(mid);
    free(plain);
    rig_close(&a);
    rig_close(&c);
    rig_close(&d);
}
END_TEST

/* ---- 5. bad inputs ------------------------------------------------------ */

static void count_free(void *user) { ++*(int *)user; }

/* create_term refuses ops with `want` and a message holding `word`; it
 * neither calls free_user nor leaks. */
static void refused(const regopt_term_ops *ops, regopt_status want, const char *word)
{
    counting c = {0, 0, 0};
    regopt_allocator al = COUNTING_ALLOCATOR(&c);
    regopt_status st = REGOPT_OK;
    int freed = 0;
    ck_assert_ptr_null(regopt_regularizer_create_term(ops, &freed, count_free, &al, &st));
    ck_assert_msg(st == want, "%s: got %s (%s)", word, regopt_status_string(st),
                  regopt_last_error_message());
    ck_assert_msg(strstr(regopt_last_error_message(), word), "message \"%s\" lacks \"%s\"",
                  regopt_last_error_message(), word);
    ck_assert_int_eq(freed, 0);
    ck_assert_int_eq(c.allocs, c.frees);
}

START_TEST(create_term_bad_inputs)
{
    regopt_term_ops ops;
    refused(NULL, REGOPT_ERR_NULL_POINTER, "ops is NULL");
    ops = probe_ops(1);
    ops.size = 0;
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "too small");
    ops.size = offsetof(regopt_term_ops, value); /* value itself not covered */
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "too small");
    ops = probe_ops(1);
    ops.passes = REGOPT_TERM_MAX_PASSES + 1;
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "9 passes");
    ops = probe_ops(1);
    ops.value = NULL;
    refused(&ops, REGOPT_ERR_NULL_POINTER, "value");
    ops = probe_ops(1);
    ops.passes = 2;
    ops.pass_flags[1] = REGOPT_TERM_PASS_NO_GRAD | 0x10u; /* a flag no version defines yet */
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "0x10");
    ops = probe_ops(1);
    ops.state_size = NULL; /* state callbacks: all three or none */
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "together");
    ops = probe_ops(0);
    ops.load_state = probe_load;
    refused(&ops, REGOPT_ERR_INVALID_ARGUMENT, "together");
}
END_TEST

/* An older, smaller regopt_term_ops (up to value) is accepted and the
 * fields past its size are not read (a stray state_size there would be
 * refused by the all-three rule); an allocation failure neither leaks nor
 * calls free_user; a good term calls free_user once, when freed. */
START_TEST(create_term_sizes_and_memory)
{
    counting c = {0, 0, 0};
    regopt_allocator al = COUNTING_ALLOCATOR(&c);
    regopt_term_ops ops = probe_ops(0);
    regopt_regularizer *g;
    regopt_status st = REGOPT_OK;
    int freed = 0;
    ops.size = offsetof(regopt_term_ops, state_size);
    ops.state_size = probe_size;
    g = regopt_regularizer_create_term(&ops, &freed, count_free, &al, &st);
    ck_assert_msg(g != NULL, "%s: %s", regopt_status_string(st), regopt_last_error_message());
    regopt_regularizer_free(g);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(c.allocs, c.frees);
    ops = probe_ops(1);
    c.fail_at = c.allocs + 1;
    ck_assert_ptr_null(regopt_regularizer_create_term(&ops, &freed, count_free, &al, &st));
    ck_assert_int_eq(st, REGOPT_ERR_NO_MEMORY);
    ck_assert_int_eq(freed, 1);
    ck_assert_int_eq(c.allocs, c.frees + 1); /* the failed allocation has nothing to free */
}
END_TEST

/* term.weight is in [0, 1e4]: NaN, infinities, negatives and too large are
 * refused and leave it as it was; a term needing more slots than the model
 * has is refused at attach and stays unattached. */
START_TEST(term_weight_and_attach)
{
    static const double bad[] = {NAN, INFINITY, -INFINITY, -1.0, -1e-300, 1e4 * (1 + 1e-15)};
    regopt_term_ops ops = probe_ops(1);
    probe pr;
    regopt_regularizer *g;
    double v = -1.0;
    size_t i;
    rig r;
    memset(&pr, 0, sizeof pr);
    g = new_term(&ops, &pr);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(regopt_regularizer_set_double(g, REGOPT_TERM_WEIGHT, bad[i]),
                         REGOPT_ERR_OUT_OF_RANGE);
        RMUST(g, regopt_regularizer_get_double(g, REGOPT_TERM_WEIGHT, &v));
        ck_assert_msg(v == 1.0, "term.weight %g after setting %g", v, bad[i]);
    }
    RMUST(g, regopt_regularizer_set_double(g, REGOPT_TERM_WEIGHT, 0.0));
    RMUST(g, regopt_regularizer_set_double(g, REGOPT_TERM_WEIGHT, 1e4));
    regopt_regularizer_free(g);
    ops.passes = 2; /* the model has 2 slots, this needs 3 */
    g = new_term(&ops, &pr);
    rig_open(&r, R_NONE, 1);
    ck_assert_int_ne(regopt_trainer_attach(r.t, g), REGOPT_OK);
    ck_assert_ptr_nonnull(strstr(regopt_trainer_message(r.t), "slots"));
    ck_assert_ptr_null(regopt_regularizer_get_trainer(g));
    ck_assert_uint_eq(regopt_trainer_regularizer_count(r.t), 0);
    rig_step(&r, 0);
    rig_close(&r);
    regopt_regularizer_free(g);
}
END_TEST

Suite *suite_term(void)
{
    Suite *s = suite_create("term");
    TCase *tc = tcase_create("rdrop");
    tcase_add_test(tc, user_rdrop_matches_builtin);
    suite_add_tcase(s, tc);
    tc = tcase_create("rollback");
    tcase_add_test(tc, failing_term_rolls_back);
    tcase_add_test(tc, save_state_failure);
    suite_add_tcase(s, tc);
    tc = tcase_create("state");
    tcase_add_test(tc, term_state_resumes);
    tcase_add_test(tc, term_state_refused);
    suite_add_tcase(s, tc);
    tc = tcase_create("inputs");
    tcase_add_test(tc, create_term_bad_inputs);
    tcase_add_test(tc, create_term_sizes_and_memory);
    tcase_add_test(tc, term_weight_and_attach);
    suite_add_tcase(s, tc);
    return s;
}
