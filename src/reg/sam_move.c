/* sam_move.c — SAM's move of the weights (Foret et al., ICLR 2021, eq. 2;
 * ASAM: Kwon et al., ICML 2021, eq. 7): the ascent norm ||T a||, the
 * perturbation w -> w + eps = w + rho T^2 a / ||T a|| saving w, and the
 * restore by copy (w + eps - eps is not w in floating point). On the host's
 * buffers, a piece at a time on the trainer's threads, or through the
 * model's backend (regopt_model_set_backend), one call per operation. The
 * range kernels are shared with the CPU backend, which is what makes its
 * trajectories the same bits. */
#include "reg/reg.h"
#include "reg/sam_ascent.h"

#include <math.h>
#include <string.h>

static int adaptive(const ro_sam_state *s, const ro_param *p)
{
    return s->adaptive && s->group_adaptive[p->group];
}

void ro_sam_ascent_init(ro_sam_ascent *a, const ro_sam_state *s, const float *dir,
                        double wd_scale, double c, int zero)
{
    a->s = s;
    a->dir = dir;
    /* sam.c passes a direction exactly when sam.direction makes one; with a
       backend it is buf_vec (dir stays NULL there) */
    a->dir_vec = s->dir.mode != RO_SAM_DIR_GRADIENT ? s->dir.buf_vec : REGOPT_VEC_GRADS;
    a->wd = (float)(s->ascent_wd * wd_scale);
    a->eta = (float)s->eta;
    a->c = (float)c;
    a->zero = zero && !dir && s->dir.mode == RO_SAM_DIR_GRADIENT;
}

static const float *direction(const ro_sam_ascent *a, const ro_param *p, size_t j0)
{
    return a->dir ? a->dir + p->offset + j0 : p->grad + j0;
}

double ro_sam_squares_range(const float *w, const float *g, size_t n, float wd, float eta,
                            int perturbed, int ad)
{
    if (!perturbed) /* SAM-ON: out of the norm */
        return 0.0;
    if (!ad && wd == 0.0f)
        return ro_sum_squares(g, n);
    return ro_sum_scaled_squares(w, g, n, wd, eta, ad);
}

double ro_sam_ascent_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ro_sam_ascent *a = ctx;
    return ro_sam_squares_range(p->data + j0, direction(a, p, j0), j1 - j0, a->wd, a->eta,
                                a->s->group_perturb[p->group], adaptive(a->s, p));
}

/* One block of the plain ascent (T = 1, no ascent weight decay):
 * save = w, w += c a; the same operations as the general loop. */
static void perturb_block(float *restrict w, const float *restrict g, float *restrict save,
                          float c)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        save[j] = w[j];
        w[j] = w[j] + c * g[j];
    }
}

/* The same, zeroing g once read (the perturbed passes start from zero). */
static void perturb_block_zero(float *restrict w, float *restrict g, float *restrict save,
                               float c)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        save[j] = w[j];
        w[j] = w[j] + c * g[j];
        g[j] = 0.0f;
    }
}

/* One block of the ASAM ascent: T = |w| + eta, a = g + wd w. */
static void perturb_block_adaptive(float *restrict w, const float *restrict g,
                                   float *restrict save, float c, float wd, float eta)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        float x = w[j], a = g[j] + wd * x, tw = fabsf(x) + eta;
        save[j] = x;
        w[j] = x + c * (tw * tw * a);
    }
}

void ro_sam_perturb_range(float *w, const float *g, float *save, size_t n, float c, float wd,
                          float eta, int perturbed, int ad, float *zero_g)
{
    size_t j = 0, zeroed = 0; /* elements whose gradient the blocks zeroed */
    if (!perturbed) { /* SAM-ON: eps = 0, restored by copy all the same */
        memcpy(save, w, n * sizeof(float));
    } else {
        if (!ad && wd == 0.0f && zero_g) { /* and the passes' zeroing, in this pass */
            for (; j + RO_BLOCK <= n; j += RO_BLOCK)
                perturb_block_zero(w + j, zero_g + j, save + j, c);
            zeroed = j;
        } else if (!ad && wd == 0.0f) { /* tw = 1: c (1 * 1 * a) is exactly c a */
            for (; j + RO_BLOCK <= n; j += RO_BLOCK)
                perturb_block(w + j, g + j, save + j, c);
        } else if (ad) {
            for (; j + RO_BLOCK <= n; j += RO_BLOCK)
                perturb_block_adaptive(w + j, g + j, save + j, c, wd, eta);
        }
        for (; j < n; j++) {
            float x = w[j], s = g[j] + wd * x;
            float tw = ad ? fabsf(x) + eta : 1.0f;
            save[j] = x;
            w[j] = x + c * (tw * tw * s);
        }
    }
    if (zero_g) /* what the blocks did not zero (SAM-ON, ASAM, the tail), once read */
        ro_zero(zero_g + zeroed, n - zeroed);
}

static void perturb_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ro_sam_ascent *a = ctx;
    ro_sam_perturb_range(p->data + j0, direction(a, p, j0), a->s->save + p->offset + j0,
                         j1 - j0, a->c, a->wd, a->eta, a->s->group_perturb[p->group],
                         adaptive(a->s, p), a->zero ? p->grad + j0 : NULL);
    if (a->zero)
        ro_param_zero_host_grad(p, j0, j1);
}

static void restore_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ro_sam_state *s = ctx;
    memcpy(p->data + j0, s->save + p->offset + j0, (j1 - j0) * sizeof(float));
}

/* ---- through the backend -------------------------------------------------- */


