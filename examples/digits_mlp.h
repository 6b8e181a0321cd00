/* digits_mlp.h — a host network for the examples: the UCI handwritten
 * digits data set and a one-hidden-layer perceptron on CBLAS, with ReLU and
 * inverted dropout driven by the library's pass seed. It is what a real host
 * does: it owns its parameters, gradients, activations and data, and talks
 * to libregopt only through the two callbacks.
 *
 * Header-only (static functions) so that every example can include it. */
#ifndef DIGITS_MLP_H
#define DIGITS_MLP_H

#include "cli.h"

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
    size_t row_base;       /* global index of row 0: dropout masks are drawn per
                              global row, so a data-parallel shard or an
                              m-sharpness chunk sees the units a single process
                              would */
} mlp_batch;

typedef struct mlp {
    size_t in, hid, out, max_rows;
    float drop;                       /* dropout probability on the hidden layer */
    int bn;                           /* batch normalisation after the first layer */
    float *w1, *b1, *w2, *b2;         /* parameters: w1 in x hid, w2 hid x out */
    float *g1, *gb1, *g2, *gb2;       /* their gradients */
    float *gamma, *beta, *ggamma, *gbeta; /* batch-norm scale and shift */
    float *run_mean, *run_var;        /* batch-norm running statistics */
    long bn_updates;                  /* times the running statistics moved */
    long bn_recal;                    /* batches of the recalibration under way */
    float *h[MLP_SLOTS];              /* hidden activations after ReLU and dropout */
    float *keep[MLP_SLOTS];           /* dropout scale per unit (0 or 1/(1-p)) */
    float *xhat[MLP_SLOTS];           /* batch-norm: normalised pre-activations */
    float *inv_std[MLP_SLOTS];        /* batch-norm: 1/sqrt(var + eps) per unit and half */
    float *xd[MLP_SLOTS];             /* R-Drop doubled pass: the input twice */
    int bn_train[MLP_SLOTS];          /* the slot's forward used batch statistics */
    const float *x[MLP_SLOTS];        /* input of the slot's forward */
    float *dh;                        /* scratch: d(hidden) */
} mlp;

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f /* torch.nn.BatchNorm1d */

static float *mlp_alloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* He-initialised weights from the library's normal generator. */
static int mlp_init(mlp *m, size_t hidden, size_t max_rows, float drop, int bn,
                    uint64_t seed)
{
    size_t i, s;
    float scale;
    memset(m, 0, sizeof *m);
    m->bn = bn;
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
    /* room for a doubled batch (R-Drop): 2 x max_rows rows */
    m->dh = mlp_alloc(2 * max_rows * m->hid);
    if (!m->w1 || !m->b1 || !m->w2 || !m->b2 || !m->g1 || !m->gb1 || !m->g2 ||
        !m->gb2 || !m->dh)
        return -1;
    for (s = 0; s < MLP_SLOTS; s++) {
        m->h[s] = mlp_alloc(2 * max_rows * m->hid);
        m->keep[s] = mlp_alloc(2 * max_rows * m->hid);
        m->xhat[s] = mlp_alloc(bn ? 2 * max_rows * m->hid : 0);
        m->inv_std[s] = mlp_alloc(2 * m->hid);
        m->xd[s] = mlp_alloc(2 * max_rows * m->in);
        if (!m->h[s] || !m->keep[s] || !m->xhat[s] || !m->inv_std[s] || !m->xd[s])
            return -1;
    }
    m->gamma = mlp_alloc(m->hid);
    m->beta = mlp_alloc(m->hid);
    m->ggamma = mlp_alloc(m->hid);
    m->gbeta = mlp_alloc(m->hid);
    m->run_mean = mlp_alloc(m->hid);
    m->run_var = mlp_alloc(m->hid);
    if (!m->gamma || !m->beta || !m->ggamma || !m->gbeta || !m->run_mean || !m->run_var)
        return -1;
    for (i = 0; i < m->hid; i++)
        m->gamma[i] = m->run_var[i] = 1.0f;
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
    free(m->gamma); free(m->beta); free(m->ggamma); free(m->gbeta);
    free(m->run_mean); free(m->run_var);
    for (s = 0; s < MLP_SLOTS; s++) {
        free(m->h[s]);
        free(m->keep[s]);
        free(m->xhat[s]);
        free(m->inv_std[s]);
        free(m->xd[s]);
    }
}

