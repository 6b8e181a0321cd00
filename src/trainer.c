/* trainer.c — binds a model and an optimizer, owns the training state and
 * runs steps. A step is a transaction: it validates everything, runs the
 * passes (which only touch gradient buffers and scratch memory), checks
 * that loss and gradient are finite, and only then commits the update.
 * Nothing that can fail happens after the first parameter is written, so a
 * failed step leaves parameters and optimizer state exactly as they were. */
#include "internal.h"

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
            if (o->kind != REGOPT_RADAM && o->kind != REGOPT_SGD && !o->amsgrad)
                t->per_element = 2; /* no AMSGrad maximum unless asked at creation */
            t->model = m;
            t->state = ro_calloc(&t->alloc, m->n_trainable, t->per_element * sizeof(float));
            if (!t->state || ro_parallel_init(t) != REGOPT_OK) {
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
    t->loss_kind = REGOPT_LOSS_SOFTMAX_CE;
    ro_sam_defaults(&t->sam);
    ro_rdrop_defaults(&t->rdrop);
    ro_smart_defaults(&t->smart);
    ro_bregman_defaults(&t->bregman);
    m->bound++;
    o->bound++;
    return t;
}

static void free_scratch(regopt_trainer *t)
{
    ro_free(&t->alloc, t->outputs);
    ro_free(&t->alloc, t->d_outputs);
    ro_free(&t->alloc, t->row_loss);
    t->outputs = t->d_outputs = t->row_loss = NULL;
    t->cap_rows = 0;
}

void regopt_trainer_free(regopt_trainer *t)
{
    ro_alloc a;
    if (!t || t->magic != RO_MAGIC_TRAINER)
        return;
    if (t->loss_free)
        t->loss_free(t->loss_user);
    if (t->allreduce_free)
        t->allreduce_free(t->allreduce_user);
    ro_free(&t->alloc, t->sync);
    if (t->model->magic == RO_MAGIC_MODEL)
        t->model->bound--;
    if (t->opt->magic == RO_MAGIC_OPTIMIZER)
        t->opt->bound--;
    free_scratch(t);
    ro_sam_release(t);
    ro_smart_release(t);
    ro_bregman_release(t);
    ro_parallel_release(t);
    ro_free(&t->alloc, t->state);
    a = t->alloc;
    t->magic = RO_MAGIC_DEAD;
    ro_free(&a, t);
}

/* Grow the scratch buffers to `rows` rows. The old buffers stay in place
 * until the new ones all exist, so a failure changes nothing. */
static regopt_status reserve_rows(regopt_trainer *t, size_t rows)
{
    size_t k = t->model->output_width;
    float *o, *d, *l;
    if (rows <= t->cap_rows)
        return REGOPT_OK;
    o = ro_calloc(&t->alloc, rows, k * sizeof(float));
    d = ro_calloc(&t->alloc, rows, k * sizeof(float));
    l = ro_calloc(&t->alloc, rows, sizeof(float));
    if (!o || !d || !l) {
        ro_free(&t->alloc, o);
        ro_free(&t->alloc, d);
        ro_free(&t->alloc, l);
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for scratch buffers of %zu rows x %zu outputs", rows, k);
    }
    free_scratch(t);
    t->outputs = o;
    t->d_outputs = d;
    t->row_loss = l;
    t->cap_rows = rows;
    return REGOPT_OK;
}

/* Every buffer sized for batches of `rows` rows: outputs of all passes,
 * SMART's noise (rows embedding rows), the teacher's outputs. */
static regopt_status reserve_all(regopt_trainer *t, size_t rows)
{
    regopt_status st = reserve_rows(t, rows * ro_rows_factor(t));
    if (st == REGOPT_OK && t->smart.enabled)
        st = ro_smart_grow(t, rows);
    if (st == REGOPT_OK && t->bregman.enabled)
        st = ro_bregman_grow(t, rows);
    if (st == REGOPT_OK && rows > t->reserved)
        t->reserved = rows;
    return st;
}

