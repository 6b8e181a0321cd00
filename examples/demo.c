/* demo.c — what libregopt is for, in under a minute: learning from few and
 * noisy labels. The papers show their gains on GLUE, CIFAR and translation;
 * on a small machine the effect is easiest to see where plain training
 * memorises wrong labels.
 *
 * Protocol (per seed): 600 examples of the UCI digits drawn at random, 30 %
 * of their labels replaced by uniformly random classes; every other example
 * is the clean test set. The MLP of examples/mlp.c with dropout; AdamW; the
 * same epochs, batch size and initial weights for every method. Methods:
 * plain AdamW, SAM, ASAM, R-Drop, SMART (both terms) and SMART+SAM, then
 * the SAM variants of the second wave (Momentum-SAM, LookSAM, FriendlySAM,
 * VaSSO, WSAM), each with the hyperparameters that --tune picked on
 * held-out TRAINING examples (never the test set); demo_methods.h lists
 * them as settings by key name. Beside each method's accuracy: its step
 * cost, the mean time of regopt_trainer_step relative to plain AdamW's.
 *
 *   ./examples/demo                 the default protocol, 5 seeds
 *   ./examples/demo --tune          the validation search behind the defaults
 *   ./examples/demo --help          options
 *
 * Writes a CSV of per-epoch test accuracy and an SVG chart of the curves;
 * then a CSV and a chart of flatness at the end of each (method, seed) run,
 * worst-case sharpness and top Hessian eigenvalue, beside test accuracy
 * (regopt_trainer_flatness changes no training state; --no-probe skips it). */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include "curves_chart.h"
#include "demo_chart.h"
#include "demo_methods.h"
#include "digits_mlp.h"

#include <time.h>

#define MAX_EPOCHS 1000

typedef struct options {
    const char *data, *csv, *svg, *only;
    long train, seeds, epochs, batch, hidden;
    double noise, lr, wd, dropout;
    int tune, quiet, no_probe;
    const char *flat_csv, *flat_svg, *svg2, *svg3;
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

/* The method's weight average swapped into the model (an "average"
 * regularizer that has averaged an update), or NULL: the trained weights
 * stay. Swapping it again puts them back bit for bit. */
static regopt_regularizer *swap_in_average(regopt_regularizer **regs)
{
    int i;
    for (i = 0; i < MAX_REGS; i++)
        if (regs[i] && regopt_regularizer_get_kind(regs[i]) == REGOPT_REG_AVERAGE)
            return regopt_regularizer_swap_average(regs[i]) == REGOPT_OK ? regs[i] : NULL;
    return NULL; /* none, or nothing averaged yet (SWA before its start) */
}

/* Evaluate b into out on what the method deploys: its average if it keeps
 * one, else the trained weights. */
static regopt_status evaluate_averaged(regopt_trainer *tr, regopt_regularizer **regs,
                                       const regopt_batch *b, float *out)
{
    regopt_regularizer *avg = swap_in_average(regs);
    regopt_status st = regopt_trainer_evaluate(tr, b, NULL, out), back = REGOPT_OK;
    if (avg)
        back = regopt_regularizer_swap_average(avg);
    return st != REGOPT_OK ? st : back;
}

/* Train one method on (xtr, ytr), evaluating (xev, yev) after every epoch
 * into acc[epoch]; then, if po is not NULL, probe flatness into *po. Adds
 * the seconds spent in regopt_trainer_step to *step_s and the steps to
 * *steps when they are not NULL. Returns 0, or -1 with a message. */
static int run(const options *o, const method *m, uint64_t seed, const float *xtr,
               const int32_t *ytr, size_t ntr, const float *xev, const int32_t *yev, size_t nev,
               double *acc, probe_out *po, double *step_s, long *steps)
{
    mlp net;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *regs[MAX_REGS] = {NULL};
    size_t *order = malloc(ntr * sizeof *order), B = (size_t)o->batch, i, r;
    float *xb = malloc(B * DIGITS_FEATURES * sizeof *xb);
    float *out = malloc(nev * DIGITS_CLASSES * sizeof *out);
    int32_t *yb = malloc(B * sizeof *yb);
    long e;
    int rc = 0;
    double t0;
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
            t0 = now();
            TRY(regopt_trainer_step(tr, &b, 1));
            if (step_s) {
                *step_s += now() - t0;
                ++*steps;
            }
        }
        hb.x = xev;
        hb.row_base = 0;
        regopt_batch_init(&b);
        b.data = &hb;
        b.rows = nev;
        TRY(evaluate_averaged(tr, regs, &b, out));
        acc[e] = accuracy(out, yev, nev, DIGITS_CLASSES);
    }
    if (po) { /* flatness of what is evaluated: the average if the method keeps one */
        regopt_regularizer *avg = swap_in_average(regs);
        t0 = now();
        rc = probe(tr, xtr, ytr, ntr, po);
        po->seconds = now() - t0;
        if (avg && regopt_regularizer_swap_average(avg) != REGOPT_OK)
            rc = -1;
    }
