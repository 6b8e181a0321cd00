/* parallel.c — the library's loops over every trainable element, run on
 * the trainer's threads (REGOPT_TRAINER_THREADS).
 *
 * The trainable elements are cut into chunks of RO_CHUNK elements, counted
 * from the start of each tensor (a tensor's last chunk may be short), and
 * each thread takes a contiguous run of chunks. Because every piece starts
 * at a multiple of RO_CHUNK inside its tensor, the vector kernels see the
 * same lane groups and tails as on one thread: elementwise loops give the
 * same bits on any number of threads. Sums are formed chunk by chunk and the
 * chunk sums added in order on the calling thread, so they too are the
 * same on any number of threads. */
#include "model/model.h"

typedef struct job {
    const ro_par *t;
    ro_piece_fn piece; /* elementwise: once per piece */
    ro_sum_fn sum;     /* or a sum: once per chunk, into t->chunk_sum */
    void *ctx;
} job;

static size_t chunks_of(size_t count) { return (count + RO_CHUNK - 1) / RO_CHUNK; }

/* Run the job on chunks [c0, c1). */
static void run_chunks(const job *jb, size_t c0, size_t c1)
{
    const ro_par *t = jb->t;
    const regopt_model *m = t->model;
    size_t i;
    for (i = 0; i < m->n_params; i++) {
        const ro_param *p = &m->params[i];
        size_t k0 = t->chunk0[i], lo, hi, k;
        if (!p->grad)
            continue;
        if (k0 >= c1)
            break;
        lo = c0 > k0 ? c0 : k0;
        hi = k0 + chunks_of(p->count);
        hi = hi < c1 ? hi : c1;
        if (lo >= hi)
            continue;
        if (jb->piece) {
            size_t j1 = (hi - k0) * RO_CHUNK;
            jb->piece(jb->ctx, p, (lo - k0) * RO_CHUNK, j1 < p->count ? j1 : p->count);
            continue;
        }
        for (k = lo; k < hi; k++) {
            size_t j0 = (k - k0) * RO_CHUNK, j1 = j0 + RO_CHUNK;
            t->chunk_sum[k] = jb->sum(jb->ctx, p, j0, j1 < p->count ? j1 : p->count);
        }
    }
}

static void run_part(void *ctx, unsigned part, unsigned parts)
{
    const job *jb = ctx;
    size_t n = jb->t->n_chunks;
    run_chunks(jb, n * part / parts, n * (part + 1) / parts);
}

/* Threads pay off only when every one gets a few chunks. */
static int parallel(const ro_par *t)
{
    return t->pool && t->model->n_trainable >= RO_PAR_MIN;
}

void ro_each_piece(const ro_par *t, ro_piece_fn fn, void *ctx)
{
    job jb;
    jb.t = t;
    jb.piece = fn;
    jb.sum = NULL;
    jb.ctx = ctx;
    if (parallel(t)) {
        ro_pool_run(t->pool, run_part, &jb);
        return;
    }
    {
        const regopt_model *m = t->model;
        size_t i;
        for (i = 0; i < m->n_params; i++)
            if (m->params[i].grad)
                fn(ctx, &m->params[i], 0, m->params[i].count);
    }
}

double ro_sum_pieces(const ro_par *t, ro_sum_fn fn, void *ctx)
{
    job jb;
    double s = 0.0;
    size_t k;
    jb.t = t;
    jb.piece = NULL;
    jb.sum = fn;
    jb.ctx = ctx;
    if (parallel(t))
        ro_pool_run(t->pool, run_part, &jb);
    else
        run_chunks(&jb, 0, t->n_chunks);
    for (k = 0; k < t->n_chunks; k++)
        s += t->chunk_sum[k];
    return s;
}

/* The chunk table of the trainer's model: first chunk of every tensor and
 * room for one sum per chunk. The model's tensors are fixed once a trainer
 * is bound to it. */
regopt_status ro_parallel_init(ro_par *t, const ro_alloc *a, const regopt_model *m)
{
    size_t i, k = 0;
    t->model = m;
    t->alloc = a;
    t->chunk0 = ro_calloc(t->alloc, m->n_params, sizeof *t->chunk0);
    if (!t->chunk0)
        return REGOPT_ERR_NO_MEMORY;
    for (i = 0; i < m->n_params; i++) {
        t->chunk0[i] = k;
        if (m->params[i].grad)
            k += chunks_of(m->params[i].count);
    }
    t->n_chunks = k;
    t->chunk_sum = ro_calloc(t->alloc, k ? k : 1, sizeof *t->chunk_sum);
    if (!t->chunk_sum) {
        ro_free(t->alloc, t->chunk0);
        t->chunk0 = NULL;
        return REGOPT_ERR_NO_MEMORY;
    }
    t->threads = 1;
    return REGOPT_OK;
}

void ro_parallel_release(ro_par *t)
{
    ro_pool_free(t->pool);
    t->pool = NULL;
    ro_free(t->alloc, t->chunk_sum);
    ro_free(t->alloc, t->chunk0);
    t->chunk_sum = NULL;
    t->chunk0 = NULL;
}

/* REGOPT_TRAINER_THREADS: the old pool stays until the new one exists, so
 * a failure changes nothing. */
regopt_status ro_parallel_set_threads(ro_par *t, unsigned threads, char *msg)
{
    ro_pool *p = NULL;
    if (threads == t->threads)
        return REGOPT_OK;
    if (threads > 1) {
        p = ro_pool_create(t->alloc, threads);
        if (!p)
            return ro_fail(msg, REGOPT_ERR_NO_MEMORY,
                           "cannot start %u threads for \"trainer.threads\"", threads);
    }
    ro_pool_free(t->pool);
    t->pool = p;
    t->threads = threads;
    return REGOPT_OK;
}
