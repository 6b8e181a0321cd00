/* check_optim.c — the base optimizers (SGD, Adam, AdamW, RAdam), the
 * learning-rate schedules, per-group options, global gradient clipping and
 * the optimizer option bounds.
 *
 * Every trajectory is compared with an independent double-precision
 * reference written in this file from the update formulas documented in
 * regopt.h (torch.optim semantics). The library computes in float32, so
 * parameters are compared with a relative tolerance of 1e-5.
 *
 * The host is a diagonal quadratic: two tensors "a" (3 floats, group 0) and
 * "b" (2 floats, group 1), whose backward ADDS g_i = H_i * w_i + C_i computed
 * from the current parameters, so each trajectory depends on the optimizer.
 * The outputs and the loss (a user callback) are identically zero. */
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
static double host_gradient(int i, double w) { return H[i] * w + C[i]; }

typedef struct host {
    float a[NA], ga[NA]; /* tensor "a" and its gradient */
    float b[NB], gb[NB]; /* tensor "b" and its gradient */
    int forward_calls, backward_calls;
    int pending;     /* forwards not yet followed by their backward */
    int order_error; /* a backward came without exactly one forward before */
    int dirty_grad;  /* a gradient buffer was not zero when backward began */
} host;

static float *host_w(host *h, int i) { return i < NA ? &h->a[i] : &h->b[i - NA]; }
static float *host_g(host *h, int i) { return i < NA ? &h->ga[i] : &h->gb[i - NA]; }

static int host_forward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t k;
    for (k = 0; k < p->rows * p->output_width; k++)
        p->outputs[k] = 0.0f;
    h->forward_calls++;
    h->pending++;
    return 0;
}

static int host_backward(const regopt_pass *p, void *user)
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
static int zero_loss(const regopt_batch *batch, const float *outputs, size_t rows,
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
static ref_cfg cfg_torch(regopt_optimizer_kind kind)
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

static void set_opt(regopt_optimizer *o, regopt_key key, double v)
{
    regopt_status st = regopt_optimizer_set_double(o, key, v);
    ck_assert_msg(st == REGOPT_OK, "set key %d = %g: %s", (int)key, v,
                  regopt_optimizer_message(o));
}

static void set_group(regopt_optimizer *o, int32_t g, regopt_key key, double v)
{
    regopt_status st = regopt_optimizer_set_group(o, g, key, v);
    ck_assert_msg(st == REGOPT_OK, "set group %d key %d = %g: %s", (int)g, (int)key, v,
                  regopt_optimizer_message(o));
}

/* Push a configuration into an optimizer (only the keys of its kind). */
static void cfg_apply(regopt_optimizer *o, const ref_cfg *c)
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

static void ref_init(ref_state *s)
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
static double ref_schedule(const ref_cfg *c, int64_t t)
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
static void ref_sgd(const ref_cfg *c, double lr, double wd, double g, double *w,
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
static void ref_adam(const ref_cfg *c, int64_t t, double lr, double wd, double g,
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
static int ref_radam(const ref_cfg *c, int64_t t, double lr, double wd, double g,
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
static void ref_step(const ref_cfg *c, ref_state *s)
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
        }
    }
    s->t++;
}

/* Run the reference alone for `steps` steps. */
static void ref_run(const ref_cfg *c, int steps, ref_state *s)
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

static void rig_init(rig *r, const ref_cfg *c)
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

static void rig_free(rig *r)
{
    regopt_trainer_free(r->trainer);
    regopt_optimizer_free(r->opt);
    regopt_model_free(r->model);
}

static regopt_status rig_step(rig *r) { return regopt_trainer_step(r->trainer, &r->batch, 1); }

static double stat(const rig *r, regopt_key key)
{
    double v = -12345.0;
    ck_assert_int_eq(regopt_trainer_get_double(r->trainer, key, &v), REGOPT_OK);
    return v;
}

static int64_t stat_step(const rig *r)
{
    int64_t v = -1;
    ck_assert_int_eq(regopt_trainer_get_int(r->trainer, REGOPT_STAT_STEP, &v), REGOPT_OK);
    return v;
}

/* |got - want| <= rel*|want| + abs_tol */
static int close_to(double got, double want, double rel, double abs_tol)
{
    return fabs(got - want) <= rel * fabs(want) + abs_tol;
}

#define PARAM_REL 1e-5
#define PARAM_ABS 1e-7

static void expect_params(rig *r, const ref_state *s, int step)
{
    int i;
    for (i = 0; i < NP; i++) {
        double got = *host_w(&r->h, i);
        ck_assert_msg(close_to(got, s->w[i], PARAM_REL, PARAM_ABS),
                      "step %d, element %d (group %d): got %.9g, expected %.9g (diff %.3g)",
                      step, i, GROUP[i], got, s->w[i], got - s->w[i]);
    }
}

static void expect_stats(rig *r, const ref_state *s, int step)
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
static void step_both(rig *r, const ref_cfg *c, ref_state *s, int step)
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
static void expect_host_protocol(const rig *r, int steps)
{
    ck_assert_int_eq(r->h.forward_calls, steps);
    ck_assert_int_eq(r->h.backward_calls, steps);
    ck_assert_msg(!r->h.order_error, "backward without a matching forward");
    ck_assert_msg(!r->h.dirty_grad, "gradients were not zeroed before backward");
}

/* Run `steps` steps of library and reference side by side. lr_factors (may
 * be NULL): hand-computed schedule factors; stat.lr must equal lr*factor.
 * out (may be NULL) receives the final reference state. */
static void run_compare(const ref_cfg *c, int steps, const double *lr_factors,
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

/* ======================================================================== */
/* SGD                                                                      */
/* ======================================================================== */

START_TEST(test_sgd_plain)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_default_lr)
{
    ref_cfg c = cfg_torch(REGOPT_SGD); /* lr 1e-3, nothing else */
    run_compare(&c, 6, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_momentum)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.05;
    c.momentum = 0.9;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* torch starts the buffer at the first gradient itself, not at
 * (1-dampening)*g: with dampening the first step is a full SGD step. */
START_TEST(test_sgd_dampening)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.8;
    c.dampening = 0.5;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_nesterov)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.05;
    c.momentum = 0.9;
    c.nesterov = 1;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.wd = 0.2;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_sgd_momentum_weight_decay_nesterov)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.05;
    c.wd = 0.3;
    c.momentum = 0.7;
    c.nesterov = 1;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* Nesterov needs momentum > 0 and dampening 0; the setter accepts the flag
 * alone (cross-key checks are order-free) and the step refuses it without
 * touching anything. */
START_TEST(test_sgd_nesterov_needs_momentum)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    int i;
    c.lr = 0.1;
    c.nesterov = 1; /* momentum 0 */
    rig_init(&r, &c);
    ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
    set_opt(r.opt, REGOPT_OPT_MOMENTUM, 0.9);
    set_opt(r.opt, REGOPT_OPT_DAMPENING, 0.5);
    ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
    for (i = 0; i < NP; i++)
        ck_assert_msg(*host_w(&r.h, i) == (float)W_INIT[i], "element %d changed", i);
    ck_assert_int_eq(stat_step(&r), 0);
    ck_assert_int_eq(r.h.forward_calls, 0);
    /* a valid combination now steps exactly like the reference */
    set_opt(r.opt, REGOPT_OPT_DAMPENING, 0.0);
    r.h.dirty_grad = 0;
    c.momentum = 0.9;
    ref_init(&s);
    step_both(&r, &c, &s, 1);
    step_both(&r, &c, &s, 2);
    rig_free(&r);
}
END_TEST

/* ======================================================================== */
/* Adam, AdamW, RAdam                                                       */
/* ======================================================================== */

START_TEST(test_adam_defaults)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

