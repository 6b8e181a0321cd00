/* bregman.c — SMART's momentum Bregman proximal point term (Jiang et al.,
 * ACL 2020, Eq. 3 and Alg. 1): keep the outputs close to those of a teacher
 * whose weights are an exponential moving average of the student's,
 *   D_Breg = mean_i l_s(f(x_i; w), sg(f(x_i; w~))),  w~ <- beta w~ + (1-beta) w.
 * The teacher's weights enter the host's buffers by an in-place swap, so the
 * library needs no second copy of the model beyond w~ itself. */
#include "internal.h"

#include <string.h>

void ro_bregman_defaults(ro_bregman *b)
{
    memset(b, 0, sizeof *b);
    b->mu = 1.0;
    b->beta = 0.99;
    b->beta_late = 0.999;
    b->sw = 0.1;
}

regopt_status ro_bregman_set(regopt_trainer *t, regopt_key key, double v)
{
    ro_bregman *b = &t->bregman;
    switch (key) {
    case REGOPT_BREGMAN_MU: b->mu = v; break;
    case REGOPT_BREGMAN_BETA: b->beta = v; break;
    case REGOPT_BREGMAN_BETA_LATE: b->beta_late = v; break;
    case REGOPT_BREGMAN_SWITCH: b->sw = v; break;
    default: break;
    }
    return REGOPT_OK;
}

double ro_bregman_get(const regopt_trainer *t, regopt_key key)
{
    const ro_bregman *b = &t->bregman;
    switch (key) {
    case REGOPT_BREGMAN_MU: return b->mu;
    case REGOPT_BREGMAN_BETA: return b->beta;
    case REGOPT_BREGMAN_BETA_LATE: return b->beta_late;
    case REGOPT_BREGMAN_SWITCH: return b->sw;
    default: return 0.0;
    }
}

regopt_status ro_bregman_add(regopt_trainer *t)
{
    ro_bregman *b = &t->bregman;
    b->teacher = ro_calloc(&t->alloc, t->model->n_trainable, sizeof(float));
    if (!b->teacher)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for the teacher's %zu weights", t->model->n_trainable);
    b->ready = 0;
    b->enabled = 1;
    return REGOPT_OK;
}

void ro_bregman_release(regopt_trainer *t)
{
    ro_bregman *b = &t->bregman;
    ro_free(&t->alloc, b->teacher);
    ro_free(&t->alloc, b->out);
    b->teacher = b->out = NULL;
    b->cap_out = 0;
    b->enabled = b->ready = 0;
}

/* GCC at -O2 vectorizes only loops whose trip count is a known multiple
 * of the vector width: blocks of BLOCK elements, then a scalar tail. */
#define BLOCK 16

static void swap_block(float *restrict a, float *restrict b)
{
    size_t j;
    for (j = 0; j < BLOCK; j++) {
        float x = a[j];
        a[j] = b[j];
        b[j] = x;
    }
}

static void swap_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    float *w = p->data + j0, *tw = ((const regopt_trainer *)ctx)->bregman.teacher + p->offset + j0;
    size_t n = j1 - j0, j;
    for (j = 0; j + BLOCK <= n; j += BLOCK)
        swap_block(w + j, tw + j);
    for (; j < n; j++) {
        float x = w[j];
        w[j] = tw[j];
        tw[j] = x;
    }
}

/* Exchange the host's weights and the teacher's, element by element: one
 * pass, no scratch, and doing it twice restores both bit for bit. Frozen
 * tensors are left alone: the teacher's copy would be identical. */
static void swap_weights(regopt_trainer *t) { ro_each_piece(t, swap_piece, t); }

static void copy_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const regopt_trainer *t = ctx;
    memcpy(t->bregman.teacher + p->offset + j0, p->data + j0, (j1 - j0) * sizeof(float));
}

static void copy_weights_to_teacher(regopt_trainer *t) { ro_each_piece(t, copy_piece, t); }

static size_t rows_before(const regopt_batch *b, size_t bi)
{
    size_t i, r = 0;
    for (i = 0; i < bi; i++)
        r += ro_batch_at(b, i)->rows;
    return r;
}

