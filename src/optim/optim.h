/* optim.h — the optimizer handle, schedules and the fused per-tensor update
 * rules. Includes only core.h. */
#ifndef REGOPT_OPTIM_H
#define REGOPT_OPTIM_H

#include "core/core.h"

#include <stdatomic.h>

/* ---- optimizer.c ------------------------------------------------------- */

typedef struct ro_group_cfg {
    double lr_scale;
    double weight_decay; /* -1: inherit */
} ro_group_cfg;

struct regopt_optimizer {
    uint32_t magic;
    ro_alloc alloc;
    regopt_optimizer_kind kind;
    double lr, weight_decay, momentum, dampening, beta1, beta2, eps;
    int nesterov, amsgrad;
    int schedule;
    int64_t warmup_steps, total_steps;
    double min_lr_ratio;
    double clip_norm;
    ro_group_cfg groups[REGOPT_MAX_GROUPS];
    /* REGOPT_HOST: the host's update (optim_host.c) */
    regopt_host_update_fn host_fn;
    void *host_user;
    regopt_free_fn host_free;
    int bound;
    atomic_int busy; /* trainers of it inside a call that runs host callbacks */
    char msg[RO_MSG_SIZE];
};

regopt_status ro_optimizer_check(const regopt_optimizer *o, const char *func);
/* Cross-key consistency that single setters cannot check (order-free):
 * nesterov needs momentum, decaying schedules need total_steps. */
regopt_status ro_optimizer_validate(const regopt_optimizer *o, char *msg);
/* Whether an optimizer key means something for this kind (momentum: SGD;
 * betas: the Adam family; ...). */
int ro_optimizer_key_applies(regopt_optimizer_kind kind, regopt_key key);
/* optim_host.c: release the host update's user pointer (optimizer freed). */
void ro_optimizer_host_release(regopt_optimizer *o);
/* Elements of optimizer state per trainable element for this config. */
size_t ro_optimizer_state_per_element(const regopt_optimizer *o);

/* ---- schedule.c -------------------------------------------------------- */

/* lr multiplier f(t) for t completed steps (header: regopt_schedule). */
double ro_schedule_factor(const regopt_optimizer *o, uint64_t t);

/* ---- optim_sgd.c / optim_adam.c: fused per-tensor updates -------------- */

/* Per-step scalars of one update, computed once per tensor group. */
typedef struct ro_update {
    float lr;          /* lr of the group (scheduled, scaled) */
    float wd;          /* weight decay of the group */
    float grad_scale;  /* clipping factor applied to the gradient */
    /* SGD */
    float momentum, one_minus_dampening; /* the latter rounded from double */
    int nesterov;
    int first;         /* momentum buffer not initialised yet */
    /* Adam family */
    float beta1, beta2, eps;
    float one_minus_beta1, one_minus_beta2; /* rounded from double, as torch */
    float step_size;   /* Adam: lr / (1 - b1^t); RAdam: see optim_adam.c */
    float bc2_sqrt;    /* sqrt(1 - b2^t) */
    int amsgrad;
    int rectified;     /* RAdam: rho_t > 5 */
} ro_update;

void ro_sgd_update(const ro_update *u, float *w, const float *g, float *buf,
                   size_t n);
void ro_adam_update(const ro_update *u, float *w, const float *g, float *m,
                    float *v, float *vmax, size_t n, int decoupled);
void ro_radam_update(const ro_update *u, float *w, const float *g, float *m,
                     float *v, size_t n);
/* Fill the Adam-family scalars of u for step t (1-based). */
void ro_adam_scalars(ro_update *u, const regopt_optimizer *o, uint64_t t,
                     double lr);

/* ---- the finiteness guard (optim_sgd.c, optim_adam.c) ------------------ */

/* An update must never write a non-finite weight or moment: checkpoints
 * would carry it (and loading refuses it), and it spreads. The updates
 * above write in place, and rounding cannot be undone, so a step decides
 * before it writes anything (docs/methods.md §2.7):
 *   ro_*_safe   a proof from bounds on the inputs that every value the
 *               update computes is finite: a few double operations per
 *               group, enough in any sane training;
 *   ro_*_check  otherwise the exact answer: the update's own arithmetic
 *               (the scalar reference, which every vector path matches bit
 *               for bit) over a range, writing nothing.
 * The update loops themselves are unchanged. */

/* The proofs' arithmetic, on magnitudes in double: one float operation on
 * a value of magnitude x gives at most ro_up(x) (2^-24 relative, with room
 * to spare), and below RO_SAFE_LIMIT every float result is finite (FLT_MAX
 * is about 2^128). A NaN bound compares false: never safe. */
#define RO_SAFE_LIMIT 0x1p126
static inline double ro_up(double x) { return x * (1.0 + 0x1p-20); }
static inline int ro_finite(float x) { return x - x == 0.0f; }

/* Upper bounds on the inputs of an update, each finite. */
typedef struct ro_bounds {
    double w;     /* max |w| */
    double g;     /* max |g| (before grad_scale) */
    double state; /* max |m| (Adam family) or |momentum buffer| (SGD) */
} ro_bounds;

/* 1 if every value the update with u computes from inputs within b is
 * finite (then *state bounds the first moment / momentum buffer after it);
 * 0 if that cannot be shown (not a proof of overflow). */
int ro_sgd_safe(const ro_update *u, const ro_bounds *b, double *state);
int ro_adam_safe(const ro_update *u, const ro_bounds *b, int decoupled, double *state);
int ro_radam_safe(const ro_update *u, const ro_bounds *b, double *state);

/* What a check found non-finite. */
enum ro_nonfinite {
    RO_NF_NONE = 0,
    RO_NF_WEIGHT_BEFORE, /* a weight not finite before the update, which
                            the optimizer state would take (a weight that
                            is NaN or infinite stays so under SGD without
                            momentum: not a failure) */
    RO_NF_WEIGHT,        /* the updated weight */
    RO_NF_FIRST,         /* Adam's m, SGD's momentum buffer */
    RO_NF_SECOND,        /* Adam's v */
    RO_NF_SECOND_MAX     /* AMSGrad's maximum of v */
};

/* The update of elements [0, n), computed exactly as ro_*_update computes
 * it, written nowhere. Returns the first element with a non-finite result
 * (n if none) and sets *what (RO_NF_*); *state_max receives max |first
 * moment or momentum buffer| after the update (0 when SGD keeps none). */
size_t ro_sgd_check(const ro_update *u, const float *w, const float *g, const float *buf,
                    size_t n, int *what, float *state_max);
size_t ro_adam_check(const ro_update *u, const float *w, const float *g, const float *m,
                     const float *v, const float *vmax, size_t n, int decoupled, int *what,
                     float *state_max);
size_t ro_radam_check(const ro_update *u, const float *w, const float *g, const float *m,
                      const float *v, size_t n, int *what, float *state_max);

/* An upper bound on max |x[i]| as a float's bits: 0x7f800000 or more when
 * some x[i] is infinite or NaN. Memory-bound, fused into the gradient norm's
 * pass over every chunk. */
uint32_t ro_abs_max_bits(const float *x, size_t n);

#endif
