/* bregman.c — SMART's momentum Bregman proximal point bregman_term (Jiang et al.,
 * ACL 2020, Eq. 3 and Alg. 1; docs/methods.md §6): keep the outputs close
 * to those of a teacher whose weights are an exponential moving average of
 * the student's,
 *   D_Breg = mean_i l_s(f(x_i; w), sg(f(x_i; w~))),  w~ <- beta w~ + (1-beta) w.
 * The teacher's weights enter the host's buffers by an in-place swap, so the
 * library needs no second copy of the model beyond w~ itself; a host that
 * reads its weights through pointers (REGOPT_CAP_PASS_WEIGHTS) is handed
 * w~'s buffers instead, and nothing is swapped.
 * MESA (Du et al., NeurIPS 2022; AngusDujw/SAF MESA_train.py) is the same
 * term with l = tau^2 KL(softmax(q/tau) || softmax(z/tau)) and a window of
 * steps (bregman.divergence, .tau, .start_step, .end_step). */
#include "reg/reg.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

typedef struct bregman {
    ro_ema_job job;       /* the EMA of the step being made (ema.c) */
    int ready;            /* the teacher holds weights */
    int swapped;          /* the host's buffers hold the teacher's weights */
    double mu, beta, beta_late, sw;
    int64_t switch_step;  /* -1: from sw and optimizer.total_steps */
    ro_ema_buf *buf;      /* the teacher's weights (an EMA average may hold them too) */
    float *teacher;       /* buf->v: n_trainable */
    const float **wtab;   /* n_params: pass->weights of a teacher pass */
    float *out;           /* the teacher's outputs for the step's rows */
    size_t cap_out;       /* rows */
    double last_beta;
    int divergence;       /* REGOPT_BREGMAN_SYM_KL or _KL_TEACHER */
    double tau;
    int64_t start_step, end_step; /* end -1: never */
    int32_t teacher_vec;  /* with a backend: the teacher's weights (buf NULL) */
} bregman;

#define D REGOPT_TYPE_DOUBLE
#define I REGOPT_TYPE_INT
#define RO REGOPT_KEY_READ_ONLY
static const ro_key_desc bregman_keys[] = {
    {REGOPT_BREGMAN_MU, "bregman.mu", D, RO_OWNER_REG, 0, 1e4, 1, 0},
    {REGOPT_BREGMAN_BETA, "bregman.beta", D, RO_OWNER_REG, 0, 1, 0.99, REGOPT_KEY_MAX_EXCLUSIVE},
    {REGOPT_BREGMAN_BETA_LATE, "bregman.beta_late", D, RO_OWNER_REG, 0, 1, 0.999,
     REGOPT_KEY_MAX_EXCLUSIVE},
    {REGOPT_BREGMAN_SWITCH, "bregman.switch", D, RO_OWNER_REG, 0, 1, 0.1, 0},
    {REGOPT_BREGMAN_SWITCH_STEP, "bregman.switch_step", I, RO_OWNER_REG, -1, 2147483648.0, -1,
     0},
    {REGOPT_BREGMAN_DIVERGENCE, "bregman.divergence", I, RO_OWNER_REG, 0, 1,
     REGOPT_BREGMAN_SYM_KL, 0},
    {REGOPT_BREGMAN_TAU, "bregman.tau", D, RO_OWNER_REG, 0, 1e3, 1, REGOPT_KEY_MIN_EXCLUSIVE},
    {REGOPT_BREGMAN_START_STEP, "bregman.start_step", I, RO_OWNER_REG, 0, 2147483648.0, 0, 0},
    {REGOPT_BREGMAN_END_STEP, "bregman.end_step", I, RO_OWNER_REG, -1, 2147483648.0, -1, 0},
    {REGOPT_STAT_BREGMAN_D, "bregman.d", D, RO_OWNER_REG, -HUGE_VAL, HUGE_VAL, 0, RO},
    {REGOPT_STAT_BREGMAN_BETA, "bregman.beta_used", D, RO_OWNER_REG, 0, 1, 0, RO},
};