regopt_status regopt_trainer_reserve(regopt_trainer *t, size_t max_rows)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_reserve");
    if (st != REGOPT_OK)
        return st;
    if (max_rows == 0 || max_rows > ((size_t)1 << 40) / t->model->output_width)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "regopt_trainer_reserve: max_rows %zu is out of range", max_rows);
    return reserve_all(t, max_rows);
}

/* ---- options and statistics -------------------------------------------- */

static regopt_status trainer_key(const regopt_trainer *t, regopt_key key,
                                 int readable, const ro_key_desc **out)
{
    const ro_key_desc *d = ro_key_find(key);
    int ok = d && (d->owner == RO_OWNER_TRAINER || d->owner == RO_OWNER_SAM ||
                   d->owner == RO_OWNER_RDROP || d->owner == RO_OWNER_SMART ||
                   d->owner == RO_OWNER_BREGMAN ||
                   (readable && d->owner == RO_OWNER_STAT));
    if (d && d->owner == RO_OWNER_STAT && !readable)
        return ro_fail((char *)t->msg, REGOPT_ERR_STATE,
                       "%s is a statistic and cannot be set", d->name);
    if (!ok)
        return ro_fail((char *)t->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "key %d (%s) is not a trainer %s", (int)key,
                       d ? d->name : "unknown", readable ? "key or statistic" : "key");
    *out = d;
    return REGOPT_OK;
}

static regopt_status set_value(regopt_trainer *t, regopt_key key, double dv,
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
    if (d->owner == RO_OWNER_SAM)
        return ro_sam_set(t, key, dv);
    if (d->owner == RO_OWNER_RDROP)
        return ro_rdrop_set(t, key, dv);
    if (d->owner == RO_OWNER_SMART)
        return ro_smart_set(t, key, dv);
    if (d->owner == RO_OWNER_BREGMAN)
        return ro_bregman_set(t, key, dv);
    if (key == REGOPT_TRAINER_LOSS) {
        if (dv == REGOPT_LOSS_CALLBACK && !t->loss_fn)
            return ro_fail(t->msg, REGOPT_ERR_STATE,
                           "trainer.loss = callback needs regopt_trainer_set_loss_callback");
        t->loss_kind = (int)dv;
    } else if (key == REGOPT_TRAINER_LABEL_SMOOTHING) {
        t->label_smoothing = dv;
    } else if (key == REGOPT_TRAINER_THREADS) {
        return ro_parallel_set_threads(t, (unsigned)dv);
    }
    return REGOPT_OK;
}

regopt_status regopt_trainer_set_double(regopt_trainer *t, regopt_key key, double value)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_set_double");
    return st == REGOPT_OK ? set_value(t, key, value, 0, 0) : st;
}

regopt_status regopt_trainer_set_int(regopt_trainer *t, regopt_key key, int64_t value)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_set_int");
    return st == REGOPT_OK ? set_value(t, key, 0.0, value, 1) : st;
}

static regopt_status get_value(const regopt_trainer *t, regopt_key key,
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
            v = (double)t->loss_kind;
        else if (key == REGOPT_TRAINER_LABEL_SMOOTHING)
            v = t->label_smoothing;
        else if (key == REGOPT_TRAINER_THREADS)
            v = (double)t->threads;
        else if (d->owner == RO_OWNER_SAM)
            v = ro_sam_get(t, key);
        else if (d->owner == RO_OWNER_RDROP)
            v = ro_rdrop_get(t, key);
        else if (d->owner == RO_OWNER_SMART)
            v = ro_smart_get(t, key);
        else if (d->owner == RO_OWNER_BREGMAN)
            v = ro_bregman_get(t, key);
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
    return get_value(t, key, value, NULL, "regopt_trainer_get_double");
}

