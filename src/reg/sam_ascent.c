/* sam_ascent.c — ascent directions with state across steps (sam.direction):
 *   FriendlySAM (Li et al., CVPR 2024; nblt/F-SAM): the first step makes
 *     m = g and ascends along g; later steps ascend along a = g - sigma m
 *     (m of the previous step) and then m = lambda m + (1 - lambda) g, with
 *     the raw g as the official code does;
 *   VaSSO (Li & Giannakis, NeurIPS 2023; BingcongLi/VaSSO): d = g at the
 *     first step, then d = (1 - theta) d + theta g; the ascent follows d.
 * sam.c normalises the direction as it does g (global norm, ASAM's T, the
 * ascent weight decay), so eps = rho T^2 a / (||T a|| + delta).
 *
 * The committed state changes only in ro_sam_dir_commit, after the update:
 * a step that fails (or is abandoned) leaves it as it was. With m-sharpness
 * each chunk ascends along its own direction, the state scaled by the
 * chunk's share of the step's weight (the chunk's gradient carries that
 * share), and the new state sums the chunks: exactly the whole-step formula
 * in exact arithmetic. */
#include "reg/sam_ascent.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

void ro_sam_dir_init(ro_sam_dir *d)
{
    memset(d, 0, sizeof *d);
    d->sigma = 1.0;
    d->lambda = 0.9;
    d->theta = 0.9;
}

static regopt_status dir_alloc(const ro_env *env, float **buf, char *msg)
{
    if (*buf)
        return REGOPT_OK;
    *buf = ro_calloc(env->alloc, env->model->n_trainable, sizeof(float));
    if (!*buf)
        return ro_fail(msg, REGOPT_ERR_NO_MEMORY, "out of memory for a SAM direction buffer "
                       "of %zu floats", env->model->n_trainable);
    return REGOPT_OK;
}

regopt_status ro_sam_dir_reserve(ro_sam_dir *d, const ro_env *env, char *msg)
{
    regopt_status st = REGOPT_OK;
    if (!env || d->mode == RO_SAM_DIR_GRADIENT)
        return REGOPT_OK;
    st = dir_alloc(env, &d->state, msg);
    if (st == REGOPT_OK)
        st = dir_alloc(env, &d->next, msg);
    if (st == REGOPT_OK)
        st = dir_alloc(env, &d->buf, msg);
    return st;
}

void ro_sam_dir_release(ro_sam_dir *d, const ro_env *env)
{
    ro_free(env->alloc, d->state);
    ro_free(env->alloc, d->next);
    ro_free(env->alloc, d->buf);
    d->state = d->next = d->buf = NULL;
    d->held = d->pending = 0;
}

/* The state is in use when it was made by the mode now selected. */
static int dir_in_use(const ro_sam_dir *d) { return d->held && d->held_mode == d->mode; }

/* ---- one step ------------------------------------------------------------ */

typedef struct dir_job {
    ro_sam_dir *d;
    float c1, c2, c3; /* per mode, below */
    float l;          /* FriendlySAM's lambda (a fresh make) */
    int first;        /* no state in use: the direction is g */
    int fresh;        /* the whole step: make() does begin()'s work too */
    ro_sum_fn squares; /* NULL, or the squares of the piece once made */
    void *squares_ctx;
} dir_job;

/* FriendlySAM: next = lambda m, before the chunks add (1 - lambda) g. */
static void dir_begin_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const dir_job *a = ctx;
    const float *m = a->d->state + p->offset;
    float *nx = a->d->next + p->offset, l = a->c1;
    size_t j;
    if (a->first || a->d->mode != RO_SAM_DIR_FRIENDLY) {
        memset(nx + j0, 0, (j1 - j0) * sizeof(float));
        return;
    }
    for (j = j0; j < j1; j++)
        nx[j] = l * m[j];
}

