/* backend.c — a trainer on a model whose parameter memory is the host's
 * backend's (regopt_model_set_backend): the tensors bound and the moments
 * allocated through it (the frozen tensors' handles too, for checkpoints),
 * and what it cannot serve yet refused by name. The
 * step's operations through it are where their built-in loops are
 * (pipeline.c, update.c, and each regularizer's own file). */
#include "trainer/trainer.h"

regopt_status ro_backend_trainer_init(regopt_trainer *t, char *msg)
{
    regopt_model *m = t->model;
    void **handles;
    size_t *counts, i, k = 0, n, nf, f = 0;
    regopt_vop op;
    regopt_status st;
    ro_vop_init(m, &op, REGOPT_VOP_BIND);
    n = op.tensors;
    nf = m->n_params - n; /* frozen: handed over for checkpoints' READ and WRITE */
    handles = ro_calloc(&t->alloc, 2 * n + nf + 1, sizeof *handles);
    counts = ro_calloc(&t->alloc, n + nf + 1, sizeof *counts);
    t->vop_tensor = ro_calloc(&t->alloc, 3 * n + 1, sizeof *t->vop_tensor);
    if (!handles || !counts || !t->vop_tensor) {
        ro_free(&t->alloc, handles);
        ro_free(&t->alloc, counts);
        return ro_fail(msg, REGOPT_ERR_NO_MEMORY, "out of memory for the backend's tensor "
                       "list (%zu tensors)", n);
    }
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (!p->grad) {
            handles[2 * n + f] = p->host_data;
            counts[n + f++] = p->count;
            continue;
        }
        handles[k] = p->host_data;
        handles[n + k] = p->host_grad;
        counts[k++] = p->count;
    }
    op.data = handles;
    op.grad = handles + n;
    op.counts = counts;
    op.frozen = nf;
    op.frozen_data = handles + 2 * n;
    op.frozen_counts = counts + n;
    st = ro_vop_run(m, &op, msg);
    ro_free(&t->alloc, handles);
    ro_free(&t->alloc, counts);
    for (i = 0; st == REGOPT_OK && i < t->per_element; i++)
        st = ro_vec_alloc(m, &t->state_vec[i], msg);
    return st;
}

void ro_backend_trainer_release(regopt_trainer *t)
{
    size_t i;
    for (i = 0; i < 3; i++)
        ro_vec_free(t->model, &t->state_vec[i]);
    ro_free(&t->alloc, t->vop_tensor);
    t->vop_tensor = NULL;
}

regopt_status ro_backend_config_check(regopt_trainer *t)
{
    const char *what = NULL;
    if (ro_scaler_active(t)) /* belt and braces: the setter refuses it */
        what = "loss scaling (trainer.loss_scaling)";
    return what ? ro_backend_refuse(t->msg, what) : REGOPT_OK;
}