regopt_status regopt_trainer_get_int(const regopt_trainer *t, regopt_key key,
                                     int64_t *value)
{
    if (t && t->magic == RO_MAGIC_TRAINER && !value)
        return ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                       "regopt_trainer_get_int: value is NULL");
    return get_value(t, key, NULL, value, "regopt_trainer_get_int");
}

regopt_status regopt_trainer_set_loss_callback(regopt_trainer *t, regopt_loss_fn fn,
                                               void *user, regopt_free_fn free_user)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_set_loss_callback");
    if (st != REGOPT_OK)
        return st;
    /* release the old user data unless the same one comes back with a callback */
    if (t->loss_free && (t->loss_user != user || !fn))
        t->loss_free(t->loss_user);
    t->loss_fn = fn;
    t->loss_user = fn ? user : NULL;
    t->loss_free = fn ? free_user : NULL;
    t->loss_kind = fn ? REGOPT_LOSS_CALLBACK : REGOPT_LOSS_SOFTMAX_CE;
    return REGOPT_OK;
}

static regopt_status trainer_group_key(const regopt_trainer *t, int32_t group,
                                       regopt_key key, const ro_key_desc **out)
{
    const ro_key_desc *d = ro_key_find(key);
    if (!d || d->owner != RO_OWNER_TRAINER_GROUP)
        return ro_fail((char *)t->msg, REGOPT_ERR_UNKNOWN_KEY,
                       "key %d (%s) is not a trainer group key", (int)key,
                       d ? d->name : "unknown");
    if (group < 0 || group >= REGOPT_MAX_GROUPS)
        return ro_fail((char *)t->msg, REGOPT_ERR_OUT_OF_RANGE,
                       "group must be in [0, %d], got %d", REGOPT_MAX_GROUPS - 1, (int)group);
    *out = d;
    return REGOPT_OK;
}

regopt_status regopt_trainer_set_group(regopt_trainer *t, int32_t group, regopt_key key,
                                       double value)
{
    const ro_key_desc *d = NULL;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_set_group");
    if (st == REGOPT_OK)
        st = trainer_group_key(t, group, key, &d);
    if (st == REGOPT_OK)
        st = ro_key_check(d, value, t->msg);
    if (st == REGOPT_OK)
        t->sam.group_adaptive[group] = (uint8_t)value;
    return st;
}

regopt_status regopt_trainer_get_group(const regopt_trainer *t, int32_t group,
                                       regopt_key key, double *value)
{
    const ro_key_desc *d = NULL;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_get_group");
    if (st == REGOPT_OK && !value)
        st = ro_fail((char *)t->msg, REGOPT_ERR_NULL_POINTER,
                     "regopt_trainer_get_group: value is NULL");
    if (st == REGOPT_OK)
        st = trainer_group_key(t, group, key, &d);
    if (st == REGOPT_OK)
        *value = t->sam.group_adaptive[group];
    return st;
}

/* A regularizer just added needs room for the batches already reserved or
 * seen: make it now, so that no step has to. */
static regopt_status regrow(regopt_trainer *t)
{
    return t->reserved ? reserve_all(t, t->reserved) : REGOPT_OK;
}

static regopt_status add_rdrop(regopt_trainer *t)
{
    regopt_status st = ro_rdrop_check_model(t);
    if (st != REGOPT_OK)
        return st;
    t->rdrop.enabled = 1;
    if (t->smart.enabled && t->model->slots < ro_smart_slot(t) + 1)
        st = ro_fail(t->msg, REGOPT_ERR_STATE,
                     "R-Drop and SMART together need %d activation slots (the model has %d)",
                     (int)ro_smart_slot(t) + 1, (int)t->model->slots);
    if (st == REGOPT_OK)
        st = regrow(t);
    if (st != REGOPT_OK)
        t->rdrop.enabled = 0;
    return st;
}

