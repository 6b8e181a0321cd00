/* flatness.c — regopt_trainer_flatness: the request, its checks, the
 * probe's passes over the batches it is given, and the loops over the
 * trainable elements the measures share (sharpness.c: worst and average
 * case; hessian.c: top eigenvalue and trace). METHODS2.md, "Measuring
 * flatness"; include/regopt.h, "Measuring flatness".
 *
 * Like regopt_trainer_evaluate it changes no training state: every move of
 * the weights is w = w0 + delta from a saved copy w0, and the call ends
 * with w = w0 copied back (bit-exact, on failure too), so neither the
 * optimizer nor the step count nor the RNG position is ever touched. */
#include "trainer/trainer.h"

#include <math.h>
#include <string.h>

#define FLAT_MAX_COUNT 100000u
#define FLAT_SEED_ROLE 0x70u /* counter word 3 of the probe's stream seeds */

void regopt_flatness_request_init(regopt_flatness_request *r)
{
    if (!r)
        return;
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->measures = REGOPT_FLAT_ALL;
    r->norm = REGOPT_FLAT_NORM_L2;
    r->worst_iterations = 20;
    r->rho = 0.05;
    r->sigma = 0.01;
    r->average_samples = 20;
    r->eigen_iterations = 100;
    r->eigen_tolerance = 1e-3;
    r->trace_samples = 100;
    r->trace_tolerance = 1e-3;
    r->fd_scale = 4.921566601151848e-3; /* 2^(-23/3), cbrt(FLT_EPSILON) */
}

size_t regopt_sizeof_flatness_request(void) { return sizeof(regopt_flatness_request); }
size_t regopt_sizeof_flatness(void) { return sizeof(regopt_flatness); }

/* ---- the request --------------------------------------------------------- */

static regopt_status flat_range(regopt_trainer *t, const char *field, double v, double lo,
                                int lo_open, double hi)
{
    if (!isnan(v) && (lo_open ? v > lo : v >= lo) && v <= hi)
        return REGOPT_OK;
    return ro_fail(t->msg, REGOPT_ERR_OUT_OF_RANGE, "regopt_trainer_flatness: request.%s = "
                   "%g is out of range %c%g, %g]", field, v, lo_open ? '(' : '[', lo, hi);
}

static regopt_status flat_count(regopt_trainer *t, const char *field, uint32_t n)
{
    if (n >= 1 && n <= FLAT_MAX_COUNT)
        return REGOPT_OK;
    return ro_fail(t->msg, REGOPT_ERR_OUT_OF_RANGE, "regopt_trainer_flatness: request.%s = "
                   "%u is out of range [1, %u]", field, (unsigned)n, FLAT_MAX_COUNT);
}

/* The layout, the bits and the switches: REGOPT_ERR_INVALID_ARGUMENT. */
static regopt_status flat_check_shape(regopt_trainer *t, const regopt_flatness_request *r,
                                      const regopt_flatness *out)
{
    const char *why = NULL;
    if (r->size < sizeof *r)
        why = "request.size is smaller than regopt_sizeof_flatness_request()";
    else if (out->size < sizeof *out)
        why = "result.size is smaller than regopt_sizeof_flatness()";
    else if (r->measures == 0 || (r->measures & ~REGOPT_FLAT_ALL))
        why = "request.measures must be a non-empty set of REGOPT_FLAT_* bits";
    else if (r->norm != REGOPT_FLAT_NORM_L2 && r->norm != REGOPT_FLAT_NORM_INF)
        why = "request.norm must be REGOPT_FLAT_NORM_L2 or REGOPT_FLAT_NORM_INF";
    else if (r->adaptive != 0 && r->adaptive != 1)
        why = "request.adaptive must be 0 or 1";
    else if (r->reserved0 != 0)
        why = "request.reserved0 must be 0";
    if (why)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT, "regopt_trainer_flatness: %s",
                       why);
    return REGOPT_OK;
}

