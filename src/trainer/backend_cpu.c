/* backend_cpu.c — the CPU backend (regopt_backend_cpu_create): every
 * operation of regopt_vop on float32 host arrays, with the kernels the
 * library runs on registered buffers without a backend, over the same
 * blocks and with the sums in the same chunks and order. It is the
 * reference for a host's own backend, and what a host wraps to work on
 * copies: the same step through it gives the same bits as the library
 * without one (test/check_backend.c). One thread. */
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

typedef struct cpu_backend {
    ro_alloc alloc;
    size_t n;                /* tensors bound */
    float **data, **grad;    /* their handles: host arrays */
    size_t *counts, *offset; /* elements, and the start within a buffer */
    size_t nf;               /* frozen tensors: only READ and WRITE reach them */
    float **frozen;
    size_t *frozen_counts;
    size_t total;
    float **bufs;            /* buffer id - REGOPT_VEC_BUFFER0 -> array of total */
    size_t n_bufs;
} cpu_backend;

/* Errors the CPU backend returns (anything non-zero fails the call). */
enum { CPU_OK = 0, CPU_NO_MEMORY = 1, CPU_BAD_VECTOR = 2, CPU_BAD_BIND = 3, CPU_BAD_CODE = 4 };

static float *part(const cpu_backend *c, int32_t vec, size_t k)
{
    size_t b;
    if (vec == REGOPT_VEC_WEIGHTS)
        return c->data[k];
    if (vec == REGOPT_VEC_GRADS)
        return c->grad[k];
    if (vec < REGOPT_VEC_BUFFER0)
        return NULL;
    b = (size_t)(vec - REGOPT_VEC_BUFFER0);
    return b < c->n_bufs && c->bufs[b] ? c->bufs[b] + c->offset[k] : NULL;
}

/* Every part of the vectors an operation names exists. */
static int vectors_ok(const cpu_backend *c, const regopt_vop *op, int need_y, int need_z)
{
    if (!c->n)
        return 1;
    if (!part(c, op->x, 0) || (need_y && !part(c, op->y, 0)) || (need_z && !part(c, op->z, 0)))
        return 0;
    return 1;
}

static void unbind(cpu_backend *c)
{
    ro_free(&c->alloc, c->data);
    ro_free(&c->alloc, c->counts);
    c->data = c->grad = c->frozen = NULL;
    c->counts = c->offset = c->frozen_counts = NULL;
    c->n = c->nf = 0;
}

static int bind(cpu_backend *c, const regopt_vop *op)
{
    size_t k, total = 0, n = op->tensors, nf = op->frozen;
    float **h;
    size_t *cnt;
    for (k = 0; k < n; k++)
        total += op->counts[k];
    if (c->n_bufs && total != c->total) /* buffers exist for another layout */
        return CPU_BAD_BIND;
    if (nf && (!op->frozen_data || !op->frozen_counts))
        return CPU_BAD_BIND;
    h = ro_calloc(&c->alloc, 2 * n + nf + 1, sizeof *h);
    cnt = ro_calloc(&c->alloc, 2 * n + nf + 1, sizeof *cnt);
    if (!h || !cnt) {
        ro_free(&c->alloc, h);
        ro_free(&c->alloc, cnt);
        return CPU_NO_MEMORY;
    }
    unbind(c);
    c->data = h;
    c->grad = h + n;
    c->counts = cnt;
    c->offset = cnt + n;
    c->frozen = h + 2 * n;
    c->frozen_counts = cnt + 2 * n;
    for (k = 0; k < nf; k++) {
        c->frozen[k] = op->frozen_data[k];
        c->frozen_counts[k] = op->frozen_counts[k];
    }
    c->nf = nf;
    for (k = 0, total = 0; k < n; k++) {
        c->data[k] = op->data[k];
        c->grad[k] = op->grad[k];
        c->counts[k] = op->counts[k];
        c->offset[k] = total;
        total += op->counts[k];
    }
    c->n = n;
    c->total = total;
    return CPU_OK;
}

static int alloc_buffer(cpu_backend *c, int32_t vec)
{
    size_t b;
    if (vec < REGOPT_VEC_BUFFER0)
        return CPU_BAD_VECTOR;
    b = (size_t)(vec - REGOPT_VEC_BUFFER0);
    if (b >= c->n_bufs) {
        size_t cap = b + 8;
        float **nb = ro_calloc(&c->alloc, cap, sizeof *nb);
        if (!nb)
            return CPU_NO_MEMORY;
        if (c->n_bufs)
            memcpy(nb, c->bufs, c->n_bufs * sizeof *nb);
        ro_free(&c->alloc, c->bufs);
        c->bufs = nb;
        c->n_bufs = cap;
    }
    if (c->bufs[b])
        return CPU_BAD_VECTOR;
    c->bufs[b] = ro_calloc(&c->alloc, c->total ? c->total : 1, sizeof(float));
    return c->bufs[b] ? CPU_OK : CPU_NO_MEMORY;
}