/* A large eps makes its position (outside sqrt(v)/sqrt(1-b2^t)) visible. */
START_TEST(test_adam_betas_eps)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.beta1 = 0.8;
    c.beta2 = 0.95;
    c.eps = 0.05;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adam_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.wd = 0.3;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adam_amsgrad)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM), plain;
    ref_state with, without;
    int i, differs = 0;
    c.lr = 0.1;
    c.beta2 = 0.6; /* short memory: v falls as |g| shrinks, so max(v) matters */
    c.amsgrad = 1;
    run_compare(&c, 10, NULL, &with);
    plain = c;
    plain.amsgrad = 0;
    ref_run(&plain, 10, &without);
    for (i = 0; i < NP; i++)
        differs |= fabs(with.w[i] - without.w[i]) > 1e-3;
    ck_assert_msg(differs, "the AMSGrad maximum never mattered in this run");
}
END_TEST

/* torch's first Adam step is lr * g/(|g| + eps*sqrt(1-b2)) ~ lr*sign(g),
 * whatever beta2 is: m_hat = g and v_hat = g^2 exactly. A large lr makes
 * the displacement measurable to ~1e-7 relative in float32. */
START_TEST(test_adam_first_step_is_lr_sign)
{
    static const regopt_optimizer_kind kinds[2] = {REGOPT_ADAM, REGOPT_ADAMW};
    static const double beta2s[3] = {0.9, 0.999, 0.9999};
    int j, b, i;
    for (j = 0; j < 2; j++) {
        for (b = 0; b < 3; b++) {
            ref_cfg c = cfg_torch(kinds[j]);
            rig r;
            c.lr = 0.5;
            c.wd = 0.0;
            c.beta2 = beta2s[b];
            rig_init(&r, &c);
            ck_assert_int_eq(rig_step(&r), REGOPT_OK);
            for (i = 0; i < NP; i++) {
                double g = host_gradient(i, W_INIT[i]);
                double want = c.lr * g / (fabs(g) + c.eps * sqrt(1.0 - c.beta2));
                double got = W_INIT[i] - *host_w(&r.h, i);
                ck_assert_msg(close_to(got, want, 1e-6, 0.0),
                              "kind %d, beta2 %g, element %d: first step moved %.9g, "
                              "expected %.9g (rel %.3g)", (int)kinds[j], c.beta2, i, got,
                              want, (got - want) / want);
            }
            rig_free(&r);
        }
    }
}
END_TEST

/* AdamW's default weight decay is 1e-2 (decoupled). */
START_TEST(test_adamw_defaults)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adamw_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    c.wd = 0.5;
    c.eps = 0.01;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

START_TEST(test_adamw_amsgrad)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.1;
    c.wd = 0.2;
    c.beta2 = 0.6;
    c.amsgrad = 1;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* With beta2 = 0.999, rho_t <= 5 for t <= 5 and > 5 from t = 6 on. */
START_TEST(test_radam_defaults)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    ref_state s;
    c.lr = 0.05;
    run_compare(&c, 10, NULL, &s);
    ck_assert_int_eq(s.unrectified, 5);
    ck_assert_int_eq(s.rectified, 5);
}
END_TEST

START_TEST(test_radam_weight_decay_eps)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    ref_state s;
    c.lr = 0.05;
    c.wd = 0.2;
    c.beta1 = 0.8;
    c.eps = 0.05;
    run_compare(&c, 10, NULL, &s);
    ck_assert_int_gt(s.unrectified, 0);
    ck_assert_int_gt(s.rectified, 0);
}
END_TEST

START_TEST(test_radam_beta2)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    ref_state s;
    c.lr = 0.05;
    c.beta2 = 0.9; /* rho_inf = 19 */
    run_compare(&c, 12, NULL, &s);
    ck_assert_int_gt(s.unrectified, 0);
    ck_assert_int_gt(s.rectified, 0);
}
END_TEST

/* ======================================================================== */
/* Schedules                                                                */
/* ======================================================================== */

/* W = 3: f = 0, 1/3, 2/3, then 1. */
START_TEST(test_schedule_constant_warmup)
{
    static const double f[8] = {0.0, 1.0 / 3.0, 2.0 / 3.0, 1, 1, 1, 1, 1};
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.warmup = 3;
    run_compare(&c, 8, f, NULL);
}
END_TEST

/* W = 2, T = 8, r = 0.1: f(t) = t/2 for t < 2, then 0.1 + 0.9*(8-t)/6,
 * held at the floor 0.1 after T. */
START_TEST(test_schedule_linear_warmup)
{
    static const double f[10] = {0.0, 0.5, 1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1, 0.1};
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.5;
    c.schedule = REGOPT_SCHEDULE_LINEAR;
    c.warmup = 2;
    c.total = 8;
    c.min_lr_ratio = 0.1;
    run_compare(&c, 10, f, NULL);
}
END_TEST

/* W = 0, T = 4, r = 0: the first update uses the full lr, and after T the
 * lr is 0, so plain SGD stops moving. */
START_TEST(test_schedule_linear_no_warmup)
{
    static const double f[6] = {1.0, 0.75, 0.5, 0.25, 0.0, 0.0};
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.2;
    c.schedule = REGOPT_SCHEDULE_LINEAR;
    c.total = 4;
    run_compare(&c, 6, f, NULL);
}
END_TEST

/* W = 2, T = 8, r = 0.2: f = 0, 0.5, then 0.2 + 0.8*0.5*(1 + cos(pi*(t-2)/6)),
 * held at 0.2 after T. Through Adam, so the moments see lr-free updates. */
START_TEST(test_schedule_cosine_warmup)
{
    double f[11];
    int t;
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    f[0] = 0.0;
    f[1] = 0.5;
    for (t = 2; t <= 8; t++)
        f[t] = 0.2 + 0.8 * 0.5 * (1.0 + cos(PI * (t - 2) / 6.0));
    f[9] = f[10] = 0.2;
    ck_assert(close_to(f[5], 0.6, 1e-15, 0.0)); /* halfway: midpoint of [r, 1] */
    c.lr = 0.05;
    c.schedule = REGOPT_SCHEDULE_COSINE;
    c.warmup = 2;
    c.total = 8;
    c.min_lr_ratio = 0.2;
    run_compare(&c, 11, f, NULL);
}
END_TEST

START_TEST(test_schedule_cosine_no_warmup_radam)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    c.lr = 0.05;
    c.schedule = REGOPT_SCHEDULE_COSINE;
    c.total = 7;
    run_compare(&c, 9, NULL, NULL);
}
END_TEST

/* With W > 0 the first update uses lr 0: the parameters do not move at all
 * (the Adam moments still advance, which the next steps reveal). */
START_TEST(test_schedule_warmup_first_update_is_zero)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    rig r;
    ref_state s;
    int i, k;
    c.lr = 0.05;
    c.warmup = 4;
    rig_init(&r, &c);
    ref_init(&s);
    step_both(&r, &c, &s, 1);
    ck_assert(stat(&r, REGOPT_STAT_LR) == 0.0);
    for (i = 0; i < NP; i++)
        ck_assert_msg(*host_w(&r.h, i) == (float)W_INIT[i], "element %d moved", i);
    for (k = 2; k <= 7; k++)
        step_both(&r, &c, &s, k);
    expect_host_protocol(&r, 7);
    rig_free(&r);
}
END_TEST

/* LINEAR and COSINE need total_steps > 0: the step fails before any pass
 * and changes nothing; after a successful step as well. */
START_TEST(test_schedule_needs_total_steps)
{
    static const int kinds[2] = {REGOPT_SCHEDULE_LINEAR, REGOPT_SCHEDULE_COSINE};
    int j, i;
    for (j = 0; j < 2; j++) {
        ref_cfg c = cfg_torch(REGOPT_SGD);
        rig r;
        ref_state s;
        float before[NP];
        c.lr = 0.1;
        rig_init(&r, &c);
        ref_init(&s);
        step_both(&r, &c, &s, 1); /* CONSTANT: fine */
        set_opt(r.opt, REGOPT_OPT_SCHEDULE, kinds[j]);
        for (i = 0; i < NP; i++)
            before[i] = *host_w(&r.h, i);
        ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
        ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
        for (i = 0; i < NP; i++)
            ck_assert_msg(*host_w(&r.h, i) == before[i], "schedule %d: element %d changed",
                          kinds[j], i);
        ck_assert_int_eq(stat_step(&r), 1);
        ck_assert_int_eq(r.h.forward_calls, 1);
        ck_assert_int_eq(r.h.backward_calls, 1);
        /* with total_steps the same trainer goes on (t = 1 completed) */
        set_opt(r.opt, REGOPT_OPT_TOTAL_STEPS, 5);
        c.schedule = kinds[j];
        c.total = 5;
        step_both(&r, &c, &s, 2);
        step_both(&r, &c, &s, 3);
        rig_free(&r);
    }
}
END_TEST

