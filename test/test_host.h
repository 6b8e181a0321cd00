/* test_host.h — a linear host network for the tests: z = x W + b with W of
 * D x K, written in plain loops so expected values can be derived by hand.
 * It records every call and can be told to fail or to produce non-finite
 * numbers at a chosen call. */
#ifndef REGOPT_TEST_HOST_H
#define REGOPT_TEST_HOST_H

#include <math.h>
#include <regopt.h>
#include <string.h>

#define TH_D 3
#define TH_K 4
#define TH_MAX_CALLS 64

typedef struct th_batch {
    const float *x; /* rows x TH_D */
} th_batch;

typedef struct th_call {
    int backward;
    int32_t slot;
    uint32_t flags;
    uint64_t seed;
    size_t rows, micro_batch;
    float grad_at_entry; /* first gradient element when backward was entered */
    double task_scale;   /* regopt_pass.task_scale */
} th_call;

typedef struct th_host {
    float w[TH_D * TH_K], b[TH_K];
    float gw[TH_D * TH_K], gb[TH_K];
    const float *x;     /* input of the last forward */
    int fail_forward;   /* 1-based forward call number that returns 7, 0 = never */
    int fail_backward;  /* 1-based backward call number that returns 9 */
    int nan_output;     /* forward call number whose first output is NaN */
    int inf_grad;       /* backward call number that writes +inf into gb[0] */
    int huge_grad;      /* backward call number that writes 3e38 (finite) there */
    int forwards, backwards;
    int ncalls;
    th_call calls[TH_MAX_CALLS];
    int freed;          /* free_user calls */
} th_host;

static inline int th_forward(const regopt_pass *p, void *user)
{
    th_host *h = user;
    const th_batch *b = p->batch;
    size_t i, j, k;
    h->forwards++;
    if (h->ncalls < TH_MAX_CALLS) {
        th_call *c = &h->calls[h->ncalls++];
        memset(c, 0, sizeof *c);
        c->slot = p->slot;
        c->flags = p->flags;
        c->seed = p->seed;
        c->rows = p->rows;
        c->micro_batch = p->micro_batch;
        c->task_scale = p->task_scale;
    }
    if (h->forwards == h->fail_forward)
        return 7;
    h->x = b->x;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < TH_K; k++) {
            float z = h->b[k];
            for (j = 0; j < TH_D; j++)
                z += b->x[i * TH_D + j] * h->w[j * TH_K + k];
            p->outputs[i * TH_K + k] = z;
        }
    if (h->forwards == h->nan_output)
        p->outputs[0] = NAN;
    return 0;
}

static inline int th_backward(const regopt_pass *p, void *user)
{
    th_host *h = user;
    size_t i, j, k;
    h->backwards++;
    if (h->ncalls < TH_MAX_CALLS) {
        th_call *c = &h->calls[h->ncalls++];
        memset(c, 0, sizeof *c);
        c->backward = 1;
        c->slot = p->slot;
        c->flags = p->flags;
        c->rows = p->rows;
        c->micro_batch = p->micro_batch;
        c->grad_at_entry = h->gw[0];
        c->task_scale = p->task_scale;
    }
    if (h->backwards == h->fail_backward)
        return 9;
    for (i = 0; i < p->rows; i++)
        for (k = 0; k < TH_K; k++) {
            float d = p->d_outputs[i * TH_K + k];
            h->gb[k] += d;
            for (j = 0; j < TH_D; j++)
                h->gw[j * TH_K + k] += h->x[i * TH_D + j] * d;
        }
    if (h->backwards == h->inf_grad)
        h->gb[0] = INFINITY;
    if (h->backwards == h->huge_grad)
        h->gb[0] = 3e38f;
    return 0;
}

static inline void th_free_user(void *user) { ((th_host *)user)->freed++; }

/* Deterministic, non-trivial starting weights. */
static inline void th_init(th_host *h)
{
    size_t i;
    memset(h, 0, sizeof *h);
    for (i = 0; i < TH_D * TH_K; i++)
        h->w[i] = 0.1f * (float)((int)(i * 7 % 11) - 5);
    for (i = 0; i < TH_K; i++)
        h->b[i] = 0.05f * (float)i;
}

/* A model over the host: W in group 0, b in group 1. */
static inline regopt_model *th_model(th_host *h)
{
    regopt_model *m = regopt_model_create(NULL, NULL);
    if (!m)
        return NULL;
    if (regopt_model_add_param(m, "W", h->w, h->gw, TH_D * TH_K, REGOPT_DTYPE_FLOAT32, 0) ||
        regopt_model_add_param(m, "b", h->b, h->gb, TH_K, REGOPT_DTYPE_FLOAT32, 1) ||
        regopt_model_set_output_width(m, TH_K) ||
        regopt_model_set_callbacks(m, th_forward, th_backward, h, th_free_user)) {
        regopt_model_free(m);
        return NULL;
    }
    return m;
}

/* n rows of inputs and labels from a fixed formula. */
static inline void th_data(float *x, int32_t *y, size_t n, size_t first)
{
    size_t i, j;
    for (i = 0; i < n; i++) {
        for (j = 0; j < TH_D; j++)
            x[i * TH_D + j] = (float)sin(1.7 * (double)(first + i) + 0.9 * (double)j);
        if (y)
            y[i] = (int32_t)((first + i) * 3 % TH_K);
    }
}

static inline void th_batch_of(regopt_batch *b, th_batch *hb, const float *x, const int32_t *y,
                        size_t n)
{
    hb->x = x;
    regopt_batch_init(b);
    b->data = hb;
    b->rows = n;
    b->labels = y;
}

#endif
