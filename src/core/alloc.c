/* alloc.c — the allocator hooks every handle carries. */
#include "core/core.h"

#include <stdlib.h>
#include <string.h>

static void *libc_alloc(size_t size, void *user)
{
    (void)user;
    return malloc(size);
}

static void libc_free(void *ptr, void *user)
{
    (void)user;
    free(ptr);
}

regopt_status ro_alloc_init(ro_alloc *a, const regopt_allocator *hooks)
{
    if (hooks && hooks->size < sizeof(regopt_allocator))
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "allocator size is %zu, expected %zu (set size = "
                           "sizeof(regopt_allocator))", hooks->size, sizeof(regopt_allocator));
    if (hooks && (!hooks->alloc || !hooks->free))
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "allocator must set both alloc and free");
    if (hooks) {
        a->alloc = hooks->alloc;
        a->free = hooks->free;
        a->user = hooks->user;
    } else {
        a->alloc = libc_alloc;
        a->free = libc_free;
        a->user = NULL;
    }
    return REGOPT_OK;
}

void *ro_malloc(const ro_alloc *a, size_t size)
{
    return a->alloc(size ? size : 1, a->user);
}

void *ro_calloc(const ro_alloc *a, size_t count, size_t size)
{
    void *p;
    size_t bytes;
    if (size && count > SIZE_MAX / size)
        return NULL;
    bytes = count * size;
    p = ro_malloc(a, bytes);
    if (p && bytes)
        memset(p, 0, bytes);
    return p;
}

void ro_free(const ro_alloc *a, void *ptr)
{
    if (ptr)
        a->free(ptr, a->user);
}
