/* js_rdrop.c — a consistency term the library does not have, as a
 * user-defined loss-side term (REGOPT_REG_TERM): R-Drop's two dropout
 * passes held together by the Jensen-Shannon divergence instead of the
 * symmetric KL, on the digits MLP of examples/mlp.c.
 *
 * The term declares one extra forward with REGOPT_TERM_PASS_FRESH_SEED (a
 * second dropout mask) and adds, per row, as a weighted mean like the task
 * loss,
 *   ce2 * CE(z2) + alpha * JS(P1, P2),
 *   JS(P, Q) = (KL(P||M) + KL(Q||M)) / 2,  M = (P + Q) / 2,
 * with P = softmax(z1) of the task pass and Q = softmax(z2) of the extra one.
 * JS is symmetric and bounded by log 2; for close P and Q it is about a
 * quarter of R-Drop's (KL(P||Q) + KL(Q||P)) / 2, hence alpha 4 by default.
 *
 * Gradient. Written with entropies, JS = H(M) - (H(P) + H(Q)) / 2, so
 * d JS / d p_k = (log p_k - log m_k) / 2 =: a_k (the +1s cancel), and
 * through the softmax (dp_k/dz_j = p_k ([k = j] - p_j)):
 *   d JS / d z1_j = p_j (a_j - sum_k p_k a_k),
 *   d JS / d z2_j = q_j (b_j - sum_k q_k b_k),   b_k = (log q_k - log m_k) / 2.
 * log m_k is computed as logaddexp(log p_k, log q_k) - log 2, so that tiny
 * probabilities do not underflow. --check verifies the value against the
 * entropy form and the gradients by finite differences (per row in double,
 * and through the term's callback with padding and row weights).
 *
 * The term also shows the optional `committed` callback: it keeps the JS of
 * the step being computed aside and publishes it only once the step has
 * been applied, so a failed (rolled back) step never shows.
 *
 *   ./examples/js_rdrop --data data/digits.csv [--epochs 20] [--alpha 4]
 *   ./examples/js_rdrop --check
 */
#include "digits_mlp.h"

#include <stdarg.h>

#define MAX_CLASSES 64 /* widest output row the term accepts */

/* ---- the term ------------------------------------------------------------ */

typedef struct js_term {
    double alpha;      /* weight of JS */
    double ce2;        /* weight of the second pass's cross-entropy */
    /* the mean JS (before alpha) of the step in progress, and of the last
       applied step (published by `committed`) */
    double js_pending, js_last;
    uint64_t pending_step;
} js_term;

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

/* JS(softmax(z1), softmax(z2)) and its gradients g1, g2 (alpha not applied). */
static double js_row(const double *z1, const double *z2, size_t K, double *g1, double *g2)
{
    double lp[MAX_CLASSES], lq[MAX_CLASSES], p[MAX_CLASSES], q[MAX_CLASSES];
    double a[MAX_CLASSES], b[MAX_CLASSES], ea = 0.0, eb = 0.0;
    size_t k;
    log_softmax(z1, K, lp, p);
    log_softmax(z2, K, lq, q);
    for (k = 0; k < K; k++) {
        double hi = lp[k] > lq[k] ? lp[k] : lq[k], lo = lp[k] > lq[k] ? lq[k] : lp[k];
        double lm = hi + log1p(exp(lo - hi)) - log(2.0); /* log((p + q) / 2) */
        a[k] = 0.5 * (lp[k] - lm);
        b[k] = 0.5 * (lq[k] - lm);
        ea += p[k] * a[k]; /* = KL(P||M) / 2 */
        eb += q[k] * b[k]; /* = KL(Q||M) / 2 */
    }
    for (k = 0; k < K; k++) {
        g1[k] = p[k] * (a[k] - ea);
        g2[k] = q[k] * (b[k] - eb);
    }
    return ea + eb;
}

/* One row of the term: ce2 * CE(z2, y) + alpha * JS, gradients into g1, g2;
 * *js receives JS. */
static double row_term(const double *z1, const double *z2, size_t K, int32_t y, double alpha,
                       double ce2, double *g1, double *g2, double *js)
{
    double lq[MAX_CLASSES], q[MAX_CLASSES];
    size_t k;
    *js = js_row(z1, z2, K, g1, g2);
    log_softmax(z2, K, lq, q);
    for (k = 0; k < K; k++) {
        g1[k] *= alpha;
        g2[k] = alpha * g2[k] + ce2 * (q[k] - (k == (size_t)y));
    }
    return -ce2 * lq[y] + alpha * *js;
}