START_TEST(test_schedule_fresh_trainer_needs_total_steps)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    rig r;
    int i;
    c.schedule = REGOPT_SCHEDULE_COSINE;
    c.warmup = 2; /* warmup alone is not enough */
    rig_init(&r, &c);
    ck_assert_int_eq(rig_step(&r), REGOPT_ERR_INVALID_ARGUMENT);
    for (i = 0; i < NP; i++)
        ck_assert(*host_w(&r.h, i) == (float)W_INIT[i]);
    ck_assert_int_eq(stat_step(&r), 0);
    ck_assert_int_eq(r.h.forward_calls, 0);
    rig_free(&r);
}
END_TEST

/* A learning rate changed between steps applies from the next step. */
START_TEST(test_lr_change_between_steps)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    int k;
    c.lr = 0.1;
    c.momentum = 0.5;
    rig_init(&r, &c);
    ref_init(&s);
    for (k = 1; k <= 3; k++)
        step_both(&r, &c, &s, k);
    c.lr = 0.02;
    set_opt(r.opt, REGOPT_OPT_LR, c.lr);
    for (k = 4; k <= 6; k++)
        step_both(&r, &c, &s, k);
    rig_free(&r);
}
END_TEST

/* ======================================================================== */
/* Per-group options                                                        */
/* ======================================================================== */

START_TEST(test_group_lr_scale_sgd)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.9;
    c.lr_scale[1] = 0.25;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

/* Global decay 0.2; group 1 opts out with 0 (biases). */
START_TEST(test_group_no_decay_sgd)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.wd = 0.2;
    c.group_wd[1] = 0.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_decay_override_sgd)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.5;
    c.wd = 0.05;
    c.group_wd[1] = 0.8;
    c.lr_scale[1] = 2.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_adam)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.wd = 0.3;
    c.group_wd[1] = 0.0;
    c.lr_scale[1] = 2.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

/* AdamW's decoupled decay uses the group's lr (lr*lr_scale) and wd. */
START_TEST(test_group_adamw)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    c.wd = 0.4;
    c.lr_scale[0] = 0.5;
    c.group_wd[1] = 0.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_adamw_decay_scaled)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    c.lr = 0.05;
    c.wd = 0.1;
    c.group_wd[1] = 0.9;
    c.lr_scale[1] = 3.0;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_group_radam)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    c.lr = 0.05;
    c.lr_scale[1] = 0.5;
    c.group_wd[1] = 0.2;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* lr_scale 0 freezes a group exactly, even under AdamW decay. */
START_TEST(test_group_lr_scale_zero_freezes)
{
    ref_cfg c = cfg_torch(REGOPT_ADAMW);
    rig r;
    ref_state s;
    int i, k;
    c.lr = 0.05;
    c.wd = 0.5;
    c.lr_scale[1] = 0.0;
    rig_init(&r, &c);
    ref_init(&s);
    for (k = 1; k <= 6; k++)
        step_both(&r, &c, &s, k);
    for (i = NA; i < NP; i++)
        ck_assert_msg(*host_w(&r.h, i) == (float)W_INIT[i], "frozen element %d moved", i);
    for (i = 0; i < NA; i++)
        ck_assert_msg(*host_w(&r.h, i) != (float)W_INIT[i], "element %d did not move", i);
    rig_free(&r);
}
END_TEST

/* Setting a group's decay back to -1 inherits the optimizer's again. */
START_TEST(test_group_decay_back_to_inherit)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    double v = 0.0;
    int k;
    c.lr = 0.1;
    c.wd = 0.25;
    rig_init(&r, &c);
    set_group(r.opt, 1, REGOPT_GROUP_WEIGHT_DECAY, 0.7);
    set_group(r.opt, 1, REGOPT_GROUP_WEIGHT_DECAY, -1.0);
    ck_assert_int_eq(regopt_optimizer_get_group(r.opt, 1, REGOPT_GROUP_WEIGHT_DECAY, &v),
                     REGOPT_OK);
    ck_assert(v == -1.0);
    ref_init(&s);
    for (k = 1; k <= 5; k++)
        step_both(&r, &c, &s, k);
    rig_free(&r);
}
END_TEST

/* ======================================================================== */
/* Gradient-norm clipping                                                   */
/* ======================================================================== */

/* The first step's gradient is known in closed form: g = H*W_INIT + C. */
static double initial_grad_norm(void)
{
    double s = 0.0;
    int i;
    for (i = 0; i < NP; i++)
        s += host_gradient(i, W_INIT[i]) * host_gradient(i, W_INIT[i]);
    return sqrt(s);
}

START_TEST(test_clip_first_step_stats)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    double norm = initial_grad_norm(); /* g0 = 1.25, -1.5, 1.125, 1.875, 0.3125 */
    double want_scale = 0.5 / (norm + 1e-6);
    int i;
    ck_assert(close_to(norm, sqrt(8.69140625), 1e-15, 0.0));
    c.lr = 0.1;
    c.clip = 0.5;
    rig_init(&r, &c);
    ck_assert_int_eq(rig_step(&r), REGOPT_OK);
    ck_assert_msg(close_to(stat(&r, REGOPT_STAT_GRAD_NORM), norm, 1e-7, 0.0),
                  "grad_norm %.9g, expected %.9g", stat(&r, REGOPT_STAT_GRAD_NORM), norm);
    ck_assert_msg(close_to(stat(&r, REGOPT_STAT_CLIP_SCALE), want_scale, 1e-7, 0.0),
                  "clip_scale %.9g, expected %.9g", stat(&r, REGOPT_STAT_CLIP_SCALE),
                  want_scale);
    /* w1 = w0 - lr * coef * g0 */
    for (i = 0; i < NP; i++) {
        double want = W_INIT[i] - 0.1 * want_scale * host_gradient(i, W_INIT[i]);
        ck_assert_msg(close_to(*host_w(&r.h, i), want, PARAM_REL, PARAM_ABS),
                      "element %d: %.9g, expected %.9g", i, (double)*host_w(&r.h, i), want);
    }
    rig_free(&r);
}
END_TEST

START_TEST(test_clip_sgd_trajectory)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.momentum = 0.5;
    c.clip = 1.0;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* The clipping factor scales the gradient only, not the weight-decay term. */
START_TEST(test_clip_sgd_weight_decay)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    c.lr = 0.1;
    c.wd = 0.5;
    c.clip = 0.3;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_clip_adam)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    c.lr = 0.05;
    c.wd = 0.1;
    c.eps = 0.05; /* with a large eps the scaled gradient shows in the step */
    c.clip = 0.2;
    run_compare(&c, 8, NULL, NULL);
}
END_TEST

START_TEST(test_clip_radam)
{
    ref_cfg c = cfg_torch(REGOPT_RADAM);
    c.lr = 0.05;
    c.clip = 0.5;
    run_compare(&c, 10, NULL, NULL);
}
END_TEST

/* A limit above the norm: factor exactly 1 and plain SGD. */
START_TEST(test_clip_inactive)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    ref_state s;
    int k;
    c.lr = 0.1;
    c.clip = 100.0;
    rig_init(&r, &c);
    ref_init(&s);
    for (k = 1; k <= 6; k++) {
        step_both(&r, &c, &s, k);
        ck_assert(stat(&r, REGOPT_STAT_CLIP_SCALE) == 1.0);
    }
    rig_free(&r);
}
END_TEST

/* No clipping (the default): factor 1, and the norm is still reported. */
START_TEST(test_clip_off_reports_norm)
{
    ref_cfg c = cfg_torch(REGOPT_ADAM);
    rig r;
    ref_state s;
    rig_init(&r, &c);
    ref_init(&s);
    step_both(&r, &c, &s, 1);
    ck_assert(stat(&r, REGOPT_STAT_CLIP_SCALE) == 1.0);
    ck_assert(close_to(stat(&r, REGOPT_STAT_GRAD_NORM), initial_grad_norm(), 1e-7, 0.0));
    rig_free(&r);
}
END_TEST