/* Batch normalisation of the n x H pre-activations of one half of the
 * slot (half 1 only in a doubled R-Drop pass, so each copy of the batch is
 * normalised alone, as in two separate passes), in place. In
 * training it uses the batch's statistics and moves the running ones --
 * except in SAM's perturbed pass (REGOPT_PASS_PERTURBED_WEIGHTS), which must
 * not count twice. Otherwise it uses the running statistics. */
static void bn_forward(mlp *m, int s, size_t half, size_t n, uint32_t flags, int adversarial)
{
    size_t H = m->hid, i, j;
    float *h = m->h[s] + half * n * H, *xhat = m->xhat[s] + half * n * H;
    float *inv_std = m->inv_std[s] + half * H;
    int train = (flags & REGOPT_PASS_TRAIN) != 0;
    /* statistics move in clean training passes only: not in SAM's perturbed
       weights, nor in SMART's perturbed inputs, nor in a flatness probe */
    int update = train && !(flags & (REGOPT_PASS_PERTURBED_WEIGHTS | REGOPT_PASS_PROBE |
                                     REGOPT_PASS_RECALIBRATE)) &&
                 !adversarial;
    /* recalibration for averaged weights (torch's update_bn): the running
       statistics become the equal-weight mean over the call's batches */
    int recal = train && (flags & REGOPT_PASS_RECALIBRATE) != 0;
    float c = recal ? 1.0f / (float)(m->bn_recal + 1) : 0.0f;
    m->bn_train[s] = train;
    for (j = 0; j < H; j++) {
        double mean = 0.0, var = 0.0;
        float inv;
        if (train) {
            for (i = 0; i < n; i++)
                mean += h[i * H + j];
            mean /= (double)n;
            for (i = 0; i < n; i++)
                var += (h[i * H + j] - mean) * (h[i * H + j] - mean);
            var /= (double)n;
            if (update) {
                double unbiased = n > 1 ? var * (double)n / (double)(n - 1) : var;
                m->run_mean[j] = (1.0f - BN_MOMENTUM) * m->run_mean[j] + BN_MOMENTUM * (float)mean;
                m->run_var[j] = (1.0f - BN_MOMENTUM) * m->run_var[j] + BN_MOMENTUM * (float)unbiased;
            } else if (recal) {
                double unbiased = n > 1 ? var * (double)n / (double)(n - 1) : var;
                m->run_mean[j] += c * ((float)mean - m->run_mean[j]);
                m->run_var[j] += c * ((float)unbiased - m->run_var[j]);
            }
        } else {
            mean = m->run_mean[j];
            var = m->run_var[j];
        }
        inv = 1.0f / sqrtf((float)var + BN_EPS);
        inv_std[j] = inv;
        for (i = 0; i < n; i++) {
            float xh = (h[i * H + j] - (float)mean) * inv;
            xhat[i * H + j] = xh;
            h[i * H + j] = m->gamma[j] * xh + m->beta[j];
        }
    }
    if (update)
        m->bn_updates++;
    if (recal)
        m->bn_recal++;
}

/* d(pre-activation) from d(bn output) in dh, in place; accumulates d gamma,
 * d beta. Training mode: dx = inv/N (N dxh - sum dxh - xh sum(dxh xh)). */
