/* keys.c — the one table of option and statistic keys: names, types,
 * bounds, defaults. Everything that validates or describes a key reads it. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define MINX REGOPT_KEY_MIN_EXCLUSIVE
#define MAXX REGOPT_KEY_MAX_EXCLUSIVE
#define RO REGOPT_KEY_READ_ONLY
#define GR REGOPT_KEY_GROUP
#define BIG 9007199254740992.0 /* 2^53: integers exact in a double */

static const ro_key_desc key_table[] = {
    {REGOPT_OPT_LR, "optimizer.lr", D, RO_OWNER_OPTIMIZER, 0, 1e3, 1e-3, MINX},
    {REGOPT_OPT_WEIGHT_DECAY, "optimizer.weight_decay", D, RO_OWNER_OPTIMIZER, 0, 1e3, 0, 0},
    {REGOPT_OPT_MOMENTUM, "optimizer.momentum", D, RO_OWNER_OPTIMIZER, 0, 1, 0, MAXX},
    {REGOPT_OPT_DAMPENING, "optimizer.dampening", D, RO_OWNER_OPTIMIZER, 0, 1, 0, 0},
    {REGOPT_OPT_NESTEROV, "optimizer.nesterov", I, RO_OWNER_OPTIMIZER, 0, 1, 0, 0},
    {REGOPT_OPT_BETA1, "optimizer.beta1", D, RO_OWNER_OPTIMIZER, 0, 1, 0.9, MAXX},
    {REGOPT_OPT_BETA2, "optimizer.beta2", D, RO_OWNER_OPTIMIZER, 0, 1, 0.999, MAXX},
    {REGOPT_OPT_EPS, "optimizer.eps", D, RO_OWNER_OPTIMIZER, 0, 1, 1e-8, MINX},
    {REGOPT_OPT_AMSGRAD, "optimizer.amsgrad", I, RO_OWNER_OPTIMIZER, 0, 1, 0, 0},
    {REGOPT_OPT_SCHEDULE, "optimizer.schedule", I, RO_OWNER_OPTIMIZER, 0, 2, 0, 0},
    {REGOPT_OPT_WARMUP_STEPS, "optimizer.warmup_steps", I, RO_OWNER_OPTIMIZER, 0, BIG, 0, 0},
    {REGOPT_OPT_TOTAL_STEPS, "optimizer.total_steps", I, RO_OWNER_OPTIMIZER, 0, BIG, 0, 0},
    {REGOPT_OPT_MIN_LR_RATIO, "optimizer.min_lr_ratio", D, RO_OWNER_OPTIMIZER, 0, 1, 0, 0},
    {REGOPT_OPT_CLIP_NORM, "optimizer.clip_norm", D, RO_OWNER_OPTIMIZER, 0, 1e30, 0, 0},
    {REGOPT_GROUP_LR_SCALE, "group.lr_scale", D, RO_OWNER_GROUP, 0, 1e6, 1, GR},
    {REGOPT_GROUP_WEIGHT_DECAY, "group.weight_decay", D, RO_OWNER_GROUP, -1, 1e3, -1, GR},
    {REGOPT_GROUP_SAM_ADAPTIVE, "group.sam_adaptive", I, RO_OWNER_TRAINER_GROUP, 0, 1, 1, GR},
    {REGOPT_TRAINER_LOSS, "trainer.loss", I, RO_OWNER_TRAINER, 0, 2, 0, 0},
    {REGOPT_TRAINER_LABEL_SMOOTHING, "trainer.label_smoothing", D, RO_OWNER_TRAINER, 0, 1, 0, MAXX},
    {REGOPT_TRAINER_SEED, "trainer.seed", I, RO_OWNER_TRAINER, -9223372036854775808.0,
     9223372036854775808.0, 0, MAXX},
    {REGOPT_TRAINER_THREADS, "trainer.threads", I, RO_OWNER_TRAINER, 1, RO_MAX_THREADS, 1, 0},
    {REGOPT_SAM_RHO, "sam.rho", D, RO_OWNER_SAM, 0, 1e3, 0.05, 0},
    {REGOPT_SAM_DELTA, "sam.delta", D, RO_OWNER_SAM, 0, 1, 1e-12, 0},
    {REGOPT_SAM_ADAPTIVE, "sam.adaptive", I, RO_OWNER_SAM, 0, 1, 0, 0},
    {REGOPT_SAM_ETA, "sam.eta", D, RO_OWNER_SAM, 0, 1e3, 0.01, 0},
    {REGOPT_SAM_GSAM, "sam.gsam", I, RO_OWNER_SAM, 0, 1, 0, 0},
    {REGOPT_SAM_GSAM_ALPHA, "sam.gsam_alpha", D, RO_OWNER_SAM, 0, 1e3, 0.4, 0},
    {REGOPT_SAM_RHO_MIN, "sam.rho_min", D, RO_OWNER_SAM, 0, 1e3, 0, 0},
    {REGOPT_SAM_RHO_FOLLOWS_LR, "sam.rho_follows_lr", I, RO_OWNER_SAM, 0, 1, 0, 0},
    {REGOPT_SAM_EVERY, "sam.every", I, RO_OWNER_SAM, 1, 2147483648.0, 1, 0},
    {REGOPT_SAM_M_ROWS, "sam.m_rows", I, RO_OWNER_SAM, 0, 2147483648.0, 0, 0},
    {REGOPT_SAM_SAME_SEED, "sam.same_seed", I, RO_OWNER_SAM, 0, 1, 1, 0},
    {REGOPT_SAM_ASCENT_WEIGHT_DECAY, "sam.ascent_weight_decay", D, RO_OWNER_SAM, 0, 1e3, 0, 0},
    {REGOPT_SAM_SYNC_ASCENT, "sam.sync_ascent", I, RO_OWNER_SAM, 0, 1, 0, 0},
    {REGOPT_RDROP_ALPHA, "rdrop.alpha", D, RO_OWNER_RDROP, 0, 1e4, 1, 0},
    {REGOPT_RDROP_CE_WEIGHT, "rdrop.ce_weight", D, RO_OWNER_RDROP, 0, 1e3, 1, 0},
    {REGOPT_RDROP_KL_SUM, "rdrop.kl_sum", I, RO_OWNER_RDROP, 0, 1, 0, 0},
    {REGOPT_RDROP_EVERY, "rdrop.every", I, RO_OWNER_RDROP, 1, 2147483648.0, 1, 0},
    {REGOPT_RDROP_DOUBLED, "rdrop.doubled", I, RO_OWNER_RDROP, 0, 1, 1, 0},
    {REGOPT_SMART_LAMBDA, "smart.lambda", D, RO_OWNER_SMART, 0, 1e4, 1, 0},
    {REGOPT_SMART_EPSILON, "smart.epsilon", D, RO_OWNER_SMART, 0, 1e3, 1e-5, MINX},
    {REGOPT_SMART_SIGMA, "smart.sigma", D, RO_OWNER_SMART, 0, 1e3, 1e-5, 0},
    {REGOPT_SMART_ETA, "smart.eta", D, RO_OWNER_SMART, 0, 1e3, 1e-3, 0},
    {REGOPT_SMART_STEPS, "smart.steps", I, RO_OWNER_SMART, 1, 100, 1, 0},
    {REGOPT_SMART_NORM, "smart.norm", I, RO_OWNER_SMART, 0, 2, 0, 0},
    {REGOPT_SMART_MTDNN, "smart.mtdnn", I, RO_OWNER_SMART, 0, 1, 0, 0},
    {REGOPT_SMART_STABLE_KL, "smart.stable_kl", I, RO_OWNER_SMART, 0, 1, 0, 0},
    {REGOPT_SMART_SAME_SEED, "smart.same_seed", I, RO_OWNER_SMART, 0, 1, 1, 0},
    {REGOPT_BREGMAN_MU, "bregman.mu", D, RO_OWNER_BREGMAN, 0, 1e4, 1, 0},
    {REGOPT_BREGMAN_BETA, "bregman.beta", D, RO_OWNER_BREGMAN, 0, 1, 0.99, MAXX},
    {REGOPT_BREGMAN_BETA_LATE, "bregman.beta_late", D, RO_OWNER_BREGMAN, 0, 1, 0.999, MAXX},
    {REGOPT_BREGMAN_SWITCH, "bregman.switch", D, RO_OWNER_BREGMAN, 0, 1, 0.1, 0},
    {REGOPT_STAT_LOSS, "stat.loss", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_OBJECTIVE, "stat.objective", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_GRAD_NORM, "stat.grad_norm", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_CLIP_SCALE, "stat.clip_scale", D, RO_OWNER_STAT, 0, 1, 0, RO},
    {REGOPT_STAT_LR, "stat.lr", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_STEP, "stat.step", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_WEIGHT, "stat.weight", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_FORWARD_CALLS, "stat.forward_calls", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_BACKWARD_CALLS, "stat.backward_calls", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_SAM_CLEAN_LOSS, "stat.sam_clean_loss", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_PERTURBED_LOSS, "stat.sam_perturbed_loss", D, RO_OWNER_STAT, -HUGE_VAL,
     HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_SHARPNESS, "stat.sam_sharpness", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_ASCENT_NORM, "stat.sam_ascent_norm", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_RHO, "stat.sam_rho", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SAM_APPLIED, "stat.sam_applied", I, RO_OWNER_STAT, 0, 1, 0, RO},
    {REGOPT_STAT_RDROP_LOSS1, "stat.rdrop_loss1", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_RDROP_LOSS2, "stat.rdrop_loss2", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_RDROP_CONSISTENCY, "stat.rdrop_consistency", D, RO_OWNER_STAT, -HUGE_VAL,
     HUGE_VAL, 0, RO},
    {REGOPT_STAT_RDROP_APPLIED, "stat.rdrop_applied", I, RO_OWNER_STAT, 0, 1, 0, RO},
    {REGOPT_STAT_SMART_RS, "stat.smart_rs", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_SMART_NOISE_NORM, "stat.smart_noise_norm", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_BREGMAN_D, "stat.bregman_d", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_BREGMAN_BETA, "stat.bregman_beta", D, RO_OWNER_STAT, 0, 1, 0, RO},
};

