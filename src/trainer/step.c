/* step.c — one training step as a transaction: validate everything, run the
 * passes (which only touch gradient buffers and scratch memory), join the
 * all-reduce, check that loss and gradient are finite, and only then commit
 * the update. Nothing that can fail happens after the first parameter is
 * written, so a failed step leaves parameters and optimizer state exactly
 * as they were. Loops over the attached regularizers; names no method. */
#include "trainer/pipeline.h"
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

double ro_trainer_lr(const regopt_trainer *t)
{
    return t->opt->lr * ro_schedule_factor(t->opt, t->step);
}

static regopt_status config_check(regopt_trainer *t)
{
    const regopt_optimizer *o = t->opt;
    ro_plan p;
    regopt_status st = ro_optimizer_validate(o, t->msg);
    if (st == REGOPT_OK && t->model->has_backend)
        st = ro_backend_config_check(t);
    if (st != REGOPT_OK)
        return st;
    if ((o->kind == REGOPT_ADAM || o->kind == REGOPT_ADAMW) && o->amsgrad &&
        t->per_element < 3)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "optimizer.amsgrad was switched on after the trainer was created");
    if (t->env.loss_kind == REGOPT_LOSS_CALLBACK && !t->env.loss_fn)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the loss is a callback but none is set");
    if (o->kind == REGOPT_HOST && !o->host_fn)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the optimizer is REGOPT_HOST but has no "
                       "update callback (regopt_optimizer_set_host_update)");
    /* staged gradients live in the library's fp32 sums and the weights in
       its masters: a host's update would read zeroed buffers of its own and
       be overwritten by the next publish */
    if (o->kind == REGOPT_HOST && (t->model->n_half || ro_scaler_active(t)))
        return ro_fail(t->msg, REGOPT_ERR_UNSUPPORTED, "a REGOPT_HOST update cannot be combined "
                       "with %s (the library keeps the fp32 weights and gradients there); "
                       "use a built-in optimizer", t->model->n_half ? "float16/bfloat16 tensors"
                       : "loss scaling (trainer.loss_scaling)");
    /* options can change after attach (a plan may need more slots): check them */
    ro_trainer_plan(t, &p, 1);
    if (t->model->slots < p.slots)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "the regularizers attached need %d activation slots (the model has %d)",
                       (int)p.slots, (int)t->model->slots);
    return REGOPT_OK;
}

static regopt_status step_zero(ro_step *s) { return ro_zero_gradients(s); }

void ro_step_settle(regopt_trainer *t, ro_step *s)
{
    size_t i;
    if (!s->held)
        return;
    for (i = 0; i < t->n_regs; i++)
        if (t->regs[i]->ops->settle)
            t->regs[i]->ops->settle(t->regs[i]);
    s->held = NULL;
}

static regopt_status step_sync(ro_step *s, regopt_status local, double *loss, double *loss2)
{
    double w = s->weight; /* the final all-reduce scales by the local weight again */
    return ro_sync(s->driver, s, local, &w, loss, loss2);
}

