/* adv.c — adversarial training on the input embeddings: FGM (Miyato et al.,
 * ICLR 2017), PGD (Madry et al., ICLR 2018), FreeLB (Zhu et al., ICLR 2020)
 * and VAT (Miyato et al., TPAMI 2018) as one engine with per-method facets
 * (include/regopt.h, "Adversarial training"; ../shared/METHODS2.md). It
 * runs on SMART's machinery: the host adds pass->input_perturbation to its
 * embeddings and returns d/d(embeddings) in pass->d_input. The norms,
 * projections and updates of the perturbation are in adv_ascent.c. */
#include "reg/adv.h"

#include <math.h>
#include <string.h>

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define RO REGOPT_KEY_READ_ONLY
static const ro_key_desc adv_keys[] = {
    {REGOPT_ADV_METHOD, "adv.method", I, RO_OWNER_REG, 0, 3, REGOPT_ADV_FGM, 0},
    {REGOPT_ADV_ALPHA, "adv.alpha", D, RO_OWNER_REG, 0, 1e4, 1, 0},
    {REGOPT_ADV_EPSILON, "adv.epsilon", D, RO_OWNER_REG, 0, 1e4, 1, 0},
    {REGOPT_ADV_STEP, "adv.step", D, RO_OWNER_REG, 0, 1e4, 0.3, 0},
    {REGOPT_ADV_STEPS, "adv.steps", I, RO_OWNER_REG, 1, 100, 1, 0},
    {REGOPT_ADV_INIT_MAG, "adv.init_mag", D, RO_OWNER_REG, -1, 1e4, -1, 0},
    {REGOPT_ADV_NORM, "adv.norm", I, RO_OWNER_REG, 0, 1, REGOPT_ADV_NORM_L2, 0},
    {REGOPT_ADV_SCOPE, "adv.scope", I, RO_OWNER_REG, -1, 2, -1, 0},
    {REGOPT_ADV_OBJECTIVE, "adv.objective", I, RO_OWNER_REG, -1, 2, -1, 0},
    {REGOPT_ADV_INIT, "adv.init", I, RO_OWNER_REG, -1, 3, -1, 0},
    {REGOPT_ADV_PARAM_GRAD, "adv.param_grad", I, RO_OWNER_REG, -1, 1, -1, 0},
    {REGOPT_ADV_CLEAN_PASS, "adv.clean_pass", I, RO_OWNER_REG, -1, 1, -1, 0},
    {REGOPT_ADV_SAME_SEED, "adv.same_seed", I, RO_OWNER_REG, 0, 1, 1, 0},
    {REGOPT_STAT_ADV_LOSS, "adv.loss", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_ADV_NORM, "adv.norm_used", D, RO_OWNER_REG, 0, HUGE_VAL, 0, RO},
};

enum { AC_LOSS, AC_NORM_SUM, AC_UNITS, AC_N };

/* Roles of the adversarial draws (counter word 3; SMART uses 3 and 4). */
#define ADV_SEED_INIT 5u
#define ADV_SEED_PASS 6u

static void adv_init(ro_reg *r)
{
    adv *a = r->self;
    a->method = REGOPT_ADV_FGM;
    a->alpha = 1.0;
    a->epsilon = 1.0;
    a->step = 0.3;
    a->steps = 1;
    a->init_mag = -1.0;
    a->norm = REGOPT_ADV_NORM_L2;
    a->scope = a->objective = a->init = a->param_grad = a->clean_pass = -1;
    a->same_seed = 1;
}

