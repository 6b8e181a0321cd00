/* trainer.c — binds a model and an optimizer, owns the training state and
 * runs steps. A step is a transaction: it validates everything, runs the
 * passes (which only touch gradient buffers and scratch memory), checks
 * that loss and gradient are finite, and only then commits the update.
 * Nothing that can fail happens after the first parameter is written, so a
 * failed step leaves parameters and optimizer state exactly as they were. */
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

regopt_status ro_trainer_check(const regopt_trainer *t, const char *func)
{
    if (!t)
        return ro_fail_tls(REGOPT_ERR_NULL_POINTER, "%s: trainer is NULL", func);
    if (t->magic != RO_MAGIC_TRAINER)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "%s: not a live regopt_trainer handle", func);
    return REGOPT_OK;
}

/* ---- creation ---------------------------------------------------------- */

static regopt_status model_ready(const regopt_model *m)
{
    if (!m->forward || !m->backward)
        return ro_fail_tls(REGOPT_ERR_STATE,
                           "regopt_trainer_create: the model has no callbacks");
    if (m->output_width == 0)
        return ro_fail_tls(REGOPT_ERR_STATE,
                           "regopt_trainer_create: the model's output width is not set");
    if (m->n_trainable == 0)
        return ro_fail_tls(REGOPT_ERR_STATE,
                           "regopt_trainer_create: the model has no parameter with a gradient");
    return REGOPT_OK;
}

regopt_trainer *regopt_trainer_create(regopt_model *m, regopt_optimizer *o,
                                      regopt_status *status)
{
    regopt_trainer *t = NULL;
    regopt_status st = ro_model_check(m, "regopt_trainer_create");
    if (st == REGOPT_OK)
        st = ro_optimizer_check(o, "regopt_trainer_create");
    if (st == REGOPT_OK)
        st = model_ready(m);
    if (st == REGOPT_OK) {
        t = ro_calloc(&m->alloc, 1, sizeof *t);
        if (t) {
            t->alloc = m->alloc;
            t->per_element = ro_optimizer_state_per_element(o);
            if ((o->kind == REGOPT_ADAM || o->kind == REGOPT_ADAMW) && !o->amsgrad)
                t->per_element = 2; /* no AMSGrad maximum unless asked at creation */
            t->model = m;
            t->state_vec[0] = t->state_vec[1] = t->state_vec[2] = REGOPT_VEC_NONE;
            /* a backend's moments are its own buffers (ro_backend_trainer_init) */
            if (!m->has_backend)
                t->state = ro_calloc(&t->alloc, m->n_trainable, t->per_element * sizeof(float));
            if ((!t->state && !m->has_backend) ||
                ro_parallel_init(&t->par, &t->alloc, m) != REGOPT_OK) {
                ro_free(&t->alloc, t->state);
                ro_free(&t->alloc, t);
                t = NULL;
            }
        }
        if (!t)
            st = ro_fail_tls(REGOPT_ERR_NO_MEMORY, "regopt_trainer_create: out of memory "
                             "for %zu optimizer state elements", m->n_trainable);
    }
    if (status)
        *status = st;
    if (!t)
        return NULL;
    t->magic = RO_MAGIC_TRAINER;
    t->model = m;
    t->opt = o;
    t->env.alloc = &t->alloc;
    t->env.model = m;
    t->env.par = &t->par;
    t->env.msg = t->msg;
    t->env.loss_kind = REGOPT_LOSS_SOFTMAX_CE;
    t->env.opt_in_host = &o->busy;
    ro_scaler_init(t);
    st = m->has_backend ? ro_backend_trainer_init(t, t->msg) : REGOPT_OK;
    if (st == REGOPT_OK && ro_scaler_prepare(t) != REGOPT_OK) /* fp16 with float32 beside */
        st = REGOPT_ERR_NO_MEMORY;
    if (st != REGOPT_OK) {
        ro_backend_trainer_release(t);
        st = ro_fail_tls(st, "regopt_trainer_create: %s", t->msg);
        if (status)
            *status = st;
        ro_parallel_release(&t->par);
        ro_free(&t->alloc, t->state);
        t->magic = RO_MAGIC_DEAD;
        ro_free(&t->alloc, t);
        return NULL;
    }
    m->bound++;
    o->bound++;
    return t;
}

