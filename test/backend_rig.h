/* backend_rig.h — the rig of check_backend.c: a small network (embeddings
 * -> tanh hidden layer with dropout -> logits, plus a frozen output offset)
 * whose callbacks compute with the tensors wherever the host keeps them,
 * and a backend that works on shadow copies. In the backend runs the
 * buffers registered with the library are mapped PROT_NONE: any read or
 * write of them by the library ends the test with SIGSEGV; the host and the
 * backend use the shadows (regopt_backend_cpu_create's backend, handed the
 * shadows' addresses in place of the registered ones). */
#ifndef REGOPT_BACKEND_RIG_H
#define REGOPT_BACKEND_RIG_H

#include "test_util.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define BK_D 72 /* input width */
#define BK_H 64 /* hidden units: W1 has 4608 elements, two of the library's chunks */
#define BK_C 5  /* classes */
#define BK_N 6  /* rows of a batch */
#define BK_T 5  /* tensors: W1, b1, W2, b2 trainable; fz frozen */

static const size_t bk_count[BK_T] = {BK_H * BK_D, BK_H, BK_C * BK_H, BK_C, BK_C};
static const char *const bk_name[BK_T] = {"W1", "b1", "W2", "b2", "fz"};
static const int32_t bk_group[BK_T] = {0, 1, 0, 1, 0};

typedef struct bk_host {
    float *w[BK_T], *g[BK_T]; /* where the host computes: its buffers or the shadows */
    float x[4][BK_N * BK_D], a[4][BK_N * BK_H], m[4][BK_N * BK_H]; /* per slot */
    int nan_grad;             /* the next backward writes NaN into b1's gradient */
    int nan_weight;           /* the host's update (check_backend.c) writes a NaN weight */
} bk_host;

/* The backend over shadows, counting and failing operations. */
typedef struct bk_shadow {
    regopt_backend cpu;
    void *reg[2][BK_T]; /* the registered (PROT_NONE) addresses: data, grad */
    float *sh[2][BK_T]; /* their shadows */
    long calls[32];     /* per operation code (codes below 32) */
    int fail_code;      /* fail the fail_at-th call of this code (0: never) */
    long fail_at;
} bk_shadow;

static inline void *bk_lookup(const bk_shadow *s, void *h)
{
    int i, k;
    for (i = 0; i < 2; i++)
        for (k = 0; k < BK_T; k++)
            if (s->reg[i][k] == h)
                return s->sh[i][k];
    return NULL;
}

static inline int bk_shadow_run(void *user, regopt_vop *op)
{
    bk_shadow *s = user;
    void *data[BK_T], *grad[BK_T], *frozen[BK_T];
    size_t k;
    if (op->code > 0 && op->code < 32)
        s->calls[op->code]++;
    if (op->code == s->fail_code && s->calls[op->code] == s->fail_at)
        return 42;
    if (op->code == REGOPT_VOP_BIND) {
        regopt_vop o = *op;
        ck_assert_uint_le(op->tensors, BK_T);
        for (k = 0; k < op->tensors; k++) {
            data[k] = bk_lookup(s, op->data[k]);
            grad[k] = bk_lookup(s, op->grad[k]);
            ck_assert_ptr_nonnull(data[k]);
            ck_assert_ptr_nonnull(grad[k]);
        }
        ck_assert_uint_le(op->tensors + op->frozen, BK_T);
        for (k = 0; k < op->frozen; k++) { /* the frozen tensors, for checkpoints */
            frozen[k] = bk_lookup(s, op->frozen_data[k]);
            ck_assert_ptr_nonnull(frozen[k]);
        }
        o.data = data;
        o.grad = grad;
        o.frozen_data = frozen;
        return s->cpu.run(s->cpu.user, &o);
    }
    return s->cpu.run(s->cpu.user, op);
}

/* A deterministic hash for weights, data and dropout. */
static inline uint32_t bk_hash(uint64_t a, uint64_t b)
{
    uint64_t z = a * 0x9e3779b97f4a7c15u + b + 0x632be59bd9b4e019u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (uint32_t)(z ^ (z >> 31));
}

