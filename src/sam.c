/* sam.c — the sharpness-aware family: SAM (Foret et al., ICLR 2021, Alg. 1),
 * ASAM (Kwon et al., ICML 2021), GSAM (Zhuang et al., ICLR 2022), with
 * m-sharpness and SAM every k-th step. The library evaluates the gradient
 * at w, moves the host's weights to w + eps, evaluates it again, and puts
 * the weights back by copy, so the base optimizer steps from exactly w. */
#include "internal.h"

#include <math.h>
#include <string.h>

void ro_sam_defaults(ro_sam *s)
{
    memset(s, 0, sizeof *s);
    s->rho = 0.05;
    s->delta = 1e-12;
    s->eta = 0.01;
    s->gsam_alpha = 0.4;
    s->every = 1;
    s->same_seed = 1;
    memset(s->group_adaptive, 1, sizeof s->group_adaptive);
}

static regopt_status reserve_one(regopt_trainer *t, float **buf, int needed)
{
    if (!needed || *buf)
        return REGOPT_OK;
    *buf = ro_calloc(&t->alloc, t->model->n_trainable, sizeof(float));
    if (!*buf)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for a SAM buffer of %zu floats", t->model->n_trainable);
    return REGOPT_OK;
}

regopt_status ro_sam_reserve(regopt_trainer *t)
{
    ro_sam *s = &t->sam;
    regopt_status st;
    if (!s->enabled)
        return REGOPT_OK;
    st = reserve_one(t, &s->save, 1);
    if (st == REGOPT_OK)
        st = reserve_one(t, &s->accum, s->m_rows > 0);
    if (st == REGOPT_OK)
        st = reserve_one(t, &s->clean, s->gsam);
    return st;
}

void ro_sam_release(regopt_trainer *t)
{
    ro_sam *s = &t->sam;
    ro_free(&t->alloc, s->save);
    ro_free(&t->alloc, s->accum);
    ro_free(&t->alloc, s->clean);
    s->save = s->accum = s->clean = NULL;
}

static void *field(ro_sam *s, regopt_key key, int *is_double)
{
    *is_double = 1;
    switch (key) {
    case REGOPT_SAM_RHO: return &s->rho;
    case REGOPT_SAM_DELTA: return &s->delta;
    case REGOPT_SAM_ETA: return &s->eta;
    case REGOPT_SAM_GSAM_ALPHA: return &s->gsam_alpha;
    case REGOPT_SAM_RHO_MIN: return &s->rho_min;
    case REGOPT_SAM_ASCENT_WEIGHT_DECAY: return &s->ascent_wd;
    default: break;
    }
    *is_double = 0;
    switch (key) {
    case REGOPT_SAM_ADAPTIVE: return &s->adaptive;
    case REGOPT_SAM_GSAM: return &s->gsam;
    case REGOPT_SAM_RHO_FOLLOWS_LR: return &s->rho_follows_lr;
    case REGOPT_SAM_SAME_SEED: return &s->same_seed;
    case REGOPT_SAM_SYNC_ASCENT: return &s->sync_ascent;
    default: return NULL;
    }
}

/* The value has passed the key table's bounds check. Options that need a
 * buffer allocate it here, so a step never does. */
regopt_status ro_sam_set(regopt_trainer *t, regopt_key key, double value)
{
    ro_sam *s = &t->sam, old = *s;
    int is_double;
    void *f = field(s, key, &is_double);
    regopt_status st;
    if (key == REGOPT_SAM_EVERY)
        s->every = (int64_t)value;
    else if (key == REGOPT_SAM_M_ROWS)
        s->m_rows = (int64_t)value;
    else if (f && is_double)
        *(double *)f = value;
    else if (f)
        *(int *)f = (int)value;
    st = ro_sam_reserve(t);
    if (st != REGOPT_OK) {
        old.save = s->save; /* keep whatever was allocated; freed with the trainer */
        old.accum = s->accum;
        old.clean = s->clean;
        *s = old;
    }
    return st;
}

double ro_sam_get(const regopt_trainer *t, regopt_key key)
{
    int is_double;
    void *f = field((ro_sam *)&t->sam, key, &is_double);
    if (key == REGOPT_SAM_EVERY)
        return (double)t->sam.every;
    if (key == REGOPT_SAM_M_ROWS)
        return (double)t->sam.m_rows;
    if (!f)
        return 0.0;
    return is_double ? *(double *)f : (double)*(int *)f;
}

int ro_sam_due(const regopt_trainer *t)
{
    return t->step % (uint64_t)t->sam.every == 0;
}

