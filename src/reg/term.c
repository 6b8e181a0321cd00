/* term.c — user-defined loss-side terms (REGOPT_REG_TERM): the host
 * declares extra passes and computes its term's value and gradient with
 * respect to each pass's outputs; the library runs the passes, scales by
 * term.weight and composes the term with everything else (header: "User-
 * defined loss-side terms"). */
#include "reg/reg.h"

#include <math.h>
#include <string.h>

#define MAX_PASSES REGOPT_TERM_MAX_PASSES
#define KNOWN_FLAGS (REGOPT_TERM_PASS_FRESH_SEED | REGOPT_TERM_PASS_EVAL | \
                     REGOPT_TERM_PASS_NO_GRAD | REGOPT_TERM_PASS_TEACHER)
#define TEACHER REGOPT_TERM_PASS_TEACHER
#define MAX_FRESH 32u /* fresh dropout copies of a step: counter bits 2-6 */

typedef struct term {
    regopt_term_ops ops;
    char name[24];
    void *user;
    regopt_free_fn free_user;
    double weight;
    regopt_pass pass[MAX_PASSES];
} term;

static const ro_key_desc term_keys[] = {
    {REGOPT_TERM_WEIGHT, "term.weight", REGOPT_TYPE_DOUBLE, RO_OWNER_REG, 0, 1e4, 1, 0},
    {REGOPT_STAT_TERM_VALUE, "term.value", REGOPT_TYPE_DOUBLE, RO_OWNER_REG, -HUGE_VAL,
     HUGE_VAL, 0, REGOPT_KEY_READ_ONLY},
};

static void term_init(ro_reg *r) { ((term *)r->self)->weight = 1.0; }

static void term_destroy(ro_reg *r)
{
    term *u = r->self;
    if (u->free_user)
        u->free_user(u->user);
}

static regopt_status term_set(ro_reg *r, const ro_key_desc *k, int32_t group, double v)
{
    (void)k;
    (void)group;
    ((term *)r->self)->weight = v;
    return REGOPT_OK;
}

static double term_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    (void)k;
    (void)group;
    return ((const term *)r->self)->weight;
}

/* Slots (teacher passes run no forward: none), output blocks and fresh
 * dropout copies for the declared passes, and one more block whose
 * gradient half takes d value / d outputs[0]. */
static void term_plan(ro_reg *r, ro_plan *p, int now)
{
    const term *u = r->self;
    uint32_t j;
    (void)now;
    r->slot = p->slots;
    for (j = 0; j < u->ops.passes; j++)
        p->slots += (u->ops.pass_flags[j] & TEACHER) == 0;
    r->block = p->blocks;
    p->blocks += u->ops.passes + 1;
    r->fresh = p->fresh;
    for (j = 0; j < u->ops.passes; j++)
        p->fresh += (u->ops.pass_flags[j] & REGOPT_TERM_PASS_FRESH_SEED) != 0;
}

static regopt_status term_attach(ro_reg *r)
{
    ro_plan p;
    memset(&p, 0, sizeof p);
    term_plan(r, &p, 1);
    if (p.fresh > MAX_FRESH)
        return ro_fail(r->env->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "term \"%s\": more than %u passes with fresh seeds", ((term *)r->self)->name,
                       MAX_FRESH);
    return REGOPT_OK;
}

/* A teacher pass reads the outputs a teacher-keeping regularizer (Bregman)
 * computes in its prepare hook: one must be attached. */
static regopt_status term_check(ro_reg *r, const ro_step *s)
{
    const term *u = r->self;
    uint32_t j;
    size_t i;
    for (j = 0; j < u->ops.passes; j++)
        if (u->ops.pass_flags[j] & TEACHER) {
            for (i = 0; i < s->n_regs; i++)
                if (s->regs[i]->ops->flags & RO_REG_KEEPS_TEACHER)
                    return REGOPT_OK;
            return ro_fail(r->env->msg, REGOPT_ERR_STATE, "term \"%s\" declares a teacher "
                           "pass (pass %u): attach a Bregman regularizer, whose EMA teacher it "
                           "reads (bregman.mu may be 0)", u->name, j);
        }
    return REGOPT_OK;
}

