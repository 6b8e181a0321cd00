/* scaler.c — dynamic loss scaling owned by the trainer (METHODS2.md, "Mixed
 * precision"; Micikevicius et al., ICLR 2018, section 3.2). The rules and
 * defaults are torch.amp.GradScaler's (init_scale 2^16, growth_factor 2,
 * backoff_factor 0.5, growth_interval 2000):
 *
 *   every backward gets d_outputs x S; the library unscales (precision.c);
 *   a non-finite gradient (on any replica): the step is skipped -- nothing
 *     is committed, the step count does not advance -- S <- S x backoff,
 *     the counter c <- 0, and the call succeeds with stat.skipped = 1;
 *   otherwise the update is made, c <- c + 1, and when c reaches the
 *     interval: S <- S x growth unless that passes the float32 maximum
 *     (GradScaler keeps S then), c <- 0.
 *
 * Modes (trainer.loss_scaling): AUTO (dynamic when the model holds a
 * FLOAT16 tensor, off otherwise: bf16 has float32's range), OFF (S = 1; a
 * non-finite gradient is an error, as without mixed precision), DYNAMIC,
 * FIXED (S never changes; an overflow still skips the step). Names no
 * method. */
#include "trainer/trainer.h"

#include <float.h>
#include <math.h>

static int model_has_fp16(const regopt_model *m)
{
    size_t i;
    for (i = 0; i < m->n_params; i++)
        if (m->params[i].dtype == REGOPT_DTYPE_FLOAT16)
            return 1;
    return 0;
}

int ro_scaler_active(const regopt_trainer *t)
{
    int mode = t->scaler.mode;
    if (mode == REGOPT_SCALING_AUTO)
        return model_has_fp16(t->model);
    return mode == REGOPT_SCALING_DYNAMIC || mode == REGOPT_SCALING_FIXED;
}

void ro_scaler_sync_env(regopt_trainer *t)
{
    int on = ro_scaler_active(t);
    t->env.loss_scale = on ? t->scaler.scale : 1.0;
    t->env.skip_overflow = on;
}

void ro_scaler_init(regopt_trainer *t)
{
    t->scaler.mode = REGOPT_SCALING_AUTO;
    t->scaler.init = 65536.0;
    t->scaler.scale = 65536.0;
    t->scaler.growth = 2.0;
    t->scaler.backoff = 0.5;
    t->scaler.interval = 2000;
    t->scaler.counter = 0;
    t->scaler.skipped = 0;
    t->scaler.last_skipped = 0;
    ro_scaler_sync_env(t);
}

/* Float32 buffers under a scale need an fp32 accumulator of the library's:
 * the host's buffer then holds one backward's scaled gradient at a time. */
regopt_status ro_scaler_prepare(regopt_trainer *t)
{
    regopt_status st;
    if (!ro_scaler_active(t))
        return REGOPT_OK;
    st = ro_model_stage(t->model, t->msg);
    if (st == REGOPT_OK && t->reserved) /* the d_outputs x S buffer */
        st = ro_trainer_reserve_all(t, t->reserved, t->reserved_in);
    return st;
}

regopt_status ro_scaler_set(regopt_trainer *t, regopt_key key, double v)
{
    ro_scaler old = t->scaler;
    regopt_status st = REGOPT_OK;
    switch (key) {
    case REGOPT_TRAINER_LOSS_SCALING:
        t->scaler.mode = (int)v;
        /* staging reads the host's gradients: not through a backend */
        st = t->model->has_backend && ro_scaler_active(t)
                 ? ro_backend_refuse(t->msg, "loss scaling (trainer.loss_scaling)")
                 : ro_scaler_prepare(t);
        if (st != REGOPT_OK)
            t->scaler = old;
        break;
    case REGOPT_TRAINER_LOSS_SCALE: /* GradScaler(init_scale=...): start over */
        t->scaler.init = t->scaler.scale = v;
        t->scaler.counter = 0;
        break;
    case REGOPT_TRAINER_SCALE_GROWTH: t->scaler.growth = v; break;
    case REGOPT_TRAINER_SCALE_BACKOFF: t->scaler.backoff = v; break;
    case REGOPT_TRAINER_SCALE_INTERVAL: t->scaler.interval = (uint64_t)v; break;
    default: return ro_fail(t->msg, REGOPT_ERR_UNKNOWN_KEY, "internal: key %d", (int)key);
    }
    ro_scaler_sync_env(t);
    return st;
}

int ro_scaler_get(const regopt_trainer *t, regopt_key key, double *v)
{
    const ro_scaler *s = &t->scaler;
    switch (key) {
    case REGOPT_TRAINER_LOSS_SCALING: *v = s->mode; return 1;
    case REGOPT_TRAINER_LOSS_SCALE: *v = s->init; return 1;
    case REGOPT_TRAINER_SCALE_GROWTH: *v = s->growth; return 1;
    case REGOPT_TRAINER_SCALE_BACKOFF: *v = s->backoff; return 1;
    case REGOPT_TRAINER_SCALE_INTERVAL: *v = (double)s->interval; return 1;
    case REGOPT_STAT_LOSS_SCALE: *v = ro_scaler_active(t) ? s->scale : 1.0; return 1;
    case REGOPT_STAT_SKIPPED: *v = s->last_skipped; return 1;
    case REGOPT_STAT_SKIPPED_STEPS: *v = (double)s->skipped; return 1;
    case REGOPT_STAT_SCALE_COUNTER: *v = (double)s->counter; return 1;
    default: return 0;
    }
}

/* An overflow: the step was not committed (nothing changed); only the
 * scale moves. */
regopt_status ro_scaler_skip(regopt_trainer *t)
{
    ro_scaler *s = &t->scaler;
    if (!ro_scaler_active(t))
        return REGOPT_ERR_OVERFLOW; /* not reached: without scaling nothing skips */
    if (s->mode != REGOPT_SCALING_FIXED) {
        /* the scale stays a positive normal float (GradScaler has no floor;
           a zero scale would make 1/S infinite) */
        double n = s->scale * s->backoff;
        s->scale = n >= FLT_MIN ? n : FLT_MIN;
        s->counter = 0;
    }
    s->skipped++;
    s->last_skipped = 1;
    ro_scaler_sync_env(t);
    t->msg[0] = 0;
    return REGOPT_OK;
}

/* A committed step. */
void ro_scaler_commit(regopt_trainer *t)
{
    ro_scaler *s = &t->scaler;
    s->last_skipped = 0;
    if (!ro_scaler_active(t) || s->mode == REGOPT_SCALING_FIXED)
        return;
    if (++s->counter >= s->interval) {
        double n = s->scale * s->growth;
        if (n <= FLT_MAX)
            s->scale = n;
        s->counter = 0;
    }
    ro_scaler_sync_env(t);
}
