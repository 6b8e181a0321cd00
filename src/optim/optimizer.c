/* optimizer.c — the base optimizer's configuration: kind, hyperparameters,
 * schedule, clipping and per-group overrides. The state (moments) lives in
 * the trainer. */
#include "optim/optim.h"

#include <math.h>
#include <string.h>

regopt_status ro_optimizer_check(const regopt_optimizer *o, const char *func)
{
    if (!o)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "%s: optimizer is NULL", func);
    if (o->magic != RO_MAGIC_OPTIMIZER)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "%s: not a live regopt_optimizer handle", func);
    return REGOPT_OK;
}

/* A change: refused while a trainer of this optimizer runs host callbacks
 * (a callback must not change the update under way); clears the message. */
static regopt_status optimizer_enter(regopt_optimizer *o, const char *func)
{
    regopt_status st = ro_optimizer_check(o, func);
    if (st != REGOPT_OK)
        return st;
    if (atomic_load_explicit(&o->busy, memory_order_relaxed) > 0)
        return ro_fail(o->msg, REGOPT_ERR_STATE, "%s: refused while a trainer that uses this "
                       "optimizer is inside a call that runs host callbacks (a callback may "
                       "not change the optimizer; after one threw, call "
                       "regopt_trainer_recover)", func);
    o->msg[0] = '\0';
    return REGOPT_OK;
}

static const char *optimizer_kind_name(regopt_optimizer_kind k)
{
    switch (k) {
    case REGOPT_SGD: return "sgd";
    case REGOPT_ADAM: return "adam";
    case REGOPT_ADAMW: return "adamw";
    case REGOPT_RADAM: return "radam";
    case REGOPT_HOST: return "host";
    }
    return "?";
}

regopt_optimizer *regopt_optimizer_create(regopt_optimizer_kind kind,
                                          const regopt_allocator *allocator,
                                          regopt_status *status)
{
    ro_alloc a;
    regopt_optimizer *o = NULL;
    regopt_status st = ro_alloc_init(&a, allocator);
    int g;
    if (st == REGOPT_OK && (kind < REGOPT_SGD || kind > REGOPT_HOST))
        st = ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                         "regopt_optimizer_create: unknown optimizer kind %d", (int)kind);
    if (st == REGOPT_OK) {
        o = ro_calloc(&a, 1, sizeof *o);
        if (!o)
            st = ro_fail_tls(REGOPT_ERR_NO_MEMORY, "regopt_optimizer_create: out of memory");
    }
    if (status)
        *status = st;
    if (!o)
        return NULL;
    atomic_init(&o->busy, 0);
    o->magic = RO_MAGIC_OPTIMIZER;
    o->alloc = a;
    o->kind = kind;
    /* torch.optim defaults */
    o->lr = 1e-3;
    o->weight_decay = kind == REGOPT_ADAMW ? 1e-2 : 0.0;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->schedule = REGOPT_SCHEDULE_CONSTANT;
    for (g = 0; g < REGOPT_MAX_GROUPS; g++) {
        o->groups[g].lr_scale = 1.0;
        o->groups[g].weight_decay = -1.0;
    }
    return o;
}

regopt_status regopt_optimizer_free(regopt_optimizer *o)
{
    ro_alloc a;
    if (!o)
        return REGOPT_OK;
    if (o->magic != RO_MAGIC_OPTIMIZER)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "regopt_optimizer_free: not a live regopt_optimizer handle");
    if (o->bound) /* a trainer still reads it: refuse rather than dangle */
        return ro_fail_tls(REGOPT_ERR_STATE, "regopt_optimizer_free: still bound to %d "
                           "trainer(s); free them first (nothing was freed)", o->bound);
    ro_optimizer_host_release(o);
    a = o->alloc;
    o->magic = RO_MAGIC_DEAD;
    ro_free(&a, o);
    return REGOPT_OK;
}

regopt_optimizer_kind regopt_optimizer_get_kind(const regopt_optimizer *o)
{
    return (o && o->magic == RO_MAGIC_OPTIMIZER) ? o->kind : (regopt_optimizer_kind)0;
}

int ro_optimizer_key_applies(regopt_optimizer_kind kind, regopt_key key)
{
    int sgd = kind == REGOPT_SGD;
    if (kind == REGOPT_HOST) /* the host's optimizer owns decay, moments and groups */
        return key == REGOPT_OPT_LR || key == REGOPT_OPT_SCHEDULE ||
               key == REGOPT_OPT_WARMUP_STEPS || key == REGOPT_OPT_TOTAL_STEPS ||
               key == REGOPT_OPT_MIN_LR_RATIO || key == REGOPT_OPT_CLIP_NORM;
    switch (key) {
    case REGOPT_OPT_MOMENTUM:
    case REGOPT_OPT_DAMPENING:
    case REGOPT_OPT_NESTEROV:
        return sgd;
    case REGOPT_OPT_BETA1:
    case REGOPT_OPT_BETA2:
    case REGOPT_OPT_EPS:
        return !sgd;
    case REGOPT_OPT_AMSGRAD:
        return kind == REGOPT_ADAM || kind == REGOPT_ADAMW;
    default:
        return 1;
    }
}

