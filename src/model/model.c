/* model.c — the host network as the library sees it: parameter tensors,
 * output/input widths, activation slots and the two callbacks. */
#include "model/model.h"

#include <string.h>

#define RO_MAX_SLOTS 16

regopt_status ro_model_check(const regopt_model *m, const char *func)
{
    if (!m)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "%s: model is NULL", func);
    if (m->magic != RO_MAGIC_MODEL)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "%s: not a live regopt_model handle", func);
    return REGOPT_OK;
}

/* Setters share this guard: a bound model is frozen, because a trainer sized
 * its state and scratch buffers from it. */
static regopt_status check_mutable(regopt_model *m, const char *func)
{
    regopt_status st = ro_model_check(m, func);
    if (st != REGOPT_OK)
        return st;
    if (m->bound)
        return ro_fail(m->msg, REGOPT_ERR_STATE,
                       "%s: the model is bound to a trainer and can no longer change",
                       func);
    return REGOPT_OK;
}

regopt_model *regopt_model_create(const regopt_allocator *allocator,
                                  regopt_status *status)
{
    ro_alloc a;
    regopt_model *m;
    regopt_status st = ro_alloc_init(&a, allocator);
    if (st == REGOPT_OK) {
        m = ro_calloc(&a, 1, sizeof *m);
        if (m) {
            m->magic = RO_MAGIC_MODEL;
            m->alloc = a;
            m->slots = 1;
            if (status)
                *status = REGOPT_OK;
            return m;
        }
        st = ro_fail_tls(REGOPT_ERR_NO_MEMORY, "regopt_model_create: out of memory");
    }
    if (status)
        *status = st;
    return NULL;
}

void regopt_model_free(regopt_model *m)
{
    size_t i;
    ro_alloc a;
    if (!m || m->magic != RO_MAGIC_MODEL)
        return;
    if (m->bound) { /* a trainer still calls its callbacks: refuse rather than dangle */
        ro_fail_tls(REGOPT_ERR_STATE, "regopt_model_free: still bound to %d trainer(s); "
                    "free them first (nothing was freed)", m->bound);
        return;
    }
    if (m->free_user)
        m->free_user(m->user);
    for (i = 0; i < m->n_params; i++)
        ro_free(&m->alloc, m->params[i].name);
    ro_free(&m->alloc, m->params);
    a = m->alloc;
    m->magic = RO_MAGIC_DEAD;
    ro_free(&a, m);
}

static int ranges_overlap(const void *a, const void *b, size_t bytes)
{
    const char *x = a, *y = b;
    return x < y + bytes && y < x + bytes;
}

static regopt_status check_param(regopt_model *m, const char *name, void *data,
                                 void *grad, size_t count, regopt_dtype dtype,
                                 int32_t group)
{
    size_t i, len;
    if (!name || !data)
        return ro_fail(m->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_model_add_param: %s is NULL", name ? "data" : "name");
    len = strlen(name);
    if (len == 0 || len > REGOPT_MAX_NAME)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter name must have 1..%d bytes, got %zu",
                       REGOPT_MAX_NAME, len);
    if (dtype != REGOPT_DTYPE_FLOAT32) {
        regopt_status st = (dtype >= REGOPT_DTYPE_FLOAT16 && dtype <= REGOPT_DTYPE_FLOAT64)
                               ? REGOPT_ERR_UNSUPPORTED
                               : REGOPT_ERR_INVALID_ARGUMENT;
        return ro_fail(m->msg, st, "parameter \"%.64s\": dtype %d is not supported "
                       "(only REGOPT_DTYPE_FLOAT32 = 1)", name, (int)dtype);
    }
    if (count == 0 || count > SIZE_MAX / (4 * sizeof(float)))
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter \"%.64s\": element count %zu is %s", name, count,
                       count ? "too large" : "zero");
    if (group < 0 || group >= REGOPT_MAX_GROUPS)
        return ro_fail(m->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "parameter \"%.64s\": group must be in [0, %d], got %d", name,
                       REGOPT_MAX_GROUPS - 1, (int)group);
    if (grad && ranges_overlap(data, grad, count * sizeof(float)))
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter \"%.64s\": data and grad overlap", name);
    for (i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                           "parameter name \"%.64s\" is already registered", name);
    return REGOPT_OK;
}

