/* digits_mlp.h — a host network for the examples: the UCI handwritten
 * digits data set and a one-hidden-layer perceptron on CBLAS, with ReLU and
 * inverted dropout driven by the library's pass seed. It is what a real host
 * does: it owns its parameters, gradients, activations and data, and talks
 * to libregopt only through the two callbacks.
 *
 * Header-only (static functions) so that every example can include it. */
#ifndef DIGITS_MLP_H
#define DIGITS_MLP_H

#include <cblas.h>
#include <regopt.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIGITS_FEATURES 64
#define DIGITS_CLASSES 10
#define MLP_SLOTS 4 /* activation caches the host keeps */

/* ---- data -------------------------------------------------------------- */

typedef struct digits {
    size_t n;
    float *x;       /* n x 64, pixel values / 16 */
    int32_t *y;     /* n labels */
} digits;

/* Read data/digits.csv: 64 integers 0..16 then the label, per line. */
static int digits_load(const char *path, digits *d)
{
    FILE *f = fopen(path, "r");
    size_t cap = 2048, n = 0;
    int v, j;
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    d->x = malloc(cap * DIGITS_FEATURES * sizeof *d->x);
    d->y = malloc(cap * sizeof *d->y);
    if (!d->x || !d->y) {
        fclose(f);
        return -1;
    }
    for (;;) {
        for (j = 0; j <= DIGITS_FEATURES; j++) {
            if (fscanf(f, j ? ",%d" : "%d", &v) != 1)
                break;
            if (n >= cap || v < 0 || v > (j < DIGITS_FEATURES ? 16 : 9))
                goto bad;
            if (j < DIGITS_FEATURES)
                d->x[n * DIGITS_FEATURES + j] = (float)v / 16.0f;
            else
                d->y[n] = v;
        }
        if (j == 0)
            break;
        if (j <= DIGITS_FEATURES)
            goto bad;
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "%s: no rows\n", path);
        return -1;
    }
    d->n = n;
    return 0;
bad:
    fprintf(stderr, "%s: malformed line %zu\n", path, n + 1);
    fclose(f);
    return -1;
}

static void digits_free(digits *d)
{
    free(d->x);
    free(d->y);
    d->x = NULL;
    d->y = NULL;
}

/* A deterministic permutation of 0..n-1 from the library's generator. */
static void shuffle_indices(size_t *idx, size_t n, uint64_t seed)
{
    size_t i;
    float u;
    for (i = 0; i < n; i++)
        idx[i] = i;
    for (i = n; i > 1; i--) {
        size_t j, t;
        if (regopt_random_uniform(seed, i, &u, 1) != REGOPT_OK)
            return;
        j = (size_t)(u * (float)i);
        if (j >= i)
            j = i - 1;
        t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

/* ---- the network ------------------------------------------------------- */

typedef struct mlp_batch { /* what the host passes as regopt_batch.data */
    const float *x;        /* rows x 64 */
} mlp_batch;

typedef struct mlp {
    size_t in, hid, out, max_rows;
    float drop;                       /* dropout probability on the hidden layer */
    float *w1, *b1, *w2, *b2;         /* parameters: w1 in x hid, w2 hid x out */
    float *g1, *gb1, *g2, *gb2;       /* their gradients */
    float *h[MLP_SLOTS];              /* hidden activations after ReLU and dropout */
    float *keep[MLP_SLOTS];           /* dropout scale per unit (0 or 1/(1-p)) */
    const float *x[MLP_SLOTS];        /* input of the slot's forward */
    float *dh;                        /* scratch: d(hidden) */
} mlp;

static float *mlp_alloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* He-initialised weights from the library's normal generator. */
static int mlp_init(mlp *m, size_t hidden, size_t max_rows, float drop, uint64_t seed)
{
    size_t i, s;
    float scale;
    memset(m, 0, sizeof *m);
    m->in = DIGITS_FEATURES;
    m->hid = hidden;
    m->out = DIGITS_CLASSES;
    m->max_rows = max_rows;
    m->drop = drop;
    m->w1 = mlp_alloc(m->in * m->hid);
    m->b1 = mlp_alloc(m->hid);
    m->w2 = mlp_alloc(m->hid * m->out);
    m->b2 = mlp_alloc(m->out);
    m->g1 = mlp_alloc(m->in * m->hid);
    m->gb1 = mlp_alloc(m->hid);
    m->g2 = mlp_alloc(m->hid * m->out);
    m->gb2 = mlp_alloc(m->out);
    m->dh = mlp_alloc(max_rows * m->hid);
    if (!m->w1 || !m->b1 || !m->w2 || !m->b2 || !m->g1 || !m->gb1 || !m->g2 ||
        !m->gb2 || !m->dh)
        return -1;
    for (s = 0; s < MLP_SLOTS; s++) {
        m->h[s] = mlp_alloc(max_rows * m->hid);
        m->keep[s] = mlp_alloc(max_rows * m->hid);
        if (!m->h[s] || !m->keep[s])
            return -1;
    }
    if (regopt_random_normal(seed, 0, m->w1, m->in * m->hid) != REGOPT_OK ||
        regopt_random_normal(seed, 1u << 30, m->w2, m->hid * m->out) != REGOPT_OK)
        return -1;
    scale = sqrtf(2.0f / (float)m->in);
    for (i = 0; i < m->in * m->hid; i++)
        m->w1[i] *= scale;
    scale = sqrtf(2.0f / (float)m->hid);
    for (i = 0; i < m->hid * m->out; i++)
        m->w2[i] *= scale;
    return 0;
}

static void mlp_free(mlp *m)
{
    size_t s;
    free(m->w1); free(m->b1); free(m->w2); free(m->b2);
    free(m->g1); free(m->gb1); free(m->g2); free(m->gb2);
    free(m->dh);
    for (s = 0; s < MLP_SLOTS; s++) {
        free(m->h[s]);
        free(m->keep[s]);
    }
}

/* outputs = dropout(relu(x w1 + b1)) w2 + b2 */
static int mlp_forward(const regopt_pass *p, void *user)
{
    mlp *m = user;
    const mlp_batch *b = p->batch;
    size_t n = p->rows, H = m->hid, i, j;
    int s = p->slot;
    float *h = m->h[s], *keep = m->keep[s];
    if (s < 0 || s >= MLP_SLOTS || n > m->max_rows || p->output_width != m->out)
        return 1;
    m->x[s] = b->x;
    for (i = 0; i < n; i++)
        memcpy(h + i * H, m->b1, H * sizeof *h);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)H, (int)m->in,
                1.0f, b->x, (int)m->in, m->w1, (int)H, 1.0f, h, (int)H);
    if ((p->flags & REGOPT_PASS_TRAIN) && m->drop > 0.0f) {
        /* inverted dropout: the mask is element k of the pass's stream */
        float inv = 1.0f / (1.0f - m->drop);
        if (regopt_random_uniform(p->seed, 0, keep, n * H) != REGOPT_OK)
            return 2;
        for (j = 0; j < n * H; j++)
            keep[j] = keep[j] >= m->drop ? inv : 0.0f;
    } else {
        for (j = 0; j < n * H; j++)
            keep[j] = 1.0f;
    }
    for (j = 0; j < n * H; j++)
        h[j] = h[j] > 0.0f ? h[j] * keep[j] : 0.0f;
    for (i = 0; i < n; i++)
        memcpy(p->outputs + i * m->out, m->b2, m->out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)m->out, (int)H,
                1.0f, h, (int)H, m->w2, (int)m->out, 1.0f, p->outputs, (int)m->out);
    return 0;
}

