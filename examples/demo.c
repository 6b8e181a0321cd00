/* demo.c — what libregopt is for, in under a minute: learning from few and
 * noisy labels. The papers show their gains on GLUE, CIFAR and translation;
 * on a small machine the effect is easiest to see where plain training
 * memorises wrong labels.
 *
 * Protocol (per seed): 600 examples of the UCI digits drawn at random, 30 %
 * of their labels replaced by uniformly random classes; every other example
 * is the clean test set. The MLP of examples/mlp.c with dropout; AdamW; the
 * same epochs, batch size and initial weights for every method. Methods:
 * plain AdamW, SAM, ASAM, R-Drop, SMART (both terms) and SMART+SAM, each with
 * the hyperparameters that --tune picked on held-out TRAINING examples
 * (never the test set).
 *
 *   ./examples/demo                 the default protocol, 5 seeds
 *   ./examples/demo --tune          the validation search behind the defaults
 *   ./examples/demo --help          options
 *
 * Writes a CSV of per-epoch test accuracy and an SVG chart of the curves;
 * then a CSV and a chart of flatness at the end of each (method, seed) run,
 * worst-case sharpness and top Hessian eigenvalue, beside test accuracy
 * (regopt_trainer_flatness changes no training state; --no-probe skips it). */
#include "demo_chart.h"
#include "digits_mlp.h"

#include <time.h>

#define MAX_METHODS 6
#define MAX_EPOCHS 1000

typedef struct method {
    const char *name;
    double rho;      /* SAM radius; 0 = no SAM */
    int adaptive;    /* ASAM */
    double alpha;    /* R-Drop alpha; < 0 = off */
    double lambda;   /* SMART adversarial lambda; < 0 = off */
    double mu;       /* SMART Bregman mu; < 0 = off */
} method;

/* Chosen by --tune: final validation accuracy on a held-out quarter of the
 * (noisy) training examples, 3 seeds, the test set never seen. The table it
 * printed is in the README. smart+sam keeps lambda 1 and mu 1 and tunes rho. */
static method methods[MAX_METHODS] = {
    {"adamw", 0.0, 0, -1.0, -1.0, -1.0},
    {"sam", 1.0, 0, -1.0, -1.0, -1.0},
    {"asam", 2.0, 1, -1.0, -1.0, -1.0},
    {"rdrop", 0.0, 0, 30.0, -1.0, -1.0},
    {"smart", 0.0, 0, -1.0, 10.0, 1.0},
    {"smart+sam", 0.3, 0, -1.0, 1.0, 1.0},
};

typedef struct options {
    const char *data, *csv, *svg, *only;
    long train, seeds, epochs, batch, hidden;
    double noise, lr, wd, dropout;
    int tune, quiet, no_probe;
    const char *flat_csv, *flat_svg;
} options;

/* The flatness probe: the first PROBE_ROWS training examples of the split (a
 * random draw, like the rest of it) with the labels the methods trained on,
 * noisy ones included -- the training loss is what SAM and the others
 * flatten, and what Andriushchenko et al. measure. */
#define PROBE_ROWS 256
#define PROBE_RHO 0.05  /* the library's default radius, L2, not adaptive */
#define PROBE_SEED 1    /* power iteration's start vector */

typedef struct probe_out {
    double sharpness, eigenvalue, loss, seconds;
    unsigned eigen_iterations;
    int eigen_converged;
} probe_out;

/* ---- data ----------------------------------------------------------------- */

typedef struct split {
    size_t n_train, n_test;
    float *xtr, *xte;
    int32_t *ytr, *yte;
} split;

/* Seed s: a random draw of n training rows with noisy labels, the rest as
 * the clean test set. */
