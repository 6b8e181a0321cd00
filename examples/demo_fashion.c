/* demo_fashion.c — the methods on a benchmark users know, at a scale where
 * speed matters: Fashion-MNIST (60,000 training and 10,000 test images of
 * Debian's dataset-fashion-mnist), clean and with noisy labels.
 *
 * Protocols (seed 1 unless --seed; the same initial weights, batch order,
 * epochs and schedule for every method):
 *   clean  all 60,000 training images with their labels; 20 epochs, cosine
 *          schedule to 0, dropout 0.2;
 *   noisy  10,000 training images drawn at random, 40 % of their labels
 *          resampled uniformly (symmetric noise: 36 % end up wrong); 30
 *          epochs at a constant lr, dropout 0.1: enough that plain AdamW
 *          memorises the wrong labels and its test accuracy falls from its
 *          peak (a decaying lr would hide part of that).
 * Both: the 10,000 test images; a 784-256-256-10 MLP (bench/host_mlp.c:
 * ReLU and dropout after each hidden layer) on the raw pixels in [0, 1];
 * AdamW, lr 1e-3, weight decay 1e-2 (not on biases), batch 128. Methods are
 * the rows of demo_methods.h by name (--methods; "all" takes every row),
 * each with the settings --tune picked for this data on held-out training
 * images, never the test set (the table `tuned` below; README,
 * "Fashion-MNIST"). SMART perturbs the pixels, the network's "embedding".
 *
 *   ./examples/demo_fashion            both protocols, every default method
 *   ./examples/demo_fashion --tune     the validation search behind the tables
 *   ./examples/demo_fashion --help     options
 *
 * Prints a line per epoch, RESULT lines, the targets of issue 26 as
 * measured; writes a CSV of every epoch and an SVG chart of test accuracy.
 * Exits 77 (skipped) when the dataset is not installed. */
#define _POSIX_C_SOURCE 200809L /* popen, strtok_r */
#include "../bench/host_mlp.h"
#include "cli.h"
#include "curves_chart.h"
#include "demo_methods.h"
#include "fashion_data.h"

#define MAX_EPOCHS 200
#define EVAL_ROWS 500 /* rows per evaluation call */
#define CLEAN_EPOCHS 20
#define DEFAULT_METHODS "adamw,sam,asam,rdrop,smart,msam,looksam,fsam,vasso,wsam"

enum { CLEAN, NOISY, N_PROTOCOLS };

typedef struct protocol {
    const char *name;
    long train, epochs;
    double noise, dropout;
    int cosine; /* 1: cosine schedule to 0 at the end; 0: constant lr */
} protocol;

/* Picked by --tune (README, "Fashion-MNIST"): "method:key=value", applied
 * after the row's own settings, before --set. The highest final validation
 * accuracy, ties to the smaller value; clean searched on a 15,000-image draw
 * (--clean-train 15000), noisy on the protocol's own 10,000. */
static const char *const tuned[N_PROTOCOLS][MAX_METHODS] = {
    {"sam:sam.rho=0.02", "asam:sam.rho=0.3", "rdrop:rdrop.alpha=1", "smart:smart.lambda=0.3",
     "msam:sam.rho=0.3", "looksam:sam.rho=0.02", "fsam:sam.rho=0.02", "vasso:sam.rho=0.1",
     "wsam:sam.rho=0.1", NULL},
    {"sam:sam.rho=0.2", "asam:sam.rho=2", "rdrop:rdrop.alpha=10", "smart:smart.lambda=0.3",
     "msam:sam.rho=1", "looksam:sam.rho=0.05", "fsam:sam.rho=0.2", "vasso:sam.rho=0.2",
     "wsam:sam.rho=0.2", NULL},
};

/* --tune's candidates on this data, "method:a,b,c,d" (rows not named here
 * keep demo_methods.h's grid); --grid replaces them. */
static const char *const grids[N_PROTOCOLS][MAX_METHODS] = {
    {"sam:0.02,0.05,0.1,0.2", "asam:0.1,0.3,1,2", "rdrop:0.3,1,3,10", "smart:0.3,1,3,10",
     "msam:0.1,0.3,1,3", "looksam:0.02,0.05,0.1,0.2", "fsam:0.02,0.05,0.1,0.2",
     "vasso:0.02,0.05,0.1,0.2", "wsam:0.02,0.05,0.1,0.2", NULL},
    {"sam:0.05,0.1,0.2,0.5", "asam:0.3,1,2,4", "rdrop:1,3,10,30", "smart:0.3,1,3,10",
     "msam:0.3,1,3,10", "looksam:0.05,0.1,0.2,0.5", "fsam:0.05,0.1,0.2,0.5",
     "vasso:0.05,0.1,0.2,0.5", "wsam:0.05,0.1,0.2,0.5", NULL},
};

