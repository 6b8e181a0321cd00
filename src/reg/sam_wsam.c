/* sam_wsam.c — the update directions made from g and g_p: GSAM's (moved
 * here from sam.c) and WSAM's.
 *
 * WSAM (Yue et al., KDD 2023; official atorch WeightedSAM):
 * the sharpness g_p - g weighted by alpha = gamma / (1 - gamma).
 *   decoupled (default): the base optimizer steps with the clean g, then a
 *     raw step w -= lr alpha (g_p - g) (no momentum, preconditioner or
 *     decay), lr the scheduled lr times the group's lr_scale (the official
 *     code uses the param group's lr);
 *   coupled: the base optimizer steps with alpha g_p + (1 - alpha) g.
 * The loops run over the trainer's pieces: the same bits on any number of
 * threads. */
#include "reg/sam_ascent.h"

#include <math.h>


typedef struct wsam_job {
    const float *clean;
    float *sharp;
    const regopt_optimizer *opt;
    float a, b;
    double c;
} wsam_job;

/* Every loop below runs over RO_BLOCK-element blocks of restrict-qualified
 * pointers (GCC -O2 vectorizes only loops of a known count without alias
 * checks), then over the tail with the same operations. */
static void wsam_couple_block(float *restrict gp, const float *restrict g, float a, float b)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++)
        gp[j] = a * gp[j] + b * g[j];
}

static void wsam_couple_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const wsam_job *w = ctx;
    const float *g = w->clean + p->offset;
    float *gp = p->grad, a = w->a, b = w->b;
    size_t j = j0;
    for (; j + RO_BLOCK <= j1; j += RO_BLOCK)
        wsam_couple_block(gp + j, g + j, a, b);
    for (; j < j1; j++)
        gp[j] = a * gp[j] + b * g[j];
}

static void wsam_couple(const ro_par *par, const float *clean, double alpha)
{
    wsam_job w;
    if (alpha == 1.0) /* gamma 1/2: g_p, SAM bit for bit */
        return;
    w.clean = clean;
    w.a = (float)alpha;
    w.b = (float)(1.0 - alpha);
    ro_each_piece(par, wsam_couple_piece, &w);
}

static void wsam_split_block(float *restrict s, float *restrict gr, const float *restrict g)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        s[j] = gr[j] - g[j];
        gr[j] = g[j];
    }
}

static void wsam_split_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const wsam_job *w = ctx;
    const float *g = w->clean + p->offset;
    float *s = w->sharp + p->offset, *gr = p->grad;
    size_t j = j0;
    for (; j + RO_BLOCK <= j1; j += RO_BLOCK)
        wsam_split_block(s + j, gr + j, g + j);
    for (; j < j1; j++) {
        s[j] = gr[j] - g[j];
        gr[j] = g[j];
    }
}

static void wsam_split(const ro_par *par, const float *clean, float *sharp)
{
    wsam_job w;
    w.clean = clean;
    w.sharp = sharp;
    ro_each_piece(par, wsam_split_piece, &w);
}

static void wsam_swap_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const wsam_job *w = ctx;
    ro_exchange(w->sharp + p->offset + j0, p->grad + j0, j1 - j0);
}

static void wsam_swap(const ro_par *par, float *sharp)
{
    wsam_job w;
    w.sharp = sharp;
    ro_each_piece(par, wsam_swap_piece, &w);
}

static void wsam_step_block(float *restrict x, const float *restrict s, float c)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++)
        x[j] = x[j] - c * s[j];
}

static void wsam_step_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ro_sam_wsam *w = ctx;
    const float *s = w->sharp + p->offset;
    float *x = p->data, c = (float)(w->c * w->opt->groups[p->group].lr_scale);
    size_t j = j0;
    if (c == 0.0f)
        return;
    for (; j + RO_BLOCK <= j1; j += RO_BLOCK)
        wsam_step_block(x + j, s + j, c);
    for (; j < j1; j++)
        x[j] = x[j] - c * s[j];
}

static double wsam_alpha(const ro_sam_wsam *w) { return w->gamma / (1.0 - w->gamma); }

/* ---- through the model's backend: one REGOPT_VOP_AXPBY per loop ----------
 * a gp + b g as it is; gr - g is 1 gr + (-1) g, x - c s is 1 x + (-c) s
 * (the same float operations). No all-reduce runs with a backend. */
static regopt_status wsam_finish_vops(ro_sam_wsam *w, const ro_env *env, int32_t clean,
                                      int applied)
{
    const regopt_model *m = env->model;
    double alpha = wsam_alpha(w);
    regopt_status st;
    if (w->mode == RO_SAM_WSAM_COUPLED) {
        if (!applied || alpha == 1.0)
            return REGOPT_OK;
        return ro_vop_axpby(m, REGOPT_VEC_GRADS, REGOPT_VEC_GRADS, clean, (float)alpha,
                            (float)(1.0 - alpha), NULL, NULL, env->msg);
    }
    if (!applied) /* sharp = 0 */
        return ro_vop_copy(m, w->sharp_vec, REGOPT_VEC_NONE, env->msg);
    st = ro_vop_axpby(m, w->sharp_vec, REGOPT_VEC_GRADS, clean, 1.0, -1.0, NULL, NULL,
                      env->msg);
    return st == REGOPT_OK ? ro_vop_copy(m, REGOPT_VEC_GRADS, clean, env->msg) : st;
}