/* Values (REGOPT_ERR_OUT_OF_RANGE), those of the measures asked for. */
static regopt_status flat_check_values(regopt_trainer *t, const regopt_flatness_request *r)
{
    uint32_t m = r->measures;
    regopt_status st = flat_range(t, "fd_scale", r->fd_scale, 0.0, 1, 1.0);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_WORST_CASE))
        st = flat_range(t, "rho", r->rho, 0.0, 1, 1e3);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_WORST_CASE))
        st = flat_count(t, "worst_iterations", r->worst_iterations);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_AVERAGE_CASE))
        st = flat_range(t, "sigma", r->sigma, 0.0, 1, 1e3);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_AVERAGE_CASE))
        st = flat_count(t, "average_samples", r->average_samples);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_EIGENVALUE))
        st = flat_count(t, "eigen_iterations", r->eigen_iterations);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_EIGENVALUE))
        st = flat_range(t, "eigen_tolerance", r->eigen_tolerance, 0.0, 0, 1.0);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_TRACE))
        st = flat_count(t, "trace_samples", r->trace_samples);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_TRACE))
        st = flat_range(t, "trace_tolerance", r->trace_tolerance, 0.0, 0, 1.0);
    return st;
}

/* ---- scratch: w0 and the work vectors ------------------------------------ */

static size_t flat_vectors_needed(uint32_t m)
{
    if (m & REGOPT_FLAT_WORST_CASE)
        return 4; /* w0, delta_k, delta_{k-1}, the best delta */
    if (m & REGOPT_FLAT_EIGENVALUE)
        return 3; /* w0, v, H v */
    if (m & REGOPT_FLAT_TRACE)
        return 2; /* w0, g(w + h v) */
    return 1;
}

void ro_flat_release(regopt_trainer *t)
{
    ro_free(&t->alloc, t->flat);
    t->flat = NULL;
    t->flat_vectors = 0;
}

/* Grown on first use, then kept: a failure keeps the old scratch. */
static regopt_status flat_scratch(regopt_trainer *t, size_t vectors)
{
    size_t n = t->model->n_trainable;
    float *p;
    if (t->flat_vectors >= vectors)
        return REGOPT_OK;
    p = ro_calloc(&t->alloc, vectors * n, sizeof(float));
    if (!p)
        return ro_fail(t->msg, REGOPT_ERR_NO_MEMORY, "regopt_trainer_flatness: out of memory "
                       "for %zu x %zu floats of scratch", vectors, n);
    ro_free(&t->alloc, t->flat);
    t->flat = p;
    t->flat_vectors = vectors;
    return REGOPT_OK;
}

/* ---- loops over the trainable elements ----------------------------------- */

typedef struct flat_op {
    ro_flat *f;
    float *dst;
    const float *x, *y;
    float c;
} flat_op;

static void flat_save_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const flat_op *o = ctx;
    memcpy(o->f->w0 + p->offset + j0, p->data + j0, (j1 - j0) * sizeof(float));
}

static void flat_restore_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const flat_op *o = ctx;
    memcpy(p->data + j0, o->f->w0 + p->offset + j0, (j1 - j0) * sizeof(float));
}

void ro_flat_restore(ro_flat *f)
{
    flat_op o = {f, NULL, NULL, NULL, 0.0f};
    ro_each_piece(f->t->env.par, flat_restore_piece, &o);
    f->moved = 0;
}

static void flat_move_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const flat_op *o = ctx;
    const float *w0 = o->f->w0 + p->offset, *d = o->x + p->offset;
    size_t j;
    for (j = j0; j < j1; j++)
        p->data[j] = w0[j] + o->c * d[j];
}

void ro_flat_move(ro_flat *f, const float *delta, float scale)
{
    flat_op o = {f, NULL, delta, NULL, scale};
    ro_each_piece(f->t->env.par, flat_move_piece, &o);
    f->moved = 1;
}

static void flat_copy_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const flat_op *o = ctx;
    const float *src = o->x ? o->x + p->offset + j0 : p->grad + j0;
    memcpy(o->dst + p->offset + j0, src, (j1 - j0) * sizeof(float));
}

void ro_flat_copy(ro_flat *f, float *dst, const float *src)
{
    flat_op o = {f, dst, src, NULL, 0.0f};
    ro_each_piece(f->t->env.par, flat_copy_piece, &o);
}

static double flat_dot_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    const flat_op *o = ctx;
    const float *x = o->x ? o->x + p->offset : p->grad, *y = o->y ? o->y + p->offset : p->grad;
    double s = 0.0;
    size_t j;
    for (j = j0; j < j1; j++)
        s += (double)x[j] * y[j];
    return s;
}