/* Where a key's value lives in the handle; the table in keys.c owns the
 * bounds, this only maps. */
static double *double_field(regopt_optimizer *o, regopt_key key)
{
    switch (key) {
    case REGOPT_OPT_LR: return &o->lr;
    case REGOPT_OPT_WEIGHT_DECAY: return &o->weight_decay;
    case REGOPT_OPT_MOMENTUM: return &o->momentum;
    case REGOPT_OPT_DAMPENING: return &o->dampening;
    case REGOPT_OPT_BETA1: return &o->beta1;
    case REGOPT_OPT_BETA2: return &o->beta2;
    case REGOPT_OPT_EPS: return &o->eps;
    case REGOPT_OPT_MIN_LR_RATIO: return &o->min_lr_ratio;
    case REGOPT_OPT_CLIP_NORM: return &o->clip_norm;
    default: return NULL;
    }
}

static void *int_field(regopt_optimizer *o, regopt_key key, int *is64)
{
    *is64 = 0;
    switch (key) {
    case REGOPT_OPT_NESTEROV: return &o->nesterov;
    case REGOPT_OPT_AMSGRAD: return &o->amsgrad;
    case REGOPT_OPT_SCHEDULE: return &o->schedule;
    case REGOPT_OPT_WARMUP_STEPS: *is64 = 1; return &o->warmup_steps;
    case REGOPT_OPT_TOTAL_STEPS: *is64 = 1; return &o->total_steps;
    default: return NULL;
    }
}

static regopt_status find_key(const regopt_optimizer *o, regopt_key key,
                              const ro_key_desc **out)
{
    const ro_key_desc *d = ro_key_find(key);
    if (!d || d->owner != RO_OWNER_OPTIMIZER)
        return ro_fail((char *)o->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "key %d (%s) is not an optimizer key", (int)key,
                       d ? d->name : "unknown");
    if (!ro_optimizer_key_applies(o->kind, key))
        return ro_fail((char *)o->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "%s does not apply to a %s optimizer", d->name,
                       optimizer_kind_name(o->kind));
    *out = d;
    return REGOPT_OK;
}

regopt_status regopt_optimizer_set_double(regopt_optimizer *o, regopt_key key,
                                          double value)
{
    const ro_key_desc *d = NULL;
    double *f;
    int is64;
    void *i;
    regopt_status st = optimizer_enter(o, "regopt_optimizer_set_double");
    if (st == REGOPT_OK)
        st = find_key(o, key, &d);
    if (st == REGOPT_OK)
        st = ro_key_check(d, value, o->msg);
    if (st != REGOPT_OK)
        return st;
    if ((f = double_field(o, key)) != NULL) {
        *f = value;
    } else if ((i = int_field(o, key, &is64)) != NULL) {
        if (is64)
            *(int64_t *)i = (int64_t)value;
        else
            *(int *)i = (int)value;
    }
    return REGOPT_OK;
}

regopt_status regopt_optimizer_set_int(regopt_optimizer *o, regopt_key key,
                                       int64_t value)
{
    const ro_key_desc *d = NULL;
    regopt_status st = optimizer_enter(o, "regopt_optimizer_set_int");
    if (st == REGOPT_OK)
        st = find_key(o, key, &d);
    if (st != REGOPT_OK)
        return st;
    /* Compare integers as integers: (double)(2^53 + 1) would round into range. */
    if (d->type == REGOPT_TYPE_INT &&
        (value < (int64_t)d->min || value > (int64_t)d->max))
        return ro_fail(o->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "%s must be in [%.17g, %.17g], got %lld", d->name, d->min, d->max,
                       (long long)value);
    return regopt_optimizer_set_double(o, key, (double)value);
}

