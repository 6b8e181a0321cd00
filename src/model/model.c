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
            m->span_root[RO_SPANS_DATA] = m->span_root[RO_SPANS_GRAD] =
                m->span_root[RO_SPANS_FROZEN] = RO_SPAN_NIL;
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

regopt_status regopt_model_free(regopt_model *m)
{
    size_t i;
    ro_alloc a;
    if (!m)
        return REGOPT_OK;
    if (m->magic != RO_MAGIC_MODEL)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "regopt_model_free: not a live regopt_model handle");
    if (m->bound) /* a trainer still calls its callbacks: refuse rather than dangle */
        return ro_fail_tls(REGOPT_ERR_STATE, "regopt_model_free: still bound to %d "
                           "trainer(s); free them first (nothing was freed)", m->bound);
    if (m->free_user)
        m->free_user(m->user);
    for (i = 0; i < m->n_params; i++) {
        ro_param *p = &m->params[i];
        ro_free(&m->alloc, p->name);
        if (p->data != p->host_data)
            ro_free(&m->alloc, p->data);
        if (p->staged)
            ro_free(&m->alloc, p->grad);
    }
    ro_free(&m->alloc, m->params);
    ro_free(&m->alloc, m->spans);
    ro_free(&m->alloc, m->names);
    a = m->alloc;
    m->magic = RO_MAGIC_DEAD;
    ro_free(&a, m);
    return REGOPT_OK;
}

/* ---- names: an open-addressing set of parameter indices + 1 ------------- */

static size_t name_hash(const char *s)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211u;
    }
    return (size_t)(h ^ (h >> 32));
}

static void name_put(size_t *tab, size_t cap, const ro_param *params, size_t idx)
{
    size_t i = name_hash(params[idx].name) & (cap - 1);
    while (tab[i])
        i = (i + 1) & (cap - 1);
    tab[i] = idx + 1;
}

static int name_taken(const regopt_model *m, const char *name)
{
    size_t i, mask = m->cap_names - 1;
    if (!m->cap_names)
        return 0;
    for (i = name_hash(name) & mask; m->names[i]; i = (i + 1) & mask)
        if (strcmp(m->params[m->names[i] - 1].name, name) == 0)
            return 1;
    return 0;
}

/* Room for one more name at a load of at most 1/2. */
static regopt_status grow_names(regopt_model *m)
{
    size_t cap = m->cap_names ? 2 * m->cap_names : 16, *tab, i;
    if (2 * (m->n_params + 1) <= m->cap_names)
        return REGOPT_OK;
    tab = ro_calloc(&m->alloc, cap, sizeof *tab);
    if (!tab)
        return ro_fail(m->msg, REGOPT_ERR_NO_MEMORY, "regopt_model_add_param: out of memory");
    for (i = 0; i < m->n_params; i++)
        name_put(tab, cap, m->params, i);
    ro_free(&m->alloc, m->names);
    m->names = tab;
    m->cap_names = cap;
    return REGOPT_OK;
}

/* ---- registered byte ranges: three interval treaps (model.h) ------------ */

/* The priority of node i: a fixed hash of its index (splitmix64), unrelated
 * to the addresses, so no registration order can unbalance the tree. */
static uint32_t span_prio(size_t i)
{
    uint64_t z = (uint64_t)i + 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (uint32_t)(z ^ (z >> 31));
}

static void span_fix(ro_span *s, size_t t)
{
    uintptr_t m = s[t].hi;
    if (s[t].left != RO_SPAN_NIL && s[s[t].left].max_hi > m)
        m = s[s[t].left].max_hi;
    if (s[t].right != RO_SPAN_NIL && s[s[t].right].max_hi > m)
        m = s[s[t].right].max_hi;
    s[t].max_hi = m;
}

/* Insert node n into the subtree t; returns the subtree's new root. The
 * expected depth is O(log n), and so is the recursion. */