static regopt_status add_sam(regopt_trainer *t)
{
    regopt_status st;
    t->sam.enabled = 1;
    st = ro_sam_reserve(t);
    if (st != REGOPT_OK) {
        t->sam.enabled = 0;
        ro_sam_release(t);
    }
    return st;
}

static regopt_status add_smart(regopt_trainer *t)
{
    regopt_status st = ro_smart_add(t);
    if (st == REGOPT_OK)
        st = regrow(t);
    if (st != REGOPT_OK)
        ro_smart_release(t);
    return st;
}

static regopt_status add_bregman(regopt_trainer *t)
{
    regopt_status st = ro_bregman_add(t);
    if (st == REGOPT_OK)
        st = regrow(t);
    if (st != REGOPT_OK)
        ro_bregman_release(t);
    return st;
}

static int *enabled_flag(regopt_trainer *t, regopt_regularizer kind)
{
    switch (kind) {
    case REGOPT_REG_SAM: return &t->sam.enabled;
    case REGOPT_REG_RDROP: return &t->rdrop.enabled;
    case REGOPT_REG_SMART: return &t->smart.enabled;
    case REGOPT_REG_BREGMAN: return &t->bregman.enabled;
    }
    return NULL;
}

static const char *reg_name(regopt_regularizer kind)
{
    static const char *names[] = {"?", "SAM", "R-Drop", "SMART", "Bregman"};
    return names[kind >= 1 && kind <= 4 ? kind : 0];
}

regopt_status regopt_trainer_add_regularizer(regopt_trainer *t, regopt_regularizer kind)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_add_regularizer");
    int *on;
    if (st != REGOPT_OK)
        return st;
    on = enabled_flag(t, kind);
    if (!on)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT, "unknown regularizer kind %d",
                       (int)kind);
    if (*on)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the %s regularizer is already on",
                       reg_name(kind));
    switch (kind) {
    case REGOPT_REG_SAM: return add_sam(t);
    case REGOPT_REG_RDROP: return add_rdrop(t);
    case REGOPT_REG_SMART: return add_smart(t);
    default: return add_bregman(t);
    }
}

regopt_status regopt_trainer_remove_regularizer(regopt_trainer *t, regopt_regularizer kind)
{
    regopt_status st = ro_trainer_check(t, "regopt_trainer_remove_regularizer");
    int *on;
    if (st != REGOPT_OK)
        return st;
    on = enabled_flag(t, kind);
    if (!on)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT, "unknown regularizer kind %d",
                       (int)kind);
    if (!*on)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the %s regularizer is not on",
                       reg_name(kind));
    *on = 0;
    if (kind == REGOPT_REG_SAM)
        ro_sam_release(t);
    else if (kind == REGOPT_REG_SMART)
        ro_smart_release(t);
    else if (kind == REGOPT_REG_BREGMAN)
        ro_bregman_release(t);
    return REGOPT_OK;
}

const char *regopt_trainer_message(const regopt_trainer *t)
{
    if (!t || t->magic != RO_MAGIC_TRAINER)
        return "invalid regopt_trainer handle";
    return t->msg;
}

/* ---- step and evaluate ------------------------------------------------- */

/* Options can change after the regularizers were added (rdrop.doubled):
 * check the slots the step will use against what the host declared. */
static regopt_status slots_check(regopt_trainer *t)
{
    int32_t need = t->smart.enabled ? ro_smart_slot(t) + 1
                   : t->rdrop.enabled ? ro_smart_slot(t) : 1;
    if (t->model->slots < need)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "the regularizers on need %d activation slots (the model has %d%s)",
                       (int)need, (int)t->model->slots,
                       t->rdrop.enabled && !t->rdrop.doubled ? "; rdrop.doubled is 0" : "");
    return REGOPT_OK;
}

