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
 * images, never the test set (the table `tuned` in fashion_tune.h; README,
 * "Fashion-MNIST"). SMART perturbs the pixels, the network's "embedding".
 *
 *   ./examples/demo_fashion            both protocols, every default method
 *   ./examples/demo_fashion --tune     the validation search behind the tables
 *   ./examples/demo_fashion --tune-second   its second step (fashion_tune.h)
 *   ./examples/demo_fashion --help     options
 *
 * Prints a line per epoch, RESULT lines, the targets of issue 26 as
 * measured; writes a CSV of every epoch and an SVG chart of test accuracy.
 * Exits 77 (skipped) when the dataset is not installed. */
#define _POSIX_C_SOURCE 200809L /* popen, strtok_r */
#include "fashion_report.h"
#include "fashion_tune.h"

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
           "  --grid METHOD:[KEY=]A,B,C,D  --tune's four candidates for the method's key\n"
           "                      (or for KEY instead)\n"
           "  --csv PATH          every epoch of every run (default demo_fashion.csv)\n"
           "  --svg PATH          chart of test accuracy per epoch (default demo_fashion.svg)\n"
           "  --tune              run the validation search behind the defaults instead\n"
           "  --tune-second       the same for the second keys of some methods\n"
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
        } else if (!strcmp(a, "--tune-second")) {
            o->tune = 2;
            continue;
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