done:
    regopt_trainer_free(tr); /* detaches the regularizers: free them after it */
    for (i = 0; i < MAX_REGS; i++)
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

/* The chart `chart` draws the methods whose row has that chart, and adamw
 * and sam (the references) on every chart. */
static int on_chart(const method *m, int chart)
{
    return m->chart == chart || !strcmp(m->name, "adamw") || !strcmp(m->name, "sam");
}

/* curves[m][e]: mean test accuracy of method which[m] after epoch e; one
 * panel of curves_chart.h with the methods of the chart. */
static int write_svg(const char *path, const options *o, int chart, int nm, const int *which,
                     double curves[][MAX_EPOCHS])
{
    const char *names[MAX_METHODS], *colors[MAX_METHODS];
    static double rows[MAX_METHODS * MAX_EPOCHS];
    curves_panel panel;
    char title[200];
    int m, n = 0;
    for (m = 0; m < nm; m++)
        if (on_chart(&methods[which[m]], chart)) {
            names[n] = methods[which[m]].name;
            colors[n] = methods[which[m]].color;
            memcpy(rows + (size_t)n++ * MAX_EPOCHS, curves[m], sizeof curves[m]);
        }
    snprintf(title, sizeof title, "%sDigits, %ld examples, %.0f%% noisy labels: clean test "
             "accuracy (mean over %ld seed%s)", chart == 2 ? "SAM variants. "
             : chart == 3 ? "Averaging, MESA, adversarial. " : "", o->train, o->noise * 100.0,
             o->seeds, o->seeds == 1 ? "" : "s");
    panel.title = "";
    panel.epochs = o->epochs;
    panel.acc = rows;
    panel.stride = MAX_EPOCHS;
    return write_curves_svg(path, title, 1, &panel, n, names, colors);
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

/* ---- the search behind the defaults ------------------------------------------- */

static int tune(const options *o, const digits *d)
{
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
    printf("%-10s %-14s %-10s %s\n", "method", "key", "value",
           "final validation accuracy (mean)");
    for (mi = 0; mi < N_METHODS; mi++) {
        if (!methods[mi].tuned || !selected(o, mi))
            continue;
        for (c = 0; c < 4; c++) { /* the candidate after the row's own settings */
            method m = methods[mi];
            char v[32];
            double sum = 0.0;
            long s;
            snprintf(v, sizeof v, "%.17g", m.grid[c]);
            if (add_setting(&m, m.tuned, v)) {
                free(acc);
                return -1;
            }
            for (s = 0; s < tune_seeds; s++) {
                split sp;
                if (make_split(d, (size_t)o->train, o->noise, (uint64_t)(1000 + s), &sp) ||
                    run(o, &m, (uint64_t)(1000 + s), sp.xtr, sp.ytr, nfit, sp.xtr + nfit *
                        DIGITS_FEATURES, sp.ytr + nfit, nval, acc, NULL, NULL, NULL)) {
                    free_split(&sp);
                    free(acc);
                    return -1;
                }
                sum += acc[o->epochs - 1];
                free_split(&sp);
            }
            printf("%-10s %-14s %-10g %.4f\n", m.name, m.tuned, m.grid[c],
                   sum / (double)tune_seeds);
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
           "  --methods LIST    comma-separated subset of adamw,sam,asam,rdrop,smart,\n"
           "                    smart+sam,msam,looksam,fsam,vasso,wsam,ema,swa,mesa,fgm,\n"
           "                    pgd,freelb,vat (default all)\n"
           "  --csv PATH        per-epoch test accuracy (default demo_curves.csv)\n"
           "  --svg PATH        chart of the curves (default demo_curves.svg)\n"
           "  --svg2 PATH       chart of the SAM variants (default demo_curves_sam.svg)\n"
           "  --svg3 PATH       chart of averaging, MESA and adversarial training\n"
           "                    (default demo_curves_more.svg)\n"
           "  --flat-csv PATH   flatness at the end of each run (default demo_flatness.csv)\n"
           "  --flat-svg PATH   its chart beside test accuracy (default demo_flatness.svg)\n"
           "  --no-probe        skip the flatness probe (and those two files)\n"
           "  --set METHOD:KEY=VALUE  add a setting to a method (a library key name,\n"
           "                    KEY@GROUP=VALUE for a group key); repeatable\n"
           "  --sam-rho X, --asam-rho X, --rdrop-alpha X, --smart-lambda X, --bregman-mu X\n"
           "                    shorthands for --set (--bregman-mu sets both SMART rows)\n"
           "  --tune            run the validation search behind the defaults instead\n"
           "  --quiet           only the RESULT lines\n");
}

/* --set METHOD:KEY=VALUE; the value is checked when the method is set up. */
static int set_option(const char *v)
{
    char name[64];
    const char *colon = strchr(v, ':'), *eq = colon ? strchr(colon, '=') : NULL;
    method *m;
    size_t len = colon ? (size_t)(colon - v) : 0;
    if (!colon || !eq || len == 0 || len >= sizeof name)
        return 1;
    memcpy(name, v, len);
    name[len] = '\0';
    if (!(m = method_named(name))) {
        fprintf(stderr, "demo: --set: unknown method '%s'\n", name);
        return 1;
    }
    {
        char key[128];
        size_t kl = (size_t)(eq - colon - 1);
        if (kl == 0 || kl >= sizeof key)
            return 1;
        memcpy(key, colon + 1, kl);
        key[kl] = '\0';
        return add_setting(m, key, eq + 1) ? 1 : 0;
    }
}

static int shorthand(const char *method_name, const char *key, const char *v)
{
    double x;
    return parse_double(v, 0, 1e4, &x) || add_setting(method_named(method_name), key, v);
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
        else if (!strcmp(a, "--svg2")) o->svg2 = v;
        else if (!strcmp(a, "--svg3")) o->svg3 = v;
        else if (!strcmp(a, "--set")) bad = set_option(v);
        else if (!strcmp(a, "--sam-rho")) bad = shorthand("sam", "sam.rho", v);
        else if (!strcmp(a, "--asam-rho")) bad = shorthand("asam", "sam.rho", v);
        else if (!strcmp(a, "--rdrop-alpha")) bad = shorthand("rdrop", "rdrop.alpha", v);
        else if (!strcmp(a, "--smart-lambda")) bad = shorthand("smart", "smart.lambda", v);
        else if (!strcmp(a, "--bregman-mu"))
            bad = shorthand("smart", "bregman.mu", v) || shorthand("smart+sam", "bregman.mu", v);
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
            for (k = 0; k < N_METHODS; k++)
                found |= !strcmp(tok, methods[k].name);
            if (!found) {
                fprintf(stderr, "demo: unknown method '%s' (see --help)\n", tok);
                return 2;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o = {"data/digits.csv", "demo_curves.csv", "demo_curves.svg", NULL,
                 600, 5, 120, 32, 128, 0.3, 1e-3, 1e-2, 0.1, 0, 0, 0,
                 "demo_flatness.csv", "demo_flatness.svg", "demo_curves_sam.svg",
                 "demo_curves_more.svg"};
    static double curves[MAX_METHODS][MAX_EPOCHS];
    static probe_out flat[MAX_METHODS][100];
    double final[MAX_METHODS][100], secs[MAX_METHODS], step_ms[MAX_METHODS], *acc = NULL;
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
    for (k = 0; k < N_METHODS; k++)
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
        double t0 = now(), step_s = 0.0;
        long steps = 0;
        for (e = 0; e < o.epochs; e++)
            curves[k][e] = 0.0;
        for (s = 0; s < o.seeds; s++) {
            split sp;
            if (make_split(&d, (size_t)o.train, o.noise, (uint64_t)(s + 1), &sp) ||
                run(&o, m, (uint64_t)(s + 1), sp.xtr, sp.ytr, sp.n_train, sp.xte, sp.yte,
                    sp.n_test, acc, o.no_probe ? NULL : &flat[k][s], &step_s, &steps)) {
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
        step_ms[k] = 1e3 * step_s / (double)steps;
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
        printf("\n%-10s  %-18s  %-10s  %-10s  %s\n", "method", "test accuracy", "vs adamw",
               "step cost", "seconds");
        for (k = 0; k < nm; k++) {
            double mean, sd, base = 0.0, bsd;
            mean_std(final[k], o.seeds, &mean, &sd);
            if (which[0] == 0)
                mean_std(final[0], o.seeds, &base, &bsd);
            printf("%-10s  %.4f +- %.4f   %+7.2f pt   %5.2f x     %6.2f\n", methods[which[k]].name,
                   mean, sd, which[0] == 0 ? 100.0 * (mean - base) : 0.0,
                   which[0] == 0 ? step_ms[k] / step_ms[0] : 1.0, secs[k]);
        }
        if (which[0] == 0)
            printf("(step cost: mean time of regopt_trainer_step relative to adamw's, %.3f ms; "
                   "one run, not a benchmark: see bench/)\n", step_ms[0]);
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
        printf("RESULT method=%s test_acc_mean=%.4f test_acc_std=%.4f seeds=%ld seconds=%.2f "
               "step_ms=%.4f", methods[which[k]].name, mean, sd, o.seeds, secs[k], step_ms[k]);
        if (which[0] == 0)
            printf(" step_cost=%.3f", step_ms[k] / step_ms[0]);
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
    if (!csv || fclose(csv) || write_svg(o.svg, &o, 1, nm, which, curves) ||
        write_svg(o.svg2, &o, 2, nm, which, curves) || write_svg(o.svg3, &o, 3, nm, which, curves)) {
        fprintf(stderr, "demo: cannot write %s, %s, %s or %s\n", o.csv, o.svg, o.svg2, o.svg3);
        rc = 1;
    } else if (!o.quiet) {
        printf("per-epoch curves: %s; charts: %s, %s, %s\n", o.csv, o.svg, o.svg2, o.svg3);
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
            colors[k] = methods[which[k]].color;
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