static regopt_status step_config_check(regopt_trainer *t)
{
    const regopt_optimizer *o = t->opt;
    regopt_status st = ro_optimizer_validate(o, t->msg);
    if (st != REGOPT_OK)
        return st;
    if ((o->kind == REGOPT_ADAM || o->kind == REGOPT_ADAMW) && o->amsgrad &&
        t->per_element < 3)
        return ro_fail(t->msg, REGOPT_ERR_STATE,
                       "optimizer.amsgrad was switched on after the trainer was created");
    if (t->loss_kind == REGOPT_LOSS_CALLBACK && !t->loss_fn)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the loss is a callback but none is set");
    return slots_check(t);
}

double ro_trainer_lr(const regopt_trainer *t)
{
    return t->opt->lr * ro_schedule_factor(t->opt, t->step);
}

static void commit_sam_stats(regopt_trainer *t, const ro_sam_result *r)
{
    RO_STAT(t, REGOPT_STAT_SAM_CLEAN_LOSS) = r->clean_loss;
    RO_STAT(t, REGOPT_STAT_SAM_PERTURBED_LOSS) = r->perturbed_loss;
    RO_STAT(t, REGOPT_STAT_SAM_SHARPNESS) = r->perturbed_loss - r->clean_loss;
    RO_STAT(t, REGOPT_STAT_SAM_ASCENT_NORM) = r->ascent_norm;
    RO_STAT(t, REGOPT_STAT_SAM_RHO) = r->rho;
    RO_STAT(t, REGOPT_STAT_SAM_APPLIED) = r->applied;
}

regopt_status regopt_trainer_step(regopt_trainer *t, const regopt_batch *batches,
                                  size_t count)
{
    double weight = 0.0, loss = 0.0, norm = 0.0, scale, lr;
    size_t rows;
    int sam = 0;
    ro_sam_result res;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_step");
    if (st != REGOPT_OK)
        return st;
    st = step_config_check(t);
    if (st == REGOPT_OK)
        st = ro_batches_check(batches, count, t->model, t->loss_kind,
                              t->loss_kind != REGOPT_LOSS_CALLBACK, t->allreduce != NULL,
                              &weight, &rows, t->msg);
    if (st == REGOPT_OK && t->sam.enabled) {
        sam = ro_sam_due(t);
        st = ro_sam_validate(t, batches, count);
    }
    if (st == REGOPT_OK && rows > t->reserved)
        st = reserve_all(t, rows);
    if (st == REGOPT_OK)
        st = ro_smart_reserve(t, batches, count);
    if (st != REGOPT_OK) {
        /* a replica that cannot even start still joins the first all-reduce
           with its failure mark, so that no peer waits for it forever */
        if (t->allreduce)
            (void)ro_sync_gradients(t, st, &weight, &loss, NULL);
        return st;
    }

    t->forward_calls = t->backward_calls = 0;
    memset(&res, 0, sizeof res);
    memset(t->acc, 0, sizeof t->acc);
    t->rdrop_now = ro_rdrop_due(t);
    t->batches = batches;
    st = ro_bregman_teacher(t, batches, count);
    if (st != REGOPT_OK) /* still joins the all-reduce, with its failure mark */
        st = ro_sync_gradients(t, st, &weight, &loss, NULL);
    else if (sam) {
        st = ro_sam_gradient(t, batches, count, &weight, &loss, &res);
    } else {
        /* a replica may hold only padding: its gradient is then zero */
        st = ro_gradient(t, batches, count, weight > 0.0 ? 1.0 / weight : 0.0,
                         REGOPT_PASS_TRAIN, RO_SEED_TASK, &loss);
        st = ro_sync_gradients(t, st, &weight, &loss, NULL);
        res.clean_loss = res.perturbed_loss = loss;
    }
    if (st == REGOPT_OK)
        st = ro_gradient_norm(t, &norm);
    if (st != REGOPT_OK)
        return st;

    /* commit: nothing below can fail */
    scale = ro_clip_scale(t->opt, norm);
    lr = ro_trainer_lr(t);
    ro_apply_update(t, lr, scale);
    if (t->bregman.enabled)
        ro_bregman_update(t); /* the EMA follows every update */
    t->step++;
    RO_STAT(t, REGOPT_STAT_LOSS) = t->acc[RO_ACC_TASK];
    RO_STAT(t, REGOPT_STAT_OBJECTIVE) = sam ? res.perturbed_loss : loss;
    RO_STAT(t, REGOPT_STAT_GRAD_NORM) = norm;
    RO_STAT(t, REGOPT_STAT_CLIP_SCALE) = scale;
    RO_STAT(t, REGOPT_STAT_LR) = lr;
    RO_STAT(t, REGOPT_STAT_WEIGHT) = weight;
    RO_STAT(t, REGOPT_STAT_FORWARD_CALLS) = (double)t->forward_calls;
    RO_STAT(t, REGOPT_STAT_BACKWARD_CALLS) = (double)t->backward_calls;
    if (t->sam.enabled)
        commit_sam_stats(t, &res);
    if (t->rdrop.enabled) {
        RO_STAT(t, REGOPT_STAT_RDROP_LOSS1) = t->rdrop_now ? t->acc[RO_ACC_LOSS1] : 0.0;
        RO_STAT(t, REGOPT_STAT_RDROP_LOSS2) = t->rdrop_now ? t->acc[RO_ACC_LOSS2] : 0.0;
        RO_STAT(t, REGOPT_STAT_RDROP_CONSISTENCY) = t->acc[RO_ACC_CONSISTENCY];
        RO_STAT(t, REGOPT_STAT_RDROP_APPLIED) = t->rdrop_now;
    }
    RO_STAT(t, REGOPT_STAT_SMART_RS) = t->acc[RO_ACC_SMART_RS];
    RO_STAT(t, REGOPT_STAT_SMART_NOISE_NORM) =
        t->acc[RO_ACC_NOISE_ROWS] > 0.0 ? t->acc[RO_ACC_NOISE_SUM] / t->acc[RO_ACC_NOISE_ROWS] : 0.0;
    RO_STAT(t, REGOPT_STAT_BREGMAN_D) = t->acc[RO_ACC_BREGMAN];
    RO_STAT(t, REGOPT_STAT_BREGMAN_BETA) = t->bregman.enabled ? t->bregman.last_beta : 0.0;
    return REGOPT_OK;
}