static int make_split(const digits *d, size_t n, double noise, uint64_t seed, split *sp)
{
    size_t *idx = malloc(d->n * sizeof *idx), i;
    float u[2];
    if (!idx)
        return -1;
    shuffle_indices(idx, d->n, seed * 7919u + 1u);
    sp->n_train = n;
    sp->n_test = d->n - n;
    sp->xtr = malloc(n * DIGITS_FEATURES * sizeof(float));
    sp->ytr = malloc(n * sizeof(int32_t));
    sp->xte = malloc(sp->n_test * DIGITS_FEATURES * sizeof(float));
    sp->yte = malloc(sp->n_test * sizeof(int32_t));
    if (!sp->xtr || !sp->ytr || !sp->xte || !sp->yte) {
        free(idx);
        return -1;
    }
    for (i = 0; i < d->n; i++) {
        int train = i < n;
        float *x = train ? sp->xtr + i * DIGITS_FEATURES : sp->xte + (i - n) * DIGITS_FEATURES;
        int32_t y = d->y[idx[i]];
        memcpy(x, d->x + idx[i] * DIGITS_FEATURES, DIGITS_FEATURES * sizeof(float));
        if (train) {
            /* with probability `noise`, a uniformly random class instead */
            regopt_random_uniform(seed * 104729u + 3u, 2 * i, u, 2);
            if (u[0] < noise)
                y = (int32_t)(u[1] * DIGITS_CLASSES) % DIGITS_CLASSES;
            sp->ytr[i] = y;
        } else {
            sp->yte[i - n] = y;
        }
    }
    free(idx);
    return 0;
}

static void free_split(split *sp)
{
    free(sp->xtr);
    free(sp->ytr);
    free(sp->xte);
    free(sp->yte);
}

/* ---- one training run ------------------------------------------------------- */

#define TRY(call)                                                                   \
    do {                                                                            \
        if ((call) != REGOPT_OK) {                                                  \
            fprintf(stderr, "demo: %s: %s\n", #call,                                \
                    tr ? regopt_trainer_message(tr) : regopt_last_error_message()); \
            rc = -1;                                                                \
            goto done;                                                              \
        }                                                                           \
    } while (0)

/* The method's regularizers: each created with its defaults into regs[]
 * (the caller frees them after the trainer), configured through its own keys
 * and attached. Returns 0, or -1 with a message. */
#define N_REGS 4
static int configure(regopt_trainer *tr, const method *m, regopt_regularizer **regs)
{
    regopt_status st = REGOPT_OK;
    regopt_regularizer *r = NULL;
    if (m->rho > 0.0) {
        if (!(r = regs[0] = regopt_regularizer_create(REGOPT_REG_SAM, NULL, &st)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_SAM_RHO, m->rho)) ||
            (st = regopt_regularizer_set_int(r, REGOPT_SAM_ADAPTIVE, m->adaptive)) ||
            (st = regopt_regularizer_set_group(r, 1, REGOPT_SAM_GROUP_ADAPTIVE, 0)))
            goto fail;
        if ((st = regopt_trainer_attach(tr, r)))
            goto fail_attach;
    }
    if (m->alpha >= 0.0) {
        if (!(r = regs[1] = regopt_regularizer_create(REGOPT_REG_RDROP, NULL, &st)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_RDROP_ALPHA, m->alpha)))
            goto fail;
        if ((st = regopt_trainer_attach(tr, r)))
            goto fail_attach;
    }
    if (m->lambda >= 0.0) { /* pixels in [0, 1]: a radius of a few hundredths */
        if (!(r = regs[2] = regopt_regularizer_create(REGOPT_REG_SMART, NULL, &st)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_SMART_LAMBDA, m->lambda)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_SMART_EPSILON, 0.1)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_SMART_ETA, 0.05)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_SMART_SIGMA, 0.01)))
            goto fail;
        if ((st = regopt_trainer_attach(tr, r)))
            goto fail_attach;
    }
    if (m->mu >= 0.0) {
        if (!(r = regs[3] = regopt_regularizer_create(REGOPT_REG_BREGMAN, NULL, &st)) ||
            (st = regopt_regularizer_set_double(r, REGOPT_BREGMAN_MU, m->mu)))
            goto fail;
        if ((st = regopt_trainer_attach(tr, r)))
            goto fail_attach;
    }
    return 0;