typedef struct options {
    const char *data, *csv, *svg, *only, *replot;
    const char *grid[MAX_METHODS]; /* --grid, in order */
    int ngrid;
    protocol proto[N_PROTOCOLS];
    int run[N_PROTOCOLS];
    long test, batch, hidden, threads, seed;
    double lr, wd;
    int tune, quiet;
} options;

/* ---- one training run ------------------------------------------------------ */

#define TRY(call)                                                                   \
    do {                                                                            \
        if ((call) != REGOPT_OK) {                                                  \
            fprintf(stderr, "demo_fashion: %s: %s\n", #call,                        \
                    tr ? regopt_trainer_message(tr) : regopt_last_error_message()); \
            rc = -1;                                                                \
            goto done;                                                              \
        }                                                                           \
    } while (0)

typedef struct curve {
    double acc[MAX_EPOCHS], loss[MAX_EPOCHS], secs[MAX_EPOCHS]; /* per epoch */
} curve;

static double accuracy_of(const float *out, const int32_t *y, size_t n)
{
    size_t i, j, hits = 0;
    for (i = 0; i < n; i++) {
        size_t best = 0;
        for (j = 1; j < FASHION_CLASSES; j++)
            if (out[i * FASHION_CLASSES + j] > out[i * FASHION_CLASSES + best])
                best = j;
        hits += (int32_t)best == y[i];
    }
    return n ? (double)hits / (double)n : 0.0;
}

/* Train method m under protocol p on tr_set, evaluating ev after every
 * epoch into *c. Returns 0, or -1 with a message. */
static int run(const options *o, const protocol *p, const method *m, const fashion_set *trs,
               const fashion_set *ev, curve *c)
{
    const size_t widths[4] = {FASHION_PIXELS, (size_t)o->hidden, (size_t)o->hidden,
                              FASHION_CLASSES};
    size_t B = (size_t)o->batch, steps = trs->n / B, i, r;
    host_mlp net;
    regopt_model *model = NULL;
    regopt_optimizer *opt = NULL;
    regopt_trainer *tr = NULL;
    regopt_regularizer *regs[MAX_REGS] = {NULL};
    size_t *order = malloc(trs->n * sizeof *order);
    float *xb = malloc(B * FASHION_PIXELS * sizeof *xb);
    float *out = malloc(ev->n * FASHION_CLASSES * sizeof *out);
    int32_t *yb = malloc(B * sizeof *yb);
    long e;
    int rc = 0;
    memset(&net, 0, sizeof net);
    if (!order || !xb || !out || !yb ||
        host_mlp_init(&net, widths, 3, B > EVAL_ROWS ? B : EVAL_ROWS, (float)p->dropout,
                      (uint64_t)o->seed)) {
        fprintf(stderr, "demo_fashion: out of memory\n");
        rc = -1;
        goto done;
    }
    model = regopt_model_create(NULL, NULL);
    opt = regopt_optimizer_create(REGOPT_ADAMW, NULL, NULL);
    TRY(model && opt ? REGOPT_OK : REGOPT_ERR_NO_MEMORY);
    TRY(host_mlp_register(&net, model));
    TRY(regopt_optimizer_set_double(opt, REGOPT_OPT_LR, o->lr));
    TRY(regopt_optimizer_set_double(opt, REGOPT_OPT_WEIGHT_DECAY, o->wd));
    TRY(regopt_optimizer_set_group(opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.0));
    TRY(regopt_optimizer_set_int(opt, REGOPT_OPT_SCHEDULE,
                                 p->cosine ? REGOPT_SCHEDULE_COSINE : REGOPT_SCHEDULE_CONSTANT));
    TRY(regopt_optimizer_set_int(opt, REGOPT_OPT_TOTAL_STEPS, (int64_t)(p->epochs * steps)));
    tr = regopt_trainer_create(model, opt, NULL);
    TRY(tr ? REGOPT_OK : REGOPT_ERR_NO_MEMORY);
    TRY(regopt_trainer_set_int(tr, REGOPT_TRAINER_SEED, o->seed));
    TRY(regopt_trainer_set_int(tr, REGOPT_TRAINER_THREADS, o->threads));
    if (configure(tr, m, regs)) {
        rc = -1;
        goto done;
    }
    for (e = 0; e < p->epochs; e++) {
        double t0 = host_now(), loss = 0.0, l;
        regopt_batch b;
        fashion_shuffle(order, trs->n, (uint64_t)o->seed * 31u + (uint64_t)e);
        for (i = 0; i < steps; i++) { /* full batches only: same steps everywhere */
            for (r = 0; r < B; r++) {
                memcpy(xb + r * FASHION_PIXELS, trs->x + order[i * B + r] * FASHION_PIXELS,
                       FASHION_PIXELS * sizeof *xb);
                yb[r] = trs->y[order[i * B + r]];
            }
            regopt_batch_init(&b);
            b.data = xb;
            b.rows = B;
            b.labels = yb;
            TRY(regopt_trainer_step(tr, &b, 1));
            TRY(regopt_trainer_get_double(tr, REGOPT_STAT_LOSS, &l));
            loss += l;
        }
        c->secs[e] = host_now() - t0;
        c->loss[e] = loss / (double)steps;
        for (i = 0; i < ev->n; i += EVAL_ROWS) {
            regopt_batch_init(&b);
            b.data = ev->x + i * FASHION_PIXELS;
            b.rows = ev->n - i < EVAL_ROWS ? ev->n - i : EVAL_ROWS;
            TRY(regopt_trainer_evaluate(tr, &b, NULL, out + i * FASHION_CLASSES));
        }
        c->acc[e] = accuracy_of(out, ev->y, ev->n);
        if (!o->quiet) {
            printf("[%s] %-9s epoch %3ld/%ld  train loss %.4f  test acc %.4f  %6.2f s\n",
                   p->name, m->name, e + 1, p->epochs, c->loss[e], c->acc[e], c->secs[e]);
            fflush(stdout);
        }
    }
done:
    regopt_trainer_free(tr); /* detaches the regularizers: free them after it */
    for (i = 0; i < MAX_REGS; i++)
        regopt_regularizer_free(regs[i]);
    regopt_optimizer_free(opt);
    regopt_model_free(model);
    host_mlp_free(&net);
    free(order);
    free(xb);
    free(out);
    free(yb);
    return rc;
}