void ro_sam_dir_begin(ro_sam_dir *d, const ro_par *par)
{
    dir_job a;
    a.d = d;
    a.c1 = a.l = (float)d->lambda;
    a.c2 = a.c3 = 0.0f;
    a.first = !dir_in_use(d);
    a.fresh = 0;
    d->pending = 0;
    ro_each_piece(par, dir_begin_piece, &a);
}

/* first: buf = g, next += g.
 * FriendlySAM: buf = g - sigma (share m), next += (1 - lambda) g.
 * VaSSO: buf = (1 - theta) (share d) + theta g, next += buf.
 * With `fresh` (the whole step, begin() not called) next starts from what
 * begin() would have left: 0, or FriendlySAM's lambda m, computed in the
 * same float operations in the same order (0 + x keeps begin's +0).
 *
 * Each loop is written once and run over RO_BLOCK-element blocks of
 * restrict-qualified pointers (GCC -O2 vectorizes only loops of a known
 * count without alias checks), then over the tail: the same operations on
 * every element. */
#define DIR_LOOP(name, BODY)                                                                \
    static void name##_block(float *restrict b, float *restrict nx, const float *restrict m, \
                             const float *restrict g, const dir_job *a)                      \
    {                                                                                       \
        const float c1 = a->c1, c2 = a->c2, c3 = a->c3, l = a->l;                           \
        size_t j;                                                                           \
        (void)c1, (void)c2, (void)c3, (void)l, (void)m;                                     \
        for (j = 0; j < RO_BLOCK; j++) {                                                    \
            BODY                                                                            \
        }                                                                                   \
    }                                                                                       \
    static void name(float *b, float *nx, const float *m, const float *g, size_t n,          \
                     const dir_job *a)                                                      \
    {                                                                                       \
        const float c1 = a->c1, c2 = a->c2, c3 = a->c3, l = a->l;                           \
        size_t j = 0;                                                                       \
        (void)c1, (void)c2, (void)c3, (void)l;                                              \
        for (; j + RO_BLOCK <= n; j += RO_BLOCK)                                            \
            name##_block(b + j, nx + j, m + j, g + j, a);                                   \
        for (; j < n; j++) {                                                                \
            BODY                                                                            \
        }                                                                                   \
    }

DIR_LOOP(dir_make_first, b[j] = g[j]; nx[j] = nx[j] + g[j];)
DIR_LOOP(dir_make_friendly_fresh_sam, b[j] = g[j]; nx[j] = l * m[j] + c2 * g[j];)
DIR_LOOP(dir_make_friendly_fresh, b[j] = g[j] - c1 * (c3 * m[j]); nx[j] = l * m[j] + c2 * g[j];)
DIR_LOOP(dir_make_friendly_sam, b[j] = g[j]; nx[j] = nx[j] + c2 * g[j];)
DIR_LOOP(dir_make_friendly, b[j] = g[j] - c1 * (c3 * m[j]); nx[j] = nx[j] + c2 * g[j];)
DIR_LOOP(dir_make_vasso_one, b[j] = c2 * g[j]; nx[j] = nx[j] + b[j];)
DIR_LOOP(dir_make_vasso, b[j] = c1 * (c3 * m[j]) + c2 * g[j]; nx[j] = nx[j] + b[j];)

static void dir_make_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const dir_job *a = ctx;
    const float *m = a->d->state + p->offset + j0, *g = p->grad + j0;
    float *nx = a->d->next + p->offset + j0, *b = a->d->buf + p->offset + j0;
    const size_t n = j1 - j0;
    const int friendly = a->d->mode == RO_SAM_DIR_FRIENDLY;
    if (a->fresh && (a->first || !friendly))
        memset(nx, 0, n * sizeof(float));
    if (a->first)
        dir_make_first(b, nx, m, g, n, a);
    else if (friendly && a->fresh && a->c1 == 0.0f) /* sigma 0: SAM's g, bits */
        dir_make_friendly_fresh_sam(b, nx, m, g, n, a);
    else if (friendly && a->fresh)
        dir_make_friendly_fresh(b, nx, m, g, n, a);
    else if (friendly && a->c1 == 0.0f)
        dir_make_friendly_sam(b, nx, m, g, n, a);
    else if (friendly)
        dir_make_friendly(b, nx, m, g, n, a);
    else if (a->c1 == 0.0f) /* theta 1: d = g, bits (signed zeros too) */
        dir_make_vasso_one(b, nx, m, g, n, a);
    else
        dir_make_vasso(b, nx, m, g, n, a);
}

