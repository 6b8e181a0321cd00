/* probe.c — trainer.check_host between steps: the first and last element of
 * every trainable tensor as the last step left them. A host that writes
 * into its parameters, reloads them or moves them to new memory behind the
 * library's back (LibTorch's module.to(), torch::load into a registered
 * module) fails the next step with REGOPT_ERR_STATE instead of training
 * on memory the library no longer describes. Two floats per tensor: cheap
 * enough to run before every step when the option is on. */
#include "trainer/trainer.h"

#include <string.h>

regopt_status ro_probe_enable(regopt_trainer *t, int on)
{
    size_t n = t->model->n_params;
    if (!on) {
        ro_free(&t->alloc, t->probe);
        t->probe = NULL;
        t->probe_ok = 0;
        return REGOPT_OK;
    }
    if (!t->probe) {
        t->probe = ro_calloc(&t->alloc, 2 * n, sizeof(uint32_t));
        if (!t->probe)
            return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY, "out of memory for trainer.check_host");
    }
    return REGOPT_OK;
}

static void ends(const ro_param *q, uint32_t out[2])
{
    memcpy(&out[0], &q->data[0], sizeof out[0]);
    memcpy(&out[1], &q->data[q->count - 1], sizeof out[1]);
}

void ro_probe_record(regopt_trainer *t)
{
    size_t i;
    if (!t->probe)
        return;
    for (i = 0; i < t->model->n_params; i++)
        if (t->model->params[i].grad)
            ends(&t->model->params[i], t->probe + 2 * i);
    t->probe_ok = 1;
}

regopt_status ro_probe_check(regopt_trainer *t)
{
    size_t i;
    if (!t->probe || !t->probe_ok)
        return REGOPT_OK;
    for (i = 0; i < t->model->n_params; i++) {
        const ro_param *q = &t->model->params[i];
        uint32_t now[2];
        if (!q->grad)
            continue;
        ends(q, now);
        if (memcmp(now, t->probe + 2 * i, sizeof now) != 0)
            return ro_fail(t->msg, REGOPT_ERR_STATE, "host contract: parameter \"%s\" changed "
                           "since the last step (its %s element), behind the library's back: "
                           "a host that writes, reloads or moves registered tensors must do so "
                           "through the library, or switch trainer.check_host off",
                           q->name, memcmp(&now[0], &t->probe[2 * i], 4) ? "first" : "last");
    }
    return REGOPT_OK;
}