static size_t span_insert(ro_span *s, size_t t, size_t n)
{
    size_t c;
    if (t == RO_SPAN_NIL)
        return n;
    if (s[n].lo < s[t].lo) {
        c = span_insert(s, s[t].left, n);
        s[t].left = c;
        if (span_prio(c) > span_prio(t)) { /* rotate right */
            s[t].left = s[c].right;
            s[c].right = t;
            span_fix(s, t);
            t = c;
        }
    } else {
        c = span_insert(s, s[t].right, n);
        s[t].right = c;
        if (span_prio(c) > span_prio(t)) { /* rotate left */
            s[t].right = s[c].left;
            s[c].left = t;
            span_fix(s, t);
            t = c;
        }
    }
    span_fix(s, t);
    return t;
}

/* A node of the subtree t whose range meets [lo, hi), or RO_SPAN_NIL: one
 * descent (if the left subtree reaches past lo but holds no overlap, its
 * range that does starts at or after hi, and so does everything right). */
static size_t span_find(const ro_span *s, size_t t, uintptr_t lo, uintptr_t hi)
{
    while (t != RO_SPAN_NIL) {
        if (s[t].lo < hi && lo < s[t].hi)
            return t;
        if (s[t].left != RO_SPAN_NIL && s[s[t].left].max_hi > lo)
            t = s[t].left;
        else
            t = s[t].right;
    }
    return RO_SPAN_NIL;
}

static void span_add(regopt_model *m, int tree, uintptr_t lo, uintptr_t hi, size_t param)
{
    size_t n = m->n_spans++;
    ro_span *x = &m->spans[n];
    x->lo = lo;
    x->hi = hi;
    x->max_hi = hi;
    x->left = x->right = RO_SPAN_NIL;
    x->param = param;
    m->span_root[tree] = span_insert(m->spans, m->span_root[tree], n);
}

/* Room for two more ranges. */
static regopt_status grow_spans(regopt_model *m)
{
    size_t cap = m->cap_spans ? 2 * m->cap_spans : 16;
    ro_span *p;
    if (m->n_spans + 2 <= m->cap_spans)
        return REGOPT_OK;
    p = ro_calloc(&m->alloc, cap, sizeof *p);
    if (!p)
        return ro_fail(m->msg, REGOPT_ERR_NO_MEMORY, "regopt_model_add_param: out of memory");
    if (m->n_spans)
        memcpy(p, m->spans, m->n_spans * sizeof *p);
    ro_free(&m->alloc, m->spans);
    m->spans = p;
    m->cap_spans = cap;
    return REGOPT_OK;
}

/* Does [lo, hi) meet a range of `tree`? Then fail naming both tensors. */
static regopt_status span_clash(regopt_model *m, const char *name, const char *mine,
                                uintptr_t lo, uintptr_t hi, int tree)
{
    size_t hit = span_find(m->spans, m->span_root[tree], lo, hi);
    const char *theirs = tree == RO_SPANS_GRAD ? "grad" : "data", *why;
    if (hit == RO_SPAN_NIL)
        return REGOPT_OK;
    if (tree == RO_SPANS_GRAD && mine[0] == 'g')
        why = "each trainable tensor needs a gradient buffer of its own";
    else if (tree == RO_SPANS_GRAD || mine[0] == 'g')
        why = "zeroing the gradient would zero the weights";
    else
        why = "register tied weights once";
    return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                   "parameter \"%.64s\": its %s overlaps the %s of parameter \"%.64s\" (%s)",
                   name, mine, theirs, m->params[m->spans[hit].param].name, why);
}

/* The rules (documented at regopt_model_add_param): a gradient shares no
 * byte with any registered buffer, and the data of a trainable tensor none
 * with another trainable tensor's data. A frozen tensor's data may share
 * bytes with other data: the library never writes it during a step. */