/* Summed chunk by chunk in a fixed order: identical bits on any thread count. */
double ro_flat_dot(ro_flat *f, const float *x, const float *y)
{
    flat_op o = {f, NULL, x, y, 0.0f};
    return ro_sum_pieces(f->t->env.par, flat_dot_piece, &o);
}

uint64_t ro_flat_seed(const ro_flat *f, uint32_t measure, uint64_t index)
{
    return ro_pass_seed(f->rq->seed, index, measure, FLAT_SEED_ROLE);
}

/* ---- the passes ---------------------------------------------------------- */

static uint32_t flat_flags(const ro_flat *f)
{
    return REGOPT_PASS_PROBE | (f->moved ? REGOPT_PASS_PERTURBED_WEIGHTS : 0u);
}

static regopt_status flat_finite(ro_flat *f, double loss)
{
    if (isfinite(loss))
        return REGOPT_OK;
    return ro_fail(f->t->msg, REGOPT_ERR_NONFINITE_LOSS, "regopt_trainer_flatness: the loss "
                   "is %g %s", loss, f->moved ? "at a perturbed point" : "at w");
}

regopt_status ro_flat_loss(ro_flat *f, double *loss)
{
    regopt_trainer *t = f->t;
    regopt_status st = REGOPT_OK;
    double sum = 0.0;
    size_t bi;
    for (bi = 0; bi < f->count && st == REGOPT_OK; bi++) {
        const regopt_batch *b = ro_batch_at(f->batches, bi);
        regopt_pass p;
        double l = 0.0;
        ro_pass_init(&t->env, &p, b, bi, flat_flags(f) | REGOPT_PASS_NO_GRAD, 0, t->outputs);
        st = ro_call_forward(&t->env, &p);
        if (st == REGOPT_OK)
            st = ro_batch_loss(&t->env, b, t->outputs, f->inv_weight, 1.0, NULL, &l);
        sum += l;
    }
    if (st == REGOPT_OK)
        st = flat_finite(f, sum);
    *loss = sum;
    return st;
}

static void flat_zero_piece(void *ctx, const ro_param *p, size_t j0, size_t j1)
{
    (void)ctx;
    ro_zero(p->grad + j0, j1 - j0);
}

regopt_status ro_flat_gradient(ro_flat *f, double *loss)
{
    regopt_trainer *t = f->t;
    regopt_status st = REGOPT_OK;
    double sum = 0.0;
    size_t bi;
    ro_each_piece(t->env.par, flat_zero_piece, NULL);
    for (bi = 0; bi < f->count && st == REGOPT_OK; bi++) {
        const regopt_batch *b = ro_batch_at(f->batches, bi);
        regopt_pass p;
        double l = 0.0;
        ro_pass_init(&t->env, &p, b, bi, flat_flags(f), 0, t->outputs);
        st = ro_call_forward(&t->env, &p);
        if (st == REGOPT_OK)
            st = ro_batch_loss(&t->env, b, t->outputs, f->inv_weight, 1.0, t->d_outputs, &l);
        sum += l;
        if (st == REGOPT_OK && !isfinite(l))
            st = flat_finite(f, l);
        p.d_outputs = t->d_outputs;
        if (st == REGOPT_OK)
            st = ro_call_backward(&t->env, &p);
    }
    *loss = sum;
    return st;
}

/* ---- the call ------------------------------------------------------------ */

/* regopt_trainer_recover after a callback that never returned: w back from
 * the scratch (the call's own frame is gone). */
static void flat_undo(regopt_trainer *t, void *ctx)
{
    ro_flat f;
    (void)ctx;
    memset(&f, 0, sizeof f);
    f.t = t;
    f.w0 = t->flat;
    ro_flat_restore(&f);
}