/* Validate, decide what is due, reserve; nothing has changed on failure. */
static regopt_status step_begin(regopt_trainer *t, const regopt_batch *b, size_t count,
                                ro_step *s)
{
    size_t rows = 0, in_rows = 0, i;
    regopt_status st = config_check(t);
    memset(s, 0, sizeof *s);
    s->env = &t->env;
    s->regs = t->regs;
    s->n_regs = t->n_regs;
    s->batches = b;
    s->count = count;
    s->step = t->step;
    s->seed = t->seed;
    s->lr = ro_trainer_lr(t);
    s->lr_max = t->opt->lr;
    s->lr_min = t->opt->lr * t->opt->min_lr_ratio;
    s->opt = t->opt;
    s->opt_m = t->per_element ? t->state : NULL; /* HOST keeps no moments */
    s->opt_m_vec = t->model->has_backend && t->per_element ? t->state_vec[0] : REGOPT_VEC_NONE;
    s->total_steps = t->opt->total_steps;
    s->driver = t;
    s->zero_grads = step_zero;
    s->eval_rows = ro_eval_rows;
    s->eval_all = ro_eval_all;
    s->sync = step_sync;
    /* the all-reduce layout first: a replica that fails below still joins
       with the count its peers use */
    s->n_acc = 1;
    for (i = 0; i < t->n_regs; i++) {
        ro_reg *r = t->regs[i];
        r->due = r->ops->due ? r->ops->due(r, t->step) : 1;
        r->acc0 = s->n_acc;
        s->n_acc += r->ops->n_acc;
    }
    if (st == REGOPT_OK) /* before the probe, which would see the swapped weights */
        st = ro_trainer_swapped_check(t, "regopt_trainer_step");
    if (st == REGOPT_OK)
        st = ro_probe_check(t);
    if (st == REGOPT_OK)
        st = ro_batches_check(b, count, t->model, t->env.loss_kind,
                              t->env.loss_kind != REGOPT_LOSS_CALLBACK, t->allreduce != NULL,
                              &s->weight, &rows, t->msg);
    for (i = 0; i < t->n_regs && st == REGOPT_OK; i++)
        if (t->regs[i]->ops->check)
            st = t->regs[i]->ops->check(t->regs[i], s);
    for (i = 0; st == REGOPT_OK && i < count; i++) {
        size_t r = ro_input_rows(ro_batch_at(b, i));
        in_rows = r > in_rows ? r : in_rows;
    }
    if (st == REGOPT_OK && (rows > t->reserved || in_rows > t->reserved_in))
        st = ro_trainer_reserve_all(t, rows > t->reserved ? rows : t->reserved,
                                    in_rows > t->reserved_in ? in_rows : t->reserved_in);
    ro_trainer_plan(t, &s->plan, 0);
    s->outputs = t->outputs;
    s->d_outputs = t->d_outputs;
    s->inv_weight = s->weight > 0.0 ? 1.0 / s->weight : 0.0;
    return st;
}

/* Prepare hooks, then the weight-side regularizer's gradient
 * or one evaluation at w. A replica may hold only padding: its gradient is
 * then zero. */
static regopt_status step_gradient(regopt_trainer *t, ro_step *s)
{
    ro_reg *weight_side = NULL;
    regopt_status st = REGOPT_OK;
    size_t i;
    for (i = 0; i < t->n_regs && st == REGOPT_OK; i++) {
        ro_reg *r = t->regs[i];
        if (r->due && r->ops->prepare)
            st = r->ops->prepare(r, s);
        if (r->due && r->ops->gradient)
            weight_side = r;
    }
    if (st != REGOPT_OK)
        return st;
    if (weight_side)
        return weight_side->ops->gradient(weight_side, s);
    return ro_eval_all(s, REGOPT_PASS_TRAIN, RO_SEED_TASK, &s->loss);
}

/* A regularizer that takes the weights after the update (a moving
 * average of them: RO_REG_TAKES_WEIGHTS) must not take a non-finite one, which some
 * updates keep as it is (SGD without momentum) or never see (REGOPT_HOST).
 * ro_gradient_norm's bound on |w| is infinite exactly when a weight is not
 * finite: only then are the weights read again, to name it. */
static regopt_status taken_weights_check(regopt_trainer *t, const ro_step *s)
{
    const regopt_model *m = t->model;
    const ro_reg *taker = NULL;
    size_t i, j;
    if (t->weight_max != HUGE_VAL)
        return REGOPT_OK;
    for (i = 0; i < t->n_regs && !taker; i++)
        if (t->regs[i]->ops->flags & RO_REG_TAKES_WEIGHTS)
            taker = t->regs[i];
    if (!taker)
        return REGOPT_OK;
    if (m->has_backend)
        return ro_backend_nonfinite_weight(m, taker->ops->title, t->msg);
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        const float *w = s->held ? s->held + p->offset : p->data;
        for (j = 0; p->grad && j < p->count; j++)
            if (!isfinite(w[j]))
                return ro_fail(t->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                               "parameter \"%.64s\" holds a non-finite weight at element %zu, "
                               "which the %s would take; nothing was updated", p->name, j,
                               taker->ops->title);
    }
    return REGOPT_OK;
}