static inline float bk_uniform(uint64_t a, uint64_t b)
{
    return (float)(bk_hash(a, b) >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

static inline int bk_forward(const regopt_pass *p, void *user)
{
    bk_host *h = user;
    const float *e = p->batch;
    float *x = h->x[p->slot], *a = h->a[p->slot], *m = h->m[p->slot];
    size_t i, j, c, r = p->rows;
    if (p->slot < 0 || p->slot >= 4 || r > BK_N || p->output_width != BK_C)
        return 9;
    for (i = 0; i < r * BK_D; i++)
        x[i] = e[p->row_offset * BK_D + i] +
               (p->input_perturbation ? p->input_perturbation[i] : 0.0f);
    for (i = 0; i < r; i++)
        for (j = 0; j < BK_H; j++) {
            float s = h->w[1][j];
            size_t q;
            for (q = 0; q < BK_D; q++)
                s += h->w[0][j * BK_D + q] * x[i * BK_D + q];
            a[i * BK_H + j] = tanhf(s);
            m[i * BK_H + j] = 1.0f;
            if ((p->flags & REGOPT_PASS_TRAIN) &&
                bk_hash(p->seed, (p->row_offset + i) * BK_H + j) % 10 < 2)
                m[i * BK_H + j] = 0.0f;
            else if (p->flags & REGOPT_PASS_TRAIN)
                m[i * BK_H + j] = 1.25f;
        }
    for (i = 0; i < r; i++)
        for (c = 0; c < BK_C; c++) {
            float z = h->w[3][c] + h->w[4][c];
            for (j = 0; j < BK_H; j++)
                z += h->w[2][c * BK_H + j] * (a[i * BK_H + j] * m[i * BK_H + j]);
            p->outputs[i * BK_C + c] = z;
        }
    return 0;
}

static inline int bk_backward(const regopt_pass *p, void *user)
{
    bk_host *h = user;
    const float *x = h->x[p->slot], *a = h->a[p->slot], *m = h->m[p->slot];
    const float *dz = p->d_outputs;
    int params = !(p->flags & REGOPT_PASS_NO_PARAM_GRAD);
    size_t i, j, c, q, r = p->rows;
    for (i = 0; i < r; i++) {
        float dh[BK_H];
        for (j = 0; j < BK_H; j++) {
            float s = 0.0f, am = a[i * BK_H + j] * m[i * BK_H + j];
            for (c = 0; c < BK_C; c++) {
                s += h->w[2][c * BK_H + j] * dz[i * BK_C + c];
                if (params)
                    h->g[2][c * BK_H + j] += dz[i * BK_C + c] * am;
            }
            dh[j] = s * m[i * BK_H + j] * (1.0f - a[i * BK_H + j] * a[i * BK_H + j]);
        }
        for (c = 0; params && c < BK_C; c++)
            h->g[3][c] += dz[i * BK_C + c];
        for (j = 0; params && j < BK_H; j++) {
            h->g[1][j] += dh[j];
            for (q = 0; q < BK_D; q++)
                h->g[0][j * BK_D + q] += dh[j] * x[i * BK_D + q];
        }
        if (p->d_input)
            for (q = 0; q < BK_D; q++) {
                float s = 0.0f;
                for (j = 0; j < BK_H; j++)
                    s += h->w[0][j * BK_D + q] * dh[j];
                p->d_input[i * BK_D + q] = s;
            }
    }
    if (h->nan_grad && params) {
        h->nan_grad = 0;
        h->g[1][3] = NAN;
    }
    return 0;
}

/* One run's objects: the host, its buffers, the model, optimizer, trainer. */
typedef struct bk_run {
    bk_host h;
    bk_shadow s;
    int backend;
    void *mapped[2][BK_T]; /* PROT_NONE regions (backend runs) */
    size_t mapped_len[BK_T];
    float e[BK_N * BK_D];
    int32_t y[BK_N];
    regopt_batch b;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *t;
} bk_run;

/* The model with its tensors at their first values, through the shadow
 * backend (backend) or on the host's own buffers; no trainer yet. */
static inline void bk_open_model(bk_run *r, int backend)
{
    regopt_status st;
    size_t i, k;
    memset(r, 0, sizeof *r);
    r->backend = backend;
    for (k = 0; k < BK_T; k++) {
        r->h.w[k] = calloc(bk_count[k], sizeof(float));
        r->h.g[k] = calloc(bk_count[k], sizeof(float));
        ck_assert(r->h.w[k] && r->h.g[k]);
        for (i = 0; i < bk_count[k]; i++)
            r->h.w[k][i] = bk_uniform(k + 1, i) * (k == 0 ? 0.15f : 0.4f);
    }
    for (i = 0; i < BK_N * BK_D; i++)
        r->e[i] = bk_uniform(77, i);
    for (i = 0; i < BK_N; i++)
        r->y[i] = (int32_t)(bk_hash(5, i) % BK_C);
    r->b.size = sizeof r->b;
    r->b.data = r->e;
    r->b.rows = BK_N;
    r->b.labels = r->y;
    r->model = regopt_model_create(NULL, &st);
    ck_assert_ptr_nonnull(r->model);
    if (backend) {
        MUST(regopt_backend_cpu_create(&r->s.cpu));
        regopt_backend table = {sizeof(regopt_backend), bk_shadow_run, &r->s};
        MUST(regopt_model_set_backend(r->model, &table));
    }
    for (k = 0; k < BK_T; k++) {
        void *data = r->h.w[k], *grad = k < 4 ? r->h.g[k] : NULL;
        if (backend) {
            size_t len = bk_count[k] * sizeof(float), j;
            r->mapped_len[k] = len;
            for (j = 0; j < 2; j++) {
                r->mapped[j][k] = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                ck_assert(r->mapped[j][k] != MAP_FAILED);
                r->s.reg[j][k] = r->mapped[j][k];
                r->s.sh[j][k] = j ? r->h.g[k] : r->h.w[k];
            }
            data = r->mapped[0][k];
            grad = k < 4 ? r->mapped[1][k] : NULL;
        }
        MUST(regopt_model_add_param(r->model, bk_name[k], data, grad, bk_count[k],
                                    REGOPT_DTYPE_FLOAT32, bk_group[k]));
    }
    MUST(regopt_model_set_output_width(r->model, BK_C));
    MUST(regopt_model_set_input_width(r->model, BK_D));
    MUST(regopt_model_set_slots(r->model, 4));
    MUST(regopt_model_set_callbacks(r->model, bk_forward, bk_backward, &r->h, NULL));
}

/* Optimizer kinds of the runs: SGD with Nesterov momentum and clipping,
 * Adam, AdamW with AMSGrad, RAdam. */
static inline regopt_optimizer *bk_optimizer(regopt_optimizer_kind kind)
{
    regopt_status st;
    regopt_optimizer *o = regopt_optimizer_create(kind, NULL, &st);
    ck_assert_ptr_nonnull(o);
    MUST(regopt_optimizer_set_double(o, REGOPT_OPT_LR, kind == REGOPT_SGD ? 0.05 : 2e-3));
    MUST(regopt_optimizer_set_double(o, REGOPT_OPT_WEIGHT_DECAY, 1e-2));
    if (kind == REGOPT_SGD) {
        MUST(regopt_optimizer_set_double(o, REGOPT_OPT_MOMENTUM, 0.9));
        MUST(regopt_optimizer_set_int(o, REGOPT_OPT_NESTEROV, 1));
        MUST(regopt_optimizer_set_double(o, REGOPT_OPT_CLIP_NORM, 0.5));
    }
    if (kind == REGOPT_ADAMW)
        MUST(regopt_optimizer_set_int(o, REGOPT_OPT_AMSGRAD, 1));
    return o;
}

static inline void bk_open(bk_run *r, int backend, regopt_optimizer_kind kind)
{
    regopt_status st;
    bk_open_model(r, backend);
    r->opt = bk_optimizer(kind);
    r->t = regopt_trainer_create(r->model, r->opt, &st);
    ck_assert_msg(r->t != NULL, "regopt_trainer_create -> %s: %s", regopt_status_string(st),
                  regopt_last_error_message());
}

static inline void bk_close(bk_run *r)
{
    size_t j, k;
    if (r->t)
        MUST(regopt_trainer_free(r->t));
    if (r->opt)
        MUST(regopt_optimizer_free(r->opt));
    MUST(regopt_model_free(r->model));
    if (r->backend)
        MUST(regopt_backend_cpu_free(&r->s.cpu));
    for (k = 0; k < BK_T; k++) {
        for (j = 0; r->backend && j < 2; j++)
            munmap(r->mapped[j][k], r->mapped_len[k]);
        free(r->h.w[k]);
        free(r->h.g[k]);
    }
}

/* `steps` steps (the test fails on any error); the objectives into loss
 * (may be NULL). */
static inline void bk_train(bk_run *r, int steps, double *loss)
{
    int i;
    for (i = 0; i < steps; i++) {
        TMUST(r->t, regopt_trainer_step(r->t, &r->b, 1));
        if (loss)
            loss[i] = stat(r->t, REGOPT_STAT_OBJECTIVE);
    }
}

/* The weights of run a (without a backend) and run b are the same bits,
 * tensor by tensor. */
static inline void bk_same_weights(const bk_run *a, const bk_run *b, const char *what)
{
    size_t k, i;
    for (k = 0; k < BK_T; k++)
        for (i = 0; i < bk_count[k]; i++)
            ck_assert_msg(memcmp(&a->h.w[k][i], &b->h.w[k][i], sizeof(float)) == 0,
                          "%s: %s[%zu] is %.9g, %.9g without a backend", what, bk_name[k], i,
                          (double)b->h.w[k][i], (double)a->h.w[k][i]);
}

/* Close both runs of a comparison, their regularizers and the runs. */
static inline void bk_close_pair(bk_run *a, bk_run *b)
{
    bk_close(a);
    bk_close(b);
    tu_free_regs();
    free(a);
    free(b);
}

#endif