static void bregman_init(ro_reg *r)
{
    bregman *b = r->self;
    b->mu = 1.0;
    b->beta = 0.99;
    b->beta_late = 0.999;
    b->sw = 0.1;
    b->switch_step = -1;
    b->divergence = REGOPT_BREGMAN_SYM_KL;
    b->tau = 1.0;
    b->start_step = 0;
    b->end_step = -1;
    b->teacher_vec = REGOPT_VEC_NONE;
}

static regopt_status bregman_set(ro_reg *r, const ro_key_desc *k, int32_t group, double v)
{
    bregman *b = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_BREGMAN_MU: b->mu = v; break;
    case REGOPT_BREGMAN_BETA: b->beta = v; break;
    case REGOPT_BREGMAN_BETA_LATE: b->beta_late = v; break;
    case REGOPT_BREGMAN_SWITCH: b->sw = v; break;
    case REGOPT_BREGMAN_DIVERGENCE: b->divergence = (int)v; break;
    case REGOPT_BREGMAN_TAU: b->tau = v; break;
    case REGOPT_BREGMAN_START_STEP: b->start_step = (int64_t)v; break;
    case REGOPT_BREGMAN_END_STEP: b->end_step = (int64_t)v; break;
    default: b->switch_step = (int64_t)v; break;
    }
    return REGOPT_OK;
}

static double bregman_get(const ro_reg *r, const ro_key_desc *k, int32_t group)
{
    const bregman *b = r->self;
    (void)group;
    switch (k->key) {
    case REGOPT_BREGMAN_MU: return b->mu;
    case REGOPT_BREGMAN_BETA: return b->beta;
    case REGOPT_BREGMAN_BETA_LATE: return b->beta_late;
    case REGOPT_BREGMAN_SWITCH: return b->sw;
    case REGOPT_BREGMAN_DIVERGENCE: return b->divergence;
    case REGOPT_BREGMAN_TAU: return b->tau;
    case REGOPT_BREGMAN_START_STEP: return (double)b->start_step;
    case REGOPT_BREGMAN_END_STEP: return (double)b->end_step;
    default: return (double)b->switch_step;
    }
}

/* ---- through the model's backend (regopt_model_set_backend) -------------
 * The teacher is a backend buffer; it is swapped in (never handed by
 * pointer: the library has no pointers to it) and kept by REGOPT_VOP_EMA.
 * No average shares it. */

static int late(const bregman *br, const ro_step *s);

static regopt_status backend_attach(ro_reg *r)
{
    bregman *b = r->self;
    regopt_status st;
    b->wtab = ro_calloc(r->env->alloc, 1, sizeof *b->wtab); /* wtab[0] NULL: swapped */
    if (!b->wtab)
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY, "out of memory for the teacher");
    st = ro_vec_alloc((regopt_model *)r->env->model, &b->teacher_vec, r->env->msg);
    if (st != REGOPT_OK) {
        ro_free(r->env->alloc, (void *)b->wtab);
        b->wtab = NULL;
    }
    b->ready = 0;
    b->last_beta = 0.0;
    return st;
}

/* The teacher into the host's buffers and back: REGOPT_VOP_SWAP. */
static regopt_status backend_swap(ro_reg *r, int *finite)
{
    double fin = 0.0;
    regopt_status st = ro_vop_xy(r->env->model, REGOPT_VOP_SWAP, REGOPT_VEC_WEIGHTS,
                                 ((bregman *)r->self)->teacher_vec, 0.0, 0.0, &fin, r->env->msg);
    *finite = fin == 1.0;
    return st;
}