regopt_status regopt_trainer_evaluate(regopt_trainer *t, const regopt_batch *batch,
                                      double *loss, float *outputs)
{
    double weight = 1.0, l = 0.0;
    size_t rows;
    regopt_pass p;
    regopt_status st = ro_trainer_check(t, "regopt_trainer_evaluate");
    if (st != REGOPT_OK)
        return st;
    if (loss && t->loss_kind == REGOPT_LOSS_CALLBACK && !t->loss_fn)
        return ro_fail(t->msg, REGOPT_ERR_STATE, "the loss is a callback but none is set");
    st = ro_batches_check(batch, 1, t->model, t->loss_kind,
                          loss && t->loss_kind != REGOPT_LOSS_CALLBACK, loss == NULL, &weight,
                          &rows, t->msg);
    if (st == REGOPT_OK)
        st = reserve_rows(t, rows);
    if (st != REGOPT_OK)
        return st;
    ro_pass_init(t, &p, batch, 0, REGOPT_PASS_NO_GRAD, 0);
    st = ro_call_forward(t, &p);
    if (st == REGOPT_OK && loss)
        st = ro_batch_loss(t, batch, t->outputs, 1.0 / weight, 1.0, NULL, &l);
    if (st != REGOPT_OK)
        return st;
    if (loss)
        *loss = l;
    if (outputs)
        memcpy(outputs, t->outputs, batch->rows * t->model->output_width * sizeof(float));
    return REGOPT_OK;
}
