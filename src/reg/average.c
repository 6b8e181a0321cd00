/* average.c — an average of the trainable weights kept after every counted
 * update, for evaluation (regopt_regularizer_swap_average, trainer/swap.c):
 *   EMA   w_bar <- b_n w_bar + (1 - b_n) w, with the warm-ups of TensorFlow's
 *         ExponentialMovingAverage (num_updates), timm's ModelEmaV3 and
 *         torch.optim.swa_utils (the first update copies);
 *   SWA   w_bar <- w_bar + (w - w_bar) / (n + 1) from step s0 every c steps
 *         (Izmailov et al., UAI 2018, Alg. 1; torch's AveragedModel).
 * Definitions: ../shared/METHODS2.md "Teacher-based terms and weight
 * averaging"; include/regopt.h "Weight averaging". No pass, no term: only
 * prepare (the EMA's starting copy), after_update and the checkpoint. */
#include "reg/reg.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* EMA: ro_ema_job as it is (ema.c); SWA: the divisor n + 1 in take. */
typedef ro_ema_job avg_job;

typedef struct average {
    avg_job job;          /* the elementwise work of the step being made */
    int mode, warmup;
    double decay, gamma, power, min_decay;
    int64_t start, every;
    uint64_t count;       /* updates averaged; 0: the buffer holds nothing yet */
    ro_ema_buf *buf;      /* the average: its own (refs 1), or a teacher's (shared) */
    ro_ema_buf *spare;    /* a buffer of its own made ready for a load while shared */
    int shared;           /* this step, the buffer's owner makes its EMA */
    int try_share;        /* after the next update, look for a teacher holding the same */
    double last_decay;    /* what the last step kept of the old average */
    int32_t vec;          /* with a backend: the average (buf NULL, never shared) */
} average;

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define RO REGOPT_KEY_READ_ONLY
static const ro_key_desc average_keys[] = {
    {REGOPT_AVERAGE_MODE, "average.mode", I, RO_OWNER_REG, 0, 1, REGOPT_AVERAGE_EMA, 0},
    {REGOPT_AVERAGE_DECAY, "average.decay", D, RO_OWNER_REG, 0, 1, 0.9998,
     REGOPT_KEY_MAX_EXCLUSIVE},
    {REGOPT_AVERAGE_WARMUP, "average.warmup", I, RO_OWNER_REG, 0, 3, REGOPT_AVERAGE_WARMUP_NONE,
     0},
    {REGOPT_AVERAGE_WARMUP_GAMMA, "average.warmup_gamma", D, RO_OWNER_REG, 0, 1e9, 1,
     REGOPT_KEY_MIN_EXCLUSIVE},
    {REGOPT_AVERAGE_WARMUP_POWER, "average.warmup_power", D, RO_OWNER_REG, 0, 10, 2.0 / 3.0,
     REGOPT_KEY_MIN_EXCLUSIVE},
    {REGOPT_AVERAGE_MIN_DECAY, "average.min_decay", D, RO_OWNER_REG, 0, 1, 0,
     REGOPT_KEY_MAX_EXCLUSIVE},
    {REGOPT_AVERAGE_START, "average.start", I, RO_OWNER_REG, 0, 2147483648.0, 0, 0},
    {REGOPT_AVERAGE_EVERY, "average.every", I, RO_OWNER_REG, 1, 2147483648.0, 1, 0},
    {REGOPT_STAT_AVERAGE_COUNT, "average.count", I, RO_OWNER_REG, 0, 9007199254740992.0, 0, RO},
    {REGOPT_STAT_AVERAGE_DECAY, "average.decay_used", D, RO_OWNER_REG, 0, 1, 0, RO},
};

static void average_init(ro_reg *r)
{
    average *a = r->self;
    a->mode = REGOPT_AVERAGE_EMA;
    a->warmup = REGOPT_AVERAGE_WARMUP_NONE;
    a->decay = 0.9998;
    a->gamma = 1.0;
    a->power = 2.0 / 3.0;
    a->min_decay = 0.0;
    a->start = 0;
    a->every = 1;
    a->vec = REGOPT_VEC_NONE;
}