#define N_KEYS (sizeof key_table / sizeof key_table[0])

/* The shortest of %.15g / %.17g that reads back as v: "0.1", not
 * "0.10000000000000001", yet exact when it must be. */
static const char *fmt(char buf[32], double v)
{
    snprintf(buf, 32, "%.15g", v);
    if (strtod(buf, NULL) != v)
        snprintf(buf, 32, "%.17g", v);
    return buf;
}

const ro_key_desc *ro_key_find(regopt_key key)
{
    size_t i;
    for (i = 0; i < N_KEYS; i++)
        if (key_table[i].key == key)
            return &key_table[i];
    return NULL;
}

const ro_key_desc *ro_key_at(size_t i)
{
    return i < N_KEYS ? &key_table[i] : NULL;
}

regopt_status regopt_key_info(regopt_key key, const char **name, int *type,
                              double *min, double *max, double *default_value,
                              uint32_t *flags)
{
    const ro_key_desc *d = ro_key_find(key);
    if (!d)
        return ro_fail_tls(REGOPT_ERR_UNKNOWN_KEY, "unknown key %d", (int)key);
    if (name)
        *name = d->name;
    if (type)
        *type = d->type;
    if (min)
        *min = d->min;
    if (max)
        *max = d->max;
    if (default_value)
        *default_value = d->def;
    if (flags)
        *flags = d->flags;
    return REGOPT_OK;
}