/* Row k of demo_methods.h with protocol q's tuned settings, then --set's
 * (later settings win). */
static int method_for(int q, int k, method *m)
{
    size_t len = strlen(methods[k].name);
    int j;
    *m = methods[k];
    m->extra[0] = '\0';
    for (j = 0; j < MAX_METHODS && tuned[q][j]; j++) {
        const char *t = tuned[q][j], *eq = strchr(t, '=');
        char key[128];
        if (strncmp(t, m->name, len) || t[len] != ':' || !eq)
            continue;
        snprintf(key, sizeof key, "%.*s", (int)(eq - (t + len + 1)), t + len + 1);
        if (add_setting(m, key, eq + 1))
            return -1;
    }
    if (strlen(m->extra) + strlen(methods[k].extra) >= sizeof m->extra)
        return -1;
    strcat(m->extra, methods[k].extra);
    return 0;
}

static int selected(const options *o, int k)
{
    char buf[256], *tok, *save = NULL;
    if (!strcmp(o->only, "all"))
        return 1;
    snprintf(buf, sizeof buf, "%s", o->only);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (!strcmp(tok, methods[k].name))
            return 1;
    return 0;
}

/* Protocol q's training draw (seed 1 for every method: the same images and
 * labels) and, printed once, what it is. */
static int draw(const options *o, int q, const fashion_set *train, fashion_set *out)
{
    const protocol *p = &o->proto[q];
    double changed;
    if (fashion_draw(train, (size_t)p->train, p->noise, (uint64_t)o->seed, out, &changed)) {
        fprintf(stderr, "demo_fashion: out of memory\n");
        return -1;
    }
    if (!o->quiet)
        printf("[%s] %ld training images, %.0f %% of labels resampled (%.1f %% changed); "
               "%ld epochs, %s lr, dropout %.1f\n", p->name, p->train, 100.0 * p->noise,
               100.0 * changed, p->epochs, p->cosine ? "cosine" : "constant", p->dropout);
    return 0;
}