fail:
    fprintf(stderr, "demo: %s: %s: %s\n", m->name, regopt_status_string(st),
            r ? regopt_regularizer_message(r) : regopt_last_error_message());
    return -1;
fail_attach:
    fprintf(stderr, "demo: %s: %s: %s\n", m->name, regopt_status_string(st),
            regopt_trainer_message(tr));
    return -1;
}

/* Worst-case sharpness and top Hessian eigenvalue of the task loss on the
 * first PROBE_ROWS rows of (x, y), into *po. Changes no training state. */
static int probe(regopt_trainer *tr, const float *x, const int32_t *y, size_t n, probe_out *po)
{
    mlp_batch hb;
    regopt_batch b;
    regopt_flatness_request rq;
    regopt_flatness res;
    regopt_status st;
    hb.x = x;
    hb.row_base = 0;
    regopt_batch_init(&b);
    b.data = &hb;
    b.rows = n < PROBE_ROWS ? n : PROBE_ROWS;
    b.labels = y;
    regopt_flatness_request_init(&rq);
    rq.measures = REGOPT_FLAT_WORST_CASE | REGOPT_FLAT_EIGENVALUE;
    rq.rho = PROBE_RHO;
    rq.seed = PROBE_SEED;
    res.size = sizeof res;
    if ((st = regopt_trainer_flatness(tr, &b, 1, &rq, &res)) != REGOPT_OK) {
        fprintf(stderr, "demo: regopt_trainer_flatness: %s: %s\n", regopt_status_string(st),
                regopt_trainer_message(tr));
        return -1;
    }
    po->sharpness = res.worst_case;
    po->eigenvalue = res.eigenvalue;
    po->loss = res.loss;
    po->eigen_iterations = res.eigen_iterations;
    po->eigen_converged = res.eigen_converged;
    return 0;
}

static double now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC); /* C11 */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Train one method on (xtr, ytr), evaluating (xev, yev) after every epoch
 * into acc[epoch]; then, if po is not NULL, probe flatness into *po.
 * Returns 0, or -1 with a message. */
static int run(const options *o, const method *m, uint64_t seed, const float *xtr,
               const int32_t *ytr, size_t ntr, const float *xev, const int32_t *yev, size_t nev,
               double *acc, probe_out *po)
{
    mlp net;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *regs[N_REGS] = {NULL, NULL, NULL, NULL};
    size_t *order = malloc(ntr * sizeof *order), B = (size_t)o->batch, i, r;
    float *xb = malloc(B * DIGITS_FEATURES * sizeof *xb);
    float *out = malloc(nev * DIGITS_CLASSES * sizeof *out);
    int32_t *yb = malloc(B * sizeof *yb);
    long e;
    int rc = 0;
    memset(&net, 0, sizeof net);
    if (!order || !xb || !out || !yb ||
        mlp_init(&net, (size_t)o->hidden, nev > B ? nev : B, (float)o->dropout, 0, seed)) {
        fprintf(stderr, "demo: out of memory\n");
        rc = -1;
        goto done;
    }
    model = regopt_model_create(NULL, NULL);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    TRY(model && opt ? REGOPT_OK : REGOPT_ERR_NO_MEMORY);
    TRY(mlp_register(&net, model));
    TRY(regopt_optimizer_set_double(opt, REGOPT_OPT_LR, o->lr));
    TRY(regopt_optimizer_set_double(opt, REGOPT_OPT_WEIGHT_DECAY, o->wd));
    TRY(regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0));
    TRY(regopt_optimizer_set_int(opt, REGOPT_OPT_TOTAL_STEPS,
                                 (int64_t)(o->epochs * (long)((ntr + B - 1) / B))));
    tr = regopt_trainer_create(model, opt, NULL);
    TRY(tr ? REGOPT_OK : REGOPT_ERR_NO_MEMORY);
    TRY(regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, (int64_t)seed));
    if (configure(tr, m, regs)) {
        rc = -1;
        goto done;
    }
    for (e = 0; e < o->epochs; e++) {
        mlp_batch hb;
        regopt_batch b;
        shuffle_indices(order, ntr, seed * 31u + (uint64_t)e);
        for (i = 0; i + B <= ntr; i += B) { /* full batches only: same steps everywhere */
            for (r = 0; r < B; r++) {
                memcpy(xb + r * DIGITS_FEATURES, xtr + order[i + r] * DIGITS_FEATURES,
                       DIGITS_FEATURES * sizeof *xb);
                yb[r] = ytr[order[i + r]];
            }
            hb.x = xb;
            hb.row_base = 0;
            regopt_batch_init(&b);
            b.data = &hb;
            b.rows = B;
            b.labels = yb;
            TRY(regopt_trainer_step(tr, &b, 1));
        }
        hb.x = xev;
        hb.row_base = 0;
        regopt_batch_init(&b);
        b.data = &hb;
        b.rows = nev;
        TRY(regopt_trainer_evaluate(tr, &b, NULL, out));
        acc[e] = accuracy(out, yev, nev, DIGITS_CLASSES);
    }
    if (po) {
        double t0 = now();
        if (probe(tr, xtr, ytr, ntr, po)) {
            rc = -1;
            goto done;
        }
        po->seconds = now() - t0;
    }
