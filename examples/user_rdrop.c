/* user_rdrop.c — R-Drop written as a user-defined loss-side term
 * (REGOPT_REG_TERM), trained side by side with the built-in R-Drop
 * (REGOPT_REG_RDROP) from the same seeds, on the digits MLP of
 * examples/mlp.c.
 *
 * The built-in R-Drop (Liang et al. 2021, Eq. 3) runs each batch twice with
 * two dropout seeds and adds, per row,
 *   CE(z1) + CE(z2) + alpha * c(z1, z2),  c = (KL(P1||P2) + KL(P2||P1)) / 2,
 * as a weighted mean over the rows. The user term gets there with the
 * library's generic machinery: the task pass already gives CE(z1); the term
 * declares ONE extra forward with REGOPT_TERM_PASS_FRESH_SEED (the dropout
 * seed R-Drop's second copy would get: without R-Drop attached, the term's
 * fresh copy is copy 0), and returns
 *   value = inv_weight * sum_i m_i w_i (CE(z2_i) + alpha * c_i)
 * with d value / d z1 and d value / d z2. Both trainers therefore see the
 * same masks and the same objective; their weights differ only by rounding
 * (the library and this file sum in different orders), which the program
 * measures: about 3e-7 relative after 100 steps. Rounding differences do
 * not stay that small forever: once a hidden unit's pre-activation sits
 * within rounding of 0 for some row, ReLU is on in one network and off in
 * the other, and from then on the two runs drift apart like any two
 * floating-point runs of a chaotic process (with the defaults this happens
 * at step 161, where the output gradients the two runs hand the host still
 * agree to 5e-7 but the weights jump to 2e-4 apart). Hence the default of
 * 100 steps for the comparison.
 *
 * Gradients, with p = softmax(z1), q = softmax(z2), d_k = log p_k - log q_k:
 *   d c / d z1_j = 1/2 [ (p_j - q_j) + p_j (d_j - sum_k p_k d_k) ]
 *   d c / d z2_j = 1/2 [ (q_j - p_j) - q_j (d_j - sum_k q_k d_k) ]
 *   d CE(z2) / d z2_j = q_j - [j = y]
 * (the first bracket comes from d log p / d z, the second from d p / d z:
 * dp_k/dz_j = p_k ([k = j] - p_j)). --check verifies them by finite
 * differences, per row in double precision and through the term's callback.
 *
 *   ./examples/user_rdrop --data data/digits.csv [--steps 100] [--alpha 1]
 *   ./examples/user_rdrop --check
 */
#include "digits_mlp.h"

#include <float.h>
#include <stdarg.h>

#define MAX_CLASSES 64 /* widest output row the term accepts */

/* ---- the term ------------------------------------------------------------ */

typedef struct rdrop_term {
    double alpha; /* weight of the consistency term */
} rdrop_term;

/* log softmax of z[0..K) into lp, softmax into p. */
static void log_softmax(const double *z, size_t K, double *lp, double *p)
{
    double mx = z[0], s = 0.0, lse;
    size_t k;
    for (k = 1; k < K; k++)
        mx = z[k] > mx ? z[k] : mx;
    for (k = 0; k < K; k++)
        s += exp(z[k] - mx);
    lse = mx + log(s);
    for (k = 0; k < K; k++) {
        lp[k] = z[k] - lse;
        p[k] = exp(lp[k]);
    }
}

/* One row: returns CE(z2, y) + alpha * c(z1, z2) and writes its gradients
 * with respect to z1 and z2 into g1, g2; *kl receives c. */
static double row_term(const double *z1, const double *z2, size_t K, int32_t y, double alpha,
                       double *g1, double *g2, double *kl)
{
    double lp[MAX_CLASSES], lq[MAX_CLASSES], p[MAX_CLASSES], q[MAX_CLASSES];
    double ep = 0.0, eq = 0.0; /* sum_k p_k d_k = KL(P||Q); sum_k q_k d_k = -KL(Q||P) */
    size_t k;
    log_softmax(z1, K, lp, p);
    log_softmax(z2, K, lq, q);
    for (k = 0; k < K; k++) {
        double d = lp[k] - lq[k];
        ep += p[k] * d;
        eq += q[k] * d;
    }
    *kl = 0.5 * (ep - eq);
    for (k = 0; k < K; k++) {
        double d = lp[k] - lq[k];
        g1[k] = alpha * 0.5 * ((p[k] - q[k]) + p[k] * (d - ep));
        g2[k] = alpha * 0.5 * ((q[k] - p[k]) - q[k] * (d - eq)) + q[k] - (k == (size_t)y);
    }
    return -lq[y] + alpha * *kl;
}