static regopt_status check_overlaps(regopt_model *m, const char *name, uintptr_t d,
                                    uintptr_t g, uintptr_t bytes)
{
    regopt_status st = span_clash(m, name, "data", d, d + bytes, RO_SPANS_GRAD);
    if (st != REGOPT_OK || !g)
        return st;
    if (d < g + bytes && g < d + bytes)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter \"%.64s\": data and grad overlap", name);
    st = span_clash(m, name, "data", d, d + bytes, RO_SPANS_DATA);
    if (st == REGOPT_OK)
        st = span_clash(m, name, "grad", g, g + bytes, RO_SPANS_GRAD);
    if (st == REGOPT_OK)
        st = span_clash(m, name, "grad", g, g + bytes, RO_SPANS_DATA);
    if (st == REGOPT_OK)
        st = span_clash(m, name, "grad", g, g + bytes, RO_SPANS_FROZEN);
    return st;
}

/* ---- registration ------------------------------------------------------- */

static regopt_status check_param(regopt_model *m, const char *name, void *data,
                                 void *grad, size_t count, regopt_dtype dtype,
                                 int32_t group)
{
    size_t len;
    uintptr_t bytes;
    if (!name || !data)
        return ro_fail(m->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_model_add_param: %s is NULL", name ? "data" : "name");
    len = strlen(name);
    if (len == 0 || len > REGOPT_MAX_NAME)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter name must have 1..%d bytes, got %zu",
                       REGOPT_MAX_NAME, len);
    if (dtype != REGOPT_DTYPE_FLOAT32 && dtype != REGOPT_DTYPE_FLOAT16 &&
        dtype != REGOPT_DTYPE_BFLOAT16) {
        regopt_status st = dtype == REGOPT_DTYPE_FLOAT64 ? REGOPT_ERR_UNSUPPORTED
                                                         : REGOPT_ERR_INVALID_ARGUMENT;
        return ro_fail(m->msg, st, "parameter \"%.64s\": dtype %d is not supported "
                       "(REGOPT_DTYPE_FLOAT32 = 1, FLOAT16 = 2, BFLOAT16 = 3)", name,
                       (int)dtype);
    }
    if (count == 0 || count > RO_MAX_ELEMENTS)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter \"%.64s\": element count %zu is %s", name, count,
                       count ? "too large (at most SIZE_MAX/16)" : "zero");
    /* n_elements <= RO_MAX_ELEMENTS always, so the sum is never taken
       modulo 2^64 (n_trainable <= n_elements follows) */
    if (count > RO_MAX_ELEMENTS - m->n_elements)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter \"%.64s\": its %zu elements would bring the model past "
                       "SIZE_MAX/16 = %zu elements in all (it holds %zu)", name, count,
                       (size_t)RO_MAX_ELEMENTS, m->n_elements);
    if (group < 0 || group >= REGOPT_MAX_GROUPS)
        return ro_fail(m->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "parameter \"%.64s\": group must be in [0, %d], got %d", name,
                       REGOPT_MAX_GROUPS - 1, (int)group);
    if (m->has_backend && dtype != REGOPT_DTYPE_FLOAT32)
        return ro_fail(m->msg, REGOPT_ERR_UNSUPPORTED, "parameter \"%.64s\": a model with a "
                       "backend takes float32 tensors only (dtype %d)", name, (int)dtype);
    if (name_taken(m, name))
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter name \"%.64s\" is already registered", name);
    if (m->has_backend) /* handles: nothing here reads or compares them */
        return REGOPT_OK;
    /* count <= SIZE_MAX / 16: the product cannot wrap; the range may */
    bytes = (uintptr_t)(count * ro_dtype_size(dtype));
    if ((uintptr_t)data > UINTPTR_MAX - bytes || (grad && (uintptr_t)grad > UINTPTR_MAX - bytes))
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "parameter \"%.64s\": its %s (%zu elements at %p) runs past the end of "
                       "the address space", name,
                       (uintptr_t)data > UINTPTR_MAX - bytes ? "data" : "grad", count,
                       (uintptr_t)data > UINTPTR_MAX - bytes ? data : grad);
    return check_overlaps(m, name, (uintptr_t)data, (uintptr_t)grad, bytes);
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

