/* sam.c — the sharpness-aware family: SAM (Foret et al., ICLR 2021, Alg. 1),
 * ASAM (Kwon et al., ICML 2021), GSAM (Zhuang et al., ICLR 2022), with
 * m-sharpness and SAM every k-th step; docs/methods.md §3. The library
 * evaluates the gradient at w, moves the host's weights to w + eps,
 * evaluates it again, and puts the weights back by copy, so the base
 * optimizer steps from exactly w. The weight-side regularizer: it runs the
 * step's gradient evaluations through ro_step.eval_*. Ascent directions
 * with state across steps (FriendlySAM, VaSSO) are in sam_ascent.c. */
#include "reg/reg.h"
#include "reg/sam_ascent.h"

#include <math.h>
#include <string.h>

#define SEED_PERTURBED 2u /* role of the perturbed passes' seeds (same_seed 0) */

typedef ro_sam_state sam;

typedef struct sam_reg {
    ro_reg *r;
    sam *s;
    const float *dir; /* the ascent direction (flat), NULL: the gradient */
    double norm;      /* its ascent norm when made with it, else < 0 */
} sam_reg;

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define RO REGOPT_KEY_READ_ONLY
static const ro_key_desc sam_keys[] = {
    {REGOPT_SAM_RHO, "sam.rho", D, RO_OWNER_REG, 0, 1e3, 0.05, 0},
    {REGOPT_SAM_DELTA, "sam.delta", D, RO_OWNER_REG, 0, 1, 1e-12, 0},
    {REGOPT_SAM_ADAPTIVE, "sam.adaptive", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SAM_ETA, "sam.eta", D, RO_OWNER_REG, 0, 1e3, 0.01, 0},
    {REGOPT_SAM_GSAM, "sam.gsam", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SAM_GSAM_ALPHA, "sam.gsam_alpha", D, RO_OWNER_REG, 0, 1e3, 0.4, 0},
    {REGOPT_SAM_RHO_MIN, "sam.rho_min", D, RO_OWNER_REG, 0, 1e3, 0, 0},
    {REGOPT_SAM_RHO_FOLLOWS_LR, "sam.rho_follows_lr", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SAM_EVERY, "sam.every", I, RO_OWNER_REG, 1, 2147483648.0, 1, 0},
    {REGOPT_SAM_M_ROWS, "sam.m_rows", I, RO_OWNER_REG, 0, 2147483648.0, 0, 0},
    {REGOPT_SAM_SAME_SEED, "sam.same_seed", I, RO_OWNER_REG, 0, 1, 1, 0},
    {REGOPT_SAM_ASCENT_WEIGHT_DECAY, "sam.ascent_weight_decay", D, RO_OWNER_REG, 0, 1e3, 0, 0},
    {REGOPT_SAM_SYNC_ASCENT, "sam.sync_ascent", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SAM_DIRECTION, "sam.direction", I, RO_OWNER_REG, 0, 2, 0, 0},
    {REGOPT_SAM_FRIENDLY_SIGMA, "sam.friendly_sigma", D, RO_OWNER_REG, 0, 1e3, 1, 0},
    {REGOPT_SAM_FRIENDLY_LAMBDA, "sam.friendly_lambda", D, RO_OWNER_REG, 0, 1, 0.9, 0},
    {REGOPT_SAM_VASSO_THETA, "sam.vasso_theta", D, RO_OWNER_REG, 0, 1, 0.9, 0},
    {REGOPT_SAM_WSAM, "sam.wsam", I, RO_OWNER_REG, 0, 2, 0, 0},
    {REGOPT_SAM_WSAM_GAMMA, "sam.wsam_gamma", D, RO_OWNER_REG, 0, 0.999, 0.9, 0},
    {REGOPT_SAM_LOOKSAM, "sam.looksam", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SAM_LOOKSAM_ALPHA, "sam.looksam_alpha", D, RO_OWNER_REG, 0, 1e3, 0.7, 0},
    {REGOPT_SAM_MOMENTUM, "sam.momentum", I, RO_OWNER_REG, 0, 1, 0, 0},
    {REGOPT_SAM_GROUP_ADAPTIVE, "sam.group_adaptive", I, RO_OWNER_REG, 0, 1, 1,
     REGOPT_KEY_GROUP},
    {REGOPT_SAM_GROUP_PERTURB, "sam.group_perturb", I, RO_OWNER_REG, 0, 1, 1, REGOPT_KEY_GROUP},
    {REGOPT_STAT_SAM_CLEAN_LOSS, "sam.clean_loss", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_PERTURBED_LOSS, "sam.perturbed_loss", D, RO_OWNER_REG, -HUGE_VAL,
     HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_SHARPNESS, "sam.sharpness", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_ASCENT_NORM, "sam.ascent_norm", D, RO_OWNER_REG, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_RHO, "sam.rho_used", D, RO_OWNER_REG, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_APPLIED, "sam.applied", I, RO_OWNER_REG, 0, 1, 0, RO},
};