static regopt_status adv_set(ro_reg *r, const ro_key_desc *k, int32_t group, double v)
{
    adv *a = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_ADV_METHOD: a->method = (int)v; break;
    case REGOPT_ADV_ALPHA: a->alpha = v; break;
    case REGOPT_ADV_EPSILON: a->epsilon = v; break;
    case REGOPT_ADV_STEP: a->step = v; break;
    case REGOPT_ADV_STEPS: a->steps = (int)v; break;
    case REGOPT_ADV_INIT_MAG: a->init_mag = v; break;
    case REGOPT_ADV_NORM: a->norm = (int)v; break;
    case REGOPT_ADV_SCOPE: a->scope = (int)v; break;
    case REGOPT_ADV_OBJECTIVE: a->objective = (int)v; break;
    case REGOPT_ADV_INIT: a->init = (int)v; break;
    case REGOPT_ADV_PARAM_GRAD: a->param_grad = (int)v; break;
    case REGOPT_ADV_CLEAN_PASS: a->clean_pass = (int)v; break;
    default: a->same_seed = (int)v; break;
    }
    return REGOPT_OK;
}

static double adv_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    const adv *a = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_ADV_METHOD: return a->method;
    case REGOPT_ADV_ALPHA: return a->alpha;
    case REGOPT_ADV_EPSILON: return a->epsilon;
    case REGOPT_ADV_STEP: return a->step;
    case REGOPT_ADV_STEPS: return a->steps;
    case REGOPT_ADV_INIT_MAG: return a->init_mag;
    case REGOPT_ADV_NORM: return a->norm;
    case REGOPT_ADV_SCOPE: return a->scope;
    case REGOPT_ADV_OBJECTIVE: return a->objective;
    case REGOPT_ADV_INIT: return a->init;
    case REGOPT_ADV_PARAM_GRAD: return a->param_grad;
    case REGOPT_ADV_CLEAN_PASS: return a->clean_pass;
    default: return a->same_seed;
    }
}

/* The facets in force: each -1 replaced by the method's (the table in
 * regopt.h). */
adv_cfg ro_adv_resolve(const adv *a)
{
    adv_cfg c;
    int freelb = a->method == REGOPT_ADV_FREELB, vat = a->method == REGOPT_ADV_VAT;
    c.obj = a->objective >= 0 ? a->objective : vat ? REGOPT_ADV_OBJ_KL : REGOPT_ADV_OBJ_TASK;
    c.init = a->init >= 0 ? a->init
             : vat        ? REGOPT_ADV_INIT_DIRECTION
             : freelb     ? REGOPT_ADV_INIT_UNIFORM
                          : REGOPT_ADV_INIT_ZERO;
    c.scope = a->scope >= 0 ? a->scope : REGOPT_ADV_SCOPE_EXAMPLE;
    c.free = a->param_grad >= 0 ? a->param_grad : freelb;
    c.clean = a->clean_pass >= 0 ? a->clean_pass : !freelb;
    c.K = a->method == REGOPT_ADV_FGM ? 1 : a->steps;
    c.mag = a->init_mag >= 0.0 ? a->init_mag : vat ? 1e-6 : 0.0;
    /* FGM is one PGD step of length epsilon */
    c.step = a->method == REGOPT_ADV_FGM ? a->epsilon : a->step;
    /* FGM and PGD take g_0 from the clean backward (no ascent pass at 0) */
    c.shortcut = c.obj == REGOPT_ADV_OBJ_TASK && c.clean && !c.free &&
                 c.init == REGOPT_ADV_INIT_ZERO;
    return c;
}

static regopt_status adv_attach(ro_reg *r)
{
    if (r->env->model->input_width == 0)
        return ro_fail(r->env->msg, REGOPT_ERR_STATE,
                       "adversarial training perturbs input embeddings: "
                       "regopt_model_set_input_width first");
    return REGOPT_OK;
}

static void adv_detach(ro_reg *r)
{
    adv *a = r->self;
    ro_free(r->env->alloc, a->r);
    ro_free(r->env->alloc, a->g);
    a->r = a->g = NULL;
    a->cap_in = 0;
}