regopt_status regopt_optimizer_get_double(const regopt_optimizer *o,
                                          regopt_key key, double *value)
{
    const ro_key_desc *d = NULL;
    double *f;
    int is64;
    void *i;
    regopt_status st = ro_optimizer_check(o, "regopt_optimizer_get_double");
    if (st == REGOPT_OK && !value)
        st = ro_fail((char *)o->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_optimizer_get_double: value is NULL");
    if (st == REGOPT_OK)
        st = find_key(o, key, &d);
    if (st != REGOPT_OK)
        return st;
    if ((f = double_field((regopt_optimizer *)o, key)) != NULL)
        *value = *f;
    else if ((i = int_field((regopt_optimizer *)o, key, &is64)) != NULL)
        *value = is64 ? (double)*(int64_t *)i : (double)*(int *)i;
    return REGOPT_OK;
}

regopt_status regopt_optimizer_get_int(const regopt_optimizer *o, regopt_key key,
                                       int64_t *value)
{
    double v;
    regopt_status st;
    if (!value)
        return o && o->magic == RO_MAGIC_OPTIMIZER
                   ? ro_fail((char *)o->msg, REGOPT_ERR_NULL_POINTER,
                             "regopt_optimizer_get_int: value is NULL")
                   : ro_optimizer_check(o, "regopt_optimizer_get_int");
    st = regopt_optimizer_get_double(o, key, &v);
    if (st == REGOPT_OK)
        st = ro_to_int64(v, ro_key_find(key)->name, value, (char *)o->msg);
    return st;
}

static regopt_status group_key(const regopt_optimizer *o, int32_t group,
                               regopt_key key, const ro_key_desc **out)
{
    const ro_key_desc *d = ro_key_find(key);
    if (!d || d->owner != RO_OWNER_GROUP)
        return ro_fail((char *)o->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "key %d (%s) is not a parameter-group key", (int)key,
                       d ? d->name : "unknown");
    if (!ro_optimizer_key_applies(o->kind, key))
        return ro_fail((char *)o->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "%s does not apply to a %s optimizer (its groups are the host's)",
                       d->name, optimizer_kind_name(o->kind));
    if (group < 0 || group >= REGOPT_MAX_GROUPS)
        return ro_fail((char *)o->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "group must be in [0, %d], got %d", REGOPT_MAX_GROUPS - 1, (int)group);
    *out = d;
    return REGOPT_OK;
}

regopt_status regopt_optimizer_set_group(regopt_optimizer *o, int32_t group,
                                         regopt_key key, double value)
{
    const ro_key_desc *d = NULL;
    regopt_status st = optimizer_enter(o, "regopt_optimizer_set_group");
    if (st == REGOPT_OK)
        st = group_key(o, group, key, &d);
    if (st == REGOPT_OK)
        st = ro_key_check(d, value, o->msg);
    if (st == REGOPT_OK && key == REGOPT_GROUP_WEIGHT_DECAY && value < 0.0 && value != -1.0)
        st = ro_fail(o->msg, REGOPT_ERR_OUT_OF_RANGE,
                     "group.weight_decay must be -1 (inherit) or in [0, 1000], got %.17g", value);
    if (st != REGOPT_OK)
        return st;
    if (key == REGOPT_GROUP_LR_SCALE)
        o->groups[group].lr_scale = value;
    else
        o->groups[group].weight_decay = value;
    return REGOPT_OK;
}

regopt_status regopt_optimizer_get_group(const regopt_optimizer *o, int32_t group,
                                         regopt_key key, double *value)
{
    const ro_key_desc *d = NULL;
    regopt_status st = ro_optimizer_check(o, "regopt_optimizer_get_group");
    if (st == REGOPT_OK && !value)
        st = ro_fail((char *)o->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_optimizer_get_group: value is NULL");
    if (st == REGOPT_OK)
        st = group_key(o, group, key, &d);
    if (st != REGOPT_OK)
        return st;
    *value = key == REGOPT_GROUP_LR_SCALE ? o->groups[group].lr_scale
                                          : o->groups[group].weight_decay;
    return REGOPT_OK;
}

const char *regopt_optimizer_message(const regopt_optimizer *o)
{
    if (!o || o->magic != RO_MAGIC_OPTIMIZER)
        return "invalid regopt_optimizer handle";
    return o->msg;
}

regopt_status ro_optimizer_validate(const regopt_optimizer *o, char *msg)
{
    if (o->kind == REGOPT_SGD && o->nesterov && (o->momentum <= 0.0 || o->dampening != 0.0))
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "optimizer.nesterov needs momentum > 0 and dampening = 0 "
                       "(momentum %g, dampening %g)", o->momentum, o->dampening);
    if (o->schedule != REGOPT_SCHEDULE_CONSTANT && o->total_steps <= 0)
        return ro_fail(msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "optimizer.schedule %s needs optimizer.total_steps > 0",
                       o->schedule == REGOPT_SCHEDULE_LINEAR ? "linear" : "cosine");
    return REGOPT_OK;
}

size_t ro_optimizer_state_per_element(const regopt_optimizer *o)
{
    switch (o->kind) {
    case REGOPT_SGD: return 1;   /* momentum buffer (allocated even at 0, so
                                    momentum may be switched on later) */
    case REGOPT_ADAM:
    case REGOPT_ADAMW: return 3; /* m, v, running max of v (AMSGrad) */
    case REGOPT_RADAM: return 2; /* m, v */
    case REGOPT_HOST: return 0;  /* the host keeps its own */
    }
    return 0;
}