static void bn_backward(mlp *m, int s, size_t half, size_t n, int params)
{
    size_t H = m->hid, i, j;
    const float *xh = m->xhat[s] + half * n * H;
    float *dh = m->dh + half * n * H;
    for (j = 0; j < H; j++) {
        double sd = 0.0, sdx = 0.0;
        float inv = m->inv_std[s][half * H + j];
        for (i = 0; i < n; i++) {
            float dy = dh[i * H + j];
            if (params) {
                m->ggamma[j] += dy * xh[i * H + j];
                m->gbeta[j] += dy;
            }
            sd += dy * m->gamma[j];
            sdx += dy * m->gamma[j] * xh[i * H + j];
        }
        for (i = 0; i < n; i++) {
            float dxh = dh[i * H + j] * m->gamma[j];
            dh[i * H + j] = m->bn_train[s]
                                ? inv / (float)n *
                                      ((float)n * dxh - (float)sd - xh[i * H + j] * (float)sdx)
                                : dxh * inv;
        }
    }
}

/* outputs = dropout(relu(bn(x w1 + b1))) w2 + b2, bn optional. A doubled
 * pass (R-Drop) runs rows = 2n: the batch twice, with seed and seed2. */
static int mlp_forward(const regopt_pass *p, void *user)
{
    mlp *m = user;
    const mlp_batch *b = p->batch;
    int s = p->slot, doubled = (p->flags & REGOPT_PASS_DOUBLED) != 0;
    size_t rows = p->rows, n = doubled ? rows / 2 : rows, H = m->hid, i, j, half;
    float *h = m->h[s], *keep = m->keep[s];
    if (s < 0 || s >= MLP_SLOTS || n > m->max_rows || p->output_width != m->out)
        return 1;
    if ((p->flags & REGOPT_PASS_RECALIBRATE) && p->micro_batch == 0) { /* reset (update_bn) */
        m->bn_recal = 0;
        for (j = 0; m->bn && j < H; j++) {
            m->run_mean[j] = 0.0f;
            m->run_var[j] = 1.0f;
        }
    }
    m->x[s] = b->x + p->row_offset * m->in;
    if (doubled) { /* R-Drop: the batch twice, one matrix product */
        memcpy(m->xd[s], m->x[s], n * m->in * sizeof(float));
        memcpy(m->xd[s] + n * m->in, m->x[s], n * m->in * sizeof(float));
        m->x[s] = m->xd[s];
    }
    if (p->input_perturbation) { /* SMART: the pixels are this host's embeddings */
        if (doubled || p->input_rows != n || p->input_width != m->in)
            return 4;
        for (j = 0; j < n * m->in; j++)
            m->xd[s][j] = m->x[s][j] + p->input_perturbation[j];
        m->x[s] = m->xd[s];
    }
    for (i = 0; i < rows; i++)
        memcpy(h + i * H, m->b1, H * sizeof *h);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)H, (int)m->in,
                1.0f, m->x[s], (int)m->in, m->w1, (int)H, 1.0f, h, (int)H);
    for (half = 0; half < (doubled ? 2u : 1u); half++) {
        float *kh = keep + half * n * H;
        if (m->bn)
            bn_forward(m, s, half, n, p->flags, p->input_perturbation != NULL);
        if ((p->flags & REGOPT_PASS_TRAIN) && m->drop > 0.0f) {
            /* inverted dropout: unit j of global row r is element r*H + j of
               the pass's stream (the second half's stream is seed2) */
            float inv = 1.0f / (1.0f - m->drop);
            if (regopt_random_uniform(half ? p->seed2 : p->seed,
                                      (b->row_base + p->row_offset) * H, kh, n * H) != REGOPT_OK)
                return 2;
            for (j = 0; j < n * H; j++)
                kh[j] = kh[j] >= m->drop ? inv : 0.0f;
        } else {
            for (j = 0; j < n * H; j++)
                kh[j] = 1.0f;
        }
    }
    for (j = 0; j < rows * H; j++)
        h[j] = h[j] > 0.0f ? h[j] * keep[j] : 0.0f;
    for (i = 0; i < rows; i++)
        memcpy(p->outputs + i * m->out, m->b2, m->out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)m->out, (int)H,
                1.0f, h, (int)H, m->w2, (int)m->out, 1.0f, p->outputs, (int)m->out);
    return 0;
}

