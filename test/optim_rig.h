/* optim_rig.h — the rig of suite optim (check_optim*.c): the diagonal
 * quadratic host (described in check_optim.c), the configuration shared by
 * the library run and the reference, the independent double-precision
 * reference of the update formulas, and the library side around the host. */
#ifndef REGOPT_OPTIM_RIG_H
#define REGOPT_OPTIM_RIG_H

#include "tests.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ======================================================================== */
/* The test host                                                            */
/* ======================================================================== */

#define PI 3.14159265358979323846
#define NA 3          /* elements of tensor "a", group 0 */
#define NB 2          /* elements of tensor "b", group 1 */
#define NP (NA + NB)  /* all elements, "a" first */

static const int GROUP[NP] = {0, 0, 0, 1, 1};
static const double W_INIT[NP] = {1.0, -2.0, 0.5, 1.5, -0.75};
static const double H[NP] = {1.0, 0.5, 2.0, 1.5, 0.25};
static const double C[NP] = {0.25, -0.5, 0.125, -0.375, 0.5};

/* The gradient the host adds: g_i = H_i * w_i + C_i. */
static inline double host_gradient(int i, double w) { return H[i] * w + C[i]; }

typedef struct host {
    float a[NA], ga[NA]; /* tensor "a" and its gradient */
    float b[NB], gb[NB]; /* tensor "b" and its gradient */
    int forward_calls, backward_calls;
    int pending;     /* forwards not yet followed by their backward */
    int order_error; /* a backward came without exactly one forward before */
    int dirty_grad;  /* a gradient buffer was not zero when backward began */
} host;

static inline float *host_w(host *h, int i) { return i < NA ? &h->a[i] : &h->b[i - NA]; }
static inline float *host_g(host *h, int i) { return i < NA ? &h->ga[i] : &h->gb[i - NA]; }

static inline int host_forward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t k;
    for (k = 0; k < p->rows * p->output_width; k++)
        p->outputs[k] = 0.0f;
    h->forward_calls++;
    h->pending++;
    return 0;
}

static inline int host_backward(const regopt_pass *p, void *user)
{
    host *h = user;
    int i;
    (void)p;
    if (h->pending != 1)
        h->order_error = 1;
    h->pending = 0;
    for (i = 0; i < NP; i++) {
        if (*host_g(h, i) != 0.0f)
            h->dirty_grad = 1;
        *host_g(h, i) += (float)host_gradient(i, *host_w(h, i));
    }
    h->backward_calls++;
    return 0;
}

/* The loss does not matter: zero loss, zero d(loss)/d(outputs). */
static inline int zero_loss(const regopt_batch *batch, const float *outputs, size_t rows,
                     size_t width, float *row_loss, float *d_outputs, void *user)
{
    size_t i;
    (void)batch;
    (void)outputs;
    (void)user;
    for (i = 0; i < rows; i++)
        row_loss[i] = 0.0f;
    for (i = 0; i < rows * width; i++)
        d_outputs[i] = 0.0f;
    return 0;
}

/* ======================================================================== */
/* Configuration shared by the library run and the reference                */
/* ======================================================================== */

typedef struct ref_cfg {
    regopt_optimizer_kind kind;
    double lr, wd, momentum, dampening, beta1, beta2, eps;
    int nesterov, amsgrad;
    int schedule;
    int64_t warmup, total;
    double min_lr_ratio;
    double clip;
    double lr_scale[2]; /* per group */
    double group_wd[2]; /* per group, -1 = inherit wd */
} ref_cfg;

/* torch.optim's defaults, as regopt.h documents them. */
static inline ref_cfg cfg_torch(regopt_optimizer_kind kind)
{
    ref_cfg c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.lr = 1e-3;
    c.wd = kind == REGOPT_ADAMW ? 1e-2 : 0.0;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.schedule = REGOPT_SCHEDULE_CONSTANT;
    c.lr_scale[0] = c.lr_scale[1] = 1.0;
    c.group_wd[0] = c.group_wd[1] = -1.0;
    return c;
}