static regopt_status grow_params(regopt_model *m)
{
    size_t cap = m->cap_params ? 2 * m->cap_params : 8;
    ro_param *p;
    if (m->n_params < m->cap_params)
        return REGOPT_OK;
    p = ro_calloc(&m->alloc, cap, sizeof *p);
    if (!p)
        return ro_fail(m->msg, REGOPT_ERR_NO_MEMORY, "regopt_model_add_param: out of memory");
    if (m->n_params)
        memcpy(p, m->params, m->n_params * sizeof *p);
    ro_free(&m->alloc, m->params);
    m->params = p;
    m->cap_params = cap;
    return REGOPT_OK;
}

regopt_status regopt_model_add_param(regopt_model *m, const char *name,
                                     void *data, void *grad, size_t count,
                                     regopt_dtype dtype, int32_t group)
{
    ro_param *p;
    char *copy;
    size_t len;
    regopt_status st = check_mutable(m, "regopt_model_add_param");
    if (st == REGOPT_OK)
        st = check_param(m, name, data, grad, count, dtype, group);
    if (st == REGOPT_OK)
        st = grow_params(m);
    if (st != REGOPT_OK)
        return st;
    len = strlen(name);
    copy = ro_malloc(&m->alloc, len + 1);
    if (!copy)
        return ro_fail(m->msg, REGOPT_ERR_NO_MEMORY, "regopt_model_add_param: out of memory");
    memcpy(copy, name, len + 1);
    p = &m->params[m->n_params++];
    p->name = copy;
    p->data = data;
    p->grad = grad;
    p->count = count;
    p->group = group;
    p->offset = m->n_trainable;
    m->n_elements += count;
    if (grad)
        m->n_trainable += count;
    return REGOPT_OK;
}

regopt_status regopt_model_set_output_width(regopt_model *m, size_t width)
{
    regopt_status st = check_mutable(m, "regopt_model_set_output_width");
    if (st != REGOPT_OK)
        return st;
    if (width == 0 || width > ((size_t)1 << 30))
        return ro_fail(m->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "output width must be in [1, 2^30], got %zu", width);
    m->output_width = width;
    return REGOPT_OK;
}

regopt_status regopt_model_set_input_width(regopt_model *m, size_t width)
{
    regopt_status st = check_mutable(m, "regopt_model_set_input_width");
    if (st != REGOPT_OK)
        return st;
    if (width > ((size_t)1 << 30))
        return ro_fail(m->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "input width must be in [0, 2^30], got %zu", width);
    m->input_width = width;
    return REGOPT_OK;
}

regopt_status regopt_model_set_slots(regopt_model *m, int32_t slots)
{
    regopt_status st = check_mutable(m, "regopt_model_set_slots");
    if (st != REGOPT_OK)
        return st;
    if (slots < 1 || slots > RO_MAX_SLOTS)
        return ro_fail(m->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "slots must be in [1, %d], got %d", RO_MAX_SLOTS, (int)slots);
    m->slots = slots;
    return REGOPT_OK;
}

regopt_status regopt_model_set_capabilities(regopt_model *m, uint32_t caps)
{
    regopt_status st = check_mutable(m, "regopt_model_set_capabilities");
    if (st != REGOPT_OK)
        return st;
    if (caps & ~(uint32_t)REGOPT_CAP_DOUBLED_BATCH)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "unknown capability bits 0x%x", (unsigned)(caps & ~REGOPT_CAP_DOUBLED_BATCH));
    m->caps = caps;
    return REGOPT_OK;
}

regopt_status regopt_model_set_callbacks(regopt_model *m, regopt_pass_fn forward,
                                         regopt_pass_fn backward, void *user,
                                         regopt_free_fn free_user)
{
    regopt_status st = check_mutable(m, "regopt_model_set_callbacks");
    if (st != REGOPT_OK)
        return st;
    if (!forward || !backward)
        return ro_fail(m->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_model_set_callbacks: %s callback is NULL",
                       forward ? "backward" : "forward");
    /* Release the previous user data unless the caller hands it back. */
    if (m->free_user && m->user != user)
        m->free_user(m->user);
    m->forward = forward;
    m->backward = backward;
    m->user = user;
    m->free_user = free_user;
    return REGOPT_OK;
}

size_t regopt_model_param_count(const regopt_model *m)
{
    return (m && m->magic == RO_MAGIC_MODEL) ? m->n_params : 0;
}

size_t regopt_model_element_count(const regopt_model *m)
{
    return (m && m->magic == RO_MAGIC_MODEL) ? m->n_elements : 0;
}

const char *regopt_model_message(const regopt_model *m)
{
    if (!m || m->magic != RO_MAGIC_MODEL)
        return "invalid regopt_model handle";
    return m->msg;
}
