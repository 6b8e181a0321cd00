/* keys.c — the one table of option and statistic keys: names, types,
 * bounds, defaults. Everything that validates or describes a key reads it. */
#include "core/core.h"

#include <float.h>
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
    {REGOPT_TRAINER_LOSS, "trainer.loss", I, RO_OWNER_TRAINER, 0, 2, 0, 0},
    {REGOPT_TRAINER_LABEL_SMOOTHING, "trainer.label_smoothing", D, RO_OWNER_TRAINER, 0, 1, 0, MAXX},
    {REGOPT_TRAINER_SEED, "trainer.seed", I, RO_OWNER_TRAINER, -9223372036854775808.0,
     9223372036854775808.0, 0, MAXX},
    {REGOPT_TRAINER_THREADS, "trainer.threads", I, RO_OWNER_TRAINER, 1, RO_MAX_THREADS, 1, 0},
    {REGOPT_TRAINER_CHECK_HOST, "trainer.check_host", I, RO_OWNER_TRAINER, 0, 1, 0, 0},
    {REGOPT_TRAINER_LOSS_SCALING, "trainer.loss_scaling", I, RO_OWNER_TRAINER, -1, 2, -1, 0},
    {REGOPT_TRAINER_LOSS_SCALE, "trainer.loss_scale", D, RO_OWNER_TRAINER, 0, FLT_MAX, 65536,
     MINX},
    {REGOPT_TRAINER_SCALE_GROWTH, "trainer.scale_growth", D, RO_OWNER_TRAINER, 1, 65536, 2,
     MINX},
    {REGOPT_TRAINER_SCALE_BACKOFF, "trainer.scale_backoff", D, RO_OWNER_TRAINER, 0, 1, 0.5,
     MINX | MAXX},
    {REGOPT_TRAINER_SCALE_INTERVAL, "trainer.scale_interval", I, RO_OWNER_TRAINER, 1, BIG, 2000,
     0},
    {REGOPT_STAT_LOSS, "stat.loss", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_OBJECTIVE, "stat.objective", D, RO_OWNER_STAT, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_GRAD_NORM, "stat.grad_norm", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_CLIP_SCALE, "stat.clip_scale", D, RO_OWNER_STAT, 0, 1, 0, RO},
    {REGOPT_STAT_LR, "stat.lr", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_STEP, "stat.step", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_WEIGHT, "stat.weight", D, RO_OWNER_STAT, 0, HUGE_VAL, 0, RO},
    {REGOPT_STAT_FORWARD_CALLS, "stat.forward_calls", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_BACKWARD_CALLS, "stat.backward_calls", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_LOSS_SCALE, "stat.loss_scale", D, RO_OWNER_STAT, 0, FLT_MAX, 0, RO},
    {REGOPT_STAT_SKIPPED, "stat.skipped", I, RO_OWNER_STAT, 0, 1, 0, RO},
    {REGOPT_STAT_SKIPPED_STEPS, "stat.skipped_steps", I, RO_OWNER_STAT, 0, BIG, 0, RO},
    {REGOPT_STAT_SCALE_COUNTER, "stat.scale_counter", I, RO_OWNER_STAT, 0, BIG, 0, RO},
};

#define N_KEYS (sizeof key_table / sizeof key_table[0])

/* The shortest of %.15g / %.17g that reads back as v: "0.1", not
 * "0.10000000000000001", yet exact when it must be. */
const char *ro_fmt_double(char buf[32], double v)
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
                       ro_fmt_double(a, d->min), ro_fmt_double(b, d->max),
                       (d->flags & REGOPT_KEY_MAX_EXCLUSIVE) ? ')' : ']', ro_fmt_double(c, value));
    if (d->type == REGOPT_TYPE_INT && value != floor(value))
        return ro_fail(msg, REGOPT_ERR_OUT_OF_RANGE, "%s takes an integer, got %s", d->name,
                       ro_fmt_double(a, value));
    return REGOPT_OK;
}

regopt_status ro_to_int64(double v, const char *name, int64_t *out, char *msg)
{
    char a[32];
    if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0) || v != floor(v))
        return ro_fail(msg, REGOPT_ERR_OUT_OF_RANGE,
                       "%s is %s, which is not an int64: read it as a double", name, ro_fmt_double(a, v));
    *out = (int64_t)v;
    return REGOPT_OK;
}
