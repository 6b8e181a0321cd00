/* fuzz_model.c — model registration: parameters with fuzzed names, counts,
 * dtypes, groups and (overlapping, frozen) buffers; widths, slots,
 * capabilities, callbacks; an allocator that fails at a fuzzed allocation;
 * then a trainer over whatever was accepted, a step, and the frees in a
 * fuzzed order.
 *
 * Invariants: documented statuses and sane messages; the counts the model
 * reports are what was accepted; every allocation is freed (through the
 * counting allocator, besides LeakSanitizer); a model bound to a trainer
 * refuses to be freed; a failed step moves no weight. */
#include "fuzz.h"

#define ARENA 64 /* floats the parameters live in */
#define MAXP 8

typedef struct counting {
    long allocs, frees, fail_at;
} counting;

static void *count_alloc(size_t n, void *user)
{
    counting *c = user;
    if (++c->allocs == c->fail_at)
        return NULL;
    return malloc(n);
}

static void count_free(void *p, void *user)
{
    if (p)
        ((counting *)user)->frees++;
    free(p);
}

typedef struct host {
    float arena[ARENA], grads[ARENA];
    float *grad[MAXP];
    size_t count[MAXP];
    size_t n, width;
} host;

/* A host that treats every output as the sum of its weights, and gives each
 * trainable element the sum of d(outputs). */
static int forward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i;
    float s = 0.0f;
    for (i = 0; i < ARENA; i++)
        s += h->arena[i] * 1e-3f;
    for (i = 0; i < p->rows * p->output_width; i++)
        p->outputs[i] = s + (float)(i % 3);
    return 0;
}

static int backward(const regopt_pass *p, void *user)
{
    host *h = user;
    size_t i, j;
    float d = 0.0f;
    for (i = 0; i < p->rows * p->output_width; i++)
        d += p->d_outputs[i];
    for (i = 0; i < h->n; i++)
        if (h->grad[i])
            for (j = 0; j < h->count[i]; j++)
                h->grad[i][j] += d * 1e-3f;
    return 0;
}