static regopt_status backend_prepare(ro_reg *r)
{
    bregman *br = r->self;
    int finite = 1;
    regopt_status st = REGOPT_OK;
    if (br->swapped) { /* a swap back that failed: the teacher is still in */
        st = backend_swap(r, &finite);
        if (st != REGOPT_OK)
            return st;
        br->swapped = 0;
    }
    if (!br->ready)
        st = ro_vop_xy(r->env->model, REGOPT_VOP_COPY, br->teacher_vec, REGOPT_VEC_WEIGHTS, 0.0,
                       0.0, NULL, r->env->msg);
    if (st == REGOPT_OK)
        st = backend_swap(r, &finite);
    if (st != REGOPT_OK || finite)
        return st;
    st = backend_swap(r, &finite);
    return st != REGOPT_OK ? st : ro_backend_nonfinite_weight(r->env->model, "Bregman teacher",
                                                              r->env->msg);
}

/* The teacher's EMA after the update (bregman_after_pieces's work). */
static regopt_status bregman_after_backend(ro_reg *r, const ro_step *s)
{
    bregman *br = r->self;
    ro_ema_set(&br->job, NULL, late(br, s) ? br->beta_late : br->beta);
    return ro_vop_xy(r->env->model, REGOPT_VOP_EMA, br->teacher_vec, REGOPT_VEC_WEIGHTS,
                     br->job.keep, br->job.take, NULL, r->env->msg);
}

static regopt_status bregman_attach(ro_reg *r)
{
    bregman *b = r->self;
    const regopt_model *m = r->env->model;
    size_t i;
    if (m->has_backend)
        return backend_attach(r);
    b->buf = ro_ema_buf_new(r->env->alloc, m->n_trainable);
    b->wtab = ro_calloc(r->env->alloc, m->n_params ? m->n_params : 1, sizeof *b->wtab);
    if (!b->buf || !b->wtab) {
        ro_ema_buf_drop(r->env->alloc, b->buf);
        ro_free(r->env->alloc, (void *)b->wtab);
        b->buf = NULL;
        b->wtab = NULL;
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for the teacher's %zu weights", m->n_trainable);
    }
    b->teacher = b->buf->v;
    /* the table is used only when every tensor is float32 (a half tensor's
       teacher is float32, the host's forward would read halves) */
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        if (p->dtype != REGOPT_DTYPE_FLOAT32 || !(m->caps & REGOPT_CAP_PASS_WEIGHTS)) {
            b->wtab[0] = NULL;
            break;
        }
        b->wtab[i] = p->grad ? b->teacher + p->offset : p->data;
    }
    b->ready = 0;
    b->last_beta = 0.0;
    return REGOPT_OK;
}

static void bregman_detach(ro_reg *r)
{
    bregman *b = r->self;
    ro_ema_buf_drop(r->env->alloc, b->buf); /* an average may keep it */
    ro_vec_free(r->env->model, &b->teacher_vec);
    ro_free(r->env->alloc, b->out);
    ro_free(r->env->alloc, (void *)b->wtab);
    b->buf = NULL;
    b->teacher = b->out = NULL;
    b->wtab = NULL;
    b->cap_out = 0;
    b->ready = 0;
}

/* Swap, and add x - x for every value x leaving a (0 if finite, NaN if
 * not) to z: the step refuses weights the teacher would take non-finite. */
static void swap_block(float *restrict a, float *restrict b, float *restrict z)
{
    size_t j;
    for (j = 0; j < RO_BLOCK; j++) {
        float x = a[j];
        a[j] = b[j];
        b[j] = x;
        z[j] += x - x;
    }
}

/* One chunk of the swap (through ro_sum_pieces): 0 when every weight it
 * took from the host's buffers is finite, NaN otherwise. */
static double swap_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    float *w = p->data + j0, *tw = ((const bregman *)ctx)->teacher + p->offset + j0;
    float z[RO_BLOCK] = {0.0f}, zs = 0.0f;
    size_t n = j1 - j0, j;
    for (j = 0; j + RO_BLOCK <= n; j += RO_BLOCK)
        swap_block(w + j, tw + j, z);
    for (; j < n; j++) {
        float x = w[j];
        w[j] = tw[j];
        tw[j] = x;
        zs += x - x;
    }
    for (j = 0; j < RO_BLOCK; j++)
        zs += z[j];
    return zs;
}