static inline void set_opt(regopt_optimizer *o, regopt_key key, double v)
{
    regopt_status st = regopt_optimizer_set_double(o, key, v);
    ck_assert_msg(st == REGOPT_OK, "set key %d = %g: %s", (int)key, v,
                  regopt_optimizer_message(o));
}

static inline void set_group(regopt_optimizer *o, int32_t g, regopt_key key, double v)
{
    regopt_status st = regopt_optimizer_set_group(o, g, key, v);
    ck_assert_msg(st == REGOPT_OK, "set group %d key %d = %g: %s", (int)g, (int)key, v,
                  regopt_optimizer_message(o));
}

/* Push a configuration into an optimizer (only the keys of its kind). */
static inline void cfg_apply(regopt_optimizer *o, const ref_cfg *c)
{
    int g;
    set_opt(o, REGOPT_OPT_LR, c->lr);
    set_opt(o, REGOPT_OPT_WEIGHT_DECAY, c->wd);
    set_opt(o, REGOPT_OPT_SCHEDULE, c->schedule);
    set_opt(o, REGOPT_OPT_WARMUP_STEPS, (double)c->warmup);
    set_opt(o, REGOPT_OPT_TOTAL_STEPS, (double)c->total);
    set_opt(o, REGOPT_OPT_MIN_LR_RATIO, c->min_lr_ratio);
    set_opt(o, REGOPT_OPT_CLIP_NORM, c->clip);
    if (c->kind == REGOPT_SGD) {
        set_opt(o, REGOPT_OPT_MOMENTUM, c->momentum);
        set_opt(o, REGOPT_OPT_DAMPENING, c->dampening);
        set_opt(o, REGOPT_OPT_NESTEROV, c->nesterov);
    } else {
        set_opt(o, REGOPT_OPT_BETA1, c->beta1);
        set_opt(o, REGOPT_OPT_BETA2, c->beta2);
        set_opt(o, REGOPT_OPT_EPS, c->eps);
        if (c->kind != REGOPT_RADAM)
            set_opt(o, REGOPT_OPT_AMSGRAD, c->amsgrad);
    }
    for (g = 0; g < 2; g++) {
        set_group(o, g, REGOPT_GROUP_LR_SCALE, c->lr_scale[g]);
        set_group(o, g, REGOPT_GROUP_WEIGHT_DECAY, c->group_wd[g]);
    }
}

/* ======================================================================== */
/* The reference implementation (double precision)                          */
/* ======================================================================== */

typedef struct ref_state {
    double w[NP], buf[NP], m[NP], v[NP], vmax[NP];
    int64_t t;         /* completed updates */
    double norm;       /* pre-clip global gradient norm of the last step */
    double scale;      /* clipping factor of the last step */
    double lr;         /* scheduled lr of the last step */
    int rectified;     /* RAdam steps with rho_t > 5 */
    int unrectified;   /* RAdam steps with rho_t <= 5 */
} ref_state;

static inline void ref_init(ref_state *s)
{
    int i;
    memset(s, 0, sizeof *s);
    for (i = 0; i < NP; i++)
        s->w[i] = W_INIT[i];
}

/* Schedule factor for the next update, t = completed updates, W = warmup,
 * T = total, r = min_lr_ratio (regopt.h, Hugging Face conventions):
 *   t < W     f = t / W
 *   CONSTANT  f = 1
 *   LINEAR    f = r + (1-r) * max(0, (T-t)/(T-W))
 *   COSINE    f = r + (1-r) * 0.5 * (1 + cos(pi * min(1, (t-W)/(T-W)))) */
static inline double ref_schedule(const ref_cfg *c, int64_t t)
{
    double x = (double)t, W = (double)c->warmup, T = (double)c->total;
    double r = c->min_lr_ratio;
    if (x < W)
        return x / W;
    if (c->schedule == REGOPT_SCHEDULE_LINEAR)
        return r + (1.0 - r) * fmax(0.0, (T - x) / (T - W));
    if (c->schedule == REGOPT_SCHEDULE_COSINE)
        return r + (1.0 - r) * 0.5 * (1.0 + cos(PI * fmin(1.0, (x - W) / (T - W))));
    return 1.0;
}

