/* pool.c — the trainer's worker threads (REGOPT_TRAINER_THREADS).
 *
 * The library's own loops are memory-bound, and one core does not saturate
 * the memory system: on the 2-core machine the benchmarks run on, an AdamW
 * update streams 35 GB/s from one core and 67 GB/s from two. The pool runs
 * a job as `parts` pieces, piece 0 on the calling thread and one on each
 * worker; the job's code decides what a piece is (parallel.c splits the
 * parameters at fixed chunk boundaries, so results do not depend on the
 * number of threads).
 *
 * Workers are created when the option is set, never during a step, and
 * never call the host: callbacks, allocator hooks and the all-reduce stay on
 * the caller's thread. Between jobs a worker spins for a few microseconds
 * (the library's passes come in bursts: norm, perturb, restore, update) and
 * then sleeps on a condition variable, so an idle pool costs no CPU while
 * the host computes.
 *
 * After fork() only the forking thread exists in the child: the pool's
 * workers are gone and its mutex may be held by one of them. A pool used
 * in another process than the one that created it therefore runs every
 * part on the calling thread (the parts are independent and their results
 * do not depend on the thread that computes them, so the bits are the
 * same), and is freed without joining anyone. */
#define _XOPEN_SOURCE 700 /* getpid; the same value as checkpoint_file.c */
#include "core/core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RO_RELAX() _mm_pause()
#else
#define RO_RELAX() ((void)0)
#endif

/* Spin iterations before sleeping: ~5-20 us of PAUSE on current x86. */
#define RO_SPIN 4000

struct ro_pool {
    ro_alloc alloc;
    pid_t pid;             /* the process whose threads these are */
    unsigned parts;        /* threads, the caller included */
    pthread_t *tid;        /* parts - 1 workers */
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    atomic_uint generation; /* bumped once per job */
    atomic_uint pending;    /* workers still running the current job */
    atomic_int quit;
    ro_task_fn fn;          /* the current job, published by `generation` */
    void *ctx;
};

typedef struct worker_arg {
    ro_pool *pool;
    unsigned part;
} worker_arg;

static unsigned wait_for_job(ro_pool *p, unsigned seen)
{
    unsigned g;
    int spin;
    for (spin = 0; spin < RO_SPIN; spin++) {
        g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&p->quit, memory_order_relaxed))
            return g;
        RO_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&p->quit, memory_order_relaxed))
        pthread_cond_wait(&p->work, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker(void *arg)
{
    ro_pool *p = ((worker_arg *)arg)->pool;
    unsigned part = ((worker_arg *)arg)->part, seen = 0;
    for (;;) {
        seen = wait_for_job(p, seen);
        if (atomic_load_explicit(&p->quit, memory_order_acquire))
            return NULL;
        p->fn(p->ctx, part, p->parts);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

void ro_pool_run(ro_pool *p, ro_task_fn fn, void *ctx)
{
    int spin;
    unsigned part;
    if (getpid() != p->pid) { /* a forked child: no workers here */
        for (part = 0; part < p->parts; part++)
            fn(ctx, part, p->parts);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->pending, p->parts - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->parts);
    for (spin = 0; spin < RO_SPIN; spin++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0)
            return;
        RO_RELAX();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Stop and join the first `started` workers, then free everything. */
static void pool_destroy(ro_pool *p, unsigned started)
{
    unsigned i;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->quit, 1, memory_order_release);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < started; i++)
        pthread_join(p->tid[i], NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->mu);
    ro_free(&p->alloc, p->tid);
    ro_free(&p->alloc, p);
}

void ro_pool_free(ro_pool *p)
{
    if (!p)
        return;
    if (getpid() != p->pid) { /* a forked child: nobody to stop or join */
        ro_free(&p->alloc, p->tid);
        ro_free(&p->alloc, p);
        return;
    }
    pool_destroy(p, p->parts - 1);
}

/* A pool of `parts` threads (parts >= 2); NULL when memory or a thread
 * cannot be had, with nothing left behind. */
ro_pool *ro_pool_create(const ro_alloc *a, unsigned parts)
{
    ro_pool *p = ro_calloc(a, 1, sizeof *p);
    worker_arg *args;
    unsigned i;
    if (!p)
        return NULL;
    p->alloc = *a;
    p->pid = getpid();
    p->parts = parts;
    /* one block: the thread ids, then each worker's argument */
    p->tid = ro_calloc(a, parts - 1, sizeof(pthread_t) + sizeof(worker_arg));
    if (!p->tid) {
        ro_free(a, p);
        return NULL;
    }
    args = (worker_arg *)(p->tid + (parts - 1));
    atomic_init(&p->generation, 0u);
    atomic_init(&p->pending, 0u);
    atomic_init(&p->quit, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0 || pthread_cond_init(&p->work, NULL) != 0 ||
        pthread_cond_init(&p->done, NULL) != 0) {
        /* glibc's initialisers cannot fail; others might, and leak here */
        ro_free(a, p->tid);
        ro_free(a, p);
        return NULL;
    }
    for (i = 0; i + 1 < parts; i++) {
        args[i].pool = p;
        args[i].part = i + 1;
        if (pthread_create(&p->tid[i], NULL, worker, &args[i]) != 0) {
            pool_destroy(p, i);
            return NULL;
        }
    }
    return p;
}