/* The sums of the library's loops: each tensor in chunks of RO_CHUNK from
 * its start, the chunk sums added in order (parallel.c). */
static double sum_chunks(const cpu_backend *c, const regopt_vop *op)
{
    double s = 0.0;
    size_t k, j;
    for (k = 0; k < c->n; k++) {
        const float *x = part(c, op->x, k);
        if (op->tensor < op->tensors && k != op->tensor)
            continue;
        for (j = 0; j < c->counts[k]; j += RO_CHUNK)
            s += ro_sum_squares(x + j, c->counts[k] - j < RO_CHUNK ? c->counts[k] - j : RO_CHUNK);
    }
    return s;
}

static double abs_max(const cpu_backend *c, const regopt_vop *op)
{
    uint32_t top = 0, b;
    size_t k;
    float f;
    for (k = 0; k < c->n; k++) {
        if (op->tensor < op->tensors && k != op->tensor)
            continue;
        b = ro_abs_max_bits(part(c, op->x, k), c->counts[k]);
        top = b > top ? b : top;
    }
    if (top >= 0x7f800000u)
        return HUGE_VAL;
    memcpy(&f, &top, sizeof f);
    return f;
}

/* The scalars of tensor k's update, as update.c made them. */
static void update_scalars(const regopt_vop *op, size_t k, ro_update *u)
{
    const double *s = op->s;
    memset(u, 0, sizeof *u);
    u->lr = (float)op->per_tensor[3 * k];
    u->wd = (float)op->per_tensor[3 * k + 1];
    u->step_size = (float)op->per_tensor[3 * k + 2];
    u->grad_scale = (float)s[REGOPT_VOP_S_GRAD_SCALE];
    u->momentum = (float)s[REGOPT_VOP_S_MOMENTUM];
    u->one_minus_dampening = (float)s[REGOPT_VOP_S_ONE_MINUS_DAMPENING];
    u->nesterov = s[REGOPT_VOP_S_NESTEROV] != 0.0;
    u->first = s[REGOPT_VOP_S_FIRST] != 0.0;
    u->beta1 = (float)s[REGOPT_VOP_S_BETA1];
    u->beta2 = (float)s[REGOPT_VOP_S_BETA2];
    u->eps = (float)s[REGOPT_VOP_S_EPS];
    u->one_minus_beta1 = (float)s[REGOPT_VOP_S_ONE_MINUS_BETA1];
    u->one_minus_beta2 = (float)s[REGOPT_VOP_S_ONE_MINUS_BETA2];
    u->bc2_sqrt = (float)s[REGOPT_VOP_S_BC2_SQRT];
    u->amsgrad = s[REGOPT_VOP_S_AMSGRAD] != 0.0;
    u->rectified = s[REGOPT_VOP_S_RECTIFIED] != 0.0;
}

static int update(const cpu_backend *c, regopt_vop *op)
{
    int check = op->code == REGOPT_VOP_UPDATE_CHECK, kind = op->variant;
    float smax_all = 0.0f;
    size_t k;
    if (kind < REGOPT_SGD || kind > REGOPT_RADAM || !op->per_tensor)
        return CPU_BAD_VECTOR;
    if (c->n && (!part(c, op->z, 0) || (kind != REGOPT_SGD && !part(c, op->u, 0))))
        return CPU_BAD_VECTOR;
    op->out[0] = -1.0;
    for (k = 0; k < c->n; k++) {
        float *w = part(c, op->x, k), *m = part(c, op->z, k), *v = part(c, op->u, k);
        float *vmax = op->v != REGOPT_VEC_NONE ? part(c, op->v, k) : NULL;
        const float *g = part(c, op->y, k);
        size_t n = c->counts[k], bad;
        ro_update u;
        float smax = 0.0f;
        int what = 0;
        update_scalars(op, k, &u);
        if (!check) {
            if (kind == REGOPT_SGD)
                ro_sgd_update(&u, w, g, m, n);
            else if (kind == REGOPT_RADAM)
                ro_radam_update(&u, w, g, m, v, n);
            else
                ro_adam_update(&u, w, g, m, v, vmax, n, kind == REGOPT_ADAMW);
            continue;
        }
        if (kind == REGOPT_SGD)
            bad = ro_sgd_check(&u, w, g, m, n, &what, &smax);
        else if (kind == REGOPT_RADAM)
            bad = ro_radam_check(&u, w, g, m, v, n, &what, &smax);
        else
            bad = ro_adam_check(&u, w, g, m, v, vmax, n, kind == REGOPT_ADAMW, &what, &smax);
        if (bad < n) {
            op->out[0] = (double)k;
            op->out[1] = (double)bad;
            op->out[2] = what;
            return CPU_OK;
        }
        smax_all = smax > smax_all ? smax : smax_all;
    }
    op->out[3] = smax_all;
    return CPU_OK;
}