/* torch.optim.SGD, one element:
 *   d = g + wd*w
 *   b = d on the first step, else b = momentum*b + (1-dampening)*d
 *   d = nesterov ? d + momentum*b : b        (when momentum > 0)
 *   w -= lr*d */
static inline void ref_sgd(const ref_cfg *c, double lr, double wd, double g, double *w,
                    double *b, int first)
{
    double d = g + wd * *w;
    if (c->momentum != 0.0) {
        *b = first ? d : c->momentum * *b + (1.0 - c->dampening) * d;
        d = c->nesterov ? d + c->momentum * *b : *b;
    }
    *w -= lr * d;
}

/* torch.optim.Adam / AdamW, one element at step t (1-based):
 *   AdamW: w *= 1 - lr*wd, and no coupled term;  Adam: d = g + wd*w
 *   m = b1*m + (1-b1)*d;  v = b2*v + (1-b2)*d^2;  vmax = max(vmax, v)
 *   w -= lr/(1-b1^t) * m / (sqrt(amsgrad ? vmax : v)/sqrt(1-b2^t) + eps) */
static inline void ref_adam(const ref_cfg *c, int64_t t, double lr, double wd, double g,
                     double *w, double *m, double *v, double *vmax)
{
    double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
    double d = g, vv;
    if (c->kind == REGOPT_ADAMW)
        *w *= 1.0 - lr * wd;
    else
        d += wd * *w;
    *m = c->beta1 * *m + (1.0 - c->beta1) * d;
    *v = c->beta2 * *v + (1.0 - c->beta2) * d * d;
    *vmax = fmax(*vmax, *v);
    vv = c->amsgrad ? *vmax : *v;
    *w -= lr / bc1 * *m / (sqrt(vv) / sqrt(bc2) + c->eps);
}

/* torch.optim.RAdam (Liu et al. 2020), one element at step t (1-based):
 *   d = g + wd*w;  m, v as Adam
 *   rho_inf = 2/(1-b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1-b2^t)
 *   rho_t > 5: r_t = sqrt((rho_t-4)(rho_t-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho_t))
 *              w -= lr * m/(1-b1^t) * r_t * sqrt(1-b2^t)/(sqrt(v)+eps)
 *   otherwise  w -= lr * m/(1-b1^t)
 * Returns 1 when the step was rectified. */
static inline int ref_radam(const ref_cfg *c, int64_t t, double lr, double wd, double g,
                     double *w, double *m, double *v)
{
    double tt = (double)t, b2 = c->beta2;
    double bc1 = 1.0 - pow(c->beta1, tt), bc2 = 1.0 - pow(b2, tt);
    double rho_inf = 2.0 / (1.0 - b2) - 1.0;
    double rho_t = rho_inf - 2.0 * tt * pow(b2, tt) / bc2;
    double d = g + wd * *w;
    *m = c->beta1 * *m + (1.0 - c->beta1) * d;
    *v = b2 * *v + (1.0 - b2) * d * d;
    if (rho_t > 5.0) {
        double r = sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                        ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
        *w -= lr * (*m / bc1) * r * sqrt(bc2) / (sqrt(*v) + c->eps);
        return 1;
    }
    *w -= lr * (*m / bc1);
    return 0;
}

/* One reference step:
 *   g_i = H_i w_i + C_i                              (what the host adds)
 *   norm = ||g||_2;  coef = clip > 0 ? min(1, clip/(norm + 1e-6)) : 1
 *   lr = base lr * f(t);  each element uses its group's lr*lr_scale and its
 *   group's weight decay (group value >= 0) or the optimizer's (-1);
 *   the update rule sees the clipped gradient coef*g. */