done:
    regopt_trainer_free(tr); /* detaches the regularizers: free them after it */
    for (i = 0; i < N_REGS; i++)
        regopt_regularizer_free(regs[i]);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    mlp_free(&net);
    free(order);
    free(xb);
    free(out);
    free(yb);
    return rc;
}

/* ---- output ------------------------------------------------------------------ */

static void mean_std(const double *x, long n, double *mean, double *sd)
{
    double s = 0.0, q = 0.0;
    long i;
    for (i = 0; i < n; i++)
        s += x[i];
    *mean = s / (double)n;
    for (i = 0; i < n; i++)
        q += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(q / (double)(n - 1)) : 0.0;
}

static const char *const COLORS[MAX_METHODS] = {"#444444", "#1f77b4", "#2ca02c", "#d62728",
                                                "#9467bd", "#ff7f0e"};

/* curves[m][e]: mean test accuracy of method m after epoch e. */
static int write_svg(const char *path, const options *o, int nm, const int *which,
                     double curves[][MAX_EPOCHS])
{
    const double W = 720, H = 420, L = 60, R = 150, T = 40, Bm = 50;
    double lo = 1.0, hi = 0.0, x0 = L, x1 = W - R, y0 = H - Bm, y1 = T;
    FILE *f = fopen(path, "w");
    long e;
    int m, k;
    if (!f)
        return -1;
    /* the scale follows the curves after the first tenth of training, so the
       differences that matter are visible; earlier points are clamped */
    for (m = 0; m < nm; m++)
        for (e = o->epochs / 10; e < o->epochs; e++) {
            lo = curves[m][e] < lo ? curves[m][e] : lo;
            hi = curves[m][e] > hi ? curves[m][e] : hi;
        }
    lo = floor(lo * 20.0) / 20.0;
    hi = ceil(hi * 20.0) / 20.0;
    if (hi <= lo)
        hi = lo + 0.05;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"22\" font-size=\"14\">Digits, %ld examples, %.0f%% noisy "
               "labels: clean test accuracy (mean over %ld seed%s)</text>\n",
            L, o->train, o->noise * 100.0, o->seeds, o->seeds == 1 ? "" : "s");
    for (k = 0; k <= 5; k++) { /* horizontal grid and labels */
        double v = lo + (hi - lo) * k / 5.0, y = y0 + (y1 - y0) * k / 5.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#dddddd\"/>\n",
                x0, y, x1, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", x0 - 6, y + 4,
                v);
    }
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", x0,
            y0, x1, y0);
    for (k = 0; k <= 4; k++) { /* epoch ticks */
        double x = x0 + (x1 - x0) * k / 4.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%ld</text>\n", x,
                y0 + 16, 1 + (o->epochs - 1) * k / 4);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">epoch</text>\n",
            (x0 + x1) / 2, H - 12);
    for (m = 0; m < nm; m++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"",
                COLORS[which[m]]);
        for (e = 0; e < o->epochs; e++) {
            double x = x0 + (x1 - x0) * (o->epochs > 1 ? (double)e / (double)(o->epochs - 1) : 0);
            double v = curves[m][e] < lo ? lo : curves[m][e];
            double y = y0 + (y1 - y0) * (v - lo) / (hi - lo);
            fprintf(f, "%.1f,%.1f ", x, y);
        }
        fprintf(f, "\"/>\n<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n", x1 + 10,
                y1 + 18.0 * (m + 1), COLORS[which[m]], methods[which[m]].name);
    }
    fprintf(f, "</svg>\n");
    return fclose(f);
}

