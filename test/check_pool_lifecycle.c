/* check_pool_lifecycle.c — the "lifecycle" case of suite pool: callbacks on
 * the calling thread, no allocation in steps, a failed pool, rollback of a
 * failed step, checkpoints that do not carry the option, changing the
 * thread count between steps, and workers joined at free (the rig:
 * pool_rig.h, pool_os.h). */
#define _POSIX_C_SOURCE 200809L /* pthreads, nanosleep under -std=c11 */
#include "tests.h"

#include "pool_rig.h"
#include "pool_os.h"

/* ======================================================================== */
/* 3. Callbacks run on the thread that called                               */
/* ======================================================================== */

typedef struct pl_stepper {
    pl_run *r;
    int first, steps;
    regopt_status st;
    int failed_step;
} pl_stepper;

static void *pl_step_thread(void *arg)
{
    pl_stepper *s = arg;
    int i;
    s->r->h.owner = pthread_self();
    s->st = REGOPT_OK;
    s->failed_step = -1;
    for (i = 0; i < s->steps && s->st == REGOPT_OK; i++) {
        s->st = pl_step(s->r, s->first + i);
        if (s->st != REGOPT_OK)
            s->failed_step = s->first + i;
    }
    return NULL;
}

START_TEST(callbacks_on_the_calling_thread)
{
    pl_cfg c = cfg_everything;
    pl_run *r;
    pl_stepper job;
    pthread_t th;
    int i, w, base = pl_os_base();
    double loss = 0;
    float out[PL_ROWS * PL_K];
    static const char *what[W_N] = {"forward", "backward", "loss", "all-reduce", "write",
                                    "allocator"};
    r = pl_open(&c, NULL, 1);
    r->h.owner = pthread_self();
    r->h.watch = 1;
    TMUST(r->t, regopt_trainer_set_loss_callback(r->t, pl_loss, &r->h, NULL));
    TMUST(r->t, regopt_trainer_set_allreduce(r->t, pl_allreduce, &r->h, NULL));
    /* a method key is the regularizer's: the trainer no longer takes it */
    ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_SAM_SYNC_ASCENT, 1),
                     REGOPT_ERR_UNKNOWN_KEY);
    RMUST(r->sam, regopt_regularizer_set_int(r->sam, REGOPT_SAM_SYNC_ASCENT, 1));
    pl_threads(r, 4);
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base + 3), base + 3);

    /* on the test's thread */
    for (i = 0; i < 3; i++)
        pl_must_step(r, i);
    pl_fill(&r->data[0], &r->b[0], 9, 0);
    TMUST(r->t, regopt_trainer_evaluate(r->t, &r->b[0], &loss, out));
    TMUST(r->t, regopt_trainer_save(r->t, PL_ALL, pl_write, &r->h));

    /* on another thread (one at a time: the handle is never shared) */
    memset(&job, 0, sizeof job);
    job.r = r;
    job.first = 3;
    job.steps = 3;
    ck_assert_int_eq(pthread_create(&th, NULL, pl_step_thread, &job), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(job.st == REGOPT_OK, "step %d in a thread: %s: %s", job.failed_step,
                  regopt_status_string(job.st), regopt_trainer_message(r->t));
    r->h.owner = pthread_self();

    for (w = 0; w < W_N; w++) {
        if (w != W_ALLOC) /* the allocator may have nothing left to do */
            ck_assert_msg(r->h.calls[w] > 0, "no %s call", what[w]);
        ck_assert_msg(r->h.foreign[w] == 0, "%ld of %ld %s calls on another thread",
                      r->h.foreign[w], r->h.calls[w], what[w]);
    }
    ck_assert_int_eq(r->h.bad, 0);
    /* the allocator: setting the option is where the pool is made */
    r->h.calls[W_ALLOC] = 0;
    pl_threads(r, 3);
    ck_assert_msg(r->h.calls[W_ALLOC] > 0, "setting trainer.threads allocated nothing");
    ck_assert_int_eq(r->h.foreign[W_ALLOC], 0);
    r->h.watch = 0;
    pl_close(r);
}
END_TEST

/* ======================================================================== */
/* 4. Allocation                                                            */
/* ======================================================================== */