static void sam_init(ro_reg *r)
{
    sam *s = r->self;
    s->rho = 0.05;
    s->delta = 1e-12;
    s->eta = 0.01;
    s->gsam_alpha = 0.4;
    s->wsam.gamma = 0.9;
    s->look.alpha = 0.7;
    s->every = 1;
    s->same_seed = 1;
    memset(s->group_adaptive, 1, sizeof s->group_adaptive);
    memset(s->group_perturb, 1, sizeof s->group_perturb);
    ro_sam_dir_init(&s->dir);
    s->save_vec = s->accum_vec = s->clean_vec = s->wsam.sharp_vec = REGOPT_VEC_NONE;
    s->dir.state_vec = s->dir.next_vec = s->dir.buf_vec = REGOPT_VEC_NONE;
    s->look.gv_vec = s->look.next_vec = REGOPT_VEC_NONE;
}

static regopt_status reserve_one(ro_reg *r, float **buf, int needed)
{
    if (!needed || *buf)
        return REGOPT_OK;
    *buf = ro_calloc(r->env->alloc, r->env->model->n_trainable, sizeof(float));
    if (!*buf)
        return ro_fail(r->msg, REGOPT_ERR_NO_MEMORY, "out of memory for a SAM buffer of %zu "
                       "floats", r->env->model->n_trainable);
    return REGOPT_OK;
}

/* Allocate what the current options need (idempotent; only when attached). */
static regopt_status buffers(ro_reg *r)
{
    sam *s = r->self;
    regopt_status st;
    if (!r->env)
        return REGOPT_OK;
    if (r->env->model->has_backend) /* what it can serve: save */
        return ro_sam_backend_reserve(r);
    st = reserve_one(r, &s->save, 1);
    if (st == REGOPT_OK)
        st = reserve_one(r, &s->accum, s->m_rows > 0);
    if (st == REGOPT_OK)
        st = reserve_one(r, &s->clean, s->gsam || s->wsam.mode || s->look.on);
    if (st == REGOPT_OK)
        st = reserve_one(r, &s->wsam.sharp, s->wsam.mode == RO_SAM_WSAM_DECOUPLED);
    if (st == REGOPT_OK)
        st = ro_sam_dir_reserve(&s->dir, r->env, r->msg);
    if (st == REGOPT_OK)
        st = ro_sam_look_reserve(&s->look, r->env, r->msg);
    return st;
}

static void sam_detach(ro_reg *r)
{
    sam *s = r->self;
    ro_free(r->env->alloc, s->save);
    ro_free(r->env->alloc, s->accum);
    ro_free(r->env->alloc, s->clean);
    ro_free(r->env->alloc, s->wsam.sharp);
    s->save = s->accum = s->clean = s->wsam.sharp = NULL;
    ro_sam_dir_release(&s->dir, r->env);
    ro_sam_look_release(&s->look, r->env);
    ro_sam_backend_release(r);
}

static regopt_status sam_attach(ro_reg *r)
{
    regopt_status st = buffers(r);
    if (st != REGOPT_OK) {
        sam_detach(r);
        ro_fail(r->env->msg, st, "%s", r->msg);
    }
    return st;
}