/* "method:a,b,c,d": the method's four candidates. */
static int grid_option(const char *v)
{
    char name[64], buf[256], *tok, *save = NULL;
    const char *colon = strchr(v, ':');
    method *m;
    int c = 0;
    if (!colon || colon == v || (size_t)(colon - v) >= sizeof name)
        return 1;
    snprintf(name, sizeof name, "%.*s", (int)(colon - v), v);
    snprintf(buf, sizeof buf, "%s", colon + 1);
    if (!(m = method_named(name)) || !m->tuned)
        return 1;
    for (tok = strtok_r(buf, ",", &save); tok && c < 4; tok = strtok_r(NULL, ",", &save))
        if (parse_double(tok, 0.0, 1e6, &m->grid[c++]))
            return 1;
    return c != 4 || tok;
}

/* ---- the search behind the tables -------------------------------------------- */

/* Per protocol: fit on the first four fifths of its training draw, validate
 * on the last fifth (noisy labels too for the noisy protocol, as in
 * practice); the row's four candidates; the test set is never read. */
static int tune(const options *o, const fashion_set *train)
{
    int q, k, c;
    curve *cv = malloc(sizeof *cv);
    options quiet = *o;
    quiet.quiet = 1; /* no line per epoch */
    if (!cv)
        return -1;
    for (q = 0; q < N_PROTOCOLS; q++) {
        fashion_set d, fit, val;
        size_t nval;
        if (!o->run[q])
            continue;
        for (k = 0; k < MAX_METHODS && grids[q][k]; k++)
            grid_option(grids[q][k]);
        for (k = 0; k < o->ngrid; k++)
            grid_option(o->grid[k]);
        if (draw(o, q, train, &d)) {
            free(cv);
            return -1;
        }
        nval = d.n / 5;
        fit.n = d.n - nval;
        fit.x = d.x;
        fit.y = d.y;
        val.n = nval;
        val.x = d.x + fit.n * FASHION_PIXELS;
        val.y = d.y + fit.n;
        printf("tune [%s]: fit on %zu, validate on %zu held-out training images; seed %ld\n"
               "%-10s %-14s %-8s %s\n", o->proto[q].name, fit.n, val.n, o->seed, "method",
               "key", "value", "final validation accuracy (peak)");
        for (k = 0; k < N_METHODS; k++) {
            if (!methods[k].tuned || !selected(o, k))
                continue;
            for (c = 0; c < 4; c++) {
                method m;
                char v[32];
                double peak = 0.0;
                long e;
                snprintf(v, sizeof v, "%.17g", methods[k].grid[c]);
                if (method_for(q, k, &m) || add_setting(&m, m.tuned, v) ||
                    run(&quiet, &o->proto[q], &m, &fit, &val, cv)) {
                    fashion_free(&d);
                    free(cv);
                    return -1;
                }
                for (e = 0; e < o->proto[q].epochs; e++)
                    peak = cv->acc[e] > peak ? cv->acc[e] : peak;
                printf("%-10s %-14s %-8g %.4f (%.4f)\n", m.name, m.tuned, methods[k].grid[c],
                       cv->acc[o->proto[q].epochs - 1], peak);
                fflush(stdout);
            }
        }
        fashion_free(&d);
    }
    free(cv);
    return 0;
}

/* ---- output ------------------------------------------------------------------- */

typedef struct result {
    int k;             /* row of demo_methods.h */
    double final, peak, epoch_s, seconds;
    long peak_epoch;
} result;

static void summarise(const protocol *p, const curve *c, result *r)
{
    long e;
    r->peak = 0.0;
    r->seconds = 0.0;
    for (e = 0; e < p->epochs; e++) {
        r->seconds += c->secs[e];
        if (c->acc[e] > r->peak) {
            r->peak = c->acc[e];
            r->peak_epoch = e + 1;
        }
    }
    r->final = c->acc[p->epochs - 1];
    r->epoch_s = r->seconds / (double)p->epochs;
}