regopt_status ro_bregman_grow(regopt_trainer *t, size_t rows)
{
    ro_bregman *br = &t->bregman;
    float *o;
    if (rows <= br->cap_out)
        return REGOPT_OK;
    o = ro_calloc(&t->alloc, rows, t->model->output_width * sizeof(float));
    if (!o)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY,
                       "out of memory for the teacher's outputs (%zu rows)", rows);
    ro_free(&t->alloc, br->out);
    br->out = o;
    br->cap_out = rows;
    return REGOPT_OK;
}

regopt_status ro_bregman_teacher(regopt_trainer *t, const regopt_batch *b, size_t count)
{
    ro_bregman *br = &t->bregman;
    size_t k = t->model->output_width, rows = rows_before(b, count), bi, at = 0;
    regopt_status st = REGOPT_OK;
    if (!br->enabled)
        return REGOPT_OK;
    if (ro_bregman_grow(t, rows) != REGOPT_OK)
        return REGOPT_ERR_NO_MEMORY;
    /* the first step's teacher is the student itself; `ready` is set only
       when the step commits, so a failed first step starts over */
    if (!br->ready)
        copy_weights_to_teacher(t);
    swap_weights(t);
    for (bi = 0; bi < count && st == REGOPT_OK; bi++) {
        const regopt_batch *x = ro_batch_at(b, bi);
        regopt_pass p;
        ro_pass_init(t, &p, x, bi, REGOPT_PASS_TEACHER | REGOPT_PASS_NO_GRAD, 0);
        p.outputs = br->out + at * k;
        st = ro_call_forward(t, &p);
        at += x->rows;
    }
    swap_weights(t);
    return st;
}

double ro_bregman_term(const regopt_trainer *t, const regopt_batch *v, size_t bi, size_t r0,
                       const float *z, double inv_weight, float *dz)
{
    size_t i, k = t->model->output_width;
    const float *q = t->bregman.out + (rows_before(t->batches, bi) + r0) * k;
    float mu = (float)t->bregman.mu;
    double sum = 0.0;
    for (i = 0; i < v->rows; i++) {
        float rw = ro_row_weight(v, i), c = (float)(rw * inv_weight) * mu;
        if (rw == 0.0f)
            continue;
        /* l_s(f(x; w), sg(f(x; w~))): the teacher's side is detached */
        if (t->loss_kind == REGOPT_LOSS_MSE)
            sum += rw * ro_sq_diff_row(z + i * k, q + i * k, k, c, dz + i * k, NULL);
        else
            sum += rw * 2.0 * ro_sym_kl_row(z + i * k, q + i * k, k, 2.0f * c, dz + i * k, NULL);
    }
    return sum * inv_weight;
}

static void ema_block(float *restrict tw, const float *restrict w, float beta, float keep)
{
    size_t j;
    for (j = 0; j < BLOCK; j++)
        tw[j] = beta * tw[j] + keep * w[j];
}

typedef struct ema_job {
    const regopt_trainer *t;
    float beta, keep;
} ema_job;

static void ema_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const ema_job *e = ctx;
    float *tw = e->t->bregman.teacher + p->offset + j0;
    const float *w = p->data + j0;
    size_t n = j1 - j0, j;
    for (j = 0; j + BLOCK <= n; j += BLOCK)
        ema_block(tw + j, w + j, e->beta, e->keep);
    for (; j < n; j++)
        tw[j] = e->beta * tw[j] + e->keep * w[j];
}

void ro_bregman_update(regopt_trainer *t)
{
    ro_bregman *br = &t->bregman;
    int64_t total = t->opt->total_steps;
    int late = total > 0 && (double)t->step >= br->sw * (double)total;
    ema_job e;
    e.t = t;
    e.beta = (float)(late ? br->beta_late : br->beta);
    e.keep = (float)(1.0 - e.beta);
    ro_each_piece(t, ema_piece, &e);
    br->ready = 1;
    br->last_beta = e.beta;
}