static regopt_status average_set(ro_reg *r, const ro_key_desc *k, int32_t group, double v)
{
    average *a = r->self;
    (void)group;
    a->try_share = 1;
    switch (k->key) {
    case REGOPT_AVERAGE_MODE: a->mode = (int)v; break;
    case REGOPT_AVERAGE_DECAY: a->decay = v; break;
    case REGOPT_AVERAGE_WARMUP: a->warmup = (int)v; break;
    case REGOPT_AVERAGE_WARMUP_GAMMA: a->gamma = v; break;
    case REGOPT_AVERAGE_WARMUP_POWER: a->power = v; break;
    case REGOPT_AVERAGE_MIN_DECAY: a->min_decay = v; break;
    case REGOPT_AVERAGE_START: a->start = (int64_t)v; break;
    default: a->every = (int64_t)v; break;
    }
    return REGOPT_OK;
}

static double average_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    const average *a = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_AVERAGE_MODE: return a->mode;
    case REGOPT_AVERAGE_DECAY: return a->decay;
    case REGOPT_AVERAGE_WARMUP: return a->warmup;
    case REGOPT_AVERAGE_WARMUP_GAMMA: return a->gamma;
    case REGOPT_AVERAGE_WARMUP_POWER: return a->power;
    case REGOPT_AVERAGE_MIN_DECAY: return a->min_decay;
    case REGOPT_AVERAGE_START: return (double)a->start;
    default: return (double)a->every;
    }
}

static regopt_status average_attach(ro_reg *r)
{
    average *a = r->self;
    if (r->env->model->has_backend) { /* a backend buffer, never shared */
        a->count = 0;
        a->last_decay = 0.0;
        a->shared = a->try_share = 0;
        return ro_vec_alloc((regopt_model *)r->env->model, &a->vec, r->env->msg);
    }
    a->buf = ro_ema_buf_new(r->env->alloc, r->env->model->n_trainable);
    a->spare = NULL;
    a->shared = 0;
    a->try_share = 1;
    if (!a->buf)
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for the average's %zu weights",
                       r->env->model->n_trainable);
    a->count = 0;
    a->last_decay = 0.0;
    return REGOPT_OK;
}

static void average_detach(ro_reg *r)
{
    average *a = r->self;
    ro_ema_buf_drop(r->env->alloc, a->buf);
    ro_ema_buf_drop(r->env->alloc, a->spare);
    ro_vec_free(r->env->model, &a->vec);
    a->buf = a->spare = NULL;
    a->count = 0;
}

/* Whether the update of step t (updates made before it) enters the
 * average. */
static int counted(const average *a, uint64_t t)
{
    return t >= (uint64_t)a->start && (t - (uint64_t)a->start) % (uint64_t)a->every == 0;
}

static void avg_copy_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    memcpy(((const avg_job *)ctx)->avg + p->offset + j0, p->data + j0,
           (j1 - j0) * sizeof(float));
}

/* ---- one buffer with a teacher of the same EMA ------------------------------
 * A Bregman/MESA teacher whose betas both equal average.decay makes, after
 * every step, the same recurrence as an EMA average with no warm-up that
 * counts every step (ema.c: the same bits). Once the two buffers are equal
 * after an update (both started at the same step, or a checkpoint put the
 * same weights in both), the average drops its own and holds the
 * teacher's: one buffer, one update (the teacher's), 4 bytes per parameter
 * less. When that stops being true (a decay or the mode changes, a
 * checkpoint loads), the average takes a copy of its own back before the
 * next update; a teacher detached leaves the buffer to the average. */

/* The buffer of the attached regularizer that keeps this average's EMA, or
 * NULL when none does (or this average is not an EMA of one fixed decay). */