static void *field(sam *s, regopt_key key, int *is_double)
{
    *is_double = 1;
    switch (key) {
    case REGOPT_SAM_RHO: return &s->rho;
    case REGOPT_SAM_DELTA: return &s->delta;
    case REGOPT_SAM_ETA: return &s->eta;
    case REGOPT_SAM_GSAM_ALPHA: return &s->gsam_alpha;
    case REGOPT_SAM_RHO_MIN: return &s->rho_min;
    case REGOPT_SAM_ASCENT_WEIGHT_DECAY: return &s->ascent_wd;
    case REGOPT_SAM_FRIENDLY_SIGMA: return &s->dir.sigma;
    case REGOPT_SAM_FRIENDLY_LAMBDA: return &s->dir.lambda;
    case REGOPT_SAM_VASSO_THETA: return &s->dir.theta;
    case REGOPT_SAM_WSAM_GAMMA: return &s->wsam.gamma;
    case REGOPT_SAM_LOOKSAM_ALPHA: return &s->look.alpha;
    default: break;
    }
    *is_double = 0;
    switch (key) {
    case REGOPT_SAM_ADAPTIVE: return &s->adaptive;
    case REGOPT_SAM_GSAM: return &s->gsam;
    case REGOPT_SAM_RHO_FOLLOWS_LR: return &s->rho_follows_lr;
    case REGOPT_SAM_SAME_SEED: return &s->same_seed;
    case REGOPT_SAM_SYNC_ASCENT: return &s->sync_ascent;
    case REGOPT_SAM_DIRECTION: return &s->dir.mode;
    case REGOPT_SAM_WSAM: return &s->wsam.mode;
    case REGOPT_SAM_LOOKSAM: return &s->look.on;
    case REGOPT_SAM_MOMENTUM: return &s->msam;
    default: return NULL;
    }
}

/* The value has passed the key table's bounds check. Options that need a
 * buffer allocate it here, so a step never does. */
static regopt_status sam_set(ro_reg *r, const ro_key_desc *k, int32_t group, double value)
{
    sam *s = r->self, old = *s;
    int is_double;
    void *f = field(s, k->key, &is_double);
    regopt_status st;
    if (k->key == REGOPT_SAM_GROUP_ADAPTIVE || k->key == REGOPT_SAM_GROUP_PERTURB) {
        (k->key == REGOPT_SAM_GROUP_ADAPTIVE ? s->group_adaptive : s->group_perturb)[group] =
            (uint8_t)value;
        return REGOPT_OK;
    }
    if (k->key == REGOPT_SAM_EVERY)
        s->every = (int64_t)value;
    else if (k->key == REGOPT_SAM_M_ROWS)
        s->m_rows = (int64_t)value;
    else if (f && is_double)
        *(double *)f = value;
    else if (f)
        *(int *)f = (int)value;
    st = buffers(r);
    if (st != REGOPT_OK) {
        old.save = s->save; /* keep whatever was allocated; freed at sam_detach */
        old.accum = s->accum;
        old.clean = s->clean;
        old.wsam.sharp = s->wsam.sharp;
        old.look.gv = s->look.gv;
        old.look.next = s->look.next;
        old.dir.state = s->dir.state;
        old.dir.next = s->dir.next;
        old.dir.buf = s->dir.buf;
        old.save_vec = s->save_vec; /* and the backend's buffers */
        old.accum_vec = s->accum_vec;
        old.clean_vec = s->clean_vec;
        old.wsam.sharp_vec = s->wsam.sharp_vec;
        old.dir.state_vec = s->dir.state_vec;
        old.dir.next_vec = s->dir.next_vec;
        old.dir.buf_vec = s->dir.buf_vec;
        old.look.gv_vec = s->look.gv_vec;
        old.look.next_vec = s->look.next_vec;
        old.flags = s->flags;
        old.coef = old.look.coef = old.wsam.coef = s->coef;
        old.wsam.flags = s->flags;
        *s = old;
    }
    return st;
}

static double sam_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    sam *s = r->self;
    int is_double;
    void *f = field(s, k->key, &is_double);
    if (k->key == REGOPT_SAM_GROUP_ADAPTIVE)
        return s->group_adaptive[group];
    if (k->key == REGOPT_SAM_GROUP_PERTURB)
        return s->group_perturb[group];
    if (k->key == REGOPT_SAM_EVERY)
        return (double)s->every;
    if (k->key == REGOPT_SAM_M_ROWS)
        return (double)s->m_rows;
    if (!f)
        return 0.0;
    return is_double ? *(double *)f : (double)*(int *)f;
}

/* LookSAM's steps between the SAM steps are its own too (the reuse). */
static int sam_due(const ro_reg *r, uint64_t step)
{
    const sam *s = r->self;
    return s->look.on || step % (uint64_t)s->every == 0;
}