regopt_status ro_sam_validate(regopt_trainer *t, const regopt_batch *batches, size_t count)
{
    const ro_sam *s = &t->sam;
    size_t bi;
    if (s->m_rows > 0 && s->sync_ascent && t->allreduce)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "sam.sync_ascent cannot be combined with sam.m_rows: every chunk "
                       "makes its own ascent");
    if (s->m_rows > 0 && t->model->input_width)
        for (bi = 0; bi < count; bi++) {
            const regopt_batch *b = ro_batch_at(batches, bi);
            if (b->input_rows && b->input_rows % b->rows)
                return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                               "batch %zu: sam.m_rows needs input_rows (%zu) to be a multiple "
                               "of rows (%zu)", bi, b->input_rows, b->rows);
        }
    return REGOPT_OK;
}

/* GSAM's schedule: rho follows the learning rate between rho_min and rho. */
static double rho_in_force(const regopt_trainer *t)
{
    const ro_sam *s = &t->sam;
    double lr_max = t->opt->lr, lr_min = lr_max * t->opt->min_lr_ratio;
    double r, lo = s->rho_min < s->rho ? s->rho_min : s->rho, hi = s->rho_min + s->rho - lo;
    if (!s->rho_follows_lr || !(lr_max > lr_min))
        return s->rho;
    r = s->rho_min + (s->rho - s->rho_min) * (ro_trainer_lr(t) - lr_min) / (lr_max - lr_min);
    /* during warm-up lr < lr_min: never let rho leave [rho_min, rho] (a
       negative radius would descend instead of ascend) */
    return r < lo ? lo : r > hi ? hi : r;
}

static int adaptive(const regopt_trainer *t, const ro_param *p)
{
    return t->sam.adaptive && t->sam.group_adaptive[p->group];
}

/* The scalars of one ascent, shared by its passes over the tensors. */
typedef struct ascent_job {
    const regopt_trainer *t;
    float wd, eta, c;
} ascent_job;

static double ascent_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ascent_job *a = ctx;
    int ad = adaptive(a->t, p);
    if (!ad && a->wd == 0.0f)
        return ro_sum_squares(p->grad + j0, j1 - j0);
    return ro_sum_scaled_squares(p->data + j0, p->grad + j0, j1 - j0, a->wd, a->eta, ad);
}

/* ||T a||, a = g + wd w (the ascent gradient), T = |w| + eta on ASAM tensors. */
static double ascent_norm(const regopt_trainer *t, double wd_scale)
{
    ascent_job a;
    a.t = t;
    a.wd = (float)(t->sam.ascent_wd * wd_scale);
    a.eta = (float)t->sam.eta;
    a.c = 0.0f;
    return sqrt(ro_sum_pieces(t, ascent_squares, &a));
}

/* GCC at -O2 vectorizes only loops whose trip count is a known multiple
 * of the vector width: the elementwise loops run over blocks of BLOCK
 * elements through block pointers, then a scalar tail. */
#define BLOCK 16

/* One block of the plain ascent (T = 1, no ascent weight decay):
 * save = w, w += c a; the same operations as the general loop. */
static void perturb_block(float *restrict w, const float *restrict g, float *restrict save,
                          float c)
{
    size_t j;
    for (j = 0; j < BLOCK; j++) {
        save[j] = w[j];
        w[j] = w[j] + c * g[j];
    }
}

/* One block of the ASAM ascent: T = |w| + eta, a = g + wd w. */
static void perturb_block_adaptive(float *restrict w, const float *restrict g,
                                   float *restrict save, float c, float wd, float eta)
{
    size_t j;
    for (j = 0; j < BLOCK; j++) {
        float x = w[j], a = g[j] + wd * x, tw = fabsf(x) + eta;
        save[j] = x;
        w[j] = x + c * (tw * tw * a);
    }
}

static void perturb_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ascent_job *a = ctx;
    const float wd = a->wd, eta = a->eta, c = a->c;
    float *w = p->data + j0, *save = a->t->sam.save + p->offset + j0;
    const float *g = p->grad + j0;
    size_t n = j1 - j0, j = 0;
    int ad = adaptive(a->t, p);
    if (!ad && wd == 0.0f) /* tw = 1: c (1 * 1 * a) is exactly c a */
        for (; j + BLOCK <= n; j += BLOCK)
            perturb_block(w + j, g + j, save + j, c);
    else if (ad)
        for (; j + BLOCK <= n; j += BLOCK)
            perturb_block_adaptive(w + j, g + j, save + j, c, wd, eta);
    for (; j < n; j++) {
        float x = w[j], s = g[j] + wd * x;
        float tw = ad ? fabsf(x) + eta : 1.0f;
        save[j] = x;
        w[j] = x + c * (tw * tw * s);
    }
}

