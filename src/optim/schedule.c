/* schedule.c — learning-rate schedules, as Hugging Face transformers'
 * get_{constant,linear,cosine}_schedule_with_warmup evaluate them through
 * torch.optim.lr_scheduler.LambdaLR: the factor for the next update is a
 * function of the number of updates already made. */
#include "optim/optim.h"

#include <math.h>

double ro_schedule_factor(const regopt_optimizer *o, uint64_t t)
{
    double w = (double)o->warmup_steps, T = (double)o->total_steps;
    double r = o->min_lr_ratio, x = (double)t, progress, decay;
    if (x < w)
        return x / w;
    switch (o->schedule) {
    case REGOPT_SCHEDULE_LINEAR:
        decay = (T - x) / (T - w > 1.0 ? T - w : 1.0);
        return r + (1.0 - r) * (decay > 0.0 ? decay : 0.0);
    case REGOPT_SCHEDULE_COSINE:
        progress = (x - w) / (T - w > 1.0 ? T - w : 1.0);
        if (progress > 1.0)
            progress = 1.0; /* hold the floor after total_steps */
        return r + (1.0 - r) * 0.5 * (1.0 + cos(3.141592653589793 * progress));
    default:
        return 1.0;
    }
}