/* The piece made, then (while it is in cache) its share of the ascent
 * norm's sum: the chunks of ro_sum_pieces are the pieces of
 * ro_each_piece, so the sum has the bits of a separate pass. */
static double dir_make_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const dir_job *a = ctx;
    dir_make_piece(ctx, p, j0, j1);
    return a->squares(a->squares_ctx, p, j0, j1);
}

const float *ro_sam_dir_make(ro_sam_dir *d, const ro_par *par, double share, int fresh,
                             ro_sum_fn squares, void *squares_ctx, double *sum)
{
    dir_job a;
    if (d->mode == RO_SAM_DIR_GRADIENT)
        return NULL;
    a.d = d;
    a.first = !dir_in_use(d);
    a.fresh = fresh;
    a.l = (float)d->lambda;
    a.c3 = (float)share;
    a.squares = squares;
    a.squares_ctx = squares_ctx;
    if (fresh)
        d->pending = 0;
    if (d->mode == RO_SAM_DIR_FRIENDLY) {
        a.c1 = (float)d->sigma;
        a.c2 = (float)(1.0 - d->lambda);
    } else {
        a.c1 = (float)(1.0 - d->theta);
        a.c2 = (float)d->theta;
    }
    if (squares)
        *sum = ro_sum_pieces(par, dir_make_squares, &a);
    else
        ro_each_piece(par, dir_make_piece, &a);
    return d->buf;
}

/* ---- the same through the model's backend ----------------------------------
 * Each loop above as REGOPT_VOP_AXPBY / COPY / ZERO calls, every element
 * getting the same float operations in the same order: b = g - c1 (c3 m)
 * is t = c3 m, then b = 1 g + (-c1) t (1 g is g, and adding -(c1 t) is
 * subtracting c1 t); nx + g is 1 nx + 1 g. */

static regopt_status vop_copy(const ro_env *env, int32_t x, int32_t y)
{
    return ro_vop_copy(env->model, x, y, env->msg);
}

static regopt_status vop_axpby(const ro_env *env, int32_t x, int32_t y, int32_t z, float a,
                               float b)
{
    return ro_vop_axpby(env->model, x, y, z, a, b, NULL, NULL, env->msg);
}

regopt_status ro_sam_dir_begin_vops(ro_sam_dir *d, const ro_env *env)
{
    d->pending = 0;
    if (!dir_in_use(d) || d->mode != RO_SAM_DIR_FRIENDLY)
        return vop_copy(env, d->next_vec, REGOPT_VEC_NONE);
    return vop_axpby(env, d->next_vec, d->state_vec, REGOPT_VEC_NONE, (float)d->lambda, 0.0f);
}