/* ---- the search behind the defaults ------------------------------------------- */

static int tune(const options *o, const digits *d)
{
    /* candidates for each method's main hyperparameter */
    static const double sam_rho[] = {0.1, 0.3, 1.0, 2.0};
    static const double asam_rho[] = {0.5, 1.0, 2.0, 4.0};
    static const double alphas[] = {1.0, 3.0, 10.0, 30.0};
    static const double lambdas[] = {0.3, 1.0, 3.0, 10.0};
    const long tune_seeds = 3;
    size_t nval = (size_t)o->train / 4, nfit = (size_t)o->train - nval;
    int mi;
    size_t c;
    double *acc = malloc((size_t)o->epochs * sizeof *acc);
    if (!acc)
        return -1;
    printf("tune: %ld seeds; fit on %zu noisy training examples, validate on the other %zu "
           "(noisy too, as in practice); the test set is not used\n",
           tune_seeds, nfit, nval);
    printf("%-10s %-10s %s\n", "method", "value", "final validation accuracy (mean)");
    for (mi = 1; mi < MAX_METHODS; mi++) {
        const double *vals = mi == 1 || mi == 5 ? sam_rho : mi == 2 ? asam_rho
                             : mi == 3                  ? alphas : lambdas;
        size_t nv = 4;
        if (o->only && !strstr(o->only, methods[mi].name))
            continue;
        for (c = 0; c < nv; c++) {
            method m = methods[mi];
            double sum = 0.0;
            long s;
            if (mi == 1 || mi == 2 || mi == 5)
                m.rho = vals[c];
            else if (mi == 3)
                m.alpha = vals[c];
            else
                m.lambda = vals[c];
            for (s = 0; s < tune_seeds; s++) {
                split sp;
                if (make_split(d, (size_t)o->train, o->noise, (uint64_t)(1000 + s), &sp) ||
                    run(o, &m, (uint64_t)(1000 + s), sp.xtr, sp.ytr, nfit, sp.xtr + nfit *
                        DIGITS_FEATURES, sp.ytr + nfit, nval, acc, NULL)) {
                    free_split(&sp);
                    free(acc);
                    return -1;
                }
                sum += acc[o->epochs - 1];
                free_split(&sp);
            }
            printf("%-10s %-10g %.4f\n", m.name, vals[c], sum / (double)tune_seeds);
            fflush(stdout);
        }
    }
    free(acc);
    return 0;
}

/* ---- main ---------------------------------------------------------------------- */