START_TEST(no_allocation_in_steps)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    pl_cfg cfg = cfg_everything;
    pl_run *r = pl_open(&cfg, &a, 0);
    long before, frees;
    int i, base = pl_os_base();

    before = c.allocs;
    pl_threads(r, 2);
    ck_assert_msg(c.allocs > before, "the pool is not allocated when the option is set");
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    pl_must_step(r, 0);
    before = c.allocs;
    for (i = 1; i < 8; i++)
        pl_must_step(r, i);
    ck_assert_int_eq(c.allocs, before);

    /* the same value: nothing; fewer threads: the pool goes, nothing new */
    pl_threads(r, 2);
    ck_assert_int_eq(c.allocs, before);
    frees = c.frees;
    pl_threads(r, 1);
    ck_assert_int_eq(c.allocs, before);
    ck_assert_msg(c.frees > frees, "the pool was not freed when set back to 1");
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base), base);
    pl_threads(r, 3);
    ck_assert(c.allocs > before);
    before = c.allocs;
    for (i = 8; i < 11; i++)
        pl_must_step(r, i);
    ck_assert_int_eq(c.allocs, before);

    pl_close(r);
    ck_assert_int_eq(c.allocs, c.frees);
    if (base > 0)
        ck_assert_int_eq(pl_os_threads_settle(base), base);
}
END_TEST

/* A pool that cannot be made (either of its allocations fails): the old
 * setting and its threads stay, and the run goes on as if nothing was
 * tried. */
START_TEST(failed_pool_changes_nothing)
{
    counting c = {0, 0, 0};
    regopt_allocator a = COUNTING_ALLOCATOR(&c);
    pl_run *r = pl_open(&cfg_sam, &a, 0), *ref = pl_open(&cfg_sam, NULL, 0);
    pl_snap s1, s2;
    int64_t v = 0;
    int i, k, base = pl_os_base();
    pl_threads(r, 2);
    pl_must_step(r, 0);
    pl_must_step(ref, 0);
    for (k = 1; k <= 2; k++) {
        c.fail_at = c.allocs + k;
        ck_assert_int_eq(regopt_trainer_set_int(r->t, REGOPT_TRAINER_THREADS, 5),
                         REGOPT_ERR_NO_MEMORY);
        ck_assert_msg(strstr(regopt_trainer_message(r->t), "trainer.threads") != NULL, "\"%s\"",
                      regopt_trainer_message(r->t));
        ck_assert_int_eq(c.allocs, c.fail_at); /* the failing one was the last tried */
        c.fail_at = 0;
        MUST(regopt_trainer_get_int(r->t, REGOPT_TRAINER_THREADS, &v));
        ck_assert_int_eq(v, 2);
        if (base > 0)
            ck_assert_int_eq(pl_os_threads_settle(base + 1), base + 1);
    }
    for (i = 1; i < 4; i++) {
        pl_must_step(r, i);
        pl_must_step(ref, i);
    }
    pl_take(r, &s1);
    pl_take(ref, &s2);
    pl_same(&s1, &s2, "after two failed sets", 0);
    pl_drop(&s1);
    pl_drop(&s2);
    pl_close(r);
    pl_close(ref);
    ck_assert_int_eq(c.allocs - 2, c.frees); /* two allocations returned NULL */
}
END_TEST

/* ======================================================================== */
/* 5. A failed step changes nothing                                         */
/* ======================================================================== */

enum pl_fault { F_BACKWARD, F_NAN, F_FORWARD };

/* Where a fault's call number `at` counts from: the step's first call, the
 * first call of SAM's perturbed half (the second half of the step's calls),
 * or back from the step's last call (at = 0: the last). */
enum pl_from { FROM_START, FROM_PERTURBED, FROM_END };

/* Train 2 steps on `threads` threads, fail step 3 with the fault injected
 * at the call given by at and from, and check that parameters, moments,
 * teacher, step count and statistics are as before, then that the run goes
 * on bit for bit as a one-thread run that never failed. */