/* Save w and move it to w + eps, eps = scale * T^2 a, in one pass. */
static void perturb(regopt_trainer *t, double scale, double wd_scale)
{
    ascent_job a;
    a.t = t;
    a.wd = (float)(t->sam.ascent_wd * wd_scale);
    a.eta = (float)t->sam.eta;
    a.c = (float)scale;
    ro_each_piece(t, perturb_piece, &a);
}

static void restore_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const regopt_trainer *t = ctx;
    memcpy(p->data + j0, t->sam.save + p->offset + j0, (j1 - j0) * sizeof(float));
}

/* Put w back by copy: w + eps - eps is not w in floating point. */
static void restore(regopt_trainer *t) { ro_each_piece(t, restore_piece, t); }

/* dst (flat, trainable order) += or = the gradient buffers. */
static void gather(const regopt_trainer *t, float *dst, int add)
{
    const regopt_model *m = t->model;
    size_t i, j;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        float *d = dst + p->offset;
        if (!p->grad)
            continue;
        if (add)
            for (j = 0; j < p->count; j++)
                d[j] += p->grad[j];
        else
            memcpy(d, p->grad, p->count * sizeof(float));
    }
}

static void scatter(const regopt_trainer *t, const float *src)
{
    const regopt_model *m = t->model;
    size_t i;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (p->grad)
            memcpy(p->grad, src + p->offset, p->count * sizeof(float));
    }
}

/* GSAM (Zhuang et al. 2022, Alg. 1): with u = g_p / (||g_p|| + delta),
 * g_perp = g - <g, u> u and the update direction g_p - alpha g_perp
 * = (1 + alpha c) g_p - alpha g with c = <g, g_p> / (||g_p|| + delta)^2. */
static void gsam_combine(regopt_trainer *t)
{
    const regopt_model *m = t->model;
    const float *g = t->sam.clean;
    double dot = 0.0, np2 = 0.0, c, den;
    float a = (float)t->sam.gsam_alpha, cp;
    size_t i, j;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad)
            continue;
        for (j = 0; j < p->count; j++) {
            dot += (double)g[p->offset + j] * p->grad[j];
            np2 += (double)p->grad[j] * p->grad[j];
        }
    }
    den = sqrt(np2) + t->sam.delta;
    c = den > 0.0 ? dot / (den * den) : 0.0;
    cp = (float)(1.0 + t->sam.gsam_alpha * c);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad)
            continue;
        for (j = 0; j < p->count; j++)
            p->grad[j] = cp * p->grad[j] - a * g[p->offset + j];
    }
}

static regopt_status check_norm(regopt_trainer *t, double norm)
{
    if (!isfinite(norm))
        return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                       "the SAM ascent gradient is not finite (norm %g)", norm);
    return REGOPT_OK;
}

static uint32_t perturbed_role(const regopt_trainer *t)
{
    return t->sam.same_seed ? RO_SEED_TASK : RO_SEED_SAM_PERTURBED;
}

/* One ascent over the gradient now in the buffers: perturb, evaluate the
 * perturbed gradient with `passes`, restore. *applied stays 0 (and the
 * buffers keep g) when ||T a|| = 0. */
typedef regopt_status (*ro_passes_fn)(regopt_trainer *t, void *ctx, double *loss);

static regopt_status ascend(regopt_trainer *t, double rho, double wd_scale,
                            ro_passes_fn passes, void *ctx, double *norm, double *loss,
                            int *applied)
{
    regopt_status st;
    *norm = ascent_norm(t, wd_scale);
    st = check_norm(t, *norm);
    if (st != REGOPT_OK || *norm == 0.0)
        return st;
    perturb(t, rho / (*norm + t->sam.delta), wd_scale);
    st = passes(t, ctx, loss);
    restore(t);
    *applied = 1;
    return st;
}

/* ---- the whole step as one ascent ------------------------------------- */

typedef struct whole_ctx {
    const regopt_batch *batches;
    size_t count;
    double inv_weight;
} whole_ctx;

static regopt_status whole_perturbed(regopt_trainer *t, void *ctx, double *loss)
{
    const whole_ctx *c = ctx;
    return ro_gradient(t, c->batches, c->count, c->inv_weight,
                       REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS, perturbed_role(t),
                       loss);
}

static regopt_status whole_step(regopt_trainer *t, const whole_ctx *c, double *weight,
                                ro_sam_result *r, int *stopped)
{
    regopt_status st;
    double pert = 0.0;
    st = ro_gradient(t, c->batches, c->count, c->inv_weight, REGOPT_PASS_TRAIN, RO_SEED_TASK,
                     &r->clean_loss);
    if (t->allreduce && t->sam.sync_ascent) {
        /* every replica stops here if any failed, so no later sync is owed */
        double w = *weight;
        st = ro_sync_gradients(t, st, &w, &r->clean_loss, NULL);
        if (st != REGOPT_OK) {
            *stopped = 1;
            return st;
        }
    }
    if (st == REGOPT_OK && t->sam.gsam)
        gather(t, t->sam.clean, 0);
    if (st == REGOPT_OK)
        st = ascend(t, r->rho, 1.0, whole_perturbed, (void *)c, &r->ascent_norm, &pert,
                    &r->applied);
    if (st == REGOPT_OK && r->applied && t->sam.gsam)
        gsam_combine(t);
    r->perturbed_loss = r->applied ? pert : r->clean_loss;
    return st;
}