/* Accumulate the parameter gradients of the slot's forward from d_outputs. */
static int mlp_backward(const regopt_pass *p, void *user)
{
    mlp *m = user;
    int s = p->slot, doubled = (p->flags & REGOPT_PASS_DOUBLED) != 0;
    size_t n = p->rows, H = m->hid, K = m->out, i, j, half;
    const float *dz = p->d_outputs, *h = m->h[s], *keep = m->keep[s];
    int params = !(p->flags & REGOPT_PASS_NO_PARAM_GRAD); /* SMART's ascent: d_input only */
    if (s < 0 || s >= MLP_SLOTS || n > (doubled ? 2 : 1) * m->max_rows ||
        (p->d_input && doubled))
        return 1;
    if (params) { /* g2 += h^T dz ; gb2 += column sums of dz */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)H, (int)K, (int)n, 1.0f, h,
                    (int)H, dz, (int)K, 1.0f, m->g2, (int)K);
        for (i = 0; i < n; i++)
            for (j = 0; j < K; j++)
                m->gb2[j] += dz[i * K + j];
    }
    /* dh = (dz w2^T) * relu'(pre) * dropout scale; h > 0 exactly where both hold */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)H, (int)K, 1.0f, dz,
                (int)K, m->w2, (int)K, 0.0f, m->dh, (int)H);
    for (j = 0; j < n * H; j++)
        m->dh[j] = h[j] > 0.0f ? m->dh[j] * keep[j] : 0.0f;
    for (half = 0; m->bn && half < (doubled ? 2u : 1u); half++)
        bn_backward(m, s, half, doubled ? n / 2 : n, params);
    if (params) { /* g1 += x^T dh ; gb1 += column sums of dh */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m->in, (int)H, (int)n, 1.0f,
                    m->x[s], (int)m->in, m->dh, (int)H, 1.0f, m->g1, (int)H);
        for (i = 0; i < n; i++)
            for (j = 0; j < H; j++)
                m->gb1[j] += m->dh[i * H + j];
    }
    if (p->d_input) /* d(loss)/d(input) = dh w1^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m->in, (int)H, 1.0f,
                    m->dh, (int)H, m->w1, (int)H, 0.0f, p->d_input, (int)m->in);
    return 0;
}

/* Register the tensors (biases and batch-norm parameters in group 1, so they
 * can be spared weight decay and ASAM's scaling) and the callbacks. */
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
        (m->bn && (st = regopt_model_add_param(model, "bn.gamma", m->gamma, m->ggamma, m->hid,
                                               REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (m->bn && (st = regopt_model_add_param(model, "bn.beta", m->beta, m->gbeta, m->hid,
                                               REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        /* the running statistics as frozen tensors (no gradient): the
           optimizer leaves them alone, checkpoints carry them */
        (m->bn && (st = regopt_model_add_param(model, "bn.running_mean", m->run_mean, NULL,
                                               m->hid, REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (m->bn && (st = regopt_model_add_param(model, "bn.running_var", m->run_var, NULL,
                                               m->hid, REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (st = regopt_model_set_output_width(model, m->out)) != REGOPT_OK ||
        (st = regopt_model_set_input_width(model, m->in)) != REGOPT_OK ||
        (st = regopt_model_set_slots(model, MLP_SLOTS)) != REGOPT_OK)
        return st;
    /* the forward also takes R-Drop's doubled batches */
    if ((st = regopt_model_set_capabilities(model, REGOPT_CAP_DOUBLED_BATCH)) != REGOPT_OK)
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