regopt_status ro_sam_dir_make_vops(ro_sam_dir *d, const ro_env *env, double share, int fresh)
{
    const int32_t b = d->buf_vec, nx = d->next_vec, m = d->state_vec, g = REGOPT_VEC_GRADS;
    const int friendly = d->mode == RO_SAM_DIR_FRIENDLY, first = !dir_in_use(d);
    const float l = (float)d->lambda, c3 = (float)share;
    const float c1 = (float)(friendly ? d->sigma : 1.0 - d->theta);
    const float c2 = (float)(friendly ? 1.0 - d->lambda : d->theta);
    regopt_status st = REGOPT_OK;
    if (d->mode == RO_SAM_DIR_GRADIENT)
        return REGOPT_OK;
    if (fresh)
        d->pending = 0;
    if (fresh && (first || !friendly))
        st = vop_copy(env, nx, REGOPT_VEC_NONE);
    if (st != REGOPT_OK)
        return st;
    if (first) { /* b = g; nx = nx + g */
        st = vop_copy(env, b, g);
        return st == REGOPT_OK ? vop_axpby(env, nx, nx, g, 1.0f, 1.0f) : st;
    }
    if (friendly) {
        if (c1 == 0.0f) /* sigma 0: b = g */
            st = vop_copy(env, b, g);
        else { /* b = g - c1 (c3 m) */
            st = vop_axpby(env, b, m, REGOPT_VEC_NONE, c3, 0.0f);
            if (st == REGOPT_OK)
                st = vop_axpby(env, b, g, b, 1.0f, -c1);
        }
        if (st != REGOPT_OK)
            return st;
        /* fresh: nx = l m + c2 g; else nx = nx + c2 g */
        return fresh ? vop_axpby(env, nx, m, g, l, c2) : vop_axpby(env, nx, nx, g, 1.0f, c2);
    }
    if (c1 == 0.0f) { /* theta 1: b = c2 g */
        st = vop_axpby(env, b, g, REGOPT_VEC_NONE, c2, 0.0f);
    } else { /* b = c1 (c3 m) + c2 g */
        st = vop_axpby(env, b, m, REGOPT_VEC_NONE, c3, 0.0f);
        if (st == REGOPT_OK)
            st = vop_axpby(env, b, b, g, c1, c2);
    }
    return st == REGOPT_OK ? vop_axpby(env, nx, nx, b, 1.0f, 1.0f) : st; /* nx = nx + b */
}

void ro_sam_dir_end(ro_sam_dir *d) { d->pending = d->mode != RO_SAM_DIR_GRADIENT; }

void ro_sam_dir_commit(ro_sam_dir *d)
{
    float *t;
    int32_t v;
    if (!d->pending)
        return;
    t = d->state;
    d->state = d->next;
    d->next = t;
    v = d->state_vec; /* with a backend; none and none otherwise */
    d->state_vec = d->next_vec;
    d->next_vec = v;
    d->held = 1;
    d->held_mode = d->mode;
    d->pending = 0;
}

/* ---- checkpoint state -------------------------------------------------------
 * Zero or more records, each u32 kind (1 FriendlySAM's m, 2 VaSSO's d,
 * 3 LookSAM's g_v) @0 | u32 pad 0 @4 | u64 trainable elements E @8 | E f32
 * @16: the direction's state first, then g_v, each when held. */

#define RO_SAM_STATE_LOOK 3u

static uint64_t record_size(size_t n) { return 16u + 4u * (uint64_t)n; }

uint64_t ro_sam_state_size(const ro_sam_dir *d, const ro_sam_look *l, size_t n)
{
    return (d->held ? record_size(n) : 0u) + (l->held ? record_size(n) : 0u);
}

/* A record of f, or with a backend of its buffer vec. */
static void record(uint32_t kind, const float *f, int32_t vec, const ro_env *env,
                   ro_ck_sink *out)
{
    const regopt_model *m = env->model;
    ro_ck_u32(out, kind);
    ro_ck_u32(out, 0);
    ro_ck_u64(out, (uint64_t)m->n_trainable);
    if (m->has_backend)
        ro_ck_vec(out, m, vec, env->msg);
    else
        ro_ck_floats(out, f, m->n_trainable);
}

void ro_sam_state_save(const ro_sam_dir *d, const ro_sam_look *l, const ro_env *env,
                       ro_ck_sink *out)
{
    if (d->held)
        record((uint32_t)d->held_mode, d->state, d->state_vec, env, out);
    if (l->held)
        record(RO_SAM_STATE_LOOK, l->gv, l->gv_vec, env, out);
}

