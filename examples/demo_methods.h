/* demo_methods.h — the demo's methods as data: each one is a list of
 * settings "key=value" (or "key@group=value" for a group key) by the
 * library's key names, applied to regularizers made on demand, one per kind
 * the keys name (the prefix before the dot: "sam.rho" -> a "sam"
 * regularizer). A new method of the library is a new row here, nothing else:
 * the kinds and keys are found through regopt_key_from_name and
 * regopt_regularizer_kind_info, so the demo never names a method in code.
 *
 * Each row also names the key --tune searches and its four candidates. */
#ifndef DEMO_METHODS_H
#define DEMO_METHODS_H

#include <regopt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_METHODS 24
#define MAX_REGS 6
#define SETTINGS_LEN 512

typedef struct method {
    const char *name;
    int chart;            /* 1: the main chart; 2: the SAM variants'; 3: weight
                             averaging, MESA and adversarial training */
    const char *color;
    const char *settings; /* "key=value ..." chosen by --tune (see the README) */
    const char *tuned;    /* the key --tune searches, NULL: nothing to tune */
    double grid[4];       /* its candidates */
    char extra[SETTINGS_LEN]; /* settings appended by --set and --tune */
} method;

/* Chosen by --tune: final validation accuracy on a held-out quarter of the
 * (noisy) training examples, 3 seeds, the test set never seen. The tables
 * it printed are in the README. smart+sam keeps lambda 1 and mu 1 and tunes
 * rho; the SAM variants keep their papers' other defaults (LookSAM with
 * k = 5) and tune rho. Pixels are in [0, 1]: SMART's radius is a few
 * hundredths. */
#define SMART_INPUT "smart.epsilon=0.1 smart.eta=0.05 smart.sigma=0.01"
#define SAM_GRID {0.1, 0.3, 1.0, 2.0}

static method methods[] = {
    {"adamw", 1, "#444444", "", NULL, {0}, ""},
    {"sam", 1, "#1f77b4", "sam.rho=1", "sam.rho", SAM_GRID, ""},
    {"asam", 1, "#2ca02c", "sam.rho=2 sam.adaptive=1 sam.group_adaptive@1=0", "sam.rho",
     {0.5, 1.0, 2.0, 4.0}, ""},
    {"rdrop", 1, "#d62728", "rdrop.alpha=30", "rdrop.alpha", {1.0, 3.0, 10.0, 30.0}, ""},
    {"smart", 1, "#9467bd", "smart.lambda=10 " SMART_INPUT " bregman.mu=1", "smart.lambda",
     {0.3, 1.0, 3.0, 10.0}, ""},
    {"smart+sam", 1, "#ff7f0e", "sam.rho=0.3 smart.lambda=1 " SMART_INPUT " bregman.mu=1",
     "sam.rho", SAM_GRID, ""},
    {"msam", 2, "#17becf", "sam.rho=3 sam.momentum=1", "sam.rho", {0.3, 1.0, 3.0, 10.0}, ""},
    {"looksam", 2, "#bcbd22", "sam.rho=0.3 sam.looksam=1 sam.every=5", "sam.rho", SAM_GRID, ""},
    {"fsam", 2, "#8c564b", "sam.rho=1 sam.direction=1", "sam.rho", SAM_GRID, ""},
    {"vasso", 2, "#e377c2", "sam.rho=1 sam.direction=2", "sam.rho", SAM_GRID, ""},
    {"wsam", 2, "#7f7f7f", "sam.rho=2 sam.wsam=1", "sam.rho", SAM_GRID, ""},
    /* evaluated on the average (swapped in); SWA from the end of epoch 90
       of 120 (18 steps an epoch), not tuned: the start is in steps */
    {"ema", 3, "#393b79", "average.mode=0 average.decay=0.995 average.warmup=1",
     "average.decay", {0.99, 0.995, 0.998, 0.999}, ""},
    {"swa", 3, "#637939", "average.mode=1 average.start=1619 average.every=18", NULL, {0},
     ""},
    /* MESA's preset with a teacher decay for a run of 2,160 steps (the
       paper's 0.9998 suits 10^5) and its start after 3 epochs */
    {"mesa", 3, "#8c6d31", "bregman.mu=1 bregman.divergence=1 bregman.tau=5 "
     "bregman.beta=0.995 bregman.beta_late=0.995 bregman.start_step=54", "bregman.mu",
     {0.1, 0.3, 1.0, 3.0}, ""},
    /* adversarial training on the pixels (L2 per example) */
    {"fgm", 3, "#843c39", "adv.method=0 adv.epsilon=1", "adv.epsilon", {0.1, 0.3, 1.0, 3.0},
     ""},
    {"pgd", 3, "#7b4173", "adv.method=1 adv.epsilon=1 adv.steps=3", "adv.epsilon",
     {0.1, 0.3, 1.0, 3.0}, ""},
    {"freelb", 3, "#3182bd", "adv.method=2 adv.steps=3 adv.init_mag=0.1 adv.step=0.3",
     "adv.step", {0.03, 0.1, 0.3, 1.0}, ""},
    {"vat", 3, "#e6550d", "adv.method=3 adv.epsilon=3", "adv.epsilon", {0.3, 1.0, 3.0, 10.0},
     ""},
};