static void pl_rollback(const pl_cfg *c, int threads, enum pl_fault f, enum pl_from from,
                        int at, regopt_status want, const char *words)
{
    pl_run *bad = pl_open(c, NULL, 0), *good = pl_open(c, NULL, 0);
    pl_snap before, after;
    int i, per, n;
    pl_threads(bad, threads);
    for (i = 0; i < 2; i++) {
        pl_must_step(bad, i);
        pl_must_step(good, i);
    }
    /* the callbacks of one step, counted on the run that does not fail */
    per = (f == F_FORWARD ? good->h.forwards : good->h.backwards) / 2;
    n = from == FROM_START ? at : from == FROM_PERTURBED ? per / 2 + at : per - at;
    ck_assert_msg(n >= 1 && n <= per, "call %d of %d", n, per);
    pl_take(bad, &before);
    switch (f) {
    case F_BACKWARD: bad->h.fail_backward = bad->h.backwards + n; break;
    case F_NAN: bad->h.nan_grad = bad->h.backwards + n; break;
    case F_FORWARD: bad->h.fail_forward = bad->h.forwards + n; break;
    }
    ck_assert_int_eq(pl_step(bad, 2), want);
    ck_assert_msg(strstr(regopt_trainer_message(bad->t), words) != NULL,
                  "message \"%s\" lacks \"%s\"", regopt_trainer_message(bad->t), words);
    pl_take(bad, &after);
    pl_same(&before, &after, "state after a failed step", n);
    pl_drop(&before);
    pl_drop(&after);
    bad->h.fail_backward = bad->h.nan_grad = bad->h.fail_forward = 0;
    for (i = 2; i < 5; i++) {
        pl_must_step(bad, i);
        pl_must_step(good, i);
    }
    pl_take(bad, &before);
    pl_take(good, &after);
    pl_same(&before, &after, "resumed after a failure, against a one-thread run", n);
    pl_drop(&before);
    pl_drop(&after);
    pl_close(bad);
    pl_close(good);
}

START_TEST(rollback_backward_failure)
{
    /* SAM: clean backwards 1, 2, then perturbed 3, 4: fail at w + eps */
    pl_rollback(&cfg_sam, 2, F_BACKWARD, FROM_PERTURBED, 1, REGOPT_ERR_BACKWARD,
                "backward callback returned 9");
    pl_rollback(&cfg_sam, 2, F_BACKWARD, FROM_START, 1, REGOPT_ERR_BACKWARD, "returned 9");
    pl_rollback(&cfg_adamw, 2, F_BACKWARD, FROM_END, 0, REGOPT_ERR_BACKWARD, "returned 9");
    pl_rollback(&cfg_sgd_nesterov, 3, F_BACKWARD, FROM_END, 0, REGOPT_ERR_BACKWARD,
                "returned 9");
    pl_rollback(&cfg_asam, 2, F_BACKWARD, FROM_END, 0, REGOPT_ERR_BACKWARD, "returned 9");
}
END_TEST

START_TEST(rollback_nonfinite_gradient)
{
    /* a NaN in the second chunk of the last tensor, a worker's part */
    pl_rollback(&cfg_adamw, 2, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT, "\"mid\"");
    pl_rollback(&cfg_sgd_nesterov, 2, F_NAN, FROM_START, 1, REGOPT_ERR_NONFINITE_GRADIENT,
                "\"mid\"");
    /* in SAM's perturbed gradient; in GSAM's clean (ascent) gradient */
    pl_rollback(&cfg_sam, 2, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT, "\"mid\"");
    pl_rollback(&cfg_gsam, 2, F_NAN, FROM_START, 2, REGOPT_ERR_NONFINITE_GRADIENT,
                "not finite");
}
END_TEST

START_TEST(rollback_teacher_and_smart_failure)
{
    /* the teacher's forward (the step's first): the teacher's weights are in
       the buffers when it fails; then a clean forward after the swap back */
    pl_rollback(&cfg_smart_bregman, 2, F_FORWARD, FROM_START, 1, REGOPT_ERR_FORWARD,
                "forward callback returned 7");
    pl_rollback(&cfg_smart_bregman, 2, F_FORWARD, FROM_START, 4, REGOPT_ERR_FORWARD,
                "returned 7");
    pl_rollback(&cfg_smart_bregman, 2, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT,
                "\"mid\"");
    /* everything: failures in SAM's perturbed half, at w + eps */
    pl_rollback(&cfg_everything, 2, F_BACKWARD, FROM_PERTURBED, 1, REGOPT_ERR_BACKWARD,
                "returned 9");
    pl_rollback(&cfg_everything, 3, F_NAN, FROM_END, 0, REGOPT_ERR_NONFINITE_GRADIENT,
                "not finite");
    pl_rollback(&cfg_everything, 2, F_FORWARD, FROM_END, 0, REGOPT_ERR_FORWARD, "returned 7");
}
END_TEST

/* ======================================================================== */
/* 6. Checkpoints do not carry the option                                   */
/* ======================================================================== */

