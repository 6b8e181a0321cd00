/* fashion_run.h — one training run of examples/demo_fashion.c: a method of
 * demo_methods.h on the benchmark's MLP (bench/host_mlp.c), AdamW, test (or
 * validation) accuracy after every epoch.
 *
 * Header-only (static functions), for one program. */
#ifndef FASHION_RUN_H
#define FASHION_RUN_H

#include "../bench/host_mlp.h"
#include "fashion_protocol.h"

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

#endif