#define N_METHODS ((int)(sizeof methods / sizeof methods[0]))

/* The regularizer of the kind named by key `name`'s prefix, made on first
 * use into regs[]; NULL with a message when the prefix names no kind. */
static regopt_regularizer *reg_for(const char *method, const char *name,
                                   regopt_regularizer **regs, int *n)
{
    size_t len = strcspn(name, "."), i;
    regopt_regularizer_kind kind;
    const char *kname;
    regopt_status st = REGOPT_OK;
    int k;
    for (i = 0; regopt_regularizer_kind_info(i, &kind, &kname, NULL) == REGOPT_OK; i++)
        if (strlen(kname) == len && !strncmp(kname, name, len))
            break;
    if (regopt_regularizer_kind_info(i, NULL, NULL, NULL) != REGOPT_OK) {
        fprintf(stderr, "demo: %s: '%s' is not a regularizer's key\n", method, name);
        return NULL;
    }
    for (k = 0; k < *n; k++)
        if (regopt_regularizer_get_kind(regs[k]) == kind)
            return regs[k];
    if (*n == MAX_REGS || !(regs[*n] = regopt_regularizer_create(kind, NULL, &st))) {
        fprintf(stderr, "demo: %s: cannot make a %s regularizer: %s\n", method, kname,
                regopt_last_error_message());
        return NULL;
    }
    return regs[(*n)++];
}

/* One "key=value" or "key@group=value" token. */
static int apply_one(const char *method, const char *tok, regopt_regularizer **regs, int *n)
{
    char name[128], *end;
    const char *eq = strchr(tok, '='), *at = strchr(tok, '@');
    size_t len = (size_t)((at && at < eq ? at : eq) - tok);
    long group = 0;
    double v;
    regopt_key key;
    regopt_regularizer *r;
    regopt_status st;
    if (!eq || len == 0 || len >= sizeof name) {
        fprintf(stderr, "demo: %s: bad setting '%s' (key=value or key@group=value)\n", method,
                tok);
        return -1;
    }
    memcpy(name, tok, len);
    name[len] = '\0';
    v = strtod(eq + 1, &end);
    if (at && at < eq)
        group = strtol(at + 1, NULL, 10);
    if (*end != '\0' || end == eq + 1 || regopt_key_from_name(name, &key) != REGOPT_OK) {
        fprintf(stderr, "demo: %s: bad setting '%s' (unknown key or not a number)\n", method,
                tok);
        return -1;
    }
    if (!(r = reg_for(method, name, regs, n)))
        return -1;
    st = at && at < eq ? regopt_regularizer_set_group(r, (int32_t)group, key, v)
                       : regopt_regularizer_set_double(r, key, v);
    if (st != REGOPT_OK) {
        fprintf(stderr, "demo: %s: %s: %s\n", method, tok, regopt_regularizer_message(r));
        return -1;
    }
    return 0;
}

static int apply_list(const char *method, const char *list, regopt_regularizer **regs, int *n)
{
    char buf[SETTINGS_LEN], *tok, *save = NULL;
    snprintf(buf, sizeof buf, "%s", list);
    for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
        if (apply_one(method, tok, regs, n))
            return -1;
    return 0;
}

/* The method's regularizers: made from its settings and then its extra
 * settings (later values win), attached in the order their kinds first
 * appear. The caller frees regs[0 .. MAX_REGS) after the trainer. Returns
 * 0, or -1 with a message. */
static int configure(regopt_trainer *tr, const method *m, regopt_regularizer **regs)
{
    int n = 0, k;
    if (apply_list(m->name, m->settings, regs, &n) || apply_list(m->name, m->extra, regs, &n))
        return -1;
    for (k = 0; k < n; k++)
        if (regopt_trainer_attach(tr, regs[k]) != REGOPT_OK) {
            fprintf(stderr, "demo: %s: %s\n", m->name, regopt_trainer_message(tr));
            return -1;
        }
    return 0;
}

/* Append "key=value" to a method's extra settings (--set, --tune). */
static int add_setting(method *m, const char *key, const char *value)
{
    size_t used = strlen(m->extra);
    int w = snprintf(m->extra + used, sizeof m->extra - used, " %s=%s", key, value);
    return w < 0 || (size_t)w >= sizeof m->extra - used ? -1 : 0;
}

static method *method_named(const char *name)
{
    int k;
    for (k = 0; k < N_METHODS; k++)
        if (!strcmp(methods[k].name, name))
            return &methods[k];
    return NULL;
}

#endif
