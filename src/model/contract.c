/* contract.c — the host-contract checks of one pass (trainer.check_host,
 * off by default; when off, the only cost is a branch per callback).
 *
 * What a callback can get wrong without the library noticing, and what is
 * checked here:
 *   forward   outputs left unwritten: every output float is set to a
 *             signalling pattern before the call and must have changed;
 *             writes past the outputs (a declared width smaller than the
 *             host's): RO_OUT_GUARD floats after them hold the pattern and
 *             must still hold it (every output buffer has that much room;
 *             what was there is put back);
 *   backward  gradients not added: with a non-zero d_outputs and parameter
 *             gradients asked for, the registered gradients must change.
 * Each failure is REGOPT_ERR_FORWARD / REGOPT_ERR_BACKWARD with a message
 * saying which rule and where; the step then rolls back as for any failed
 * callback. */
#include "model/model.h"

#include <string.h>

/* A NaN with a payload no arithmetic produces: "left as we put it". */
#define MARK 0x7fa0c0deu

static void mark(float *x, size_t n)
{
    const uint32_t m = MARK;
    size_t i;
    for (i = 0; i < n; i++)
        memcpy(&x[i], &m, sizeof m);
}

static int marked(const float *x)
{
    uint32_t b;
    memcpy(&b, x, sizeof b);
    return b == MARK;
}

static size_t out_floats(const regopt_pass *p) { return p->rows * p->output_width; }

void ro_contract_before_forward(const regopt_pass *p, float *saved)
{
    size_t n = out_floats(p);
    memcpy(saved, p->outputs + n, RO_OUT_GUARD * sizeof(float));
    mark(p->outputs, n + RO_OUT_GUARD);
}

regopt_status ro_contract_after_forward(ro_env *e, const regopt_pass *p, const float *saved)
{
    size_t n = out_floats(p), k = p->output_width, i;
    regopt_status st = REGOPT_OK;
    for (i = 0; i < RO_OUT_GUARD && st == REGOPT_OK; i++)
        if (!marked(p->outputs + n + i))
            st = ro_fail(e->msg, REGOPT_ERR_FORWARD, "host contract: the forward callback wrote "
                         "past its %zu x %zu outputs (float %zu after them; is the model's "
                         "output width %zu the host's?)", p->rows, k, i, k);
    for (i = 0; i < n && st == REGOPT_OK; i++)
        if (marked(p->outputs + i))
            st = ro_fail(e->msg, REGOPT_ERR_FORWARD, "host contract: the forward callback "
                         "returned 0 but left output %zu of row %zu unwritten (micro-batch %zu, "
                         "slot %d)", i % k, i / k, p->micro_batch, (int)p->slot);
    memcpy(p->outputs + n, saved, RO_OUT_GUARD * sizeof(float));
    return st;
}

/* A polynomial hash of every gradient element's bits (mod 2^64, odd
 * multiplier): changing any one element always changes it. */
uint64_t ro_contract_grad_signature(const ro_env *e)
{
    const regopt_model *m = e->model;
    uint64_t sig = 0;
    size_t i, j;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *q = &m->params[i];
        /* a staged tensor (mixed precision): the host writes its own buffer,
           flushed into q->grad only after this check */
        size_t es = q->staged ? ro_dtype_size(q->dtype) : sizeof(float);
        const unsigned char *g = q->staged ? (const unsigned char *)q->host_grad
                                           : (const unsigned char *)q->grad;
        for (j = 0; q->grad && j < q->count; j++) {
            uint32_t b = 0;
            memcpy(&b, g + j * es, es);
            sig = sig * 0x100000001b3ull + b;
        }
    }
    return sig;
}

regopt_status ro_contract_after_backward(ro_env *e, const regopt_pass *p, uint64_t before)
{
    size_t n = out_floats(p), i;
    int any = 0;
    if (p->flags & REGOPT_PASS_NO_PARAM_GRAD)
        return REGOPT_OK;
    for (i = 0; i < n && !any; i++)
        any = p->d_outputs[i] != 0.0f;
    if (any && ro_contract_grad_signature(e) == before)
        return ro_fail(e->msg, REGOPT_ERR_BACKWARD, "host contract: the backward callback "
                       "returned 0 but added nothing to the registered gradients (micro-batch "
                       "%zu, slot %d): it must add d(loss)/d(parameters) into them",
                       p->micro_batch, (int)p->slot);
    return REGOPT_OK;
}
