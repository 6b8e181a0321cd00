/* optim_host.c — REGOPT_HOST: the update is the host's own (torch.optim,
 * LibTorch's torch::optim, anything). The handle only holds the callback;
 * the trainer calls it in place of the fused update (trainer/host_update.c). */
#include "optim/optim.h"

void ro_optimizer_host_release(regopt_optimizer *o)
{
    regopt_free_fn f = o->host_free;
    void *u = o->host_user;
    o->host_fn = NULL;
    o->host_user = NULL;
    o->host_free = NULL;
    if (f) /* last: a binding's free hook may drop the object that held o */
        f(u);
}

regopt_status regopt_optimizer_set_host_update(regopt_optimizer *o, regopt_host_update_fn fn,
                                               void *user, regopt_free_fn free_user)
{
    regopt_status st = ro_optimizer_check(o, "regopt_optimizer_set_host_update");
    if (st != REGOPT_OK)
        return st;
    if (atomic_load_explicit(&o->busy, memory_order_relaxed) > 0)
        return ro_fail(o->msg, REGOPT_ERR_STATE, "regopt_optimizer_set_host_update: refused "
                       "while a trainer that uses this optimizer is inside a call that runs "
                       "host callbacks");
    if (!fn)
        return ro_fail(o->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_optimizer_set_host_update: fn is NULL");
    if (o->kind != REGOPT_HOST)
        return ro_fail(o->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "regopt_optimizer_set_host_update: the optimizer's kind is %d, not "
                       "REGOPT_HOST (5): a built-in optimizer makes its own update",
                       (int)o->kind);
    o->msg[0] = '\0';
    ro_optimizer_host_release(o);
    o->host_fn = fn;
    o->host_user = user;
    o->host_free = free_user;
    return REGOPT_OK;
}
