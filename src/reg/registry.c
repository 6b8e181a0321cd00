/* registry.c — the list of built-in regularizer kinds (the only file that
 * names every method, like zstd's table of block compressors) and the key
 * lookups over the core table and every method's own keys. */
#include "reg/reg.h"

#include <string.h>

static const ro_reg_ops *const registry[] = {
    &ro_sam_ops, &ro_rdrop_ops, &ro_smart_ops, &ro_bregman_ops, &ro_term_ops, &ro_average_ops,
    &ro_adv_ops,
};

#define N_KINDS (sizeof registry / sizeof registry[0])

const ro_reg_ops *ro_reg_ops_at(size_t i) { return i < N_KINDS ? registry[i] : NULL; }

const ro_reg_ops *ro_reg_ops_of(regopt_regularizer_kind kind)
{
    size_t i;
    for (i = 0; i < N_KINDS; i++)
        if (registry[i]->kind == kind)
            return registry[i];
    return NULL;
}

const ro_key_desc *ro_any_key(regopt_key key, const ro_reg_ops **owner)
{
    const ro_key_desc *d = ro_key_find(key);
    size_t i, j;
    if (owner)
        *owner = NULL;
    if (d)
        return d;
    for (i = 0; i < N_KINDS; i++)
        for (j = 0; j < registry[i]->n_keys; j++)
            if (registry[i]->keys[j].key == key) {
                if (owner)
                    *owner = registry[i];
                return &registry[i]->keys[j];
            }
    return NULL;
}

/* The index-th key of the core table, then of every method in registry
 * order. */
static const ro_key_desc *key_at(size_t index)
{
    const ro_key_desc *d = ro_key_at(index);
    size_t i, n = 0;
    while (ro_key_at(n))
        n++;
    if (d)
        return d;
    index -= n;
    for (i = 0; i < N_KINDS; i++) {
        if (index < registry[i]->n_keys)
            return &registry[i]->keys[index];
        index -= registry[i]->n_keys;
    }
    return NULL;
}

regopt_status regopt_key_at(size_t index, regopt_key *key)
{
    const ro_key_desc *d = key_at(index);
    if (!key)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_key_at: key is NULL");
    if (!d)
        return ro_fail_tls(REGOPT_ERR_OUT_OF_RANGE, "regopt_key_at: index %zu is past the last "
                           "key", index);
    *key = d->key;
    return REGOPT_OK;
}

regopt_status regopt_key_info(regopt_key key, const char **name, int *type, double *min,
                              double *max, double *default_value, uint32_t *flags)
{
    const ro_key_desc *d = ro_any_key(key, NULL);
    if (!d)
        return ro_fail_tls(REGOPT_ERR_UNKNOWN_KEY, "unknown key %d", (int)key);
    if (name)
        *name = d->name;
    if (type)
        *type = d->type;
    if (min)
        *min = d->min;
    if (max)
        *max = d->max;
    if (default_value)
        *default_value = d->def;
    if (flags)
        *flags = d->flags;
    return REGOPT_OK;
}

regopt_status regopt_key_from_name(const char *name, regopt_key *key)
{
    const ro_key_desc *d;
    size_t i;
    if (!name || !key)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_key_from_name: %s is NULL",
                           name ? "key" : "name");
    for (i = 0; (d = key_at(i)) != NULL; i++)
        if (strcmp(d->name, name) == 0) {
            *key = d->key;
            return REGOPT_OK;
        }
    return ro_fail_tls(REGOPT_ERR_UNKNOWN_KEY, "unknown key name \"%.64s\"", name);
}

regopt_status regopt_regularizer_kind_info(size_t index, regopt_regularizer_kind *kind,
                                           const char **name, uint32_t *flags)
{
    const ro_reg_ops *o = ro_reg_ops_at(index);
    if (!o)
        return ro_fail_tls(REGOPT_ERR_OUT_OF_RANGE, "regopt_regularizer_kind_info: index %zu "
                           "is past the last kind", index);
    if (kind)
        *kind = o->kind;
    if (name)
        *name = o->name;
    if (flags)
        *flags = o->flags & (REGOPT_REG_WEIGHT_SIDE | REGOPT_REG_SINGLE);
    return REGOPT_OK;
}