/* regopt.h: "Before the first step they read 0." */
START_TEST(test_stats_zero_before_first_step)
{
    ref_cfg c = cfg_torch(REGOPT_SGD);
    rig r;
    rig_init(&r, &c);
    ck_assert_int_eq(stat_step(&r), 0);
    ck_assert_msg(stat(&r, REGOPT_STAT_LR) == 0.0, "stat.lr %g", stat(&r, REGOPT_STAT_LR));
    ck_assert_msg(stat(&r, REGOPT_STAT_GRAD_NORM) == 0.0, "stat.grad_norm %g",
                  stat(&r, REGOPT_STAT_GRAD_NORM));
    ck_assert_msg(stat(&r, REGOPT_STAT_CLIP_SCALE) == 0.0,
                  "stat.clip_scale reads %g before the first step, header says 0",
                  stat(&r, REGOPT_STAT_CLIP_SCALE));
    rig_free(&r);
}
END_TEST

/* ======================================================================== */
/* Options: defaults, bounds, errors                                        */
/* ======================================================================== */

#define KIND_BIT(k) (1u << (unsigned)(k))
#define ALL_KINDS (KIND_BIT(REGOPT_SGD) | KIND_BIT(REGOPT_ADAM) | KIND_BIT(REGOPT_ADAMW) | \
                   KIND_BIT(REGOPT_RADAM))
#define ADAM_FAMILY (KIND_BIT(REGOPT_ADAM) | KIND_BIT(REGOPT_ADAMW) | KIND_BIT(REGOPT_RADAM))
#define TWO53 9007199254740992.0

/* Every optimizer and group key as regopt.h documents it. */
typedef struct key_spec {
    regopt_key key;
    const char *name;
    int type;
    double min, max, def;
    uint32_t flags;
    unsigned kinds; /* KIND_BIT of each kind it applies to */
} key_spec;

#define MINX REGOPT_KEY_MIN_EXCLUSIVE
#define MAXX REGOPT_KEY_MAX_EXCLUSIVE
#define GRP REGOPT_KEY_GROUP
#define TD REGOPT_TYPE_DOUBLE
#define TI REGOPT_TYPE_INT

static const key_spec KEYS[] = {
    {REGOPT_OPT_LR, "optimizer.lr", TD, 0, 1e3, 1e-3, MINX, ALL_KINDS},
    {REGOPT_OPT_WEIGHT_DECAY, "optimizer.weight_decay", TD, 0, 1e3, 0, 0, ALL_KINDS},
    {REGOPT_OPT_MOMENTUM, "optimizer.momentum", TD, 0, 1, 0, MAXX, KIND_BIT(REGOPT_SGD)},
    {REGOPT_OPT_DAMPENING, "optimizer.dampening", TD, 0, 1, 0, 0, KIND_BIT(REGOPT_SGD)},
    {REGOPT_OPT_NESTEROV, "optimizer.nesterov", TI, 0, 1, 0, 0, KIND_BIT(REGOPT_SGD)},
    {REGOPT_OPT_BETA1, "optimizer.beta1", TD, 0, 1, 0.9, MAXX, ADAM_FAMILY},
    {REGOPT_OPT_BETA2, "optimizer.beta2", TD, 0, 1, 0.999, MAXX, ADAM_FAMILY},
    {REGOPT_OPT_EPS, "optimizer.eps", TD, 0, 1, 1e-8, MINX, ADAM_FAMILY},
    {REGOPT_OPT_AMSGRAD, "optimizer.amsgrad", TI, 0, 1, 0, 0,
     KIND_BIT(REGOPT_ADAM) | KIND_BIT(REGOPT_ADAMW)},
    {REGOPT_OPT_SCHEDULE, "optimizer.schedule", TI, 0, 2, 0, 0, ALL_KINDS},
    {REGOPT_OPT_WARMUP_STEPS, "optimizer.warmup_steps", TI, 0, TWO53, 0, 0, ALL_KINDS},
    {REGOPT_OPT_TOTAL_STEPS, "optimizer.total_steps", TI, 0, TWO53, 0, 0, ALL_KINDS},
    {REGOPT_OPT_MIN_LR_RATIO, "optimizer.min_lr_ratio", TD, 0, 1, 0, 0, ALL_KINDS},
    {REGOPT_OPT_CLIP_NORM, "optimizer.clip_norm", TD, 0, 1e30, 0, 0, ALL_KINDS},
    {REGOPT_GROUP_LR_SCALE, "group.lr_scale", TD, 0, 1e6, 1, GRP, ALL_KINDS},
    {REGOPT_GROUP_WEIGHT_DECAY, "group.weight_decay", TD, -1, 1e3, -1, GRP, ALL_KINDS},
};
#define N_KEYS (sizeof KEYS / sizeof KEYS[0])

static const regopt_optimizer_kind ALL[4] = {REGOPT_SGD, REGOPT_ADAM, REGOPT_ADAMW,
                                             REGOPT_RADAM};

static regopt_optimizer *new_opt(regopt_optimizer_kind kind)
{
    regopt_status st = REGOPT_ERR_STATE;
    regopt_optimizer *o = regopt_optimizer_create(kind, NULL, &st);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(st, REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_kind(o), kind);
    return o;
}

static int is_group_key(const key_spec *k) { return (k->flags & GRP) != 0; }

/* Set/get a key of either family; group < 0 for optimizer keys. */
static regopt_status key_set(regopt_optimizer *o, int32_t group, regopt_key key, double v)
{
    return group < 0 ? regopt_optimizer_set_double(o, key, v)
                     : regopt_optimizer_set_group(o, group, key, v);
}

static double key_get(const regopt_optimizer *o, int32_t group, regopt_key key)
{
    double v = NAN;
    regopt_status st = group < 0 ? regopt_optimizer_get_double(o, key, &v)
                                 : regopt_optimizer_get_group(o, group, key, &v);
    ck_assert_msg(st == REGOPT_OK, "get key %d: %s", (int)key, regopt_optimizer_message(o));
    return v;
}

static void expect_accepted(regopt_optimizer *o, int32_t group, const key_spec *k, double v)
{
    regopt_status st = key_set(o, group, k->key, v);
    ck_assert_msg(st == REGOPT_OK, "%s (kind %d, group %d) = %.17g refused: %d %s", k->name,
                  (int)regopt_optimizer_get_kind(o), (int)group, v, (int)st,
                  regopt_optimizer_message(o));
    ck_assert_msg(key_get(o, group, k->key) == v, "%s = %.17g reads back %.17g", k->name, v,
                  key_get(o, group, k->key));
}

/* OUT_OF_RANGE, a message naming the key, and the old value kept. */
static void expect_rejected(regopt_optimizer *o, int32_t group, const key_spec *k, double v)
{
    double before = key_get(o, group, k->key);
    regopt_status st = key_set(o, group, k->key, v);
    const char *msg = regopt_optimizer_message(o);
    ck_assert_msg(st == REGOPT_ERR_OUT_OF_RANGE, "%s (kind %d, group %d) = %.17g: status %d",
                  k->name, (int)regopt_optimizer_get_kind(o), (int)group, v, (int)st);
    ck_assert_msg(msg != NULL && strstr(msg, k->name) != NULL,
                  "%s = %.17g: message \"%s\" does not name the key", k->name, v,
                  msg ? msg : "(null)");
    ck_assert_msg(key_get(o, group, k->key) == before, "%s = %.17g changed the value to %.17g",
                  k->name, v, key_get(o, group, k->key));
}

/* Both edges (inclusive or exclusive), just outside, NaN and infinities,
 * and for integer keys a fraction. */