/* Options against each other and the step (nothing has changed yet). */
static regopt_status check(ro_reg *r, const ro_step *st)
{
    const sam *s = r->self;
    size_t bi;
    if (s->msam && (s->gsam || s->wsam.mode || s->look.on || s->dir.mode || s->m_rows ||
                    s->adaptive))
        return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT, "sam.momentum makes the "
                       "step's one pass at w - rho v/||v||: it cannot be combined with "
                       "sam.gsam, sam.wsam, sam.looksam, sam.direction, sam.m_rows or "
                       "sam.adaptive");
    if (s->msam && (r->env->model->has_backend ? st->opt_m_vec == REGOPT_VEC_NONE : !st->opt_m))
        return ro_fail(r->env->msg, REGOPT_ERR_STATE, "sam.momentum reads the base "
                       "optimizer's momentum, and a host-owned optimizer (REGOPT_HOST) keeps "
                       "none in the library: use a built-in optimizer or sam.momentum = 0");
    if ((s->gsam && s->wsam.mode) || (s->look.on && s->gsam) || (s->look.on && s->wsam.mode))
        return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "%s cannot be combined with sam.gsam or sam.wsam: each makes the update "
                       "direction", s->look.on ? "sam.looksam" : "sam.wsam");
    if (s->m_rows > 0 && s->sync_ascent && r->env->has_allreduce)
        return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "sam.sync_ascent cannot be combined with sam.m_rows: every chunk "
                       "makes its own ascent");
    if (s->m_rows > 0 && r->env->model->input_width)
        for (bi = 0; bi < st->count; bi++) {
            const regopt_batch *b = ro_batch_at(st->batches, bi);
            if (b->input_rows && b->input_rows % b->rows)
                return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                               "batch %zu: sam.m_rows needs input_rows (%zu) to be a multiple "
                               "of rows (%zu)", bi, b->input_rows, b->rows);
        }
    return REGOPT_OK;
}

/* GSAM's schedule: rho follows the learning rate between rho_min and rho. */
static double rho_in_force(const sam *s, const ro_step *st)
{
    double lr_max = st->lr_max, lr_min = st->lr_min;
    double r, lo = s->rho_min < s->rho ? s->rho_min : s->rho, hi = s->rho_min + s->rho - lo;
    if (!s->rho_follows_lr || !(lr_max > lr_min))
        return s->rho;
    r = s->rho_min + (s->rho - s->rho_min) * (st->lr - lr_min) / (lr_max - lr_min);
    /* during warm-up lr < lr_min: never let rho leave [rho_min, rho] (a
       negative radius would descend instead of ascend) */
    return r < lo ? lo : r > hi ? hi : r;
}


/* The whole step's direction with state, and its ascent norm in the same
 * pass (the squares of each piece while it is in cache); with a backend
 * the norm is a call of its own, ascend()'s. */
static regopt_status make_direction(sam_reg *g, double wd_scale)
{
    ro_sam_ascent a;
    double sum = 0.0;
    if (ro_reg_on_backend(g->r))
        return ro_sam_dir_make_vops(&g->s->dir, g->r->env, 1.0, 1);
    ro_sam_ascent_init(&a, g->s, g->s->dir.buf, wd_scale, 0.0, 0);
    g->dir = ro_sam_dir_make(&g->s->dir, g->r->env->par, 1.0, 1, ro_sam_ascent_squares, &a,
                             &sum);
    g->norm = sqrt(sum);
    return REGOPT_OK;
}

/* dst (flat, trainable order) += or = the gradient buffers; with a
 * backend, its vector vec (x + y is 1 * x + 1 * y exactly). */
static regopt_status gather(const sam_reg *g, float *dst, int32_t vec, int add)
{
    const regopt_model *m = g->r->env->model;
    size_t i, j;
    if (ro_reg_on_backend(g->r))
        return add ? ro_vop_axpby(m, vec, vec, REGOPT_VEC_GRADS, 1.0, 1.0, NULL, NULL,
                                  g->r->env->msg)
                   : ro_vop_copy(m, vec, REGOPT_VEC_GRADS, g->r->env->msg);
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
    return REGOPT_OK;
}

static regopt_status scatter(const sam_reg *g, const float *src, int32_t vec)
{
    const regopt_model *m = g->r->env->model;
    size_t i;
    if (ro_reg_on_backend(g->r))
        return ro_vop_copy(m, REGOPT_VEC_GRADS, vec, g->r->env->msg);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (p->grad)
            memcpy(p->grad, src + p->offset, p->count * sizeof(float));
    }
    return REGOPT_OK;
}