/* The table of protocol q, its RESULT lines and its targets (issue 26). */
static void report(const options *o, int q, int nm, const result *r)
{
    const protocol *p = &o->proto[q];
    double base = r[0].k == 0 ? r[0].final : -1.0, best = 0.0, worst = 1.0;
    int k, any = 0;
    if (!o->quiet) {
        printf("\n[%s] %-10s  %-9s  %-9s  %-10s  %-10s  %s\n", p->name, "method", "test acc",
               "vs adamw", "peak (ep)", "s / epoch", "x adamw");
        for (k = 0; k < nm; k++)
            printf("[%s] %-10s  %.4f    %+6.2f pt  %.4f (%ld)  %8.2f    %5.2f\n", p->name,
                   methods[r[k].k].name, r[k].final,
                   base >= 0 ? 100.0 * (r[k].final - base) : 0.0, r[k].peak, r[k].peak_epoch,
                   r[k].epoch_s, base >= 0 ? r[k].epoch_s / r[0].epoch_s : 1.0);
    }
    for (k = 0; k < nm; k++) {
        printf("RESULT protocol=%s method=%s test_acc=%.4f peak_acc=%.4f peak_epoch=%ld "
               "epoch_s=%.3f seconds=%.1f train=%ld noise=%.2f epochs=%ld seed=%ld",
               p->name, methods[r[k].k].name, r[k].final, r[k].peak, r[k].peak_epoch,
               r[k].epoch_s, r[k].seconds, p->train, p->noise, p->epochs, o->seed);
        if (base >= 0)
            printf(" vs_adamw_pt=%+.2f", 100.0 * (r[k].final - base));
        printf("\n");
        best = r[k].final > best ? r[k].final : best;
        if (k > 0) {
            worst = r[k].final < worst ? r[k].final : worst;
            any = 1;
        }
    }
    /* the targets are for the full protocols only */
    if (base < 0 || !any || o->test != 10000 ||
        (q == CLEAN ? p->train != 60000 : p->train != 10000 || p->noise != 0.4))
        return;
    if (q == CLEAN)
        printf("TARGET protocol=clean best_acc=%.4f (>= 0.900: %s) worst_regularized=%.4f "
               "adamw=%.4f (>= adamw: %s)\n", best, best >= 0.9 ? "met" : "MISSED", worst,
               base, worst >= base ? "met" : "MISSED");
    else
        printf("TARGET protocol=%s worst_regularized=%.4f adamw=%.4f margin=%+.2f pt "
               "(>= +3 pt: %s)\n", p->name, worst, base, 100.0 * (worst - base),
               worst >= base + 0.03 ? "met" : "MISSED");
}

static int write_csv(const options *o, int nm, result r[][MAX_METHODS],
                     curve *cv[][MAX_METHODS])
{
    FILE *f = fopen(o->csv, "w");
    int q, k;
    long e;
    if (!f)
        return -1;
    fprintf(f, "protocol,method,epoch,test_acc,train_loss,epoch_seconds\n");
    for (q = 0; q < N_PROTOCOLS; q++)
        for (k = 0; k < nm && o->run[q]; k++)
            for (e = 0; e < o->proto[q].epochs; e++)
                fprintf(f, "%s,%s,%ld,%.4f,%.5f,%.3f\n", o->proto[q].name,
                        methods[r[q][k].k].name, e + 1, cv[q][k]->acc[e], cv[q][k]->loss[e],
                        cv[q][k]->secs[e]);
    return fclose(f);
}

static int write_chart(const options *o, size_t ntest, int nm, result r[][MAX_METHODS],
                       curve *cv[][MAX_METHODS])
{
    char title[160];
    static double acc[N_PROTOCOLS][MAX_METHODS * MAX_EPOCHS];
    curves_panel panel[N_PROTOCOLS];
    const char *names[MAX_METHODS], *colors[MAX_METHODS];
    char titles[N_PROTOCOLS][128];
    int q, k, np = 0;
    for (k = 0; k < nm; k++) {
        names[k] = methods[r[0][k].k].name;
        colors[k] = methods[r[0][k].k].color;
    }
    for (q = 0; q < N_PROTOCOLS; q++) {
        const protocol *p = &o->proto[q];
        if (!o->run[q])
            continue;
        for (k = 0; k < nm; k++)
            memcpy(acc[q] + (size_t)k * MAX_EPOCHS, cv[q][k]->acc,
                   (size_t)p->epochs * sizeof(double));
        snprintf(titles[q], sizeof titles[q], "%s: %ld images, %.0f%% noisy labels", p->name,
                 p->train, 100.0 * p->noise);
        panel[np].title = titles[q];
        panel[np].epochs = p->epochs;
        panel[np].acc = acc[q];
        panel[np++].stride = MAX_EPOCHS;
    }
    snprintf(title, sizeof title, "Fashion-MNIST: test accuracy per epoch (%zu test images), "
             "MLP 784-%ld-%ld-10, seed %ld", ntest, o->hidden, o->hidden, o->seed);
    return write_curves_svg(o->svg, title, np, panel, nm, names, colors);
}