/* The term's value callback: outputs[0] is the task pass (z1), outputs[1]
 * the declared fresh-seed pass (z2). A weighted mean like the task loss:
 * inv_weight is 1 / sum_i m_i w_i over the whole step. */
static int rdrop_value(const regopt_term_view *v, double *value, void *user)
{
    const rdrop_term *t = user;
    const regopt_batch *b = v->batch;
    size_t K = v->output_width, i, k;
    double z1[MAX_CLASSES], z2[MAX_CLASSES], g1[MAX_CLASSES], g2[MAX_CLASSES], sum = 0.0, kl;
    if (K == 0 || K > MAX_CLASSES || v->n_outputs != 2 || !b || !b->labels ||
        !v->d_outputs[0] || !v->d_outputs[1])
        return 1;
    for (i = 0; i < v->rows; i++) {
        const float *o1 = v->outputs[0] + i * K, *o2 = v->outputs[1] + i * K;
        float *d1 = v->d_outputs[0] + i * K, *d2 = v->d_outputs[1] + i * K;
        double a;
        int32_t y;
        if (b->mask && !b->mask[i]) /* padding: no loss, no gradient */
            continue;
        a = v->inv_weight * (b->weights ? (double)b->weights[i] : 1.0);
        y = b->labels[i];
        if (y < 0 || (size_t)y >= K)
            return 2;
        for (k = 0; k < K; k++) {
            z1[k] = o1[k];
            z2[k] = o2[k];
        }
        sum += a * row_term(z1, z2, K, y, t->alpha, g1, g2, &kl);
        for (k = 0; k < K; k++) { /* the buffers come zeroed: write, no need to add */
            d1[k] = (float)(a * g1[k]);
            d2[k] = (float)(a * g2[k]);
        }
    }
    *value = sum;
    return 0;
}

/* The term as the library sees it (copied by regopt_regularizer_create_term). */
static regopt_regularizer *create_user_rdrop(rdrop_term *t, regopt_status *st)
{
    regopt_term_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "user_rdrop";
    ops.passes = 1;
    ops.pass_flags[0] = REGOPT_TERM_PASS_FRESH_SEED; /* dropout seed of its own */
    ops.value = rdrop_value;
    return regopt_regularizer_create_term(&ops, t, NULL, NULL, st);
}

/* ---- --check: finite differences ----------------------------------------- */