/* x = 0, flat or the backend's vector. */
static regopt_status zero(const sam_reg *g, float *x, int32_t vec)
{
    if (ro_reg_on_backend(g->r))
        return ro_vop_copy(g->r->env->model, vec, REGOPT_VEC_NONE, g->r->env->msg);
    ro_zero(x, g->r->env->model->n_trainable);
    return REGOPT_OK;
}

static regopt_status check_norm(const sam_reg *g, double norm)
{
    if (!isfinite(norm))
        return ro_fail(g->r->env->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                       "the SAM ascent gradient is not finite (norm %g)", norm);
    return REGOPT_OK;
}

static uint32_t perturbed_role(const sam *s)
{
    return s->same_seed ? RO_SEED_TASK : SEED_PERTURBED;
}

/* One ascent over the gradient now in the buffers: perturb, evaluate the
 * perturbed gradient with `passes`, restore. *applied stays 0 (and the
 * buffers keep g) when ||T a|| = 0. `defer`: after passes that succeeded,
 * leave w + eps in the host's buffers and w in st->held; the driver puts w
 * back in the update's own pass (one trip through memory fewer, issue 25),
 * or at once if the step fails or the host updates (sam_settle). */
typedef regopt_status (*passes_fn)(const sam_reg *g, ro_step *st, void *ctx, double *loss);

static regopt_status ascend(const sam_reg *g, ro_step *st, double rho, double wd_scale,
                            passes_fn passes, void *ctx, int defer, double *norm, double *loss,
                            int *applied)
{
    regopt_status rc = REGOPT_OK, back;
    if (g->norm >= 0.0)
        *norm = g->norm;
    else
        rc = ro_sam_ascent_norm(g->r, g->dir, wd_scale, norm);
    if (rc == REGOPT_OK)
        rc = check_norm(g, *norm);
    if (rc != REGOPT_OK || *norm == 0.0)
        return rc;
    /* a whole step's passes zero the gradient first: done in the perturbation */
    rc = ro_sam_perturb(g->r, g->dir, rho / (*norm + g->s->delta), wd_scale, defer);
    if (rc != REGOPT_OK) /* a backend's, in a state only it knows: nothing to copy back */
        return rc;
    st->grads_zero = defer && !g->dir && g->s->dir.mode == RO_SAM_DIR_GRADIENT;
    g->s->perturbed = 1;
    rc = passes(g, st, ctx, loss);
    /* through a backend there is no update pass of ours to restore in */
    if (rc == REGOPT_OK && defer && !g->r->env->model->has_backend) {
        st->held = g->s->save;
    } else {
        back = ro_sam_restore(g->r);
        g->s->perturbed = back != REGOPT_OK; /* the abandon hook tries again */
        rc = rc != REGOPT_OK ? rc : back;
    }
    *applied = 1;
    return rc;
}

/* ---- the whole step as one ascent ------------------------------------- */

static regopt_status whole_perturbed(const sam_reg *g, ro_step *st, void *ctx, double *loss)
{
    (void)ctx;
    return st->eval_all(st, REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS,
                        perturbed_role(g->s), loss);
}

static regopt_status whole_step(sam_reg *g, ro_step *st)
{
    sam *s = g->s;
    regopt_status rc;
    double pert = 0.0;
    rc = st->eval_all(st, REGOPT_PASS_TRAIN, RO_SEED_TASK, &s->clean_loss);
    if (g->r->env->has_allreduce && s->sync_ascent) {
        /* every replica stops here if any failed, so no later sync is owed */
        rc = st->sync(st, rc, &s->clean_loss, NULL);
        if (rc != REGOPT_OK) {
            st->synced = 1;
            return rc;
        }
    }
    if (rc == REGOPT_OK && (s->gsam || s->wsam.mode || s->look.on))
        rc = gather(g, s->clean, s->clean_vec, 0);
    if (rc == REGOPT_OK && s->dir.mode != RO_SAM_DIR_GRADIENT)
        rc = make_direction(g, 1.0);
    if (rc == REGOPT_OK)
        rc = ascend(g, st, s->rho_used, 1.0, whole_perturbed, NULL, 1, &s->ascent_norm, &pert,
                    &s->applied);
    if (rc == REGOPT_OK && s->applied && s->gsam)
        rc = ro_sam_gsam_combine(g->r->env, s->clean, s->clean_vec, s->gsam_alpha, s->delta);
    s->perturbed_loss = s->applied ? pert : s->clean_loss;
    return rc;
}