static inline void ref_step(const ref_cfg *c, ref_state *s)
{
    double g[NP], sq = 0.0;
    int i;
    for (i = 0; i < NP; i++) {
        g[i] = host_gradient(i, s->w[i]);
        sq += g[i] * g[i];
    }
    s->norm = sqrt(sq);
    s->scale = c->clip > 0.0 ? fmin(1.0, c->clip / (s->norm + 1e-6)) : 1.0;
    s->lr = c->lr * ref_schedule(c, s->t);
    for (i = 0; i < NP; i++) {
        int grp = GROUP[i];
        double lr = s->lr * c->lr_scale[grp];
        double wd = c->group_wd[grp] >= 0.0 ? c->group_wd[grp] : c->wd;
        double d = g[i] * s->scale;
        switch (c->kind) {
        case REGOPT_SGD:
            ref_sgd(c, lr, wd, d, &s->w[i], &s->buf[i], s->t == 0);
            break;
        case REGOPT_ADAM:
        case REGOPT_ADAMW:
            ref_adam(c, s->t + 1, lr, wd, d, &s->w[i], &s->m[i], &s->v[i], &s->vmax[i]);
            break;
        case REGOPT_RADAM:
            if (ref_radam(c, s->t + 1, lr, wd, d, &s->w[i], &s->m[i], &s->v[i]))
                s->rectified += i == 0;
            else
                s->unrectified += i == 0;
            break;
        case REGOPT_HOST: /* the host's own update: not modelled here */
            break;
        }
    }
    s->t++;
}

/* Run the reference alone for `steps` steps. */
static inline void ref_run(const ref_cfg *c, int steps, ref_state *s)
{
    int k;
    ref_init(s);
    for (k = 0; k < steps; k++)
        ref_step(c, s);
}

/* ======================================================================== */
/* The library side: model + optimizer + trainer around the host            */
/* ======================================================================== */

typedef struct rig {
    host h;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *trainer;
    regopt_batch batch;
} rig;

static inline void rig_init(rig *r, const ref_cfg *c)
{
    regopt_status st;
    int i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < NP; i++) {
        *host_w(&r->h, i) = (float)W_INIT[i];
        *host_g(&r->h, i) = 123.0f; /* stale garbage: a step must zero it */
    }
    r->model = regopt_model_create(NULL, &st);
    ck_assert_ptr_nonnull(r->model);
    ck_assert_int_eq(regopt_model_add_param(r->model, "a", r->h.a, r->h.ga, NA,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_add_param(r->model, "b", r->h.b, r->h.gb, NB,
                                            REGOPT_DTYPE_FLOAT32, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(r->model, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(r->model, host_forward, host_backward,
                                                &r->h, NULL), REGOPT_OK);
    r->opt = regopt_optimizer_create(c->kind, NULL, &st);
    ck_assert_ptr_nonnull(r->opt);
    cfg_apply(r->opt, c);
    r->trainer = regopt_trainer_create(r->model, r->opt, &st);
    ck_assert_msg(r->trainer != NULL, "trainer_create: %d %s", (int)st,
                  regopt_last_error_message());
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->trainer, zero_loss, NULL, NULL),
                     REGOPT_OK);
    regopt_batch_init(&r->batch);
    r->batch.rows = 1;
    r->batch.data = &r->h;
}

static inline void rig_free(rig *r)
{
    regopt_trainer_free(r->trainer);
    regopt_optimizer_free(r->opt);
    regopt_model_free(r->model);
}

static inline regopt_status rig_step(rig *r) { return regopt_trainer_step(r->trainer, &r->batch, 1); }

static inline double stat(const rig *r, regopt_key key)
{
    double v = -12345.0;
    ck_assert_int_eq(regopt_trainer_get_double(r->trainer, key, &v), REGOPT_OK);
    return v;
}

static inline int64_t stat_step(const rig *r)
{
    int64_t v = -1;
    ck_assert_int_eq(regopt_trainer_get_int(r->trainer, REGOPT_STAT_STEP, &v), REGOPT_OK);
    return v;
}

/* |got - want| <= rel*|want| + abs_tol */
static inline int close_to(double got, double want, double rel, double abs_tol)
{
    return fabs(got - want) <= rel * fabs(want) + abs_tol;
}

