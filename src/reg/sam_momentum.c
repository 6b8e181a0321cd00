/* sam_momentum.c — Momentum-SAM (Becker et al. 2024, arXiv 2401.12033;
 * official MarlonBecker/MSAM): ONE gradient pass per step, at
 * w + eps with eps = -rho v / (||v|| + delta), v the base optimizer's first
 * block (SGD's momentum buffer, Adam's and RAdam's uncorrected m, read
 * through ro_step.opt_m); the weights are put back by copy and the base
 * optimizer steps from w with that gradient. No perturbation while v = 0
 * (the first step; SGD without momentum never has one). The pass is the
 * step's only one, so it is flagged TRAIN without PERTURBED_WEIGHTS: batch
 * norm sees it (the official recipe re-estimates the statistics at w at the
 * end of training: the host's business). */
#include "reg/sam_ascent.h"

#include <math.h>
#include <string.h>

typedef struct msam_job {
    const float *v;
    float *save;
    float c;
} msam_job;

static double msam_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const msam_job *a = ctx;
    return ro_sum_squares(a->v + p->offset + j0, j1 - j0);
}

/* One block: save = w, w += c v; restrict-qualified so GCC -O2 vectorizes
 * it without a runtime alias check (the same operations as the tail). */
static void msam_perturb_block(float *restrict w, const float *restrict v, float *restrict save,
                               float c)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        save[j] = w[j];
        w[j] = w[j] + c * v[j];
    }
}

static void msam_perturb_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const msam_job *a = ctx;
    const float *v = a->v + p->offset, c = a->c;
    float *w = p->data, *save = a->save + p->offset;
    size_t j = j0;
    for (; j + RO_BLOCK <= j1; j += RO_BLOCK)
        msam_perturb_block(w + j, v + j, save + j, c);
    for (; j < j1; j++) {
        save[j] = w[j];
        w[j] = w[j] + c * v[j];
    }
}

static void msam_restore_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const msam_job *a = ctx;
    memcpy(p->data + j0, a->save + p->offset + j0, (j1 - j0) * sizeof(float));
}

regopt_status ro_sam_msam(const ro_env *env, ro_step *st, float *save, double rho,
                          double delta, int *perturbed, double *loss, double *norm,
                          int *applied)
{
    msam_job a;
    regopt_status rc;
    a.v = st->opt_m;
    a.save = save;
    *applied = 0;
    *norm = sqrt(ro_sum_pieces(env->par, msam_squares, &a));
    if (!(*norm > 0.0) || !isfinite(*norm) || rho == 0.0)
        return st->eval_all(st, REGOPT_PASS_TRAIN, RO_SEED_TASK, loss);
    a.c = (float)(-rho / (*norm + delta));
    ro_each_piece(env->par, msam_perturb_piece, &a);
    *perturbed = 1;
    rc = st->eval_all(st, REGOPT_PASS_TRAIN, RO_SEED_TASK, loss);
    ro_each_piece(env->par, msam_restore_piece, &a);
    *perturbed = 0;
    *applied = 1;
    return rc;
}

/* Through the model's backend: ||v|| as REGOPT_VOP_SUM_SQUARES (the
 * chunks of ro_sum_pieces), save = w, w + c v as 1 w + c v, back by copy.
 * A failed call leaves w where it was, or (the copy back) perturbed set
 * for sam.c to try again. */
regopt_status ro_sam_msam_vops(const ro_env *env, ro_step *st, int32_t save_vec, double rho,
                               double delta, int *perturbed, double *loss, double *norm,
                               int *applied)
{
    const regopt_model *m = env->model;
    double sum = 0.0;
    float c;
    regopt_status rc, back;
    *applied = 0;
    rc = ro_vop_reduce(m, REGOPT_VOP_SUM_SQUARES, 0, st->opt_m_vec, REGOPT_VEC_NONE, SIZE_MAX,
                       &sum, env->msg);
    if (rc != REGOPT_OK)
        return rc;
    *norm = sqrt(sum);
    if (!(*norm > 0.0) || !isfinite(*norm) || rho == 0.0)
        return st->eval_all(st, REGOPT_PASS_TRAIN, RO_SEED_TASK, loss);
    c = (float)(-rho / (*norm + delta));
    rc = ro_vop_copy(m, save_vec, REGOPT_VEC_WEIGHTS, env->msg);
    if (rc == REGOPT_OK)
        rc = ro_vop_axpby(m, REGOPT_VEC_WEIGHTS, REGOPT_VEC_WEIGHTS, st->opt_m_vec, 1.0, c,
                          NULL, NULL, env->msg);
    if (rc != REGOPT_OK)
        return rc;
    *perturbed = 1;
    rc = st->eval_all(st, REGOPT_PASS_TRAIN, RO_SEED_TASK, loss);
    back = ro_vop_copy(m, REGOPT_VEC_WEIGHTS, save_vec, env->msg);
    *perturbed = back != REGOPT_OK;
    *applied = 1;
    return rc != REGOPT_OK ? rc : back;
}