static regopt_status flat_begin(regopt_trainer *t, const regopt_batch *b, size_t count,
                                const regopt_flatness_request *rq, regopt_flatness *out,
                                double *weight)
{
    size_t rows = 0, in_rows = 0, i;
    regopt_status st;
    if (!b || !rq || !out)
        return ro_fail(t->msg, REGOPT_ERR_NULL_POINTER, "regopt_trainer_flatness: %s is NULL",
                       !b ? "batches" : !rq ? "request" : "result");
    if (count == 0)
        return ro_fail(t->msg, REGOPT_ERR_INVALID_ARGUMENT,
                       "regopt_trainer_flatness: count is 0 (give at least one batch)");
    st = flat_check_shape(t, rq, out);
    if (st == REGOPT_OK)
        st = flat_check_values(t, rq);
    if (st == REGOPT_OK && t->env.loss_kind == REGOPT_LOSS_CALLBACK && !t->env.loss_fn)
        st = ro_fail(t->msg, REGOPT_ERR_STATE, "the loss is a callback but none is set");
    if (st == REGOPT_OK)
        st = ro_batches_check(b, count, t->model, t->env.loss_kind,
                              t->env.loss_kind != REGOPT_LOSS_CALLBACK, 0, weight, &rows,
                              t->msg);
    for (i = 0; st == REGOPT_OK && i < count; i++) {
        size_t r = ro_input_rows(ro_batch_at(b, i));
        in_rows = r > in_rows ? r : in_rows;
    }
    if (st == REGOPT_OK && (rows > t->reserved || in_rows > t->reserved_in))
        st = ro_trainer_reserve_all(t, rows > t->reserved ? rows : t->reserved,
                                    in_rows > t->reserved_in ? in_rows : t->reserved_in);
    if (st == REGOPT_OK)
        st = flat_scratch(t, flat_vectors_needed(rq->measures));
    return st;
}

/* The measures in a fixed order, each from w0. */
static regopt_status flat_measure(ro_flat *f)
{
    uint32_t m = f->rq->measures;
    regopt_status st = ro_flat_loss(f, &f->res->loss);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_WORST_CASE))
        st = ro_flat_worst(f);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_AVERAGE_CASE))
        st = ro_flat_average(f);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_EIGENVALUE))
        st = ro_flat_eigen(f);
    if (st == REGOPT_OK && (m & REGOPT_FLAT_TRACE))
        st = ro_flat_trace(f);
    return st;
}

static regopt_status flat_run(regopt_trainer *t, const regopt_batch *b, size_t count,
                              const regopt_flatness_request *rq, regopt_flatness *out)
{
    size_t n = t->model->n_trainable, fwd = t->env.forward_calls, bwd = t->env.backward_calls;
    size_t i;
    double weight = 0.0;
    regopt_flatness res;
    ro_flat f;
    flat_op o;
    regopt_status st = flat_begin(t, b, count, rq, out, &weight);
    if (st != REGOPT_OK)
        return st;
    memset(&f, 0, sizeof f);
    memset(&res, 0, sizeof res);
    f.t = t;
    f.batches = b;
    f.count = count;
    f.inv_weight = 1.0 / weight; /* > 0: ro_batches_check refuses a zero total */
    f.rq = rq;
    f.res = &res;
    f.w0 = t->flat;
    for (i = 0; i < 3; i++)
        f.vec[i] = t->flat_vectors > i + 1 ? t->flat + (i + 1) * n : NULL;
    o.f = &f;
    ro_each_piece(t->env.par, flat_save_piece, &o);
    ro_trainer_push_undo(t, flat_undo, NULL);
    t->env.forward_calls = t->env.backward_calls = 0;
    st = flat_measure(&f);
    ro_flat_restore(&f); /* whatever happened: w by copy */
    ro_trainer_pop_undo(t);
    res.forward_calls = t->env.forward_calls;
    res.backward_calls = t->env.backward_calls;
    t->env.forward_calls = fwd;
    t->env.backward_calls = bwd;
    if (st != REGOPT_OK)
        return st;
    res.size = out->size;
    memcpy(out, &res, sizeof res);
    return REGOPT_OK;
}

/* Half tensors: the host's buffers hold round(w) again afterwards (the
 * last pass may have seen moved weights). */
static regopt_status flat_call(regopt_trainer *t, const regopt_batch *batches, size_t count,
                               const regopt_flatness_request *request,
                               regopt_flatness *result)
{
    regopt_status st;
    if (t->model->has_backend)
        return ro_backend_refuse(t->msg, "regopt_trainer_flatness");
    st = flat_run(t, batches, count, request, result);
    ro_model_publish(&t->env);
    return st;
}

regopt_status regopt_trainer_flatness(regopt_trainer *t, const regopt_batch *batches,
                                      size_t count, const regopt_flatness_request *request,
                                      regopt_flatness *result)
{
    RO_GUARDED(t, "regopt_trainer_flatness",
               flat_call(t, batches, count, request, result));
}