regopt_status ro_sam_wsam_vops(ro_sam_wsam *w, const ro_env *env, const ro_step *st)
{
    const regopt_model *m = env->model;
    double alpha = wsam_alpha(w);
    size_t i, k = 0;
    if (!w->pending || alpha == 0.0) /* as ro_sam_wsam_pieces */
        return REGOPT_OK;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        float c;
        if (!p->grad)
            continue;
        c = (float)(st->lr * alpha * st->opt->groups[p->group].lr_scale);
        w->flags[k] = c != 0.0f; /* wsam_step_piece leaves those tensors */
        w->coef[2 * k] = 1.0;
        w->coef[2 * k + 1] = -(double)c;
        k++;
    }
    return ro_vop_axpby(m, REGOPT_VEC_WEIGHTS, REGOPT_VEC_WEIGHTS, w->sharp_vec, 0.0, 0.0,
                        w->coef, w->flags, env->msg);
}

/* Every replica joins the decoupled sync, with its failure if any, so none
 * waits; a failed sync_ascent (st->synced) already stopped them all. */
regopt_status ro_sam_wsam_finish(ro_sam_wsam *w, const ro_env *env, ro_step *st,
                                 const float *clean, int32_t clean_vec, int applied,
                                 regopt_status rc)
{
    double unused = 0.0;
    w->pending = 0;
    if (env->model->has_backend) {
        if (w->mode && rc == REGOPT_OK)
            rc = wsam_finish_vops(w, env, clean_vec, applied);
        w->pending = w->mode == RO_SAM_WSAM_DECOUPLED && rc == REGOPT_OK;
        return rc;
    }
    if (w->mode == RO_SAM_WSAM_COUPLED && rc == REGOPT_OK && applied)
        wsam_couple(env->par, clean, wsam_alpha(w));
    if (w->mode != RO_SAM_WSAM_DECOUPLED)
        return rc;
    if (rc == REGOPT_OK && applied)
        wsam_split(env->par, clean, w->sharp); /* grads: g */
    else if (rc == REGOPT_OK)
        ro_zero(w->sharp, env->model->n_trainable);
    if (env->has_allreduce && !st->synced) {
        if (rc == REGOPT_OK)
            wsam_swap(env->par, w->sharp); /* grads: g_p - g */
        rc = st->sync(st, rc, &unused, NULL);
        if (rc != REGOPT_OK) {
            st->synced = 1;
            return rc;
        }
        wsam_swap(env->par, w->sharp); /* grads: the local g again */
    }
    w->pending = rc == REGOPT_OK;
    return rc;
}

ro_piece_fn ro_sam_wsam_pieces(ro_sam_wsam *w, const ro_step *st, void **ctx)
{
    double alpha = wsam_alpha(w);
    if (!w->pending || alpha == 0.0) /* gamma 0: the base optimizer alone, bit for bit */
        return NULL;
    w->opt = st->opt;
    w->c = st->lr * alpha;
    *ctx = w;
    return wsam_step_piece;
}

void ro_sam_wsam_after(ro_sam_wsam *w) { w->pending = 0; }

/* GSAM (Zhuang et al. 2022, Alg. 1): with u = g_p / (||g_p|| + delta),
 * g_perp = g - <g, u> u and the update direction g_p - alpha g_perp
 * = (1 + alpha c) g_p - alpha g with c = <g, g_p> / (||g_p|| + delta)^2. */
regopt_status ro_sam_gsam_combine(const ro_env *env, const float *clean, int32_t clean_vec,
                                  double alpha, double delta)
{
    const regopt_model *m = env->model;
    const float *g = clean;
    double dot = 0.0, np2 = 0.0, c, den;
    float a = (float)alpha, cp;
    size_t i, j;
    regopt_status st;
    if (m->has_backend) { /* the sums in element order (REGOPT_VOP_DOT variant 1),
                             then cp gp - a g as cp gp + (-a) g */
        st = ro_vop_reduce(m, REGOPT_VOP_DOT, 1, clean_vec, REGOPT_VEC_GRADS, SIZE_MAX, &dot,
                           env->msg);
        if (st == REGOPT_OK)
            st = ro_vop_reduce(m, REGOPT_VOP_DOT, 1, REGOPT_VEC_GRADS, REGOPT_VEC_GRADS,
                               SIZE_MAX, &np2, env->msg);
        if (st != REGOPT_OK)
            return st;
        den = sqrt(np2) + delta;
        c = den > 0.0 ? dot / (den * den) : 0.0;
        return ro_vop_axpby(m, REGOPT_VEC_GRADS, REGOPT_VEC_GRADS, clean_vec,
                            (float)(1.0 + alpha * c), -a, NULL, NULL, env->msg);
    }
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad)
            continue;
        for (j = 0; j < p->count; j++) {
            dot += (double)g[p->offset + j] * p->grad[j];
            np2 += (double)p->grad[j] * p->grad[j];
        }
    }
    den = sqrt(np2) + delta;
    c = den > 0.0 ? dot / (den * den) : 0.0;
    cp = (float)(1.0 + alpha * c);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad)
            continue;
        for (j = 0; j < p->count; j++)
            p->grad[j] = cp * p->grad[j] - a * g[p->offset + j];
    }
    return REGOPT_OK;
}