static void free_scratch(regopt_trainer *t)
{
    ro_free(&t->alloc, t->outputs);
    ro_free(&t->alloc, t->d_outputs);
    ro_free(&t->alloc, t->row_loss);
    ro_free(&t->alloc, t->env.d_scaled);
    t->env.d_scaled = NULL;
    t->env.d_cap = 0;
    t->outputs = t->d_outputs = t->row_loss = NULL;
    t->env.row_loss = t->env.d_scratch = NULL;
    t->cap_rows = 0;
}

regopt_status regopt_trainer_free(regopt_trainer *t)
{
    ro_alloc a;
    if (!t)
        return REGOPT_OK;
    if (t->magic != RO_MAGIC_TRAINER)
        return ro_fail_tls(REGOPT_ERR_INVALID_ARGUMENT,
                           "regopt_trainer_free: not a live regopt_trainer handle");
    if (t->env.in_host) { /* from one of its callbacks, or after one threw */
        ro_fail_tls(REGOPT_ERR_STATE, "regopt_trainer_free: a callback of %s of this trainer "
                    "has not returned (a callback may not free its trainer; after one threw, "
                    "call regopt_trainer_recover first): nothing was freed",
                    t->env.busy ? t->env.busy : "a call");
        return ro_fail(t->msg, REGOPT_ERR_STATE, "regopt_trainer_free was refused: a callback "
                       "has not returned");
    }
    while (t->n_regs)
        (void)regopt_trainer_detach(t, t->regs[t->n_regs - 1]);
    ro_host_enter(&t->env); /* a free hook calling back in is refused */
    if (t->loss_free)
        t->loss_free(t->env.loss_user);
    if (t->allreduce_free)
        t->allreduce_free(t->allreduce_user);
    ro_host_leave(&t->env);
    ro_free(&t->alloc, t->sync);
    if (t->model->magic == RO_MAGIC_MODEL)
        t->model->bound--;
    if (t->opt->magic == RO_MAGIC_OPTIMIZER)
        t->opt->bound--;
    free_scratch(t);
    (void)ro_probe_enable(t, 0);
    ro_flat_release(t);
    ro_parallel_release(&t->par);
    ro_free(&t->alloc, t->state);
    ro_backend_trainer_release(t);
    a = t->alloc;
    t->magic = RO_MAGIC_DEAD;
    ro_free(&a, t);
    return REGOPT_OK;
}

/* Grow the scratch buffers to `rows` rows. The old buffers stay in place
 * until the new ones all exist, so a failure changes nothing. */
static regopt_status reserve_rows(regopt_trainer *t, size_t rows)
{
    size_t k = t->model->output_width;
    float *o, *d, *l, *ds = NULL;
    /* loss scaling: a buffer for d_outputs x S (staged models only) */
    int need_ds = t->model->staged || t->model->n_half;
    if (rows <= t->cap_rows && (!need_ds || t->env.d_scaled))
        return REGOPT_OK;
    if (rows < t->cap_rows)
        rows = t->cap_rows;
    o = ro_calloc(&t->alloc, rows * k + RO_OUT_GUARD, sizeof(float));
    d = ro_calloc(&t->alloc, rows, k * sizeof(float));
    l = ro_calloc(&t->alloc, rows, sizeof(float));
    if (need_ds)
        ds = ro_calloc(&t->alloc, rows, k * sizeof(float));
    if (!o || !d || !l || (need_ds && !ds)) {
        ro_free(&t->alloc, o);
        ro_free(&t->alloc, d);
        ro_free(&t->alloc, l);
        ro_free(&t->alloc, ds);
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for scratch buffers of %zu rows x %zu outputs", rows, k);
    }
    free_scratch(t);
    t->outputs = o;
    t->d_outputs = d;
    t->row_loss = l;
    t->env.row_loss = l;
    t->env.d_scratch = d;
    t->env.d_scaled = ds;
    t->env.d_cap = ds ? rows * k : 0;
    t->cap_rows = rows;
    return REGOPT_OK;
}

void ro_trainer_plan(const regopt_trainer *t, ro_plan *p, int all_due)
{
    size_t i;
    memset(p, 0, sizeof *p);
    p->copies = 1;
    p->task_scale = 1.0;
    p->slots = 1;
    p->blocks = 1;
    for (i = 0; i < t->n_regs; i++) {
        ro_reg *r = t->regs[i];
        if (r->ops->plan)
            r->ops->plan(r, p, all_due || r->due);
    }
}