/* The per-tensor bits of REGOPT_VOP_SAM_*: 1 in the ascent, 2 ASAM. */
static void backend_flags(const ro_reg *r)
{
    const ro_sam_state *s = r->self;
    const regopt_model *m = r->env->model;
    size_t i, k = 0;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (p->grad)
            s->flags[k++] = (s->group_perturb[p->group] ? 1 : 0) | (adaptive(s, p) ? 2 : 0);
    }
}

static regopt_status backend_move(ro_reg *r, const ro_sam_ascent *a, int32_t code,
                                  double *out)
{
    const ro_sam_state *s = r->self;
    regopt_vop op;
    regopt_status st;
    backend_flags(r);
    ro_vop_init(r->env->model, &op, code);
    op.x = REGOPT_VEC_WEIGHTS;
    op.y = a->dir_vec;
    op.flags = s->flags;
    op.s[0] = a->c;
    op.s[1] = a->wd;
    op.s[2] = a->eta;
    if (code == REGOPT_VOP_SAM_PERTURB) {
        op.z = s->save_vec;
        op.variant = a->zero;
    }
    st = ro_vop_run(r->env->model, &op, r->env->msg);
    if (out)
        *out = op.out[0];
    return st;
}

/* A buffer when `needed` and not there yet. */
static regopt_status reserve_vec(ro_reg *r, int32_t *vec, int needed)
{
    if (!needed || *vec != REGOPT_VEC_NONE)
        return REGOPT_OK;
    return ro_vec_alloc((regopt_model *)r->env->model, vec, r->msg); /* its buffer ids */
}

regopt_status ro_sam_backend_reserve(ro_reg *r)
{
    ro_sam_state *s = r->self;
    const regopt_model *m = r->env->model;
    size_t n = m->n_params ? m->n_params : 1;
    regopt_status st;
    int dir = s->dir.mode != RO_SAM_DIR_GRADIENT;
    if (!ro_reg_on_backend(r))
        return REGOPT_OK;
    if (!s->flags) {
        s->flags = ro_calloc(r->env->alloc, n, sizeof *s->flags);
        s->coef = ro_calloc(r->env->alloc, 2 * n, sizeof *s->coef);
        if (!s->flags || !s->coef) {
            ro_free(r->env->alloc, s->flags);
            ro_free(r->env->alloc, s->coef);
            s->flags = NULL;
            s->coef = NULL;
            return ro_fail(r->msg, REGOPT_ERR_NO_MEMORY, "out of memory for SAM's tensor "
                           "flags");
        }
    }
    s->look.coef = s->wsam.coef = s->coef;
    s->wsam.flags = s->flags;
    /* what it holds stays until detach, as the host buffers do */
    st = reserve_vec(r, &s->save_vec, 1);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->accum_vec, s->m_rows > 0);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->clean_vec, s->gsam || s->wsam.mode || s->look.on);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->wsam.sharp_vec, s->wsam.mode == RO_SAM_WSAM_DECOUPLED);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->dir.state_vec, dir);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->dir.next_vec, dir);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->dir.buf_vec, dir);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->look.gv_vec, s->look.on);
    if (st == REGOPT_OK)
        st = reserve_vec(r, &s->look.next_vec, s->look.on);
    return st;
}

void ro_sam_backend_release(ro_reg *r)
{
    ro_sam_state *s = r->self;
    int32_t *vecs[] = {&s->save_vec,      &s->accum_vec,     &s->clean_vec,
                       &s->wsam.sharp_vec, &s->dir.state_vec, &s->dir.next_vec,
                       &s->dir.buf_vec,    &s->look.gv_vec,   &s->look.next_vec};
    size_t i;
    if (!ro_reg_on_backend(r))
        return;
    for (i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
        ro_vec_free(r->env->model, vecs[i]);
    ro_free(r->env->alloc, s->flags);
    ro_free(r->env->alloc, s->coef);
    s->flags = NULL;
    s->coef = s->look.coef = s->wsam.coef = NULL;
    s->wsam.flags = NULL;
}

/* ---- the three operations ------------------------------------------------ */

regopt_status ro_sam_ascent_norm(ro_reg *r, const float *dir, double wd_scale, double *norm)
{
    ro_sam_ascent a;
    double sum = 0.0;
    regopt_status st = REGOPT_OK;
    ro_sam_ascent_init(&a, r->self, dir, wd_scale, 0.0, 0);
    if (ro_reg_on_backend(r))
        st = backend_move(r, &a, REGOPT_VOP_SAM_SQUARES, &sum);
    else
        sum = ro_sum_pieces(r->env->par, ro_sam_ascent_squares, &a);
    *norm = sqrt(sum);
    return st;
}

regopt_status ro_sam_perturb(ro_reg *r, const float *dir, double c, double wd_scale, int zero)
{
    ro_sam_ascent a;
    ro_sam_ascent_init(&a, r->self, dir, wd_scale, c, zero);
    if (ro_reg_on_backend(r))
        return backend_move(r, &a, REGOPT_VOP_SAM_PERTURB, NULL);
    ro_each_piece(r->env->par, perturb_piece, &a);
    return REGOPT_OK;
}

regopt_status ro_sam_restore(ro_reg *r)
{
    ro_sam_state *s = r->self;
    if (ro_reg_on_backend(r)) {
        regopt_vop op;
        ro_vop_init(r->env->model, &op, REGOPT_VOP_COPY);
        op.x = REGOPT_VEC_WEIGHTS;
        op.y = s->save_vec;
        return ro_vop_run(r->env->model, &op, r->env->msg);
    }
    ro_each_piece(r->env->par, restore_piece, s);
    return REGOPT_OK;
}