static ro_ema_buf *kept_by_other(const ro_reg *r, const ro_step *s)
{
    const average *a = r->self;
    size_t i;
    if (a->mode != REGOPT_AVERAGE_EMA || a->warmup != REGOPT_AVERAGE_WARMUP_NONE ||
        a->every != 1)
        return NULL;
    for (i = 0; i < s->n_regs; i++) {
        ro_reg *o = s->regs[i];
        ro_ema_buf *b = o != r && o->ops->ema ? o->ops->ema(o, a->decay) : NULL;
        if (b)
            return b;
    }
    return NULL;
}

/* A buffer of its own again, with the shared one's weights. */
static regopt_status unshare(ro_reg *r)
{
    average *a = r->self;
    size_t n = r->env->model->n_trainable;
    ro_ema_buf *own = a->spare ? a->spare : ro_ema_buf_new(r->env->alloc, n);
    if (!own)
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY, "out of memory for the average's "
                       "own copy of the %zu weights it shared with the teacher", n);
    memcpy(own->v, a->buf->v, n * sizeof(float));
    ro_ema_buf_drop(r->env->alloc, a->buf);
    a->buf = own;
    a->spare = NULL;
    a->shared = 0;
    return REGOPT_OK;
}

/* Before a step: still shared only while the teacher keeps this very EMA. */
static regopt_status keep_shared(ro_reg *r, const ro_step *s)
{
    average *a = r->self;
    regopt_status st = REGOPT_OK;
    if (a->buf->refs > 1 && kept_by_other(r, s) != a->buf)
        st = unshare(r);
    a->shared = st == REGOPT_OK && a->buf->refs > 1;
    return st;
}

/* After an update: hold the teacher's buffer instead when it is equal. */
static void try_share(ro_reg *r, const ro_step *s)
{
    average *a = r->self;
    ro_ema_buf *b;
    a->try_share = 0;
    /* count 0: the buffer holds no average yet (its first copy would then
       overwrite the teacher's) */
    if (a->count == 0 || a->buf->refs > 1 || !(b = kept_by_other(r, s)) ||
        memcmp(b->v, a->buf->v, r->env->model->n_trainable * sizeof(float)) != 0)
        return;
    ro_ema_buf_drop(r->env->alloc, a->buf);
    b->refs++;
    a->buf = b;
}

/* The EMA starts from the weights before its first update (timm's ModelEma
 * copies the model at creation; MESA's teacher too). Copied here, before any
 * pass, on every attempt until a step commits: a failed step leaves count 0
 * and the next one copies again. */
static regopt_status average_prepare(ro_reg *r, ro_step *s)
{
    average *a = r->self;
    regopt_status st;
    if (r->env->model->has_backend)
        return a->mode == REGOPT_AVERAGE_EMA && a->count == 0 && counted(a, s->step)
                   ? ro_vop_xy(r->env->model, REGOPT_VOP_COPY, a->vec, REGOPT_VEC_WEIGHTS, 0.0,
                               0.0, NULL, r->env->msg)
                   : REGOPT_OK;
    st = keep_shared(r, s);
    if (st != REGOPT_OK)
        return st;
    a->job.avg = a->buf->v;
    if (a->mode == REGOPT_AVERAGE_EMA && a->count == 0 && counted(a, s->step))
        ro_each_piece(r->env->par, avg_copy_piece, &a->job);
    return REGOPT_OK;
}

/* b_n of the EMA's update number n (0-based), in double. */
static double ema_decay(const average *a, uint64_t n)
{
    double b, x = (double)n;
    switch (a->warmup) {
    case REGOPT_AVERAGE_WARMUP_TF: /* tf.train.ExponentialMovingAverage(num_updates) */
        b = (1.0 + x) / (10.0 + x);
        return b < a->decay ? b : a->decay;
    case REGOPT_AVERAGE_WARMUP_TIMM: /* timm ModelEmaV3.get_decay: 0 at the first */
        if (n == 0)
            return 0.0;
        b = 1.0 - pow(1.0 + x / a->gamma, -a->power);
        b = b < a->decay ? b : a->decay;
        return b > a->min_decay ? b : a->min_decay;
    case REGOPT_AVERAGE_WARMUP_FIRST: /* torch swa_utils: the first update copies */
        return n == 0 ? 0.0 : a->decay;
    default:
        return a->decay;
    }
}

