/* half_host.h — the digits MLP with half-precision parameter buffers
 * (mlp --precision bf16|fp16). The library keeps the fp32 master and writes
 * round(w) into these 16-bit buffers before every forward; this host, like
 * a CPU without half arithmetic, widens them to float32, runs the float32
 * network of digits_mlp.h, and hands its gradients back rounded to the
 * same 16-bit format (computed at the loss scale pass->loss_scale: the
 * library unscales them and sums them in fp32). */
#ifndef HALF_HOST_H
#define HALF_HOST_H

#include "digits_mlp.h"

#define HH_TENSORS 4

typedef struct half_host {
    mlp *m;
    regopt_dtype dt;
    uint16_t *data[HH_TENSORS], *grad[HH_TENSORS];
    float *f32[HH_TENSORS], *g32[HH_TENSORS]; /* the network's float32 buffers */
    size_t count[HH_TENSORS];
} half_host;

static int hh_forward(const regopt_pass *p, void *user)
{
    half_host *h = user;
    int i;
    for (i = 0; i < HH_TENSORS; i++) /* widening is exact */
        if (regopt_convert(h->data[i], h->dt, h->f32[i], REGOPT_DTYPE_FLOAT32, h->count[i]))
            return 1;
    return mlp_forward(p, h->m);
}

static int hh_backward(const regopt_pass *p, void *user)
{
    half_host *h = user;
    int i, rc;
    for (i = 0; i < HH_TENSORS; i++)
        memset(h->g32[i], 0, h->count[i] * sizeof(float));
    if ((rc = mlp_backward(p, h->m)) != 0 || (p->flags & REGOPT_PASS_NO_PARAM_GRAD))
        return rc;
    /* the library zeroes the 16-bit gradient buffers after every backward
       (it has added them into its fp32 sum), so storing is adding here */
    for (i = 0; i < HH_TENSORS; i++)
        if (regopt_convert(h->g32[i], REGOPT_DTYPE_FLOAT32, h->grad[i], h->dt, h->count[i]))
            return 2;
    return 0;
}

static void hh_free(half_host *h)
{
    int i;
    for (i = 0; i < HH_TENSORS; i++) {
        free(h->data[i]);
        free(h->grad[i]);
    }
}

/* Register w1, b1, w2, b2 as 16-bit tensors (from the float32 initial
 * values, rounded), the batch-norm tensors as float32, and the callbacks. */
static regopt_status hh_register(half_host *h, mlp *m, regopt_dtype dt, regopt_model *model)
{
    static const char *const names[HH_TENSORS] = {"w1", "b1", "w2", "b2"};
    static const int32_t groups[HH_TENSORS] = {0, 1, 0, 1};
    regopt_status st;
    int i;
    memset(h, 0, sizeof *h);
    h->m = m;
    h->dt = dt;
    h->f32[0] = m->w1; h->g32[0] = m->g1; h->count[0] = m->in * m->hid;
    h->f32[1] = m->b1; h->g32[1] = m->gb1; h->count[1] = m->hid;
    h->f32[2] = m->w2; h->g32[2] = m->g2; h->count[2] = m->hid * m->out;
    h->f32[3] = m->b2; h->g32[3] = m->gb2; h->count[3] = m->out;
    for (i = 0; i < HH_TENSORS; i++) {
        h->data[i] = calloc(h->count[i], sizeof(uint16_t));
        h->grad[i] = calloc(h->count[i], sizeof(uint16_t));
        if (!h->data[i] || !h->grad[i])
            return REGOPT_ERR_NO_MEMORY;
        if ((st = regopt_convert(h->f32[i], REGOPT_DTYPE_FLOAT32, h->data[i], dt,
                                 h->count[i])) != REGOPT_OK ||
            (st = regopt_model_add_param(model, names[i], h->data[i], h->grad[i], h->count[i],
                                         dt, groups[i])) != REGOPT_OK)
            return st;
    }
    if ((m->bn && (st = regopt_model_add_param(model, "bn.gamma", m->gamma, m->ggamma, m->hid,
                                               REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (m->bn && (st = regopt_model_add_param(model, "bn.beta", m->beta, m->gbeta, m->hid,
                                               REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (m->bn && (st = regopt_model_add_param(model, "bn.running_mean", m->run_mean, NULL,
                                               m->hid, REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (m->bn && (st = regopt_model_add_param(model, "bn.running_var", m->run_var, NULL,
                                               m->hid, REGOPT_DTYPE_FLOAT32, 1)) != REGOPT_OK) ||
        (st = regopt_model_set_output_width(model, m->out)) != REGOPT_OK ||
        (st = regopt_model_set_input_width(model, m->in)) != REGOPT_OK ||
        (st = regopt_model_set_slots(model, MLP_SLOTS)) != REGOPT_OK ||
        (st = regopt_model_set_capabilities(model, REGOPT_CAP_DOUBLED_BATCH)) != REGOPT_OK)
        return st;
    return regopt_model_set_callbacks(model, hh_forward, hh_backward, h, NULL);
}

#endif