/* x <-> y; out[0] = 1 when every value that left x was finite. */
static void swap(const cpu_backend *c, regopt_vop *op)
{
    float bad = 0.0f;
    size_t k, j;
    for (k = 0; k < c->n; k++) {
        float *x = part(c, op->x, k), *y = part(c, op->y, k);
        for (j = 0; j < c->counts[k]; j++) {
            float v = x[j];
            x[j] = y[j];
            y[j] = v;
            bad += v - v; /* 0 when finite, NaN otherwise */
        }
    }
    op->out[0] = bad == 0.0f;
}

/* host_update.c's clipping of the gradient, g = g * c in float. */
static void scale(float *g, size_t n, float c)
{
    size_t j;
    for (j = 0; j < n; j++)
        g[j] = g[j] * c;
}

/* x = a y + b z (z none: a y), per tensor or shared scalars, tensors
 * without flags[k] & 1 skipped: each product rounded to float, then the
 * sum, as the methods' loops (-ffp-contract=off keeps them apart). */
static int axpby(const cpu_backend *c, const regopt_vop *op)
{
    size_t k, j;
    if (!vectors_ok(c, op, 1, op->z != REGOPT_VEC_NONE))
        return CPU_BAD_VECTOR;
    for (k = 0; k < c->n; k++) {
        float *x = part(c, op->x, k);
        const float *y = part(c, op->y, k);
        const float *z = op->z != REGOPT_VEC_NONE ? part(c, op->z, k) : NULL;
        float a = (float)(op->per_tensor ? op->per_tensor[2 * k] : op->s[0]);
        float b = (float)(op->per_tensor ? op->per_tensor[2 * k + 1] : op->s[1]);
        if (op->flags && !(op->flags[k] & 1))
            continue;
        if (z)
            for (j = 0; j < c->counts[k]; j++)
                x[j] = a * y[j] + b * z[j];
        else
            for (j = 0; j < c->counts[k]; j++)
                x[j] = a * y[j];
    }
    return CPU_OK;
}

/* Variant 0: ro_dot's sixteen lanes over each whole tensor (ro_dot(x, x)
 * is ro_sum_squares(x), bit for bit); variant 1: in element order. */
static int dot(const cpu_backend *c, regopt_vop *op)
{
    double s = 0.0;
    size_t k, j;
    if (!vectors_ok(c, op, 1, 0) || op->variant < 0 || op->variant > 1)
        return CPU_BAD_VECTOR;
    for (k = 0; k < c->n; k++) {
        const float *x = part(c, op->x, k), *y = part(c, op->y, k);
        if (op->tensor < op->tensors && k != op->tensor)
            continue;
        if (op->variant == 0)
            s += ro_dot(x, y, c->counts[k]);
        else
            for (j = 0; j < c->counts[k]; j++)
                s += (double)x[j] * y[j];
    }
    op->out[0] = s;
    return CPU_OK;
}

/* A checkpoint's piece: elements [first, first + count) of one part,
 * copied as bits to or from host. */
static int transfer(const cpu_backend *c, const regopt_vop *op)
{
    int frozen = op->x == REGOPT_VEC_FROZEN;
    size_t n = frozen ? c->nf : c->n, len;
    float *p;
    if (op->tensor >= n || !op->host)
        return CPU_BAD_VECTOR;
    p = frozen ? c->frozen[op->tensor] : part(c, op->x, op->tensor);
    len = frozen ? c->frozen_counts[op->tensor] : c->counts[op->tensor];
    if (!p || op->first > len || op->count > len - op->first)
        return CPU_BAD_VECTOR;
    if (op->code == REGOPT_VOP_READ)
        memcpy(op->host, p + op->first, op->count * sizeof(float));
    else
        memcpy(p + op->first, op->host, op->count * sizeof(float));
    return CPU_OK;
}

/* The operations that belong to a method: the regularizers' kernels on
 * each part (reg/vop_cpu.c), a reduction's chunk sums added in order. */
