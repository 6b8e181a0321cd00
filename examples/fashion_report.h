/* fashion_report.h — what examples/demo_fashion.c prints and writes: per
 * protocol a table, RESULT lines and the targets of issue 26; a CSV of every
 * epoch and an SVG chart of test accuracy (also redrawn from a CSV).
 *
 * Header-only (static functions), for one program. */
#ifndef FASHION_REPORT_H
#define FASHION_REPORT_H

#include "curves_chart.h"
#include "fashion_run.h"

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

#endif