/* ---- m-sharpness: one ascent per chunk of m rows ------------------------ */

typedef struct chunk_ctx {
    const regopt_batch *b;
    size_t bi, r0, rows;
    uint32_t chunk;
} chunk_ctx;

static regopt_status chunk_perturbed(const sam_reg *g, ro_step *st, void *ctx, double *loss)
{
    const chunk_ctx *c = ctx;
    regopt_status rc = st->zero_grads(st);
    if (rc != REGOPT_OK)
        return rc;
    return st->eval_rows(st, c->bi, c->r0, c->rows, c->chunk,
                         REGOPT_PASS_TRAIN | REGOPT_PASS_PERTURBED_WEIGHTS,
                         perturbed_role(g->s), loss);
}

static regopt_status chunk_step(sam_reg *g, ro_step *st, chunk_ctx *c, double *norm_sum,
                                size_t *chunks)
{
    sam *s = g->s;
    double clean = 0.0, pert = 0.0, norm = 0.0;
    int applied = 0;
    regopt_status rc = st->zero_grads(st);
    if (rc == REGOPT_OK)
        rc = st->eval_rows(st, c->bi, c->r0, c->rows, c->chunk, REGOPT_PASS_TRAIN, RO_SEED_TASK,
                       &clean);
    if (rc == REGOPT_OK && (s->gsam || s->wsam.mode || s->look.on))
        rc = gather(g, s->clean, s->clean_vec, 1);
    if (rc == REGOPT_OK) {
        /* the chunk's gradient carries its share of the step's weight: give
           the ascent's weight-decay term the same share */
        double share = 0.0;
        size_t i;
        regopt_batch v;
        ro_batch_rows(&v, c->b, c->r0, c->rows, g->r->env->model->output_width);
        for (i = 0; i < v.rows; i++)
            share += ro_row_weight(&v, i);
        if (ro_reg_on_backend(g->r) && s->dir.mode != RO_SAM_DIR_GRADIENT)
            rc = ro_sam_dir_make_vops(&s->dir, g->r->env, share * st->inv_weight, 0);
        else
            g->dir = ro_sam_dir_make(&s->dir, g->r->env->par, share * st->inv_weight, 0, NULL,
                                     NULL, NULL);
        if (rc == REGOPT_OK)
            rc = ascend(g, st, s->rho_used, share * st->inv_weight, chunk_perturbed, c, 0, &norm,
                    &pert, &applied);
    }
    if (rc == REGOPT_OK)
        rc = gather(g, s->accum, s->accum_vec, 1);
    if (rc != REGOPT_OK)
        return rc;
    s->clean_loss += clean;
    s->perturbed_loss += applied ? pert : clean;
    s->applied |= applied;
    *norm_sum += norm;
    (*chunks)++;
    return REGOPT_OK;
}

static regopt_status chunked_step(sam_reg *g, ro_step *st)
{
    sam *s = g->s;
    size_t bi, chunks = 0, m = (size_t)s->m_rows;
    double norm_sum = 0.0;
    regopt_status rc = zero(g, s->accum, s->accum_vec);
    if (rc == REGOPT_OK && (s->gsam || s->wsam.mode || s->look.on))
        rc = zero(g, s->clean, s->clean_vec);
    for (bi = 0; bi < st->count && rc == REGOPT_OK; bi++) {
        chunk_ctx c;
        c.b = ro_batch_at(st->batches, bi);
        c.bi = bi;
        for (c.r0 = 0, c.chunk = 0; c.r0 < c.b->rows && rc == REGOPT_OK; c.r0 += m, c.chunk++) {
            c.rows = c.b->rows - c.r0 < m ? c.b->rows - c.r0 : m;
            rc = chunk_step(g, st, &c, &norm_sum, &chunks);
        }
    }
    if (rc == REGOPT_OK) /* the sum of the chunks' weighted gradients */
        rc = scatter(g, s->accum, s->accum_vec);
    if (rc == REGOPT_OK && s->applied && s->gsam)
        rc = ro_sam_gsam_combine(g->r->env, s->clean, s->clean_vec, s->gsam_alpha, s->delta);
    s->ascent_norm = chunks ? norm_sum / (double)chunks : 0.0;
    return rc;
}

/* The final gradient of a SAM step in the gradient buffers, weights
 * restored; the driver then makes the step's all-reduce (unless a failed
 * sync_ascent already stopped every replica). */