static void check_edges(regopt_optimizer *o, int32_t group, const key_spec *k)
{
    int is_int = k->type == TI;
    double below = is_int ? k->min - 1.0 : nextafter(k->min, -INFINITY);
    double above = is_int ? k->max + 1.0 : nextafter(k->max, INFINITY);
    if (above == k->max) /* 2^53 + 1 is not a double */
        above = nextafter(k->max, INFINITY);
    if (k->flags & MINX) {
        expect_rejected(o, group, k, k->min);
        expect_accepted(o, group, k, nextafter(k->min, INFINITY));
    } else {
        expect_accepted(o, group, k, k->min);
    }
    expect_rejected(o, group, k, below);
    if (k->flags & MAXX) {
        expect_rejected(o, group, k, k->max);
        expect_accepted(o, group, k, nextafter(k->max, -INFINITY));
    } else {
        expect_accepted(o, group, k, k->max);
    }
    expect_rejected(o, group, k, above);
    expect_rejected(o, group, k, NAN);
    expect_rejected(o, group, k, INFINITY);
    expect_rejected(o, group, k, -INFINITY);
    expect_rejected(o, group, k, -1e300);
    expect_rejected(o, group, k, 1e300);
    if (is_int)
        expect_rejected(o, group, k, k->min + 0.5);
}

START_TEST(test_key_info_matches_header)
{
    size_t i;
    for (i = 0; i < N_KEYS; i++) {
        const key_spec *k = &KEYS[i];
        const char *name = NULL;
        int type = 0;
        double min = NAN, max = NAN, def = NAN;
        uint32_t flags = 0xffffffffu;
        regopt_key back = (regopt_key)0;
        ck_assert_int_eq(regopt_key_info(k->key, &name, &type, &min, &max, &def, &flags),
                         REGOPT_OK);
        ck_assert_str_eq(name, k->name);
        ck_assert_msg(type == k->type, "%s: type %d", k->name, type);
        ck_assert_msg(min == k->min && max == k->max, "%s: bounds [%.17g, %.17g]", k->name,
                      min, max);
        ck_assert_msg(def == k->def, "%s: default %.17g, header %.17g", k->name, def, k->def);
        ck_assert_msg(flags == k->flags, "%s: flags 0x%x", k->name, (unsigned)flags);
        ck_assert_int_eq(regopt_key_from_name(k->name, &back), REGOPT_OK);
        ck_assert_int_eq(back, k->key);
    }
}
END_TEST

/* A new optimizer holds key_info's defaults (AdamW: weight decay 1e-2),
 * which are torch's: lr 1e-3, betas 0.9/0.999, eps 1e-8. */
START_TEST(test_defaults)
{
    int j;
    for (j = 0; j < 4; j++) {
        regopt_optimizer *o = new_opt(ALL[j]);
        size_t i;
        int64_t iv = -1;
        for (i = 0; i < N_KEYS; i++) {
            const key_spec *k = &KEYS[i];
            double info_def = NAN, want;
            if (!(k->kinds & KIND_BIT(ALL[j])))
                continue;
            ck_assert_int_eq(regopt_key_info(k->key, NULL, NULL, NULL, NULL, &info_def, NULL),
                             REGOPT_OK);
            want = (k->key == REGOPT_OPT_WEIGHT_DECAY && ALL[j] == REGOPT_ADAMW) ? 1e-2
                                                                                 : info_def;
            if (is_group_key(k)) {
                ck_assert_msg(key_get(o, 0, k->key) == want, "%s group 0", k->name);
                ck_assert_msg(key_get(o, 1, k->key) == want, "%s group 1", k->name);
                ck_assert_msg(key_get(o, 63, k->key) == want, "%s group 63", k->name);
            } else {
                ck_assert_msg(key_get(o, -1, k->key) == want, "kind %d %s = %.17g, want %.17g",
                              (int)ALL[j], k->name, key_get(o, -1, k->key), want);
            }
            if (k->type == TI) {
                ck_assert_int_eq(regopt_optimizer_get_int(o, k->key, &iv), REGOPT_OK);
                ck_assert_int_eq(iv, (int64_t)want);
            }
        }
        ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 1e-3);
        ck_assert(key_get(o, -1, REGOPT_OPT_WEIGHT_DECAY) == (ALL[j] == REGOPT_ADAMW ? 1e-2 : 0.0));
        ck_assert(key_get(o, -1, REGOPT_OPT_CLIP_NORM) == 0.0);
        ck_assert(key_get(o, -1, REGOPT_OPT_SCHEDULE) == REGOPT_SCHEDULE_CONSTANT);
        if (ALL[j] != REGOPT_SGD) {
            ck_assert(key_get(o, -1, REGOPT_OPT_BETA1) == 0.9);
            ck_assert(key_get(o, -1, REGOPT_OPT_BETA2) == 0.999);
            ck_assert(key_get(o, -1, REGOPT_OPT_EPS) == 1e-8);
        } else {
            ck_assert(key_get(o, -1, REGOPT_OPT_MOMENTUM) == 0.0);
            ck_assert(key_get(o, -1, REGOPT_OPT_DAMPENING) == 0.0);
            ck_assert(key_get(o, -1, REGOPT_OPT_NESTEROV) == 0.0);
        }
        regopt_optimizer_free(o);
    }
}
END_TEST

START_TEST(test_optimizer_key_bounds)
{
    int j;
    for (j = 0; j < 4; j++) {
        regopt_optimizer *o = new_opt(ALL[j]);
        size_t i;
        for (i = 0; i < N_KEYS; i++)
            if (!is_group_key(&KEYS[i]) && (KEYS[i].kinds & KIND_BIT(ALL[j])))
                check_edges(o, -1, &KEYS[i]);
        regopt_optimizer_free(o);
    }
}
END_TEST

START_TEST(test_group_key_bounds)
{
    static const int32_t groups[3] = {0, 5, 63};
    regopt_optimizer *o = new_opt(REGOPT_ADAMW);
    size_t i;
    int g;
    for (g = 0; g < 3; g++)
        for (i = 0; i < N_KEYS; i++)
            if (is_group_key(&KEYS[i]))
                check_edges(o, groups[g], &KEYS[i]);
    /* other groups are untouched */
    ck_assert(key_get(o, 6, REGOPT_GROUP_LR_SCALE) == 1.0);
    ck_assert(key_get(o, 6, REGOPT_GROUP_WEIGHT_DECAY) == -1.0);
    ck_assert(key_get(o, 62, REGOPT_GROUP_LR_SCALE) == 1.0);
    regopt_optimizer_free(o);
}
END_TEST

/* Keys of another kind: momentum/dampening/nesterov on the Adam family,
 * betas/eps/amsgrad on SGD, amsgrad on RAdam. */
START_TEST(test_keys_not_for_kind)
{
    int j;
    for (j = 0; j < 4; j++) {
        regopt_optimizer *o = new_opt(ALL[j]);
        size_t i;
        int n = 0;
        for (i = 0; i < N_KEYS; i++) {
            const key_spec *k = &KEYS[i];
            double v = 0.0;
            int64_t iv = 0;
            if (k->kinds & KIND_BIT(ALL[j]))
                continue;
            n++;
            ck_assert_msg(regopt_optimizer_set_double(o, k->key, k->def) ==
                              REGOPT_ERR_UNKNOWN_KEY, "kind %d: set %s", (int)ALL[j], k->name);
            ck_assert_int_eq(regopt_optimizer_set_int(o, k->key, 0), REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_optimizer_get_double(o, k->key, &v), REGOPT_ERR_UNKNOWN_KEY);
            ck_assert_int_eq(regopt_optimizer_get_int(o, k->key, &iv), REGOPT_ERR_UNKNOWN_KEY);
        }
        /* SGD: beta1, beta2, eps, amsgrad; Adam/AdamW: the 3 SGD keys; RAdam: 4 */
        ck_assert_int_eq(n, ALL[j] == REGOPT_SGD || ALL[j] == REGOPT_RADAM ? 4 : 3);
        regopt_optimizer_free(o);
    }
}
END_TEST