/* w_bar <- w_bar + (w - w_bar) / (n + 1) in double, rounded once (between
 * w_bar and w, so finite; torch computes it in the tensor's precision). */
void ro_swa_range(float *restrict v, const float *restrict w, size_t n, double c)
{
    size_t j;
    for (j = 0; j < n; j++)
        v[j] = (float)((double)v[j] + ((double)w[j] - (double)v[j]) / c);
}

static void avg_swa_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const avg_job *e = ctx;
    ro_swa_range(e->avg + p->offset + j0, p->data + j0, j1 - j0, e->take);
}

/* The step's averaging, run by the trainer with the update's blocks. */
static ro_piece_fn average_after_pieces(ro_reg *r, const ro_step *s, void **ctx)
{
    average *a = r->self;
    avg_job *e = &a->job;
    if (!counted(a, s->step) || a->shared || r->env->model->has_backend)
        return NULL; /* shared: the teacher's EMA is this one; backend: after_backend */
    *ctx = e;
    e->avg = a->buf->v;
    if (a->count == 0 && a->mode == REGOPT_AVERAGE_SWA)
        return avg_copy_piece;
    if (a->mode == REGOPT_AVERAGE_SWA) {
        e->take = (double)a->count + 1.0; /* the divisor n + 1 */
        return avg_swa_piece;
    }
    ro_ema_set(e, a->buf->v, ema_decay(a, a->count));
    return ro_ema_piece;
}

/* average_after_pieces's work on a model with a backend. */
static regopt_status average_after_backend(ro_reg *r, const ro_step *s)
{
    const average *a = r->self;
    const regopt_model *m = r->env->model;
    double d;
    if (!counted(a, s->step))
        return REGOPT_OK;
    if (a->count == 0 && a->mode == REGOPT_AVERAGE_SWA)
        return ro_vop_xy(m, REGOPT_VOP_COPY, a->vec, REGOPT_VEC_WEIGHTS, 0.0, 0.0, NULL,
                         r->env->msg);
    if (a->mode == REGOPT_AVERAGE_SWA) /* the divisor n + 1 */
        return ro_vop_xy(m, REGOPT_VOP_SWA, a->vec, REGOPT_VEC_WEIGHTS, (double)a->count + 1.0,
                         0.0, NULL, r->env->msg);
    d = ema_decay(a, a->count);
    return ro_vop_xy(m, REGOPT_VOP_EMA, a->vec, REGOPT_VEC_WEIGHTS, d, 1.0 - d, NULL,
                     r->env->msg);
}

static void average_after_update(ro_reg *r, const ro_step *s)
{
    average *a = r->self;
    if (!counted(a, s->step))
        a->last_decay = 1.0;
    else if (a->count == 0 && a->mode == REGOPT_AVERAGE_SWA)
        a->last_decay = 0.0;
    else if (a->mode == REGOPT_AVERAGE_SWA)
        a->last_decay = (double)a->count / ((double)a->count + 1.0);
    else
        a->last_decay = ema_decay(a, a->count);
    if (counted(a, s->step))
        a->count++;
    if ((a->count == 1 || a->try_share) && !r->env->model->has_backend)
        try_share(r, s);
}

static void average_commit(ro_reg *r, const ro_step *s)
{
    const average *a = r->self;
    (void)s;
    r->stats[0] = (double)a->count;
    r->stats[1] = a->last_decay;
}

/* State: u64 count | f64 the last step's decay | the average (count > 0). */
static uint64_t average_state_size(const ro_reg *r)
{
    const average *a = r->self;
    return 16u + (a->count ? 4u * (uint64_t)r->env->model->n_trainable : 0u);
}

static void average_save(const ro_reg *r, ro_ck_sink *out)
{
    const average *a = r->self;
    ro_ck_u64(out, a->count);
    ro_ck_f64(out, a->last_decay);
    if (a->count && r->env->model->has_backend)
        ro_ck_vec(out, r->env->model, a->vec, r->env->msg);
    else if (a->count)
        ro_ck_floats(out, a->buf->v, r->env->model->n_trainable);
}