/* --replot: the curves of a CSV that write_csv wrote, into cv and r (the
 * methods in their order of appearance, the same in both protocols).
 * Returns the number of methods, or -1. */
static int read_csv(options *o, result r[][MAX_METHODS], curve *cv[][MAX_METHODS],
                    const char *path)
{
    FILE *f = fopen(path, "r");
    char line[256], prot[16], name[64];
    int nm = 0, n[N_PROTOCOLS] = {0}, q, k;
    long e;
    double acc, loss, secs;
    if (!f || !fgets(line, sizeof line, f)) {
        if (f)
            fclose(f);
        return -1;
    }
    o->run[CLEAN] = o->run[NOISY] = 0;
    while (fgets(line, sizeof line, f)) {
        method *m;
        if (sscanf(line, "%15[^,],%63[^,],%ld,%lf,%lf,%lf", prot, name, &e, &acc, &loss,
                   &secs) != 6 || !(m = method_named(name)) || e < 1 || e > MAX_EPOCHS)
            break;
        q = !strcmp(prot, "noisy") ? NOISY : CLEAN;
        for (k = 0; k < n[q] && r[q][k].k != (int)(m - methods); k++)
            ;
        if (k == MAX_METHODS || (!cv[q][k] && !(cv[q][k] = calloc(1, sizeof(curve)))))
            break;
        r[q][k].k = (int)(m - methods);
        n[q] = k + 1 > n[q] ? k + 1 : n[q];
        nm = n[q] > nm ? n[q] : nm;
        cv[q][k]->acc[e - 1] = acc;
        o->run[q] = 1;
        o->proto[q].epochs = e > o->proto[q].epochs || e == 1 ? e : o->proto[q].epochs;
    }
    k = !feof(f);
    fclose(f);
    return k ? -1 : nm;
}

/* ---- main ------------------------------------------------------------------------ */

static void usage(void)
{
    printf("usage: demo_fashion [options]\n"
           "  --data DIR          the idx files (default " FASHION_DIR ")\n"
           "  --protocols LIST    clean,noisy (default both)\n"
           "  --clean-train N     training images of the clean protocol (default 60000)\n"
           "  --clean-epochs N    its epochs (default %d)\n"
           "  --noisy-train N     training images of the noisy protocol (default 10000)\n"
           "  --noisy-epochs N    its epochs (default 30)\n"
           "  --noise X           its share of labels resampled at random (default 0.4)\n"
           "  --test N            the first N test images (default 10000)\n"
           "  --batch N           rows per step (default 128)\n"
           "  --hidden N          width of both hidden layers (default 256)\n"
           "  --dropout X         dropout after each hidden layer, both protocols\n"
           "                      (default: clean 0.2, noisy 0.1)\n"
           "  --lr X, --wd X      AdamW's learning rate and weight decay (default 1e-3, 1e-2)\n"
           "  --schedule S        cosine (to 0 at the end) or constant, both protocols\n"
           "                      (default: clean cosine, noisy constant)\n"
           "  --threads N         trainer.threads (default 2; BLAS threads: OPENBLAS_NUM_THREADS)\n"
           "  --seed N            draw, initial weights, dropout and batch order (default 1)\n"
           "  --methods LIST      rows of demo_methods.h, or all (default\n"
           "                      " DEFAULT_METHODS ")\n"
           "  --set METHOD:KEY=VALUE  add a setting to a method (a library key name,\n"
           "                      KEY@GROUP=VALUE for a group key); repeatable\n"
           "  --grid METHOD:A,B,C,D   --tune's four candidates for the method's key\n"
           "  --csv PATH          every epoch of every run (default demo_fashion.csv)\n"
           "  --svg PATH          chart of test accuracy per epoch (default demo_fashion.svg)\n"
           "  --tune              run the validation search behind the defaults instead\n"
           "  --replot CSV        only redraw --svg from a CSV of an earlier run (same\n"
           "                      --hidden, --seed, --test, protocol sizes for the titles)\n"
           "  --quiet             no line per epoch, no tables: RESULT and TARGET lines\n",
           CLEAN_EPOCHS);
}