/* Keys of another family through the wrong setter, and unknown numbers. */
START_TEST(test_keys_wrong_family)
{
    regopt_optimizer *o = new_opt(REGOPT_ADAM);
    double v = 0.0;
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_double(o, REGOPT_GROUP_WEIGHT_DECAY, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_group(o, 0, REGOPT_OPT_LR, 0.1),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_group(o, 0, REGOPT_OPT_WEIGHT_DECAY, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_TRAINER_SEED, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_STAT_LR, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_get_double(o, REGOPT_STAT_LR, &v),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_double(o, (regopt_key)99999, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert_int_eq(regopt_optimizer_set_group(o, 0, (regopt_key)149, 1.0),
                     REGOPT_ERR_UNKNOWN_KEY);
    ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 1e-3);
    regopt_optimizer_free(o);
}
END_TEST

/* Integer keys take a double only when it is integral. */
START_TEST(test_int_keys_reject_fractions)
{
    static const regopt_key keys[] = {REGOPT_OPT_NESTEROV, REGOPT_OPT_SCHEDULE,
                                      REGOPT_OPT_WARMUP_STEPS, REGOPT_OPT_TOTAL_STEPS};
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    regopt_optimizer *a = new_opt(REGOPT_ADAM);
    int64_t iv = -1;
    size_t i;
    set_opt(o, REGOPT_OPT_SCHEDULE, 1);
    set_opt(o, REGOPT_OPT_WARMUP_STEPS, 7);
    set_opt(o, REGOPT_OPT_TOTAL_STEPS, 100);
    for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        double before = key_get(o, -1, keys[i]);
        ck_assert_int_eq(regopt_optimizer_set_double(o, keys[i], 0.5), REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_optimizer_set_double(o, keys[i], 1.0 + 1e-9),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert(key_get(o, -1, keys[i]) == before);
    }
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_OPT_WARMUP_STEPS, 2.5),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert_int_eq(iv, 7);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_SCHEDULE, &iv), REGOPT_OK);
    ck_assert_int_eq(iv, REGOPT_SCHEDULE_LINEAR);
    ck_assert_int_eq(regopt_optimizer_set_double(a, REGOPT_OPT_AMSGRAD, 0.25),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert(key_get(a, -1, REGOPT_OPT_AMSGRAD) == 0.0);
    /* integral doubles are fine */
    ck_assert_int_eq(regopt_optimizer_set_double(o, REGOPT_OPT_WARMUP_STEPS, 3.0), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert_int_eq(iv, 3);
    regopt_optimizer_free(o);
    regopt_optimizer_free(a);
}
END_TEST

/* set_int: the edges of the integer keys, exactly (2^53 is the limit). */
START_TEST(test_set_int_edges)
{
    const int64_t two53 = (int64_t)1 << 53;
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    int64_t iv = -1;
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, two53), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert(iv == two53);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, 5), REGOPT_OK);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, -1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, INT64_MAX),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_WARMUP_STEPS, INT64_MIN),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_NESTEROV, 2),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_SCHEDULE, 3),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_SCHEDULE, 2), REGOPT_OK);
    /* 2^53 + 1 is outside [0, 2^53]; it must not be rounded into range */
    ck_assert_msg(regopt_optimizer_set_int(o, REGOPT_OPT_TOTAL_STEPS, two53 + 1) ==
                      REGOPT_ERR_OUT_OF_RANGE,
                  "optimizer.total_steps = 2^53+1 accepted");
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_TOTAL_STEPS, &iv), REGOPT_OK);
    ck_assert(iv == 0);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_WARMUP_STEPS, &iv), REGOPT_OK);
    ck_assert(iv == 5);
    regopt_optimizer_free(o);
}
END_TEST

/* Double keys accept integers (and the bounds still apply). */
START_TEST(test_double_keys_accept_ints)
{
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_LR, 2), REGOPT_OK);
    ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 2.0);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_LR, 0), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_LR, 1001), REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_MOMENTUM, 1),
                     REGOPT_ERR_OUT_OF_RANGE);
    ck_assert_int_eq(regopt_optimizer_set_int(o, REGOPT_OPT_DAMPENING, 1), REGOPT_OK);
    ck_assert(key_get(o, -1, REGOPT_OPT_DAMPENING) == 1.0);
    ck_assert(key_get(o, -1, REGOPT_OPT_LR) == 2.0);
    regopt_optimizer_free(o);
}
END_TEST