/* Every buffer sized for micro-batches of `rows` rows: outputs of all
 * passes (blocks of rows), and what each regularizer keeps per row. */
regopt_status ro_trainer_reserve_all(regopt_trainer *t, size_t rows, size_t in_rows)
{
    ro_plan p;
    size_t i;
    regopt_status st;
    ro_trainer_plan(t, &p, 1);
    st = reserve_rows(t, rows * p.blocks);
    for (i = 0; i < t->n_regs && st == REGOPT_OK; i++)
        if (t->regs[i]->ops->reserve)
            st = t->regs[i]->ops->reserve(t->regs[i], rows, in_rows);
    if (st == REGOPT_OK && rows > t->reserved)
        t->reserved = rows;
    if (st == REGOPT_OK && in_rows > t->reserved_in)
        t->reserved_in = in_rows;
    return st;
}

regopt_status regopt_trainer_reserve(regopt_trainer *t, size_t max_rows)
{
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_reserve");
    if (st != REGOPT_OK)
        return st;
    if (max_rows == 0 || max_rows > ((size_t)1 << 40) / t->model->output_width)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "regopt_trainer_reserve: max_rows %zu is out of range", max_rows);
    return ro_trainer_reserve_all(t, max_rows, max_rows);
}

/* ---- options and statistics -------------------------------------------- */

static regopt_status trainer_key(const regopt_trainer *t, regopt_key key,
                                 int readable, const ro_key_desc **out)
{
    const ro_key_desc *d = ro_any_key(key, NULL);
    int ok = d && (d->owner == RO_OWNER_TRAINER || (readable && d->owner == RO_OWNER_STAT));
    if (d && d->owner == RO_OWNER_STAT && !readable)
        return ro_fail((char *)t->msg, REGOPT_ERR_STATE,
                       "%s is a statistic and cannot be set", d->name);
    if (!ok)
        return ro_fail((char *)t->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "key %d (%s) is not a trainer %s%s", (int)key,
                       d ? d->name : "unknown", readable ? "key or statistic" : "key",
                       d && d->owner == RO_OWNER_REG
                           ? " (regularizer keys are set on the regularizer's handle)" : "");
    *out = d;
    return REGOPT_OK;
}

static regopt_status trainer_set_value(regopt_trainer *t, regopt_key key, double dv,
                               int64_t iv, int is_int)
{
    const ro_key_desc *d = NULL;
    regopt_status st = trainer_key(t, key, 0, &d);
    if (st != REGOPT_OK)
        return st;
    if (key == REGOPT_TRAINER_SEED) { /* the full int64 range, exactly */
        if (!is_int) {
            if (!(dv >= -9223372036854775808.0 && dv < 9223372036854775808.0) ||
                dv != floor(dv))
                return ro_fail(t->msg, REGOPT_ERR_OUT_OF_RANGE,
                               "trainer.seed takes an integer, got %.17g", dv);
            iv = (int64_t)dv;
        }
        t->seed = (uint64_t)iv;
        return REGOPT_OK;
    }
    if (is_int)
        dv = (double)iv;
    st = ro_key_check(d, dv, t->msg);
    if (st != REGOPT_OK)
        return st;
    if (key == REGOPT_TRAINER_LOSS) {
        if (dv == REGOPT_LOSS_CALLBACK && !t->env.loss_fn)
            return ro_fail(t->msg, REGOPT_ERR_STATE,
                           "trainer.loss = callback needs regopt_trainer_set_loss_callback");
        t->env.loss_kind = (int)dv;
    } else if (key == REGOPT_TRAINER_LABEL_SMOOTHING) {
        t->env.label_smoothing = dv;
    } else if (key == REGOPT_TRAINER_THREADS) {
        return ro_parallel_set_threads(&t->par, (unsigned)dv, t->msg);
    } else if (key >= REGOPT_TRAINER_LOSS_SCALING && key <= REGOPT_TRAINER_SCALE_INTERVAL) {
        return ro_scaler_set(t, key, dv);
    } else if (key == REGOPT_TRAINER_CHECK_HOST) {
        if (dv != 0.0 && t->model->has_backend) /* it reads the tensors */
            return ro_backend_refuse(t->msg, "trainer.check_host");
        st = ro_probe_enable(t, dv != 0.0);
        if (st == REGOPT_OK)
            t->env.check_host = dv != 0.0;
        return st;
    }
    return REGOPT_OK;
}