static int set_option(const char *v)
{
    char name[64], key[128];
    const char *colon = strchr(v, ':'), *eq = colon ? strchr(colon, '=') : NULL;
    method *m;
    if (!colon || !eq || colon == v || (size_t)(colon - v) >= sizeof name ||
        eq == colon + 1 || (size_t)(eq - colon - 1) >= sizeof key)
        return 1;
    snprintf(name, sizeof name, "%.*s", (int)(colon - v), v);
    snprintf(key, sizeof key, "%.*s", (int)(eq - colon - 1), colon + 1);
    if (!(m = method_named(name))) {
        fprintf(stderr, "demo_fashion: unknown method '%s'\n", name);
        return 1;
    }
    return add_setting(m, key, eq + 1) ? 1 : 0;
}

static int parse(int argc, char **argv, options *o)
{
    int i, k;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help")) {
            usage();
            exit(0);
        } else if (!strcmp(a, "--tune") || !strcmp(a, "--quiet")) {
            *(a[2] == 't' ? &o->tune : &o->quiet) = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "demo_fashion: %s needs a value (see --help)\n", a);
            return 2;
        }
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--csv")) o->csv = v;
        else if (!strcmp(a, "--svg")) o->svg = v;
        else if (!strcmp(a, "--replot")) o->replot = v;
        else if (!strcmp(a, "--methods")) o->only = v;
        else if (!strcmp(a, "--protocols")) {
            o->run[CLEAN] = strstr(v, "clean") != NULL;
            o->run[NOISY] = strstr(v, "noisy") != NULL;
            bad = !o->run[CLEAN] && !o->run[NOISY];
        }
        else if (!strcmp(a, "--clean-train")) bad = parse_long(v, 100, 60000, &o->proto[CLEAN].train);
        else if (!strcmp(a, "--clean-epochs")) bad = parse_long(v, 1, MAX_EPOCHS, &o->proto[CLEAN].epochs);
        else if (!strcmp(a, "--noisy-train")) bad = parse_long(v, 100, 60000, &o->proto[NOISY].train);
        else if (!strcmp(a, "--noisy-epochs")) bad = parse_long(v, 1, MAX_EPOCHS, &o->proto[NOISY].epochs);
        else if (!strcmp(a, "--noise")) bad = parse_double(v, 0.0, 0.9, &o->proto[NOISY].noise);
        else if (!strcmp(a, "--test")) bad = parse_long(v, 10, 10000, &o->test);
        else if (!strcmp(a, "--batch")) bad = parse_long(v, 8, 1024, &o->batch);
        else if (!strcmp(a, "--hidden")) bad = parse_long(v, 8, 4096, &o->hidden);
        else if (!strcmp(a, "--dropout")) {
            bad = parse_double(v, 0.0, 0.9, &o->proto[CLEAN].dropout);
            o->proto[NOISY].dropout = o->proto[CLEAN].dropout;
        }
        else if (!strcmp(a, "--schedule")) {
            o->proto[CLEAN].cosine = o->proto[NOISY].cosine = !strcmp(v, "cosine");
            bad = !o->proto[CLEAN].cosine && strcmp(v, "constant");
        }
        else if (!strcmp(a, "--lr")) bad = parse_double(v, 1e-6, 1.0, &o->lr);
        else if (!strcmp(a, "--wd")) bad = parse_double(v, 0.0, 10.0, &o->wd);
        else if (!strcmp(a, "--threads")) bad = parse_long(v, 1, 256, &o->threads);
        else if (!strcmp(a, "--seed")) bad = parse_long(v, 0, 1L << 30, &o->seed);
        else if (!strcmp(a, "--set")) bad = set_option(v);
        else if (!strcmp(a, "--grid")) {
            bad = o->ngrid == MAX_METHODS || grid_option(v);
            if (!bad)
                o->grid[o->ngrid++] = v;
        }
        else {
            fprintf(stderr, "demo_fashion: unknown option %s (see --help)\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "demo_fashion: bad value for %s: '%s' (see --help)\n", a, v);
            return 2;
        }
        i++;
    }
    for (k = 0; k < N_PROTOCOLS; k++)
        if (o->proto[k].train < 2 * o->batch) {
            fprintf(stderr, "demo_fashion: --batch %ld is too large for %ld %s images\n",
                    o->batch, o->proto[k].train, o->proto[k].name);
            return 2;
        }
    if (strcmp(o->only, "all")) { /* every listed name must exist */
        char buf[256], *tok, *save = NULL;
        snprintf(buf, sizeof buf, "%s", o->only);
        for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            if (!method_named(tok)) {
                fprintf(stderr, "demo_fashion: unknown method '%s' (see --help)\n", tok);
                return 2;
            }
    }
    return 0;
}