static void usage(void)
{
    printf("usage: demo [options]\n"
           "  --data PATH       digits CSV (default data/digits.csv)\n"
           "  --train N         training examples per seed (default 600)\n"
           "  --noise X         share of training labels replaced at random (default 0.3)\n"
           "  --seeds N         seeds (default 5)\n"
           "  --epochs N        epochs (default 120)\n"
           "  --batch N         rows per step (default 32)\n"
           "  --methods LIST    comma-separated subset of "
           "adamw,sam,asam,rdrop,smart,smart+sam\n"
           "  --csv PATH        per-epoch test accuracy (default demo_curves.csv)\n"
           "  --svg PATH        chart of the curves (default demo_curves.svg)\n"
           "  --flat-csv PATH   flatness at the end of each run (default demo_flatness.csv)\n"
           "  --flat-svg PATH   its chart beside test accuracy (default demo_flatness.svg)\n"
           "  --no-probe        skip the flatness probe (and those two files)\n"
           "  --sam-rho X, --asam-rho X, --rdrop-alpha X, --smart-lambda X, --bregman-mu X\n"
           "                    override a method's tuned hyperparameter\n"
           "  --tune            run the validation search behind the defaults instead\n"
           "  --quiet           only the RESULT lines\n");
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
        } else if (!strcmp(a, "--tune")) {
            o->tune = 1;
            continue;
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
            continue;
        } else if (!strcmp(a, "--no-probe")) {
            o->no_probe = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "demo: %s needs a value (see --help)\n", a);
            return 2;
        }
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--csv")) o->csv = v;
        else if (!strcmp(a, "--svg")) o->svg = v;
        else if (!strcmp(a, "--flat-csv")) o->flat_csv = v;
        else if (!strcmp(a, "--flat-svg")) o->flat_svg = v;
        else if (!strcmp(a, "--methods")) o->only = v;
        else if (!strcmp(a, "--train")) bad = parse_long(v, 50, 1500, &o->train);
        else if (!strcmp(a, "--noise")) bad = parse_double(v, 0.0, 0.9, &o->noise);
        else if (!strcmp(a, "--seeds")) bad = parse_long(v, 1, 100, &o->seeds);
        else if (!strcmp(a, "--epochs")) bad = parse_long(v, 1, MAX_EPOCHS, &o->epochs);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 1, 512, &o->batch);
        else if (!strcmp(a, "--sam-rho")) bad = parse_double(v, 1e-6, 100, &methods[1].rho);
        else if (!strcmp(a, "--asam-rho")) bad = parse_double(v, 1e-6, 100, &methods[2].rho);
        else if (!strcmp(a, "--rdrop-alpha")) bad = parse_double(v, 0, 1e4, &methods[3].alpha);
        else if (!strcmp(a, "--smart-lambda")) bad = parse_double(v, 0, 1e4, &methods[4].lambda);
        else if (!strcmp(a, "--bregman-mu")) {
            bad = parse_double(v, 0, 1e4, &methods[4].mu);
            methods[5].mu = methods[4].mu;
        }
        else {
            fprintf(stderr, "demo: unknown option %s (see --help)\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "demo: bad value for %s: '%s' (see --help for the range)\n", a, v);
            return 2;
        }
        i++;
    }
    if (o->batch > o->train / 2) {
        fprintf(stderr, "demo: --batch %ld is too large for --train %ld\n", o->batch, o->train);
        return 2;
    }
    if (o->only) { /* every listed name must exist */
        char buf[256], *tok;
        snprintf(buf, sizeof buf, "%s", o->only);
        for (tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            int k, found = 0;
            for (k = 0; k < MAX_METHODS; k++)
                found |= !strcmp(tok, methods[k].name);
            if (!found) {
                fprintf(stderr, "demo: unknown method '%s' (see --help)\n", tok);
                return 2;
            }
        }
    }
    return 0;
}