/* The value callback: outputs[0] = z1 (the task pass), outputs[1] = z2. */
static int js_value(const regopt_term_view *v, double *value, void *user)
{
    js_term *t = user;
    const regopt_batch *b = v->batch;
    size_t K = v->output_width, i, k;
    double z1[MAX_CLASSES], z2[MAX_CLASSES], g1[MAX_CLASSES], g2[MAX_CLASSES];
    double sum = 0.0, js_sum = 0.0, js;
    if (K == 0 || K > MAX_CLASSES || v->n_outputs != 2 || !b || !b->labels ||
        !v->d_outputs[0] || !v->d_outputs[1])
        return 1;
    for (i = 0; i < v->rows; i++) {
        const float *o1 = v->outputs[0] + i * K, *o2 = v->outputs[1] + i * K;
        float *d1 = v->d_outputs[0] + i * K, *d2 = v->d_outputs[1] + i * K;
        double a;
        int32_t y;
        if (b->mask && !b->mask[i])
            continue;
        a = v->inv_weight * (b->weights ? (double)b->weights[i] : 1.0);
        y = b->labels[i];
        if (y < 0 || (size_t)y >= K)
            return 2;
        for (k = 0; k < K; k++) {
            z1[k] = o1[k];
            z2[k] = o2[k];
        }
        sum += a * row_term(z1, z2, K, y, t->alpha, t->ce2, g1, g2, &js);
        js_sum += a * js;
        for (k = 0; k < K; k++) {
            d1[k] = (float)(a * g1[k]);
            d2[k] = (float)(a * g2[k]);
        }
    }
    /* a new step, or a new evaluation of this one (the first view of a step
       is micro-batch 0 at row 0): start the sum again */
    if (v->step != t->pending_step || (v->micro_batch == 0 && v->row_offset == 0)) {
        t->pending_step = v->step;
        t->js_pending = 0.0;
    }
    t->js_pending += js_sum;
    *value = sum;
    return 0;
}

/* After every applied update: the pending JS becomes the last step's. */
static void js_committed(uint64_t step, void *user)
{
    js_term *t = user;
    (void)step;
    t->js_last = t->js_pending;
}

static regopt_regularizer *create_js_term(js_term *t, regopt_status *st)
{
    regopt_term_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.name = "js_rdrop";
    ops.passes = 1;
    ops.pass_flags[0] = REGOPT_TERM_PASS_FRESH_SEED;
    ops.value = js_value;
    ops.committed = js_committed;
    return regopt_regularizer_create_term(&ops, t, NULL, NULL, st);
}

/* ---- --check ------------------------------------------------------------- */

/* Per row, in double: the value against the entropy form, the gradients
 * against central differences. */