int main(int argc, char **argv)
{
    options o = {FASHION_DIR, "demo_fashion.csv", "demo_fashion.svg", DEFAULT_METHODS, NULL,
                 {NULL}, 0,
                 {{"clean", 60000, CLEAN_EPOCHS, 0.0, 0.2, 1}, {"noisy", 10000, 30, 0.4, 0.1, 0}},
                 {1, 1}, 10000, 128, 256, 2, 1, 1e-3, 1e-2, 0, 0};
    static result res[N_PROTOCOLS][MAX_METHODS];
    static curve *cv[N_PROTOCOLS][MAX_METHODS];
    fashion_set train, test;
    const char *blas = getenv("OPENBLAS_NUM_THREADS");
    double t_all = host_now();
    int rc = parse(argc, argv, &o), q, k, nm = 0;
    if (rc)
        return rc;
    if ((rc = fashion_load(o.data, "train", &train)) != 0 ||
        (rc = fashion_load(o.data, "t10k", &test)) != 0) {
        if (rc > 0) {
            printf("demo_fashion: SKIPPED: no Fashion-MNIST idx files in %s (install the "
                   "Debian package dataset-fashion-mnist: sh scripts/install-deps.sh)\n",
                   o.data);
            fashion_free(&train);
            return 77;
        }
        fashion_free(&train);
        return 1;
    }
    if ((size_t)o.test < test.n)
        test.n = (size_t)o.test;
    if (o.tune) {
        rc = tune(&o, &train) ? 1 : 0;
        goto out;
    }
    if (o.replot) { /* the chart of an earlier run's CSV, nothing trained */
        if ((nm = read_csv(&o, res, cv, o.replot)) < 1 ||
            (!o.run[CLEAN] && (memcpy(res[CLEAN], res[NOISY], sizeof res[CLEAN]), 0)) ||
            write_chart(&o, test.n, nm, res, cv)) {
            fprintf(stderr, "demo_fashion: cannot replot %s into %s\n", o.replot, o.svg);
            rc = 1;
        }
        goto done;
    }
    if (!o.quiet)
        printf("Fashion-MNIST: MLP 784-%ld-%ld-10; AdamW lr %g wd %g; "
               "batch %ld; seed %ld; %zu test images; trainer.threads %ld, "
               "OPENBLAS_NUM_THREADS %s\n", o.hidden, o.hidden, o.lr, o.wd,
               o.batch, o.seed, test.n, o.threads, blas ? blas : "unset (all cores)");
    for (q = 0; q < N_PROTOCOLS && !rc; q++) {
        fashion_set d;
        if (!o.run[q])
            continue;
        if (draw(&o, q, &train, &d)) {
            rc = 1;
            break;
        }
        for (k = 0, nm = 0; k < N_METHODS && !rc; k++) {
            method m;
            if (!selected(&o, k))
                continue;
            if (!(cv[q][nm] = calloc(1, sizeof(curve))) || method_for(q, k, &m) ||
                run(&o, &o.proto[q], &m, &d, &test, cv[q][nm])) {
                rc = 1;
                break;
            }
            res[q][nm].k = k;
            summarise(&o.proto[q], cv[q][nm], &res[q][nm]);
            nm++;
        }
        fashion_free(&d);
        if (!rc)
            report(&o, q, nm, res[q]);
    }
    if (!rc) {
        if (!o.run[CLEAN]) /* the chart's names come from the first row */
            memcpy(res[CLEAN], res[NOISY], sizeof res[CLEAN]);
        if (write_csv(&o, nm, res, cv) || write_chart(&o, test.n, nm, res, cv)) {
            fprintf(stderr, "demo_fashion: cannot write %s or %s\n", o.csv, o.svg);
            rc = 1;
        } else if (!o.quiet) {
            printf("\nper-epoch curves: %s; chart: %s\n", o.csv, o.svg);
        }
        printf("wall time %.1f s\n", host_now() - t_all);
    }
done:
    for (q = 0; q < N_PROTOCOLS; q++)
        for (k = 0; k < MAX_METHODS; k++)
            free(cv[q][k]);
out:
    fashion_free(&train);
    fashion_free(&test);
    return rc;
}
