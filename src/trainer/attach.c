/* attach.c — regularizers on a trainer: attach (checks, order, buffers),
 * detach, and the list the step loops over. */
#include "trainer/trainer.h"

#include <string.h>

static regopt_status conflict(regopt_trainer *t, const ro_reg *r)
{
    size_t i;
    if (r->trainer == t)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the %s regularizer is already attached to "
                       "this trainer", r->ops->title);
    if (r->trainer)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the %s regularizer is attached to another "
                       "trainer: detach it there first", r->ops->title);
    if (t->n_regs == RO_MAX_REGS)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "a trainer holds at most %d regularizers",
                       RO_MAX_REGS);
    for (i = 0; i < t->n_regs; i++) {
        const ro_reg_ops *o = t->regs[i]->ops;
        if ((o->flags & r->ops->flags & REGOPT_REG_WEIGHT_SIDE))
            return ro_fail(t->msg, REGOPT_ERR_STATE, "the trainer already has a weight-side "
                           "regularizer (\"%s\"): a second one (\"%s\") cannot be combined "
                           "with it", o->name, r->ops->name);
        if (o == r->ops && (o->flags & REGOPT_REG_SINGLE))
            return ro_fail(t->msg, REGOPT_ERR_STATE, "the %s regularizer (\"%s\") is already "
                           "attached to this trainer (at most one)", o->title, o->name);
    }
    return REGOPT_OK;
}

/* Insert r after every regularizer whose order is not larger. */
static void insert(regopt_trainer *t, ro_reg *r)
{
    size_t i = t->n_regs;
    while (i > 0 && t->regs[i - 1]->ops->order > r->ops->order) {
        t->regs[i] = t->regs[i - 1];
        i--;
    }
    t->regs[i] = r;
    t->n_regs++;
}

static void unlist(regopt_trainer *t, const ro_reg *r)
{
    size_t i, j = 0;
    for (i = 0; i < t->n_regs; i++)
        if (t->regs[i] != r)
            t->regs[j++] = t->regs[i];
    t->n_regs = j;
}

/* The slots the step will use against what the host declared. */
static regopt_status slots_check(regopt_trainer *t, const ro_reg *r)
{
    ro_plan p;
    ro_trainer_plan(t, &p, 1);
    if (t->model->slots < p.slots)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "%s%s needs %d activation slots (the model has %d)", r->ops->title,
                       t->n_regs > 1 ? " with the regularizers attached" : "", (int)p.slots,
                       (int)t->model->slots);
    return REGOPT_OK;
}

regopt_status regopt_trainer_attach(regopt_trainer *t, regopt_regularizer *r)
{
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_attach");
    if (st == REGOPT_OK)
        st = ro_reg_check(r, "regopt_trainer_attach");
    if (st == REGOPT_OK)
        st = conflict(t, r);
    if (st == REGOPT_OK && t->model->has_backend && !(r->ops->flags & RO_REG_BACKEND))
        st = ro_fail(t->msg, REGOPT_ERR_UNSUPPORTED, "the %s regularizer cannot run on a model "
                     "with a backend (regopt_model_set_backend) yet", r->ops->title);
    if (st != REGOPT_OK)
        return st;
    r->env = &t->env;
    r->trainer = t;
    st = r->ops->attach ? r->ops->attach(r) : REGOPT_OK;
    if (st != REGOPT_OK) {
        r->env = NULL;
        r->trainer = NULL;
        return st;
    }
    insert(t, r);
    st = slots_check(t, r);
    /* a regularizer just attached needs room for the batches already
       reserved or seen: make it now, so that no step has to */
    if (st == REGOPT_OK && t->reserved)
        st = ro_trainer_reserve_all(t, t->reserved, t->reserved_in);
    if (st != REGOPT_OK) {
        unlist(t, r);
        if (r->ops->detach)
            r->ops->detach(r);
        r->env = NULL;
        r->trainer = NULL;
        return st;
    }
    memset(r->stats, 0, sizeof r->stats);
    r->due = 0;
    return REGOPT_OK;
}

regopt_status regopt_trainer_detach(regopt_trainer *t, regopt_regularizer *r)
{
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_detach");
    if (st == REGOPT_OK)
        st = ro_reg_check(r, "regopt_trainer_detach");
    if (st == REGOPT_OK && r->trainer != t)
        st = ro_fail(t->msg, REGOPT_ERR_STATE, "the %s regularizer is not attached to this "
                     "trainer", r->ops->title);
    if (st != REGOPT_OK)
        return st;
    ro_trainer_unswap(r); /* the host's buffers get the trained weights back */
    unlist(t, r);
    if (r->ops->detach)
        r->ops->detach(r);
    r->env = NULL;
    r->trainer = NULL;
    return REGOPT_OK;
}

size_t regopt_trainer_regularizer_count(const regopt_trainer *t)
{
    return t && t->magic == RO_MAGIC_TRAINER ? t->n_regs : 0;
}

regopt_regularizer *regopt_trainer_regularizer_at(const regopt_trainer *t, size_t i)
{
    return t && t->magic == RO_MAGIC_TRAINER && i < t->n_regs ? t->regs[i] : NULL;
}
