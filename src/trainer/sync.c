/* sync.c — data-parallel training: the host's all-reduce callback and the
 * synchronisation of a step (the driver's one call, plus the extra ones a
 * weight-side regularizer makes through ro_step.sync). */
#include "trainer/trainer.h"

#include <math.h>

regopt_status regopt_trainer_set_allreduce(regopt_trainer *t, regopt_allreduce_fn fn,
                                           void *user, regopt_free_fn free_user)
{
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_set_allreduce");
    float *buf = NULL;
    if (st != REGOPT_OK)
        return st;
    if (fn && t->model->has_backend) /* it packs the gradients into host memory */
        return ro_backend_refuse(t->msg, "an all-reduce (regopt_trainer_set_allreduce)");
    if (fn && !t->sync) {
        buf = ro_calloc(&t->alloc, t->model->n_trainable + RO_SYNC_EXTRA, sizeof(float));
        if (!buf)
            return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                           "out of memory for the all-reduce buffer");
        t->sync = buf;
    }
    if (t->allreduce_free && (t->allreduce_user != user || !fn)) {
        ro_host_enter(&t->env);
        t->allreduce_free(t->allreduce_user);
        ro_host_leave(&t->env);
    }
    t->allreduce = fn;
    t->allreduce_user = fn ? user : NULL;
    t->allreduce_free = fn ? free_user : NULL;
    t->env.has_allreduce = fn != NULL;
    return REGOPT_OK;
}

/* Layout: [g * weight (trainable elements), weight, loss * weight,
 * loss2 * weight, failed, overflowed, the step's accumulators * weight]. Scaling by the
 * local weight before the sum and dividing by the summed weight after it
 * gives every replica the global weighted mean. A replica whose passes
 * failed (local != OK) still joins, so no peer blocks, and its mark makes
 * every peer roll back as well. */
regopt_status ro_sync(regopt_trainer *t, ro_step *s, regopt_status local, double *weight,
                      double *loss, double *loss2)
{
    const regopt_model *m = t->model;
    size_t n = m->n_trainable, i, j, extra = RO_SYNC_HEAD + s->n_acc;
    float *buf = t->sync;
    double w;
    int rc;
    if (!t->allreduce)
        return local;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        float sc = (float)*weight;
        if (!p->grad)
            continue;
        if (local != REGOPT_OK) /* zeros, not 0 * grad: the grad may be inf */
            ro_zero(buf + p->offset, p->count);
        else
            for (j = 0; j < p->count; j++)
                buf[p->offset + j] = sc * p->grad[j];
    }
    buf[n] = local == REGOPT_OK ? (float)*weight : 0.0f;
    buf[n + 1] = local == REGOPT_OK ? (float)(*loss * *weight) : 0.0f;
    buf[n + 2] = local == REGOPT_OK && loss2 ? (float)(*loss2 * *weight) : 0.0f;
    /* an overflow (mixed precision) is not a failure: every replica skips */
    buf[n + 3] = local == REGOPT_OK || local == REGOPT_ERR_OVERFLOW ? 0.0f : 1.0f;
    buf[n + 4] = local == REGOPT_ERR_OVERFLOW ? 1.0f : 0.0f;
    for (j = 0; j < s->n_acc; j++)
        buf[n + RO_SYNC_HEAD + j] = local == REGOPT_OK ? (float)(s->acc[j] * *weight) : 0.0f;
    ro_host_enter(&t->env);
    rc = t->allreduce(buf, n + extra, t->allreduce_user);
    ro_host_leave(&t->env);
    if (local != REGOPT_OK)
        return local;
    if (rc != 0)
        return ro_fail(t->msg, REGOPT_ERR_ALLREDUCE, "the all-reduce callback returned %d", rc);
    if (buf[n + 3] != 0.0f)
        return ro_fail(t->msg, REGOPT_ERR_ALLREDUCE,
                       "the step failed on %g other replica(s)", (double)buf[n + 3]);
    if (buf[n + 4] != 0.0f)
        return ro_fail(t->msg, REGOPT_ERR_OVERFLOW, "gradient overflow on %g other replica(s)",
                       (double)buf[n + 4]);
    w = buf[n];
    if (!(w > 0.0) || !isfinite(w))
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "the batches of all replicas have no weight (total %g)", w);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        float inv = (float)(1.0 / w);
        if (p->grad)
            for (j = 0; j < p->count; j++)
                p->grad[j] = buf[p->offset + j] * inv;
    }
    for (j = 0; j < s->n_acc; j++)
        s->acc[j] = buf[n + RO_SYNC_HEAD + j] / w;
    *loss = buf[n + 1] / w;
    if (loss2)
        *loss2 = buf[n + 2] / w;
    *weight = w;
    return REGOPT_OK;
}