/* Per row, in double: central differences of row_term against its gradient. */
static double check_rows(double alpha, int trials)
{
    double z1[MAX_CLASSES], z2[MAX_CLASSES], g1[MAX_CLASSES], g2[MAX_CLASSES];
    double t1[MAX_CLASSES], t2[MAX_CLASSES], kl, worst = 0.0;
    float r[2 * MAX_CLASSES + 1];
    const size_t K = 10;
    const double h = 1e-5;
    int trial;
    size_t k, side;
    for (trial = 0; trial < trials; trial++) {
        double scale = trial < trials / 2 ? 1.0 : 4.0, gmax = 0.0, emax = 0.0, direct = 0.0;
        int32_t y;
        regopt_random_normal(2024, (uint64_t)trial * 64, r, 2 * K + 1);
        for (k = 0; k < K; k++) {
            z1[k] = scale * r[k];
            z2[k] = scale * r[K + k];
        }
        y = (int32_t)((r[2 * K] < 0 ? -r[2 * K] : r[2 * K]) * 7.0) % (int32_t)K;
        row_term(z1, z2, K, y, alpha, g1, g2, &kl);
        { /* the value itself, from the definition: (KL(P||Q) + KL(Q||P)) / 2 */
            double lp[MAX_CLASSES], lq[MAX_CLASSES], p[MAX_CLASSES], q[MAX_CLASSES];
            log_softmax(z1, K, lp, p);
            log_softmax(z2, K, lq, q);
            for (k = 0; k < K; k++)
                direct += 0.5 * (p[k] * log(p[k] / q[k]) + q[k] * log(q[k] / p[k]));
            if (fabs(direct - kl) > 1e-12 * (1.0 + fabs(kl))) {
                fprintf(stderr, "check: row %d: c = %.17g from the closed form, %.17g from "
                                "the definition\n", trial, kl, direct);
                return 1.0;
            }
        }
        for (side = 0; side < 2; side++)
            for (k = 0; k < K; k++) {
                double *z = side ? z2 : z1, keep = z[k], fp, fm, fd, an;
                z[k] = keep + h;
                fp = row_term(z1, z2, K, y, alpha, t1, t2, &kl);
                z[k] = keep - h;
                fm = row_term(z1, z2, K, y, alpha, t1, t2, &kl);
                z[k] = keep;
                fd = (fp - fm) / (2.0 * h);
                an = side ? g2[k] : g1[k];
                emax = fabs(fd - an) > emax ? fabs(fd - an) : emax;
                gmax = fabs(an) > gmax ? fabs(an) : gmax;
            }
        worst = emax / gmax > worst ? emax / gmax : worst;
    }
    return worst;
}

/* Through the callback, as the library calls it: a view of 7 rows with a
 * padded row and row weights, float outputs; central differences of the
 * value against the d_outputs it writes. */
static double check_view(double alpha)
{
    enum { ROWS = 7, K = 10 };
    float z1[ROWS * K], z2[ROWS * K], d1[ROWS * K], d2[ROWS * K], e1[ROWS * K], e2[ROWS * K];
    float w[ROWS] = {1.0f, 0.5f, 2.0f, 1.0f, 0.25f, 1.5f, 1.0f};
    uint8_t mask[ROWS] = {1, 1, 0, 1, 1, 1, 1};
    int32_t y[ROWS] = {3, 0, 9, 7, 7, 1, 5};
    const float *outs[2];
    float *douts[2];
    double sw = 0.0, v0, vp, vm, worst = 0.0, gmax = 0.0;
    rdrop_term t;
    regopt_batch b;
    regopt_term_view v;
    size_t i, side;
    t.alpha = alpha;
    regopt_random_normal(77, 0, z1, ROWS * K);
    regopt_random_normal(77, 1000, z2, ROWS * K);
    for (i = 0; i < ROWS * K; i++) { /* two passes that differ a little, as two dropouts do */
        z1[i] *= 2.0f;
        z2[i] = z1[i] + 0.3f * z2[i];
    }
    for (i = 0; i < ROWS; i++)
        sw += mask[i] ? w[i] : 0.0;
    regopt_batch_init(&b);
    b.rows = ROWS;
    b.labels = y;
    b.mask = mask;
    b.weights = w;
    memset(&v, 0, sizeof v);
    v.size = sizeof v;
    v.batch = &b;
    v.rows = ROWS;
    v.output_width = K;
    v.n_outputs = 2;
    v.inv_weight = 1.0 / sw;
    outs[0] = z1;
    outs[1] = z2;
    douts[0] = d1;
    douts[1] = d2;
    v.outputs = outs;
    v.d_outputs = douts;
    memset(d1, 0, sizeof d1);
    memset(d2, 0, sizeof d2);
    if (rdrop_value(&v, &v0, &t) != 0)
        return 1.0;
    for (i = 0; i < K; i++) /* the padded row: no gradient */
        if (d1[2 * K + i] != 0.0f || d2[2 * K + i] != 0.0f)
            return 1.0;
    douts[0] = e1; /* scratch for the perturbed calls */
    douts[1] = e2;
    for (side = 0; side < 2; side++)
        for (i = 0; i < ROWS * K; i++) {
            float *z = side ? z2 : z1, keep = z[i], zp, zm;
            double fd, an;
            z[i] = zp = keep + 1e-3f;
            memset(e1, 0, sizeof e1);
            memset(e2, 0, sizeof e2);
            if (rdrop_value(&v, &vp, &t) != 0)
                return 1.0;
            z[i] = zm = keep - 1e-3f;
            memset(e1, 0, sizeof e1);
            memset(e2, 0, sizeof e2);
            if (rdrop_value(&v, &vm, &t) != 0)
                return 1.0;
            z[i] = keep;
            fd = (vp - vm) / ((double)zp - (double)zm); /* the step the floats really took */
            an = side ? d2[i] : d1[i];
            worst = fabs(fd - an) > worst ? fabs(fd - an) : worst;
            gmax = fabs(an) > gmax ? fabs(an) : gmax;
        }
    return worst / gmax;
}

