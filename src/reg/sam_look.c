/* sam_look.c — LookSAM (Liu et al., CVPR 2022; no official code; the
 * kozistr and rollovd ports, defaults rho 0.1, k 10, alpha 0.7): every k-th
 * step (sam.every, from step 0) is a full SAM step, and stores per tensor
 *   g_v = g_s - ||g_s|| cos(g, g_s) g / ||g|| = g_s - (<g, g_s> / ||g||^2) g,
 * the part of the perturbed gradient g_s orthogonal to the clean g; the
 * steps between take one gradient g and reuse it, per tensor:
 *   g <- g + alpha ||g|| / (||g_v|| + 1e-8) g_v.
 * Tensors with ||g|| = 0 store g_v = g_s (the ports divide by zero).
 * Per-tensor sums are in double, in the sixteen lanes of ro_sum_squares
 * and ro_dot (vectorized: the sums in element order bounded the step by
 * the adder's latency), on the calling thread: the same bits on any number
 * of threads. g_v is committed after the
 * update only (a failed step leaves it) and saved in checkpoints. */
#include "reg/sam_ascent.h"

#include <math.h>

regopt_status ro_sam_look_reserve(ro_sam_look *l, const ro_env *env, char *msg)
{
    regopt_status st;
    if (!env || !l->on)
        return REGOPT_OK;
    st = ro_sam_buffer(env, &l->gv, msg);
    return st == REGOPT_OK ? ro_sam_buffer(env, &l->next, msg) : st;
}

void ro_sam_look_release(ro_sam_look *l, const ro_env *env)
{
    ro_free(env->alloc, l->gv);
    ro_free(env->alloc, l->next);
    l->gv = l->next = NULL;
    l->held = l->pending = 0;
}

/* The elementwise loops over RO_BLOCK-element blocks of restrict-qualified
 * pointers (GCC -O2 vectorizes only loops of a known count without alias
 * checks), then the tail with the same operations. */
static void look_store_block(float *restrict v, const float *restrict gs, const float *restrict g,
                        float c)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++)
        v[j] = gs[j] - c * g[j];
}

static void look_reuse_block(float *restrict g, const float *restrict v, float c)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++)
        g[j] = g[j] + c * v[j];
}

/* ---- through the model's backend -------------------------------------------
 * The per-tensor sums are REGOPT_VOP_DOT variant 0 (ro_dot's lanes, which
 * are ro_sum_squares' when y is x), one call per tensor; the loops one
 * REGOPT_VOP_AXPBY with per-tensor coefficients: gs - c g is 1 gs + (-c) g
 * and g + c v is 1 g + c v, the same float operations. */

static regopt_status tensor_dot(const ro_env *env, int32_t x, int32_t y, size_t k, double *out)
{
    return ro_vop_reduce(env->model, REGOPT_VOP_DOT, 0, x, y, k, out, env->msg);
}

static regopt_status store_vops(ro_sam_look *l, const ro_env *env, int32_t clean)
{
    const regopt_model *m = env->model;
    size_t i, k = 0;
    regopt_status st = REGOPT_OK;
    for (i = 0; i < m->n_params && st == REGOPT_OK; i++) {
        double n2 = 0.0, d = 0.0;
        if (!m->params[i].grad)
            continue;
        st = tensor_dot(env, clean, clean, k, &n2);
        if (st == REGOPT_OK)
            st = tensor_dot(env, clean, REGOPT_VEC_GRADS, k, &d);
        l->coef[2 * k] = 1.0;
        l->coef[2 * k + 1] = -(double)(n2 > 0.0 ? (float)(d / n2) : 0.0f);
        k++;
    }
    if (st == REGOPT_OK)
        st = ro_vop_axpby(m, l->next_vec, REGOPT_VEC_GRADS, clean, 0.0, 0.0, l->coef, NULL,
                          env->msg);
    l->pending = st == REGOPT_OK;
    return st;
}

static regopt_status reuse_vops(const ro_sam_look *l, const ro_env *env)
{
    const regopt_model *m = env->model;
    size_t i, k = 0;
    regopt_status st = REGOPT_OK;
    for (i = 0; i < m->n_params && st == REGOPT_OK; i++) {
        double gg = 0.0, vv = 0.0;
        if (!m->params[i].grad)
            continue;
        st = tensor_dot(env, REGOPT_VEC_GRADS, REGOPT_VEC_GRADS, k, &gg);
        if (st == REGOPT_OK)
            st = tensor_dot(env, l->gv_vec, l->gv_vec, k, &vv);
        l->coef[2 * k] = 1.0;
        l->coef[2 * k + 1] = (float)(l->alpha * sqrt(gg) / (sqrt(vv) + 1e-8));
        k++;
    }
    if (st != REGOPT_OK)
        return st;
    return ro_vop_axpby(m, REGOPT_VEC_GRADS, REGOPT_VEC_GRADS, l->gv_vec, 0.0, 0.0, l->coef,
                        NULL, env->msg);
}

regopt_status ro_sam_look_store(ro_sam_look *l, const ro_env *env, const float *clean,
                                int32_t clean_vec)
{
    const regopt_model *m = env->model;
    size_t i, j;
    if (m->has_backend)
        return store_vops(l, env, clean_vec);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        const float *g = clean + p->offset, *gs = p->grad;
        float *v = l->next + p->offset, c;
        double n2;
        if (!p->grad)
            continue;
        n2 = ro_sum_squares(g, p->count);
        c = n2 > 0.0 ? (float)(ro_dot(g, gs, p->count) / n2) : 0.0f;
        for (j = 0; j + RO_BLOCK <= p->count; j += RO_BLOCK)
            look_store_block(v + j, gs + j, g + j, c);
        for (; j < p->count; j++)
            v[j] = gs[j] - c * g[j];
    }
    l->pending = 1;
    return REGOPT_OK;
}

regopt_status ro_sam_look_reuse(const ro_sam_look *l, const ro_env *env)
{
    const regopt_model *m = env->model;
    size_t i, j;
    if (!l->held)
        return REGOPT_OK;
    if (m->has_backend)
        return reuse_vops(l, env);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        const float *v = l->gv + p->offset;
        float *g = p->grad, c;
        if (!p->grad)
            continue;
        c = (float)(l->alpha * sqrt(ro_sum_squares(g, p->count)) /
                    (sqrt(ro_sum_squares(v, p->count)) + 1e-8));
        for (j = 0; j + RO_BLOCK <= p->count; j += RO_BLOCK)
            look_reuse_block(g + j, v + j, c);
        for (; j < p->count; j++)
            g[j] = g[j] + c * v[j];
    }
    return REGOPT_OK;
}

void ro_sam_look_commit(ro_sam_look *l)
{
    float *t;
    int32_t v;
    if (!l->pending)
        return;
    t = l->gv;
    l->gv = l->next;
    l->next = t;
    v = l->gv_vec; /* with a backend; none and none otherwise */
    l->gv_vec = l->next_vec;
    l->next_vec = v;
    l->held = 1;
    l->pending = 0;
}