regopt_status regopt_trainer_set_double(regopt_trainer *t, regopt_key key, double value)
{
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_set_double");
    return st == REGOPT_OK ? trainer_set_value(t, key, value, 0, 0) : st;
}

regopt_status regopt_trainer_set_int(regopt_trainer *t, regopt_key key, int64_t value)
{
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_set_int");
    return st == REGOPT_OK ? trainer_set_value(t, key, 0.0, value, 1) : st;
}

static regopt_status trainer_get_value(const regopt_trainer *t, regopt_key key,
                               double *dv, int64_t *iv, const char *func)
{
    const ro_key_desc *d = NULL;
    regopt_status st = ro_trainer_check(t, func);
    if (st == REGOPT_OK && !dv && !iv)
        st = ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER, "%s: value is NULL", func);
    if (st == REGOPT_OK)
        st = trainer_key(t, key, 1, &d);
    if (st != REGOPT_OK)
        return st;
    if (key == REGOPT_TRAINER_SEED) {
        if (iv)
            *iv = (int64_t)t->seed;
        else
            *dv = (double)(int64_t)t->seed;
        return REGOPT_OK;
    }
    if (key == REGOPT_STAT_STEP) {
        if (iv)
            *iv = (int64_t)t->step;
        else
            *dv = (double)t->step;
        return REGOPT_OK;
    }
    {
        double v;
        if (key == REGOPT_TRAINER_LOSS)
            v = (double)t->env.loss_kind;
        else if (key == REGOPT_TRAINER_LABEL_SMOOTHING)
            v = t->env.label_smoothing;
        else if (key == REGOPT_TRAINER_THREADS)
            v = (double)t->par.threads;
        else if (key == REGOPT_TRAINER_CHECK_HOST)
            v = (double)t->env.check_host;
        else if (ro_scaler_get(t, key, &v))
            ;
        else if (d->owner == RO_OWNER_STAT && key >= REGOPT_STAT_LOSS &&
                 key < REGOPT_STAT_LOSS + RO_N_STATS)
            v = t->stats[key - REGOPT_STAT_LOSS];
        else /* a trainer key without storage here: a bug, reported as one */
            return ro_fail((char *)t->msg, REGOPT_ERR_UNKNOWN_KEY, "%s cannot be read", d->name);
        if (iv)
            return ro_to_int64(v, d->name, iv, (char *)t->msg);
        *dv = v;
    }
    return REGOPT_OK;
}

regopt_status regopt_trainer_get_double(const regopt_trainer *t, regopt_key key,
                                        double *value)
{
    if (t && t->magic == RO_MAGIC_TRAINER && !value)
        return ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_trainer_get_double: value is NULL");
    return trainer_get_value(t, key, value, NULL, "regopt_trainer_get_double");
}

regopt_status regopt_trainer_get_int(const regopt_trainer *t, regopt_key key,
                                     int64_t *value)
{
    if (t && t->magic == RO_MAGIC_TRAINER && !value)
        return ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_trainer_get_int: value is NULL");
    return trainer_get_value(t, key, NULL, value, "regopt_trainer_get_int");
}

regopt_status regopt_trainer_set_loss_callback(regopt_trainer *t, regopt_loss_fn fn,
                                               void *user, regopt_free_fn free_user)
{
    regopt_free_fn old_free;
    void *old_user;
    regopt_status st = ro_trainer_enter(t, "regopt_trainer_set_loss_callback");
    if (st != REGOPT_OK)
        return st;
    old_free = t->loss_free;
    old_user = t->env.loss_user;
    /* the new callback first: a free hook that throws leaves it consistent */
    t->env.loss_fn = fn;
    t->env.loss_user = fn ? user : NULL;
    t->loss_free = fn ? free_user : NULL;
    t->env.loss_kind = fn ? REGOPT_LOSS_CALLBACK : REGOPT_LOSS_SOFTMAX_CE;
    /* release the old user data unless it comes back with a new callback */
    if (old_free && (old_user != user || !fn)) {
        ro_host_enter(&t->env);
        old_free(old_user);
        ro_host_leave(&t->env);
    }
    return REGOPT_OK;
}

const char *regopt_trainer_message(const regopt_trainer *t)
{
    if (!t || t->magic != RO_MAGIC_TRAINER)
        return "invalid regopt_trainer handle";
    return t->msg;
}