/* The update and everything after it: only the update can fail, and then
 * before it has written anything (it would write a non-finite value). */
static regopt_status step_commit(regopt_trainer *t, ro_step *s, double norm)
{
    double scale = ro_clip_scale(t->opt, norm);
    size_t i;
    ro_fused f;
    regopt_status st;
    const char *taker = NULL; /* the first regularizer averaging the updated weights */
    f.n = 0;
    for (i = 0; i < t->n_regs; i++) {
        ro_reg *r = t->regs[i];
        if (r->ops->after_pieces && (f.fn[f.n] = r->ops->after_pieces(r, s, &f.ctx[f.n]))) {
            f.n++;
            if (!taker && (r->ops->flags & RO_REG_TAKES_WEIGHTS))
                taker = r->ops->title;
        }
    }
    if (t->opt->kind == REGOPT_HOST) {
        /* the host's update is its own: it finds the weights in place, and
           the work after it makes its passes, once the weights it would
           average are known to be finite */
        ro_step_settle(t, s);
        /* through a backend, the averages take the weights after_backend */
        if (t->model->has_backend)
            for (i = 0; !taker && i < t->n_regs; i++)
                if (t->regs[i]->ops->flags & RO_REG_TAKES_WEIGHTS)
                    taker = t->regs[i]->ops->title;
        st = ro_host_update(t, s->lr, scale, taker);
        for (i = 0; st == REGOPT_OK && i < f.n; i++)
            ro_each_piece(&t->par, f.fn[i], f.ctx[i]);
    } else {
        st = ro_apply_update(t, s->lr, scale, &f, s);
    }
    /* with a backend the work after the update is its own operations */
    for (i = 0; st == REGOPT_OK && t->model->has_backend && i < t->n_regs; i++)
        if (t->regs[i]->ops->after_backend)
            st = t->regs[i]->ops->after_backend(t->regs[i], s);
    if (st != REGOPT_OK)
        return st;
    /* the step is made (regopt_trainer_recover says so should a user
       term's committed hook, called once everything here is done, throw) */
    t->step++;
    t->busy_applied = 1;
    RO_STAT(t, REGOPT_STAT_LOSS) = s->acc[0];
    RO_STAT(t, REGOPT_STAT_OBJECTIVE) = s->has_loss2 ? s->loss2 : s->loss;
    RO_STAT(t, REGOPT_STAT_GRAD_NORM) = norm;
    RO_STAT(t, REGOPT_STAT_CLIP_SCALE) = scale;
    RO_STAT(t, REGOPT_STAT_LR) = s->lr;
    RO_STAT(t, REGOPT_STAT_STEP) = (double)t->step;
    RO_STAT(t, REGOPT_STAT_WEIGHT) = s->weight;
    RO_STAT(t, REGOPT_STAT_FORWARD_CALLS) = (double)t->env.forward_calls;
    RO_STAT(t, REGOPT_STAT_BACKWARD_CALLS) = (double)t->env.backward_calls;
    for (i = 0; i < t->n_regs; i++)
        if (t->regs[i]->ops->after_update)
            t->regs[i]->ops->after_update(t->regs[i], s);
    /* the weights as the update's pass left them (with a weight-side
       method's work after the update) */
    ro_probe_record(t);
    for (i = 0; i < t->n_regs; i++)
        if (t->regs[i]->ops->commit)
            t->regs[i]->ops->commit(t->regs[i], s);
    return REGOPT_OK;
}

/* The step with the trainer marked busy: its callbacks cannot re-enter it,
 * and one that never returns leaves the mark for regopt_trainer_recover. */