static regopt_status forward(ro_reg *r, ro_view *v)
{
    term *u = r->self;
    uint32_t j, fresh = r->fresh;
    int32_t slot = r->slot;
    regopt_status st = REGOPT_OK;
    for (j = 0; j < u->ops.passes && st == REGOPT_OK; j++) {
        uint32_t f = u->ops.pass_flags[j];
        uint64_t seed = v->seed;
        regopt_pass *p = &u->pass[j];
        if (f & TEACHER) /* no forward: the teacher's outputs are the step's */
            continue;
        if (f & REGOPT_TERM_PASS_FRESH_SEED) /* fresh copy c: stream role | 0x80 | c << 2 */
            seed = ro_step_seed(v->s, v->bi,
                                v->role | RO_SEED_SECOND | (fresh++ << 2) | (v->chunk << 8));
        ro_view_pass(v, p, slot++, r->block + j, seed);
        if (f & REGOPT_TERM_PASS_EVAL)
            p->flags &= ~REGOPT_PASS_TRAIN;
        if (f & REGOPT_TERM_PASS_NO_GRAD)
            p->flags |= REGOPT_PASS_NO_GRAD;
        st = ro_call_forward(r->env, p);
    }
    return st;
}

static regopt_status term_value(ro_reg *r, ro_view *v, double *weighted)
{
    term *u = r->self;
    ro_step *s = v->s;
    size_t nk = v->n * v->k, i;
    const float *outs[MAX_PASSES + 1];
    float *douts[MAX_PASSES + 1], *g0 = s->d_outputs + (r->block + u->ops.passes) * nk;
    float w = (float)u->weight;
    regopt_term_view tv;
    double value = 0.0;
    uint32_t j;
    int rc;
    outs[0] = v->z;
    douts[0] = g0;
    ro_zero(g0, nk);
    for (j = 0; j < u->ops.passes; j++) {
        int teacher = (u->ops.pass_flags[j] & TEACHER) != 0;
        outs[j + 1] = teacher ? s->teacher + v->step_row * v->k : u->pass[j].outputs;
        douts[j + 1] = (u->ops.pass_flags[j] & (REGOPT_TERM_PASS_NO_GRAD | TEACHER))
                           ? NULL : s->d_outputs + (r->block + j) * nk;
        if (douts[j + 1])
            ro_zero(douts[j + 1], nk);
    }
    memset(&tv, 0, sizeof tv);
    tv.size = sizeof tv;
    tv.batch = &v->rows;
    tv.micro_batch = v->bi;
    tv.row_offset = v->r0;
    tv.rows = v->n;
    tv.output_width = v->k;
    tv.flags = v->flags;
    tv.n_outputs = u->ops.passes + 1;
    tv.step = s->step;
    tv.inv_weight = s->inv_weight;
    tv.outputs = outs;
    tv.d_outputs = douts;
    ro_host_enter(r->env);
    rc = u->ops.value(&tv, &value, u->user);
    ro_host_leave(r->env);
    if (rc != 0)
        return ro_fail(r->env->msg, REGOPT_ERR_LOSS_CALLBACK,
                       "the value callback of term \"%s\" returned %d (micro-batch %zu)", u->name,
                       rc, v->bi);
    if (!isfinite(value))
        return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_LOSS,
                       "term \"%s\" of micro-batch %zu is %g", u->name, v->bi, value);
    for (i = 0; i < nk; i++)
        v->dz[i] += w * g0[i];
    for (j = 1; j <= u->ops.passes && w != 1.0f; j++)
        for (i = 0; douts[j] && i < nk; i++)
            douts[j][i] *= w;
    *weighted = u->weight * value;
    if (!(v->flags & REGOPT_PASS_PERTURBED_WEIGHTS))
        s->acc[r->acc0] += value;
    return REGOPT_OK;
}