/* Checks, then every allocation (a failure leaves only spare capacity
 * behind), then the commit, which cannot fail: nothing is registered on
 * failure. */
regopt_status regopt_model_add_param(regopt_model *m, const char *name,
                                     void *data, void *grad, size_t count,
                                     regopt_dtype dtype, int32_t group)
{
    ro_param *p;
    char *copy;
    float *master = NULL, *acc = NULL;
    size_t len, i;
    regopt_status st = check_mutable(m, "regopt_model_add_param");
    if (st == REGOPT_OK)
        st = check_param(m, name, data, grad, count, dtype, group);
    if (st == REGOPT_OK)
        st = grow_params(m);
    if (st == REGOPT_OK)
        st = grow_spans(m);
    if (st == REGOPT_OK)
        st = grow_names(m);
    if (st != REGOPT_OK)
        return st;
    len = strlen(name);
    copy = ro_malloc(&m->alloc, len + 1);
    if (!copy)
        return ro_fail(m->msg, REGOPT_ERR_NO_MEMORY, "regopt_model_add_param: out of memory");
    memcpy(copy, name, len + 1);
    /* half precision: the fp32 master (the host's values widened: exact)
       and, for a trainable tensor, the fp32 accumulator of its gradient */
    if (dtype != REGOPT_DTYPE_FLOAT32 || (grad && m->staged)) {
        master = dtype != REGOPT_DTYPE_FLOAT32 ? ro_malloc(&m->alloc, count * sizeof(float))
                                               : NULL;
        acc = grad ? ro_calloc(&m->alloc, count, sizeof(float)) : NULL;
        if ((dtype != REGOPT_DTYPE_FLOAT32 && !master) || (grad && !acc)) {
            ro_free(&m->alloc, master);
            ro_free(&m->alloc, acc);
            ro_free(&m->alloc, copy);
            return ro_fail(m->msg, REGOPT_ERR_NO_MEMORY, "regopt_model_add_param: out of "
                           "memory for the fp32 master of \"%.64s\" (%zu elements)", name,
                           count);
        }
        if (master)
            ro_half_to_f32(master, data, count, (int)dtype);
    }
    i = m->n_params++;
    p = &m->params[i];
    p->name = copy;
    p->host_data = data;
    p->host_grad = grad;
    p->dtype = (int)dtype;
    p->data = master ? master : data;
    p->grad = acc ? acc : grad;
    p->staged = acc != NULL;
    m->n_half += dtype != REGOPT_DTYPE_FLOAT32;
    p->count = count;
    p->group = group;
    p->offset = m->n_trainable;
    m->n_elements += count;
    if (grad)
        m->n_trainable += count;
    name_put(m->names, m->cap_names, m->params, i);
    if (m->has_backend)
        return REGOPT_OK;
    span_add(m, grad ? RO_SPANS_DATA : RO_SPANS_FROZEN, (uintptr_t)data,
             (uintptr_t)data + count * ro_dtype_size(dtype), i);
    if (grad)
        span_add(m, RO_SPANS_GRAD, (uintptr_t)grad,
                 (uintptr_t)grad + count * ro_dtype_size(dtype), i);
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
    const uint32_t known = REGOPT_CAP_DOUBLED_BATCH | REGOPT_CAP_PASS_WEIGHTS;
    regopt_status st = check_mutable(m, "regopt_model_set_capabilities");
    if (st != REGOPT_OK)
        return st;
    if (caps & ~known)
        return ro_fail(m->msg, REGOPT_ERR_INVALID_ARGUMENT, "unknown capability bits 0x%x",
                       (unsigned)(caps & ~known));
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