regopt_status regopt_key_from_name(const char *name, regopt_key *key)
{
    size_t i;
    if (!name || !key)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER,
                           "regopt_key_from_name: %s is NULL",
                           name ? "key" : "name");
    for (i = 0; i < N_KEYS; i++) {
        if (strcmp(key_table[i].name, name) == 0) {
            *key = key_table[i].key;
            return REGOPT_OK;
        }
    }
    return ro_fail_tls(REGOPT_ERR_UNKNOWN_KEY, "unknown key name \"%.64s\"",
                       name);
}

regopt_status ro_key_check(const ro_key_desc *d, double value, char *msg)
{
    int lo_ok, hi_ok;
    if (d->flags & REGOPT_KEY_READ_ONLY)
        return ro_fail(msg, REGOPT_ERR_STATE, "%s is a statistic and cannot be set",
                       d->name);
    lo_ok = (d->flags & REGOPT_KEY_MIN_EXCLUSIVE) ? value > d->min : value >= d->min;
    hi_ok = (d->flags & REGOPT_KEY_MAX_EXCLUSIVE) ? value < d->max : value <= d->max;
    char a[32], b[32], c[32];
    if (!isfinite(value) || !lo_ok || !hi_ok)
        return ro_fail(msg, REGOPT_ERR_OUT_OF_RANGE, "%s must be in %c%s, %s%c, got %s",
                       d->name, (d->flags & REGOPT_KEY_MIN_EXCLUSIVE) ? '(' : '[',
                       fmt(a, d->min), fmt(b, d->max),
                       (d->flags & REGOPT_KEY_MAX_EXCLUSIVE) ? ')' : ']', fmt(c, value));
    if (d->type == REGOPT_TYPE_INT && value != floor(value))
        return ro_fail(msg, REGOPT_ERR_OUT_OF_RANGE, "%s takes an integer, got %s", d->name,
                       fmt(a, value));
    return REGOPT_OK;
}

regopt_status ro_to_int64(double v, const char *name, int64_t *out, char *msg)
{
    char a[32];
    if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0) || v != floor(v))
        return ro_fail(msg, REGOPT_ERR_OUT_OF_RANGE,
                       "%s is %s, which is not an int64: read it as a double", name, fmt(a, v));
    *out = (int64_t)v;
    return REGOPT_OK;
}