static int run_check(double alpha)
{
    double rows = check_rows(alpha, 40), view = check_view(alpha);
    int ok = rows < 1e-7 && view < 1e-4;
    printf("check: per-row gradient vs central differences (double, 40 rows): max relative "
           "error %.2e\n", rows);
    printf("check: term callback (7 rows, one padded, row weights, float outputs): max "
           "relative error %.2e\n", view);
    printf("check: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

/* ---- two trainers side by side -------------------------------------------- */

typedef struct options {
    const char *data;
    long steps, batch, hidden, seed;
    double alpha, lr, dropout, max_rel;
    int doubled, check;
} options;

typedef struct side {
    mlp net;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *tr;
    regopt_regularizer *reg; /* built-in R-Drop or the user term */
} side;

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("user_rdrop: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    return 2;
}

/* The MLP and AdamW of examples/mlp.c (constant lr, clipping at 5), the
 * trainer seeded with o->seed, and `reg` (already configured) attached. */
static int side_init(side *s, const options *o, size_t max_rows, regopt_regularizer *reg,
                     const char *what)
{
    regopt_status st = REGOPT_OK;
    s->reg = reg;
    if (mlp_init(&s->net, (size_t)o->hidden, max_rows, (float)o->dropout, 0, (uint64_t)o->seed))
        return fail("%s: out of memory", what);
    s->model = regopt_model_create(NULL, &st);
    s->opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    if (!s->model || !s->opt)
        return fail("%s: %s", what, regopt_last_error_message());
    if ((st = mlp_register(&s->net, s->model)) != REGOPT_OK)
        return fail("%s: %s", what, regopt_model_message(s->model));
    if ((st = regopt_optimizer_set_double(s->opt, REGOPT_OPT_LR, o->lr)) != REGOPT_OK ||
        (st = regopt_optimizer_set_double(s->opt, REGOPT_OPT_WEIGHT_DECAY, 1e-2)) != REGOPT_OK ||
        (st = regopt_optimizer_set_group(s->opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0)) !=
            REGOPT_OK ||
        (st = regopt_optimizer_set_double(s->opt, REGOPT_OPT_CLIP_NORM, 5.0)) != REGOPT_OK)
        return fail("%s: %s", what, regopt_optimizer_message(s->opt));
    s->tr = regopt_trainer_create(s->model, s->opt, &st);
    if (!s->tr)
        return fail("%s: %s", what, regopt_last_error_message());
    if ((st = regopt_trainer_set_int(s->tr, REGOPT_TRAINER_SEED, o->seed)) != REGOPT_OK ||
        (st = regopt_trainer_reserve(s->tr, max_rows)) != REGOPT_OK ||
        (st = regopt_trainer_attach(s->tr, reg)) != REGOPT_OK)
        return fail("%s: %s", what, regopt_trainer_message(s->tr));
    return 0;
}

/* Free in order: the trainer (it detaches the regularizer), then the
 * regularizer, the optimizer and the model, then the host network. */
static void side_free(side *s)
{
    regopt_trainer_free(s->tr);
    regopt_regularizer_free(s->reg);
    regopt_optimizer_free(s->opt);
    regopt_model_free(s->model);
    mlp_free(&s->net);
}

/* How far apart the two networks are: the largest over the trainable
 * tensors of max_i |a_i - b_i| / max_i |a_i| (*max_rel; a ratio of norms, so
 * that a weight near 0 cannot blow it up), and ||a - b|| / ||a|| over all of
 * them (*norm_rel). */
static void weight_diff(const mlp *a, const mlp *b, double *max_rel, double *norm_rel)
{
    const float *pa[4] = {a->w1, a->b1, a->w2, a->b2}, *pb[4] = {b->w1, b->b1, b->w2, b->b2};
    size_t n[4] = {a->in * a->hid, a->hid, a->hid * a->out, a->out}, t, i;
    double worst = 0.0, dd = 0.0, aa = 0.0;
    for (t = 0; t < 4; t++) {
        double dmax = 0.0, amax = 0.0;
        for (i = 0; i < n[t]; i++) {
            double x = pa[t][i], y = pb[t][i];
            dmax = fabs(x - y) > dmax ? fabs(x - y) : dmax;
            amax = fabs(x) > amax ? fabs(x) : amax;
            dd += (x - y) * (x - y);
            aa += x * x;
        }
        if (amax > 0.0 && dmax / amax > worst)
            worst = dmax / amax;
        else if (amax == 0.0 && dmax > worst)
            worst = dmax;
    }
    *max_rel = worst;
    *norm_rel = aa > 0.0 ? sqrt(dd / aa) : 0.0;
}

static void usage(void)
{
    printf("usage: user_rdrop [options]\n"
           "  --data PATH      digits CSV (default data/digits.csv)\n"
           "  --steps N        training steps (default 100)\n"
           "  --batch N        rows per step (default 64)\n"
           "  --hidden N       hidden units (default 128)\n"
           "  --alpha X        R-Drop consistency weight (default 1)\n"
           "  --lr X           AdamW learning rate (default 3e-3)\n"
           "  --dropout X      dropout of the hidden layer (default 0.1)\n"
           "  --seed N         seed of the split, the weights and dropout (default 1)\n"
           "  --doubled        the built-in side runs both copies as one doubled forward\n"
           "                   (default: two calls, the user term's order of operations)\n"
           "  --max-rel X      exit with status 1 if the weights differ by more (default 1e-5)\n"
           "  --check          verify the term's gradients by finite differences and exit\n");
}

static int parse(int argc, char **argv, options *o)
{
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help")) {
            usage();
            exit(0);
        } else if (!strcmp(a, "--check")) {
            o->check = 1;
            continue;
        } else if (!strcmp(a, "--doubled")) {
            o->doubled = 1;
            continue;
        }
        if (!v)
            return fail("%s needs a value (see --help)", a);
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--steps")) bad = parse_long(v, 1, 1000000, &o->steps);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 1, 1000, &o->batch);
        else if (!strcmp(a, "--hidden")) bad = parse_long(v, 1, 100000, &o->hidden);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, 2147483647L, &o->seed);
        else if (!strcmp(a, "--alpha")) bad = parse_double(v, 0, 1e4, &o->alpha);
        else if (!strcmp(a, "--lr")) bad = parse_double(v, 1e-12, 1e3, &o->lr);
        else if (!strcmp(a, "--dropout")) bad = parse_double(v, 0, 0.95, &o->dropout);
        else if (!strcmp(a, "--max-rel")) bad = parse_double(v, 0, 1e9, &o->max_rel);
        else return fail("unknown option %s (see --help)", a);
        if (bad)
            return fail("bad value for %s: '%s' (see --help for the range)", a, v);
        i++;
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o = {"data/digits.csv", 100, 64, 128, 1, 1.0, 3e-3, 0.1, 1e-5, 0, 0};
    digits d = {0, NULL, NULL};
    side bi, us; /* built-in R-Drop, user term */
    rdrop_term term;
    regopt_regularizer *rdrop = NULL, *user = NULL;
    regopt_status st = REGOPT_OK;
    size_t *idx = NULL, *order = NULL, n_test, n_train, B, pos, i;
    float *xtr = NULL, *xte = NULL, *xb = NULL, *out = NULL;
    int32_t *ytr = NULL, *yte = NULL, *yb = NULL;
    double max_rel, norm_rel, acc_bi = 0.0, acc_us = 0.0, loss_bi = 0.0, loss_us = 0.0;
    long step, epoch = 0;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    if (o.check)
        return run_check(o.alpha);
    memset(&bi, 0, sizeof bi);
    memset(&us, 0, sizeof us);
    if (digits_load(o.data, &d))
        return 2;
    B = (size_t)o.batch;

    /* the split of examples/mlp.c */
    n_test = (size_t)((double)d.n * 0.2 + 0.5);
    n_train = d.n - n_test;
    idx = malloc(d.n * sizeof *idx);
    order = malloc(n_train * sizeof *order);
    xtr = malloc(n_train * DIGITS_FEATURES * sizeof *xtr);
    xte = malloc(n_test * DIGITS_FEATURES * sizeof *xte);
    ytr = malloc(n_train * sizeof *ytr);
    yte = malloc(n_test * sizeof *yte);
    xb = malloc(B * DIGITS_FEATURES * sizeof *xb);
    yb = malloc(B * sizeof *yb);
    out = malloc(n_test * DIGITS_CLASSES * sizeof *out);
    if (!idx || !order || !xtr || !xte || !ytr || !yte || !xb || !yb || !out) {
        rc = fail("out of memory");
        goto done;
    }
    shuffle_indices(idx, d.n, (uint64_t)o.seed);
    for (i = 0; i < d.n; i++) {
        float *x = i < n_train ? xtr + i * DIGITS_FEATURES : xte + (i - n_train) * DIGITS_FEATURES;
        memcpy(x, d.x + idx[i] * DIGITS_FEATURES, DIGITS_FEATURES * sizeof *x);
        if (i < n_train)
            ytr[i] = d.y[idx[i]];
        else
            yte[i - n_train] = d.y[idx[i]];
    }

    /* the built-in R-Drop: a handle with its options, attached below */
    rdrop = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, &st);
    if (!rdrop) {
        rc = fail("R-Drop: %s", regopt_last_error_message());
        goto done;
    }
    if ((st = regopt_regularizer_set_double(rdrop, REGOPT_RDROP_ALPHA, o.alpha)) != REGOPT_OK ||
        (st = regopt_regularizer_set_int(rdrop, REGOPT_RDROP_DOUBLED, o.doubled)) != REGOPT_OK) {
        rc = fail("R-Drop: %s", regopt_regularizer_message(rdrop));
        regopt_regularizer_free(rdrop);
        goto done;
    }
    /* the same thing as a user term (term.weight stays 1) */
    term.alpha = o.alpha;
    user = create_user_rdrop(&term, &st);
    if (!user) {
        rc = fail("user term: %s", regopt_last_error_message());
        regopt_regularizer_free(rdrop);
        goto done;
    }
    /* from here on each side owns its regularizer (side_free frees it) */
    if ((rc = side_init(&bi, &o, n_test > B ? n_test : B, rdrop, "built-in")) != 0 ||
        (rc = side_init(&us, &o, n_test > B ? n_test : B, user, "user term")) != 0) {
        if (!bi.reg)
            regopt_regularizer_free(rdrop);
        if (!us.reg)
            regopt_regularizer_free(user);
        goto done;
    }

    printf("user_rdrop: digits, %zu train rows; MLP 64-%ld-10, dropout %.2f; AdamW lr %g; "
           "R-Drop alpha %g, %ld steps of %zu rows\n"
           "  built-in: REGOPT_REG_RDROP (%s)\n"
           "  user:     REGOPT_REG_TERM \"user_rdrop\", one REGOPT_TERM_PASS_FRESH_SEED pass\n",
           n_train, o.hidden, o.dropout, o.lr, o.alpha, o.steps, B,
           o.doubled ? "one doubled forward" : "two forward calls");
    printf("%6s  %23s  %23s  %s\n", "step", "objective built-in/user",
           "loss2+alpha*kl / term", "max rel weight diff");
    pos = n_train; /* start an epoch at once */
    for (step = 1; step <= o.steps; step++) {
        mlp_batch hb;
        regopt_batch b;
        size_t n, r;
        if (pos + B > n_train) { /* full batches only, a fresh permutation per epoch */
            shuffle_indices(order, n_train, (uint64_t)o.seed * 1000003u + (uint64_t)++epoch);
            pos = 0;
        }
        n = B;
        for (r = 0; r < n; r++) {
            memcpy(xb + r * DIGITS_FEATURES, xtr + order[pos + r] * DIGITS_FEATURES,
                   DIGITS_FEATURES * sizeof *xb);
            yb[r] = ytr[order[pos + r]];
        }
        pos += n;
        hb.x = xb;
        hb.row_base = 0;
        regopt_batch_init(&b);
        b.data = &hb;
        b.rows = n;
        b.labels = yb;
        if ((st = regopt_trainer_step(bi.tr, &b, 1)) != REGOPT_OK) {
            rc = fail("built-in step %ld: %s", step, regopt_trainer_message(bi.tr));
            goto done;
        }
        if ((st = regopt_trainer_step(us.tr, &b, 1)) != REGOPT_OK) {
            rc = fail("user step %ld: %s", step, regopt_trainer_message(us.tr));
            goto done;
        }
        if (step == 1 || step % 25 == 0 || step == o.steps) {
            double ob = 0, ou = 0, l2 = 0, cons = 0, tv = 0;
            /* trainer statistics from the trainers, method statistics from
               the regularizers' handles */
            if (regopt_trainer_get_double(bi.tr, REGOPT_STAT_OBJECTIVE, &ob) != REGOPT_OK ||
                regopt_trainer_get_double(us.tr, REGOPT_STAT_OBJECTIVE, &ou) != REGOPT_OK ||
                regopt_regularizer_get_double(rdrop, REGOPT_STAT_RDROP_LOSS2, &l2) != REGOPT_OK ||
                regopt_regularizer_get_double(rdrop, REGOPT_STAT_RDROP_CONSISTENCY, &cons) !=
                    REGOPT_OK ||
                regopt_regularizer_get_double(user, REGOPT_STAT_TERM_VALUE, &tv) != REGOPT_OK) {
                rc = fail("statistics: %s", regopt_last_error_message());
                goto done;
            }
            weight_diff(&bi.net, &us.net, &max_rel, &norm_rel);
            printf("%6ld  %10.6f / %-10.6f  %10.6f / %-10.6f  %.3e\n", step, ob, ou,
                   l2 + o.alpha * cons, tv, max_rel);
        }
    }
    {
        mlp_batch hb;
        regopt_batch b;
        hb.x = xte;
        hb.row_base = 0;
        regopt_batch_init(&b);
        b.data = &hb;
        b.rows = n_test;
        b.labels = yte;
        if (regopt_trainer_evaluate(bi.tr, &b, &loss_bi, out) != REGOPT_OK) {
            rc = fail("evaluate: %s", regopt_trainer_message(bi.tr));
            goto done;
        }
        acc_bi = accuracy(out, yte, n_test, DIGITS_CLASSES);
        if (regopt_trainer_evaluate(us.tr, &b, &loss_us, out) != REGOPT_OK) {
            rc = fail("evaluate: %s", regopt_trainer_message(us.tr));
            goto done;
        }
        acc_us = accuracy(out, yte, n_test, DIGITS_CLASSES);
    }
    weight_diff(&bi.net, &us.net, &max_rel, &norm_rel);
    printf("test accuracy built-in %.4f user %.4f; test loss built-in %.6f user %.6f\n", acc_bi,
           acc_us, loss_bi, loss_us);
    printf("RESULT steps=%ld alpha=%g max_rel_weight_diff=%.3e norm_rel_weight_diff=%.3e "
           "test_acc_builtin=%.4f test_acc_user=%.4f\n",
           o.steps, o.alpha, max_rel, norm_rel, acc_bi, acc_us);
    if (!(max_rel <= o.max_rel)) {
        fprintf(stderr, "user_rdrop: the weights differ by %.3e, more than --max-rel %.3e\n",
                max_rel, o.max_rel);
        rc = 1;
    }
done:
    side_free(&bi);
    side_free(&us);
    digits_free(&d);
    free(idx); free(order); free(xtr); free(xte); free(ytr); free(yte); free(xb); free(yb);
    free(out);
    return rc;
}