/* ---- m-sharpness: one ascent per chunk of m rows ------------------------ */

typedef struct chunk_ctx {
    const regopt_batch *b;
    size_t bi, r0, rows;
    uint32_t chunk;
    double inv_weight;
} chunk_ctx;

static regopt_status chunk_perturbed(regopt_trainer *t, void *ctx, double *loss)
{
    const chunk_ctx *c = ctx;
    ro_zero_gradients(t);
    return ro_gradient_rows(t, c->b, c->bi, c->r0, c->rows, c->inv_weight,
                            REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS,
                            perturbed_role(t), c->chunk, loss);
}

static regopt_status chunk_step(regopt_trainer *t, chunk_ctx *c, ro_sam_result *r,
                                double *norm_sum, size_t *chunks)
{
    double clean = 0.0, pert = 0.0, norm = 0.0;
    int applied = 0;
    regopt_status st;
    ro_zero_gradients(t);
    st = ro_gradient_rows(t, c->b, c->bi, c->r0, c->rows, c->inv_weight, REGOPT_PASS_TRAIN,
                          RO_SEED_TASK, c->chunk, &clean);
    if (st == REGOPT_OK && t->sam.gsam)
        gather(t, t->sam.clean, 1);
    if (st == REGOPT_OK) {
        /* the chunk's gradient carries its share of the step's weight: give
           the ascent's weight-decay term the same share */
        double share = 0.0;
        size_t i;
        regopt_batch v;
        ro_batch_rows(&v, c->b, c->r0, c->rows, t->model->output_width);
        for (i = 0; i < v.rows; i++)
            share += ro_row_weight(&v, i);
        st = ascend(t, r->rho, share * c->inv_weight, chunk_perturbed, c, &norm, &pert, &applied);
    }
    if (st != REGOPT_OK)
        return st;
    gather(t, t->sam.accum, 1);
    r->clean_loss += clean;
    r->perturbed_loss += applied ? pert : clean;
    r->applied |= applied;
    *norm_sum += norm;
    (*chunks)++;
    return REGOPT_OK;
}

static regopt_status chunked_step(regopt_trainer *t, const whole_ctx *w, ro_sam_result *r)
{
    size_t n = t->model->n_trainable, bi, chunks = 0, m = (size_t)t->sam.m_rows;
    double norm_sum = 0.0;
    regopt_status st = REGOPT_OK;
    ro_zero(t->sam.accum, n);
    if (t->sam.gsam)
        ro_zero(t->sam.clean, n);
    for (bi = 0; bi < w->count && st == REGOPT_OK; bi++) {
        chunk_ctx c;
        c.b = ro_batch_at(w->batches, bi);
        c.bi = bi;
        c.inv_weight = w->inv_weight;
        for (c.r0 = 0, c.chunk = 0; c.r0 < c.b->rows && st == REGOPT_OK; c.r0 += m, c.chunk++) {
            c.rows = c.b->rows - c.r0 < m ? c.b->rows - c.r0 : m;
            st = chunk_step(t, &c, r, &norm_sum, &chunks);
        }
    }
    if (st != REGOPT_OK)
        return st;
    scatter(t, t->sam.accum); /* the sum of the chunks' weighted gradients */
    if (r->applied && t->sam.gsam)
        gsam_combine(t);
    r->ascent_norm = chunks ? norm_sum / (double)chunks : 0.0;
    return REGOPT_OK;
}

regopt_status ro_sam_gradient(regopt_trainer *t, const regopt_batch *batches, size_t count,
                              double *weight, double *loss, ro_sam_result *r)
{
    whole_ctx c;
    regopt_status st;
    int stopped = 0;
    c.batches = batches;
    c.count = count;
    c.inv_weight = *weight > 0.0 ? 1.0 / *weight : 0.0;
    r->rho = rho_in_force(t);
    st = t->sam.m_rows > 0 ? chunked_step(t, &c, r) : whole_step(t, &c, weight, r, &stopped);
    if (stopped)
        return st;
    /* the final all-reduce, joined even after a local failure */
    st = ro_sync_gradients(t, st, weight, &r->clean_loss, &r->perturbed_loss);
    *loss = r->clean_loss;
    return st;
}