static regopt_status adv_reserve(ro_reg *r, size_t rows, size_t in_rows)
{
    adv *a = r->self;
    size_t d = r->env->model->input_width, n = in_rows > rows ? in_rows : rows;
    float *x, *g;
    if (n <= a->cap_in)
        return REGOPT_OK;
    if (n > RO_MAX_INPUT_FLOATS / d)
        return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "the adversarial perturbation of %zu embedding rows x input width %zu "
                       "would be more than 2^36 floats", n, d);
    x = ro_calloc(r->env->alloc, n, d * sizeof(float));
    g = ro_calloc(r->env->alloc, n, d * sizeof(float));
    if (!x || !g) {
        ro_free(r->env->alloc, x);
        ro_free(r->env->alloc, g);
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for the adversarial perturbation of %zu x %zu", n, d);
    }
    ro_free(r->env->alloc, a->r);
    ro_free(r->env->alloc, a->g);
    a->r = x;
    a->g = g;
    a->cap_in = n;
    return REGOPT_OK;
}

/* Combinations that have no meaning fail the step before anything runs. */
static regopt_status adv_check(ro_reg *r, const ro_step *s)
{
    const adv *a = r->self;
    adv_cfg c = ro_adv_resolve(a);
    size_t bi;
    if (!c.clean && c.obj != REGOPT_ADV_OBJ_TASK)
        return ro_fail(r->env->msg, REGOPT_ERR_STATE,
                       "adv.clean_pass 0 with a KL objective (adv.objective %d): there are no "
                       "clean outputs to compare with", c.obj);
    if (!c.clean && !c.free)
        return ro_fail(r->env->msg, REGOPT_ERR_STATE,
                       "adv.clean_pass 0 needs adv.param_grad 1 (FreeLB: the perturbed passes "
                       "are the only ones that train)");
    if (c.scope == REGOPT_ADV_SCOPE_EXAMPLE)
        for (bi = 0; bi < s->count; bi++) {
            const regopt_batch *b = ro_batch_at(s->batches, bi);
            if (ro_input_rows(b) % b->rows)
                return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                               "batch %zu: adv.scope per example needs input_rows (%zu) to be "
                               "a multiple of rows (%zu)", bi, ro_input_rows(b), b->rows);
        }
    return REGOPT_OK;
}

/* One slot and one output block for the adversarial passes; without a clean
 * pass (FreeLB) the task pass is the first of K and weighs 1/K. */
static void adv_plan(ro_reg *r, ro_plan *p, int now)
{
    adv_cfg c = ro_adv_resolve(r->self);
    r->slot = p->slots++;
    r->block = p->blocks++;
    if (now && !c.clean)
        p->task_scale /= (double)c.K;
}

/* The counter word of a draw: as SMART's (kind, evaluation role, chunk). */
static uint32_t adv_role(uint32_t kind, uint32_t role, uint32_t chunk)
{
    return kind | ((role & 3u) << 4) | (chunk << 8);
}

static void adv_geometry(const ro_reg *r, const ro_view *v, const adv_cfg *c, ro_adv_geom *g)
{
    g->d = r->env->model->input_width;
    g->in = ro_input_rows(&v->rows);
    g->unit = c->scope == REGOPT_ADV_SCOPE_ROW       ? 1
              : c->scope == REGOPT_ADV_SCOPE_EXAMPLE ? g->in / v->n
                                                     : g->in;
    g->norm = ((const adv *)r->self)->norm;
}

/* FreeLB: delta_0 goes into the task pass itself. The first task pass must
 * be a pass of its own when it is perturbed or gives d_input (the plan is
 * known only now). */
static regopt_status adv_begin(ro_reg *r, ro_view *v)
{
    adv *a = r->self;
    adv_cfg c = ro_adv_resolve(a);
    ro_adv_geom g;
    if ((!c.clean || c.shortcut) && v->s->plan.doubled)
        return ro_fail(r->env->msg, REGOPT_ERR_STATE,
                       "%s the first task pass, which R-Drop runs doubled (one pass over 2n "
                       "rows): set rdrop.doubled 0",
                       c.clean ? "FGM and PGD take their first direction from the d_input of"
                               : "adv.clean_pass 0 (FreeLB) perturbs");
    if (c.clean)
        return REGOPT_OK;
    adv_geometry(r, v, &c, &g);
    ro_adv_initial(a->r, &g, &c,
                   ro_step_seed(v->s, v->bi, adv_role(ADV_SEED_INIT, v->role, v->chunk)));
    /* a zero delta_0 passes no perturbation: plain training, bit for bit */
    v->task_perturbation = c.init == REGOPT_ADV_INIT_ZERO || c.mag == 0.0 ? NULL : a->r;
    return REGOPT_OK;
}