/* With a backend the check takes the buffers the load writes (ids in the
 * SAM's own buffer set, freed at detach as the others). */
static regopt_status vec_alloc(const ro_env *env, int32_t *vec, char *msg)
{
    if (*vec != REGOPT_VEC_NONE)
        return REGOPT_OK;
    return ro_vec_alloc((regopt_model *)env->model, vec, msg);
}

regopt_status ro_sam_state_check(ro_sam_dir *d, ro_sam_look *l, const ro_env *env,
                                 const unsigned char *p, uint64_t size, char *msg)
{
    uint64_t n = env->model->n_trainable, rs = record_size(n), at, i;
    uint32_t seen = 0, kind;
    regopt_status st = REGOPT_OK;
    for (at = 0; at < size; at += rs) {
        const unsigned char *q = p + at;
        kind = size - at >= 16 ? ro_ck_rd32(q) : 0u;
        /* kinds 1 and 2 exclusive, first; 3 last; each at most once */
        if (kind < 1 || kind > RO_SAM_STATE_LOOK || (kind != RO_SAM_STATE_LOOK && seen) ||
            (kind == RO_SAM_STATE_LOOK && (seen & 4u)) ||
            ro_ck_rd32(q + 4) != 0 || ro_ck_rd64(q + 8) != n || size - at < rs)
            return ro_fail(msg, REGOPT_ERR_CORRUPT, "the checkpoint's SAM state is "
                           "malformed (%" PRIu64 " bytes)", size);
        seen |= 1u << (kind == RO_SAM_STATE_LOOK ? 2 : 1);
        for (i = 0; i < n; i++) {
            uint32_t bits = ro_ck_rd32(q + 16 + 4 * i);
            float v;
            memcpy(&v, &bits, sizeof v);
            if (!isfinite(v))
                return ro_fail(msg, REGOPT_ERR_CORRUPT, "the checkpoint's SAM state holds a "
                               "non-finite value at element %" PRIu64, i);
        }
    }
    /* the load cannot fail: take the buffers now (sam.direction and
       sam.looksam may still be 0 here: the options come after this check) */
    if (env->model->has_backend) {
        if (seen & 2u)
            st = vec_alloc(env, &d->state_vec, msg);
        if (st == REGOPT_OK && (seen & 4u))
            st = vec_alloc(env, &l->gv_vec, msg);
        return st;
    }
    if (seen & 2u)
        st = dir_alloc(env, &d->state, msg);
    if (st == REGOPT_OK && (seen & 4u))
        st = dir_alloc(env, &l->gv, msg);
    return st;
}

regopt_status ro_sam_state_load(ro_sam_dir *d, ro_sam_look *l, const ro_env *env,
                                const unsigned char *p, uint64_t size)
{
    const regopt_model *m = env->model;
    size_t n = m->n_trainable;
    uint64_t rs = record_size(n), at;
    regopt_status st = REGOPT_OK;
    d->pending = l->pending = 0;
    d->held = l->held = 0;
    for (at = 0; at < size && st == REGOPT_OK; at += rs) {
        uint32_t kind = ro_ck_rd32(p + at);
        int look = kind == RO_SAM_STATE_LOOK;
        if (m->has_backend) /* a failure leaves that record not held */
            st = ro_vec_load(m, look ? l->gv_vec : d->state_vec, p + at + 16, env->msg);
        else
            ro_ck_rdfloats(look ? l->gv : d->state, p + at + 16, n);
        if (st == REGOPT_OK && look) {
            l->held = 1;
        } else if (st == REGOPT_OK) {
            d->held = 1;
            d->held_mode = (int)kind;
        }
    }
    return st;
}

/* For sam_look.c: one more buffer of n_trainable floats (idempotent). */
regopt_status ro_sam_buffer(const ro_env *env, float **buf, char *msg)
{
    return dir_alloc(env, buf, msg);
}
