/* swap.c — evaluation on averaged weights: regopt_regularizer_swap_average
 * exchanges a regularizer's averaged weights (ro_reg_ops.averaged) with the
 * host's buffers, regopt_regularizer_recalibrate runs the batch-norm
 * recalibration passes for them (torch.optim.swa_utils.update_bn), and the
 * trainer's calls that would train on or save swapped weights refuse.
 * Names no method: it asks the ops table for the averaged weights. */
#include "trainer/trainer.h"

/* w <-> the averaged weights, piece by piece (ro_exchange: twice restores
 * both sides bit for bit). */
static void exchange_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    ro_exchange(p->data + j0, (float *)ctx + p->offset + j0, j1 - j0);
}

regopt_status ro_trainer_swapped_check(regopt_trainer *t, const char *func)
{
    size_t i;
    for (i = 0; i < t->n_regs; i++)
        if (t->regs[i]->swapped)
            return ro_fail(t->msg, REGOPT_ERR_STATE,
                           "%s: the %s regularizer's averaged weights are swapped into the "
                           "model's buffers; call regopt_regularizer_swap_average on it again "
                           "to put the trained weights back first",
                           func, t->regs[i]->ops->title);
    return REGOPT_OK;
}

/* On a model with a backend: REGOPT_VOP_SWAP of the weights and buffer v. */
static regopt_status exchange_vec(const regopt_trainer *t, int32_t v)
{
    return ro_vop_xy(t->model, REGOPT_VOP_SWAP, REGOPT_VEC_WEIGHTS, v, 0.0, 0.0, NULL,
                     (char *)t->msg);
}

void ro_trainer_unswap(ro_reg *r)
{
    float *v;
    if (!r->swapped)
        return;
    if (r->env->model->has_backend) { /* detach: a failure keeps them swapped, named */
        if (exchange_vec(r->trainer, r->ops->averaged_vec(r)) == REGOPT_OK)
            r->swapped = 0;
        return;
    }
    v = r->ops->averaged(r);
    if (v)
        ro_each_piece(r->env->par, exchange_piece, v);
    r->swapped = 0;
}

/* The handle, attached, keeping averaged weights, its trainer idle. */
static regopt_status swap_target(regopt_regularizer *r, const char *func, regopt_trainer **t)
{
    regopt_status st = ro_reg_check(r, func);
    if (st != REGOPT_OK)
        return st;
    if (!r->ops->averaged)
        return ro_fail(r->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "%s: a %s regularizer keeps no averaged weights", func, r->ops->title);
    if (!r->trainer)
        return ro_fail(r->msg, REGOPT_ERR_STATE, "%s: the %s regularizer is not attached to a "
                       "trainer", func, r->ops->title);
    *t = r->trainer;
    st = ro_trainer_enter(*t, func);
    if (st != REGOPT_OK)
        return ro_fail(r->msg, st, "%s", (*t)->msg);
    r->msg[0] = '\0';
    return REGOPT_OK;
}

regopt_status regopt_regularizer_swap_average(regopt_regularizer *r)
{
    static const char func[] = "regopt_regularizer_swap_average";
    regopt_trainer *t = NULL;
    float *v;
    size_t i;
    regopt_status st = swap_target(r, func, &t);
    if (st != REGOPT_OK)
        return st;
    v = t->model->has_backend ? NULL : r->ops->averaged(r);
    if (t->model->has_backend ? r->ops->averaged_vec(r) == REGOPT_VEC_NONE : !v)
        return ro_fail(r->msg, REGOPT_ERR_STATE, "%s: the %s regularizer has averaged no "
                       "update yet: there is nothing to swap in", func, r->ops->title);
    for (i = 0; !r->swapped && i < t->n_regs; i++)
        if (t->regs[i]->swapped)
            return ro_fail(r->msg, REGOPT_ERR_STATE, "%s: the %s regularizer's averaged "
                           "weights are swapped in already; swap them back first", func,
                           t->regs[i]->ops->title);
    if (t->model->has_backend) {
        st = exchange_vec(t, r->ops->averaged_vec(r));
        if (st != REGOPT_OK)
            return ro_fail(r->msg, st, "%s", t->msg);
    } else {
        ro_each_piece(&t->par, exchange_piece, v);
    }
    r->swapped = !r->swapped;
    return REGOPT_OK;
}

int regopt_regularizer_average_swapped(const regopt_regularizer *r)
{
    return r && r->magic == RO_MAGIC_REG ? r->swapped : 0;
}

/* One forward per batch, TRAIN | NO_GRAD | RECALIBRATE, into the trainer's
 * output scratch (discarded); dropout seeds as a step's task passes. */
static regopt_status recalibrate_run(regopt_trainer *t, const regopt_batch *b, size_t count)
{
    double weight = 0.0;
    size_t rows = 0, in_rows = 0, i;
    regopt_status st = ro_batches_check(b, count, t->model, t->env.loss_kind, 0, 1, &weight,
                                        &rows, t->msg);
    for (i = 0; st == REGOPT_OK && i < count; i++) {
        size_t r = ro_input_rows(ro_batch_at(b, i));
        in_rows = r > in_rows ? r : in_rows;
    }
    if (st == REGOPT_OK && (rows > t->reserved || in_rows > t->reserved_in))
        st = ro_trainer_reserve_all(t, rows > t->reserved ? rows : t->reserved,
                                    in_rows > t->reserved_in ? in_rows : t->reserved_in);
    for (i = 0; st == REGOPT_OK && i < count; i++) {
        regopt_pass p;
        ro_pass_init(&t->env, &p, ro_batch_at(b, i), i,
                     REGOPT_PASS_TRAIN | REGOPT_PASS_NO_GRAD | REGOPT_PASS_RECALIBRATE,
                     ro_pass_seed(t->seed, t->step, (uint32_t)i, RO_SEED_TASK), t->outputs);
        st = ro_call_forward(&t->env, &p);
    }
    return st;
}

regopt_status regopt_regularizer_recalibrate(regopt_regularizer *r, const regopt_batch *batches,
                                             size_t count)
{
    static const char func[] = "regopt_regularizer_recalibrate";
    regopt_trainer *t = NULL;
    regopt_status st = swap_target(r, func, &t);
    if (st != REGOPT_OK)
        return st;
    if (!r->swapped)
        return ro_fail(r->msg, REGOPT_ERR_STATE, "%s: the %s regularizer's averaged weights "
                       "are not swapped in; call regopt_regularizer_swap_average first", func,
                       r->ops->title);
    if (!batches)
        return ro_fail(r->msg, REGOPT_ERR_NULL_POINTER, "%s: batches is NULL", func);
    if (count == 0)
        return ro_fail(r->msg, REGOPT_ERR_INVALID_ARGUMENT, "%s: count is 0", func);
    st = ro_trainer_begin(t, func);
    if (st == REGOPT_OK) {
        st = recalibrate_run(t, batches, count);
        ro_trainer_end(t);
    }
    if (st != REGOPT_OK)
        (void)ro_fail(r->msg, st, "%s", t->msg);
    return st;
}