static regopt_status step_run(regopt_trainer *t, const regopt_batch *batches, size_t count)
{
    double norm = 0.0;
    ro_step s;
    regopt_status st = step_begin(t, batches, count, &s);
    if (st != REGOPT_OK) {
        /* a replica that cannot even start still joins the first all-reduce
           with its failure mark, so that no peer waits for it forever */
        if (t->allreduce)
            (void)ro_sync(t, &s, st, &s.weight, &s.loss, NULL);
        return st;
    }
    t->env.forward_calls = t->env.backward_calls = 0;
    st = step_gradient(t, &s);
    if (!s.synced) /* the step's all-reduce, joined even after a local failure */
        st = ro_sync(t, &s, st, &s.weight, &s.loss, s.has_loss2 ? &s.loss2 : NULL);
    if (st == REGOPT_OK) {
        st = ro_gradient_norm(t, s.held, &norm);
        /* under loss scaling a non-finite gradient is an overflow (the
           all-reduced sum included: every replica sees one sum) */
        if (st == REGOPT_ERR_NONFINITE_GRADIENT && t->env.skip_overflow)
            st = REGOPT_ERR_OVERFLOW;
        else if (st == REGOPT_OK)
            st = taken_weights_check(t, &s);
    }
    if (st != REGOPT_OK) /* the weights the gradient passes moved go back */
        ro_step_settle(t, &s);
    if (st == REGOPT_ERR_OVERFLOW) /* nothing was committed: skip, back off */
        return ro_scaler_skip(t);
    if (st != REGOPT_OK)
        return st;
    st = step_commit(t, &s, norm);
    if (st == REGOPT_OK)
        ro_scaler_commit(t);
    return st;
}

static regopt_status step_call(regopt_trainer *t, const regopt_batch *batches, size_t count)
{
    regopt_status st = step_run(t, batches, count);
    size_t i;
    /* half tensors: the host's buffers hold round(w) after every step --
       committed, skipped or failed (a perturbed pass may have been last) */
    ro_model_publish(&t->env);
    /* a made step (not a skipped one): the host hears of it last, when no
       work of the library's is left that a hook that never returns could
       cut short (the update's pass already wrote every method's state) */
    for (i = 0; st == REGOPT_OK && t->busy_applied && i < t->n_regs; i++)
        if (t->regs[i]->ops->made)
            t->regs[i]->ops->made(t->regs[i], t->step);
    return st;
}

regopt_status regopt_trainer_step(regopt_trainer *t, const regopt_batch *batches, size_t count)
{
    RO_GUARDED(t, "regopt_trainer_step", step_call(t, batches, count));
}

static regopt_status evaluate_run(regopt_trainer *t, const regopt_batch *batch,
                                 double *loss, float *outputs)
{
    double weight = 1.0, l = 0.0;
    size_t rows;
    regopt_pass p;
    regopt_status st;
    if (loss && t->env.loss_kind == REGOPT_LOSS_CALLBACK && !t->env.loss_fn)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the loss is a callback but none is set");
    st = ro_batches_check(batch, 1, t->model, t->env.loss_kind,
                          loss && t->env.loss_kind != REGOPT_LOSS_CALLBACK, loss == NULL, &weight,
                          &rows, t->msg);
    if (st == REGOPT_OK && rows > t->reserved)
        st = ro_trainer_reserve_all(t, rows, t->reserved_in);
    if (st != REGOPT_OK)
        return st;
    ro_pass_init(&t->env, &p, batch, 0, REGOPT_PASS_NO_GRAD, 0, t->outputs);
    st = ro_call_forward(&t->env, &p);
    if (st == REGOPT_OK && loss)
        st = ro_batch_loss(&t->env, batch, t->outputs, 1.0 / weight, 1.0, NULL, &l);
    if (st != REGOPT_OK)
        return st;
    if (loss)
        *loss = l;
    if (outputs)
        memcpy(outputs, t->outputs, batch->rows * t->model->output_width * sizeof(float));
    return REGOPT_OK;
}

regopt_status regopt_trainer_evaluate(regopt_trainer *t, const regopt_batch *batch,
                                      double *loss, float *outputs)
{
    RO_GUARDED(t, "regopt_trainer_evaluate", evaluate_run(t, batch, loss, outputs));
}