START_TEST(test_null_handle)
{
    double v = 0.0;
    int64_t iv = 0;
    ck_assert_int_eq(regopt_optimizer_set_double(NULL, REGOPT_OPT_LR, 0.1),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_str_ne(regopt_last_error_message(), "");
    ck_assert_int_eq(regopt_optimizer_set_int(NULL, REGOPT_OPT_SCHEDULE, 1),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_double(NULL, REGOPT_OPT_LR, &v),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_int(NULL, REGOPT_OPT_SCHEDULE, &iv),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_set_group(NULL, 0, REGOPT_GROUP_LR_SCALE, 1.0),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_group(NULL, 0, REGOPT_GROUP_LR_SCALE, &v),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_double(NULL, REGOPT_OPT_LR, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq((int)regopt_optimizer_get_kind(NULL), 0);
    ck_assert_ptr_nonnull(regopt_optimizer_message(NULL));
    regopt_optimizer_free(NULL);
}
END_TEST

START_TEST(test_create_invalid_kind)
{
    static const int bad[4] = {0, 5, -1, 100};
    int j;
    for (j = 0; j < 4; j++) {
        regopt_status st = REGOPT_OK;
        regopt_optimizer *o = regopt_optimizer_create((regopt_optimizer_kind)bad[j], NULL, &st);
        ck_assert_msg(o == NULL, "kind %d created", bad[j]);
        ck_assert_msg(st != REGOPT_OK && st != REGOPT_ERR_NO_MEMORY, "kind %d: status %d",
                      bad[j], (int)st);
        ck_assert_str_ne(regopt_last_error_message(), "");
        ck_assert_ptr_null(regopt_optimizer_create((regopt_optimizer_kind)bad[j], NULL, NULL));
    }
}
END_TEST

START_TEST(test_get_null_value)
{
    regopt_optimizer *o = new_opt(REGOPT_SGD);
    ck_assert_int_eq(regopt_optimizer_get_double(o, REGOPT_OPT_LR, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_int(o, REGOPT_OPT_NESTEROV, NULL),
                     REGOPT_ERR_NULL_POINTER);
    ck_assert_int_eq(regopt_optimizer_get_group(o, 0, REGOPT_GROUP_LR_SCALE, NULL),
                     REGOPT_ERR_NULL_POINTER);
    regopt_optimizer_free(o);
}
END_TEST

START_TEST(test_group_out_of_range)
{
    static const int32_t bad[4] = {-1, REGOPT_MAX_GROUPS, INT32_MAX, INT32_MIN};
    regopt_optimizer *o = new_opt(REGOPT_ADAM);
    double v = 0.0;
    int j;
    for (j = 0; j < 4; j++) {
        ck_assert_int_eq(regopt_optimizer_set_group(o, bad[j], REGOPT_GROUP_LR_SCALE, 0.5),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_optimizer_set_group(o, bad[j], REGOPT_GROUP_WEIGHT_DECAY, 0.0),
                         REGOPT_ERR_OUT_OF_RANGE);
        ck_assert_int_eq(regopt_optimizer_get_group(o, bad[j], REGOPT_GROUP_LR_SCALE, &v),
                         REGOPT_ERR_OUT_OF_RANGE);
    }
    set_group(o, 0, REGOPT_GROUP_LR_SCALE, 0.5);
    set_group(o, REGOPT_MAX_GROUPS - 1, REGOPT_GROUP_LR_SCALE, 0.25);
    ck_assert(key_get(o, 0, REGOPT_GROUP_LR_SCALE) == 0.5);
    ck_assert(key_get(o, REGOPT_MAX_GROUPS - 1, REGOPT_GROUP_LR_SCALE) == 0.25);
    regopt_optimizer_free(o);
}
END_TEST

/* ======================================================================== */
/* Updates that would write a non-finite value                             */
/* ======================================================================== */

/* A step whose update would write a non-finite weight or moment fails with
 * REGOPT_ERR_NONFINITE_GRADIENT before writing anything (regopt.h, "A
 * step"); one that stays finite, however close to FLT_MAX, goes through.
 * The host: one tensor "w" of GN elements (vector blocks and a scalar
 * tail), whose backward adds the gradient the test sets, and a zero loss. */

#define GN 37

typedef struct gh_host {
    float w[GN], g[GN];
    float add[GN]; /* what backward adds */
} gh_host;

static int gh_forward(const regopt_pass *p, void *user)
{
    size_t k;
    (void)user;
    for (k = 0; k < p->rows * p->output_width; k++)
        p->outputs[k] = 0.0f;
    return 0;
}

static int gh_backward(const regopt_pass *p, void *user)
{
    gh_host *h = user;
    size_t i;
    (void)p;
    for (i = 0; i < GN; i++)
        h->g[i] += h->add[i];
    return 0;
}

typedef struct gh_rig {
    gh_host h;
    regopt_model *model;
    regopt_optimizer *opt;
    regopt_trainer *trainer;
    regopt_batch batch;
} gh_rig;

static void gh_open(gh_rig *r, regopt_optimizer_kind kind, double lr)
{
    size_t i;
    memset(r, 0, sizeof *r);
    for (i = 0; i < GN; i++) {
        r->h.w[i] = 0.25f * (float)((int)(i % 5) - 2) + 0.125f;
        r->h.add[i] = 0.01f * (float)((int)(i % 7) - 3);
    }
    r->model = regopt_model_create(NULL, NULL);
    ck_assert_ptr_nonnull(r->model);
    ck_assert_int_eq(regopt_model_add_param(r->model, "w", r->h.w, r->h.g, GN,
                                            REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_output_width(r->model, 1), REGOPT_OK);
    ck_assert_int_eq(regopt_model_set_callbacks(r->model, gh_forward, gh_backward, &r->h,
                                                NULL), REGOPT_OK);
    r->opt = regopt_optimizer_create(kind, NULL, NULL);
    ck_assert_ptr_nonnull(r->opt);
    set_opt(r->opt, REGOPT_OPT_LR, lr);
    r->trainer = regopt_trainer_create(r->model, r->opt, NULL);
    ck_assert_ptr_nonnull(r->trainer);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r->trainer, zero_loss, NULL, NULL),
                     REGOPT_OK);
    regopt_batch_init(&r->batch);
    r->batch.rows = 1;
}

static void gh_close(gh_rig *r)
{
    regopt_trainer_free(r->trainer);
    regopt_optimizer_free(r->opt);
    regopt_model_free(r->model);
}

/* The step fails with NONFINITE_GRADIENT, names the tensor and `what`, and
 * leaves the weights and the step count exactly as they were. */
static void gh_refused(gh_rig *r, const char *what)
{
    float before[GN];
    int64_t step = -1, after = -2;
    regopt_status st;
    memcpy(before, r->h.w, sizeof before);
    ck_assert_int_eq(regopt_trainer_get_int(r->trainer, REGOPT_STAT_STEP, &step), REGOPT_OK);
    st = regopt_trainer_step(r->trainer, &r->batch, 1);
    ck_assert_msg(st == REGOPT_ERR_NONFINITE_GRADIENT, "step: %s (%s)",
                  regopt_status_string(st), regopt_trainer_message(r->trainer));
    ck_assert_msg(strstr(regopt_trainer_message(r->trainer), "\"w\"") &&
                  strstr(regopt_trainer_message(r->trainer), what),
                  "message \"%s\" lacks \"%s\"", regopt_trainer_message(r->trainer), what);
    ck_assert(memcmp(before, r->h.w, sizeof before) == 0);
    ck_assert_int_eq(regopt_trainer_get_int(r->trainer, REGOPT_STAT_STEP, &after), REGOPT_OK);
    ck_assert_int_eq(after, step);
}

static void gh_ok(gh_rig *r)
{
    regopt_status st = regopt_trainer_step(r->trainer, &r->batch, 1);
    size_t i;
    ck_assert_msg(st == REGOPT_OK, "step: %s (%s)", regopt_status_string(st),
                  regopt_trainer_message(r->trainer));
    for (i = 0; i < GN; i++)
        ck_assert_msg(isfinite(r->h.w[i]), "w[%zu] = %g", i, (double)r->h.w[i]);
}

/* Adam's first step writes v = fl(fl((1-b2) g) g): the largest gradient
 * for which that is finite goes through (the exact check, not the quick
 * bound, decides), the next float up is refused. */
START_TEST(test_nonfinite_adam_second_moment_edge)
{
    const volatile float a2 = (float)(1.0 - 0.999);
    float g = (float)sqrt((double)FLT_MAX / a2), p;
    volatile float v;
    int k;
    /* the largest g with a finite v */
    for (k = 0; k < 64; k++) {
        p = a2 * g;
        v = p * g;
        if (isfinite(v))
            break;
        g = nextafterf(g, 0.0f);
    }
    ck_assert(k < 64 && g > 5e20f && g < 6e20f);
    for (k = 0; k < 64; k++) {
        float up = nextafterf(g, INFINITY);
        p = a2 * up;
        v = p * up;
        if (!isfinite(v))
            break;
        g = up;
    }
    ck_assert(k < 64);
    {
        gh_rig r;
        gh_open(&r, _i ? REGOPT_ADAMW : REGOPT_ADAM, 1e-3);
        r.h.add[GN - 2] = nextafterf(g, INFINITY); /* in the scalar tail */
        gh_refused(&r, "second moment non-finite at element 35");
        r.h.add[GN - 2] = -g;
        gh_ok(&r);
        gh_close(&r);
    }
}
END_TEST

/* Every rule refuses a gradient whose square overflows, and the step after
 * it, with a sane gradient, goes on from the untouched state. */
START_TEST(test_nonfinite_every_rule)
{
    static const regopt_optimizer_kind kinds[] = {REGOPT_ADAM, REGOPT_ADAM, REGOPT_ADAMW,
                                                  REGOPT_RADAM, REGOPT_RADAM};
    gh_rig r;
    int i;
    gh_open(&r, kinds[_i], 1e-3);
    if (_i == 1)
        set_opt(r.opt, REGOPT_OPT_AMSGRAD, 1.0);
    regopt_trainer_free(r.trainer); /* amsgrad is fixed when the trainer is made */
    r.trainer = regopt_trainer_create(r.model, r.opt, NULL);
    ck_assert_int_eq(regopt_trainer_set_loss_callback(r.trainer, zero_loss, NULL, NULL),
                     REGOPT_OK);
    /* RAdam: unrectified for its first steps (rho_t <= 5), rectified later */
    for (i = 0; i < (_i == 4 ? 8 : 2); i++)
        gh_ok(&r);
    r.h.add[3] = 1e30f;
    gh_refused(&r, "second moment non-finite at element 3");
    r.h.add[3] = 0.5f;
    gh_ok(&r);
    gh_close(&r);
}
END_TEST

/* SGD: a momentum buffer that would overflow, and weights that would. */
START_TEST(test_nonfinite_sgd)
{
    gh_rig r;
    int i;
    gh_open(&r, REGOPT_SGD, 1e-3);
    set_opt(r.opt, REGOPT_OPT_MOMENTUM, 0.9);
    if (_i)
        set_opt(r.opt, REGOPT_OPT_NESTEROV, 1.0);
    /* b = d on the first step, then 0.9 b + d: 1e38, 1.9e38, 2.71e38, inf;
       Nesterov's d + 0.9 b overflows one step earlier, in the weight */
    r.h.add[0] = 1e38f;
    for (i = 0; i < 3 - _i; i++)
        gh_ok(&r);
    gh_refused(&r, _i ? "the weight non-finite at element 0"
                      : "the momentum buffer non-finite at element 0");
    gh_close(&r);

    /* no momentum: w - lr g overflows from w = 3e38 */
    gh_open(&r, REGOPT_SGD, 1.0);
    r.h.w[20] = 3e38f;
    r.h.add[20] = -1e37f;
    gh_ok(&r);
    r.h.add[20] = -1e38f;
    gh_refused(&r, "weight non-finite at element 20");
    gh_close(&r);
}
END_TEST

/* A weight that is already NaN or infinite: SGD without momentum leaves it
 * so (no optimizer state would take it); any state would, so the step is
 * refused. */
START_TEST(test_nonfinite_weight_before)
{
    gh_rig r;
    gh_open(&r, REGOPT_SGD, 0.1);
    r.h.w[5] = NAN;
    r.h.w[6] = -INFINITY;
    ck_assert_int_eq(regopt_trainer_step(r.trainer, &r.batch, 1), REGOPT_OK);
    ck_assert(isnan(r.h.w[5]) && !isfinite(r.h.w[6]) && isfinite(r.h.w[7]));
    gh_close(&r);

    gh_open(&r, _i ? REGOPT_ADAMW : REGOPT_SGD, 0.1);
    if (!_i)
        set_opt(r.opt, REGOPT_OPT_MOMENTUM, 0.5);
    gh_ok(&r);
    r.h.w[5] = NAN;
    gh_refused(&r, "holds a non-finite weight at element 5");
    r.h.w[5] = 0.0f;
    gh_ok(&r);
    gh_close(&r);
}
END_TEST

/* On the trainer's threads the answer is the same: a tensor large enough to
 * be cut among threads, one offending element near its end. */
START_TEST(test_nonfinite_threads)
{
    enum { BIG = 300000 };
    float *w = malloc(BIG * sizeof *w), *g = malloc(BIG * sizeof *g);
    float *keep = malloc(BIG * sizeof *keep);
    gh_rig r;
    size_t i;
    int threads;
    ck_assert(w && g && keep);
    for (threads = 1; threads <= 2; threads++) {
        gh_open(&r, REGOPT_ADAM, 1e-3);
        regopt_trainer_free(r.trainer);
        regopt_model_free(r.model);
        r.model = regopt_model_create(NULL, NULL);
        for (i = 0; i < BIG; i++)
            w[i] = 0.001f * (float)(i % 1000);
        ck_assert_int_eq(regopt_model_add_param(r.model, "w", w, g, BIG, REGOPT_DTYPE_FLOAT32,
                                                0), REGOPT_OK);
        ck_assert_int_eq(regopt_model_add_param(r.model, "small", r.h.w, r.h.g, GN,
                                                REGOPT_DTYPE_FLOAT32, 0), REGOPT_OK);
        ck_assert_int_eq(regopt_model_set_output_width(r.model, 1), REGOPT_OK);
        ck_assert_int_eq(regopt_model_set_callbacks(r.model, gh_forward, gh_backward, &r.h,
                                                    NULL), REGOPT_OK);
        r.trainer = regopt_trainer_create(r.model, r.opt, NULL);
        ck_assert_ptr_nonnull(r.trainer);
        ck_assert_int_eq(regopt_trainer_set_loss_callback(r.trainer, zero_loss, NULL, NULL),
                         REGOPT_OK);
        ck_assert_int_eq(regopt_trainer_set_int(r.trainer, REGOPT_TRAINER_THREADS, threads),
                         REGOPT_OK);
        gh_ok(&r);
        w[BIG - 10] = NAN;
        memcpy(keep, w, BIG * sizeof *w);
        ck_assert_int_eq(regopt_trainer_step(r.trainer, &r.batch, 1),
                         REGOPT_ERR_NONFINITE_GRADIENT);
        ck_assert_msg(strstr(regopt_trainer_message(r.trainer),
                             "\"w\" holds a non-finite weight at element 299990") != NULL,
                      "%s", regopt_trainer_message(r.trainer));
        ck_assert(memcmp(keep, w, BIG * sizeof *w) == 0);
        gh_close(&r);
    }
    free(w);
    free(g);
    free(keep);
}
END_TEST

/* ======================================================================== */
/* The suite                                                                */
/* ======================================================================== */

Suite *suite_optim(void)
{
    Suite *s = suite_create("optim");
    TCase *sgd = tcase_create("sgd");
    TCase *adam = tcase_create("adam");
    TCase *sched = tcase_create("schedule");
    TCase *groups = tcase_create("groups");
    TCase *clip = tcase_create("clip");
    TCase *opts = tcase_create("options");

    tcase_add_test(sgd, test_sgd_plain);
    tcase_add_test(sgd, test_sgd_default_lr);
    tcase_add_test(sgd, test_sgd_momentum);
    tcase_add_test(sgd, test_sgd_dampening);
    tcase_add_test(sgd, test_sgd_nesterov);
    tcase_add_test(sgd, test_sgd_weight_decay);
    tcase_add_test(sgd, test_sgd_momentum_weight_decay_nesterov);
    tcase_add_test(sgd, test_sgd_nesterov_needs_momentum);
    suite_add_tcase(s, sgd);

    tcase_add_test(adam, test_adam_defaults);
    tcase_add_test(adam, test_adam_betas_eps);
    tcase_add_test(adam, test_adam_weight_decay);
    tcase_add_test(adam, test_adam_amsgrad);
    tcase_add_test(adam, test_adam_first_step_is_lr_sign);
    tcase_add_test(adam, test_adamw_defaults);
    tcase_add_test(adam, test_adamw_weight_decay);
    tcase_add_test(adam, test_adamw_amsgrad);
    tcase_add_test(adam, test_radam_defaults);
    tcase_add_test(adam, test_radam_weight_decay_eps);
    tcase_add_test(adam, test_radam_beta2);
    suite_add_tcase(s, adam);

    tcase_add_test(sched, test_schedule_constant_warmup);
    tcase_add_test(sched, test_schedule_linear_warmup);
    tcase_add_test(sched, test_schedule_linear_no_warmup);
    tcase_add_test(sched, test_schedule_cosine_warmup);
    tcase_add_test(sched, test_schedule_cosine_no_warmup_radam);
    tcase_add_test(sched, test_schedule_warmup_first_update_is_zero);
    tcase_add_test(sched, test_schedule_needs_total_steps);
    tcase_add_test(sched, test_schedule_fresh_trainer_needs_total_steps);
    tcase_add_test(sched, test_lr_change_between_steps);
    suite_add_tcase(s, sched);

    tcase_add_test(groups, test_group_lr_scale_sgd);
    tcase_add_test(groups, test_group_no_decay_sgd);
    tcase_add_test(groups, test_group_decay_override_sgd);
    tcase_add_test(groups, test_group_adam);
    tcase_add_test(groups, test_group_adamw);
    tcase_add_test(groups, test_group_adamw_decay_scaled);
    tcase_add_test(groups, test_group_radam);
    tcase_add_test(groups, test_group_lr_scale_zero_freezes);
    tcase_add_test(groups, test_group_decay_back_to_inherit);
    suite_add_tcase(s, groups);

    tcase_add_test(clip, test_clip_first_step_stats);
    tcase_add_test(clip, test_clip_sgd_trajectory);
    tcase_add_test(clip, test_clip_sgd_weight_decay);
    tcase_add_test(clip, test_clip_adam);
    tcase_add_test(clip, test_clip_radam);
    tcase_add_test(clip, test_clip_inactive);
    tcase_add_test(clip, test_clip_off_reports_norm);
    tcase_add_test(clip, test_stats_zero_before_first_step);
    suite_add_tcase(s, clip);

    tcase_add_test(opts, test_key_info_matches_header);
    tcase_add_test(opts, test_defaults);
    tcase_add_test(opts, test_optimizer_key_bounds);
    tcase_add_test(opts, test_group_key_bounds);
    tcase_add_test(opts, test_keys_not_for_kind);
    tcase_add_test(opts, test_keys_wrong_family);
    tcase_add_test(opts, test_int_keys_reject_fractions);
    tcase_add_test(opts, test_set_int_edges);
    tcase_add_test(opts, test_double_keys_accept_ints);
    tcase_add_test(opts, test_null_handle);
    tcase_add_test(opts, test_create_invalid_kind);
    tcase_add_test(opts, test_get_null_value);
    tcase_add_test(opts, test_group_out_of_range);
    suite_add_tcase(s, opts);

    {
        TCase *nf = tcase_create("nonfinite");
        tcase_add_loop_test(nf, test_nonfinite_adam_second_moment_edge, 0, 2);
        tcase_add_loop_test(nf, test_nonfinite_every_rule, 0, 5);
        tcase_add_loop_test(nf, test_nonfinite_sgd, 0, 2);
        tcase_add_loop_test(nf, test_nonfinite_weight_before, 0, 2);
        tcase_add_test(nf, test_nonfinite_threads);
        suite_add_tcase(s, nf);
    }
    return s;
}