static regopt_status backward(ro_reg *r, ro_view *v)
{
    term *u = r->self;
    size_t nk = v->n * v->k;
    uint32_t j;
    regopt_status st = REGOPT_OK;
    for (j = 0; j < u->ops.passes && st == REGOPT_OK; j++) {
        if (u->ops.pass_flags[j] & (REGOPT_TERM_PASS_NO_GRAD | TEACHER))
            continue;
        u->pass[j].d_outputs = v->s->d_outputs + (r->block + j) * nk;
        st = ro_call_backward(r->env, &u->pass[j]);
    }
    return st;
}

static void term_made(ro_reg *r, uint64_t step)
{
    term *u = r->self;
    if (u->ops.committed) {
        ro_host_enter(r->env);
        u->ops.committed(step, u->user);
        ro_host_leave(r->env);
    }
}

static void term_commit(ro_reg *r, const ro_step *s) { r->stats[0] = s->acc[r->acc0]; }

static uint64_t term_state_size(const ro_reg *r)
{
    const term *u = r->self;
    size_t n = 0;
    if (u->ops.state_size) {
        ro_host_enter(r->env);
        n = u->ops.state_size(u->user);
        ro_host_leave(r->env);
    }
    return n;
}

/* The term's bytes through its save_state; a failure marks the sink (lost:
 * the save fails with this message, in the measuring pass too). */
static void term_save(const ro_reg *r, ro_ck_sink *out)
{
    const term *u = r->self;
    size_t n = (size_t)term_state_size(r);
    unsigned char *buf;
    int rc = 1;
    if (!n)
        return;
    if (ro_ck_measuring(out)) { /* a size query: state_size says it all */
        ro_ck_skip(out, n);
        return;
    }
    buf = ro_malloc(r->env->alloc, n);
    if (buf) {
        ro_host_enter(r->env); /* if it throws, buf is lost: documented */
        rc = u->ops.save_state(buf, n, u->user);
        ro_host_leave(r->env);
    }
    if (rc == 0) {
        ro_ck_put(out, buf, n);
    } else {
        out->failed = out->lost = 1;
        if (buf)
            (void)ro_fail(r->env->msg, REGOPT_ERR_IO,
                          "the save_state callback of term \"%s\" returned %d", u->name, rc);
        else
            (void)ro_fail(r->env->msg, REGOPT_ERR_IO,
                          "out of memory for the %zu-byte state of term \"%s\"", n, u->name);
    }
    ro_free(r->env->alloc, buf);
}

static regopt_status term_check_state(ro_reg *r, const unsigned char *p, uint64_t size)
{
    const term *u = r->self;
    (void)p;
    if (size && !u->ops.load_state)
        return ro_fail(r->env->msg, REGOPT_ERR_MISMATCH,
                       "the checkpoint holds state for term \"%s\", which has no load_state",
                       u->name);
    return REGOPT_OK;
}

static regopt_status term_load(ro_reg *r, const unsigned char *p, uint64_t size)
{
    const term *u = r->self;
    int rc;
    if (!u->ops.load_state)
        return REGOPT_OK;
    ro_host_enter(r->env);
    rc = u->ops.load_state(p, (size_t)size, u->user);
    ro_host_leave(r->env);
    if (rc != 0)
        return ro_fail(r->env->msg, REGOPT_ERR_CORRUPT,
                       "the load_state callback of term \"%s\" returned %d", u->name, rc);
    return REGOPT_OK;
}

