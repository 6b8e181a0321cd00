/* regularizer.c — the public regularizer handle: creation by kind, its
 * keys (options, per-group options, statistics), its message. Attaching is
 * the trainer's (trainer.c). */
#include "reg/reg.h"

#include <string.h>

regopt_status ro_reg_check(const regopt_regularizer *r, const char *func)
{
    if (!r)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "%s: regularizer is NULL", func);
    if (r->magic != RO_MAGIC_REG)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "%s: not a live regopt_regularizer handle", func);
    return REGOPT_OK;
}

/* A change: refused while its trainer runs host callbacks (a callback must
 * not change a method in the middle of its step); clears the message. */
static regopt_status reg_enter(regopt_regularizer *r, const char *func)
{
    regopt_status st = ro_reg_check(r, func);
    if (st != REGOPT_OK)
        return st;
    if (r->env && r->env->in_host)
        return ro_fail(r->msg, REGOPT_ERR_STATE, "%s: refused while a callback of %s of the "
                       "%s regularizer's trainer has not returned (called from inside it, or "
                       "it threw: call regopt_trainer_recover)", func,
                       r->env->busy ? r->env->busy : "a call", r->ops->title);
    r->msg[0] = '\0';
    return REGOPT_OK;
}

/* A handle of the kind `ops` with its defaults, or NULL (message set). */
regopt_regularizer *ro_reg_new(const ro_reg_ops *ops, const regopt_allocator *allocator,
                               regopt_status *status)
{
    ro_alloc a;
    regopt_regularizer *r = NULL;
    regopt_status st = ro_alloc_init(&a, allocator);
    if (st == REGOPT_OK) {
        r = ro_calloc(&a, 1, sizeof *r);
        if (r) {
            r->self = ro_calloc(&a, 1, ops->size);
            if (!r->self) {
                ro_free(&a, r);
                r = NULL;
            }
        }
        if (!r)
            st = ro_fail_tls(REGOPT_ERR_NO_MEMORY, "regopt_regularizer_create: out of memory");
    }
    if (status)
        *status = st;
    if (!r)
        return NULL;
    r->magic = RO_MAGIC_REG;
    r->alloc = a;
    r->ops = ops;
    ops->init(r);
    return r;
}

regopt_regularizer *regopt_regularizer_create(regopt_regularizer_kind kind,
                                              const regopt_allocator *allocator,
                                              regopt_status *status)
{
    const ro_reg_ops *ops = ro_reg_ops_of(kind);
    if (!ops || kind == REGOPT_REG_TERM) {
        regopt_status st = ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                                       kind == REGOPT_REG_TERM
                                           ? "regopt_regularizer_create: a user-defined term "
                                             "is made with regopt_regularizer_create_term"
                                           : "regopt_regularizer_create: unknown regularizer "
                                             "kind %d", (int)kind);
        if (status)
            *status = st;
        return NULL;
    }
    return ro_reg_new(ops, allocator, status);
}

regopt_status regopt_regularizer_free(regopt_regularizer *r)
{
    ro_alloc a;
    if (!r)
        return REGOPT_OK;
    if (r->magic != RO_MAGIC_REG)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "regopt_regularizer_free: not a live regopt_regularizer handle");
    if (r->trainer)
        return ro_fail_tls(REGOPT_ERR_STATE, "regopt_regularizer_free: the %s regularizer is "
                           "attached to a trainer: detach it or free the trainer first (nothing "
                           "was freed)", r->ops->title);
    if (r->ops->destroy)
        r->ops->destroy(r);
    a = r->alloc;
    r->magic = RO_MAGIC_DEAD;
    ro_free(&a, r->self);
    ro_free(&a, r);
    return REGOPT_OK;
}

regopt_regularizer_kind regopt_regularizer_get_kind(const regopt_regularizer *r)
{
    return r && r->magic == RO_MAGIC_REG ? r->ops->kind : (regopt_regularizer_kind)0;
}

regopt_trainer *regopt_regularizer_get_trainer(const regopt_regularizer *r)
{
    return r && r->magic == RO_MAGIC_REG ? r->trainer : NULL;
}

const char *regopt_regularizer_message(const regopt_regularizer *r)
{
    if (!r || r->magic != RO_MAGIC_REG)
        return "invalid regopt_regularizer handle";
    return r->msg;
}

