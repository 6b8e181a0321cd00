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

#endif
