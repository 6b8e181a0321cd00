/* fashion_protocol.h — what examples/demo_fashion.c runs: its two protocols
 * (clean and noisy labels), the options that size them, which rows of
 * demo_methods.h take part, and each protocol's training draw.
 *
 * Header-only (static functions), for one program. */
#ifndef FASHION_PROTOCOL_H
#define FASHION_PROTOCOL_H

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

#endif