static void check(regopt_status st, const regopt_model *m, const char *what)
{
    FZ_CHECK(fz_known_status(st), "%s returned %d", what, (int)st);
    FZ_CHECK(fz_sane_message(regopt_model_message(m)), "%s: message", what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    static host h; /* static: ASan then sees arena overruns as global ones */
    counting c = {0, 0, 0};
    regopt_allocator hooks = {sizeof(regopt_allocator), count_alloc, count_free, &c};
    regopt_model *m;
    regopt_optimizer *o = NULL;
    regopt_trainer *t = NULL;
    regopt_status st = REGOPT_OK;
    size_t elements = 0, params = 0, i;
    int ops = 0, use_hooks;

    memset(&h, 0, sizeof h);
    for (i = 0; i < ARENA; i++)
        h.arena[i] = (float)(i % 5) * 0.25f - 0.5f;
    use_hooks = fz_u8(&f) & 1;
    c.fail_at = fz_below(&f, 12); /* 0: never */
    m = regopt_model_create(use_hooks ? &hooks : NULL, &st);
    FZ_CHECK(fz_known_status(st), "create");
    FZ_CHECK((m != NULL) == (st == REGOPT_OK), "create: handle vs status");
    if (!m) {
        FZ_CHECK(c.allocs == c.frees + (c.fail_at ? 1 : 0) || c.allocs == c.frees,
                 "failed create leaked");
        return 0;
    }

    while (f.n && ops++ < 32) {
        uint8_t op = fz_u8(&f);
        if (op < 128) {
            char name[300];
            const char *pname = name;
            size_t off = fz_below(&f, ARENA), count, goff = fz_below(&f, ARENA);
            uint8_t how = fz_u8(&f);
            float *grad;
            int32_t group = (int32_t)fz_below(&f, 70) - 2;
            regopt_dtype dtype = (how & 0x30) ? REGOPT_DTYPE_FLOAT32
                                              : (regopt_dtype)fz_below(&f, 6);
            count = fz_below(&f, ARENA - off + 2); /* 0 and one past the arena: refused? */
            if (off + count > ARENA)
                count = 0;
            grad = (how & 1) ? NULL : h.grads + (goff + count > ARENA ? 0 : goff);
            if (how & 2) /* overlap a weight buffer with its own gradient */
                grad = h.arena + off;
            if (how & 4)
                pname = NULL;
            else if (how & 8)
                snprintf(name, sizeof name, "p%zu", params ? params - 1 : 0); /* a duplicate */
            else
                fz_string(&f, name, sizeof name);
            st = regopt_model_add_param(m, pname, h.arena + off, grad, count, dtype, group);
            check(st, m, "regopt_model_add_param");
            if (st == REGOPT_OK) {
                FZ_CHECK(!t, "a parameter was added while a trainer is bound");
                if (h.n < MAXP) {
                    h.grad[h.n] = grad;
                    h.count[h.n] = count;
                    h.n++;
                }
                params++;
                elements += count;
            }
        } else if (op < 140) {
            size_t w = (size_t)fz_int64(&f);
            st = regopt_model_set_output_width(m, w);
            check(st, m, "regopt_model_set_output_width");
            if (st == REGOPT_OK)
                h.width = w;
        } else if (op < 148) {
            check(regopt_model_set_input_width(m, (size_t)fz_int64(&f)), m,
                  "regopt_model_set_input_width");
        } else if (op < 156) {
            check(regopt_model_set_slots(m, (int32_t)fz_int64(&f)), m, "regopt_model_set_slots");
        } else if (op < 164) {
            check(regopt_model_set_capabilities(m, fz_u32(&f)), m,
                  "regopt_model_set_capabilities");
        } else if (op < 180) {
            uint8_t which = fz_u8(&f);
            check(regopt_model_set_callbacks(m, which & 1 ? forward : NULL,
                                             which & 2 ? backward : NULL, &h, NULL),
                  m, "regopt_model_set_callbacks");
        } else if (op < 196 && !t) {
            o = regopt_optimizer_create(REGOPT_SGD, NULL, NULL);
            FZ_CHECK(o, "optimizer");
            t = regopt_trainer_create(m, o, &st);
            FZ_CHECK(fz_known_status(st), "trainer create");
            FZ_CHECK(fz_sane_message(regopt_last_error_message()), "last error");
            if (!t) {
                regopt_optimizer_free(o);
                o = NULL;
            }
        } else if (op < 216 && t) {
            static const float x[4] = {0};
            static const int32_t y[4] = {0, 0, 0, 0};
            float saved[ARENA];
            regopt_batch b;
            regopt_batch_init(&b);
            b.data = x;
            b.rows = 1 + fz_below(&f, 4);
            b.labels = y;
            memcpy(saved, h.arena, sizeof saved);
            st = regopt_trainer_step(t, &b, 1);
            FZ_CHECK(fz_known_status(st), "step");
            FZ_CHECK(fz_sane_message(regopt_trainer_message(t)), "message");
            if (st != REGOPT_OK)
                FZ_CHECK(memcmp(saved, h.arena, sizeof saved) == 0, "failed step moved weights");
        } else if (t) {
            /* a bound model is not freed: it says so and stays usable */
            regopt_model_free(m);
            FZ_CHECK(regopt_model_param_count(m) == params, "model freed under its trainer");
        }
        FZ_CHECK(regopt_model_param_count(m) == params, "param count %zu, accepted %zu",
                 regopt_model_param_count(m), params);
        FZ_CHECK(regopt_model_element_count(m) == elements, "element count %zu, accepted %zu",
                 regopt_model_element_count(m), elements);
    }
    regopt_trainer_free(t);
    regopt_optimizer_free(o);
    regopt_model_free(m);
    FZ_CHECK(c.allocs - (c.fail_at && c.allocs >= c.fail_at ? 1 : 0) == c.frees,
             "%ld allocations (one failed: %d), %ld frees", c.allocs,
             c.fail_at && c.allocs >= c.fail_at, c.frees);
    return 0;
}