static int selected(const options *o, int k)
{
    char buf[256], *tok;
    if (!o->only)
        return 1;
    snprintf(buf, sizeof buf, "%s", o->only);
    for (tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        if (!strcmp(tok, methods[k].name))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    options o = {"data/digits.csv", "demo_curves.csv", "demo_curves.svg", NULL,
                 600, 5, 120, 32, 128, 0.3, 1e-3, 1e-2, 0.1, 0, 0, 0,
                 "demo_flatness.csv", "demo_flatness.svg"};
    static double curves[MAX_METHODS][MAX_EPOCHS];
    static probe_out flat[MAX_METHODS][100];
    double final[MAX_METHODS][100], secs[MAX_METHODS], *acc = NULL;
    double fmean[MAX_METHODS][3], fsd[MAX_METHODS][3];
    int which[MAX_METHODS], nm = 0, k, rc = parse(argc, argv, &o);
    digits d = {0, NULL, NULL};
    FILE *csv = NULL;
    long s, e;
    if (rc)
        return rc;
    if (digits_load(o.data, &d))
        return 2;
    if ((size_t)o.train + 100 > d.n) {
        fprintf(stderr, "demo: --train %ld leaves too few test examples\n", o.train);
        return 2;
    }
    if (o.tune) {
        rc = tune(&o, &d) ? 1 : 0;
        digits_free(&d);
        return rc;
    }
    acc = malloc((size_t)o.epochs * sizeof *acc);
    for (k = 0; k < MAX_METHODS; k++)
        if (selected(&o, k))
            which[nm++] = k;
    if (!o.quiet)
        printf("digits: %ld training examples with %.0f%% random labels, %zu clean test "
               "examples; MLP 64-%ld-10, dropout %.1f; AdamW lr %g wd %g; %ld epochs of batch "
               "%ld; %ld seeds\n",
               o.train, 100.0 * o.noise, d.n - (size_t)o.train, o.hidden, o.dropout, o.lr, o.wd,
               o.epochs, o.batch, o.seeds);
    for (k = 0; k < nm; k++) {
        const method *m = &methods[which[k]];
        double t0 = now();
        for (e = 0; e < o.epochs; e++)
            curves[k][e] = 0.0;
        for (s = 0; s < o.seeds; s++) {
            split sp;
            if (make_split(&d, (size_t)o.train, o.noise, (uint64_t)(s + 1), &sp) ||
                run(&o, m, (uint64_t)(s + 1), sp.xtr, sp.ytr, sp.n_train, sp.xte, sp.yte,
                    sp.n_test, acc, o.no_probe ? NULL : &flat[k][s])) {
                free_split(&sp);
                rc = 1;
                goto done;
            }
            for (e = 0; e < o.epochs; e++)
                curves[k][e] += acc[e] / (double)o.seeds;
            final[k][s] = acc[o.epochs - 1];
            t0 += o.no_probe ? 0.0 : flat[k][s].seconds; /* seconds: training only */
            free_split(&sp);
        }
        secs[k] = now() - t0;
        if (!o.no_probe) { /* columns: test accuracy, sharpness, eigenvalue */
            double v[3][100];
            int j;
            for (s = 0; s < o.seeds; s++) {
                v[0][s] = final[k][s];
                v[1][s] = flat[k][s].sharpness;
                v[2][s] = flat[k][s].eigenvalue;
            }
            for (j = 0; j < 3; j++)
                mean_std(v[j], o.seeds, &fmean[k][j], &fsd[k][j]);
        }
    }
    if (!o.quiet) {
        printf("\n%-10s  %-18s  %-10s  %s\n", "method", "test accuracy", "vs adamw", "seconds");
        for (k = 0; k < nm; k++) {
            double mean, sd, base = 0.0, bsd;
            mean_std(final[k], o.seeds, &mean, &sd);
            if (which[0] == 0)
                mean_std(final[0], o.seeds, &base, &bsd);
            printf("%-10s  %.4f +- %.4f   %+7.2f pt   %6.2f\n", methods[which[k]].name, mean, sd,
                   which[0] == 0 ? 100.0 * (mean - base) : 0.0, secs[k]);
        }
        if (!o.no_probe) {
            printf("\nat the end of training, on %d training examples (their noisy labels):\n"
                   "%-10s  %-18s  %-22s  %s\n", PROBE_ROWS, "method", "test accuracy",
                   "worst-case sharpness", "top Hessian eigenvalue");
            for (k = 0; k < nm; k++)
                printf("%-10s  %.4f +- %.4f   %.5f +- %.5f     %8.3f +- %.3f\n",
                       methods[which[k]].name, fmean[k][0], fsd[k][0], fmean[k][1], fsd[k][1],
                       fmean[k][2], fsd[k][2]);
            printf("(worst case: L2, rho %g, 20 steps; eigenvalue: power iteration, seed %d)\n",
                   PROBE_RHO, PROBE_SEED);
        }
        printf("\n");
    }
    for (k = 0; k < nm; k++) {
        double mean, sd;
        mean_std(final[k], o.seeds, &mean, &sd);
        printf("RESULT method=%s test_acc_mean=%.4f test_acc_std=%.4f seeds=%ld seconds=%.2f",
               methods[which[k]].name, mean, sd, o.seeds, secs[k]);
        if (!o.no_probe)
            printf(" sharpness_mean=%.5f sharpness_std=%.5f eigenvalue_mean=%.4f "
                   "eigenvalue_std=%.4f", fmean[k][1], fsd[k][1], fmean[k][2], fsd[k][2]);
        printf("\n");
    }
    csv = fopen(o.csv, "w");
    if (csv) {
        fprintf(csv, "epoch");
        for (k = 0; k < nm; k++)
            fprintf(csv, ",%s", methods[which[k]].name);
        fprintf(csv, "\n");
        for (e = 0; e < o.epochs; e++) {
            fprintf(csv, "%ld", e + 1);
            for (k = 0; k < nm; k++)
                fprintf(csv, ",%.4f", curves[k][e]);
            fprintf(csv, "\n");
        }
    }
    if (!csv || fclose(csv) || write_svg(o.svg, &o, nm, which, curves)) {
        fprintf(stderr, "demo: cannot write %s or %s\n", o.csv, o.svg);
        rc = 1;
    } else if (!o.quiet) {
        printf("per-epoch curves: %s; chart: %s\n", o.csv, o.svg);
    }
    if (!o.no_probe && !rc) {
        const char *names[MAX_METHODS], *colors[MAX_METHODS];
        char title[200];
        csv = fopen(o.flat_csv, "w");
        if (csv) {
            fprintf(csv, "method,seed,test_acc,probe_loss,sharpness,top_eigenvalue,"
                         "eigen_iterations,eigen_converged\n");
            for (k = 0; k < nm; k++)
                for (s = 0; s < o.seeds; s++)
                    fprintf(csv, "%s,%ld,%.4f,%.5f,%.6f,%.4f,%u,%d\n", methods[which[k]].name,
                            s + 1, final[k][s], flat[k][s].loss, flat[k][s].sharpness,
                            flat[k][s].eigenvalue, flat[k][s].eigen_iterations,
                            flat[k][s].eigen_converged);
        }
        for (k = 0; k < nm; k++) {
            names[k] = methods[which[k]].name;
            colors[k] = COLORS[which[k]];
        }
        snprintf(title, sizeof title, "End of training: flatness on %d training examples beside "
                 "clean test accuracy (mean &#177; sd, %ld seed%s)", PROBE_ROWS, o.seeds,
                 o.seeds == 1 ? "" : "s");
        if (!csv || fclose(csv) ||
            write_flat_svg(o.flat_svg, title, nm, names, colors, fmean, fsd, PROBE_RHO)) {
            fprintf(stderr, "demo: cannot write %s or %s\n", o.flat_csv, o.flat_svg);
            rc = 1;
        } else if (!o.quiet) {
            printf("flatness per run: %s; chart: %s\n", o.flat_csv, o.flat_svg);
        }
    }
done:
    free(acc);
    digits_free(&d);
    return rc;
}