#define PARAM_REL 1e-5
#define PARAM_ABS 1e-7

static inline void expect_params(rig *r, const ref_state *s, int step)
{
    int i;
    for (i = 0; i < NP; i++) {
        double got = *host_w(&r->h, i);
        ck_assert_msg(close_to(got, s->w[i], PARAM_REL, PARAM_ABS),
                      "step %d, element %d (group %d): got %.9g, expected %.9g (diff %.3g)",
                      step, i, GROUP[i], got, s->w[i], got - s->w[i]);
    }
}

static inline void expect_stats(rig *r, const ref_state *s, int step)
{
    double lr = stat(r, REGOPT_STAT_LR), norm = stat(r, REGOPT_STAT_GRAD_NORM);
    double scale = stat(r, REGOPT_STAT_CLIP_SCALE);
    ck_assert_msg(close_to(lr, s->lr, 1e-12, 0.0), "step %d: stat.lr %.17g, expected %.17g",
                  step, lr, s->lr);
    ck_assert_msg(close_to(norm, s->norm, 1e-5, 1e-9),
                  "step %d: stat.grad_norm %.9g, expected %.9g", step, norm, s->norm);
    ck_assert_msg(close_to(scale, s->scale, 1e-5, 0.0),
                  "step %d: stat.clip_scale %.9g, expected %.9g", step, scale, s->scale);
    ck_assert_int_eq(stat_step(r), step);
    ck_assert_msg(stat(r, REGOPT_STAT_FORWARD_CALLS) == 1.0, "step %d: forward calls", step);
    ck_assert_msg(stat(r, REGOPT_STAT_BACKWARD_CALLS) == 1.0, "step %d: backward calls", step);
}

/* One library step and one reference step, then compare everything. */
static inline void step_both(rig *r, const ref_cfg *c, ref_state *s, int step)
{
    regopt_status st = rig_step(r);
    ck_assert_msg(st == REGOPT_OK, "step %d failed: %d %s", step, (int)st,
                  regopt_trainer_message(r->trainer));
    ref_step(c, s);
    expect_params(r, s, step);
    expect_stats(r, s, step);
}

/* The host saw exactly one forward then one backward per step, and the
 * gradient buffers were zero whenever a backward began. */
static inline void expect_host_protocol(const rig *r, int steps)
{
    ck_assert_int_eq(r->h.forward_calls, steps);
    ck_assert_int_eq(r->h.backward_calls, steps);
    ck_assert_msg(!r->h.order_error, "backward without a matching forward");
    ck_assert_msg(!r->h.dirty_grad, "gradients were not zeroed before backward");
}

/* Run `steps` steps of library and reference side by side. lr_factors (may
 * be NULL): hand-computed schedule factors; stat.lr must equal lr*factor.
 * out (may be NULL) receives the final reference state. */
static inline void run_compare(const ref_cfg *c, int steps, const double *lr_factors,
                        ref_state *out)
{
    rig r;
    ref_state s;
    int k;
    rig_init(&r, c);
    ref_init(&s);
    for (k = 1; k <= steps; k++) {
        step_both(&r, c, &s, k);
        if (lr_factors) {
            double lr = stat(&r, REGOPT_STAT_LR), want = c->lr * lr_factors[k - 1];
            ck_assert_msg(close_to(lr, want, 1e-12, 1e-18),
                          "step %d: stat.lr %.17g, expected %.17g", k, lr, want);
        }
    }
    expect_host_protocol(&r, steps);
    if (out)
        *out = s;
    rig_free(&r);
}

/* The test cases past SGD and Adam, in their files. */
void optim_schedule_tcases(Suite *s);  /* check_optim_schedule.c */
void optim_clip_tcases(Suite *s);      /* check_optim_clip.c */
void optim_keys_tcases(Suite *s);      /* check_optim_keys.c */
void optim_nonfinite_tcases(Suite *s); /* check_optim_nonfinite.c */

#endif