static regopt_status average_check_state(ro_reg *r, const unsigned char *p, uint64_t size)
{
    average *a = r->self;
    uint64_t n = r->env->model->n_trainable, count = size >= 16 ? ro_ck_rd64(p) : 0, i;
    double last = size >= 16 ? ro_ck_rdf64(p + 8) : -1.0;
    if (size < 16 || size != 16u + (count ? 4u * n : 0u) || !(last >= 0.0 && last <= 1.0) ||
        count > 9007199254740992ull)
        return ro_fail(r->env->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's average state is malformed (%" PRIu64 " bytes)", size);
    for (i = 0; count && i < n; i++) {
        uint32_t bits = ro_ck_rd32(p + 16 + 4 * i);
        float v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v))
            return ro_fail(r->env->msg, REGOPT_ERR_CORRUPT,
                           "the checkpoint's averaged weights hold a non-finite value at "
                           "element %" PRIu64, i);
    }
    /* a load cannot fail: the buffer a shared average loads into is made here
       (with a backend its buffer is its own, never shared) */
    if (a->buf && a->buf->refs > 1 && !a->spare &&
        !(a->spare = ro_ema_buf_new(r->env->alloc, (size_t)n)))
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY, "out of memory for the average's "
                       "own copy of the %" PRIu64 " weights it shares with the teacher", n);
    return REGOPT_OK;
}

static regopt_status average_load(ro_reg *r, const unsigned char *p, uint64_t size)
{
    average *a = r->self;
    (void)size;
    if (r->env->model->has_backend) { /* its own buffer; the WRITE may fail */
        regopt_status st = ro_ck_rd64(p) ? ro_vec_load(r->env->model, a->vec, p + 16,
                                                       r->env->msg) : REGOPT_OK;
        if (st != REGOPT_OK)
            return st;
        a->count = ro_ck_rd64(p);
        a->last_decay = ro_ck_rdf64(p + 8);
        return REGOPT_OK;
    }
    if (a->buf->refs > 1 && a->spare) { /* check_state made it: the teacher loads
                                              its own weights, apart until equal */
        ro_ema_buf_drop(r->env->alloc, a->buf);
        a->buf = a->spare;
        a->spare = NULL;
    }
    a->shared = 0;
    a->count = ro_ck_rd64(p);
    a->last_decay = ro_ck_rdf64(p + 8);
    if (a->count)
        ro_ck_rdfloats(a->buf->v, p + 16, r->env->model->n_trainable);
    a->try_share = 1;
    return REGOPT_OK;
}

static float *average_weights(ro_reg *r)
{
    average *a = r->self;
    return a->count ? a->buf->v : NULL;
}

static int32_t average_vec(ro_reg *r)
{
    const average *a = r->self;
    return a->count ? a->vec : REGOPT_VEC_NONE;
}

const ro_reg_ops ro_average_ops = {
    .name = "average",
    .title = "weight average",
    .kind = REGOPT_REG_AVERAGE,
    .flags = REGOPT_REG_SINGLE | RO_REG_TAKES_WEIGHTS | RO_REG_BACKEND,
    .order = 60,
    .size = sizeof(average),
    .keys = average_keys,
    .n_keys = sizeof average_keys / sizeof average_keys[0],
    .stat0 = REGOPT_STAT_AVERAGE_COUNT,
    .n_stats = 2,
    .n_acc = 0,
    .init = average_init,
    .attach = average_attach,
    .detach = average_detach,
    .set = average_set,
    .get = average_get,
    .prepare = average_prepare,
    .after_pieces = average_after_pieces,
    .after_update = average_after_update,
    .commit = average_commit,
    .state_size = average_state_size,
    .save = average_save,
    .check_state = average_check_state,
    .load = average_load,
    .averaged = average_weights,
    .averaged_vec = average_vec,
    .after_backend = average_after_backend,
};