static double check_rows(double alpha, double ce2, int trials)
{
    double z1[MAX_CLASSES], z2[MAX_CLASSES], g1[MAX_CLASSES], g2[MAX_CLASSES];
    double t1[MAX_CLASSES], t2[MAX_CLASSES], js, worst = 0.0;
    float r[2 * MAX_CLASSES + 1];
    const size_t K = 10;
    const double h = 1e-5;
    int trial;
    size_t k, side;
    for (trial = 0; trial < trials; trial++) {
        /* from far apart to nearly equal, as two dropout passes come */
        double scale = trial % 3 == 0 ? 4.0 : 1.0, close = trial % 2 ? 0.05 : 1.0;
        double gmax = 0.0, emax = 0.0, hm = 0.0, hp = 0.0, hq = 0.0;
        int32_t y;
        regopt_random_normal(2025, (uint64_t)trial * 64, r, 2 * K + 1);
        for (k = 0; k < K; k++) {
            z1[k] = scale * r[k];
            z2[k] = z1[k] + close * scale * r[K + k];
        }
        y = (int32_t)((r[2 * K] < 0 ? -r[2 * K] : r[2 * K]) * 7.0) % (int32_t)K;
        row_term(z1, z2, K, y, alpha, ce2, g1, g2, &js);
        { /* JS = H(M) - (H(P) + H(Q)) / 2 */
            double lp[MAX_CLASSES], lq[MAX_CLASSES], p[MAX_CLASSES], q[MAX_CLASSES], direct;
            log_softmax(z1, K, lp, p);
            log_softmax(z2, K, lq, q);
            for (k = 0; k < K; k++) {
                double m = 0.5 * (p[k] + q[k]);
                hm -= m > 0.0 ? m * log(m) : 0.0;
                hp -= p[k] > 0.0 ? p[k] * log(p[k]) : 0.0;
                hq -= q[k] > 0.0 ? q[k] * log(q[k]) : 0.0;
            }
            direct = hm - 0.5 * (hp + hq);
            if (fabs(direct - js) > 1e-12 * (1.0 + fabs(js)) || js < 0.0 ||
                js > log(2.0) + 1e-15) {
                fprintf(stderr, "check: row %d: JS = %.17g, from the entropies %.17g\n", trial,
                        js, direct);
                return 1.0;
            }
        }
        for (side = 0; side < 2; side++)
            for (k = 0; k < K; k++) {
                double *z = side ? z2 : z1, keep = z[k], fp, fm, fd, an;
                z[k] = keep + h;
                fp = row_term(z1, z2, K, y, alpha, ce2, t1, t2, &js);
                z[k] = keep - h;
                fm = row_term(z1, z2, K, y, alpha, ce2, t1, t2, &js);
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

/* Through the callback: 7 rows, one padded, row weights, float outputs. */
static double check_view(double alpha, double ce2)
{
    enum { ROWS = 7, K = 10 };
    float z1[ROWS * K], z2[ROWS * K], d1[ROWS * K], d2[ROWS * K], e1[ROWS * K], e2[ROWS * K];
    float w[ROWS] = {1.0f, 0.5f, 2.0f, 1.0f, 0.25f, 1.5f, 1.0f};
    uint8_t mask[ROWS] = {1, 1, 1, 1, 0, 1, 1};
    int32_t y[ROWS] = {3, 0, 9, 7, 7, 1, 5};
    const float *outs[2];
    float *douts[2];
    double sw = 0.0, v0, vp, vm, worst = 0.0, gmax = 0.0;
    js_term t;
    regopt_batch b;
    regopt_term_view v;
    size_t i, side;
    memset(&t, 0, sizeof t);
    t.alpha = alpha;
    t.ce2 = ce2;
    regopt_random_normal(78, 0, z1, ROWS * K);
    regopt_random_normal(78, 1000, z2, ROWS * K);
    for (i = 0; i < ROWS * K; i++) {
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
    if (js_value(&v, &v0, &t) != 0)
        return 1.0;
    for (i = 0; i < K; i++)
        if (d1[4 * K + i] != 0.0f || d2[4 * K + i] != 0.0f)
            return 1.0;
    douts[0] = e1;
    douts[1] = e2;
    for (side = 0; side < 2; side++)
        for (i = 0; i < ROWS * K; i++) {
            float *z = side ? z2 : z1, keep = z[i], zp, zm;
            double fd, an;
            z[i] = zp = keep + 1e-3f;
            memset(e1, 0, sizeof e1);
            memset(e2, 0, sizeof e2);
            if (js_value(&v, &vp, &t) != 0)
                return 1.0;
            z[i] = zm = keep - 1e-3f;
            memset(e1, 0, sizeof e1);
            memset(e2, 0, sizeof e2);
            if (js_value(&v, &vm, &t) != 0)
                return 1.0;
            z[i] = keep;
            fd = (vp - vm) / ((double)zp - (double)zm);
            an = side ? d2[i] : d1[i];
            worst = fabs(fd - an) > worst ? fabs(fd - an) : worst;
            gmax = fabs(an) > gmax ? fabs(an) : gmax;
        }
    return worst / gmax;
}

static int run_check(double alpha, double ce2)
{
    double rows = check_rows(alpha, ce2, 60), view = check_view(alpha, ce2);
    int ok = rows < 1e-7 && view < 1e-4;
    printf("check: JS value vs H(M) - (H(P)+H(Q))/2, gradient vs central differences "
           "(double, 60 rows): max relative error %.2e\n", rows);
    printf("check: term callback (7 rows, one padded, row weights, float outputs): max "
           "relative error %.2e\n", view);
    printf("check: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

/* ---- training ------------------------------------------------------------- */

typedef struct options {
    const char *data;
    long epochs, batch, hidden, seed;
    double alpha, ce2, lr, dropout, min_test_acc;
    int check;
} options;

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("js_rdrop: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    return 2;
}

static void usage(void)
{
    printf("usage: js_rdrop [options]\n"
           "  --data PATH        digits CSV (default data/digits.csv)\n"
           "  --epochs N         passes over the training set (default 20)\n"
           "  --batch N          rows per step (default 64)\n"
           "  --hidden N         hidden units (default 128)\n"
           "  --alpha X          weight of JS (default 4; 0 = no consistency)\n"
           "  --ce2 X            weight of the second pass's cross-entropy (default 1)\n"
           "  --lr X             AdamW learning rate (default 3e-3)\n"
           "  --dropout X        dropout of the hidden layer (default 0.1)\n"
           "  --seed N           seed of the split, the weights and dropout (default 1)\n"
           "  --min-test-acc X   exit with status 1 if test accuracy is below X\n"
           "  --check            verify the term's value and gradients and exit\n");
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
        }
        if (!v)
            return fail("%s needs a value (see --help)", a);
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--epochs")) bad = parse_long(v, 1, 100000, &o->epochs);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 1, 1000, &o->batch);
        else if (!strcmp(a, "--hidden")) bad = parse_long(v, 1, 100000, &o->hidden);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, 2147483647L, &o->seed);
        else if (!strcmp(a, "--alpha")) bad = parse_double(v, 0, 1e4, &o->alpha);
        else if (!strcmp(a, "--ce2")) bad = parse_double(v, 0, 1e3, &o->ce2);
        else if (!strcmp(a, "--lr")) bad = parse_double(v, 1e-12, 1e3, &o->lr);
        else if (!strcmp(a, "--dropout")) bad = parse_double(v, 0, 0.95, &o->dropout);
        else if (!strcmp(a, "--min-test-acc")) bad = parse_double(v, 0, 1, &o->min_test_acc);
        else return fail("unknown option %s (see --help)", a);
        if (bad)
            return fail("bad value for %s: '%s' (see --help for the range)", a, v);
        i++;
    }
    return 0;
}

static int evaluate(regopt_trainer *t, const float *x, const int32_t *y, size_t n, float *out,
                    double *acc, double *loss)
{
    mlp_batch hb;
    regopt_batch b;
    hb.x = x;
    hb.row_base = 0;
    regopt_batch_init(&b);
    b.data = &hb;
    b.rows = n;
    b.labels = y;
    if (regopt_trainer_evaluate(t, &b, loss, out) != REGOPT_OK)
        return fail("evaluate: %s", regopt_trainer_message(t));
    *acc = accuracy(out, y, n, DIGITS_CLASSES);
    return 0;
}

int main(int argc, char **argv)
{
    options o = {"data/digits.csv", 20, 64, 128, 1, 4.0, 1.0, 3e-3, 0.1, -1.0, 0};
    digits d = {0, NULL, NULL};
    mlp net;
    js_term term;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *js = NULL;
    regopt_status st = REGOPT_OK;
    size_t *idx = NULL, *order = NULL, n_test, n_train, B, i, steps_per_epoch;
    float *xtr = NULL, *xte = NULL, *xb = NULL, *out = NULL;
    int32_t *ytr = NULL, *yte = NULL, *yb = NULL;
    double te_acc = 0.0, te_loss = 0.0;
    long e;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    if (o.check)
        return run_check(o.alpha > 0.0 ? o.alpha : 4.0, o.ce2);
    memset(&net, 0, sizeof net);
    memset(&term, 0, sizeof term);
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

    /* the host network and the library's handles, as in examples/mlp.c */
    if (mlp_init(&net, (size_t)o.hidden, n_test > B ? n_test : B, (float)o.dropout, 0,
                 (uint64_t)o.seed)) {
        rc = fail("out of memory");
        goto done;
    }
    model = regopt_model_create(NULL, &st);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, &st);
    if (!model || !opt) {
        rc = fail("create: %s", regopt_last_error_message());
        goto done;
    }
    steps_per_epoch = (n_train + B - 1) / B;
    if (mlp_register(&net, model) != REGOPT_OK) {
        rc = fail("model: %s", regopt_model_message(model));
        goto done;
    }
    if (regopt_optimizer_set_double(opt, REGOPT_OPT_LR, o.lr) != REGOPT_OK ||
        regopt_optimizer_set_double(opt, REGOPT_OPT_WEIGHT_DECAY, 1e-2) != REGOPT_OK ||
        regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0) != REGOPT_OK ||
        regopt_optimizer_set_int(opt, REGOPT_OPT_SCHEDULE, REGOPT_SCHEDULE_LINEAR) != REGOPT_OK ||
        regopt_optimizer_set_int(opt, REGOPT_OPT_TOTAL_STEPS,
                                 (int64_t)(steps_per_epoch * (size_t)o.epochs)) != REGOPT_OK ||
        regopt_optimizer_set_int(opt, REGOPT_OPT_WARMUP_STEPS, (int64_t)steps_per_epoch) !=
            REGOPT_OK ||
        regopt_optimizer_set_double(opt, REGOPT_OPT_CLIP_NORM, 5.0) != REGOPT_OK) {
        rc = fail("optimizer: %s", regopt_optimizer_message(opt));
        goto done;
    }
    tr = regopt_trainer_create(model, opt, &st);
    if (!tr) {
        rc = fail("trainer: %s", regopt_last_error_message());
        goto done;
    }
    if (regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, o.seed) != REGOPT_OK ||
        regopt_trainer_reserve(tr, n_test > B ? n_test : B) != REGOPT_OK) {
        rc = fail("trainer: %s", regopt_trainer_message(tr));
        goto done;
    }

    /* the term: a handle like any regularizer, freed after the trainer */
    term.alpha = o.alpha;
    term.ce2 = o.ce2;
    js = create_js_term(&term, &st);
    if (!js) {
        rc = fail("term: %s: %s", regopt_status_string(st), regopt_last_error_message());
        goto done;
    }
    if (regopt_trainer_attach(tr, js) != REGOPT_OK) {
        rc = fail("attach: %s", regopt_trainer_message(tr));
        goto done;
    }

    printf("js_rdrop: digits, %zu train, %zu test; MLP 64-%ld-10, dropout %.2f; AdamW lr %g, "
           "linear schedule; %ld epochs of %zu steps\n"
           "  user term \"js_rdrop\": %g * CE(pass 2) + %g * JS(pass 1, pass 2), pass 2 with "
           "a fresh dropout seed\n",
           n_train, n_test, o.hidden, o.dropout, o.lr, o.epochs, steps_per_epoch, o.ce2, o.alpha);
    printf("%5s  %9s  %9s  %9s  %9s  %9s  %8s\n", "epoch", "ce1", "js", "term", "objective",
           "test loss", "test acc");
    for (e = 1; e <= o.epochs; e++) {
        double ce = 0.0, jss = 0.0, tv = 0.0, obj = 0.0;
        shuffle_indices(order, n_train, (uint64_t)o.seed * 1000003u + (uint64_t)e);
        for (i = 0; i < n_train; i += B) {
            size_t n = n_train - i < B ? n_train - i : B, r;
            mlp_batch hb;
            regopt_batch b;
            double l, v, ob;
            for (r = 0; r < n; r++) {
                memcpy(xb + r * DIGITS_FEATURES, xtr + order[i + r] * DIGITS_FEATURES,
                       DIGITS_FEATURES * sizeof *xb);
                yb[r] = ytr[order[i + r]];
            }
            hb.x = xb;
            hb.row_base = 0;
            regopt_batch_init(&b);
            b.data = &hb;
            b.rows = n;
            b.labels = yb;
            if (regopt_trainer_step(tr, &b, 1) != REGOPT_OK) {
                rc = fail("step: %s", regopt_trainer_message(tr));
                goto done;
            }
            /* the task loss and objective from the trainer, the term's value
               from its handle, JS from the term's own bookkeeping */
            if (regopt_trainer_get_double(tr, REGOPT_STAT_LOSS, &l) != REGOPT_OK ||
                regopt_trainer_get_double(tr, REGOPT_STAT_OBJECTIVE, &ob) != REGOPT_OK ||
                regopt_regularizer_get_double(js, REGOPT_STAT_TERM_VALUE, &v) != REGOPT_OK) {
                rc = fail("statistics: %s", regopt_regularizer_message(js));
                goto done;
            }
            ce += l * (double)n;
            jss += term.js_last * (double)n;
            tv += v * (double)n;
            obj += ob * (double)n;
        }
        if (evaluate(tr, xte, yte, n_test, out, &te_acc, &te_loss)) {
            rc = 2;
            goto done;
        }
        printf("%5ld  %9.5f  %9.6f  %9.5f  %9.5f  %9.5f  %8.4f\n", e, ce / (double)n_train,
               jss / (double)n_train, tv / (double)n_train, obj / (double)n_train, te_loss,
               te_acc);
    }
    printf("RESULT method=js_rdrop alpha=%g ce2=%g test_acc=%.4f test_loss=%.4f\n", o.alpha,
           o.ce2, te_acc, te_loss);
    if (o.min_test_acc >= 0.0 && te_acc < o.min_test_acc) {
        fprintf(stderr, "js_rdrop: test accuracy %.4f is below the required %.4f\n", te_acc,
                o.min_test_acc);
        rc = 1;
    }
done:
    regopt_trainer_free(tr); /* detaches the term: free it after */
    regopt_regularizer_free(js);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    mlp_free(&net);
    digits_free(&d);
    free(idx); free(order); free(xtr); free(xte); free(ytr); free(yte); free(xb); free(yb);
    free(out);
    return rc;
}