/* Accumulate the parameter gradients of the slot's forward from d_outputs. */
static int mlp_backward(const regopt_pass *p, void *user)
{
    mlp *m = user;
    size_t n = p->rows, H = m->hid, K = m->out, i, j;
    int s = p->slot;
    const float *dz = p->d_outputs, *h = m->h[s], *keep = m->keep[s];
    if (s < 0 || s >= MLP_SLOTS || n > m->max_rows)
        return 1;
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return 3; /* this host exposes no input embeddings */
    /* g2 += h^T dz ; gb2 += column sums of dz */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)H, (int)K, (int)n, 1.0f, h,
                (int)H, dz, (int)K, 1.0f, m->g2, (int)K);
    for (i = 0; i < n; i++)
        for (j = 0; j < K; j++)
            m->gb2[j] += dz[i * K + j];
    /* dh = (dz w2^T) * relu'(pre) * dropout scale; h > 0 exactly where both hold */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)H, (int)K, 1.0f, dz,
                (int)K, m->w2, (int)K, 0.0f, m->dh, (int)H);
    for (j = 0; j < n * H; j++)
        m->dh[j] = h[j] > 0.0f ? m->dh[j] * keep[j] : 0.0f;
    /* g1 += x^T dh ; gb1 += column sums of dh */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m->in, (int)H, (int)n, 1.0f,
                m->x[s], (int)m->in, m->dh, (int)H, 1.0f, m->g1, (int)H);
    for (i = 0; i < n; i++)
        for (j = 0; j < H; j++)
            m->gb1[j] += m->dh[i * H + j];
    return 0;
}

/* Register the four tensors (biases in group 1, so they can be spared weight
 * decay) and the callbacks. */
static regopt_status mlp_register(mlp *m, regopt_model *model)
{
    regopt_status st;
    if ((st = regopt_model_add_param(model, "w1", m->w1, m->g1, m->in * m->hid,
                                     REGOPT_DTYPE_FLOAT32, 0)) != REGOPT_OK ||
        (st = regopt_model_add_param(model, "b1", m->b1, m->gb1, m->hid,
                                     REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK ||
        (st = regopt_model_add_param(model, "w2", m->w2, m->g2, m->hid * m->out,
                                     REGOPT_DTYPE_FLOAT32, 0)) != REGOPT_OK ||
        (st = regopt_model_add_param(model, "b2", m->b2, m->gb2, m->out,
                                     REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK ||
        (st = regopt_model_set_output_width(model, m->out)) != REGOPT_OK ||
        (st = regopt_model_set_slots(model, MLP_SLOTS)) != REGOPT_OK)
        return st;
    return regopt_model_set_callbacks(model, mlp_forward, mlp_backward, m, NULL);
}

/* Accuracy of argmax(outputs) over n rows. */
static double accuracy(const float *outputs, const int32_t *y, size_t n, size_t k)
{
    size_t i, j, hits = 0;
    for (i = 0; i < n; i++) {
        size_t best = 0;
        for (j = 1; j < k; j++)
            if (outputs[i * k + j] > outputs[i * k + best])
                best = j;
        hits += (int32_t)best == y[i];
    }
    return n ? (double)hits / (double)n : 0.0;
}

#endif