/* The clean backward writes d_input when the first direction comes from it
 * (FGM, PGD) or when the task pass is FreeLB's first. */
static regopt_status adv_forward(ro_reg *r, ro_view *v)
{
    adv *a = r->self;
    adv_cfg c = ro_adv_resolve(a);
    ro_adv_geom g;
    if (!c.shortcut && c.clean)
        return REGOPT_OK;
    adv_geometry(r, v, &c, &g);
    ro_zero(a->g, g.in * g.d);
    v->pass[0].d_input = a->g;
    return REGOPT_OK;
}

/* The adversarial objective of outputs `out` against the clean outputs z
 * (task loss or a KL), gradient into dout (scaled by `scale`) and, for the
 * symmetric KL, into dz when it is not NULL. */
static regopt_status adv_objective(ro_reg *r, ro_view *v, int obj, const float *out,
                                   double scale, float *dout, float *dz, double *value)
{
    ro_env *e = r->env;
    const regopt_batch *b = &v->rows;
    size_t i, k = v->k;
    double sum = 0.0, inv = v->s->inv_weight;
    if (obj == REGOPT_ADV_OBJ_TASK)
        return ro_batch_loss(e, b, out, inv, scale, dout, value);
    ro_zero(dout, v->n * k);
    for (i = 0; i < v->n; i++) {
        float rw = ro_row_weight(b, i), cf = (float)(rw * inv * scale);
        const float *ai = out + i * k, *zi = v->z + i * k;
        float *dai = dout + i * k;
        float *dzi = obj == REGOPT_ADV_OBJ_SYM_KL && dz ? dz + i * k : NULL;
        if (rw == 0.0f) /* padding; unlabelled rows keep their weight */
            continue;
        if (e->loss_kind == REGOPT_LOSS_MSE)
            sum += rw * ro_sq_diff_row(ai, zi, k, cf, dai, dzi);
        else if (obj == REGOPT_ADV_OBJ_KL)
            sum += rw * ro_adv_kl_row(zi, ai, k, cf, dai);
        else /* KL + KL, not halved (SMART's l_s) */
            sum += rw * 2.0 * ro_sym_kl_row(ai, zi, k, 2.0f * cf, dai, dzi);
    }
    *value = sum * inv;
    return REGOPT_OK;
}

static const char *const adv_pass_name[] = {"ascent", "final", "FreeLB"};
enum { P_ASCENT, P_FINAL, P_FREELB };

/* One adversarial forward at e + r in the method's slot and its objective:
 * the step fails on a non-finite value. */
static regopt_status adv_forward_pass(ro_reg *r, ro_view *v, regopt_pass *p, int obj,
                                      double scale, float *dz, int which, int it,
                                      double *value)
{
    ro_step *s = v->s;
    float *out = p->outputs, *dout = s->d_outputs + (out - s->outputs);
    regopt_status st;
    p->flags = v->flags;
    p->d_outputs = NULL;
    p->d_input = NULL;
    /* the task objective at e + r is the task loss, weighted by scale */
    p->task_scale = obj == REGOPT_ADV_OBJ_TASK
                        ? ro_task_scale(&v->rows, s->inv_weight, scale) : 0.0;
    st = ro_call_forward(r->env, p);
    if (st == REGOPT_OK)
        st = adv_objective(r, v, obj, out, scale, dout, dz, value);
    if (st != REGOPT_OK)
        return st;
    if (!isfinite(*value))
        return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                       "the adversarial %s forward (pass %d) of micro-batch %zu: its objective "
                       "is %g", adv_pass_name[which], it + 1, v->bi, *value);
    p->d_outputs = dout;
    return REGOPT_OK;
}