/* Exchange the host's weights and the teacher's, element by element: one
 * pass, no scratch, and doing it twice restores both bit for bit. Frozen
 * tensors are left alone: the teacher's copy would be identical. Returns
 * whether every value taken from the host's buffers was finite. */
static int swap_weights(ro_reg *r)
{
    return ro_sum_pieces(r->env->par, swap_piece, r->self) == 0.0;
}

/* A non-finite weight before the update: the EMA would carry it into the
 * teacher, and checkpoints refuse a non-finite teacher. Named, first in
 * registration order. */
static regopt_status nonfinite_weight(ro_reg *r)
{
    const regopt_model *m = r->env->model;
    size_t i, j;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        for (j = 0; p->grad && j < p->count; j++)
            if (!isfinite(p->data[j]))
                return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_GRADIENT,
                               "parameter \"%.64s\" holds a non-finite weight at element %zu, "
                               "which the Bregman teacher would take; nothing was updated",
                               p->name, j);
    }
    return ro_fail(r->env->msg, REGOPT_ERR_NONFINITE_GRADIENT, "a weight is not finite");
}

static void copy_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    memcpy(((const bregman *)ctx)->teacher + p->offset + j0, p->data + j0,
           (j1 - j0) * sizeof(float));
}

/* Room for the teacher's outputs of `rows` rows per step. */
static regopt_status bregman_grow(ro_reg *r, size_t rows)
{
    bregman *br = r->self;
    float *o;
    if (rows <= br->cap_out)
        return REGOPT_OK;
    o = ro_calloc(r->env->alloc, rows * r->env->model->output_width + RO_OUT_GUARD,
                  sizeof(float));
    if (!o)
        return ro_fail(r->env->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for the teacher's outputs (%zu rows)", rows);
    ro_free(r->env->alloc, br->out);
    br->out = o;
    br->cap_out = rows;
    return REGOPT_OK;
}

static regopt_status bregman_reserve(ro_reg *r, size_t rows, size_t in_rows)
{
    (void)in_rows;
    return bregman_grow(r, rows);
}

/* The teacher's outputs for every row of the step (one weight swap). */
static regopt_status prepare(ro_reg *r, ro_step *s)
{
    bregman *br = r->self;
    size_t k = r->env->model->output_width, rows = 0, bi, at = 0;
    regopt_status st = REGOPT_OK;
    /* the host reads the teacher's buffers in place: nothing to swap. A
       weight that is not finite is then refused after the passes, by the
       driver's check for RO_REG_TAKES_WEIGHTS, instead of the swap's */
    int by_pointer = br->wtab[0] != NULL;
    for (bi = 0; bi < s->count; bi++)
        rows += ro_batch_at(s->batches, bi)->rows;
    if (bregman_grow(r, rows) != REGOPT_OK)
        return REGOPT_ERR_NO_MEMORY;
    /* the first step's teacher is the student itself; `ready` is bregman_set only
       when the step commits, so a failed first step starts over */
    if (r->env->model->has_backend) {
        st = backend_prepare(r);
        if (st != REGOPT_OK)
            return st;
    } else if (!br->ready) {
        ro_each_piece(r->env->par, copy_piece, br);
    }
    if (r->env->model->has_backend) {
        /* swapped above */
    } else if (!by_pointer && !swap_weights(r)) {
        (void)swap_weights(r);
        return nonfinite_weight(r);
    }
    br->swapped = !by_pointer;
    for (bi = 0; bi < s->count && st == REGOPT_OK; bi++) {
        const regopt_batch *x = ro_batch_at(s->batches, bi);
        regopt_pass p;
        ro_pass_init(r->env, &p, x, bi, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD, 0,
                     br->out + at * k);
        if (by_pointer)
            p.weights = br->wtab;
        st = ro_call_forward(r->env, &p);
        at += x->rows;
    }
    if (r->env->model->has_backend) {
        int finite;
        regopt_status back = backend_swap(r, &finite);
        st = st != REGOPT_OK ? st : back;
        br->swapped = back != REGOPT_OK; /* the abandon hook tries again */
    } else {
        if (!by_pointer)
            (void)swap_weights(r);
        br->swapped = 0;
    }
    if (st == REGOPT_OK) /* user terms with a teacher pass read them too */
        s->teacher = br->out;
    return st;
}

/* MESA's divergence of one row: tau^2 KL(P || S), P = softmax(q / tau) the
 * teacher's, S = softmax(z / tau) the student's (SAF's KDLoss: kl_div of
 * log_softmax(z/T) against softmax(q/T), times T^2), in double; adds
 * coef * d/dz = coef tau (S - P) to dz (the tau^2 of the loss and the 1/tau
 * of the softmax's argument). */
#define KL_CACHE 64 /* classes whose exponentials are kept (the rest recomputes them) */
static double kl_teacher_row(const float *z, const float *q, size_t k, double tau, double coef,
                             float *dz)
{
    double mz = z[0], mq = q[0], sz = 0.0, sq = 0.0, lz, lq, kl = 0.0, it = 1.0 / tau;
    double ez[KL_CACHE], eq[KL_CACHE];
    int cached = k <= KL_CACHE;
    size_t j;
    for (j = 1; j < k; j++) {
        mz = z[j] > mz ? z[j] : mz;
        mq = q[j] > mq ? q[j] : mq;
    }
    for (j = 0; j < k; j++) { /* 2k exponentials per row, not 4k: they are the term's cost */
        double a = exp(((double)z[j] - mz) * it), b = exp(((double)q[j] - mq) * it);
        sz += a;
        sq += b;
        if (cached) {
            ez[j] = a;
            eq[j] = b;
        }
    }
    lz = log(sz); /* log S_j = (z_j - mz) / tau - lz */
    lq = log(sq);
    for (j = 0; j < k; j++) {
        double lp = ((double)q[j] - mq) * it - lq, ls = ((double)z[j] - mz) * it - lz;
        double p = cached ? eq[j] / sq : exp(lp), s = cached ? ez[j] / sz : exp(ls);
        kl += p * (lp - ls);
        dz[j] += (float)(coef * tau * (s - p));
    }
    return tau * tau * kl;
}

/* Whether the term applies at step t (bregman.start_step, .end_step). */
static int in_window(const bregman *br, uint64_t t)
{
    return t >= (uint64_t)br->start_step && (br->end_step < 0 || t < (uint64_t)br->end_step);
}

/* A step with MESA's divergence needs a classification loss. */
static regopt_status bregman_check(ro_reg *r, const ro_step *s)
{
    const bregman *br = r->self;
    (void)s;
    if (br->divergence == REGOPT_BREGMAN_KL_TEACHER && r->env->loss_kind == REGOPT_LOSS_MSE)
        return ro_fail(r->env->msg, REGOPT_ERR_STATE, "bregman.divergence 1 (KL(teacher || "
                       "student), MESA) needs a classification loss; the trainer's loss is MSE");
    return REGOPT_OK;
}

/* D_Breg of a view, mu * its gradient added to the clean outputs'. */
static regopt_status bregman_term(ro_reg *r, ro_view *v, double *weighted)
{
    const bregman *br = r->self;
    size_t i, k = v->k;
    const float *q = br->out + v->step_row * k, *z = v->z;
    float mu = (float)br->mu, *dz = v->dz;
    double sum = 0.0, inv_weight = v->s->inv_weight;
    *weighted = 0.0;
    if (!in_window(br, v->s->step)) /* outside MESA's window: no term */
        return REGOPT_OK;
    for (i = 0; i < v->n; i++) {
        float rw = ro_row_weight(&v->rows, i), c = (float)(rw * inv_weight) * mu;
        if (rw == 0.0f)
            continue;
        /* l_s(f(x; w), sg(f(x; w~))): the teacher's side is detached */
        if (br->divergence == REGOPT_BREGMAN_KL_TEACHER)
            sum += rw * kl_teacher_row(z + i * k, q + i * k, k, br->tau,
                                       rw * inv_weight * br->mu, dz + i * k);
        else if (r->env->loss_kind == REGOPT_LOSS_MSE)
            sum += rw * ro_sq_diff_row(z + i * k, q + i * k, k, c, dz + i * k, NULL);
        else
            sum += rw * 2.0 * ro_sym_kl_row(z + i * k, q + i * k, k, 2.0f * c, dz + i * k, NULL);
    }
    sum *= inv_weight;
    *weighted = br->mu * sum;
    if (!(v->flags & REGOPT_PASS_PERTURBED_WEIGHTS))
        v->s->acc[r->acc0] += sum;
    return REGOPT_OK;
}

/* beta_late from bregman.switch_step if bregman_set, else from bregman.switch of
 * optimizer.total_steps (never when total_steps is 0); s->step counts the
 * updates made before this one. */
static int late(const bregman *br, const ro_step *s)
{
    if (br->switch_step >= 0)
        return s->step >= (uint64_t)br->switch_step;
    return s->total_steps > 0 && (double)s->step >= br->sw * (double)s->total_steps;
}

/* After the update: w~ <- beta w~ + (1 - beta) w, the average's recurrence
 * (ema.c: in double, rounded once), so the teacher is bit for bit the EMA
 * average of the same decay. The teacher stays finite (checkpoints refuse
 * it otherwise): the update never writes a non-finite weight, prepare (the
 * driver, RO_REG_TAKES_WEIGHTS, when the host is handed the teacher by
 * pointer) refuses weights that already are, and the EMA of finite values
 * is finite. */
static ro_piece_fn bregman_after_pieces(ro_reg *r, const ro_step *s, void **ctx)
{
    bregman *br = r->self;
    if (r->env->model->has_backend) /* bregman_after_backend's */
        return NULL;
    ro_ema_set(&br->job, br->teacher, late(br, s) ? br->beta_late : br->beta);
    *ctx = &br->job;
    return ro_ema_piece;
}

static void bregman_after_update(ro_reg *r, const ro_step *s)
{
    bregman *br = r->self;
    (void)s;
    br->ready = 1;
    br->last_beta = br->job.keep;
}

static void bregman_commit(ro_reg *r, const ro_step *s)
{
    r->stats[0] = s->acc[r->acc0];
    r->stats[1] = ((const bregman *)r->self)->last_beta;
}

/* State: u32 ready | u32 pad | f64 beta of the last step | the teacher. */
static uint64_t bregman_state_size(const ro_reg *r)
{
    const bregman *br = r->self;
    return 16u + (br->ready ? 4u * (uint64_t)r->env->model->n_trainable : 0u);
}

static void bregman_save(const ro_reg *r, ro_ck_sink *out)
{
    const bregman *br = r->self;
    ro_ck_u32(out, (uint32_t)br->ready);
    ro_ck_u32(out, 0);
    ro_ck_f64(out, br->last_beta);
    if (br->ready && r->env->model->has_backend)
        ro_ck_vec(out, r->env->model, br->teacher_vec, r->env->msg);
    else if (br->ready)
        ro_ck_floats(out, br->teacher, r->env->model->n_trainable);
}

static regopt_status bregman_check_state(ro_reg *r, const unsigned char *p, uint64_t size)
{
    uint32_t ready = size >= 16 ? ro_ck_rd32(p) : 2u;
    uint64_t n = r->env->model->n_trainable, i;
    if (ready > 1 || ro_ck_rd32(p + 4) != 0 ||
        size != 16u + (ready ? 4u * n : 0u))
        return ro_fail(r->env->msg, REGOPT_ERR_CORRUPT,
                       "the checkpoint's Bregman state is malformed (%" PRIu64 " bytes)", size);
    for (i = 0; ready && i < n; i++) {
        uint32_t bits = ro_ck_rd32(p + 16 + 4 * i);
        float v;
        memcpy(&v, &bits, sizeof v);
        if (!isfinite(v))
            return ro_fail(r->env->msg, REGOPT_ERR_CORRUPT,
                           "the checkpoint's Bregman teacher holds a non-finite value at "
                           "element %" PRIu64, i);
    }
    return REGOPT_OK;
}

static regopt_status bregman_load(ro_reg *r, const unsigned char *p, uint64_t size)
{
    bregman *br = r->self;
    (void)size;
    if (ro_ck_rd32(p) && r->env->model->has_backend) { /* the one way it can fail: first */
        regopt_status st = ro_vec_load(r->env->model, br->teacher_vec, p + 16, r->env->msg);
        if (st != REGOPT_OK)
            return st;
    } else if (ro_ck_rd32(p)) {
        ro_ck_rdfloats(br->teacher, p + 16, r->env->model->n_trainable);
    }
    br->ready = (int)ro_ck_rd32(p);
    br->last_beta = ro_ck_rdf64(p + 8);
    return REGOPT_OK;
}

/* A teacher forward that never returned left the teacher's weights in the
 * host's buffers: swap back (the swap is exact both ways). */
static float *bregman_averaged(ro_reg *r)
{
    bregman *br = r->self;
    return br->ready ? br->teacher : NULL;
}

static int32_t bregman_averaged_vec(ro_reg *r)
{
    bregman *br = r->self;
    return br->ready ? br->teacher_vec : REGOPT_VEC_NONE;
}

/* The teacher is the EMA of decay d when both betas are d: an EMA average
 * of that decay and history may hold its buffer (average.c). */
static ro_ema_buf *bregman_ema(ro_reg *r, double decay)
{
    const bregman *br = r->self;
    return br->beta == decay && br->beta_late == decay ? br->buf : NULL;
}

static void bregman_abandon(ro_reg *r)
{
    bregman *br = r->self;
    int finite;
    if (br->swapped && r->env->model->has_backend) /* a failure leaves it to recover */
        br->swapped = backend_swap(r, &finite) != REGOPT_OK;
    else if (br->swapped)
        (void)swap_weights(r);
    br->swapped = br->swapped && r->env->model->has_backend;
}

const ro_reg_ops ro_bregman_ops = {
    .name = "bregman",
    .title = "Bregman",
    .kind = REGOPT_REG_BREGMAN,
    .flags = REGOPT_REG_SINGLE | RO_REG_KEEPS_TEACHER | RO_REG_TAKES_WEIGHTS | RO_REG_BACKEND,
    .order = 20,
    .size = sizeof(bregman),
    .keys = bregman_keys,
    .n_keys = sizeof bregman_keys / sizeof bregman_keys[0],
    .stat0 = REGOPT_STAT_BREGMAN_D,
    .n_stats = 2,
    .n_acc = 1,
    .init = bregman_init,
    .attach = bregman_attach,
    .detach = bregman_detach,
    .reserve = bregman_reserve,
    .set = bregman_set,
    .get = bregman_get,
    .check = bregman_check,
    .prepare = prepare,
    .term = bregman_term,
    .after_pieces = bregman_after_pieces,
    .after_update = bregman_after_update,
    .after_backend = bregman_after_backend,
    .commit = bregman_commit,
    .abandon = bregman_abandon,
    .state_size = bregman_state_size,
    .save = bregman_save,
    .check_state = bregman_check_state,
    .load = bregman_load,
    .averaged = bregman_averaged,
    .averaged_vec = bregman_averaged_vec,
    .ema = bregman_ema,
};