static uint32_t pl_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t pl_u64(const unsigned char *p)
{
    return (uint64_t)pl_u32(p) | (uint64_t)pl_u32(p + 4) << 32;
}

/* The keys of the "options" section (checkpoint format 2: 24-byte entries
 * u32 key | u32 group | u32 type | u32 owner | value), and each entry's
 * owner (0xffffffff: the trainer or optimizer, else N of "reg.N"). */
static size_t pl_option_keys(const unsigned char *ck, size_t n, uint32_t *keys,
                             uint32_t *owners, size_t cap)
{
    uint32_t sections, i;
    ck_assert_uint_ge(n, 32);
    ck_assert_int_eq(memcmp(ck, "REGOPTCK", 8), 0);
    sections = pl_u32(ck + 12);
    ck_assert_uint_eq(pl_u64(ck + 16), n);
    for (i = 0; i < sections; i++) {
        const unsigned char *e = ck + 32 + 48 * (size_t)i;
        uint64_t off, size, count, j;
        char name[25];
        ck_assert_uint_le(32 + 48 * (size_t)(i + 1), n);
        memcpy(name, e, 24);
        name[24] = '\0';
        if (strcmp(name, "options") != 0)
            continue;
        off = pl_u64(e + 24);
        size = pl_u64(e + 32);
        ck_assert_uint_le(off + size, n);
        count = pl_u32(ck + off);
        ck_assert_uint_eq(size, 8 + 24 * count);
        ck_assert_uint_le(count, cap);
        for (j = 0; j < count; j++) {
            keys[j] = pl_u32(ck + off + 8 + 24 * j);
            owners[j] = pl_u32(ck + off + 8 + 24 * j + 12);
        }
        return (size_t)count;
    }
    ck_abort_msg("no options section");
    return 0;
}

static unsigned char *pl_save(pl_run *r, size_t *n)
{
    unsigned char *b;
    size_t w = 0;
    MUST(regopt_trainer_checkpoint_size(r->t, PL_ALL, n));
    b = malloc(*n);
    ck_assert_ptr_nonnull(b);
    TMUST(r->t, regopt_trainer_save_buffer(r->t, PL_ALL, b, *n, &w));
    ck_assert_uint_eq(w, *n);
    return b;
}

