/* guard.c — the trainer's guard against calls it cannot survive: a host
 * callback that calls back into its own trainer (re-entrancy), and a
 * callback that never returns because it threw a C++ exception or
 * longjmp'd past the library (an abandoned call).
 *
 * A call that runs host callbacks marks the trainer busy for its duration
 * (ro_trainer_busy .. ro_trainer_idle). While the mark is set, every call
 * that would change or run the trainer, its regularizers or its optimizer
 * is refused with REGOPT_ERR_STATE: from inside a callback that is
 * re-entrancy; after an abandoned call the mark stays until the host calls
 * regopt_trainer_recover, which puts back what the call had in flight (each
 * regularizer's abandon hook: weights it had moved or swapped out; the
 * options a checkpoint load had already applied). Reads of options and statistics
 * stay allowed: they change nothing. */
#include "trainer/trainer.h"

regopt_status ro_trainer_enter(regopt_trainer *t, const char *func)
{
    regopt_status st = ro_trainer_check(t, func);
    if (st != REGOPT_OK)
        return st;
    if (t->env.in_host)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "%s: refused while a callback of %s of this trainer has not returned: "
                       "either this call comes from inside the callback, or the callback "
                       "threw or longjmp'd out of the library (then call "
                       "regopt_trainer_recover)",
                       func, t->env.busy ? t->env.busy : "a call");
    t->msg[0] = '\0'; /* the message is about the last call, not an older one */
    return REGOPT_OK;
}

regopt_status ro_trainer_begin(regopt_trainer *t, const char *func)
{
    regopt_status st = ro_trainer_enter(t, func);
    if (st != REGOPT_OK)
        return st;
    t->env.busy = func;
    t->n_undo = 0;
    t->busy_applied = 0;
    t->busy_host = 0;
    return REGOPT_OK;
}

void ro_trainer_end(regopt_trainer *t)
{
    t->env.busy = NULL;
    t->n_undo = 0;
    t->busy_applied = 0;
}

void ro_trainer_push_undo(regopt_trainer *t, ro_undo_fn fn, void *ctx)
{
    /* the slots are sized for the deepest call (a load: read buffer, options) */
    if (t->n_undo < RO_MAX_UNDO) {
        t->undo[t->n_undo].fn = fn;
        t->undo[t->n_undo].ctx = ctx;
        t->n_undo++;
    }
}

void ro_trainer_pop_undo(regopt_trainer *t)
{
    if (t->n_undo > 0)
        t->n_undo--;
}

regopt_status regopt_trainer_recover(regopt_trainer *t)
{
    const char *call;
    int n_undo, applied, host;
    size_t i;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_recover");
    if (st != REGOPT_OK)
        return st;
    if (!t->env.in_host) { /* nothing was abandoned */
        t->msg[0] = '\0';
        return REGOPT_OK;
    }
    call = t->env.busy ? t->env.busy : "a call";
    applied = t->busy_applied;
    host = t->busy_host;
    n_undo = t->n_undo;
    for (i = 0; i < t->n_regs; i++) /* weights swapped out: back first */
        if (t->regs[i]->ops->abandon)
            t->regs[i]->ops->abandon(t->regs[i]);
    while (t->env.in_host) /* the optimizer counts these callbacks too */
        ro_host_leave(&t->env);
    ro_trainer_end(t);
    while (n_undo > 0) { /* the innermost first; they may use the API again */
        n_undo--;
        t->undo[n_undo].fn(t, t->undo[n_undo].ctx);
    }
    /* half tensors: the masters are back; the host's buffers may still hold
       what the last forward was given (moved or other weights) */
    ro_model_publish(&t->env);
    if (host) /* the host's update threw: its writes are its own */
        (void)ro_fail(t->msg, REGOPT_OK, "recovered from an abandoned %s: the host's update "
                      "did not return; the library's state is as before it, the parameters "
                      "and the host optimizer's state are what the update left", call);
    else if (applied) /* a committed hook threw: the update had been made */
        (void)ro_fail(t->msg, REGOPT_OK, "recovered from an abandoned %s: its update had "
                      "been applied (step %llu); a committed hook did not return",
                      call, (unsigned long long)t->step);
    else /* not a failure: the message only says what was put back */
        (void)ro_fail(t->msg, REGOPT_OK, "recovered from an abandoned %s: parameters, "
                      "optimizer state and options are as they were before it", call);
    return REGOPT_OK;
}