/* Its backward: parameter gradients unless NO_PARAM_GRAD, d_input into g
 * when g is not NULL (checked finite). */
static regopt_status adv_backward_pass(ro_reg *r, ro_view *v, regopt_pass *p, int params,
                                       float *g, const ro_adv_geom *geo, int which, int it)
{
    regopt_status st;
    size_t bad;
    p->flags = params ? v->flags : v->flags | REGOPT_PASS_NO_PARAM_GRAD;
    p->d_input = g;
    if (g)
        ro_zero(g, geo->in * geo->d);
    st = ro_call_backward(r->env, p);
    if (st != REGOPT_OK || !g)
        return st;
    bad = ro_adv_nonfinite_row(g, geo->in, geo->d);
    if (bad < geo->in)
        return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                       "the adversarial %s backward (pass %d) of micro-batch %zu wrote a NaN "
                       "or infinite d_input in embedding row %zu", adv_pass_name[which], it + 1,
                       v->bi, bad);
    return REGOPT_OK;
}

/* r from its gradient g, checked finite afterwards (a huge step overflows). */
static regopt_status adv_update(ro_reg *r, ro_view *v, const adv_cfg *c, const ro_adv_geom *geo,
                                int last, int it)
{
    adv *a = r->self;
    size_t bad;
    ro_adv_update(a->r, a->g, geo, c, a->method, a->epsilon, last);
    bad = ro_adv_nonfinite_row(a->r, geo->in, geo->d);
    if (bad < geo->in)
        return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                       "the adversarial update after pass %d of micro-batch %zu overflowed in "
                       "embedding row %zu (adv.step or adv.epsilon too large?)", it + 1, v->bi,
                       bad);
    return REGOPT_OK;
}

static void adv_record(ro_reg *r, ro_view *v, const ro_adv_geom *geo, double loss)
{
    double *acc = v->s->acc + r->acc0;
    if (v->flags & REGOPT_PASS_PERTURBED_WEIGHTS)
        return;
    acc[AC_LOSS] += loss;
    acc[AC_NORM_SUM] += ro_adv_norm_sum(((adv *)r->self)->r, geo);
    acc[AC_UNITS] += (double)(geo->in / geo->unit);
}

/* The engine after the clean pass's forwards: K passes at e + r_k with the
 * updates between them, then (unless every pass trained) the final pass.
 * Runs in the term hook for the KL objectives (the symmetric one adds to the
 * clean gradient before the clean backward) and in the backward hook for the
 * task objective (after the clean backward, whose d_input may be g_0).
 * Returns the weighted objective in *weighted. */