START_TEST(checkpoint_does_not_carry_threads)
{
    pl_cfg c = cfg_everything;
    pl_run *a = pl_open(&c, NULL, 0), *b1, *b5, *one = pl_open(&c, NULL, 0);
    unsigned char *ck, *ck_one;
    size_t n, n_one, nkeys, i;
    uint32_t keys[512], owners[512];
    int has_lr = 0, has_loss = 0, has_rho = 0;
    int64_t v = 0;
    pl_snap s1, s5, sa, so;
    int step;

    pl_threads(a, 3);
    for (step = 0; step < 3; step++) {
        pl_must_step(a, step);
        pl_must_step(one, step);
    }
    ck = pl_save(a, &n);
    ck_one = pl_save(one, &n_one);
    /* the saves of a 3-thread and a 1-thread run are the same bytes */
    ck_assert_uint_eq(n, n_one);
    ck_assert_int_eq(memcmp(ck, ck_one, n), 0);
    nkeys = pl_option_keys(ck, n, keys, owners, sizeof keys / sizeof keys[0]);
    for (i = 0; i < nkeys; i++) {
        ck_assert_msg(keys[i] != REGOPT_TRAINER_THREADS, "trainer.threads saved (entry %zu)",
                      i);
        has_lr |= keys[i] == REGOPT_OPT_LR && owners[i] == 0xffffffffu;
        has_loss |= keys[i] == REGOPT_TRAINER_LOSS && owners[i] == 0xffffffffu;
        /* sam.rho belongs to a regularizer section, not the trainer */
        has_rho |= keys[i] == REGOPT_SAM_RHO && owners[i] != 0xffffffffu;
    }
    ck_assert_msg(has_lr && has_loss && has_rho, "the options section was not read right");

    /* into a one-thread trainer and a five-thread one, options and params */
    b1 = pl_open(&c, NULL, 0);
    b5 = pl_open(&c, NULL, 0);
    pl_threads(b5, 5);
    TMUST(b1->t, regopt_trainer_load_buffer(b1->t, PL_ALL, ck, n));
    TMUST(b5->t, regopt_trainer_load_buffer(b5->t, PL_ALL, ck, n));
    MUST(regopt_trainer_get_int(b1->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 1);
    MUST(regopt_trainer_get_int(b5->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 5);
    /* a load without options leaves it too */
    TMUST(b5->t, regopt_trainer_load_buffer(b5->t, REGOPT_CHECKPOINT_PARAMS, ck, n));
    MUST(regopt_trainer_get_int(b5->t, REGOPT_TRAINER_THREADS, &v));
    ck_assert_int_eq(v, 5);

    /* training goes on bit for bit: loaded on 1 and 5 threads, and the
       uninterrupted runs on 3 and 1 */
    for (step = 3; step < 6; step++) {
        pl_must_step(b1, step);
        pl_must_step(b5, step);
        pl_must_step(a, step);
        pl_must_step(one, step);
    }
    pl_take(b1, &s1);
    pl_take(b5, &s5);
    pl_take(a, &sa);
    pl_take(one, &so);
    pl_same(&s5, &s1, "resumed on 5 threads against 1", 5);
    pl_same(&sa, &s1, "uninterrupted on 3 threads against resumed on 1", 3);
    pl_same(&so, &s1, "uninterrupted on 1 thread against resumed on 1", 1);
    pl_drop(&s1);
    pl_drop(&s5);
    pl_drop(&sa);
    pl_drop(&so);
    free(ck);
    free(ck_one);
    pl_close(a);
    pl_close(b1);
    pl_close(b5);
    pl_close(one);
}
END_TEST

/* ======================================================================== */
/* 7. Changing the thread count between steps                               */
/* ======================================================================== */

START_TEST(threads_change_between_steps)
{
    static const int plan[] = {1, 4, 2, 1, 4, 2, 7, 1, 3, 1};
    pl_cfg c = cfg_everything;
    pl_run *r = pl_open(&c, NULL, 0), *ref = pl_open(&c, NULL, 0);
    pl_snap s1, s2;
    size_t i;
    int base = pl_os_base();
    for (i = 0; i < sizeof plan / sizeof plan[0]; i++) {
        pl_threads(r, plan[i]);
        if (base > 0)
            ck_assert_int_eq(pl_os_threads_settle(base + plan[i] - 1), base + plan[i] - 1);
        pl_must_step(r, (int)i);
        pl_must_step(ref, (int)i);
        pl_take(r, &s1);
        pl_take(ref, &s2);
        pl_same(&s1, &s2, "after a step on the planned threads", (int)i);
        pl_drop(&s1);
        pl_drop(&s2);
    }
    pl_close(r);
    pl_close(ref);
}
END_TEST

/* ======================================================================== */
/* 8. Free joins the workers                                                */
/* ======================================================================== */

START_TEST(free_joins_workers)
{
    int i, base = pl_os_base();
    for (i = 0; i < 50; i++) {
        pl_run *r = pl_open(i % 3 ? &cfg_sam : &cfg_smart_bregman, NULL, 0);
        pl_threads(r, 8);
        if (i % 2)
            pl_must_step(r, i); /* workers have run and are spinning or asleep */
        if (i % 5 == 0) {
            pl_threads(r, 1 + i % 7);
            pl_threads(r, 8);
        }
        if (i % 4 == 1) {
            pl_must_step(r, i + 1);
            pl_must_step(r, i + 2);
        }
        pl_close(r); /* freed at once, or right after a step */
        if (base > 0)
            ck_assert_msg(pl_os_threads_settle(base) == base,
                          "cycle %d: %d threads left, %d before", i, pl_os_threads(), base);
    }
}
END_TEST

TCase *pool_lifecycle_tcase(void)
{
    TCase *life = tcase_create("lifecycle");
    tcase_set_timeout(life, 300); /* sanitizers and valgrind are slow */
    tcase_add_test(life, callbacks_on_the_calling_thread);
    tcase_add_test(life, no_allocation_in_steps);
    tcase_add_test(life, failed_pool_changes_nothing);
    tcase_add_test(life, rollback_backward_failure);
    tcase_add_test(life, rollback_nonfinite_gradient);
    tcase_add_test(life, rollback_teacher_and_smart_failure);
    tcase_add_test(life, checkpoint_does_not_carry_threads);
    tcase_add_test(life, threads_change_between_steps);
    tcase_add_test(life, free_joins_workers);
    return life;
}