/* The descriptor of one of r's keys, or a message naming what it is. */
static regopt_status reg_key(const regopt_regularizer *r, regopt_key key, int group_key,
                             const ro_key_desc **out)
{
    const ro_reg_ops *owner = NULL;
    const ro_key_desc *d = ro_any_key(key, &owner);
    char *msg = (char *)r->msg;
    if (!d || owner != r->ops)
        return ro_fail(msg, REGOPT_ERR_UNKNOWN_KEY, "key %d (%s) is not a key of the %s "
                       "regularizer", (int)key, d ? d->name : "unknown", r->ops->title);
    if (group_key != !!(d->flags & REGOPT_KEY_GROUP))
        return ro_fail(msg, REGOPT_ERR_UNKNOWN_KEY, group_key
                       ? "%s is not a group key: use regopt_regularizer_set_double/_get_double"
                       : "%s is a group key: use regopt_regularizer_set_group/_get_group",
                       d->name);
    *out = d;
    return REGOPT_OK;
}

static regopt_status regularizer_set_value(regopt_regularizer *r, regopt_key key, double v, int32_t group,
                               int group_key, const char *func)
{
    const ro_key_desc *d = NULL;
    regopt_status st = reg_enter(r, func);
    if (st == REGOPT_OK)
        st = reg_key(r, key, group_key, &d);
    if (st == REGOPT_OK && group_key && (group < 0 || group >= REGOPT_MAX_GROUPS))
        st = ro_fail(r->msg, REGOPT_ERR_OUT_OF_RANGE, "group must be in [0, %d], got %d",
                     REGOPT_MAX_GROUPS - 1, (int)group);
    if (st == REGOPT_OK)
        st = ro_key_check(d, v, r->msg);
    return st == REGOPT_OK ? r->ops->set(r, d, group, v) : st;
}

regopt_status regopt_regularizer_set_double(regopt_regularizer *r, regopt_key key, double v)
{
    return regularizer_set_value(r, key, v, 0, 0, "regopt_regularizer_set_double");
}

regopt_status regopt_regularizer_set_int(regopt_regularizer *r, regopt_key key, int64_t v)
{
    return regularizer_set_value(r, key, (double)v, 0, 0, "regopt_regularizer_set_int");
}

regopt_status regopt_regularizer_set_group(regopt_regularizer *r, int32_t group, regopt_key key,
                                           double v)
{
    return regularizer_set_value(r, key, v, group, 1, "regopt_regularizer_set_group");
}

static regopt_status regularizer_get_value(const regopt_regularizer *r, regopt_key key, int32_t group,
                               int group_key, double *v, const char *func)
{
    const ro_key_desc *d = NULL;
    regopt_status st = ro_reg_check(r, func);
    if (st == REGOPT_OK && !v)
        st = ro_fail((char *)r->msg, REGOPT_ERR_NULL_POINTER, "%s: value is NULL", func);
    if (st == REGOPT_OK)
        st = reg_key(r, key, group_key, &d);
    if (st == REGOPT_OK && group_key && (group < 0 || group >= REGOPT_MAX_GROUPS))
        st = ro_fail((char *)r->msg, REGOPT_ERR_OUT_OF_RANGE, "group must be in [0, %d], got %d",
                     REGOPT_MAX_GROUPS - 1, (int)group);
    if (st != REGOPT_OK)
        return st;
    if (d->flags & REGOPT_KEY_READ_ONLY)
        *v = r->stats[key - r->ops->stat0];
    else
        *v = r->ops->get(r, d, group);
    return REGOPT_OK;
}

regopt_status regopt_regularizer_get_double(const regopt_regularizer *r, regopt_key key,
                                            double *v)
{
    return regularizer_get_value(r, key, 0, 0, v, "regopt_regularizer_get_double");
}

regopt_status regopt_regularizer_get_int(const regopt_regularizer *r, regopt_key key,
                                         int64_t *v)
{
    double d = 0.0;
    regopt_status st = ro_reg_check(r, "regopt_regularizer_get_int");
    if (st == REGOPT_OK && !v)
        st = ro_fail((char *)r->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_regularizer_get_int: value is NULL");
    if (st == REGOPT_OK)
        st = regularizer_get_value(r, key, 0, 0, &d, "regopt_regularizer_get_int");
    if (st == REGOPT_OK) {
        const ro_key_desc *k = ro_any_key(key, NULL);
        st = ro_to_int64(d, k->name, v, (char *)r->msg);
    }
    return st;
}

regopt_status regopt_regularizer_get_group(const regopt_regularizer *r, int32_t group,
                                           regopt_key key, double *v)
{
    return regularizer_get_value(r, key, group, 1, v, "regopt_regularizer_get_group");
}