static regopt_status adv_run(ro_reg *r, ro_view *v, double *weighted)
{
    adv *a = r->self;
    adv_cfg c = ro_adv_resolve(a);
    ro_step *s = v->s;
    ro_adv_geom geo;
    regopt_pass p;
    regopt_status st = REGOPT_OK;
    double value = 0.0, sum = 0.0, wsum = 0.0;
    float *dz = c.obj == REGOPT_ADV_OBJ_SYM_KL ? v->dz : NULL;
    uint64_t seed = a->same_seed
                        ? v->seed
                        : ro_step_seed(s, v->bi, adv_role(ADV_SEED_PASS, v->role, v->chunk));
    int it = 0, last = c.K - 1;
    adv_geometry(r, v, &c, &geo);
    ro_view_pass(v, &p, r->slot, r->block, seed);
    p.input_perturbation = a->r;
    if (!c.clean || c.shortcut) { /* g_0: the task backward's d_input */
        size_t bad = ro_adv_nonfinite_row(a->g, geo.in, geo.d);
        if (bad < geo.in)
            return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                           "the %s backward of micro-batch %zu wrote a NaN or infinite "
                           "d_input in embedding row %zu",
                           c.clean ? "clean" : "first FreeLB (task)", v->bi, bad);
    }
    if (!c.clean) { /* FreeLB: pass 1 was the task pass at e + delta_0 */
        sum = v->task[0];
        it = 1;
    } else if (c.shortcut) {
        ro_zero(a->r, geo.in * geo.d);
        st = adv_update(r, v, &c, &geo, c.K == 1, 0);
        it = 1;
    } else {
        ro_adv_initial(a->r, &geo, &c,
                       ro_step_seed(s, v->bi, adv_role(ADV_SEED_INIT, v->role, v->chunk)));
    }
    for (; it < c.K && st == REGOPT_OK; it++) {
        /* every pass trains with weight alpha/K (FreeLB: 1/K of the task
           loss, alpha unused), or only gives the direction */
        double w = c.free ? (c.clean ? a->alpha : 1.0) / (double)c.K : 1.0;
        if (!c.clean && it > 0) /* FreeLB's delta_t from pass t's gradient */
            st = adv_update(r, v, &c, &geo, 0, it - 1);
        if (st == REGOPT_OK)
            st = adv_forward_pass(r, v, &p, c.obj, w, c.free ? dz : NULL,
                                  c.clean ? P_ASCENT : P_FREELB, it, &value);
        if (st == REGOPT_OK)
            st = adv_backward_pass(r, v, &p, c.free, !c.free || it < last ? a->g : NULL, &geo,
                                   P_ASCENT, it);
        if (st != REGOPT_OK)
            break;
        if (c.free) {
            sum += value;
            wsum += w * value;
        }
        if (c.clean && (!c.free || it < last))
            st = adv_update(r, v, &c, &geo, it == last, it);
    }
    if (st != REGOPT_OK)
        return st;
    if (c.free) {
        adv_record(r, v, &geo, sum / (double)c.K);
        *weighted = wsum;
        return REGOPT_OK;
    }
    st = adv_forward_pass(r, v, &p, c.obj, a->alpha, dz, P_FINAL, 0, &value);
    if (st == REGOPT_OK)
        st = adv_backward_pass(r, v, &p, 1, NULL, &geo, P_FINAL, 0);
    if (st != REGOPT_OK)
        return st;
    adv_record(r, v, &geo, value);
    *weighted = a->alpha * value;
    return REGOPT_OK;
}

static regopt_status adv_term(ro_reg *r, ro_view *v, double *weighted)
{
    if (ro_adv_resolve(r->self).obj == REGOPT_ADV_OBJ_TASK)
        return REGOPT_OK; /* after the clean backward: adv_backward */
    return adv_run(r, v, weighted);
}

static regopt_status adv_backward(ro_reg *r, ro_view *v)
{
    double w = 0.0;
    regopt_status st;
    if (ro_adv_resolve(r->self).obj != REGOPT_ADV_OBJ_TASK)
        return REGOPT_OK;
    st = adv_run(r, v, &w);
    v->extra += w;
    return st;
}

static void adv_commit(ro_reg *r, const ro_step *s)
{
    const double *acc = s->acc + r->acc0;
    r->stats[0] = acc[AC_LOSS];
    r->stats[1] = acc[AC_UNITS] > 0.0 ? acc[AC_NORM_SUM] / acc[AC_UNITS] : 0.0;
}

const ro_reg_ops ro_adv_ops = {
    .name = "adv",
    .title = "adversarial training",
    .kind = REGOPT_REG_ADVERSARIAL,
    .flags = REGOPT_REG_SINGLE | RO_REG_BACKEND,
    .order = 35,
    .size = sizeof(adv),
    .keys = adv_keys,
    .n_keys = sizeof adv_keys / sizeof adv_keys[0],
    .stat0 = REGOPT_STAT_ADV_LOSS,
    .n_stats = 2,
    .n_acc = AC_N,
    .init = adv_init,
    .attach = adv_attach,
    .detach = adv_detach,
    .reserve = adv_reserve,
    .set = adv_set,
    .get = adv_get,
    .check = adv_check,
    .plan = adv_plan,
    .begin = adv_begin,
    .forward = adv_forward,
    .term = adv_term,
    .backward = adv_backward,
    .commit = adv_commit,
};