const ro_reg_ops ro_term_ops = {
    .name = "term",
    .title = "user term",
    .kind = REGOPT_REG_TERM,
    .flags = RO_REG_LOAD_MAY_FAIL | RO_REG_BACKEND,
    .order = 40,
    .size = sizeof(term),
    .keys = term_keys,
    .n_keys = sizeof term_keys / sizeof term_keys[0],
    .stat0 = REGOPT_STAT_TERM_VALUE,
    .n_stats = 1,
    .n_acc = 1,
    .init = term_init,
    .destroy = term_destroy,
    .attach = term_attach,
    .set = term_set,
    .get = term_get,
    .plan = term_plan,
    .check = term_check,
    .forward = forward,
    .term = term_value,
    .backward = backward,
    .made = term_made,
    .commit = term_commit,
    .state_size = term_state_size,
    .save = term_save,
    .check_state = term_check_state,
    .load = term_load,
};

/* ---- creation ------------------------------------------------------------ */

static regopt_status ops_check(const regopt_term_ops *o)
{
    size_t len, i;
    uint32_t j;
    if (!o)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_regularizer_create_term: ops is NULL");
    if (o->size < offsetof(regopt_term_ops, state_size))
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: "
                           "ops->size %zu is too small", o->size);
    if (!o->name || (len = strlen(o->name)) == 0 || len > 23)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: the "
                           "name must have 1 to 23 bytes");
    for (i = 0; i < len; i++) {
        char c = o->name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: "
                               "the name may hold only [A-Za-z0-9_.-]");
    }
    if (!o->value)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "regopt_regularizer_create_term: term "
                           "\"%s\" has no value callback", o->name);
    if (o->passes > MAX_PASSES)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: term "
                           "\"%s\" declares %u passes (at most %d)", o->name, o->passes,
                           MAX_PASSES);
    for (j = 0; j < o->passes; j++) {
        if (o->pass_flags[j] & ~KNOWN_FLAGS)
            return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: "
                               "pass %u of term \"%s\" has unknown flags 0x%x", j, o->name,
                               o->pass_flags[j] & ~KNOWN_FLAGS);
        if ((o->pass_flags[j] & TEACHER) && o->pass_flags[j] != TEACHER)
            return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: "
                               "pass %u of term \"%s\" is a teacher pass: it takes no other "
                               "flag (no forward runs for it)", j, o->name);
    }
    return REGOPT_OK;
}

regopt_regularizer *regopt_regularizer_create_term(const regopt_term_ops *ops, void *user,
                                                   regopt_free_fn free_user,
                                                   const regopt_allocator *allocator,
                                                   regopt_status *status)
{
    regopt_status st = ops_check(ops);
    regopt_regularizer *r = NULL;
    term *u;
    regopt_term_ops copy;
    if (st == REGOPT_OK) {
        memset(&copy, 0, sizeof copy);
        memcpy(&copy, ops, ops->size < sizeof copy ? ops->size : sizeof copy);
        copy.size = sizeof copy;
        if ((copy.state_size != NULL) != (copy.save_state != NULL) ||
            (copy.save_state != NULL) != (copy.load_state != NULL))
            st = ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT, "regopt_regularizer_create_term: "
                             "term \"%s\": term_state_size, save_state and load_state go together",
                             ops->name);
    }
    if (st == REGOPT_OK)
        r = ro_reg_new(&ro_term_ops, allocator, &st);
    if (status)
        *status = st;
    if (!r)
        return NULL;
    u = r->self;
    u->ops = copy;
    memcpy(u->name, ops->name, strlen(ops->name) + 1);
    u->ops.name = u->name;
    u->user = user;
    u->free_user = free_user;
    return r;
}

size_t regopt_sizeof_term_ops(void) { return sizeof(regopt_term_ops); }
size_t regopt_sizeof_term_view(void) { return sizeof(regopt_term_view); }

/* The user term's name (checkpoints match it). */
const char *ro_term_name(const regopt_regularizer *r)
{
    return r->ops == &ro_term_ops ? ((const term *)r->self)->name : r->ops->name;
}
