/* host_update.c — the update of a REGOPT_HOST optimizer: the host's own
 * (torch.optim, torch::optim, ...). What the callback receives is the
 * header's contract (regopt_optimizer_set_host_update): the final gradient
 * in the registered gradient buffers, clipped, the weights at w. */
#include "trainer/trainer.h"

#include <math.h>

typedef struct scale_job {
    float scale;
} scale_job;

/* The built-in updates multiply each gradient element by the float factor
 * as they read it (ro_update.grad_scale); that product, in place, gives
 * the host an identical gradient, bit for bit. */
static void scale_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const float c = ((const scale_job *)ctx)->scale;
    float *g = p->grad;
    size_t j;
    for (j = j0; j < j1; j++)
        g[j] = g[j] * c;
}

static double weight_squares(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    (void)ctx;
    return ro_sum_squares(p->data + j0, j1 - j0);
}

/* After the host's update, before a moving average (the teacher, an EMA or
 * SWA) takes the weights: a non-finite one would stay in it for good. The
 * double sum of squares of finite floats is finite (each square is below
 * 2^256), so it is not finite exactly when a weight is not; only then are
 * the weights read again, to name it. */
static regopt_status taken_weights_finite(regopt_trainer *t, const char *taker)
{
    const regopt_model *m = t->model;
    size_t i, j;
    if (isfinite(ro_sum_pieces(&t->par, weight_squares, NULL)))
        return REGOPT_OK;
    ro_probe_record(t);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        for (j = 0; p->grad && j < p->count; j++)
            if (!isfinite(p->data[j]))
                return ro_fail(t->msg, REGOPT_ERR_HOST_UPDATE,
                               "the host's update callback wrote a non-finite weight to "
                               "parameter \"%.64s\" at element %zu at step %llu, which the %s "
                               "would take; the library's state is as before the step, the "
                               "parameters and the host optimizer's state are what the "
                               "callback left", p->name, j, (unsigned long long)(t->step + 1),
                               taker);
    }
    return ro_fail(t->msg, REGOPT_ERR_HOST_UPDATE, "the host's update wrote a non-finite weight");
}

/* taken_weights_finite through the model's backend: REGOPT_VOP_SUM_SQUARES
 * of the weights, then of each tensor to name it. */
static regopt_status backend_weights_finite(regopt_trainer *t, const char *taker)
{
    const regopt_model *m = t->model;
    regopt_vop op;
    regopt_status st;
    size_t i, k = 0;
    ro_vop_init(m, &op, REGOPT_VOP_SUM_SQUARES);
    op.x = REGOPT_VEC_WEIGHTS;
    st = ro_vop_run(m, &op, t->msg);
    if (st != REGOPT_OK || isfinite(op.out[0]))
        return st;
    for (i = 0; st == REGOPT_OK && i < m->n_params; i++) {
        if (!m->params[i].grad)
            continue;
        op.tensor = k++;
        st = ro_vop_run(m, &op, t->msg);
        if (st == REGOPT_OK && !isfinite(op.out[0]))
            return ro_fail(t->msg, REGOPT_ERR_HOST_UPDATE,
                           "the host's update callback wrote a non-finite weight to parameter "
                           "\"%.64s\" at step %llu, which the %s would take; the library's "
                           "state is as before the step, the parameters and the host "
                           "optimizer's state are what the callback left", m->params[i].name,
                           (unsigned long long)(t->step + 1), taker);
    }
    return st != REGOPT_OK ? st : ro_fail(t->msg, REGOPT_ERR_HOST_UPDATE, "the host's update "
                                          "wrote a non-finite weight");
}

regopt_status ro_host_update(regopt_trainer *t, double lr, double scale, const char *taker)
{
    regopt_optimizer *o = t->opt;
    regopt_status st;
    int rc;
    if (scale != 1.0 && t->model->has_backend) {
        st = ro_vop_xy(t->model, REGOPT_VOP_SCALE, REGOPT_VEC_GRADS, REGOPT_VEC_NONE,
                       (float)scale, 0.0, NULL, t->msg);
        if (st != REGOPT_OK)
            return st;
    } else if (scale != 1.0) {
        scale_job job;
        job.scale = (float)scale;
        ro_each_piece(&t->par, scale_piece, &job);
    }
    /* counted as a host call: the trainer and the optimizer refuse changes
       from inside it, and an update that throws is seen by the guard */
    ro_host_enter(&t->env);
    t->busy_host = 1; /* regopt_trainer_recover's message, should it never return */
    rc = o->host_fn(t->step + 1, lr, o->host_user);
    t->busy_host = 0;
    ro_host_leave(&t->env);
    if (rc == 0 && taker)
        return t->model->has_backend ? backend_weights_finite(t, taker)
                                     : taken_weights_finite(t, taker);
    if (rc == 0)
        return REGOPT_OK;
    /* the library's state is untouched (the step counts only after this);
       the parameters are the host's now: trainer.check_host takes them as
       they are, so that a retried step is not refused for them */
    ro_probe_record(t);
    return ro_fail(t->msg, REGOPT_ERR_HOST_UPDATE, "the host's update callback returned %d at "
                   "step %llu; the library's state is as before the step, the parameters and "
                   "the host optimizer's state are what the callback left", rc,
                   (unsigned long long)(t->step + 1));
}