static regopt_status gradient(ro_reg *r, ro_step *st)
{
    sam_reg g;
    sam *s = r->self;
    regopt_status rc;
    g.r = r;
    g.s = s;
    g.dir = NULL;
    g.norm = -1.0;
    /* a backend that failed to put w back last step gets another chance */
    if (s->perturbed && r->env->model->has_backend) {
        rc = ro_sam_restore(r);
        if (rc != REGOPT_OK)
            return rc;
        s->perturbed = 0;
    }
    s->clean_loss = s->perturbed_loss = s->ascent_norm = 0.0;
    s->applied = 0;
    s->rho_used = rho_in_force(s, st);
    if (s->msam) { /* Momentum-SAM: the one pass, at w - rho v / ||v|| */
        rc = r->env->model->has_backend
                 ? ro_sam_msam_vops(r->env, st, s->save_vec, s->rho_used, s->delta,
                                    &s->perturbed, &s->clean_loss, &s->ascent_norm, &s->applied)
                 : ro_sam_msam(r->env, st, s->save, s->rho_used, s->delta, &s->perturbed,
                               &s->clean_loss, &s->ascent_norm, &s->applied);
        st->loss = st->loss2 = s->perturbed_loss = s->clean_loss;
        st->has_loss2 = 1;
        return rc;
    }
    if (s->look.on && st->step % (uint64_t)s->every != 0) { /* LookSAM's reuse */
        s->rho_used = 0.0;
        rc = st->eval_all(st, REGOPT_PASS_TRAIN, RO_SEED_TASK, &s->clean_loss);
        if (rc == REGOPT_OK)
            rc = ro_sam_look_reuse(&s->look, r->env);
        st->loss = st->loss2 = s->perturbed_loss = s->clean_loss;
        st->has_loss2 = 1;
        return rc;
    }
    rc = REGOPT_OK;
    if (s->dir.mode != RO_SAM_DIR_GRADIENT && s->m_rows > 0) {
        if (r->env->model->has_backend)
            rc = ro_sam_dir_begin_vops(&s->dir, r->env);
        else
            ro_sam_dir_begin(&s->dir, r->env->par);
    }
    if (rc == REGOPT_OK)
        rc = s->m_rows > 0 ? chunked_step(&g, st) : whole_step(&g, st);
    if (rc == REGOPT_OK)
        ro_sam_dir_end(&s->dir);
    if (rc == REGOPT_OK && s->look.on)
        rc = ro_sam_look_store(&s->look, r->env, s->clean, s->clean_vec);
    rc = ro_sam_wsam_finish(&s->wsam, r->env, st, s->clean, s->clean_vec, s->applied, rc);
    st->loss = s->clean_loss;
    st->loss2 = s->perturbed_loss;
    st->has_loss2 = 1;
    return rc;
}

/* A callback threw or longjmp'd out of a perturbed pass, or the step
 * failed (or the host updates) while the update's pass was to put w back:
 * w is still at w + eps; put it back from the copy. */
static void sam_abandon(ro_reg *r)
{
    sam *s = r->self;
    if (s->perturbed) /* a backend's failure to restore leaves it to recover */
        s->perturbed = ro_sam_restore(r) != REGOPT_OK;
}

const ro_reg_ops ro_sam_ops = {
    .name = "sam",
    .title = "SAM",
    .kind = REGOPT_REG_SAM,
    .flags = REGOPT_REG_WEIGHT_SIDE | REGOPT_REG_SINGLE | RO_REG_BACKEND,
    .order = 0,
    .size = sizeof(sam),
    .keys = sam_keys,
    .n_keys = sizeof sam_keys / sizeof sam_keys[0],
    .stat0 = REGOPT_STAT_SAM_CLEAN_LOSS,
    .n_stats = 6,
    .init = sam_init,
    .attach = sam_attach,
    .detach = sam_detach,
    .set = sam_set,
    .get = sam_get,
    .check = check,
    .due = sam_due,
    .gradient = gradient,
    .after_pieces = ro_sam_after_pieces,
    .after_backend = ro_sam_after_backend,
    .after_update = ro_sam_after_update,
    .commit = ro_sam_commit,
    .abandon = sam_abandon,
    .settle = sam_abandon,
    .state_size = ro_sam_ck_size,
    .save = ro_sam_ck_save,
    .check_state = ro_sam_ck_check,
    .load = ro_sam_ck_load,
};