static int method_op(const cpu_backend *c, regopt_vop *op)
{
    double s = 0.0;
    size_t k;
    int rc = ro_reg_vop_part(op, 0, NULL, NULL, NULL, 0, &s); /* -1: no such code */
    for (k = 0; rc == 0 && k < c->n; k++)
        rc = ro_reg_vop_part(op, k, part(c, op->x, k), part(c, op->y, k), part(c, op->z, k),
                             c->counts[k], &s);
    if (rc)
        return rc < 0 ? CPU_BAD_CODE : CPU_BAD_VECTOR;
    op->out[0] = s;
    return CPU_OK;
}

static int run(void *user, regopt_vop *op)
{
    cpu_backend *c = user;
    size_t k;
    if (!c || !op || op->size < sizeof *op)
        return CPU_BAD_CODE;
    if (op->code == REGOPT_VOP_BIND)
        return bind(c, op);
    if (op->code == REGOPT_VOP_ALLOC)
        return alloc_buffer(c, op->x);
    if (op->code == REGOPT_VOP_FREE) {
        if (op->x >= REGOPT_VEC_BUFFER0 && (size_t)(op->x - REGOPT_VEC_BUFFER0) < c->n_bufs) {
            ro_free(&c->alloc, c->bufs[op->x - REGOPT_VEC_BUFFER0]);
            c->bufs[op->x - REGOPT_VEC_BUFFER0] = NULL;
        }
        return CPU_OK;
    }
    if (op->tensors != c->n)
        return CPU_BAD_BIND;
    switch (op->code) {
    case REGOPT_VOP_ZERO:
        if (!vectors_ok(c, op, 0, 0))
            return CPU_BAD_VECTOR;
        for (k = 0; k < c->n; k++)
            ro_zero(part(c, op->x, k), c->counts[k]);
        return CPU_OK;
    case REGOPT_VOP_COPY:
        if (!vectors_ok(c, op, 1, 0))
            return CPU_BAD_VECTOR;
        for (k = 0; k < c->n; k++)
            memmove(part(c, op->x, k), part(c, op->y, k), c->counts[k] * sizeof(float));
        return CPU_OK;
    case REGOPT_VOP_SUM_SQUARES:
        if (!vectors_ok(c, op, 0, 0))
            return CPU_BAD_VECTOR;
        op->out[0] = sum_chunks(c, op);
        return CPU_OK;
    case REGOPT_VOP_ABS_MAX:
        if (!vectors_ok(c, op, 0, 0))
            return CPU_BAD_VECTOR;
        op->out[0] = abs_max(c, op);
        return CPU_OK;
    case REGOPT_VOP_UPDATE:
    case REGOPT_VOP_UPDATE_CHECK:
        if (!vectors_ok(c, op, 1, 0))
            return CPU_BAD_VECTOR;
        return update(c, op);
    case REGOPT_VOP_SCALE:
        if (!vectors_ok(c, op, 0, 0))
            return CPU_BAD_VECTOR;
        for (k = 0; k < c->n; k++)
            scale(part(c, op->x, k), c->counts[k], (float)op->s[0]);
        return CPU_OK;
    case REGOPT_VOP_SWAP:
        if (!vectors_ok(c, op, 1, 0))
            return CPU_BAD_VECTOR;
        swap(c, op);
        return CPU_OK;
    case REGOPT_VOP_AXPBY:
        return axpby(c, op);
    case REGOPT_VOP_DOT:
        return dot(c, op);
    case REGOPT_VOP_READ:
    case REGOPT_VOP_WRITE:
        return transfer(c, op);
    default:
        return method_op(c, op);
    }
}

regopt_status regopt_backend_cpu_create(regopt_backend *b)
{
    cpu_backend *c;
    ro_alloc a;
    if (!b)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_backend_cpu_create: backend is NULL");
    memset(b, 0, sizeof *b);
    (void)ro_alloc_init(&a, NULL);
    c = ro_calloc(&a, 1, sizeof *c);
    if (!c)
        return ro_fail_tls(REGOPT_ERR_NO_MEMORY, "regopt_backend_cpu_create: out of memory");
    c->alloc = a;
    b->size = sizeof *b;
    b->run = run;
    b->user = c;
    return REGOPT_OK;
}

regopt_status regopt_backend_cpu_free(regopt_backend *b)
{
    cpu_backend *c;
    size_t i;
    if (!b)
        return REGOPT_OK;
    if (b->run != run)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_backend_cpu_free: not a table "
                           "made by regopt_backend_cpu_create");
    c = b->user;
    if (c) {
        ro_alloc a = c->alloc;
        for (i = 0; i < c->n_bufs; i++)
            ro_free(&a, c->bufs[i]);
        ro_free(&a, c->bufs);
        unbind(c);
        ro_free(&a, c);
    }
    b->user = NULL;
    b->run = NULL;
    return REGOPT_OK;
}
